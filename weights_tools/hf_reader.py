"""Read a Hugging Face LlamaForCausalLM folder (config.json + safetensors) into a Checkpoint.

Hugging Face stores q/k rows in the "rotate-half" RoPE layout, where dimension i of a
head pairs with dimension i + head_dim/2. Its conversion script reaches that layout from
Meta's interleaved pairs (2i, 2i+1) with a per-head row permutation, which
`rotate_half_to_interleaved` undoes (q with n_heads, k with n_kv_heads).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from weights_tools.checkpoint import Checkpoint, TensorInfo, check_layer_count, expected_shapes
from weights_tools.config import ROPE_SCALING_TYPES, ModelConfig, RopeScaling
from weights_tools.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}
_HF_LAYER_PATTERN = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_CANONICAL_LAYER_PATTERN = re.compile(r"^layers\.(\d+)\.(.+)$")

# Field defaults of transformers' LlamaConfig, used when config.json omits them.
DEFAULT_RMS_NORM_EPS = 1e-6
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_MAX_POSITION_EMBEDDINGS = 2048

# Safetensors dtypes this reader supports. BF16 maps to ml_dtypes.bfloat16, imported only
# when a BF16 tensor is read because importing ml_dtypes takes about a second.
_DTYPES = ("F32", "F16", "BF16")


def canonical_tensor_name(hf_name: str) -> str | None:
    """Map a Hugging Face tensor name to its canonical name, or None if it is not a Llama weight."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _HF_LAYER_PATTERN.match(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def hf_tensor_name(canonical_name: str) -> str:
    """Map a canonical tensor name to its Hugging Face name."""
    for hf_name, name in _GLOBAL_NAMES.items():
        if name == canonical_name:
            return hf_name
    match = _CANONICAL_LAYER_PATTERN.match(canonical_name)
    if match:
        for hf_suffix, suffix in _LAYER_NAMES.items():
            if suffix == match.group(2):
                return f"model.layers.{match.group(1)}.{hf_suffix}"
    raise KeyError(canonical_name)


