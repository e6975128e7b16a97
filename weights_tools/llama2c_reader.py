"""Read a llama2.c checkpoint (.bin, legacy or version 1) into a Checkpoint.

llama2.c's model.py applies RoPE to interleaved pairs as Meta's code does, so q/k rows
need no permutation. Both layouts are float32 arrays in a fixed order after a header;
tensors are zero-copy views of one memory map of the file.

Legacy (llama2.c `legacy_export`): seven int32 values dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len. A negative vocab_size means a separate classifier
follows; a positive one means the output head is the token embedding. Then:
tok_embeddings, attention_norm (all layers), wq, wk, wv, wo, ffn_norm, w1, w2, w3,
final norm, freq_cis_real [seq_len, head_dim/2], freq_cis_imag, and wcls if not shared.

Version 1 (llama2.c `version1_export`): uint32 magic 0x616b3432 ("ak42" read as
little-endian bytes "24ka"), int32 version 1, the seven int32 values (vocab_size
positive), a uint8 shared_classifier flag, zero padding to 256 bytes. Then the norms
first: attention_norm (all layers), ffn_norm (all layers), final norm, then
tok_embeddings, wq, wk, wv, wo, w1, w2, w3, and wcls if shared_classifier is 0. There
is no RoPE table. Version 2 (Q8_0 int8 groups) is rejected.

Neither header stores rope_theta or the RMSNorm epsilon: llama2.c uses 10000 and 1e-5.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np

from weights_tools.checkpoint import Checkpoint, TensorInfo, expected_shapes
from weights_tools.config import ModelConfig
from weights_tools.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

VERSION1_MAGIC = 0x616B3432
VERSION1_HEADER_BYTES = 256
LEGACY_HEADER = struct.Struct("<7i")
VERSION1_PREFIX = struct.Struct("<Ii7iB")  # magic, version, 7 params, shared_classifier
ROPE_THETA = 10000.0
NORM_EPS = 1e-5

# Per-layer tensors in file order, each stacked over all layers.
_LEGACY_LAYER_ORDER = (
    "attention_norm.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "ffn_norm.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
)
_VERSION1_LAYER_ORDER = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
)


def is_llama2c_file(path: Path) -> bool:
    """Return True for a version 1 magic or any .bin file.

    A .bin file too short for a header is still claimed, so load_llama2c can report it
    as truncated instead of the loader calling it an unknown format.
    """
    with path.open("rb") as handle:
        head = handle.read(VERSION1_PREFIX.size)
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == VERSION1_MAGIC:
        return True
    return path.suffix == ".bin"


def read_header(path: Path, data: np.ndarray) -> tuple[ModelConfig, bool, int, str]:
    """Parse the header: return (config, shared_classifier, offset of the first weight, layout name)."""
    if data.size < LEGACY_HEADER.size:
        raise CheckpointError(path, f"file has {data.size} bytes, too short for a llama2.c header")
    magic = struct.unpack("<I", bytes(data[:4]))[0]
    if magic == VERSION1_MAGIC:
        if data.size < VERSION1_HEADER_BYTES:
            raise CheckpointError(path, "file is shorter than the 256-byte version 1 header", "header")
        _, version, *params, shared = VERSION1_PREFIX.unpack(bytes(data[: VERSION1_PREFIX.size]))
        if version != 1:
            raise CheckpointError(
                path, f"llama2.c export version {version} is not supported; export with --version 1 or 0", "version"
            )
        shared_classifier = bool(shared)
        offset, layout = VERSION1_HEADER_BYTES, "llama2c-v1"
    else:
        params = list(LEGACY_HEADER.unpack(bytes(data[: LEGACY_HEADER.size])))
        shared_classifier = params[5] > 0
        params[5] = abs(params[5])
        offset, layout = LEGACY_HEADER.size, "llama2c-legacy"

    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = params
    try:
        config = ModelConfig(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=vocab_size,
            hidden_dim=hidden_dim,
            norm_eps=NORM_EPS,
            rope_theta=ROPE_THETA,
            max_seq_len=seq_len,
            tie_embeddings=shared_classifier,
            source=os.fspath(path),
        )
    except ConfigError as exc:
        raise CheckpointError(
            path, f"header is not a llama2.c model: {str(exc).split(': ', 1)[-1]}", f"header.{exc.field}"
        ) from None
    return config, shared_classifier, offset, layout


def tensor_layout(config: ModelConfig, layout: str, shared_classifier: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Return (name, shape) for every array in file order; names with a '*' are stacked over layers.

    Stacked entries have a leading n_layers axis. `rope.freq_cis_real/imag` are the legacy
    RoPE tables, which are skipped because the model recomputes them.
    """
    # One layer's shapes suffice, and the header's n_layers is not yet checked against the file size.
    shapes = expected_shapes(config.replace(n_layers=1))
    n_layers = config.n_layers

    def stacked(suffix: str) -> tuple[str, tuple[int, ...]]:
        return f"layers.*.{suffix}", (n_layers, *shapes[f"layers.0.{suffix}"])

    entries: list[tuple[str, tuple[int, ...]]] = []
    if layout == "llama2c-legacy":
        entries.append(("tok_embeddings.weight", shapes["tok_embeddings.weight"]))
        entries.extend(stacked(suffix) for suffix in _LEGACY_LAYER_ORDER)
        entries.append(("norm.weight", shapes["norm.weight"]))
        half = config.head_dim // 2
        entries.append(("rope.freq_cis_real", (config.max_seq_len, half)))
        entries.append(("rope.freq_cis_imag", (config.max_seq_len, half)))
    else:
        entries.append(stacked("attention_norm.weight"))
        entries.append(stacked("ffn_norm.weight"))
        entries.append(("norm.weight", shapes["norm.weight"]))
        entries.append(("tok_embeddings.weight", shapes["tok_embeddings.weight"]))
        entries.extend(stacked(suffix) for suffix in _VERSION1_LAYER_ORDER)
    if not shared_classifier:
        entries.append(("output.weight", shapes["output.weight"]))
    return entries


