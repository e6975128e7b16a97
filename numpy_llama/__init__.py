"""NumPy reference implementation of the LLaMA transformer."""

from numpy_llama.model import (
    KVCache,
    Llama,
    apply_rope,
    attention,
    causal_mask,
    feed_forward,
    repeat_kv,
    rms_norm,
    rope_frequencies,
    rope_table,
    scaled_dot_product_attention,
    softmax,
    transformer_block,
)

__all__ = [
    "KVCache",
    "Llama",
    "apply_rope",
    "attention",
    "causal_mask",
    "feed_forward",
    "repeat_kv",
    "rms_norm",
    "rope_frequencies",
    "rope_table",
    "scaled_dot_product_attention",
    "softmax",
    "transformer_block",
]
