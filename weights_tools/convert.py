"""`llama-convert`: convert any checkpoint `load_checkpoint` reads into another format.

Targets (--to):
    safetensors  the canonical folder (model.safetensors with canonical names + config.json,
                 see weights_tools.canonical)
    gguf         a llama.cpp GGUF file with `llama` architecture keys and F32 tensors
    hf           a Hugging Face LlamaForCausalLM folder (config.json + model.safetensors,
                 q/k rows permuted to the rotate-half RoPE layout)

Every output is written under a temporary name in the destination's folder and renamed
into place only after it is complete, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from weights_tools.canonical import WEIGHTS_FILE, canonical_config_json
from weights_tools.cli_common import ArgumentParser, run_cli
from weights_tools.checkpoint import Checkpoint
from weights_tools.errors import CheckpointError, LlamaParityError
from weights_tools.hf_reader import hf_tensor_name, interleaved_to_rotate_half
from weights_tools.loader import checkpoint_root, detect_format, load_checkpoint

log = logging.getLogger(__name__)

TARGETS = ("safetensors", "gguf", "hf")


def _tensors(checkpoint: Checkpoint, progress: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (canonical name, float32 array) for every distinct tensor, with a progress bar."""
    names = [name for name in checkpoint if not (name == "output.weight" and checkpoint.config.tie_embeddings)]
    for name in tqdm(names, desc="converting", unit="tensor", disable=not progress):
        yield name, np.ascontiguousarray(checkpoint[name], dtype=np.float32)


def write_canonical(checkpoint: Checkpoint, folder: Path, progress: bool = True) -> None:
    """Write the canonical form (model.safetensors + config.json) into an empty folder."""
    from safetensors.numpy import save_file

    tensors = dict(_tensors(checkpoint, progress))
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "np"})
    _write_json(folder / "config.json", canonical_config_json(checkpoint.config))


def hf_config_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """Return a LlamaForCausalLM config.json for a checkpoint, in the transformers 4.x key style."""
    config = checkpoint.config
    data: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if config.rope_scaling is not None:
        scaling = config.rope_scaling
        data["rope_scaling"] = {
            "rope_type": scaling.rope_type,
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        }
    return data


