"""`numpy-llama`: generate text, inspect a checkpoint and tokenize with the NumPy reference."""

from __future__ import annotations

import argparse
import sys

from weights_tools import cli_common


def build_parser() -> argparse.ArgumentParser:
    parser = cli_common.ArgumentParser(prog="numpy-llama", description="Run LLaMA models with the NumPy reference.")
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


def command_generate(args: argparse.Namespace) -> int:
    from numpy_llama.generate import SamplingParams, check_request, generate
    from numpy_llama.model import Llama

    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    cli_common.check_prompt_arguments(args)
    checkpoint = cli_common.load_model_checkpoint(args.model)
    prompt_ids, tokenizer = cli_common.prepare_prompt(args, checkpoint)

    model = Llama.from_checkpoint(checkpoint)
    check_request(prompt_ids, args.max_new_tokens, model.config)
    stop_ids = cli_common.stop_ids_for(checkpoint, tokenizer)

    tokens = generate(model, prompt_ids, args.max_new_tokens, params, stop_ids)
    timing = cli_common.stream_tokens(tokens, args, prompt_ids, tokenizer, stop_ids)
    print(timing.summary(), file=sys.stderr)
    return 0


def command_info(args: argparse.Namespace) -> int:
    checkpoint = cli_common.load_model_checkpoint(args.model)
    config = checkpoint.config
    cli_common.print_config(checkpoint)
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
    if args.tokenizer is not None and args.model is None:
        from weights_tools.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    else:
        checkpoint = cli_common.load_model_checkpoint(args.model)
        tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)
        cli_common.check_tokenizer_fits(tokenizer, checkpoint, args.tokenizer)
    text = cli_common.check_text(args.text, "text", fix="pass UTF-8 text")
    ids = tokenizer.encode(text, bos=cli_common.prompt_bos_choice(args))
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
