"""Shared layer of llama-parity: model config, checkpoint readers and tokenizers."""

from weights_tools.checkpoint import Checkpoint, TensorInfo, canonical_names, expected_shapes
from weights_tools.config import ModelConfig, RopeScaling
from weights_tools.errors import (
    CheckpointError,
    ConfigError,
    GenerationError,
    LlamaParityError,
    TokenizerError,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "LlamaParityError",
    "ModelConfig",
    "RopeScaling",
    "TensorInfo",
    "TokenizerError",
    "canonical_names",
    "expected_shapes",
]
