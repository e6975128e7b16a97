"""load_checkpoint: format detection and the errors for paths it cannot read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity_tests.tiny_models import random_checkpoint, random_weights, tiny_config, write_gguf
from weights_tools.convert import write_canonical
from weights_tools.errors import CheckpointError, ConfigError
from weights_tools.loader import detect_format, load_checkpoint


@pytest.fixture
def canonical_folder(tmp_path):
    folder = tmp_path / "canonical"
    folder.mkdir()
    write_canonical(random_checkpoint(tiny_config(), seed=2), folder, progress=False)
    return folder


def test_gguf_by_suffix_and_magic(tmp_path):
    config = tiny_config()
    path = write_gguf(tmp_path / "model.gguf", config, random_weights(config))
    renamed = path.rename(tmp_path / "model.weights")

    assert detect_format(renamed) == "gguf"
    assert load_checkpoint(renamed).config == config


def test_canonical_round_trip(canonical_folder):
    source = random_checkpoint(tiny_config(), seed=2)
    loaded = load_checkpoint(canonical_folder)

    assert detect_format(canonical_folder) == "canonical"
    assert detect_format(canonical_folder / "config.json") == "canonical"
    assert loaded.config == source.config
    for name in source:
        np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)


def test_canonical_missing_tensor_rejected(canonical_folder):
    from safetensors.numpy import load_file, save_file

    weights_path = canonical_folder / "model.safetensors"
    tensors = load_file(weights_path)
    del tensors["layers.1.attention.wv.weight"]
    save_file(tensors, weights_path)

    with pytest.raises(CheckpointError, match=r"\[layers.1.attention.wv.weight\]: required tensor is missing"):
        load_checkpoint(canonical_folder)


def test_canonical_bad_config_rejected(canonical_folder):
    config_path = canonical_folder / "config.json"
    data = json.loads(config_path.read_text())
    del data["model_config"]["hidden_dim"]
    config_path.write_text(json.dumps(data))

    with pytest.raises(ConfigError, match=r"config.json: invalid config field 'hidden_dim': missing"):
        load_checkpoint(canonical_folder)


def test_canonical_truncated_rejected(canonical_folder):
    weights_path = canonical_folder / "model.safetensors"
    weights_path.write_bytes(weights_path.read_bytes()[:100])

    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read safetensors file"):
        load_checkpoint(canonical_folder)


def test_file_inside_folder_opens_folder(canonical_folder):
    assert load_checkpoint(canonical_folder / "model.safetensors").format == "canonical"


def test_pytorch_bin_rejected(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)

    with pytest.raises(CheckpointError, match="pytorch_model.bin: PyTorch pickle weights are only read as Meta"):
        load_checkpoint(path)


def test_missing_path_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="absent: file or folder not found"):
        load_checkpoint(tmp_path / "absent")


def test_unknown_file_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")

    with pytest.raises(CheckpointError, match="notes.txt: unrecognized checkpoint file"):
        load_checkpoint(path)


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="unrecognized checkpoint folder"):
        load_checkpoint(tmp_path)
