"""`numpy-llama`: generate text, inspect a checkpoint and tokenize with the NumPy reference."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from weights_tools import cli_common
from weights_tools.errors import GenerationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numpy-llama", description="Run LLaMA models with the NumPy reference.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="stream a continuation of a prompt")
    cli_common.add_generate_arguments(generate)

    info = commands.add_parser("info", help="print the config and the tensor table of a checkpoint")
    cli_common.add_model_argument(info)

    tokenize = commands.add_parser("tokenize", help="print the token ids of a text")
    cli_common.add_model_argument(tokenize)
    cli_common.add_tokenizer_argument(tokenize)
    tokenize.add_argument("text", help="text to tokenize")
    tokenize.add_argument("--pieces", action="store_true", help="print each id with its vocabulary piece")
    tokenize.add_argument("--no-bos", action="store_true", help="never prepend BOS")
    tokenize.add_argument("--bos", action="store_true", help="always prepend BOS")
    return parser


def check_text(text: str, label: str) -> str:
    """Reject text that is not valid UTF-8 (argv bytes Python could not decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GenerationError(f"the {label} is not valid UTF-8; pass UTF-8 text or --prompt-ids") from None
    return text


def command_generate(args: argparse.Namespace) -> int:
    from numpy_llama.generate import SamplingParams, generate
    from numpy_llama.model import Llama

    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    if args.prompt is None and args.prompt_ids is None:
        raise GenerationError("no prompt: pass PROMPT text or --prompt-ids 1,2,3")
    if args.prompt is not None and args.prompt_ids is not None:
        raise GenerationError("pass either PROMPT text or --prompt-ids, not both")

    checkpoint = cli_common.load_model_checkpoint(args.model)
    tokenizer = None
    if args.prompt_ids is not None:
        prompt_ids = cli_common.parse_prompt_ids(args.prompt_ids)
    else:
        tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)
        prompt_ids = tokenizer.encode(check_text(args.prompt, "prompt"), bos=cli_common.prompt_bos_choice(args))
    if not args.ids and tokenizer is None:
        tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)

    model = Llama.from_checkpoint(checkpoint)
    stop_ids = cli_common.stop_ids_for(checkpoint, tokenizer)

    decoder = tokenizer.stream_decoder() if tokenizer is not None and not args.ids else None
    if decoder is not None and args.prompt is not None:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

    start = time.perf_counter()
    first_token_time = None
    generated: list[int] = []
    for token in generate(model, prompt_ids, args.max_new_tokens, params, stop_ids):
        if first_token_time is None:
            first_token_time = time.perf_counter()
        generated.append(token)
        if decoder is not None:
            if token in stop_ids:
                continue
            sys.stdout.write(decoder.push(token))
        else:
            sys.stdout.write(("," if len(generated) > 1 else "") + str(token))
        sys.stdout.flush()
    end = time.perf_counter()
    if decoder is not None:
        sys.stdout.write(decoder.flush())
    sys.stdout.write("\n")
    sys.stdout.flush()

    report_speed(len(prompt_ids), generated, start, first_token_time, end)
    return 0


def report_speed(n_prompt: int, generated: list[int], start: float, first_token_time: float | None, end: float) -> None:
    """Print prefill and decode speed to stderr."""
    if first_token_time is None:
        return
    prefill_seconds = first_token_time - start
    decode_tokens = len(generated) - 1
    decode_seconds = end - first_token_time
    message = f"prefill: {n_prompt} tokens in {prefill_seconds:.2f} s ({n_prompt / max(prefill_seconds, 1e-9):.1f} tokens/s)"
    if decode_tokens > 0:
        message += f", decode: {decode_tokens} tokens in {decode_seconds:.2f} s ({decode_tokens / decode_seconds:.1f} tokens/s)"
    print(message, file=sys.stderr)


def command_info(args: argparse.Namespace) -> int:
    checkpoint = cli_common.load_model_checkpoint(args.model)
    config = checkpoint.config
    print(f"checkpoint: {checkpoint.path} ({checkpoint.format})")
    for key, value in config.to_dict().items():
        print(f"  {key:<16} {value}")
    print(f"  {'head_dim':<16} {config.head_dim}")
    print(f"float32 weights: {checkpoint.weight_bytes() / 2**20:.1f} MiB")
    print()
    rows = [(info.name, "x".join(str(n) for n in info.shape), info.stored_type) for info in checkpoint.infos.values()]
    name_width = max(len(row[0]) for row in rows)
    shape_width = max(len(row[1]) for row in rows)
    print(f"{'tensor':<{name_width}}  {'shape':<{shape_width}}  stored type")
    order = {name: i for i, name in enumerate(checkpoint)}
    for name, shape, stored_type in sorted(rows, key=lambda row: order.get(row[0], len(order))):
        print(f"{name:<{name_width}}  {shape:<{shape_width}}  {stored_type}")
    if config.tie_embeddings:
        print("output.weight is tied to tok_embeddings.weight")
    return 0


def command_tokenize(args: argparse.Namespace) -> int:
    if args.tokenizer is not None:
        from weights_tools.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    else:
        checkpoint = cli_common.load_model_checkpoint(args.model)
        tokenizer = cli_common.load_model_tokenizer(checkpoint, None)
    ids = tokenizer.encode(check_text(args.text, "text"), bos=cli_common.prompt_bos_choice(args))
    if args.pieces:
        for token in ids:
            print(f"{token}\t{tokenizer.id_to_piece(token)!r}")
    else:
        print(" ".join(str(token) for token in ids))
    return 0


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": command_generate, "info": command_info, "tokenize": command_tokenize}
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return cli_common.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
