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
    parser = cli_common.ArgumentParser(prog="tf-llama", description="Run LLaMA models with the Keras 3 / TensorFlow twin.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="stream a continuation of a prompt")
    cli_common.add_generate_arguments(generate)
    generate.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="float32", help="compute dtype of weights and activations (default float32)"
    )
    generate.add_argument(
        "--no-xla", action="store_true", help="run the decode step in TensorFlow's graph executor instead of compiling it with XLA"
    )

    info = commands.add_parser("info", help="print the config and the tensor table of a checkpoint")
    cli_common.add_model_argument(info)
    return parser


def command_generate(args: argparse.Namespace) -> int:
    cli_common.check_prompt_arguments(args)
    import_tensorflow_quietly()
    from tf_llama.generate import SamplingParams, check_request, generator_for
    from tf_llama.model import LlamaModel

    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    checkpoint = cli_common.load_model_checkpoint(args.model)
    prompt_ids, tokenizer = cli_common.prepare_prompt(args, checkpoint)

    model = LlamaModel.from_checkpoint(checkpoint, dtype=args.dtype)
    check_request(prompt_ids, args.max_new_tokens, model.config)
    stop_ids = cli_common.stop_ids_for(checkpoint, tokenizer)

    generator = generator_for(model, jit_compile=not args.no_xla)
    trace_start = time.perf_counter()
    generator.compile(batch=1, max_seq_len=len(prompt_ids) + args.max_new_tokens)
    trace_seconds = time.perf_counter() - trace_start

    tokens = generator.generate(prompt_ids, args.max_new_tokens, params, stop_ids)
    timing = cli_common.stream_tokens(tokens, args, prompt_ids, tokenizer, stop_ids)
    print(f"tracing and compiling: {trace_seconds:.2f} s, {timing.summary()}", file=sys.stderr)
    return 0


def command_info(args: argparse.Namespace) -> int:
    checkpoint = cli_common.load_model_checkpoint(args.model)
    config = checkpoint.config
    cli_common.print_config(checkpoint)

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
