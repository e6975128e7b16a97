"""Open any supported checkpoint by path: the single entry point both implementations use.

`load_checkpoint(path)` detects the format from the path and the file contents:

    *.gguf, or a file starting with b"GGUF"          llama.cpp GGUF (gguf_reader)
    folder with params.json + consolidated.NN.pth    Meta's reference checkpoint (meta_reader)
    folder with config.json + safetensors            the canonical form when config.json has
                                                     the llama-parity marker (canonical),
                                                     else Hugging Face LlamaForCausalLM (hf_reader)
    *.bin, or a file starting with the "ak42" magic  llama2.c, legacy or version 1 (llama2c_reader)

A path to a file inside a folder checkpoint (params.json, config.json, a .pth shard, a
.safetensors file or the shard index) opens its folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from weights_tools.checkpoint import Checkpoint
from weights_tools.errors import CheckpointError

GGUF_MAGIC = b"GGUF"
ZIP_MAGIC = b"PK\x03\x04"

FORMATS = ("gguf", "meta", "hf", "canonical", "llama2c")


def _read_magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(4)


def detect_format(path: str | os.PathLike) -> str:
    """Return the format name of a checkpoint path, one of FORMATS.

    Raises CheckpointError when the path does not exist or matches no supported format.
    """
    from weights_tools import canonical, llama2c_reader

    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file or folder not found; pass an existing checkpoint path")
    if not path.is_file() and not path.is_dir():
        raise CheckpointError(path, "not a regular file or folder; pass a checkpoint file or folder")
    if path.is_file():
        magic = _read_magic(path)
        if path.suffix == ".gguf" or magic == GGUF_MAGIC:
            return "gguf"
        if _is_inside_folder_checkpoint(path):
            return detect_format(path.parent)
        if magic == ZIP_MAGIC:
            raise CheckpointError(
                path,
                "PyTorch pickle weights are only read as Meta consolidated.NN.pth shards; "
                "save Hugging Face models with safetensors (save_pretrained's default)",
            )
        if llama2c_reader.is_llama2c_file(path):
            return "llama2c"
        raise CheckpointError(
            path, "unrecognized checkpoint file; expected a .gguf file or a llama2.c .bin file"
        )

    if (path / "params.json").is_file() or any(path.glob("consolidated.*.pth")):
        return "meta"
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(config_path, f"invalid JSON: {exc}") from None
        if isinstance(data, dict) and canonical.is_canonical_config(data):
            return "canonical"
        return "hf"
    raise CheckpointError(
        path,
        "unrecognized checkpoint folder; expected params.json + consolidated.NN.pth (Meta) "
        "or config.json + safetensors (Hugging Face or llama-convert output)",
    )


def _is_inside_folder_checkpoint(path: Path) -> bool:
    return (
        path.name in ("params.json", "config.json")
        or path.suffix in (".pth", ".safetensors")
        or path.name.endswith(".safetensors.index.json")
    )


def checkpoint_root(path: str | os.PathLike) -> Path:
    """Return the file or folder a reader opens: the folder for a path inside a folder checkpoint."""
    path = Path(path)
    if path.is_file() and _is_inside_folder_checkpoint(path):
        return path.parent
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Detect the checkpoint format of `path` and return its canonical Checkpoint.

    Tensors are read lazily where the format allows it. Raises CheckpointError or
    ConfigError (both LlamaParityError) for any unreadable or inconsistent input.
    """
    kind = detect_format(path)
    root = checkpoint_root(path)
    if kind == "gguf":
        from weights_tools.gguf_reader import load_gguf

        return load_gguf(root)
    if kind == "meta":
        from weights_tools.meta_reader import load_meta

        return load_meta(root)
    if kind == "canonical":
        from weights_tools.canonical import load_canonical

        return load_canonical(root)
    if kind == "hf":
        from weights_tools.hf_reader import load_hf

        return load_hf(root)
    from weights_tools.llama2c_reader import load_llama2c

    return load_llama2c(root)
