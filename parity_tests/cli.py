"""`llama-parity`: trace, dump and diff the intermediate activations of LLaMA implementations.

    llama-parity diff --prompt "The capital of France is"            # numpy vs keras
    llama-parity diff --against ref.safetensors hf.safetensors      # dumps made elsewhere
    llama-parity dump --impl numpy --prompt-ids 1,2,3 --out numpy.safetensors
    llama-parity dump-hf --hf-model DIR --prompt-ids 1,2,3 --out hf.safetensors

`diff` prints one row per trace point in execution order and exits 1 when any row fails,
2 on bad input, 0 when everything passes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weights_tools import cli_common
from weights_tools.errors import GenerationError, LlamaParityError
from weights_tools.trace_format import COMPUTE_DTYPES, TraceDump, TraceSelection, read_dump, write_dump


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=None, help="prompt text, tokenized with the model's tokenizer")
    parser.add_argument("--prompt-ids", default=None, help="comma-separated prompt token ids, e.g. 1,2,3")


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--filter", action="append", default=None, metavar="PATTERN",
        help="trace points to keep: fnmatch globs such as 'layers.*.q_rope' (comma-separated or repeated), "
        "or a regular expression written 're:PATTERN'; default all",
    )
    parser.add_argument("--layers", default=None, help="blocks to keep, e.g. '0-3,10'; default all")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    cli_common.add_model_argument(parser)
    cli_common.add_tokenizer_argument(parser)
    add_prompt_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES, help="compute dtype (default float32)")
    add_selection_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-parity", description="Find where two LLaMA implementations part ways, activation by activation."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    diff = commands.add_parser(
        "diff",
        help="compare activations of the NumPy and Keras runs and/or dumps",
        epilog="exit status: 0 when every row passes, 1 when any row fails, 2 on invalid input",
    )
    add_run_arguments(diff)
    diff.add_argument(
        "--impl", default=None,
        help="implementations to run, comma-separated, first is the reference: numpy, keras "
        "(default numpy,keras without --against, none with it)",
    )
    diff.add_argument(
        "--against", nargs="+", default=[], metavar="DUMP",
        help="activation dumps to compare; they follow the runs, and the first source overall is the reference",
    )
    diff.add_argument(
        "--dump", type=Path, default=None, metavar="OUT",
        help="also write the runs' activations to OUT; with several runs, OUT's stem plus "
        "'.numpy_llama' or '.tf_llama' plus its suffix",
    )
    diff.add_argument("--report", type=Path, default=None, metavar="FILE.html", help="write a self-contained HTML report")
    diff.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="write the error-per-layer plot")

    dump = commands.add_parser("dump", help="run one implementation and write its activation dump")
    add_run_arguments(dump)
    dump.add_argument("--impl", default="numpy", choices=("numpy", "keras"), help="implementation (default numpy)")
    dump.add_argument("--out", type=Path, required=True, help="output .safetensors file")

    dump_hf = commands.add_parser(
        "dump-hf", help="run a Hugging Face LlamaForCausalLM with forward hooks and write its activation dump"
    )
    dump_hf.add_argument("--hf-model", type=Path, required=True, help="folder with config.json and the weights")
    add_prompt_arguments(dump_hf)
    dump_hf.add_argument("--dtype", default="float32", choices=COMPUTE_DTYPES, help="torch dtype (default float32)")
    add_selection_arguments(dump_hf)
    dump_hf.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    return parser


def selection_from(args: argparse.Namespace) -> TraceSelection:
    return TraceSelection.from_strings(args.filter, args.layers)


def prompt_ids_from(args: argparse.Namespace, checkpoint) -> list[int]:
    """Return --prompt-ids, or --prompt tokenized with --tokenizer or the checkpoint's own tokenizer."""
    if args.prompt is None and args.prompt_ids is None:
        raise GenerationError("no prompt: pass --prompt TEXT or --prompt-ids 1,2,3")
    if args.prompt is not None and args.prompt_ids is not None:
        raise GenerationError("pass either --prompt or --prompt-ids, not both")
    if args.prompt_ids is not None:
        return cli_common.parse_prompt_ids(args.prompt_ids)
    tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer)
    ids = list(tokenizer.encode(args.prompt, bos=None))
    if not ids:
        raise GenerationError("the prompt tokenizes to no tokens; pass a longer --prompt or --prompt-ids")
    return ids


def dump_path_for(out: Path, implementation: str, n_runs: int) -> Path:
    """Return OUT for a single run, else OUT with '.IMPL' inserted before the suffix."""
    if n_runs == 1:
        return out
    return out.with_name(f"{out.stem}.{implementation}{out.suffix or '.safetensors'}")


def run_sources(args: argparse.Namespace, implementations: list[str]) -> list[TraceDump]:
    """Load the model once and trace each implementation on the prompt."""
    from parity_tests.runners import run_implementation

    model_path = cli_common.resolve_model_path(args.model)
    checkpoint = cli_common.load_model_checkpoint(model_path)
    prompt_ids = prompt_ids_from(args, checkpoint)
    selection = selection_from(args)
    return [
        run_implementation(name, checkpoint, prompt_ids, args.dtype, selection, str(model_path))
        for name in implementations
    ]


def parse_implementations(text: str) -> list[str]:
    from parity_tests.runners import IMPLEMENTATIONS

    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in IMPLEMENTATIONS:
            raise LlamaParityError(f"unknown implementation {name!r} in --impl; choose from {', '.join(IMPLEMENTATIONS)}")
    return names


def command_diff(args: argparse.Namespace) -> int:
    from parity_tests.diff import compare_dumps
    from parity_tests.diff_report import format_table, render_html, render_plot_png, write_atomic

    if args.impl is not None:
        implementations = parse_implementations(args.impl)
    else:
        implementations = [] if args.against else ["numpy", "keras"]
    if args.dump is not None and not implementations:
        raise LlamaParityError("--dump writes the runs' activations, but nothing runs; add --impl numpy")

    sources = run_sources(args, implementations) if implementations else []
    if args.dump is not None:
        for dump in sources:
            path = write_dump(dump, dump_path_for(args.dump, dump.implementation, len(sources)))
            print(f"wrote {path}", file=sys.stderr)
    sources.extend(read_dump(path) for path in args.against)
    if len(sources) < 2:
        raise LlamaParityError("diff needs at least two sources: --impl runs and/or --against dumps")

    selection = selection_from(args)
    reference = sources[0]
    results = [compare_dumps(reference, candidate, selection) for candidate in sources[1:]]
    for result in results:
        print(format_table(result))

    plot_png = render_plot_png(results) if (args.plot or args.report) else None
    if args.plot is not None:
        write_atomic(args.plot, plot_png)
    if args.report is not None:
        write_atomic(args.report, render_html(results, plot_png).encode("utf-8"))
    return 0 if all(result.passed for result in results) else 1


def command_dump(args: argparse.Namespace) -> int:
    (dump,) = run_sources(args, [args.impl])
    path = write_dump(dump, args.out)
    print(f"wrote {len(dump.activations)} activations to {path}")
    return 0


def command_dump_hf(args: argparse.Namespace) -> int:
    from parity_tests.hf_dump import dump_hf_model, hf_prompt_ids

    ids = hf_prompt_ids(args.hf_model, args.prompt, args.prompt_ids)
    dump = dump_hf_model(args.hf_model, ids, args.dtype, selection_from(args))
    path = write_dump(dump, args.out)
    print(f"wrote {len(dump.activations)} activations to {path}")
    return 0


COMMANDS = {"diff": command_diff, "dump": command_dump, "dump-hf": command_dump_hf}


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return cli_common.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
