"""`llama-parity`: trace, dump and diff the intermediate activations of LLaMA implementations.

    llama-parity diff --prompt "The capital of France is"            # numpy vs keras
    llama-parity diff --against ref.safetensors hf.safetensors      # dumps made elsewhere
    llama-parity dump --impl numpy --prompt-ids 1,2,3 --out numpy.safetensors
    llama-parity dump-hf --hf-model DIR --prompt-ids 1,2,3 --out hf.safetensors

`diff` prints one row per trace point in execution order and exits 1 when any row fails,
2 on bad input or any other error, 0 when everything passes. Every output path is checked
before the run, and the outputs are written together after it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weights_tools import cli_common
from weights_tools.errors import GenerationError, LlamaParityError
from weights_tools.trace_format import (
    COMPUTE_DTYPES,
    TraceDump,
    TraceError,
    TraceSelection,
    layer_of,
    read_dump,
    serialize_dump,
    write_files_atomic,
)

if TYPE_CHECKING:
    from parity_tests.diff import DiffResult

# TraceDump.implementation of each --impl name, which also names the --dump files of several runs.
IMPLEMENTATION_LABELS = {"numpy": "numpy_llama", "keras": "tf_llama"}
NO_TOKENIZER_FIX = "pass --tokenizer PATH, or pass --prompt-ids 1,2,3 instead of --prompt"


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
    parser = cli_common.ArgumentParser(
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
    tokenizer = cli_common.load_model_tokenizer(checkpoint, args.tokenizer, fix=NO_TOKENIZER_FIX)
    cli_common.check_tokenizer_fits(tokenizer, checkpoint, args.tokenizer)
    ids = list(tokenizer.encode(args.prompt, bos=None))
    if not ids:
        raise GenerationError("the prompt tokenizes to no tokens; pass a longer --prompt or --prompt-ids")
    return ids


def dump_path_for(out: Path, implementation: str, n_runs: int) -> Path:
    """Return OUT for a single run, else OUT with '.IMPL' inserted before the suffix."""
    if n_runs == 1:
        return out
    return out.with_name(f"{out.stem}.{implementation}{out.suffix or '.safetensors'}")


def check_output_paths(
    outputs: Sequence[tuple[str, Path]], inputs: Sequence[Path] = (), model: tuple[str, Path | None] = ("--model", None)
) -> None:
    """Raise LlamaParityError unless every (flag, path) output can be created before anything runs.

    Each path's folder must exist and be writable, and the path must not be a folder. No
    path may also be another output or one of the `inputs`. No path may be the model
    checkpoint given as (flag, path), or a file inside the checkpoint's folder.
    """
    claimed = {Path(path).resolve(): "--against" for path in inputs}
    model_flag, model_path = model
    model_root = Path(model_path).resolve() if model_path is not None else None
    for flag, path in outputs:
        if model_root is not None and (path.resolve() == model_root or model_root in path.resolve().parents):
            raise LlamaParityError(
                f"{flag} {path} would overwrite the checkpoint given with {model_flag} {model_path}; choose another path"
            )
        reject_folder(flag, path)
        folder = path.parent
        if not folder.is_dir():
            raise LlamaParityError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LlamaParityError(f"{flag} {path}: folder {folder} is not writable; choose another path")
        resolved = path.resolve()
        if resolved in claimed:
            raise LlamaParityError(f"{flag} {path} is also used by {claimed[resolved]}; give each file its own path")
        claimed[resolved] = flag


def reject_folder(flag: str, path: Path) -> None:
    """Raise LlamaParityError when an output path names an existing folder."""
    if path.is_dir():
        raise LlamaParityError(f"{flag} {path} is a folder; give the path of a file inside it")


def write_outputs(outputs: Sequence[tuple[Path, bytes]]) -> None:
    """Write every output of a run together, turning OSError into one LlamaParityError line."""
    try:
        write_files_atomic(outputs)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise LlamaParityError(
            f"failed to write {exc.filename}: {reason}; check the folder's permissions and free space"
        ) from None


def check_selected_layers_exist(selection: TraceSelection, sources: Sequence[TraceDump]) -> None:
    """Raise TraceError when --layers names a block that the sources' models do not have.

    A source's layer count comes from the config in its metadata. When no source has one
    (dumps from dump-hf store none), each requested layer must be recorded by some source.
    """
    if selection.layers is None:
        return
    known = [
        (source, source.config["n_layers"])
        for source in sources
        if isinstance(source.config, dict) and isinstance(source.config.get("n_layers"), int)
    ]
    for source, n_layers in known:
        selection.check_layers(n_layers, source.path or source.label)
    if known:
        return
    recorded = {layer_of(name) for source in sources for name in source.order} - {None}
    missing = sorted(selection.layers - recorded)
    if missing:
        recorded_range = f"layers {min(recorded)}..{max(recorded)}" if recorded else "no layer"
        raise TraceError(
            f"--layers requests layer {missing[0]}, but the dumps record {recorded_range}; choose layers they record"
        )


def run_sources(args: argparse.Namespace, implementations: list[str]) -> list[TraceDump]:
    """Load the model once and trace each implementation on the prompt."""
    from parity_tests.runners import run_implementation

    model_path = cli_common.resolve_model_path(args.model)
    checkpoint = cli_common.load_model_checkpoint(model_path)
    selection = selection_from(args)
    selection.check_layers(checkpoint.config.n_layers, str(model_path))
    prompt_ids = prompt_ids_from(args, checkpoint)
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


def diff_outputs(args: argparse.Namespace, implementations: list[str]) -> list[tuple[str, Path]]:
    """Return (flag, path) of every file `diff` will write, in the order it writes them."""
    outputs = []
    if args.dump is not None:
        for name in implementations:
            label = IMPLEMENTATION_LABELS[name]
            outputs.append((f"--dump ({name} run)", dump_path_for(args.dump, label, len(implementations))))
    if args.plot is not None:
        outputs.append(("--plot", args.plot))
    if args.report is not None:
        outputs.append(("--report", args.report))
    return outputs


def check_diff_arguments(args: argparse.Namespace, implementations: list[str]) -> None:
    """Raise LlamaParityError for a `diff` request that cannot run or whose outputs cannot be written."""
    if args.dump is not None and not implementations:
        raise LlamaParityError("--dump writes the runs' activations, but nothing runs; add --impl numpy")
    if len(implementations) + len(args.against) < 2:
        raise LlamaParityError("diff needs at least two sources: --impl runs and/or --against dumps")
    if args.dump is not None:
        # With several runs the dumps go beside OUT, so check OUT itself as well.
        reject_folder("--dump", args.dump)
        repeated = sorted({name for name in implementations if implementations.count(name) > 1})
        if repeated:
            raise LlamaParityError(
                f"--impl {args.impl} runs {repeated[0]} twice, and --dump names each dump after its "
                "implementation; drop --dump or the repeated name"
            )
    check_output_paths(diff_outputs(args, implementations), args.against, ("--model", args.model))


def render_diff_outputs(args: argparse.Namespace, implementations: list[str], runs: list[TraceDump],
                        results: list[DiffResult]) -> list[tuple[Path, bytes]]:
    """Return (path, bytes) of every file `diff` writes: the runs' dumps, the plot and the report."""
    from parity_tests.diff_report import render_html, render_plot_png

    payloads = []
    if args.dump is not None:
        for name, run in zip(implementations, runs):
            path = dump_path_for(args.dump, IMPLEMENTATION_LABELS[name], len(runs))
            payloads.append((path, serialize_dump(run, path)))
    plot_png = render_plot_png(results) if (args.plot or args.report) else None
    if args.plot is not None:
        payloads.append((args.plot, plot_png))
    if args.report is not None:
        payloads.append((args.report, render_html(results, plot_png).encode("utf-8")))
    return payloads


