"""Hypothesis strategies for LLaMA configs and component inputs.

Hypothesis draws the shape parameters and a seed, and the arrays come from a NumPy
generator seeded with it: drawing thousands of floats element by element would be slow,
and shrinking still simplifies the shapes. Cases hold float32 arrays; the harness casts
them to the compute dtype under test.

Ranges: head_dim in {8, 16, 32, 64, 128}; n_kv_heads == n_heads or a proper divisor of
it; batch >= 1; 1..64 new positions; start_pos 0 or from 1 upward; rope_theta 1e4..1e6;
norm eps 1e-6 or 1e-5; activation scales from 1e-2 up to 1e3, where a float16 sum of
squares overflows. n_heads * head_dim stays <= 256 and hidden_dim <= 192 so that each
example takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from weights_tools.checkpoint import LAYER_TENSORS, Checkpoint, expected_shapes
from weights_tools.config import ModelConfig, RopeScaling

HEAD_DIMS = (8, 16, 32, 64, 128)
MAX_WIDTH = 256
NORM_EPS = (1e-6, 1e-5)
# |x| around 300 makes sum(x**2) exceed float16's max of 65504 already at D = 1.
LARGE_SCALES = (300.0, 1000.0)
ACTIVATION_SCALES = (1e-2, 1.0, 30.0) + LARGE_SCALES


@dataclass(frozen=True)
class AttentionShape:
    """Head layout of one attention layer: H query heads sharing K key/value heads."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def dim(self) -> int:
        return self.n_heads * self.head_dim


@dataclass(frozen=True)
class RmsNormCase:
    x: np.ndarray  # [B, S, D]
    weight: np.ndarray  # [D]
    eps: float


@dataclass(frozen=True)
class RopeCase:
    x: np.ndarray  # [B, S, heads, Hd]
    start_pos: int
    rope_theta: float
    rope_scaling: RopeScaling | None


@dataclass(frozen=True)
class FeedForwardCase:
    x: np.ndarray  # [B, S, D]
    w1: np.ndarray  # [F, D]
    w2: np.ndarray  # [D, F]
    w3: np.ndarray  # [F, D]


@dataclass(frozen=True)
class AttentionCase:
    """Inputs of one attention call: new positions start_pos .. start_pos+S-1 of x.

    cache_k, cache_v [B, start_pos + S, K, Hd] hold random keys and values at the earlier
    positions (as a prefill would have left them) and zeros after.
    """

    x: np.ndarray  # [B, S, D]
    weights: dict[str, np.ndarray]  # wq, wk, wv, wo in canonical [out, in] layout
    shape: AttentionShape
    rope_theta: float
    rope_scaling: RopeScaling | None
    cache_k: np.ndarray
    cache_v: np.ndarray
    start_pos: int


@dataclass(frozen=True)
class BlockCase:
    x: np.ndarray  # [B, S, D]
    layer: dict[str, np.ndarray]  # suffixes of weights_tools.checkpoint.LAYER_TENSORS
    config: ModelConfig
    cache_k: np.ndarray
    cache_v: np.ndarray
    start_pos: int


@dataclass(frozen=True)
class ModelCase:
    checkpoint: Checkpoint
    tokens: np.ndarray  # [B, S] int64


seeds = st.integers(0, 2**32 - 1)
batches = st.integers(1, 3)
seq_lens = st.integers(1, 64)
rope_thetas = st.floats(4.0, 6.0).map(lambda exponent: float(10.0**exponent))
norm_eps = st.sampled_from(NORM_EPS)
activation_scales = st.sampled_from(ACTIVATION_SCALES)


def start_positions(max_value: int) -> st.SearchStrategy[int]:
    """Start position 0 (prefill) or 1 .. max_value (decode after a prefix)."""
    return st.one_of(st.just(0), st.integers(1, max_value))


@st.composite
def rope_scalings(draw) -> RopeScaling | None:
    """None, or Llama 3.1 scaling whose smoothing band falls inside small head_dims' wavelengths."""
    if draw(st.booleans()):
        return None
    low = draw(st.sampled_from((1.0, 2.0)))
    return RopeScaling(
        factor=draw(st.sampled_from((2.0, 8.0, 32.0))),
        low_freq_factor=low,
        high_freq_factor=low * draw(st.sampled_from((2.0, 4.0))),
        original_max_position_embeddings=draw(st.sampled_from((16, 64, 512, 8192))),
    )


