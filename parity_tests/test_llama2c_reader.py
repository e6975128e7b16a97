"""llama2.c .bin checkpoints: the real stories260K model, both layouts, and bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from numpy_llama.model import Llama
from parity_tests.checkpoint_writers import hf_logits, write_llama2c
from parity_tests.tiny_models import random_weights, tiny_config
from weights_tools.errors import CheckpointError
from weights_tools.llama2c_reader import load_llama2c
from weights_tools.loader import load_checkpoint

BOS = 1
# Greedy continuation of BOS under stories260K, recorded from this reader with numpy_llama.
# A float64 per-token loop written in the order of llama2.c's run.c gave the same ids, and
# transformers gives them too on the llama-convert --to hf output (tested below).
STORIES260K_GREEDY = [1, 461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264, 283, 452, 288, 13]


def greedy_ids(model, n_new: int) -> list[int]:
    """Generate n_new tokens after BOS by argmax, prefilling through a KV cache one token at a time."""
    cache = model.new_cache(1, n_new + 1)
    ids = [BOS]
    for position in range(n_new):
        logits = model.forward(np.array([[ids[-1]]]), start_pos=position, cache=cache)
        ids.append(int(np.argmax(logits[0, -1])))
    return ids


@pytest.fixture(scope="module")
def stories260k(data_dir):
    return load_llama2c(data_dir / "stories260K" / "stories260K.bin")


def test_stories260k_header(stories260k):
    config = stories260k.config
    assert (config.dim, config.hidden_dim, config.n_layers) == (64, 172, 5)
    assert (config.n_heads, config.n_kv_heads, config.vocab_size, config.max_seq_len) == (8, 4, 512, 512)
    assert config.tie_embeddings
    assert (config.rope_theta, config.norm_eps) == (10000.0, 1e-5)
    assert stories260k.format == "llama2c-legacy"


def test_stories260k_generates_numpy(stories260k):
    model = Llama.from_checkpoint(stories260k)
    ids = greedy_ids(model, len(STORIES260K_GREEDY) - 1)

    assert ids == STORIES260K_GREEDY
    # A trained model is confident on its own greedy text; misread weights give near-uniform 1/512.
    logits = model.forward(np.array([ids]))[0]
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    assert probabilities.max(-1).mean() > 0.3


def test_stories260k_generates_tensorflow(stories260k):
    pytest.importorskip("tensorflow", reason="tf_llama needs TensorFlow")
    from tf_llama.model import LlamaModel

    tokens = np.array([STORIES260K_GREEDY])
    tf_logits = LlamaModel.from_checkpoint(stories260k).forward(tokens)
    np_logits = Llama.from_checkpoint(stories260k).forward(tokens)

    np.testing.assert_allclose(tf_logits, np_logits, rtol=0, atol=1e-4)
    assert np.argmax(tf_logits[0, :-1], axis=-1).tolist() == STORIES260K_GREEDY[1:]


def test_stories260k_generates_transformers(stories260k, data_dir, tmp_path):
    pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers runs the converted model")
    from weights_tools.convert import convert

    folder = convert(data_dir / "stories260K" / "stories260K.bin", tmp_path / "hf", "hf", progress=False)
    model = transformers.LlamaForCausalLM.from_pretrained(folder).eval()

    logits = hf_logits(model, np.array([STORIES260K_GREEDY]))
    assert np.argmax(logits[0, :-1], axis=-1).tolist() == STORIES260K_GREEDY[1:]


def test_loader_dispatches_bin(data_dir):
    assert load_checkpoint(data_dir / "stories260K" / "stories260K.bin").format == "llama2c-legacy"


@pytest.mark.parametrize(
    ("version", "shared"),
    [(0, True), (0, False), (1, True), (1, False)],
    ids=["legacy-shared", "legacy-separate", "v1-shared", "v1-separate"],
)
def test_layouts_round_trip(tmp_path, version, shared):
    config = tiny_config(tie_embeddings=shared)
    weights = random_weights(config, seed=version)
    path = write_llama2c(tmp_path / "model.bin", config, weights, version, shared)

    checkpoint = load_checkpoint(path)
    assert checkpoint.config == config
    assert checkpoint.format == ("llama2c-legacy" if version == 0 else "llama2c-v1")
    for name, array in weights.items():
        np.testing.assert_array_equal(checkpoint[name], array, err_msg=name)
    if shared:
        assert checkpoint["output.weight"] is checkpoint["tok_embeddings.weight"]


@pytest.mark.parametrize("version", [0, 1])
def test_truncated_file_rejected(tmp_path, version):
    config = tiny_config()
    path = write_llama2c(tmp_path / "model.bin", config, random_weights(config), version, False)
    path.write_bytes(path.read_bytes()[:-4])

    with pytest.raises(CheckpointError, match=r"model.bin \[header\]: file is truncated"):
        load_llama2c(path)


def test_version2_rejected(tmp_path):
    path = tmp_path / "q80.bin"
    path.write_bytes(struct.pack("<Ii7iB", 0x616B3432, 2, 64, 172, 5, 8, 4, 512, 512, 1).ljust(256, b"\0"))

    with pytest.raises(CheckpointError, match=r"\[version\]: llama2.c export version 2 is not supported"):
        load_llama2c(path)


def test_invalid_header_rejected(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + b"\0" * 64)

    with pytest.raises(CheckpointError, match=r"\[header.n_heads\]: header is not a llama2.c model"):
        load_llama2c(path)
