"""The LLaMA forward pass in plain NumPy: the executable specification.

Shapes use these axis names:
    B batch, S new positions in this call, T = start_pos + S positions seen so far,
    D dim, H n_heads, K n_kv_heads, Hd head_dim, F hidden_dim, V vocab_size.

Activations are float32 unless a lower compute dtype is chosen; RMSNorm, RoPE and
softmax always compute in float32 and cast back, as Meta's reference does.
Linear weights are [out_features, in_features] as in PyTorch, so a projection is
linear(x, W) = x @ W.T.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from weights_tools.checkpoint import Checkpoint
from weights_tools.config import ModelConfig, RopeScaling

# A tracer receives (trace point name, activation) at every trace point; see numpy_llama.trace.
Tracer = Callable[[str, np.ndarray], None]


def linear(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """y = x @ weight.T, with weight [out_features, in_features] as in PyTorch's nn.Linear.

    float16 and bfloat16 inputs are multiplied in float32 and the result is rounded to x's
    dtype, as CPU kernels for those types accumulate in float32.
    """
    if x.dtype == np.float32 and weight.dtype == np.float32:
        return x @ weight.T
    return (x.astype(np.float32) @ weight.astype(np.float32).T).astype(x.dtype)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm: y = x / sqrt(mean(x**2) + eps) * weight.

    x: [..., D], weight: [D] -> [..., D] in x's dtype. The mean square is taken in float32,
    because in float16 the sum of squares overflows once |x| reaches about 256 / sqrt(D).
    """
    x32 = x.astype(np.float32, copy=False)
    mean_square = np.mean(x32 * x32, axis=-1, keepdims=True)
    normed = (x32 / np.sqrt(mean_square + eps)).astype(x.dtype, copy=False)
    return normed * weight.astype(x.dtype, copy=False)


