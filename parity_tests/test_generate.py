"""Sampling and the generation loop of the NumPy model."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_llama.generate import SamplingParams, generate, sample_next_token
from numpy_llama.model import Llama
from parity_tests.tiny_models import random_checkpoint, tiny_config
from weights_tools.errors import GenerationError


@pytest.fixture(scope="module")
def model():
    return Llama.from_checkpoint(random_checkpoint(tiny_config(max_seq_len=32), seed=5))


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sample_next_token(logits, SamplingParams(), np.random.default_rng(0)) == 1


def test_top_k_one_is_greedy():
    logits = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    params = SamplingParams(temperature=1.5, top_k=1)
    rng = np.random.default_rng(1)
    assert {sample_next_token(logits, params, rng) for _ in range(20)} == {int(np.argmax(logits))}


def test_top_p_keeps_only_nucleus():
    # Probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps the first two tokens only.
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    params = SamplingParams(temperature=1.0, top_p=0.6)
    rng = np.random.default_rng(2)
    draws = [sample_next_token(logits, params, rng) for _ in range(300)]
    assert set(draws) == {0, 1}
    assert 0.5 < draws.count(0) / len(draws) < 0.75  # 0.5 / 0.8 = 0.625 after renormalizing


def test_temperature_sampling_follows_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    rng = np.random.default_rng(3)
    draws = np.array([sample_next_token(logits, SamplingParams(temperature=1.0), rng) for _ in range(2000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 2000, [0.7, 0.2, 0.1], atol=0.04)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"temperature": -1.0}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p")],
)
def test_invalid_sampling_params(kwargs, text):
    with pytest.raises(GenerationError, match=text):
        SamplingParams(**kwargs)


def test_seeded_sampling_is_reproducible(model):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=123)
    first = list(generate(model, [1, 2, 3], 10, params))
    second = list(generate(model, [1, 2, 3], 10, params))
    assert first == second
    assert len(first) == 10


def test_greedy_matches_manual_loop(model):
    ids = list(generate(model, [1, 2, 3], 6))
    tokens = [1, 2, 3]
    for _ in range(6):
        tokens.append(int(np.argmax(model.forward(np.array(tokens))[0, -1])))
    assert ids == tokens[3:]


def test_stops_at_stop_id(model):
    ids = list(generate(model, [1, 2, 3], 10))
    stop = ids[2]
    stopped = list(generate(model, [1, 2, 3], 10, stop_ids={stop}))
    assert stopped == ids[: ids.index(stop) + 1]


def test_prompt_longer_than_context(model):
    with pytest.raises(GenerationError, match="prompt has 40 tokens but the context length is 32"):
        list(generate(model, [1] * 40, 1))


def test_new_tokens_beyond_context(model):
    with pytest.raises(GenerationError, match="at most 22 remain; lower -n"):
        list(generate(model, [1] * 10, 23))


def test_prompt_fills_context_exactly(model):
    assert len(list(generate(model, [1] * 10, 22))) == 22


def test_empty_prompt(model):
    with pytest.raises(GenerationError, match="prompt is empty"):
        list(generate(model, [], 3))


def test_token_id_outside_vocabulary(model):
    with pytest.raises(GenerationError, match="token id 64 is outside the vocabulary"):
        list(generate(model, [1, 64], 3))
