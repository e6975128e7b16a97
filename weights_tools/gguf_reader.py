"""Read a llama.cpp GGUF file into a canonical Checkpoint, built on the `gguf` package.

llama.cpp's converters store q/k rows of `llama` models in the interleaved-pair RoPE
layout of Meta's code (they undo Hugging Face's rotate-half permutation on the way in),
so GGUF tensors map onto canonical names without a permutation. The real-model tests
check this by comparing SmolLM2 logits with Hugging Face transformers.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from weights_tools.checkpoint import Checkpoint, TensorInfo, check_layer_count, expected_shapes
from weights_tools.config import ModelConfig, RopeScaling
from weights_tools.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

_GLOBAL_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
_LAYER_PATTERN = re.compile(r"^blk\.(\d+)\.(.+)$")


def canonical_tensor_name(gguf_name: str) -> str | None:
    """Map a GGUF tensor name (e.g. 'blk.3.attn_q.weight') to its canonical name, or None."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def gguf_tensor_name(canonical_name: str) -> str:
    """Map a canonical tensor name back to its GGUF name."""
    for gguf_name, name in _GLOBAL_NAMES.items():
        if name == canonical_name:
            return gguf_name
    match = re.match(r"^layers\.(\d+)\.(.+)$", canonical_name)
    if match:
        for gguf_suffix, suffix in _LAYER_NAMES.items():
            if suffix == match.group(2):
                return f"blk.{match.group(1)}.{gguf_suffix}"
    raise KeyError(canonical_name)


def dequantizable_types() -> set[str]:
    """Return the names of the GGML tensor types the installed `gguf` can convert to float32."""
    from gguf import quants

    names = {"F32", "F16"}
    names.update(qtype.name for qtype in quants._type_traits)
    return names


