"""Hugging Face config.json + safetensors: q/k un-permutation, logits against transformers, bad input."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpy_llama.model import Llama, rope_frequencies
from parity_tests.checkpoint_writers import hf_logits, random_hf_model
from parity_tests.tiny_models import tiny_config
from weights_tools.config import RopeScaling
from weights_tools.errors import CheckpointError, ConfigError
from weights_tools.hf_reader import interleaved_to_rotate_half, load_hf, rotate_half_to_interleaved

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
TOKENS = np.array([[1, 7, 3, 60, 12, 12, 5, 33, 2, 9, 41, 17, 8, 8, 50, 63, 0, 22, 19, 4, 30, 11, 6, 44]])


def test_rope_permutation_round_trip():
    rng = np.random.default_rng(0)
    n_heads, head_dim = 3, 8
    weight = rng.standard_normal((n_heads * head_dim, 5)).astype(np.float32)
    hf = interleaved_to_rotate_half(weight, n_heads)

    # Head 1, pair j = 1: interleaved rows (2, 3) become rotate-half rows (1, 1 + head_dim/2).
    np.testing.assert_array_equal(hf[head_dim + 1], weight[head_dim + 2])
    np.testing.assert_array_equal(hf[head_dim + 1 + head_dim // 2], weight[head_dim + 3])
    np.testing.assert_array_equal(rotate_half_to_interleaved(hf, n_heads), weight)
    # At head_dim >= 8 the permutation is not its own inverse, so applying the wrong one is caught.
    assert not np.array_equal(rotate_half_to_interleaved(weight, n_heads), hf)


@given(n_heads=st.integers(1, 4), half_head_dim=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_rope_permutation_pairs_property(n_heads, half_head_dim, seed):
    head_dim = 2 * half_head_dim
    weight = np.random.default_rng(seed).standard_normal((n_heads * head_dim, 3))
    hf = interleaved_to_rotate_half(weight, n_heads)

    for head in range(n_heads):
        base = head * head_dim
        for pair in range(half_head_dim):
            np.testing.assert_array_equal(hf[base + pair], weight[base + 2 * pair])
            np.testing.assert_array_equal(hf[base + half_head_dim + pair], weight[base + 2 * pair + 1])
    np.testing.assert_array_equal(rotate_half_to_interleaved(hf, n_heads), weight)


def test_llama3_frequencies_match_meta_bands():
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    plain = rope_frequencies(128, 500000.0)
    scaled = rope_frequencies(128, 500000.0, scaling)

    np.testing.assert_array_equal(scaled[:29], plain[:29])
    middle = scaled[29:35]
    assert np.all(middle < plain[29:35])
    assert np.all(middle > plain[29:35] / 8)
    np.testing.assert_allclose(scaled[35:], plain[35:] / 8, rtol=1e-12)


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch", reason="transformers needs torch to build and run the reference model")
    return pytest.importorskip("transformers", reason="transformers produces the Hugging Face test files")


@pytest.mark.parametrize(
    ("tied", "n_kv_heads", "rope_scaling"),
    [(True, 2, None), (False, 2, None), (False, 4, None), (True, 2, LLAMA3_SCALING)],
    ids=["tied-gqa", "untied-gqa", "untied-mha", "tied-gqa-llama3"],
)
def test_logits_match_transformers(transformers, tmp_path, tied, n_kv_heads, rope_scaling):
    config = tiny_config(tie_embeddings=tied, n_kv_heads=n_kv_heads, rope_theta=500000.0)
    model = random_hf_model(config, seed=3, rope_scaling=rope_scaling)
    model.save_pretrained(tmp_path)

    checkpoint = load_hf(tmp_path)
    ours = Llama.from_checkpoint(checkpoint).forward(TOKENS)

    assert checkpoint.config.tie_embeddings == tied
    assert checkpoint.config.rope_scaling == (
        None if rope_scaling is None else RopeScaling(8.0, 1.0, 4.0, 16)
    )
    np.testing.assert_allclose(ours, hf_logits(model, TOKENS), rtol=0, atol=1e-4)


def test_sharded_index_loads(transformers, tmp_path):
    config = tiny_config()
    model = random_hf_model(config)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()

    ours = Llama.from_checkpoint(load_hf(tmp_path)).forward(TOKENS)
    np.testing.assert_allclose(ours, hf_logits(model, TOKENS), rtol=0, atol=1e-4)


def test_missing_shard_rejected(transformers, tmp_path):
    random_hf_model(tiny_config()).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()

    with pytest.raises(CheckpointError, match=rf"{shard.name} \[.*\]: shard listed in model.safetensors.index.json is missing"):
        load_hf(tmp_path)


def test_bfloat16_tensors_read(transformers, tmp_path):
    import torch

    model = random_hf_model(tiny_config()).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    checkpoint = load_hf(tmp_path)

    expected = model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()
    assert checkpoint.infos["layers.1.feed_forward.w2.weight"].stored_type == "BF16"
    np.testing.assert_array_equal(checkpoint["layers.1.feed_forward.w2.weight"], expected)


@pytest.fixture
def saved_model(transformers, tmp_path):
    """A tied model, so save_pretrained leaves lm_head.weight out."""
    random_hf_model(tiny_config(tie_embeddings=True)).save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_truncated_safetensors_rejected(saved_model):
    weights = saved_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])

    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file, it is truncated"):
        load_hf(saved_model)


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_missing_config_field_rejected(saved_model, field):
    _edit_config(saved_model, **{field: None})

    with pytest.raises(ConfigError, match=rf"config.json: invalid config field '{field}': required field is missing"):
        load_hf(saved_model)


def test_shape_mismatch_rejected(saved_model):
    _edit_config(saved_model, intermediate_size=64)

    with pytest.raises(CheckpointError, match=r"\[model.layers.0.mlp.gate_proj.weight\].*config.json implies \(64, 32\)"):
        load_hf(saved_model)


def test_missing_lm_head_rejected(saved_model):
    _edit_config(saved_model, tie_word_embeddings=False)

    with pytest.raises(CheckpointError, match=r"\[lm_head.weight\]: required tensor is missing"):
        load_hf(saved_model)


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_unknown_rope_scaling_rejected(saved_model, key):
    _edit_config(saved_model, rope_parameters=None, rope_scaling=None)
    _edit_config(saved_model, **{key: {"rope_type": "yarn", "factor": 4.0}})

    with pytest.raises(ConfigError, match=rf"'{key}.rope_type': unsupported RoPE scaling type 'yarn'"):
        load_hf(saved_model)


def test_legacy_type_key_accepted(saved_model):
    scaling = dict(LLAMA3_SCALING)
    scaling["type"] = scaling.pop("rope_type")
    _edit_config(saved_model, rope_parameters=None, rope_theta=500000.0, rope_scaling=scaling)

    config = load_hf(saved_model).config
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16)


def test_bfloat16_view_matches_ml_dtypes(tmp_path):
    """Reading BF16 without torch: the raw bytes of ml_dtypes bfloat16 round-trip exactly."""
    from safetensors.numpy import save_file

    from weights_tools.hf_reader import SafetensorsFile

    values = np.array([[1.5, -2.25], [3.0e-3, 65280.0]], dtype=ml_dtypes.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_file({"a": np.zeros(3, np.float32), "b": values}, path)

    file = SafetensorsFile(path)
    assert file.tensors["b"] == ("BF16", (2, 2))
    np.testing.assert_array_equal(file.load("b"), values.astype(np.float32))
