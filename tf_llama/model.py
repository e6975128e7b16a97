"""The LLaMA model as a Keras 3 `keras.Model` on TensorFlow, loaded from a canonical Checkpoint.

Two ways to run it:

    model = LlamaModel.from_checkpoint(checkpoint, dtype="float32")   # or float16, bfloat16

    # NumPy in, NumPy out, mirroring numpy_llama's Llama.forward:
    cache = model.new_cache(batch=1, max_seq_len=64)
    logits = model.forward(tokens, start_pos=0, cache=cache, tracer=None)   # float32 [B, S, V]

    # Tensors in, tensors out, for tf.function (see tf_llama.generate):
    logits, caches = model(tokens, start_pos=start_pos, caches=caches)

`forward` updates `cache` in place, like the NumPy KVCache: after the call, cache.k[i] and
cache.v[i] hold layer i's keys and values [B, max_seq_len, K, Hd]. Without a cache,
start_pos must be 0.

Tracing: forward(..., tracer=fn) calls fn(name, array) with NumPy copies of the
activations, under the same names and shapes as numpy_llama: `embed`,
`layers.{i}.attn_norm`, `.q`, `.k`, `.v` [B, S, heads, Hd], `.q_rope`, `.k_rope`,
`.attn_scores`, `.attn_probs` [B, H, S, T], `.attn_heads`, `.attn_out`, `.resid_mid`,
`.ffn_norm`, `.ffn_gate`, `.ffn_up`, `.ffn_act`, `.ffn_out`, `.resid_post`, `final_norm`,
`logits`. The tracer only runs in eager mode (forward always runs eagerly); inside
tf.function it is ignored, and tracer=None costs nothing.

Dtypes: weights and activations are in the compute dtype. RMSNorm, RoPE and the attention
softmax run in float32 and cast back (see tf_llama.layers). Logits are returned as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tf_llama.layers import PACKAGE, RMSNorm, Tracer, TransformerBlock, emit
from weights_tools.checkpoint import Checkpoint
from weights_tools.config import ModelConfig

DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(dtype) -> str:
    """Return the dtype's name if it is a supported compute dtype, else raise ValueError."""
    name = tf.as_dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"unsupported compute dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return name