def command_diff(args: argparse.Namespace) -> int:
    from parity_tests.diff import compare_dumps
    from parity_tests.diff_report import format_table

    if args.impl is not None:
        implementations = parse_implementations(args.impl)
    else:
        implementations = [] if args.against else ["numpy", "keras"]
    selection = selection_from(args)
    check_diff_arguments(args, implementations)

    runs = run_sources(args, implementations) if implementations else []
    sources = runs + [read_dump(path) for path in args.against]
    check_selected_layers_exist(selection, sources)

    reference = sources[0]
    results = [compare_dumps(reference, candidate, selection) for candidate in sources[1:]]
    for result in results:
        print(format_table(result))

    # All outputs are rendered before the first one is written, so a rendering error writes none.
    payloads = render_diff_outputs(args, implementations, runs, results)
    write_outputs(payloads)
    for path, _ in payloads:
        print(f"wrote {path}", file=sys.stderr)
    return 0 if all(result.passed for result in results) else 1


def command_dump(args: argparse.Namespace) -> int:
    check_output_paths([("--out", args.out)], model=("--model", args.model))
    (dump,) = run_sources(args, [args.impl])
    write_outputs([(args.out, serialize_dump(dump, args.out))])
    print(f"wrote {len(dump.activations)} activations to {args.out}")
    return 0


def command_dump_hf(args: argparse.Namespace) -> int:
    from parity_tests.hf_dump import dump_hf_model, hf_prompt_ids

    check_output_paths([("--out", args.out)], model=("--hf-model", args.hf_model))
    if args.hf_model.is_file():
        raise LlamaParityError(
            f"--hf-model {args.hf_model} is a file; pass the model's folder, {args.hf_model.parent}"
        )
    selection = selection_from(args)
    ids = hf_prompt_ids(args.hf_model, args.prompt, args.prompt_ids)
    dump = dump_hf_model(args.hf_model, ids, args.dtype, selection)
    write_outputs([(args.out, serialize_dump(dump, args.out))])
    print(f"wrote {len(dump.activations)} activations to {args.out}")
    return 0


COMMANDS = {"diff": command_diff, "dump": command_dump, "dump-hf": command_dump_hf}


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Run llama-parity; errors exit 2 (130 on Ctrl-C), because exit status 1 means that a row failed."""
    try:
        return cli_common.run_cli(run, argv)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("error: llama-parity failed with an unexpected error (traceback above); this is a bug", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
