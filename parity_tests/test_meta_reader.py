"""Meta consolidated.NN.pth + params.json: torch-free reading, shard merging and bad input."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from parity_tests.checkpoint_writers import meta_params, save_meta
from parity_tests.tiny_models import random_weights, tiny_config
from weights_tools.config import RopeScaling
from weights_tools.errors import CheckpointError, ConfigError
from weights_tools.meta_reader import load_meta, meta_hidden_dim

# Meta's rule gives hidden_dim 96 for dim 32 with multiple_of 16: int(2 * 128 / 3) = 85 -> 96.
MULTIPLE_OF = 16
HIDDEN_DIM = 96


@pytest.mark.parametrize(
    ("dim", "multiple_of", "ffn_dim_multiplier", "hidden_dim"),
    [
        (4096, 256, None, 11008),  # Llama 2 7B
        (8192, 4096, 1.3, 28672),  # Llama 2 70B
        (4096, 1024, 1.3, 14336),  # Llama 3 8B
        (2048, 256, 1.5, 8192),  # Llama 3.2 1B
    ],
)
def test_hidden_dim_matches_meta(dim, multiple_of, ffn_dim_multiplier, hidden_dim):
    assert meta_hidden_dim(dim, multiple_of, ffn_dim_multiplier) == hidden_dim


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch produces the .pth test files")


@pytest.fixture(scope="module")
def weights():
    config = tiny_config(hidden_dim=HIDDEN_DIM)
    return config, random_weights(config, seed=1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_single_shard_dtypes(torch, weights, tmp_path, dtype):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF), dtype=dtype)
    checkpoint = load_meta(tmp_path)

    assert checkpoint.config == config
    for name, array in arrays.items():
        expected = torch.from_numpy(array).to(getattr(torch, dtype)).float().numpy()
        assert checkpoint[name].dtype == np.float32, name
        np.testing.assert_array_equal(checkpoint[name], expected, err_msg=name)


@pytest.mark.parametrize("vocab_parallel_embedding", [False, True], ids=["llama2-embedding", "llama3-embedding"])
def test_two_shards_merge(torch, weights, tmp_path, vocab_parallel_embedding):
    config, arrays = weights
    save_meta(
        tmp_path,
        arrays,
        meta_params(config, MULTIPLE_OF),
        n_shards=2,
        vocab_parallel_embedding=vocab_parallel_embedding,
    )
    checkpoint = load_meta(tmp_path)

    assert checkpoint.config == config
    assert "rope.freqs" not in checkpoint.infos
    for name, array in arrays.items():
        np.testing.assert_array_equal(checkpoint[name], array, err_msg=name)


def test_vocab_size_from_embeddings(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF, vocab_size=-1), n_shards=2)
    assert load_meta(tmp_path).config.vocab_size == config.vocab_size


def test_llama31_scaled_rope_and_fields(torch, weights, tmp_path):
    config, arrays = weights
    params = meta_params(config, MULTIPLE_OF, rope_theta=500000.0, norm_eps=1e-6, use_scaled_rope=True)
    save_meta(tmp_path, arrays, params)
    loaded = load_meta(tmp_path).config

    assert loaded.rope_theta == 500000.0
    assert loaded.norm_eps == 1e-6
    assert loaded.n_kv_heads == config.n_kv_heads
    assert loaded.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_ffn_dim_multiplier_applied(torch, tmp_path):
    # dim 32: int(2 * 128 / 3) = 85, * 1.5 = 127, rounded up to a multiple of 16 -> 128.
    config = tiny_config(hidden_dim=128)
    save_meta(tmp_path, random_weights(config), meta_params(config, 16, ffn_dim_multiplier=1.5))
    assert load_meta(tmp_path).config.hidden_dim == 128


def test_pickle_with_os_system_rejected(tmp_path):
    canary = tmp_path / "canary"

    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    payload = pickle.dumps(OrderedDict({"tok_embeddings.weight": RunsCommand()}), protocol=2)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 1, "n_heads": 4}))
    with zipfile.ZipFile(folder / "consolidated.00.pth", "w") as archive:
        archive.writestr("consolidated.00/data.pkl", payload)
        archive.writestr("consolidated.00/version", "3\n")

    with pytest.raises(CheckpointError, match=r"system.*not loaded or run"):
        load_meta(folder)
    assert not canary.exists()


def test_truncated_zip_rejected(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF))
    shard = tmp_path / "consolidated.00.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    with pytest.raises(CheckpointError, match="consolidated.00.pth.*truncated"):
        load_meta(tmp_path)


def test_missing_shard_rejected(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF), n_shards=2)
    (tmp_path / "consolidated.00.pth").unlink()

    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: model-parallel shard is missing"):
        load_meta(tmp_path)


def test_missing_tensor_rejected(torch, weights, tmp_path):
    config, arrays = weights
    arrays = {name: array for name, array in arrays.items() if name != "layers.1.feed_forward.w3.weight"}
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF))

    with pytest.raises(CheckpointError, match=r"\[layers\.1\.feed_forward\.w3\.weight\]: required tensor is missing"):
        load_meta(tmp_path)


@pytest.mark.parametrize("field", ["dim", "n_layers", "n_heads"])
def test_missing_params_field_rejected(torch, weights, tmp_path, field):
    config, arrays = weights
    params = meta_params(config, MULTIPLE_OF)
    del params[field]
    save_meta(tmp_path, arrays, params)

    with pytest.raises(ConfigError, match=rf"params\.json: invalid config field '{field}': required field is missing"):
        load_meta(tmp_path)


def test_missing_params_file_rejected(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF))
    (tmp_path / "params.json").unlink()

    with pytest.raises(ConfigError, match="params.json.*file not found"):
        load_meta(tmp_path)


def test_wrong_multiple_of_rejected(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, 256))

    with pytest.raises(ConfigError, match=r"'multiple_of'.*hidden_dim 256.*96 rows"):
        load_meta(tmp_path)


def test_wrong_n_kv_heads_rejected(torch, weights, tmp_path):
    config, arrays = weights
    save_meta(tmp_path, arrays, meta_params(config, MULTIPLE_OF, n_kv_heads=4))

    with pytest.raises(CheckpointError, match=r"\[layers\.0\.attention\.wk\.weight\].*params\.json implies \(32, 32\)"):
        load_meta(tmp_path)


def test_storage_outside_allow_list_rejected(torch, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 1, "n_heads": 4}))
    buffer = io.BytesIO()
    torch.save({"tok_embeddings.weight": torch.zeros(4, 32, dtype=torch.int64)}, buffer)
    (folder / "consolidated.00.pth").write_bytes(buffer.getvalue())

    with pytest.raises(CheckpointError, match="torch.LongStorage"):
        load_meta(folder)
