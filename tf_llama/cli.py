"""`tf-llama`: generate text and inspect a checkpoint with the Keras 3 / TensorFlow model.

The flags match `numpy-llama` (both take them from weights_tools.cli_common), plus
--dtype for the compute dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from weights_tools import cli_common
from weights_tools.errors import GenerationError

DTYPE_CHOICES = ("float32", "float16", "bfloat16")


@contextlib.contextmanager
def stderr_silenced():
    """Send file descriptor 2 to /dev/null for the duration, then restore it.

    TF's C++ start-up lines (for example the oneDNN notice) are written through absl
    before TF_CPP_MIN_LOG_LEVEL takes effect, so only the file descriptor can hide them.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ and Python start-up logging silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with stderr_silenced():
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf-llama", description="Run LLaMA models with the Keras 3 / TensorFlow twin.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="stream a continuation of a prompt")
    cli_common.add_generate_arguments(generate)
    generate.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="float32", help="compute dtype of weights and activations (default float32)"
    )

    info = commands.add_parser("info", help="print the config and the tensor table of a checkpoint")
    cli_common.add_model_argument(info)
    return parser


def check_text(text: str, what: str) -> str:
    """Reject text that is not valid UTF-8 (argv bytes Python could not decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GenerationError(f"the {what} is not valid UTF-8; pass UTF-8 text or --prompt-ids") from None
    return text


def command_generate(args: argparse.Namespace) -> int:
    if args.prompt is None and args.prompt_ids is None:
        raise GenerationError("no prompt: pass PROMPT text or --prompt-ids 1,2,3")
    if args.prompt is not None and args.prompt_ids is not None:
        raise GenerationError("pass either PROMPT text or --prompt-ids, not both")

    import_tensorflow_quietly()
    from tf_llama.generate import SamplingParams, check_request, generator_for
    from tf_llama.model import LlamaModel

    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    checkpoint = cli_common.load_model_checkpoint(args.model)
    tokenizer = None
    if args.prompt_ids is not None:
        prompt_ids = cli_common.parse_prompt_ids(args.prompt_ids)
    else:
        tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)
        prompt_ids = tokenizer.encode(check_text(args.prompt, "prompt"), bos=cli_common.prompt_bos_choice(args))
    if not args.ids and tokenizer is None:
        tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)

    model = LlamaModel.from_checkpoint(checkpoint, dtype=args.dtype)
    check_request(prompt_ids, args.max_new_tokens, model)
    stop_ids = cli_common.stop_ids_for(checkpoint, tokenizer)

    decoder = tokenizer.stream_decoder() if tokenizer is not None and not args.ids else None
    if decoder is not None and args.prompt is not None:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

    generator = generator_for(model)
    trace_start = time.perf_counter()
    generator.compile()
    trace_seconds = time.perf_counter() - trace_start

    start = time.perf_counter()
    first_token_time = None
    generated: list[int] = []
    for token in generator.generate(prompt_ids, args.max_new_tokens, params, stop_ids):
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

    report_speed(len(prompt_ids), generated, trace_seconds, start, first_token_time, end)
    return 0


def report_speed(
    n_prompt: int, generated: list[int], trace_seconds: float, start: float, first_token_time: float | None, end: float
) -> None:
    """Print the tf.function tracing time and the prefill and decode speed to stderr."""
    if first_token_time is None:
        return
    prefill_seconds = first_token_time - start
    decode_tokens = len(generated) - 1
    decode_seconds = end - first_token_time
    message = f"tracing: {trace_seconds:.2f} s, prefill: {n_prompt} tokens in {prefill_seconds:.2f} s ({n_prompt / max(prefill_seconds, 1e-9):.1f} tokens/s)"
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

    import_tensorflow_quietly()
    from tf_llama.model import LlamaModel

    model = LlamaModel.from_config_object(config, kernel_initializer="zeros")
    print()
    print(f"Keras variables ({model.count_params():,} parameters):")
    for variable in model.weights:
        print(f"  {variable.path:<48} {'x'.join(str(n) for n in variable.shape)}")
    return 0


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": command_generate, "info": command_info}
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return cli_common.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
