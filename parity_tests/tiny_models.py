"""Small random LLaMA checkpoints and GGUF files for tests, built with the real writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weights_tools.checkpoint import Checkpoint, expected_shapes
from weights_tools.config import ModelConfig
from weights_tools.gguf_reader import gguf_tensor_name


def tiny_config(**overrides) -> ModelConfig:
    """A 2-layer grouped-query config (4 query heads, 2 KV heads, head_dim 8)."""
    values = dict(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=64,
        hidden_dim=48,
        norm_eps=1e-5,
        rope_theta=10000.0,
        max_seq_len=64,
        tie_embeddings=False,
    )
    values.update(overrides)
    return ModelConfig(**values)


def random_weights(config: ModelConfig, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random float32 weights under canonical names; norm weights are near 1 as in trained models."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name == "output.weight" and config.tie_embeddings:
            continue
        if name.endswith("norm.weight"):
            weights[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return weights


def random_checkpoint(config: ModelConfig | None = None, seed: int = 0) -> Checkpoint:
    """An in-memory canonical checkpoint with random weights."""
    config = config or tiny_config()
    return Checkpoint.from_arrays(config, random_weights(config, seed))


def quantize_or_random_blocks(array: np.ndarray, qtype) -> np.ndarray:
    """Quantize with gguf where it can; else (K-quants) return random blocks of the right size.

    gguf 0.19 dequantizes K-quants but cannot quantize them, so tests of those types
    compare the reader against gguf's dequantization of the same random blocks. Every
    K-quant block has an even size and keeps its float16 scales at even offsets, so
    clearing bit 6 of each odd byte (the top exponent bit of each scale) keeps every
    scale below 2 and finite, which the reader's NaN and Inf check requires.
    """
    import gguf

    try:
        return gguf.quants.quantize(array, qtype)
    except NotImplementedError:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = array.shape
        rng = np.random.default_rng(rows * 1000 + cols)
        blocks = rng.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
        blocks[:, 1::2] &= 0xBF
        return blocks


def write_gguf(
    path: Path,
    config: ModelConfig,
    weights: dict[str, np.ndarray],
    tensor_type: str = "F32",
    architecture: str = "llama",
    tokens: list[str] | None = None,
    skip_keys: tuple[str, ...] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write canonical weights as a llama GGUF with gguf's own writer.

    Matrices are stored as `tensor_type` (F32, F16, BF16 or any type gguf can quantize);
    norm weights stay F32 as llama.cpp's converters keep them. Keys named in skip_keys
    (e.g. 'llama.vocab_size') are left out to test fallbacks. extra_tensors are added
    as they are under their GGUF names (e.g. 'rope_freqs.weight').
    """
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    arch = architecture
    values = {
        f"{arch}.block_count": ("uint32", config.n_layers),
        f"{arch}.context_length": ("uint32", config.max_seq_len),
        f"{arch}.embedding_length": ("uint32", config.dim),
        f"{arch}.feed_forward_length": ("uint32", config.hidden_dim),
        f"{arch}.attention.head_count": ("uint32", config.n_heads),
        f"{arch}.attention.head_count_kv": ("uint32", config.n_kv_heads),
        f"{arch}.attention.layer_norm_rms_epsilon": ("float32", config.norm_eps),
        f"{arch}.rope.freq_base": ("float32", config.rope_theta),
        f"{arch}.rope.dimension_count": ("uint32", config.head_dim),
        f"{arch}.vocab_size": ("uint32", config.vocab_size),
    }
    for key, (kind, value) in values.items():
        if key in skip_keys:
            continue
        getattr(writer, f"add_{kind}")(key, value)
    if tokens is not None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)

    qtype = gguf.GGMLQuantizationType[tensor_type]
    for name, array in weights.items():
        gguf_name = gguf_tensor_name(name)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, quantize_or_random_blocks(array, qtype), raw_dtype=qtype)
    for gguf_name, array in (extra_tensors or {}).items():
        writer.add_tensor(gguf_name, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
