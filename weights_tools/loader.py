"""Open any supported checkpoint by path: the single entry point both implementations use.

`load_checkpoint(path)` detects the format from the path and the file contents:

    file.gguf                                   llama.cpp GGUF
    folder with params.json + consolidated.*.pth   Meta's reference checkpoint
    folder with config.json + *.safetensors     Hugging Face LlamaForCausalLM, or the
                                                canonical layout written by llama-convert
    file.bin (llama2.c)                         Karpathy's llama2.c, legacy or version 1
"""

from __future__ import annotations

import os
from pathlib import Path

from weights_tools.checkpoint import Checkpoint
from weights_tools.errors import CheckpointError

GGUF_MAGIC = b"GGUF"


def _read_magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(4)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Detect the checkpoint format of `path` and return its canonical Checkpoint.

    Raises CheckpointError when the path does not exist or matches no supported format.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file or folder not found; pass an existing checkpoint path")

    if path.is_file() and (path.suffix == ".gguf" or _read_magic(path) == GGUF_MAGIC):
        from weights_tools.gguf_reader import load_gguf

        return load_gguf(path)

    raise CheckpointError(path, "unrecognized checkpoint format; expected a .gguf file")