@st.composite
def attention_shapes(draw, max_width: int = MAX_WIDTH) -> AttentionShape:
    """Multi-head (K == H) or grouped-query (K a proper divisor of H) layouts with H * Hd <= max_width."""
    head_dim = draw(st.sampled_from(HEAD_DIMS))
    max_heads = max(1, max_width // head_dim)
    n_heads = draw(st.integers(1, max_heads))
    divisors = [k for k in range(1, n_heads + 1) if n_heads % k == 0]
    n_kv_heads = draw(st.sampled_from(divisors))
    return AttentionShape(n_heads, n_kv_heads, head_dim)


def _normal(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _linear(rng: np.random.Generator, out_features: int, in_features: int) -> np.ndarray:
    """A [out, in] weight with the 1/sqrt(in) scale of trained models, so outputs stay O(|x|)."""
    return _normal(rng, (out_features, in_features), 1.0 / np.sqrt(in_features))


def _norm_weight(rng: np.random.Generator, dim: int) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(dim)).astype(np.float32)


@st.composite
def rms_norm_cases(draw) -> RmsNormCase:
    rng = np.random.default_rng(draw(seeds))
    dim = draw(st.sampled_from((8, 16, 64, 256)))
    x = _normal(rng, (draw(batches), draw(seq_lens), dim), draw(activation_scales))
    return RmsNormCase(x, _norm_weight(rng, dim), draw(norm_eps))


@st.composite
def rope_cases(draw, max_start_pos: int = 65536) -> RopeCase:
    rng = np.random.default_rng(draw(seeds))
    shape = draw(attention_shapes())
    x = _normal(rng, (draw(batches), draw(seq_lens), shape.n_heads, shape.head_dim), draw(activation_scales))
    return RopeCase(x, draw(start_positions(max_start_pos)), draw(rope_thetas), draw(rope_scalings()))


@st.composite
def feed_forward_cases(draw) -> FeedForwardCase:
    rng = np.random.default_rng(draw(seeds))
    dim = draw(st.sampled_from((8, 32, 64, 128)))
    hidden = draw(st.sampled_from((16, 48, 96, 192)))
    # Inputs come from RMSNorm in a model, so their scale is O(1); 4 reaches the SiLU tails.
    x = _normal(rng, (draw(batches), draw(seq_lens), dim), draw(st.sampled_from((0.1, 1.0, 4.0))))
    return FeedForwardCase(x, _linear(rng, hidden, dim), _linear(rng, dim, hidden), _linear(rng, hidden, dim))


def _random_cache(rng, batch, start_pos, seq_len, shape: AttentionShape) -> tuple[np.ndarray, np.ndarray]:
    cache_shape = (batch, start_pos + seq_len, shape.n_kv_heads, shape.head_dim)
    cache_k = np.zeros(cache_shape, np.float32)
    cache_v = np.zeros(cache_shape, np.float32)
    cache_k[:, :start_pos] = _normal(rng, (batch, start_pos, shape.n_kv_heads, shape.head_dim))
    cache_v[:, :start_pos] = _normal(rng, (batch, start_pos, shape.n_kv_heads, shape.head_dim))
    return cache_k, cache_v


@st.composite
def attention_cases(draw, max_start_pos: int = 48) -> AttentionCase:
    rng = np.random.default_rng(draw(seeds))
    shape = draw(attention_shapes())
    batch, seq_len, start_pos = draw(batches), draw(st.integers(1, 32)), draw(start_positions(max_start_pos))
    x = _normal(rng, (batch, seq_len, shape.dim), draw(st.sampled_from((0.1, 1.0, 4.0))))
    q_width, kv_width = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    weights = {
        "wq": _linear(rng, q_width, shape.dim),
        "wk": _linear(rng, kv_width, shape.dim),
        "wv": _linear(rng, kv_width, shape.dim),
        "wo": _linear(rng, shape.dim, q_width),
    }
    cache_k, cache_v = _random_cache(rng, batch, start_pos, seq_len, shape)
    return AttentionCase(
        x, weights, shape, draw(rope_thetas), draw(rope_scalings()), cache_k, cache_v, start_pos
    )


@st.composite
def model_configs(draw, max_layers: int = 2, vocab_size: int = 97, max_seq_len: int = 128) -> ModelConfig:
    shape = draw(attention_shapes(max_width=128))
    return ModelConfig(
        dim=shape.dim,
        n_layers=draw(st.integers(1, max_layers)),
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        vocab_size=vocab_size,
        hidden_dim=draw(st.sampled_from((16, 48, 96))),
        norm_eps=draw(norm_eps),
        rope_theta=draw(rope_thetas),
        rope_scaling=draw(rope_scalings()),
        max_seq_len=max_seq_len,
        tie_embeddings=draw(st.booleans()),
    )


def random_layer(rng: np.random.Generator, config: ModelConfig) -> dict[str, np.ndarray]:
    """Random weights of one block keyed by LAYER_TENSORS suffix, norms near 1 and linears ~ 1/sqrt(in)."""
    shapes = expected_shapes(config)
    layer = {}
    for suffix in LAYER_TENSORS:
        shape = shapes[f"layers.0.{suffix}"]
        layer[suffix] = _norm_weight(rng, shape[0]) if len(shape) == 1 else _linear(rng, *shape)
    return layer


def random_checkpoint(config: ModelConfig, seed: int) -> Checkpoint:
    """An in-memory checkpoint of config with random weights."""
    rng = np.random.default_rng(seed)
    arrays = {"tok_embeddings.weight": _normal(rng, (config.vocab_size, config.dim))}
    for i in range(config.n_layers):
        for suffix, array in random_layer(rng, config).items():
            arrays[f"layers.{i}.{suffix}"] = array
    arrays["norm.weight"] = _norm_weight(rng, config.dim)
    if not config.tie_embeddings:
        arrays["output.weight"] = _linear(rng, config.vocab_size, config.dim)
    return Checkpoint.from_arrays(config, arrays)


@st.composite
def block_cases(draw, max_start_pos: int = 32) -> BlockCase:
    rng = np.random.default_rng(draw(seeds))
    config = draw(model_configs(max_layers=1))
    shape = AttentionShape(config.n_heads, config.n_kv_heads, config.head_dim)
    batch, seq_len, start_pos = draw(batches), draw(st.integers(1, 32)), draw(start_positions(max_start_pos))
    x = _normal(rng, (batch, seq_len, config.dim), draw(activation_scales))
    cache_k, cache_v = _random_cache(rng, batch, start_pos, seq_len, shape)
    return BlockCase(x, random_layer(rng, config), config, cache_k, cache_v, start_pos)


@st.composite
def model_cases(draw) -> ModelCase:
    config = draw(model_configs())
    checkpoint = random_checkpoint(config, draw(seeds))
    rng = np.random.default_rng(draw(seeds))
    tokens = rng.integers(0, config.vocab_size, size=(draw(batches), draw(st.integers(1, 24))))
    return ModelCase(checkpoint, tokens)
