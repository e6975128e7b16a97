"""ModelConfig validation: each inconsistency names its field."""

from __future__ import annotations

import pytest

from parity_tests.tiny_models import tiny_config
from weights_tools.config import ModelConfig, RopeScaling
from weights_tools.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"dim": 30}, "n_heads", "not divisible by n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads", "not divisible by n_kv_heads"),
        ({"dim": 12, "n_heads": 4, "n_kv_heads": 2}, "n_heads", "head_dim dim/n_heads = 3 is odd"),
        ({"n_layers": 0}, "n_layers", "must be positive"),
        ({"vocab_size": -1}, "vocab_size", "must be positive"),
        ({"hidden_dim": 2.5}, "hidden_dim", "must be an integer"),
        ({"norm_eps": 0.0}, "norm_eps", "positive finite"),
        ({"rope_theta": float("nan")}, "rope_theta", "positive finite"),
    ],
)
def test_invalid_field_is_named(overrides, field, text):
    with pytest.raises(ConfigError, match=text) as info:
        tiny_config(**overrides)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


def test_head_dim_and_n_rep():
    config = tiny_config(dim=64, n_heads=8, n_kv_heads=2)
    assert config.head_dim == 8
    assert config.n_rep == 4


def test_dict_round_trip():
    config = tiny_config(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192))
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_from_dict_missing_and_unknown():
    data = tiny_config().to_dict()
    del data["hidden_dim"]
    with pytest.raises(ConfigError, match="'hidden_dim': missing"):
        ModelConfig.from_dict(data)
    data = tiny_config().to_dict()
    data["n_expert"] = 8
    with pytest.raises(ConfigError, match="'n_expert': unknown"):
        ModelConfig.from_dict(data)


def test_unknown_rope_scaling_type():
    with pytest.raises(ConfigError, match="unknown type 'yarn'"):
        RopeScaling(8.0, 1.0, 4.0, 8192, rope_type="yarn")