def _check_header(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(path, "file not found; pass an existing .gguf file with --model")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(
            path, f"file is truncated: {size} bytes, shorter than the 8-byte GGUF magic and version; copy it again"
        )
    with path.open("rb") as handle:
        header = handle.read(8)
    magic = header[:4]
    if magic != GGUF_MAGIC:
        raise CheckpointError(
            path, f"not a GGUF file: the first bytes are {magic!r}, expected {GGUF_MAGIC!r}", "magic"
        )
    if len(header) == 8:
        from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

        (version,) = struct.unpack("<I", header[4:])
        if version & 0xFFFF == 0:  # a big-endian file, detected the way gguf's reader does
            (version,) = struct.unpack(">I", header[4:])
        if version not in READER_SUPPORTED_VERSIONS:
            supported = " and ".join(str(v) for v in READER_SUPPORTED_VERSIONS)
            raise CheckpointError(
                path, f"GGUF version {version} is not supported; the gguf package reads versions {supported}", "version"
            )


def _reader_class() -> type:
    import gguf

    class PlainArrayGGUFReader(gguf.GGUFReader):
        """GGUFReader that parses through a plain ndarray view of its memory map.

        Slicing an np.memmap runs Python-level bookkeeping on every slice, and the reader
        slices once per vocabulary string, so a 49k-token vocabulary took about 2 s to
        parse. The ndarray view shares the same mapped pages, so tensor data stays lazy.
        """

        @property
        def data(self) -> np.ndarray:
            return self._plain_data

        @data.setter
        def data(self, value: np.ndarray) -> None:
            if isinstance(value, np.memmap):
                self.file_map = value._mmap  # the mmap.mmap object, used to release pages
                value = value.view(np.ndarray)
            self._plain_data = value

    return PlainArrayGGUFReader


def _open_reader(path: Path) -> Any:
    try:
        return _reader_class()(path, "r")
    except (ValueError, IndexError, KeyError, OSError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        size = path.stat().st_size
        raise CheckpointError(
            path,
            f"cannot parse GGUF file of {size} bytes, it is truncated or malformed ({type(exc).__name__}: {exc}); "
            "compare its size with the original and download or copy it again",
        ) from None


def read_metadata(reader: Any, path: Path) -> dict[str, Any]:
    """Return every GGUF key-value pair as plain Python values."""
    metadata: dict[str, Any] = {}
    for key, gguf_field in reader.fields.items():
        try:
            metadata[key] = gguf_field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise CheckpointError(path, f"cannot decode metadata value: {exc}", key) from None
    return metadata


def _require(metadata: dict[str, Any], key: str, path: Path, kind: type) -> Any:
    if key not in metadata:
        raise CheckpointError(path, "required metadata key is missing", key)
    value = metadata[key]
    if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if kind is float and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        # GGUF stores float32, so 1e-5 reads back as 9.99999974e-06. The shortest decimal
        # that rounds to the same float32 recovers the value the converter wrote.
        return float(str(np.float32(value)))
    raise CheckpointError(path, f"expected {kind.__name__}, got {value!r}", key)


def config_from_metadata(metadata: dict[str, Any], path: Path) -> ModelConfig:
    """Build a ModelConfig from the `llama.*` keys of a GGUF file."""
    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            path,
            f"unsupported architecture {architecture!r}; this reader supports {', '.join(SUPPORTED_ARCHITECTURES)}",
            "general.architecture",
        )
    arch = architecture

    n_heads = _require(metadata, f"{arch}.attention.head_count", path, int)
    n_kv_heads = n_heads
    if f"{arch}.attention.head_count_kv" in metadata:
        n_kv_heads = _require(metadata, f"{arch}.attention.head_count_kv", path, int)

    if f"{arch}.vocab_size" in metadata:
        vocab_size = _require(metadata, f"{arch}.vocab_size", path, int)
    elif "tokenizer.ggml.tokens" in metadata:
        vocab_size = len(metadata["tokenizer.ggml.tokens"])
    else:
        vocab_size = 0  # taken from the embedding shape by the caller

    try:
        config = ModelConfig(
            dim=_require(metadata, f"{arch}.embedding_length", path, int),
            n_layers=_require(metadata, f"{arch}.block_count", path, int),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=max(vocab_size, 1),
            hidden_dim=_require(metadata, f"{arch}.feed_forward_length", path, int),
            norm_eps=_require(metadata, f"{arch}.attention.layer_norm_rms_epsilon", path, float),
            rope_theta=(
                _require(metadata, f"{arch}.rope.freq_base", path, float)
                if f"{arch}.rope.freq_base" in metadata
                else 10000.0
            ),
            max_seq_len=_require(metadata, f"{arch}.context_length", path, int),
            tie_embeddings=False,
            source=os.fspath(path),
        )
    except ConfigError as exc:
        raise CheckpointError(path, str(exc).split(": ", 1)[-1], f"config.{exc.field}") from None

    rope_dims = metadata.get(f"{arch}.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != config.head_dim:
        raise CheckpointError(
            path,
            f"partial rotary embeddings ({rope_dims} of {config.head_dim} head dimensions) are not supported",
            f"{arch}.rope.dimension_count",
        )
    key_length = metadata.get(f"{arch}.attention.key_length")
    if key_length is not None and int(key_length) != config.head_dim:
        raise CheckpointError(
            path,
            f"key_length {key_length} differs from dim/n_heads = {config.head_dim}, which is not supported",
            f"{arch}.attention.key_length",
        )
    scaling_type = metadata.get(f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        raise CheckpointError(path, f"RoPE scaling type {scaling_type!r} is not supported", f"{arch}.rope.scaling.type")
    return config


# llama.cpp stores Llama 3.1 RoPE scaling as this tensor: one divisor per frequency pair.
ROPE_FREQS_TENSOR = "rope_freqs.weight"

# The scaling every released Llama 3.1 / 3.2 model uses, apart from `factor` (8 or 32).
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0
LLAMA3_ORIGINAL_CONTEXT = 8192


def llama3_frequency_divisors(scaling: RopeScaling, head_dim: int, rope_theta: float) -> np.ndarray:
    """Return d_i with scaled f_i = f_i / d_i for Llama 3.1 scaling (float64, shape [head_dim/2]).

    This is how llama.cpp's rope_freqs.weight encodes the scaling: d_i = 1 for wavelengths
    below L / high_freq_factor, `factor` above L / low_freq_factor, and in between
    1 / ((1 - a) / factor + a) with a = (L / wavelength - low_freq_factor) / (high - low).
    """
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelength = 2 * np.pi / inv_freq
    original = scaling.original_max_position_embeddings
    smooth = (original / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    interpolated = 1.0 / ((1 - smooth) / scaling.factor + smooth)

    divisors = np.where(wavelength > original / scaling.low_freq_factor, scaling.factor, interpolated)
    return np.where(wavelength < original / scaling.high_freq_factor, 1.0, divisors)


def rope_scaling_from_divisors(
    tensor: Any, config: ModelConfig, original_context: int, path: Path, quants: Any
) -> RopeScaling | None:
    """Recover the Llama 3.1 RopeScaling that a rope_freqs.weight tensor encodes.

    low_freq_factor and high_freq_factor are taken to be Llama 3.1's 1 and 4, and the
    original context is `original_context` (8192 unless the GGUF sets
    rope.scaling.original_context_length). `factor` is solved from the lowest-frequency
    pair and every divisor is then checked against the result. Returns None when every
    pair is in the unscaled high-frequency band and every divisor is 1. Raises
    CheckpointError for a wrong shape or type, and for divisors that this scaling does not
    produce, since those cannot be expressed as a Hugging Face rope_scaling.
    """
    from gguf import GGMLQuantizationType

    expected_shape = (config.head_dim // 2,)
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    if shape != expected_shape:
        raise CheckpointError(path, f"tensor has shape {shape} but head_dim {config.head_dim} implies {expected_shape}", tensor.name)
    qtype = GGMLQuantizationType(tensor.tensor_type)
    if qtype.name not in ("F32", "F16"):
        raise CheckpointError(path, f"tensor type {qtype.name} is not supported for RoPE factors; expected F32 or F16", tensor.name)
    divisors = quants.dequantize(tensor.data, qtype).astype(np.float64).reshape(expected_shape)
    if not np.all(np.isfinite(divisors)) or not np.all(divisors > 0):
        raise CheckpointError(path, "RoPE factors must be finite and positive", tensor.name)

    # a is the interpolation weight of each pair: <= 0 means divided by factor, >= 1 unchanged.
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    wavelength = 2 * np.pi / inv_freq
    a = (original_context / wavelength - LLAMA3_LOW_FREQ_FACTOR) / (LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR)
    lowest = int(np.argmin(a))
    if a[lowest] >= 1:
        if np.allclose(divisors, 1.0, rtol=1e-3):
            return None
        factor = float(divisors.max())
    elif a[lowest] <= 0:
        factor = float(divisors[lowest])
    else:
        # d = 1 / ((1 - a) / factor + a), solved for factor.
        denominator = 1.0 / divisors[lowest] - a[lowest]
        factor = float((1 - a[lowest]) / denominator) if denominator > 0 else float("inf")

    mismatch = float("inf")
    scaling = None
    if np.isfinite(factor) and factor > 0:
        # The divisors are float32, so a solved factor of 32 comes back as 32.000001.
        factor = float(f"{factor:.6g}")
        scaling = RopeScaling(
            factor=factor,
            low_freq_factor=LLAMA3_LOW_FREQ_FACTOR,
            high_freq_factor=LLAMA3_HIGH_FREQ_FACTOR,
            original_max_position_embeddings=original_context,
        )
        expected = llama3_frequency_divisors(scaling, config.head_dim, config.rope_theta)
        mismatch = float(np.max(np.abs(divisors - expected) / expected))
    if scaling is None or mismatch > 1e-3:
        raise CheckpointError(
            path,
            f"RoPE factors do not match Llama 3.1 scaling with factor {factor:g}, low_freq_factor "
            f"{LLAMA3_LOW_FREQ_FACTOR:g}, high_freq_factor {LLAMA3_HIGH_FREQ_FACTOR:g} and original context "
            f"{original_context} (max relative difference {mismatch:.3g}); other per-frequency factors are not supported",
            tensor.name,
        )
    return scaling


def load_gguf(path: str | os.PathLike) -> Checkpoint:
    """Open a GGUF file and return a Checkpoint whose tensors dequantize to float32 on first use.

    The file is memory-mapped, so opening it reads only the header. Raises CheckpointError
    for a missing, truncated or non-GGUF file, an architecture other than `llama`, a
    tensor type `gguf` cannot dequantize, and missing or misshapen tensors.
    """
    from gguf import GGMLQuantizationType, quants

    path = Path(path)
    _check_header(path)
    reader = _open_reader(path)
    metadata = read_metadata(reader, path)
    config = config_from_metadata(metadata, path)

    by_name: dict[str, Any] = {}
    for tensor in reader.tensors:
        if tensor.name == ROPE_FREQS_TENSOR:
            original_context = int(metadata.get("llama.rope.scaling.original_context_length", LLAMA3_ORIGINAL_CONTEXT))
            scaling = rope_scaling_from_divisors(tensor, config, original_context, path, quants)
            config = config.replace(rope_scaling=scaling)
            continue
        name = canonical_tensor_name(tensor.name)
        if name is None:
            raise CheckpointError(path, "unknown tensor name for a llama model", tensor.name)
        if name in by_name:
            raise CheckpointError(path, "duplicate tensor", tensor.name)
        by_name[name] = tensor

    if "tok_embeddings.weight" not in by_name:
        raise CheckpointError(path, "required tensor is missing", "token_embd.weight")
    embedding_rows = int(by_name["tok_embeddings.weight"].shape[-1])
    vocab_known = "llama.vocab_size" in metadata or "tokenizer.ggml.tokens" in metadata
    if not vocab_known:
        config = config.replace(vocab_size=embedding_rows)
    if "output.weight" not in by_name:
        config = config.replace(tie_embeddings=True)

    supported = dequantizable_types()
    loaders = {}
    infos = {}
    for name, tensor in by_name.items():
        qtype = GGMLQuantizationType(tensor.tensor_type)
        gguf_name = tensor.name
        if qtype.name not in supported:
            raise CheckpointError(
                path,
                f"tensor type {qtype.name} cannot be dequantized by the installed gguf package; "
                f"supported types: {', '.join(sorted(supported))}",
                gguf_name,
            )
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        infos[name] = TensorInfo(name, shape, qtype.name, gguf_name)
        loaders[name] = _make_loader(tensor.data, qtype, shape, quants, getattr(reader, "file_map", None))

    checkpoint = Checkpoint(
        config=config,
        loaders=loaders,
        infos=infos,
        path=os.fspath(path),
        format="gguf",
        metadata=metadata,
    )
    check_layer_count(config, len(infos), path, f"{metadata['general.architecture']}.block_count")
    _check_shapes(checkpoint, path)
    log.info("opened %s: %d tensors, %s", path, len(infos), config)
    return checkpoint


# Rows dequantized per step: bounds the float temporaries of gguf's dequantizers to a few
# MiB instead of several copies of the largest tensor (the 49152 x 576 SmolLM2 embedding).
DEQUANTIZE_ROWS = 2048


def _make_loader(data: np.ndarray, qtype: Any, shape: tuple[int, ...], quants: Any, file_map: Any):
    def load() -> np.ndarray:
        rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
        out = np.empty((rows.shape[0], int(np.prod(shape)) // rows.shape[0]), dtype=np.float32)
        for start in range(0, rows.shape[0], DEQUANTIZE_ROWS):
            stop = start + DEQUANTIZE_ROWS
            out[start:stop] = quants.dequantize(rows[start:stop], qtype).reshape(out[start:stop].shape)
        _release_pages(file_map, data)
        return out.reshape(shape)

    return load


def _release_pages(file_map: Any, data: np.ndarray) -> None:
    """Drop the file pages behind `data` from resident memory once they are dequantized.

    The mapping is read-only and file-backed, so the kernel re-reads the pages if they are
    touched again. Without this, peak RSS is the float32 weights plus the whole file.
    """
    if file_map is None or not hasattr(file_map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = np.frombuffer(file_map, dtype=np.uint8)
    offset = data.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    del base
    start = offset - offset % mmap.PAGESIZE
    length = offset + data.nbytes - start
    if 0 <= start and start + length <= len(file_map):
        file_map.madvise(mmap.MADV_DONTNEED, start, length)


def _check_shapes(checkpoint: Checkpoint, path: Path) -> None:
    shapes = expected_shapes(checkpoint.config)
    for name, shape in shapes.items():
        if name not in checkpoint:
            raise CheckpointError(path, "required tensor is missing", gguf_tensor_name(name))
        info = checkpoint.infos.get(name) or checkpoint.infos["tok_embeddings.weight"]
        if info.shape != shape:
            raise CheckpointError(
                path,
                f"tensor has shape {info.shape} but the metadata implies {shape}",
                info.source_name,
            )
