"""The canonical on-disk form: a folder with model.safetensors under canonical names plus config.json.

config.json contains {"format": "llama-parity-canonical", "format_version": 1,
"model_config": ModelConfig.to_dict()}. The "format" marker is what tells this layout
apart from a Hugging Face config.json in the same kind of folder. Tensors are float32 in
the interleaved-pair RoPE layout; with tied embeddings output.weight is omitted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from weights_tools.checkpoint import Checkpoint, TensorInfo, check_layer_count
from weights_tools.config import ModelConfig
from weights_tools.errors import CheckpointError, ConfigError
from weights_tools.hf_reader import SafetensorsFile, read_json

log = logging.getLogger(__name__)

FORMAT_MARKER = "llama-parity-canonical"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def canonical_config_json(config: ModelConfig) -> dict[str, Any]:
    """Return the config.json contents of the canonical form for a config."""
    return {"format": FORMAT_MARKER, "format_version": FORMAT_VERSION, "model_config": config.to_dict()}


def is_canonical_config(data: dict[str, Any]) -> bool:
    """Return True when a parsed config.json carries the canonical format marker."""
    return data.get("format") == FORMAT_MARKER


def load_canonical(folder: str | os.PathLike) -> Checkpoint:
    """Open a canonical folder written by `llama-convert --to safetensors`.

    Raises ConfigError for a config.json without the marker or with invalid fields, and
    CheckpointError for a missing or truncated model.safetensors, unknown, missing or
    misshapen tensors.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    data = read_json(config_path, "model config")
    if not is_canonical_config(data):
        raise ConfigError("format", f"expected {FORMAT_MARKER!r}, got {data.get('format')!r}", config_path)
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            "format_version", f"expected {FORMAT_VERSION}, got {data.get('format_version')!r}", config_path
        )
    model_config = data.get("model_config")
    if not isinstance(model_config, dict):
        raise ConfigError("model_config", "missing or not a JSON object", config_path)
    config = ModelConfig.from_dict(model_config, source=os.fspath(config_path))

    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(weights_path, "weights file not found next to config.json")
    file = SafetensorsFile(weights_path)
    loaders = {}
    infos = {}
    for name, (dtype, shape) in file.tensors.items():
        infos[name] = TensorInfo(name, shape, dtype, name)
        loaders[name] = lambda name=name: file.load(name)

    checkpoint = Checkpoint(
        config=config, loaders=loaders, infos=infos, path=os.fspath(folder), format="canonical", metadata={}
    )
    check_layer_count(config, len(infos), config_path, "model_config.n_layers")
    unexpected = set(checkpoint.infos) - set(iter(checkpoint))
    if unexpected:
        raise CheckpointError(weights_path, "unexpected tensor name", sorted(unexpected)[0])
    checkpoint.check_complete()
    log.info("opened %s: %d tensors, %s", folder, len(infos), config)
    return checkpoint
