"""Known values of the NumPy spec, and agreement with Hugging Face on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_llama.model import Llama, apply_rope, repeat_kv, rms_norm, rope_table
from parity_tests.tiny_models import random_checkpoint, tiny_config


def rope_at(x: np.ndarray, position: int, theta: float) -> np.ndarray:
    head_dim = x.shape[-1]
    cos, sin = rope_table(head_dim, position + 1, theta)
    return apply_rope(x.reshape(1, 1, 1, head_dim), cos[position : position + 1], sin[position : position + 1])[0, 0, 0]


def test_rope_interleaved_known_value():
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    # Pairs (1, 2) and (3, 4) rotate by 1 rad and 0.01 rad.
    expected = np.array([-1.14264, 1.92208, 2.95985, 4.02980], dtype=np.float32)
    np.testing.assert_allclose(rope_at(x, 1, 1e4), expected, atol=1e-5)


def test_rope_position_zero_is_identity():
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(rope_at(x, 0, 1e4), x)


def test_rms_norm_known_value():
    x = np.full(8, 1e-3, dtype=np.float32)
    out = rms_norm(x, np.ones(8, dtype=np.float32), eps=1e-5)
    # 1e-3 / sqrt(1e-6 + 1e-5) = 0.301511; with eps 1e-6 it would be 0.707107.
    np.testing.assert_allclose(out, np.full(8, 0.301511), atol=1e-6)
    out_small_eps = rms_norm(x, np.ones(8, dtype=np.float32), eps=1e-6)
    np.testing.assert_allclose(out_small_eps, np.full(8, 0.707107), atol=1e-6)


def test_rms_norm_float16_does_not_overflow():
    # The float16 sum of squares of 4096 values of 300 is 3.7e8, far above float16's 65504.
    x = np.full((1, 4096), 300.0, dtype=np.float16)
    out = rms_norm(x, np.ones(4096, dtype=np.float16), eps=1e-5)
    assert out.dtype == np.float16
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.astype(np.float32), 1.0, atol=1e-3)


def test_gqa_head_mapping_is_repeat():
    # KV head k contains the constant k; query head h must see KV head h // (4 // 2).
    kv = np.arange(2, dtype=np.float32).reshape(1, 1, 2, 1)
    repeated = repeat_kv(kv, n_rep=2)
    assert repeated[0, 0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_kv_cache_decode_equals_recompute():
    checkpoint = random_checkpoint(tiny_config(), seed=1)
    model = Llama.from_checkpoint(checkpoint)
    tokens = np.random.default_rng(2).integers(0, 64, size=16)

    full = model.forward(tokens)[0]
    cache = model.new_cache(1, 16)
    step_logits = [model.forward(tokens[i : i + 1], start_pos=i, cache=cache)[0, 0] for i in range(16)]
    np.testing.assert_allclose(np.stack(step_logits), full, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_equals_one_pass():
    checkpoint = random_checkpoint(tiny_config(), seed=3)
    model = Llama.from_checkpoint(checkpoint)
    tokens = np.random.default_rng(4).integers(0, 64, size=16)

    full = model.forward(tokens)[0]
    cache = model.new_cache(1, 16)
    first = model.forward(tokens[:7], start_pos=0, cache=cache)[0]
    second = model.forward(tokens[7:], start_pos=7, cache=cache)[0]
    np.testing.assert_allclose(np.concatenate([first, second]), full, rtol=1e-5, atol=1e-5)


def test_forward_rejects_positions_beyond_cache():
    model = Llama.from_checkpoint(random_checkpoint())
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="do not fit the KV cache"):
        model.forward(np.arange(5), cache=cache)


@pytest.fixture(scope="module")
def smollm2_model(smollm2):
    return Llama.from_checkpoint(smollm2)


def test_smollm2_logits_match_transformers(smollm2_model):
    # Reference: Hugging Face transformers 5.25 on the same dequantized weights in float32.
    logits = smollm2_model.forward(np.array([504, 3575, 282, 4649, 314]))[0, -1]
    top = np.argsort(-logits)[:2]
    assert top[0] == 7042  # " Paris"
    assert top[1] == 260  # " the"
    assert abs(logits[7042] - 17.371) <= 0.01
    assert abs(logits[260] - 14.889) <= 0.01


def test_streamed_layers_match_resident():
    checkpoint = random_checkpoint(tiny_config(), seed=6)
    tokens = np.arange(10) % 64
    resident = Llama.from_checkpoint(checkpoint).forward(tokens)
    streamed_model = Llama.from_checkpoint(random_checkpoint(tiny_config(), seed=6), stream_layers=True)
    assert not isinstance(streamed_model.layers, list)
    np.testing.assert_array_equal(streamed_model.forward(tokens), resident)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_low_precision_forward_tracks_float32(dtype_name):
    import ml_dtypes

    dtype = np.float16 if dtype_name == "float16" else ml_dtypes.bfloat16
    checkpoint = random_checkpoint(tiny_config(), seed=7)
    tokens = np.arange(12) % 64
    reference = Llama.from_checkpoint(checkpoint).forward(tokens)
    low = Llama.from_checkpoint(checkpoint, dtype=dtype).forward(tokens)
    assert low.dtype == np.float32
    # bfloat16 keeps 8 mantissa bits (relative step 2**-8), float16 keeps 11.
    bound = 0.05 if dtype_name == "bfloat16" else 0.01
    assert np.max(np.abs(low - reference)) <= bound * np.max(np.abs(reference))
    assert np.argmax(low[0, -1]) == np.argmax(reference[0, -1])