def llama3_scale_frequencies(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    """Llama 3.1 RoPE scaling of the inverse frequencies (float64, shape [Hd/2]).

    With wavelength w = 2*pi / f and original context L:
        w < L / high_freq_factor:  f unchanged (high frequencies)
        w > L / low_freq_factor:   f / factor  (low frequencies)
        otherwise:                 (1 - a) * f / factor + a * f,
                                   a = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
    """
    wavelength = 2 * np.pi / inv_freq
    original = scaling.original_max_position_embeddings
    high_freq_wavelength = original / scaling.high_freq_factor
    low_freq_wavelength = original / scaling.low_freq_factor

    smooth = (original / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq

    scaled = np.where(wavelength > low_freq_wavelength, inv_freq / scaling.factor, interpolated)
    return np.where(wavelength < high_freq_wavelength, inv_freq, scaled)


def rope_frequencies(head_dim: int, rope_theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """RoPE inverse frequencies f_i = rope_theta ** (-2i / head_dim), i = 0 .. Hd/2 - 1 (float64)."""
    inv_freq = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is not None:
        inv_freq = llama3_scale_frequencies(inv_freq, scaling)
    return inv_freq


def rope_table(
    head_dim: int, max_seq_len: int, rope_theta: float, scaling: RopeScaling | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and sine of the rotation angle m * f_i for every position m: two [max_seq_len, Hd/2] float32 arrays.

    Angles are computed in float64, so the table is exact to float32 rounding even at
    positions in the hundreds of thousands.
    """
    inv_freq = rope_frequencies(head_dim, rope_theta, scaling)
    angles = np.outer(np.arange(max_seq_len, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of every head by the angle m * f_i.

        y[2i]   = x[2i] * cos - x[2i+1] * sin
        y[2i+1] = x[2i] * sin + x[2i+1] * cos

    x: [B, S, heads, Hd]; cos, sin: [S, Hd/2] for the positions of x -> [B, S, heads, Hd].
    This is Meta's layout. Hugging Face's "rotate-half" layout pairs x[i] with x[i + Hd/2]
    instead; the weights differ by a row permutation of wq and wk, not the math.
    """
    x32 = x.astype(np.float32, copy=False)
    x_even = x32[..., 0::2]
    x_odd = x32[..., 1::2]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]

    rotated = np.empty_like(x32)
    rotated[..., 0::2] = x_even * cos - x_odd * sin
    rotated[..., 1::2] = x_even * sin + x_odd * cos
    return rotated.astype(x.dtype)


def repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray:
    """Grouped-query attention: share each key/value head among n_rep consecutive query heads.

    x: [B, T, K, Hd] -> [B, T, K * n_rep, Hd]. Query head h reads KV head h // n_rep,
    so with 4 query heads and 2 KV heads the order is [0, 0, 1, 1] (repeat, not tile).
    """
    if n_rep == 1:
        return x
    return np.repeat(x, n_rep, axis=2)


def causal_mask(seq_len: int, start_pos: int) -> np.ndarray:
    """Additive causal mask [S, T], T = start_pos + S: 0 where key j <= start_pos + i, else -inf.

    Row i is the query at absolute position start_pos + i. It always sees at least its own
    key, so no row is fully masked.
    """
    query_positions = start_pos + np.arange(seq_len)[:, None]
    key_positions = np.arange(start_pos + seq_len)[None, :]
    return np.where(key_positions <= query_positions, 0.0, -np.inf).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax(x)_j = exp(x_j - max x) / sum_k exp(x_k - max x), in float32."""
    x32 = x.astype(np.float32, copy=False)
    shifted = np.exp(x32 - np.max(x32, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def scaled_dot_product_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, tracer: Tracer | None = None, prefix: str = ""
) -> np.ndarray:
    """softmax(q k^T / sqrt(Hd) + mask) v, per head.

    q: [B, S, H, Hd]; k, v: [B, T, H, Hd] (KV heads already repeated); mask: [S, T]
    -> [B, S, H, Hd]. Scores, probabilities and the weighted sum of values are float32;
    the output is rounded to v's dtype.
    """
    head_dim = q.shape[-1]
    # Heads become a batch axis so that matmul runs one BLAS product per (batch, head).
    q_heads = q.astype(np.float32, copy=False).transpose(0, 2, 1, 3)  # [B, H, S, Hd]
    k_heads = k.astype(np.float32, copy=False).transpose(0, 2, 3, 1)  # [B, H, Hd, T]
    v_heads = v.astype(np.float32, copy=False).transpose(0, 2, 1, 3)  # [B, H, T, Hd]

    scores = q_heads @ k_heads / np.sqrt(head_dim) + mask  # [B, H, S, T]
    probs = softmax(scores, axis=-1)
    if tracer is not None:
        tracer(prefix + "attn_scores", scores)
        tracer(prefix + "attn_probs", probs)

    out = probs @ v_heads  # [B, H, S, Hd]
    return out.transpose(0, 2, 1, 3).astype(v.dtype)


@dataclass
class KVCache:
    """Preallocated keys and values for every layer: k, v are [n_layers, B, max_seq_len, K, Hd].

    Position m of a sequence lives at index m, so a forward call at start_pos writes rows
    start_pos .. start_pos + S - 1 and attends over rows 0 .. start_pos + S - 1.
    """

    k: np.ndarray
    v: np.ndarray

    @classmethod
    def allocate(cls, config: ModelConfig, batch: int = 1, max_seq_len: int | None = None, dtype=np.float32) -> "KVCache":
        length = max_seq_len or config.max_seq_len
        shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
        return cls(k=np.zeros(shape, dtype=dtype), v=np.zeros(shape, dtype=dtype))

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]


def attention(
    x: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    wv: np.ndarray,
    wo: np.ndarray,
    cos: np.ndarray,
    sin: np.ndarray,
    cache_k: np.ndarray,
    cache_v: np.ndarray,
    start_pos: int,
    n_heads: int,
    n_kv_heads: int,
    tracer: Tracer | None = None,
    prefix: str = "",
) -> np.ndarray:
    """Grouped-query self-attention with RoPE and a KV cache.

    x: [B, S, D]; wq: [H*Hd, D]; wk, wv: [K*Hd, D]; wo: [D, H*Hd]; cos, sin: [S, Hd/2] for
    positions start_pos .. start_pos+S-1; cache_k, cache_v: [B, max_seq_len, K, Hd], written
    in place at those positions. Returns [B, S, D].
    """
    batch, seq_len, _ = x.shape
    head_dim = wq.shape[0] // n_heads

    q = linear(x, wq).reshape(batch, seq_len, n_heads, head_dim)
    k = linear(x, wk).reshape(batch, seq_len, n_kv_heads, head_dim)
    v = linear(x, wv).reshape(batch, seq_len, n_kv_heads, head_dim)
    if tracer is not None:
        tracer(prefix + "q", q)
        tracer(prefix + "k", k)
        tracer(prefix + "v", v)

    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    if tracer is not None:
        tracer(prefix + "q_rope", q)
        tracer(prefix + "k_rope", k)

    end_pos = start_pos + seq_len
    cache_k[:batch, start_pos:end_pos] = k
    cache_v[:batch, start_pos:end_pos] = v
    # NOTE: repeat_kv copies the cached keys and values for every layer and token, which at
    # thousands of positions moves more bytes than the layer's weights.
    keys = repeat_kv(cache_k[:batch, :end_pos], n_heads // n_kv_heads)
    values = repeat_kv(cache_v[:batch, :end_pos], n_heads // n_kv_heads)

    mask = causal_mask(seq_len, start_pos)
    out = scaled_dot_product_attention(q, keys, values, mask, tracer, prefix)
    out = out.reshape(batch, seq_len, n_heads * head_dim)
    if tracer is not None:
        tracer(prefix + "attn_heads", out)
    return linear(out, wo)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x)).

    For x below about -88 (float32) exp(-x) overflows to inf and the result is the correct
    limit -0.0, so the overflow warning is silenced rather than the formula changed.
    """
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))


def feed_forward(
    x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray, tracer: Tracer | None = None, prefix: str = ""
) -> np.ndarray:
    """SwiGLU feed-forward: (silu(x @ w1.T) * (x @ w3.T)) @ w2.T.

    x: [..., D]; w1 (gate), w3 (up): [F, D]; w2 (down): [D, F] -> [..., D].
    """
    gate = linear(x, w1)
    up = linear(x, w3)
    act = silu(gate) * up
    if tracer is not None:
        tracer(prefix + "ffn_gate", gate)
        tracer(prefix + "ffn_up", up)
        tracer(prefix + "ffn_act", act)
    return linear(act, w2)


def transformer_block(
    x: np.ndarray,
    layer: dict[str, np.ndarray],
    config: ModelConfig,
    cos: np.ndarray,
    sin: np.ndarray,
    cache_k: np.ndarray,
    cache_v: np.ndarray,
    start_pos: int,
    tracer: Tracer | None = None,
    prefix: str = "",
) -> np.ndarray:
    """Pre-norm residual block: h = x + attention(rms_norm(x)); out = h + feed_forward(rms_norm(h)).

    x: [B, S, D] -> [B, S, D]. `layer` maps suffixes such as 'attention.wq.weight' to tensors.
    """
    attn_in = rms_norm(x, layer["attention_norm.weight"], config.norm_eps)
    if tracer is not None:
        tracer(prefix + "attn_norm", attn_in)

    attn_out = attention(
        attn_in,
        layer["attention.wq.weight"],
        layer["attention.wk.weight"],
        layer["attention.wv.weight"],
        layer["attention.wo.weight"],
        cos,
        sin,
        cache_k,
        cache_v,
        start_pos,
        config.n_heads,
        config.n_kv_heads,
        tracer,
        prefix,
    )
    h = x + attn_out
    if tracer is not None:
        tracer(prefix + "attn_out", attn_out)
        tracer(prefix + "resid_mid", h)

    ffn_in = rms_norm(h, layer["ffn_norm.weight"], config.norm_eps)
    if tracer is not None:
        tracer(prefix + "ffn_norm", ffn_in)

    ffn_out = feed_forward(
        ffn_in,
        layer["feed_forward.w1.weight"],
        layer["feed_forward.w2.weight"],
        layer["feed_forward.w3.weight"],
        tracer,
        prefix,
    )
    out = h + ffn_out
    if tracer is not None:
        tracer(prefix + "ffn_out", ffn_out)
        tracer(prefix + "resid_post", out)
    return out


class StreamedLayers(Sequence):
    """Per-layer weights read from the checkpoint on every access and dropped after use.

    Only one layer's float32 weights are resident at a time, so a model much larger than
    memory in float32 (LLaMA-7B stored as float16) can still run, at the cost of
    converting every layer again on each forward call.
    """

    def __init__(self, checkpoint: Checkpoint, dtype: np.dtype):
        self.checkpoint = checkpoint
        self.dtype = dtype

    def __len__(self) -> int:
        return self.checkpoint.config.n_layers

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return {suffix: w.astype(self.dtype, copy=False) for suffix, w in self.checkpoint.layer(i).items()}


class Llama:
    """A LLaMA model: canonical weights plus the RoPE table, run with `forward`.

    The weights are the checkpoint's arrays (not copies) when dtype is float32.
    """

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray], dtype=np.float32, layers=None):
        self.config = config
        self.dtype = np.dtype(dtype)
        names = [name for name in weights if layers is None or not name.startswith("layers.")]
        if config.tie_embeddings:
            names = [name for name in names if name != "output.weight"]
        self.weights = {name: np.asarray(weights[name]).astype(self.dtype, copy=False) for name in names}
        if config.tie_embeddings:
            self.weights["output.weight"] = self.weights["tok_embeddings.weight"]
        if layers is None:
            layers = [
                {name.split(".", 2)[2]: self.weights[name] for name in self.weights if name.startswith(f"layers.{i}.")}
                for i in range(config.n_layers)
            ]
        self.layers = layers
        # The RoPE table grows on demand (see rope_rows): max_seq_len comes from the
        # checkpoint file, and a hostile 2**31 - 1 would otherwise allocate 64 GiB here.
        self.rope_cos = np.zeros((0, config.head_dim // 2), np.float32)
        self.rope_sin = self.rope_cos

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype=np.float32, stream_layers: bool = False) -> "Llama":
        """Build a model from a canonical checkpoint.

        By default every tensor is loaded once. With stream_layers=True only the embedding,
        final norm and output head stay resident, and each block's weights are read from the
        checkpoint when the forward pass reaches it (the checkpoint's cache is switched off).
        """
        if not stream_layers:
            return cls(checkpoint.config, checkpoint.load_all(), dtype=dtype)
        checkpoint.cache = False
        return cls(checkpoint.config, checkpoint, dtype=dtype, layers=StreamedLayers(checkpoint, np.dtype(dtype)))

    def new_cache(self, batch: int = 1, max_seq_len: int | None = None) -> KVCache:
        """Allocate an empty KV cache for `batch` sequences of up to max_seq_len positions."""
        return KVCache.allocate(self.config, batch, max_seq_len, dtype=self.dtype)

    def rope_rows(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the RoPE cos and sin rows [end - start, Hd/2] of positions start .. end-1.

        The table is recomputed at least twice as long when `end` passes its length, capped
        at max_seq_len. Its rows do not depend on its length, so results are the same as
        with a table built for every position up front.
        """
        if end > len(self.rope_cos):
            config = self.config
            length = min(max(end, 2 * len(self.rope_cos), 256), config.max_seq_len)
            self.rope_cos, self.rope_sin = rope_table(config.head_dim, length, config.rope_theta, config.rope_scaling)
        return self.rope_cos[start:end], self.rope_sin[start:end]

    def forward(
        self,
        tokens: np.ndarray,
        start_pos: int = 0,
        cache: KVCache | None = None,
        tracer: Tracer | None = None,
    ) -> np.ndarray:
        """Run S new tokens at positions start_pos .. start_pos+S-1 and return float32 logits [B, S, V].

        tokens: [B, S] or [S] integer ids. Prefill passes the whole prompt at start_pos 0,
        decode passes one token at the next position; both reuse `cache`, which contains the
        keys and values of all earlier positions. Without a cache, start_pos must be 0.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        batch, seq_len = tokens.shape
        if cache is None:
            if start_pos != 0:
                raise ValueError(f"start_pos {start_pos} > 0 requires the KV cache of the earlier positions; pass cache=")
            cache = self.new_cache(batch, seq_len)
        if start_pos + seq_len > cache.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + seq_len} do not fit the KV cache of {cache.max_seq_len} positions"
            )
        if start_pos + seq_len > self.config.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + seq_len} exceed the context length {self.config.max_seq_len}"
            )

        h = self.weights["tok_embeddings.weight"][tokens]
        if tracer is not None:
            tracer("embed", h)

        cos, sin = self.rope_rows(start_pos, start_pos + seq_len)
        for i, layer in enumerate(self.layers):
            h = transformer_block(
                h, layer, self.config, cos, sin, cache.k[i], cache.v[i], start_pos, tracer, f"layers.{i}."
            )

        h = rms_norm(h, self.weights["norm.weight"], self.config.norm_eps)
        if tracer is not None:
            tracer("final_norm", h)

        logits = linear(h, self.weights["output.weight"]).astype(np.float32, copy=False)
        if tracer is not None:
            tracer("logits", logits)
        return logits
