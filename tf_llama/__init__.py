"""Keras 3 / TensorFlow implementation of LLaMA, independent of numpy_llama and checked against it.

The names below load TensorFlow on first access, so `tf_llama.cli` can set up TF's
logging before anything imports it.
"""

import importlib

_EXPORTS = {
    "Attention": "tf_llama.layers",
    "FeedForward": "tf_llama.layers",
    "RMSNorm": "tf_llama.layers",
    "RotaryEmbedding": "tf_llama.layers",
    "TransformerBlock": "tf_llama.layers",
    "KVCache": "tf_llama.model",
    "LlamaModel": "tf_llama.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_llama' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
