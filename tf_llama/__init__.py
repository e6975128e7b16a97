"""Keras 3 / TensorFlow implementation of LLaMA, independent of numpy_llama and checked against it."""

from tf_llama.layers import Attention, FeedForward, RMSNorm, RotaryEmbedding, TransformerBlock
from tf_llama.model import KVCache, LlamaModel

__all__ = ["Attention", "FeedForward", "KVCache", "LlamaModel", "RMSNorm", "RotaryEmbedding", "TransformerBlock"]