def write_hf(checkpoint: Checkpoint, folder: Path, progress: bool = True) -> None:
    """Write a Hugging Face folder: HF tensor names, rotate-half q/k rows, no lm_head when tied."""
    from safetensors.numpy import save_file

    config = checkpoint.config
    tensors = {}
    for name, array in _tensors(checkpoint, progress):
        if name.endswith("attention.wq.weight"):
            array = interleaved_to_rotate_half(array, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            array = interleaved_to_rotate_half(array, config.n_kv_heads)
        tensors[hf_tensor_name(name)] = np.ascontiguousarray(array)
    # transformers rejects safetensors files whose "format" metadata is not a framework it recognizes.
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _write_json(folder / "config.json", hf_config_json(checkpoint))


def write_gguf(checkpoint: Checkpoint, path: Path, progress: bool = True) -> None:
    """Write a GGUF file with `llama` keys and F32 tensors; tokenizer keys come from a GGUF source.

    Llama 3.1 RoPE scaling is written as llama.cpp writes it: a rope_freqs.weight tensor of
    per-frequency divisors plus rope.scaling.original_context_length. Raises CheckpointError
    for a scaling whose low_freq_factor / high_freq_factor are not Llama 3.1's 1 and 4,
    because gguf_reader could not read it back.
    """
    import gguf

    from weights_tools.gguf_reader import (
        LLAMA3_HIGH_FREQ_FACTOR,
        LLAMA3_LOW_FREQ_FACTOR,
        ROPE_FREQS_TENSOR,
        gguf_tensor_name,
        llama3_frequency_divisors,
    )

    config = checkpoint.config
    scaling = config.rope_scaling
    if scaling is not None and (scaling.low_freq_factor, scaling.high_freq_factor) != (
        LLAMA3_LOW_FREQ_FACTOR,
        LLAMA3_HIGH_FREQ_FACTOR,
    ):
        raise CheckpointError(
            checkpoint.path,
            f"RoPE scaling with low_freq_factor {scaling.low_freq_factor} and high_freq_factor "
            f"{scaling.high_freq_factor} cannot be written to GGUF, which supports only 1 and 4; "
            "convert to safetensors or hf instead",
            "rope_scaling",
        )
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(Path(checkpoint.path).stem if checkpoint.path else "llama")
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if scaling is not None:
        writer.add_rope_scaling_orig_ctx_len(scaling.original_max_position_embeddings)
    _copy_gguf_tokenizer(checkpoint, writer)

    # Without output.weight, llama.cpp and gguf_reader both reuse token_embd.weight.
    for name, array in _tensors(checkpoint, progress):
        writer.add_tensor(gguf_tensor_name(name), array)
    if scaling is not None:
        divisors = llama3_frequency_divisors(scaling, config.head_dim, config.rope_theta)
        writer.add_tensor(ROPE_FREQS_TENSOR, divisors.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _copy_gguf_tokenizer(checkpoint: Checkpoint, writer: Any) -> None:
    """Copy every tokenizer.* key of a GGUF source with its original GGUF value type."""
    if checkpoint.format != "gguf" or checkpoint.path is None:
        return
    import gguf

    reader = gguf.GGUFReader(checkpoint.path, "r")
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def atomic_output(destination: Path, is_folder: bool, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; move it into place only if the block succeeds.

    Raises CheckpointError if destination exists and force is False. With force, the
    old output is moved aside first and deleted only after the new one is in place.
    """
    if destination.exists() and not force:
        raise CheckpointError(destination, "output already exists; pass --force to overwrite it")
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    if is_folder:
        temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name[:64]}.", suffix=".tmp", dir=parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{destination.name[:64]}.", suffix=".tmp", dir=parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        _set_usual_modes(temporary)
        _replace(temporary, destination)
    except BaseException:
        _remove(temporary)
        raise


def _set_usual_modes(path: Path) -> None:
    """Give path and everything under it the mode a plain open() or mkdir() would.

    mkdtemp and mkstemp create private 0700/0600 entries, and the safetensors library
    writes its files 0600, so without this the output would be unreadable to others.
    """
    umask = _current_umask()
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in entries:
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace(source: Path, destination: Path) -> None:
    if not destination.exists():
        os.replace(source, destination)
        return
    backup = destination.with_name(f".{destination.name[:64]}.old-{os.getpid()}")
    os.replace(destination, backup)
    try:
        os.replace(source, destination)
    except OSError:
        os.replace(backup, destination)
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def convert(
    source: str | os.PathLike, destination: str | os.PathLike, to: str, force: bool = False, progress: bool = True
) -> Path:
    """Read `source` with load_checkpoint and write it to `destination` in format `to` (one of TARGETS)."""
    if to not in TARGETS:
        raise CheckpointError(None, f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    destination = Path(destination)
    # Resolved once, so the path checked is the path written, whatever links it goes through.
    target = Path(os.path.realpath(destination))
    check_destination(Path(source), destination, target, to, force)
    checkpoint = load_checkpoint(source)
    writers = {"safetensors": write_canonical, "hf": write_hf, "gguf": write_gguf}
    try:
        with atomic_output(target, is_folder=(to != "gguf"), force=force) as temporary:
            writers[to](checkpoint, temporary, progress)
    except OSError as exc:
        raise CheckpointError(
            destination,
            f"cannot write the output ({exc}); choose a writable folder with enough free space and a shorter name",
        ) from None
    log.info("wrote %s (%s) from %s", destination, to, source)
    return destination


# The files write_canonical and write_hf create: the only entries --force may replace in a folder.
FOLDER_OUTPUT_FILES = frozenset({"config.json", WEIGHTS_FILE})


def check_destination(source: Path, destination: Path, target: Path, to: str, force: bool) -> None:
    """Raise CheckpointError unless writing `to` at `target` (destination with links resolved) is safe.

    The target must not overlap the source checkpoint or contain the current folder, and
    its parent must not be a file. An existing target needs force, and even then it is
    replaced only when it looks like an earlier output: a GGUF file for gguf, or a folder
    that is empty or contains only config.json and model.safetensors for safetensors and hf.
    """
    source_root = checkpoint_root(source).resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise CheckpointError(destination, "the destination is the current folder or contains it; choose a new path such as out/model")
    if target == source_root or source_root in target.parents or target in source_root.parents:
        raise CheckpointError(destination, f"the destination overlaps the source checkpoint {source}; choose another path")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise CheckpointError(destination, f"{parent} is a file, not a folder; choose a path inside a folder")
    if not os.path.lexists(target):
        return
    if not force:
        raise CheckpointError(destination, "output already exists; pass --force to overwrite it")

    if to == "gguf":
        if not target.is_file():
            raise CheckpointError(
                destination, "--to gguf writes a file, and --force replaces only a file; choose a path such as model.gguf"
            )
        with target.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise CheckpointError(
                    destination, "the file is not a GGUF file, so --force does not replace it; choose another destination"
                )
        return
    if not target.is_dir():
        raise CheckpointError(destination, f"--to {to} writes a folder, but this is a file; choose a folder path")
    entries = sorted(entry.name for entry in target.iterdir())
    unexpected = [name for name in entries if name not in FOLDER_OUTPUT_FILES or not (target / name).is_file()]
    if unexpected:
        raise CheckpointError(
            destination,
            f"the folder contains {unexpected[0]!r}, which llama-convert does not write, so --force does not replace it; "
            "choose another destination",
        )
    if entries and WEIGHTS_FILE not in entries:
        raise CheckpointError(
            destination,
            f"the folder has no {WEIGHTS_FILE}, so it is not an earlier output and --force does not replace it; "
            "choose another destination",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="llama-convert",
        description="Convert a LLaMA checkpoint (GGUF, Meta .pth, Hugging Face, llama2.c .bin or "
        "canonical safetensors) to another format.",
    )
    parser.add_argument("source", help="checkpoint file or folder to read")
    parser.add_argument("destination", help="output file (gguf) or folder (safetensors, hf) to create")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    parser.add_argument("--force", action="store_true", help="replace the destination if it exists")
    parser.add_argument("--quiet", action="store_true", help="hide the progress bar")
    return parser


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = convert(args.source, args.destination, args.to, force=args.force, progress=not args.quiet)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the llama-convert command line; bad input exits 2 with one `error:` line, Ctrl-C 130."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