def load_llama2c(path: str | os.PathLike) -> Checkpoint:
    """Open a llama2.c .bin checkpoint and return a Checkpoint of memory-mapped float32 views.

    Raises CheckpointError for a missing file, a header that is not a valid model, an
    unsupported export version, or a file whose size differs from what the header implies.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    config, shared_classifier, offset, layout = read_header(path, data)

    entries = tensor_layout(config, layout, shared_classifier)
    expected_bytes = offset + 4 * sum(int(np.prod(shape)) for _, shape in entries)
    if data.size != expected_bytes:
        problem = "file is truncated" if data.size < expected_bytes else "file has trailing bytes"
        header = (
            f"dim={config.dim}, hidden_dim={config.hidden_dim}, n_layers={config.n_layers}, n_heads={config.n_heads}, "
            f"n_kv_heads={config.n_kv_heads}, vocab_size={config.vocab_size}, seq_len={config.max_seq_len}"
        )
        raise CheckpointError(
            path, f"{problem}: {data.size} bytes, but the header ({header}) implies {expected_bytes}", "header"
        )

    arrays: dict[str, np.ndarray] = {}
    for name, shape in entries:
        count = int(np.prod(shape))
        array = data[offset : offset + 4 * count].view("<f4").reshape(shape)
        offset += 4 * count
        if name.startswith("rope."):
            continue
        if name.startswith("layers.*."):
            suffix = name[len("layers.*.") :]
            for i in range(config.n_layers):
                arrays[f"layers.{i}.{suffix}"] = array[i]
        else:
            arrays[name] = array

    loaders = {name: (lambda a=array: a) for name, array in arrays.items()}
    infos = {name: TensorInfo(name, array.shape, "F32", name) for name, array in arrays.items()}
    checkpoint = Checkpoint(
        config=config,
        loaders=loaders,
        infos=infos,
        path=os.fspath(path),
        format=layout,
        metadata={"shared_classifier": shared_classifier},
    )
    checkpoint.check_complete()
    log.info("opened %s (%s): %s", path, layout, config)
    return checkpoint
