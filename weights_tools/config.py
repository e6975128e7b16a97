"""The model hyperparameters shared by every reader and both implementations."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from weights_tools.errors import ConfigError

ROPE_SCALING_TYPES = ("llama3",)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling ("rope_type": "llama3" in Hugging Face configs).

    Wavelengths shorter than original_max_position_embeddings / high_freq_factor are kept,
    those longer than original_max_position_embeddings / low_freq_factor are divided by
    `factor`, and the band between is interpolated smoothly.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_SCALING_TYPES:
            raise ConfigError(
                "rope_scaling.rope_type",
                f"unknown type {self.rope_type!r}; supported: {', '.join(ROPE_SCALING_TYPES)}",
            )
        for name in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"rope_scaling.{name}", f"must be a positive number, got {value!r}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                "rope_scaling.high_freq_factor",
                f"must be greater than low_freq_factor ({self.low_freq_factor}), got {self.high_freq_factor}",
            )


@dataclass(frozen=True)
class ModelConfig:
    """LLaMA hyperparameters, named as in Meta's reference `ModelArgs`.

    Attributes:
        dim: model width (embedding size).
        n_layers: number of transformer blocks.
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads; n_heads must be a multiple of it
            (grouped-query attention when smaller, multi-head attention when equal).
        vocab_size: number of rows of the token embedding and of the output head.
        hidden_dim: width of the SwiGLU feed-forward layer.
        norm_eps: epsilon added to the mean square inside RMSNorm.
        rope_theta: base of the RoPE frequencies, theta_i = rope_theta ** (-2i / head_dim).
        rope_scaling: optional Llama 3.1 frequency scaling, None for plain RoPE.
        max_seq_len: context length in tokens.
        tie_embeddings: True when the output head reuses tok_embeddings.weight.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        """Width of one attention head, dim // n_heads."""
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """Number of query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is out of range or inconsistent."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(name, f"must be an integer, got {value!r}", self.source)
            if value <= 0:
                raise ConfigError(name, f"must be positive, got {value}", self.source)

        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(name, f"must be a positive finite number, got {value!r}", self.source)

        if self.dim % self.n_heads != 0:
            raise ConfigError(
                "n_heads", f"dim {self.dim} is not divisible by n_heads {self.n_heads}", self.source
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                "n_kv_heads",
                f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}",
                self.source,
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(
                "n_heads",
                f"head_dim dim/n_heads = {self.head_dim} is odd, but RoPE rotates pairs of dimensions",
                self.source,
            )
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError("rope_scaling", f"must be a RopeScaling or None, got {self.rope_scaling!r}", self.source)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-serializable values."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "ModelConfig":
        """Build a config from `to_dict` output, rejecting unknown and missing fields."""
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(unknown[0], "unknown field", source)
        required = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim")
        for name in required:
            if name not in data:
                raise ConfigError(name, "missing", source)
        values = dict(data)
        scaling = values.get("rope_scaling")
        if isinstance(scaling, dict):
            try:
                values["rope_scaling"] = RopeScaling(**scaling)
            except TypeError as exc:
                raise ConfigError("rope_scaling", str(exc), source) from None
        return cls(**values, source=source)

    def replace(self, **changes: Any) -> "ModelConfig":
        """Return a copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)
