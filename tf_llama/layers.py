"""Keras 3 layers of the LLaMA transformer, written against the TensorFlow backend.

Shapes use these axis names:
    B batch, S new positions in this call, T = start_pos + S positions seen so far,
    D dim, H n_heads, K n_kv_heads, Hd head_dim, F hidden_dim.

Every layer computes in its dtype policy's compute dtype (float32, float16 or bfloat16)
and stores its weights in that same dtype. RMSNorm, RoPE and the attention softmax always
compute in float32 and cast the result back, because float16 overflows in the RMSNorm sum
of squares and loses the RoPE angle precision.

Kernels are stored Keras-style as [in_features, out_features], so a projection is x @ W.
The canonical checkpoint stores them [out, in]; tf_llama.model transposes on load.

Layers that accept `tracer` call tracer(name, array) with a NumPy copy of each named
activation, but only while executing eagerly. Inside tf.function the tracer is ignored,
and with tracer=None no copy is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from weights_tools.config import RopeScaling

Tracer = Callable[[str, np.ndarray], None]

PACKAGE = "tf_llama"


def emit(tracer: Tracer | None, name: str, value: tf.Tensor) -> None:
    """Pass a NumPy copy of `value` to the tracer, when there is one and TF runs eagerly."""
    if tracer is not None and tf.executing_eagerly():
        tracer(name, value.numpy())


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNorm(keras.layers.Layer):
    """RMSNorm: y = x / sqrt(mean(x**2, axis=-1) + eps) * weight.

    x: [..., D] -> [..., D] in the compute dtype. The mean square and the division run in
    float32, because in float16 the sum of squares overflows once |x| reaches about
    256 / sqrt(D). The normalized value is cast back before the weight multiplies it.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.weight = self.add_weight(name="weight", shape=(input_shape[-1],), initializer="ones")
        super().build(input_shape)

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        mean_square = tf.reduce_mean(x32 * x32, axis=-1, keepdims=True)
        normed = tf.cast(x32 / tf.sqrt(mean_square + self.epsilon), self.compute_dtype)
        return normed * tf.cast(self.weight, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def inverse_frequencies(head_dim: int, rope_theta: float, rope_scaling: RopeScaling | None) -> np.ndarray:
    """RoPE inverse frequencies f_i = rope_theta ** (-2i / Hd), i < Hd/2, as float64 [Hd/2].

    With Llama 3.1 scaling (wavelength w = 2*pi / f, original context L):
        w < L / high_freq_factor:  f kept
        w > L / low_freq_factor:   f / factor
        otherwise:                 (1 - a) * f / factor + a * f,
                                   a = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
    """
    exponents = np.arange(head_dim // 2, dtype=np.float64) * 2.0 / head_dim
    freqs = rope_theta ** -exponents
    if rope_scaling is None:
        return freqs

    context = rope_scaling.original_max_position_embeddings
    low, high = rope_scaling.low_freq_factor, rope_scaling.high_freq_factor
    wavelengths = 2.0 * math.pi / freqs
    blend = (context / wavelengths - low) / (high - low)
    scaled = np.empty_like(freqs)
    for i, (f, w, a) in enumerate(zip(freqs, wavelengths, blend)):
        if w < context / high:
            scaled[i] = f
        elif w > context / low:
            scaled[i] = f / rope_scaling.factor
        else:
            scaled[i] = (1.0 - a) * f / rope_scaling.factor + a * f
    return scaled


def rope_scaling_to_dict(rope_scaling: RopeScaling | dict | None) -> dict | None:
    if rope_scaling is None or isinstance(rope_scaling, dict):
        return rope_scaling
    return {
        "factor": rope_scaling.factor,
        "low_freq_factor": rope_scaling.low_freq_factor,
        "high_freq_factor": rope_scaling.high_freq_factor,
        "original_max_position_embeddings": rope_scaling.original_max_position_embeddings,
        "rope_type": rope_scaling.rope_type,
    }


def rope_scaling_from_dict(rope_scaling: RopeScaling | dict | None) -> RopeScaling | None:
    if isinstance(rope_scaling, dict):
        return RopeScaling(**rope_scaling)
    return rope_scaling


@keras.saving.register_keras_serializable(package=PACKAGE)
class RotaryEmbedding(keras.layers.Layer):
    """RoPE on interleaved pairs: rotate (x[2i], x[2i+1]) of every head by the angle m * f_i.

        y[2i]   = x[2i] * cos(m f_i) - x[2i+1] * sin(m f_i)
        y[2i+1] = x[2i] * sin(m f_i) + x[2i+1] * cos(m f_i)

    x: [B, S, heads, Hd] at positions m = start_pos .. start_pos + S - 1 -> same shape.
    Angles are computed in float64 and the rotation in float32, then cast back to the
    compute dtype. The layer has no weights: the frequencies follow from head_dim,
    rope_theta and rope_scaling.
    """

    def __init__(self, head_dim: int, rope_theta: float = 10000.0, rope_scaling=None, **kwargs):
        super().__init__(**kwargs)
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE rotates pairs, so head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling_from_dict(rope_scaling)
        self.inv_freq = inverse_frequencies(head_dim, rope_theta, self.rope_scaling)

    def cos_sin(self, start_pos, seq_len) -> tuple[tf.Tensor, tf.Tensor]:
        """Return cos and sin of m * f_i for the S positions from start_pos: two float32 [S, Hd/2]."""
        positions = tf.cast(start_pos, tf.float64) + tf.range(seq_len, dtype=tf.float64)
        angles = positions[:, None] * tf.constant(self.inv_freq, tf.float64)[None, :]
        return tf.cast(tf.cos(angles), tf.float32), tf.cast(tf.sin(angles), tf.float32)

    def call(self, x, start_pos=0):
        shape = tf.shape(x)
        cos, sin = self.cos_sin(start_pos, shape[1])
        cos = cos[None, :, None, :]
        sin = sin[None, :, None, :]

        pairs = tf.reshape(tf.cast(x, tf.float32), tf.concat([shape[:-1], [self.head_dim // 2, 2]], axis=0))
        x_even, x_odd = pairs[..., 0], pairs[..., 1]
        rotated = tf.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], axis=-1)
        return tf.cast(tf.reshape(rotated, shape), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "head_dim": self.head_dim,
                "rope_theta": self.rope_theta,
                "rope_scaling": rope_scaling_to_dict(self.rope_scaling),
            }
        )
        return config


def causal_mask(seq_len, start_pos, n_keys=None) -> tf.Tensor:
    """Additive float32 mask [S, n_keys]: 0 where key j <= start_pos + i, else -inf.

    n_keys defaults to start_pos + S. A longer n_keys (the whole cache) masks the rows
    after the current position as well.
    """
    query_positions = tf.cast(start_pos, tf.int32) + tf.range(seq_len)[:, None]
    if n_keys is None:
        n_keys = tf.cast(start_pos, tf.int32) + seq_len
    key_positions = tf.range(n_keys)[None, :]
    return tf.where(key_positions <= query_positions, 0.0, float("-inf"))


def update_cache(cache: tf.Tensor, new: tf.Tensor, start_pos) -> tf.Tensor:
    """Write new [B, S, K, Hd] into rows start_pos .. start_pos+S-1 of cache [B, max_seq_len, K, Hd]."""
    shape = tf.shape(new)
    batch_index = tf.range(shape[0])[:, None]
    position_index = tf.cast(start_pos, tf.int32) + tf.range(shape[1])[None, :]
    indices = tf.stack(
        [tf.broadcast_to(batch_index, shape[:2]), tf.broadcast_to(position_index, shape[:2])], axis=-1
    )
    return tf.tensor_scatter_nd_update(cache, indices, tf.cast(new, cache.dtype))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Grouped-query self-attention with RoPE, a causal mask and a preallocated KV cache.

    Query head h reads key/value head h // (H / K): each KV head is repeated for
    H / K consecutive query heads (repeat, not tile). call(x, start_pos, cache_k, cache_v)
    with x: [B, S, D] and caches [B, max_seq_len, K, Hd] returns (out [B, S, D], cache_k,
    cache_v), the caches with this call's keys and values written at start_pos. Attention
    scores and the softmax are float32.

    Queries attend over every row of the cache, and the causal mask also hides the rows
    after start_pos + S, so scores are [B, H, S, max_seq_len]. Shapes then do not depend on
    the position, and one XLA compilation of the decode step serves every position. The
    masked rows get probability exactly 0, so the output equals attention over the first
    start_pos + S rows.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, rope_theta: float = 10000.0,
                 rope_scaling=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads {n_heads} must be a multiple of n_kv_heads {n_kv_heads}")
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling_from_dict(rope_scaling)
        self.rotary = RotaryEmbedding(head_dim, rope_theta, self.rope_scaling, dtype=self.dtype_policy, name="rotary")

    def build(self, input_shape):
        dim = input_shape[-1]
        q_width = self.n_heads * self.head_dim
        kv_width = self.n_kv_heads * self.head_dim
        init = self.kernel_initializer
        self.wq = self.add_weight(name="wq", shape=(dim, q_width), initializer=init)
        self.wk = self.add_weight(name="wk", shape=(dim, kv_width), initializer=init)
        self.wv = self.add_weight(name="wv", shape=(dim, kv_width), initializer=init)
        self.wo = self.add_weight(name="wo", shape=(q_width, dim), initializer=init)
        super().build(input_shape)

    def call(self, x, start_pos=0, cache_k=None, cache_v=None, tracer: Tracer | None = None, prefix: str = ""):
        shape = tf.shape(x)
        batch, seq_len = shape[0], shape[1]
        if cache_k is None:
            cache_k = tf.zeros([batch, seq_len, self.n_kv_heads, self.head_dim], self.compute_dtype)
            cache_v = tf.zeros_like(cache_k)

        q = tf.reshape(x @ self.wq, [batch, seq_len, self.n_heads, self.head_dim])
        k = tf.reshape(x @ self.wk, [batch, seq_len, self.n_kv_heads, self.head_dim])
        v = tf.reshape(x @ self.wv, [batch, seq_len, self.n_kv_heads, self.head_dim])
        emit(tracer, prefix + "q", q)
        emit(tracer, prefix + "k", k)
        emit(tracer, prefix + "v", v)

        q = self.rotary(q, start_pos=start_pos)
        k = self.rotary(k, start_pos=start_pos)
        emit(tracer, prefix + "q_rope", q)
        emit(tracer, prefix + "k_rope", k)

        cache_k = update_cache(cache_k, k, start_pos)
        cache_v = update_cache(cache_v, v, start_pos)
        n_rep = self.n_heads // self.n_kv_heads
        keys = tf.repeat(cache_k, n_rep, axis=2)
        values = tf.repeat(cache_v, n_rep, axis=2)

        scores = tf.einsum("bshd,bthd->bhst", tf.cast(q, tf.float32), tf.cast(keys, tf.float32))
        mask = causal_mask(seq_len, start_pos, tf.shape(cache_k)[1])
        scores = scores / math.sqrt(self.head_dim) + mask
        probs = tf.nn.softmax(scores, axis=-1)
        emit(tracer, prefix + "attn_scores", scores)
        emit(tracer, prefix + "attn_probs", probs)

        heads = tf.einsum("bhst,bthd->bshd", tf.cast(probs, self.compute_dtype), values)
        heads = tf.reshape(heads, [batch, seq_len, self.n_heads * self.head_dim])
        emit(tracer, prefix + "attn_heads", heads)
        return heads @ self.wo, cache_k, cache_v

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim,
                "rope_theta": self.rope_theta,
                "rope_scaling": rope_scaling_to_dict(self.rope_scaling),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FeedForward(keras.layers.Layer):
    """SwiGLU feed-forward: out = (silu(x @ w1) * (x @ w3)) @ w2, silu(z) = z * sigmoid(z).

    x: [..., D]; w1 (gate), w3 (up): [D, F]; w2 (down): [F, D] -> [..., D].
    """

    def __init__(self, hidden_dim: int, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        init = self.kernel_initializer
        self.w1 = self.add_weight(name="w1", shape=(dim, self.hidden_dim), initializer=init)
        self.w2 = self.add_weight(name="w2", shape=(self.hidden_dim, dim), initializer=init)
        self.w3 = self.add_weight(name="w3", shape=(dim, self.hidden_dim), initializer=init)
        super().build(input_shape)

    def call(self, x, tracer: Tracer | None = None, prefix: str = ""):
        gate = x @ self.w1
        up = x @ self.w3
        act = tf.nn.silu(gate) * up
        emit(tracer, prefix + "ffn_gate", gate)
        emit(tracer, prefix + "ffn_up", up)
        emit(tracer, prefix + "ffn_act", act)
        return act @ self.w2

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-norm residual block: h = x + attention(rms_norm(x)); out = h + feed_forward(rms_norm(h)).

    call(x, start_pos, cache_k, cache_v) with x: [B, S, D] returns (out [B, S, D], cache_k, cache_v).
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, hidden_dim: int, norm_eps: float = 1e-5,
                 rope_theta: float = 10000.0, rope_scaling=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.hidden_dim = hidden_dim
        self.norm_eps = norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling_from_dict(rope_scaling)
        policy = self.dtype_policy
        self.attention_norm = RMSNorm(norm_eps, dtype=policy, name="attention_norm")
        self.attention = Attention(n_heads, n_kv_heads, head_dim, rope_theta, self.rope_scaling,
                                   kernel_initializer=self.kernel_initializer, dtype=policy, name="attention")
        self.ffn_norm = RMSNorm(norm_eps, dtype=policy, name="ffn_norm")
        self.feed_forward = FeedForward(hidden_dim, kernel_initializer=self.kernel_initializer, dtype=policy,
                                        name="feed_forward")

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape)
        self.ffn_norm.build(input_shape)
        self.feed_forward.build(input_shape)
        super().build(input_shape)

    def call(self, x, start_pos=0, cache_k=None, cache_v=None, tracer: Tracer | None = None, prefix: str = ""):
        attn_in = self.attention_norm(x)
        emit(tracer, prefix + "attn_norm", attn_in)

        attn_out, cache_k, cache_v = self.attention(
            attn_in, start_pos=start_pos, cache_k=cache_k, cache_v=cache_v, tracer=tracer, prefix=prefix
        )
        h = x + attn_out
        emit(tracer, prefix + "attn_out", attn_out)
        emit(tracer, prefix + "resid_mid", h)

        ffn_in = self.ffn_norm(h)
        emit(tracer, prefix + "ffn_norm", ffn_in)

        ffn_out = self.feed_forward(ffn_in, tracer=tracer, prefix=prefix)
        out = h + ffn_out
        emit(tracer, prefix + "ffn_out", ffn_out)
        emit(tracer, prefix + "resid_post", out)
        return out, cache_k, cache_v

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_heads": self.n_heads,
                "n_kv_heads": self.n_kv_heads,
                "head_dim": self.head_dim,
                "hidden_dim": self.hidden_dim,
                "norm_eps": self.norm_eps,
                "rope_theta": self.rope_theta,
                "rope_scaling": rope_scaling_to_dict(self.rope_scaling),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
