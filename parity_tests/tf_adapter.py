"""tf_llama behind the harness's Implementation interface: the first user of parity_tests.harness.

Each component call builds the Keras layer in the input's dtype, loads the canonical
[out, in] weights transposed into its [in, out] kernels and runs it eagerly. Whole models
are cached per (checkpoint, dtype), because building SmolLM2 takes seconds.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import tensorflow as tf

from parity_tests.harness import run_with_cache
from tf_llama.generate import SamplingParams, generate
from tf_llama.layers import Attention, FeedForward, RMSNorm, RotaryEmbedding, TransformerBlock
from tf_llama.model import LlamaModel
from weights_tools.checkpoint import Checkpoint

TF_DTYPES = ("float32", "float16", "bfloat16")
MAX_CACHED_MODELS = 3


def dtype_name(array: np.ndarray) -> str:
    name = np.asarray(array).dtype.name
    if name not in TF_DTYPES:
        raise TypeError(f"unsupported array dtype {name}; expected one of {', '.join(TF_DTYPES)}")
    return name


def tensor(array: np.ndarray) -> tf.Tensor:
    return tf.constant(array, dtype=dtype_name(array))


def assign(variable, array: np.ndarray, transpose: bool = False) -> None:
    array = np.asarray(array)
    variable.assign(tf.constant(array.T if transpose else array, dtype=variable.dtype))


class TFImplementation:
    """The Keras 3 / TensorFlow implementation (tf_llama), run eagerly on NumPy inputs."""

    name = "tf"
    dtypes = TF_DTYPES

    def __init__(self):
        self._models: OrderedDict[tuple[int, str], tuple[Checkpoint, LlamaModel]] = OrderedDict()

    def rms_norm(self, x, weight, eps):
        layer = RMSNorm(eps, dtype=dtype_name(x))
        layer.build(x.shape)
        assign(layer.weight, weight)
        return layer(tensor(x)).numpy()

    def apply_rope(self, x, start_pos, rope_theta, rope_scaling):
        layer = RotaryEmbedding(x.shape[-1], rope_theta, rope_scaling, dtype=dtype_name(x))
        return layer(tensor(x), start_pos=start_pos).numpy()

    def feed_forward(self, x, w1, w2, w3):
        layer = FeedForward(w1.shape[0], dtype=dtype_name(x))
        layer.build(x.shape)
        assign(layer.w1, w1, transpose=True)
        assign(layer.w2, w2, transpose=True)
        assign(layer.w3, w3, transpose=True)
        return layer(tensor(x)).numpy()

    @staticmethod
    def _load_attention(layer: Attention, weights: dict[str, np.ndarray]) -> None:
        for name in ("wq", "wk", "wv", "wo"):
            assign(getattr(layer, name), weights[name], transpose=True)

    def attention(self, x, weights, n_heads, n_kv_heads, rope_theta, rope_scaling, cache_k, cache_v, start_pos):
        head_dim = weights["wq"].shape[0] // n_heads
        layer = Attention(n_heads, n_kv_heads, head_dim, rope_theta, rope_scaling, dtype=dtype_name(x))
        layer.build(x.shape)
        self._load_attention(layer, weights)
        out, cache_k, cache_v = layer(
            tensor(x), start_pos=start_pos, cache_k=tensor(cache_k), cache_v=tensor(cache_v)
        )
        return out.numpy(), cache_k.numpy(), cache_v.numpy()

    def transformer_block(self, x, layer, config, cache_k, cache_v, start_pos):
        block = TransformerBlock(
            config.n_heads, config.n_kv_heads, config.head_dim, config.hidden_dim, config.norm_eps,
            config.rope_theta, config.rope_scaling, dtype=dtype_name(x),
        )
        block.build(x.shape)
        assign(block.attention_norm.weight, layer["attention_norm.weight"])
        self._load_attention(
            block.attention, {name: layer[f"attention.{name}.weight"] for name in ("wq", "wk", "wv", "wo")}
        )
        assign(block.ffn_norm.weight, layer["ffn_norm.weight"])
        for name in ("w1", "w2", "w3"):
            assign(getattr(block.feed_forward, name), layer[f"feed_forward.{name}.weight"], transpose=True)
        out, cache_k, cache_v = block(tensor(x), start_pos=start_pos, cache_k=tensor(cache_k), cache_v=tensor(cache_v))
        return out.numpy(), cache_k.numpy(), cache_v.numpy()

    def model(self, checkpoint: Checkpoint, dtype: str) -> LlamaModel:
        """Return the model for checkpoint in dtype, reusing one of the last few built."""
        key = (id(checkpoint), dtype)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key][1]
        model = LlamaModel.from_checkpoint(checkpoint, dtype=dtype)
        # The checkpoint is kept with its model so its id cannot be reused while cached.
        self._models[key] = (checkpoint, model)
        while len(self._models) > MAX_CACHED_MODELS:
            self._models.popitem(last=False)
        return model

    def model_logits(self, checkpoint, tokens, dtype, prefill_len=None):
        return run_with_cache(self.model(checkpoint, dtype), tokens, prefill_len)

    def greedy_ids(self, checkpoint, prompt_ids, max_new_tokens, dtype):
        return list(generate(self.model(checkpoint, dtype), list(prompt_ids), max_new_tokens, SamplingParams()))