@dataclass
class KVCache:
    """Preallocated keys and values: k[i], v[i] are layer i's [B, max_seq_len, K, Hd] tensors.

    Position m of a sequence lives at row m. LlamaModel.forward replaces the tensors with
    updated ones, so the object behaves like NumPy's in-place cache.
    """

    k: list[tf.Tensor]
    v: list[tf.Tensor]

    @classmethod
    def allocate(cls, config: ModelConfig, batch: int = 1, max_seq_len: int | None = None,
                 dtype="float32") -> "KVCache":
        length = max_seq_len or config.max_seq_len
        shape = (batch, length, config.n_kv_heads, config.head_dim)
        zeros = [tf.zeros(shape, dtype) for _ in range(config.n_layers)]
        return cls(k=list(zeros), v=list(zeros))

    @property
    def batch(self) -> int:
        return int(self.k[0].shape[0])

    @property
    def max_seq_len(self) -> int:
        return int(self.k[0].shape[1])

    def as_tuple(self) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Return ((k_0, v_0), (k_1, v_1), ...), the form LlamaModel.call takes and returns."""
        return tuple(zip(self.k, self.v))

    def assign(self, caches) -> None:
        self.k = [k for k, _ in caches]
        self.v = [v for _, v in caches]


@keras.saving.register_keras_serializable(package=PACKAGE)
class LlamaModel(keras.Model):
    """Token embedding, n_layers TransformerBlocks, a final RMSNorm and the output head.

    The constructor takes ModelConfig fields (so get_config/from_config round-trip) and
    builds every weight immediately, so a model loaded from a `.keras` file needs no
    sample input.
    """

    def __init__(self, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab_size: int, hidden_dim: int,
                 norm_eps: float = 1e-5, rope_theta: float = 10000.0, rope_scaling=None, max_seq_len: int = 2048,
                 tie_embeddings: bool = False, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.config = ModelConfig.from_dict(
            {
                "dim": dim,
                "n_layers": n_layers,
                "n_heads": n_heads,
                "n_kv_heads": n_kv_heads,
                "vocab_size": vocab_size,
                "hidden_dim": hidden_dim,
                "norm_eps": norm_eps,
                "rope_theta": rope_theta,
                "rope_scaling": rope_scaling,
                "max_seq_len": max_seq_len,
                "tie_embeddings": tie_embeddings,
            }
        )
        cfg = self.config
        policy = self.dtype_policy
        self.blocks = [
            TransformerBlock(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim, cfg.norm_eps, cfg.rope_theta,
                             cfg.rope_scaling, kernel_initializer=self.kernel_initializer, dtype=policy,
                             name=f"layers_{i}")
            for i in range(cfg.n_layers)
        ]
        self.final_norm = RMSNorm(cfg.norm_eps, dtype=policy, name="norm")
        self.build_weights()

    def build_weights(self) -> None:
        cfg = self.config
        self.tok_embeddings = self.add_weight(
            name="tok_embeddings", shape=(cfg.vocab_size, cfg.dim), initializer=self.kernel_initializer
        )
        self.output_weight = None
        if not cfg.tie_embeddings:
            self.output_weight = self.add_weight(
                name="output", shape=(cfg.dim, cfg.vocab_size), initializer=self.kernel_initializer
            )
        for block in self.blocks:
            block.build((None, None, cfg.dim))
        self.final_norm.build((None, None, cfg.dim))
        self.built = True

    @classmethod
    def from_config_object(cls, config: ModelConfig, dtype="float32", **kwargs) -> "LlamaModel":
        """Create a model with randomly initialized weights for `config`."""
        return cls(**config.to_dict(), dtype=check_dtype(dtype), **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype="float32") -> "LlamaModel":
        """Create a model for checkpoint.config and copy every canonical tensor into it.

        Linear weights are transposed from the canonical [out, in] to Keras' [in, out] and
        cast to the compute dtype.
        """
        # Zeros skip drawing random numbers for weights that are overwritten next.
        model = cls.from_config_object(checkpoint.config, dtype=dtype, kernel_initializer="zeros")
        model.load_canonical_weights(checkpoint)
        return model

    def load_canonical_weights(self, weights) -> None:
        """Assign canonical tensors (a Checkpoint or a name -> array mapping) to the Keras variables."""

        def assign(variable, array, transpose=False):
            array = np.asarray(array, dtype=np.float32)
            if transpose:
                array = array.T
            if tuple(variable.shape) != array.shape:
                raise ValueError(f"{variable.path}: expected shape {tuple(variable.shape)}, got {array.shape}")
            variable.assign(tf.cast(array, variable.dtype))

        assign(self.tok_embeddings, weights["tok_embeddings.weight"])
        for i, block in enumerate(self.blocks):
            prefix = f"layers.{i}."
            assign(block.attention_norm.weight, weights[prefix + "attention_norm.weight"])
            assign(block.attention.wq, weights[prefix + "attention.wq.weight"], transpose=True)
            assign(block.attention.wk, weights[prefix + "attention.wk.weight"], transpose=True)
            assign(block.attention.wv, weights[prefix + "attention.wv.weight"], transpose=True)
            assign(block.attention.wo, weights[prefix + "attention.wo.weight"], transpose=True)
            assign(block.ffn_norm.weight, weights[prefix + "ffn_norm.weight"])
            assign(block.feed_forward.w1, weights[prefix + "feed_forward.w1.weight"], transpose=True)
            assign(block.feed_forward.w2, weights[prefix + "feed_forward.w2.weight"], transpose=True)
            assign(block.feed_forward.w3, weights[prefix + "feed_forward.w3.weight"], transpose=True)
        assign(self.final_norm.weight, weights["norm.weight"])
        if self.output_weight is not None:
            assign(self.output_weight, weights["output.weight"], transpose=True)

    def new_cache(self, batch: int = 1, max_seq_len: int | None = None) -> KVCache:
        """Allocate an empty KV cache for `batch` sequences of up to max_seq_len positions."""
        return KVCache.allocate(self.config, batch, max_seq_len, dtype=self.compute_dtype)

    def output_logits(self, h: tf.Tensor) -> tf.Tensor:
        """Project final hidden states [..., D] to float32 logits [..., V] (tied or separate head)."""
        if self.output_weight is None:
            logits = tf.matmul(h, tf.cast(self.tok_embeddings, self.compute_dtype), transpose_b=True)
        else:
            logits = h @ self.output_weight
        return tf.cast(logits, tf.float32)

    def call(self, tokens, start_pos=0, caches=None, tracer: Tracer | None = None, last_only: bool = False):
        """Run S tokens [B, S] at positions start_pos .. start_pos+S-1.

        caches: a tuple of (k, v) per layer, each [B, max_seq_len, K, Hd], or None for a
        fresh cache of S positions (then start_pos must be 0). Returns (logits, caches):
        float32 logits [B, S, V], or [B, V] for the last position only when last_only.
        """
        tokens = tf.convert_to_tensor(tokens)
        if caches is None:
            caches = ((None, None),) * self.config.n_layers

        h = tf.gather(self.tok_embeddings, tokens)
        emit(tracer, "embed", h)

        new_caches = []
        for i, (block, (cache_k, cache_v)) in enumerate(zip(self.blocks, caches)):
            h, cache_k, cache_v = block(
                h, start_pos=start_pos, cache_k=cache_k, cache_v=cache_v, tracer=tracer, prefix=f"layers.{i}."
            )
            new_caches.append((cache_k, cache_v))

        if last_only:
            h = h[:, -1]
        h = self.final_norm(h)
        emit(tracer, "final_norm", h)

        logits = self.output_logits(h)
        emit(tracer, "logits", logits)
        return logits, tuple(new_caches)

    def forward(self, tokens, start_pos: int = 0, cache: KVCache | None = None,
                tracer: Tracer | None = None) -> np.ndarray:
        """Run tokens [B, S] or [S] eagerly and return float32 NumPy logits [B, S, V].

        Mirrors numpy_llama's Llama.forward. `cache` (from new_cache) contains the keys and
        values of earlier positions and is updated in place. Without one, start_pos must be 0.
        """
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        batch, seq_len = tokens.shape
        if cache is None:
            if start_pos != 0:
                raise ValueError("start_pos > 0 requires the KV cache of the earlier positions; pass cache=")
            cache = self.new_cache(batch, seq_len)
        if cache.batch != batch:
            raise ValueError(
                f"the KV cache has batch size {cache.batch} but tokens has {batch} rows; "
                f"allocate it with new_cache(batch={batch})"
            )
        if start_pos + seq_len > cache.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + seq_len} do not fit the KV cache of {cache.max_seq_len} positions"
            )
        if start_pos + seq_len > self.config.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + seq_len} exceed the context length {self.config.max_seq_len}"
            )

        logits, caches = self(tf.constant(tokens, tf.int32), start_pos=start_pos, caches=cache.as_tuple(),
                              tracer=tracer)
        cache.assign(caches)
        return logits.numpy()

    def get_config(self):
        config = super().get_config()
        config.update(self.config.to_dict())
        config["kernel_initializer"] = keras.initializers.serialize(self.kernel_initializer)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