def interleaved_to_rotate_half(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from Meta's interleaved pairs to Hugging Face's rotate-half layout.

    Within each head, output row j (< head_dim/2) is input row 2j, and output row
    head_dim/2 + j is input row 2j + 1. weight: [n_heads * head_dim, dim].
    """
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rotate_half_to_interleaved(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of interleaved_to_rotate_half: rows (j, head_dim/2 + j) become (2j, 2j + 1)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_json(path: Path, description: str) -> dict[str, Any]:
    """Read a JSON object, raising ConfigError naming the file when it is missing or invalid."""
    if not path.is_file():
        raise ConfigError(path.name, f"{description} not found", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path.name, f"invalid JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise ConfigError(path.name, "expected a JSON object", path)
    return data


def _field(config: dict[str, Any], key: str, path: Path, kind: type, default: Any = None) -> Any:
    if key not in config or config[key] is None:
        if default is None:
            raise ConfigError(key, f"required field is missing from {path.name}", path)
        return default
    value = config[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}", path)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(key, f"expected a {kind.__name__}, got {value!r}", path)
    return kind(value)


def rope_settings(config: dict[str, Any], path: Path) -> tuple[float, RopeScaling | None]:
    """Return (rope_theta, rope_scaling) from a config.json.

    transformers 4.x writes `rope_theta` plus an optional `rope_scaling` dict, whose type
    is under `rope_type` (or the older `type`). transformers 5.x writes both into one
    `rope_parameters` dict. Types other than "default" and "llama3" raise ConfigError.
    """
    parameters = config.get("rope_parameters")
    key = "rope_parameters"
    if parameters is None:
        parameters = config.get("rope_scaling")
        key = "rope_scaling"
    if parameters is not None and not isinstance(parameters, dict):
        raise ConfigError(key, f"expected a JSON object or null, got {parameters!r}", path)
    parameters = parameters or {}

    theta_source = parameters if "rope_theta" in parameters else config
    rope_theta = _field(theta_source, "rope_theta", path, float, DEFAULT_ROPE_THETA)

    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type == "default":
        return rope_theta, None
    if rope_type not in ROPE_SCALING_TYPES:
        raise ConfigError(
            f"{key}.rope_type",
            f"unsupported RoPE scaling type {rope_type!r}; supported: default, {', '.join(ROPE_SCALING_TYPES)}",
            path,
        )
    values = {}
    for name in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        kind = int if name == "original_max_position_embeddings" else float
        values[name] = _field(parameters, name, path, kind)
    try:
        return rope_theta, RopeScaling(**values, rope_type=rope_type)
    except ConfigError as exc:
        raise ConfigError(f"{key}.{exc.field.split('.')[-1]}", str(exc).split(": ", 1)[-1], path) from None


def config_from_hf(config: dict[str, Any], path: Path) -> ModelConfig:
    """Build a ModelConfig from a LlamaForCausalLM config.json."""
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise ConfigError("model_type", f"expected 'llama', got {model_type!r}", path)
    activation = config.get("hidden_act", "silu")
    if activation != "silu":
        raise ConfigError("hidden_act", f"only SwiGLU with 'silu' is supported, got {activation!r}", path)
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise ConfigError(key, "bias terms are not supported by the canonical checkpoint", path)

    dim = _field(config, "hidden_size", path, int)
    n_heads = _field(config, "num_attention_heads", path, int)
    head_dim = config.get("head_dim")
    if head_dim is not None and n_heads > 0 and head_dim != dim // n_heads:
        raise ConfigError(
            "head_dim",
            f"{head_dim} differs from hidden_size / num_attention_heads = {dim // n_heads}; transformers allows "
            "that, but this project's models require head_dim = hidden_size / num_attention_heads",
            path,
        )
    rope_theta, rope_scaling = rope_settings(config, path)
    return ModelConfig(
        dim=dim,
        n_layers=_field(config, "num_hidden_layers", path, int),
        n_heads=n_heads,
        n_kv_heads=_field(config, "num_key_value_heads", path, int, n_heads),
        vocab_size=_field(config, "vocab_size", path, int),
        hidden_dim=_field(config, "intermediate_size", path, int),
        norm_eps=_field(config, "rms_norm_eps", path, float, DEFAULT_RMS_NORM_EPS),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_seq_len=_field(config, "max_position_embeddings", path, int, DEFAULT_MAX_POSITION_EMBEDDINGS),
        tie_embeddings=_field(config, "tie_word_embeddings", path, bool, False),
        source=os.fspath(path),
    )


def safetensors_files(folder: Path) -> dict[str, Path]:
    """Return tensor name -> safetensors file, from the shard index or the single file."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path, "shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(index_path, "missing or empty weight_map", "weight_map")
        files = {name: folder / file for name, file in weight_map.items()}
        for name, file in files.items():
            if not file.is_file():
                raise CheckpointError(file, f"shard listed in {INDEX_FILE} is missing", name)
        return files
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(folder, f"neither {SINGLE_FILE} nor {INDEX_FILE} found")
    return {name: single for name in SafetensorsFile(single).tensors}


class SafetensorsFile:
    """One .safetensors file: its tensor table, read through `safetensors.safe_open`.

    F32 and F16 tensors come from safe_open with framework "np". NumPy has no bfloat16,
    so BF16 tensors are instead viewed in a memory map of the file as ml_dtypes.bfloat16,
    at the offsets the file's JSON header records.
    """

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self._safe_open = safe_open
        try:
            with safe_open(path, framework="np") as handle:
                self.tensors = {}
                for name in handle.keys():
                    tensor_slice = handle.get_slice(name)
                    self.tensors[name] = (tensor_slice.get_dtype(), tuple(tensor_slice.get_shape()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(path, f"cannot read safetensors file, it is truncated or malformed ({exc})") from None
        for name, (dtype, _) in self.tensors.items():
            if dtype not in _DTYPES:
                raise CheckpointError(
                    path, f"tensor type {dtype} is not supported; supported: {', '.join(_DTYPES)}", name
                )

    def load(self, name: str) -> np.ndarray:
        """Return one tensor as float32."""
        dtype, shape = self.tensors[name]
        if dtype == "BF16":
            return self._load_raw(name, shape).astype(np.float32)
        with self._safe_open(self.path, framework="np") as handle:
            return handle.get_tensor(name).astype(np.float32, copy=False)

    def _load_raw(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        import ml_dtypes

        with self.path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        start, end = header[name]["data_offsets"]
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=8 + header_size + start, shape=(end - start,))
        return data.view(ml_dtypes.bfloat16).reshape(shape)


def _make_loader(file: SafetensorsFile, name: str, permute_heads: int | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        weight = file.load(name)
        if permute_heads is not None:
            weight = rotate_half_to_interleaved(weight, permute_heads)
        return weight

    return load


def load_hf(folder: str | os.PathLike) -> Checkpoint:
    """Open a Hugging Face Llama folder and return a Checkpoint that reads tensors lazily.

    Raises ConfigError for a missing or invalid config.json field (including unknown RoPE
    scaling types) and CheckpointError for missing shards or tensors, truncated files and
    shapes that disagree with config.json.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    config = config_from_hf(read_json(config_path, "model config"), config_path)

    files = safetensors_files(folder)
    opened: dict[Path, SafetensorsFile] = {}
    loaders = {}
    infos = {}
    for hf_name, file_path in files.items():
        name = canonical_tensor_name(hf_name)
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope_theta
            raise CheckpointError(file_path, "unknown tensor name for a Llama model", hf_name)
        if name == "output.weight" and config.tie_embeddings:
            continue  # the embedding is the output head
        if file_path not in opened:
            opened[file_path] = SafetensorsFile(file_path)
        file = opened[file_path]
        if hf_name not in file.tensors:
            raise CheckpointError(file_path, f"tensor listed in {INDEX_FILE} is missing from the shard", hf_name)
        dtype, shape = file.tensors[hf_name]
        permute_heads = None
        if name.endswith("attention.wq.weight"):
            permute_heads = config.n_heads
        elif name.endswith("attention.wk.weight"):
            permute_heads = config.n_kv_heads
        infos[name] = TensorInfo(name, shape, dtype, hf_name)
        loaders[name] = _make_loader(file, hf_name, permute_heads)

    checkpoint = Checkpoint(
        config=config, loaders=loaders, infos=infos, path=os.fspath(folder), format="hf", metadata={}
    )
    check_layer_count(config, len(infos), config_path, "num_hidden_layers")
    _check_shapes(checkpoint, config_path)
    log.info("opened %s: %d files, %d tensors, %s", folder, len(opened), len(infos), config)
    return checkpoint


def _check_shapes(checkpoint: Checkpoint, config_path: Path) -> None:
    for name, shape in expected_shapes(checkpoint.config).items():
        if name not in checkpoint:
            hint = " (set tie_word_embeddings to true if the model reuses the embedding)" if name == "output.weight" else ""
            raise CheckpointError(checkpoint.path, f"required tensor is missing{hint}", hf_tensor_name(name))
        info = checkpoint.infos.get(name) or checkpoint.infos["tok_embeddings.weight"]
        if info.shape != shape:
            raise CheckpointError(
                checkpoint.path,
                f"tensor has shape {info.shape} but {config_path.name} implies {shape}",
                info.source_name,
            )
