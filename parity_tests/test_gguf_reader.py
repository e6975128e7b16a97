"""GGUF reader: metadata, tensor types, tied embeddings and malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests.tiny_models import quantize_or_random_blocks, random_weights, tiny_config, write_gguf
from weights_tools.errors import CheckpointError
from weights_tools.gguf_reader import load_gguf

# Worst relative RMS error seen for random normal weights, with a margin; it bounds
# each type loosely but catches a wrong block layout, which gives errors near 1.
QUANT_TOLERANCE = {
    "F16": 1e-3,
    "BF16": 1e-2,
    "Q8_0": 1e-2,
    "Q5_0": 0.06,
    "Q5_1": 0.06,
    "Q4_0": 0.12,
    "Q4_1": 0.12,
}
# gguf cannot quantize these, so the test writes random blocks (see tiny_models).
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def relative_rms_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sqrt(np.mean((actual - expected) ** 2) / np.mean(expected**2)))


def test_config_from_metadata(tmp_path):
    config = tiny_config()
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config))
    checkpoint = load_gguf(path)
    assert checkpoint.config == config
    assert checkpoint.format == "gguf"


def test_f32_tensors_are_exact(tmp_path):
    config = tiny_config()
    weights = random_weights(config)
    checkpoint = load_gguf(write_gguf(tmp_path / "m.gguf", config, weights))
    for name, array in weights.items():
        np.testing.assert_array_equal(checkpoint[name], array, err_msg=name)
        assert checkpoint[name].dtype == np.float32


@pytest.mark.parametrize("tensor_type", sorted(QUANT_TOLERANCE))
def test_dequantized_types_are_close(tmp_path, tensor_type):
    # K-quants use blocks of 256 values, so rows must be a multiple of 256.
    config = tiny_config(dim=256, hidden_dim=512, n_heads=4, n_kv_heads=2, n_layers=1, vocab_size=32)
    weights = random_weights(config)
    checkpoint = load_gguf(write_gguf(tmp_path / "m.gguf", config, weights, tensor_type=tensor_type))
    name = "layers.0.attention.wq.weight"
    assert checkpoint.infos[name].stored_type == tensor_type
    error = relative_rms_error(checkpoint[name], weights[name])
    assert error < QUANT_TOLERANCE[tensor_type]
    assert checkpoint["layers.0.attention_norm.weight"].shape == (256,)


@pytest.mark.parametrize("tensor_type", K_QUANTS)
def test_k_quant_rows_keep_their_order(tmp_path, tensor_type):
    import gguf

    config = tiny_config(dim=256, hidden_dim=512, n_heads=4, n_kv_heads=2, n_layers=1, vocab_size=32)
    weights = random_weights(config)
    checkpoint = load_gguf(write_gguf(tmp_path / "m.gguf", config, weights, tensor_type=tensor_type))
    qtype = gguf.GGMLQuantizationType[tensor_type]

    name = "layers.0.feed_forward.w2.weight"  # [dim, hidden_dim]: not square
    blocks = quantize_or_random_blocks(weights[name], qtype)
    expected = np.stack([gguf.quants.dequantize(row, qtype) for row in blocks])
    assert checkpoint.infos[name].stored_type == tensor_type
    assert checkpoint[name].shape == (256, 512)
    assert np.all(np.isfinite(expected))
    np.testing.assert_array_equal(checkpoint[name], expected.astype(np.float32))


def test_missing_output_means_tied(tmp_path):
    config = tiny_config(tie_embeddings=True)
    weights = random_weights(config)
    assert "output.weight" not in weights
    checkpoint = load_gguf(write_gguf(tmp_path / "m.gguf", config, weights))
    assert checkpoint.config.tie_embeddings
    assert checkpoint["output.weight"] is checkpoint["tok_embeddings.weight"]


def test_vocab_size_from_token_list(tmp_path):
    config = tiny_config()
    tokens = [f"t{i}" for i in range(config.vocab_size)]
    path = write_gguf(
        tmp_path / "m.gguf", config, random_weights(config), tokens=tokens, skip_keys=("llama.vocab_size",)
    )
    assert load_gguf(path).config.vocab_size == config.vocab_size


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_gguf(tmp_path / "absent.gguf")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_gguf(path)


def test_empty_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="file is truncated: 0 bytes"):
        load_gguf(path)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, fraction):
    config = tiny_config()
    data = write_gguf(tmp_path / "full.gguf", config, random_weights(config)).read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: max(4, int(len(data) * fraction))])
    with pytest.raises(CheckpointError, match="truncated or malformed"):
        load_gguf(path)


def test_unsupported_architecture(tmp_path):
    config = tiny_config()
    weights = random_weights(config)
    path = write_gguf(tmp_path / "m.gguf", config, weights, architecture="gpt2")
    with pytest.raises(CheckpointError, match="unsupported architecture 'gpt2'"):
        load_gguf(path)


def test_undequantizable_type(tmp_path):
    import gguf

    config = tiny_config(n_layers=1)
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_uint32("llama.context_length", 64)
    writer.add_uint32("llama.embedding_length", config.dim)
    writer.add_uint32("llama.feed_forward_length", config.hidden_dim)
    writer.add_uint32("llama.attention.head_count", config.n_heads)
    writer.add_uint32("llama.attention.head_count_kv", config.n_kv_heads)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_uint32("llama.vocab_size", config.vocab_size)
    writer.add_tensor("token_embd.weight", np.zeros((config.vocab_size, config.dim), dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="I32 cannot be dequantized"):
        load_gguf(path)


def test_missing_tensor_is_named(tmp_path):
    config = tiny_config()
    weights = random_weights(config)
    del weights["layers.1.feed_forward.w2.weight"]
    path = write_gguf(tmp_path / "m.gguf", config, weights)
    with pytest.raises(CheckpointError, match=r"blk\.1\.ffn_down\.weight"):
        load_gguf(path)


def test_metadata_shape_mismatch(tmp_path):
    config = tiny_config()
    weights = random_weights(config)
    weights["layers.0.attention.wk.weight"] = weights["layers.0.attention.wq.weight"]
    path = write_gguf(tmp_path / "m.gguf", config, weights)
    with pytest.raises(CheckpointError, match=r"blk\.0\.attn_k\.weight.*shape"):
        load_gguf(path)


def test_missing_metadata_key(tmp_path):
    config = tiny_config()
    path = write_gguf(tmp_path / "m.gguf", config, random_weights(config), skip_keys=("llama.block_count",))
    with pytest.raises(CheckpointError, match="llama.block_count"):
        load_gguf(path)


def test_llama3_divisors_match_spec():
    from numpy_llama.model import rope_frequencies
    from weights_tools.config import RopeScaling
    from weights_tools.gguf_reader import llama3_frequency_divisors

    scaling = RopeScaling(8.0, 1.0, 4.0, 8192)
    divisors = llama3_frequency_divisors(scaling, head_dim=128, rope_theta=500000.0)

    np.testing.assert_array_equal(divisors[:29], 1.0)
    assert np.all((divisors[29:35] > 1.0) & (divisors[29:35] < 8.0))
    np.testing.assert_array_equal(divisors[35:], 8.0)
    np.testing.assert_allclose(
        rope_frequencies(128, 500000.0) / divisors, rope_frequencies(128, 500000.0, scaling), rtol=1e-12
    )


def _llama3_gguf(tmp_path, divisors=None, scale_pair=None):
    from weights_tools.config import RopeScaling
    from weights_tools.gguf_reader import llama3_frequency_divisors

    config = tiny_config()
    if divisors is None:
        divisors = llama3_frequency_divisors(RopeScaling(32.0, 1.0, 4.0, 8192), config.head_dim, config.rope_theta)
    divisors = np.array(divisors, dtype=np.float32)
    if scale_pair is not None:
        divisors[scale_pair] *= 1.5
    extra = {"rope_freqs.weight": divisors}
    return write_gguf(tmp_path / "m.gguf", config, random_weights(config), extra_tensors=extra)


def test_rope_freqs_read_as_llama3_scaling(tmp_path):
    from weights_tools.config import RopeScaling

    checkpoint = load_gguf(_llama3_gguf(tmp_path))

    assert checkpoint.config.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert "rope_freqs.weight" not in checkpoint.infos


def test_rope_freqs_other_factors_rejected(tmp_path):
    path = _llama3_gguf(tmp_path, scale_pair=2)
    with pytest.raises(CheckpointError, match=r"\[rope_freqs\.weight\].*do not match Llama 3\.1 scaling with factor 32"):
        load_gguf(path)


def test_rope_freqs_wrong_shape_rejected(tmp_path):
    path = _llama3_gguf(tmp_path, divisors=np.ones(5))
    with pytest.raises(CheckpointError, match=r"\[rope_freqs\.weight\].*shape \(5,\) but head_dim 8 implies \(4,\)"):
        load_gguf(path)


def test_smollm2_config(smollm2):
    config = smollm2.config
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads) == (576, 30, 9, 3)
    assert (config.hidden_dim, config.vocab_size, config.max_seq_len) == (1536, 49152, 8192)
    assert config.rope_theta == 100000.0
    assert config.norm_eps == 1e-5
    assert config.tie_embeddings
    assert smollm2.infos["layers.0.attention.wq.weight"].stored_type == "Q4_1"
