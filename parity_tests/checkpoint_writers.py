"""Write tiny checkpoints with the real producers: torch.save, transformers and llama2.c's layouts.

torch and transformers are imported inside the functions that need them, so importing
this module stays cheap and tests can skip when a producer is missing.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from weights_tools.config import ModelConfig

COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3")
ROW_PARALLEL = ("wo", "w2")


def meta_params(config: ModelConfig, multiple_of: int, **extra: Any) -> dict[str, Any]:
    """Return params.json contents for a config whose hidden_dim comes from multiple_of."""
    params = {
        "dim": config.dim,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "multiple_of": multiple_of,
        "norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        # Meta's files omit max_seq_len (ModelArgs defaults it to 2048); the tests set it.
        "max_seq_len": config.max_seq_len,
    }
    params.update(extra)
    return params


def meta_shard_axis(name: str, vocab_parallel_embedding: bool) -> int | None:
    """Return the axis Meta's model-parallel layers split a tensor along, None if replicated."""
    if name.endswith("norm.weight") or name == "rope.freqs":
        return None
    if name == "tok_embeddings.weight":
        return 0 if vocab_parallel_embedding else 1
    if name == "output.weight" or name.split(".")[-2] in COLUMN_PARALLEL:
        return 0
    if name.split(".")[-2] in ROW_PARALLEL:
        return 1
    raise KeyError(name)


def save_meta(
    folder: Path,
    weights: dict[str, np.ndarray],
    params: dict[str, Any],
    dtype: str = "float32",
    n_shards: int = 1,
    vocab_parallel_embedding: bool = False,
) -> Path:
    """Write params.json and consolidated.NN.pth shards with torch.save, as Meta's checkpoints are laid out.

    vocab_parallel_embedding splits tok_embeddings by rows as Llama 3 does; otherwise by
    columns as Llama 2's ParallelEmbedding does. A rope.freqs tensor is added as Meta's
    Llama 2 files have one.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    torch_dtype = getattr(torch, dtype)
    tensors = dict(weights)
    # The reader ignores rope.freqs, so only its presence matters, not its size.
    tensors["rope.freqs"] = np.ones(4, np.float32)
    for shard in range(n_shards):
        state = {}
        for name, array in tensors.items():
            axis = meta_shard_axis(name, vocab_parallel_embedding)
            part = array if axis is None else np.split(array, n_shards, axis=axis)[shard]
            state[name] = torch.from_numpy(np.ascontiguousarray(part)).to(torch_dtype)
        torch.save(state, folder / f"consolidated.{shard:02d}.pth")
    return folder


def hf_llama_config(config: ModelConfig, rope_scaling: dict[str, Any] | None = None) -> Any:
    """Return a transformers LlamaConfig with the same hyperparameters as config."""
    from transformers import LlamaConfig

    values: dict[str, Any] = dict(
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
    )
    if rope_scaling is not None:
        values["rope_scaling"] = rope_scaling
    return LlamaConfig(**values)


def random_hf_model(config: ModelConfig, seed: int = 0, rope_scaling: dict[str, Any] | None = None) -> Any:
    """Return a LlamaForCausalLM with random weights large enough that every permutation error shows.

    transformers initializes with std 0.02, which makes attention nearly uniform and would
    hide a wrong q/k layout, so matrices are redrawn with std 0.2 and norms around 1.
    """
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_llama_config(config, rope_scaling)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.2)
    return model


def hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """Run a transformers model on token ids [B, S] and return float32 logits [B, S, V]."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens, dtype=np.int64))).logits.float().numpy()


def write_llama2c(
    path: Path, config: ModelConfig, weights: dict[str, np.ndarray], version: int, shared_classifier: bool
) -> Path:
    """Write canonical weights in llama2.c's legacy (version 0) or version 1 layout.

    The order follows llama2.c export.py. `legacy_export` writes the embedding, then each
    layer tensor stacked over layers, the final norm and the RoPE tables. `version1_export`
    writes all norms first, then the embedding and the layer matrices, and no RoPE table.
    """
    n_layers = config.n_layers

    def stacked(suffix: str) -> list[np.ndarray]:
        return [weights[f"layers.{i}.{suffix}"] for i in range(n_layers)]

    vocab = config.vocab_size if shared_classifier or version == 1 else -config.vocab_size
    params = (config.dim, config.hidden_dim, n_layers, config.n_heads, config.n_kv_heads, vocab, config.max_seq_len)
    arrays: list[np.ndarray] = []
    if version == 0:
        header = struct.pack("<7i", *params)
        arrays.append(weights["tok_embeddings.weight"])
        for suffix in ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
                       "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
            arrays.extend(stacked(f"{suffix}.weight"))
        arrays.append(weights["norm.weight"])
        positions = np.arange(config.max_seq_len)[:, None]
        inv_freq = config.rope_theta ** (-np.arange(0, config.head_dim, 2) / config.head_dim)
        arrays.append(np.cos(positions * inv_freq))
        arrays.append(np.sin(positions * inv_freq))
    else:
        header = struct.pack("<Ii7iB", 0x616B3432, 1, *params, int(shared_classifier))
        header += b"\0" * (256 - len(header))
        arrays.extend(stacked("attention_norm.weight"))
        arrays.extend(stacked("ffn_norm.weight"))
        arrays.append(weights["norm.weight"])
        arrays.append(weights["tok_embeddings.weight"])
        for suffix in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                       "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
            arrays.extend(stacked(f"{suffix}.weight"))
    if not shared_classifier:
        arrays.append(weights["output.weight"])
    with path.open("wb") as handle:
        handle.write(header)
        for array in arrays:
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return path
