"""Check any LLaMA implementation against the NumPy spec, component by component.

Write an adapter with the methods of `Implementation` (NumPy arrays in and out, weights
in the canonical [out_features, in_features] layout), then create the tests in a test
module:

    from parity_tests.harness import parity_tests_for
    globals().update(parity_tests_for(MyJaxAdapter(), prefix="jax"))

That adds hypothesis tests of RMSNorm, RoPE, SwiGLU, attention (grouped-query, causal,
KV-cache decode at start_pos > 0), one transformer block, whole-model logits (random tiny
models, prefill and cached decode) and, when the SmolLM2 model is installed, its logits and
32 greedy ids. Each runs for every dtype the adapter lists, with the tolerances of
parity_tests.tolerances. A method may raise NotImplementedError to skip its tests.
The SmolLM2 tests take the `smollm2` fixture of parity_tests/conftest.py: put the test
module under parity_tests/, or import `smollm2` and `smollm2_path` from that conftest.
The functions check_* run one case and can be used without pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings

from numpy_llama import model as spec
from numpy_llama.generate import SamplingParams, generate
from parity_tests import strategies
from parity_tests.compare import assert_close
from parity_tests.tolerances import DTYPES, tolerance
from weights_tools.checkpoint import Checkpoint
from weights_tools.config import ModelConfig, RopeScaling

SMOLLM2_PROMPT = [504, 3575, 282, 4649, 314]  # "The capital of France is"
SMOLLM2_STORY_PROMPT = [6403, 1980, 253, 655]  # "Once upon a time"
GREEDY_NEW_TOKENS = 32


class Implementation(Protocol):
    """The operations a candidate implementation exposes to the harness.

    Array arguments arrive in the compute dtype under test (NumPy float32, float16, or
    ml_dtypes.bfloat16); results may be any float dtype and are compared in float64.
    Caches are [B, T, K, Hd]; attention and transformer_block return the updated copies.
    """

    name: str
    dtypes: tuple[str, ...]

    def rms_norm(self, x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray: ...

    def apply_rope(
        self, x: np.ndarray, start_pos: int, rope_theta: float, rope_scaling: RopeScaling | None
    ) -> np.ndarray: ...

    def feed_forward(self, x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> np.ndarray: ...

    def attention(
        self, x: np.ndarray, weights: dict[str, np.ndarray], n_heads: int, n_kv_heads: int, rope_theta: float,
        rope_scaling: RopeScaling | None, cache_k: np.ndarray, cache_v: np.ndarray, start_pos: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def transformer_block(
        self, x: np.ndarray, layer: dict[str, np.ndarray], config: ModelConfig, cache_k: np.ndarray,
        cache_v: np.ndarray, start_pos: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def model_logits(
        self, checkpoint: Checkpoint, tokens: np.ndarray, dtype: str, prefill_len: int | None = None
    ) -> np.ndarray:
        """Return float32 logits [B, S, V] of tokens [B, S] from position 0.

        With prefill_len, tokens[:, :prefill_len] run in one call and each later token in its
        own call at the next position, reusing the KV cache.
        """
        ...

    def greedy_ids(self, checkpoint: Checkpoint, prompt_ids: list[int], max_new_tokens: int, dtype: str) -> list[int]: ...


def numpy_dtype(dtype: str) -> np.dtype:
    """Return the NumPy dtype for a compute dtype name (bfloat16 from ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(array).astype(numpy_dtype(dtype))


class SpecReference:
    """The NumPy spec (numpy_llama.model) behind the Implementation interface, run in the inputs' dtype."""

    name = "numpy_llama"
    dtypes = DTYPES

    def rms_norm(self, x, weight, eps):
        return spec.rms_norm(x, weight, eps)

    def apply_rope(self, x, start_pos, rope_theta, rope_scaling):
        cos, sin = spec.rope_table(x.shape[-1], start_pos + x.shape[1], rope_theta, rope_scaling)
        return spec.apply_rope(x, cos[start_pos:], sin[start_pos:])

    def feed_forward(self, x, w1, w2, w3):
        # In float16, exp(-x) in SiLU overflows to inf for x < -11.09; the result, -0, is SiLU's limit.
        with np.errstate(over="ignore"):
            return spec.feed_forward(x, w1, w2, w3)

    def attention(self, x, weights, n_heads, n_kv_heads, rope_theta, rope_scaling, cache_k, cache_v, start_pos):
        head_dim = weights["wq"].shape[0] // n_heads
        seq_len = x.shape[1]
        cos, sin = spec.rope_table(head_dim, start_pos + seq_len, rope_theta, rope_scaling)
        cache_k, cache_v = cache_k.copy(), cache_v.copy()
        out = spec.attention(
            x, weights["wq"], weights["wk"], weights["wv"], weights["wo"],
            cos[start_pos:], sin[start_pos:], cache_k, cache_v, start_pos, n_heads, n_kv_heads,
        )
        return out, cache_k, cache_v

    def transformer_block(self, x, layer, config, cache_k, cache_v, start_pos):
        seq_len = x.shape[1]
        cos, sin = spec.rope_table(config.head_dim, start_pos + seq_len, config.rope_theta, config.rope_scaling)
        cache_k, cache_v = cache_k.copy(), cache_v.copy()
        with np.errstate(over="ignore"):
            out = spec.transformer_block(
                x, layer, config, cos[start_pos:], sin[start_pos:], cache_k, cache_v, start_pos
            )
        return out, cache_k, cache_v

    def model(self, checkpoint: Checkpoint, dtype: str) -> spec.Llama:
        return spec.Llama(checkpoint.config, checkpoint.load_all(), numpy_dtype(dtype))

    def model_logits(self, checkpoint, tokens, dtype, prefill_len=None):
        with np.errstate(over="ignore"):
            return run_with_cache(self.model(checkpoint, dtype), tokens, prefill_len)

    def greedy_ids(self, checkpoint, prompt_ids, max_new_tokens, dtype):
        return list(generate(self.model(checkpoint, dtype), list(prompt_ids), max_new_tokens, SamplingParams()))


def run_with_cache(model, tokens: np.ndarray, prefill_len: int | None) -> np.ndarray:
    """Run a model on tokens [B, S]: one call, or a prefill of prefill_len then one call per token.

    `model` is a numpy_llama.Llama or any model with the same forward(tokens, start_pos,
    cache) and new_cache(batch, max_seq_len) methods, such as tf_llama's LlamaModel.
    """
    if prefill_len is None:
        return model.forward(tokens)
    batch, seq_len = tokens.shape
    cache = model.new_cache(batch, seq_len)
    chunks = [model.forward(tokens[:, :prefill_len], 0, cache)]
    for position in range(prefill_len, seq_len):
        chunks.append(model.forward(tokens[:, position : position + 1], position, cache))
    return np.concatenate(chunks, axis=1)


REFERENCE = SpecReference()


def _call(method: Callable, *args):
    try:
        return method(*args)
    except NotImplementedError as exc:
        pytest.skip(f"not implemented: {exc}")


# ---- one-case checks -------------------------------------------------------------------


def check_rms_norm(impl: Implementation, case: strategies.RmsNormCase, dtype: str) -> None:
    x, weight = cast(case.x, dtype), cast(case.weight, dtype)
    expected = REFERENCE.rms_norm(x, weight, case.eps)
    actual = _call(impl.rms_norm, x, weight, case.eps)
    assert_close(actual, expected, tolerance(dtype), f"rms_norm {dtype} eps={case.eps}")


def check_apply_rope(impl: Implementation, case: strategies.RopeCase, dtype: str) -> None:
    x = cast(case.x, dtype)
    expected = REFERENCE.apply_rope(x, case.start_pos, case.rope_theta, case.rope_scaling)
    actual = _call(impl.apply_rope, x, case.start_pos, case.rope_theta, case.rope_scaling)
    label = f"apply_rope {dtype} start_pos={case.start_pos} theta={case.rope_theta:.4g} scaling={case.rope_scaling}"
    assert_close(actual, expected, tolerance(dtype), label)


def check_feed_forward(impl: Implementation, case: strategies.FeedForwardCase, dtype: str) -> None:
    args = [cast(a, dtype) for a in (case.x, case.w1, case.w2, case.w3)]
    expected = REFERENCE.feed_forward(*args)
    actual = _call(impl.feed_forward, *args)
    assert_close(actual, expected, tolerance(dtype), f"feed_forward {dtype}")


def check_attention(impl: Implementation, case: strategies.AttentionCase, dtype: str) -> None:
    shape = case.shape
    weights = {name: cast(w, dtype) for name, w in case.weights.items()}
    args = (
        cast(case.x, dtype), weights, shape.n_heads, shape.n_kv_heads, case.rope_theta, case.rope_scaling,
        cast(case.cache_k, dtype), cast(case.cache_v, dtype), case.start_pos,
    )
    expected, expected_k, expected_v = REFERENCE.attention(*args)
    actual, actual_k, actual_v = _call(impl.attention, *args)
    label = f"attention {dtype} H={shape.n_heads} K={shape.n_kv_heads} Hd={shape.head_dim} start_pos={case.start_pos}"
    tol = tolerance(dtype)
    assert_close(actual_k, expected_k, tol, label + " cache_k")
    assert_close(actual_v, expected_v, tol, label + " cache_v")
    assert_close(actual, expected, tol, label)


def check_transformer_block(impl: Implementation, case: strategies.BlockCase, dtype: str) -> None:
    layer = {suffix: cast(w, dtype) for suffix, w in case.layer.items()}
    args = (cast(case.x, dtype), layer, case.config, cast(case.cache_k, dtype), cast(case.cache_v, dtype),
            case.start_pos)
    expected, expected_k, expected_v = REFERENCE.transformer_block(*args)
    actual, actual_k, actual_v = _call(impl.transformer_block, *args)
    label = f"transformer_block {dtype} start_pos={case.start_pos} {case.config}"
    tol = tolerance(dtype)
    assert_close(actual_k, expected_k, tol, label + " cache_k")
    assert_close(actual_v, expected_v, tol, label + " cache_v")
    assert_close(actual, expected, tol, label)


def check_model_logits(impl: Implementation, case: strategies.ModelCase, dtype: str, prefill_len=None) -> None:
    expected = REFERENCE.model_logits(case.checkpoint, case.tokens, dtype, prefill_len)
    actual = _call(impl.model_logits, case.checkpoint, case.tokens, dtype, prefill_len)
    label = f"model logits {dtype} prefill_len={prefill_len} tokens={case.tokens.shape} {case.checkpoint.config}"
    assert_close(actual, expected, tolerance(dtype, model=True), label)


_smollm2_results: dict[tuple[int, tuple[int, ...], str, str], tuple[Checkpoint, object]] = {}


def _smollm2_reference(checkpoint: Checkpoint, tokens: tuple[int, ...], kind: str, dtype: str):
    """Return the spec's logits or greedy ids on SmolLM2 in dtype, computed once per session."""
    key = (id(checkpoint), tokens, kind, dtype)
    if key not in _smollm2_results:
        if kind == "logits":
            result = REFERENCE.model_logits(checkpoint, np.array([tokens]), dtype)
        else:
            result = REFERENCE.greedy_ids(checkpoint, list(tokens), GREEDY_NEW_TOKENS, dtype)
        # The checkpoint stays referenced so that its id is not reused by another object.
        _smollm2_results[key] = (checkpoint, result)
    return _smollm2_results[key][1]


def check_smollm2_logits(impl: Implementation, checkpoint: Checkpoint, dtype: str) -> None:
    """Compare logits for "The capital of France is" and the top-1 token with the spec in dtype."""
    expected = _smollm2_reference(checkpoint, tuple(SMOLLM2_PROMPT), "logits", dtype)
    actual = _call(impl.model_logits, checkpoint, np.array([SMOLLM2_PROMPT]), dtype)
    assert_close(actual, expected, tolerance(dtype, model=True), f"SmolLM2 logits {dtype}")
    assert int(np.argmax(actual[0, -1])) == int(np.argmax(expected[0, -1]))


def check_smollm2_greedy(impl: Implementation, checkpoint: Checkpoint, dtype: str = "float32") -> None:
    """Compare 32 greedy ids after "Once upon a time" with the spec's in dtype."""
    expected = _smollm2_reference(checkpoint, tuple(SMOLLM2_STORY_PROMPT), "greedy", dtype)
    actual = _call(impl.greedy_ids, checkpoint, SMOLLM2_STORY_PROMPT, GREEDY_NEW_TOKENS, dtype)
    assert list(actual) == list(expected)


# ---- test factory ----------------------------------------------------------------------


def parity_tests_for(impl: Implementation, prefix: str | None = None, max_model_examples: int = 8) -> dict:
    """Return pytest test functions that check impl against the spec for each of impl.dtypes.

    Assign the result into a test module's globals. Model-level tests run at most
    max_model_examples hypothesis examples, because each builds a model.
    """
    dtypes = [d for d in DTYPES if d in impl.dtypes]
    name = prefix or impl.name
    by_dtype = pytest.mark.parametrize("dtype", dtypes)
    fewer = settings(max_examples=min(settings.default.max_examples, max_model_examples))

    @by_dtype
    @given(case=strategies.rms_norm_cases())
    def test_rms_norm(dtype, case):
        check_rms_norm(impl, case, dtype)

    @by_dtype
    @given(case=strategies.rope_cases())
    def test_rope(dtype, case):
        check_apply_rope(impl, case, dtype)

    @by_dtype
    @given(case=strategies.feed_forward_cases())
    def test_swiglu(dtype, case):
        check_feed_forward(impl, case, dtype)

    @by_dtype
    @given(case=strategies.attention_cases())
    def test_attention(dtype, case):
        check_attention(impl, case, dtype)

    @by_dtype
    @given(case=strategies.block_cases())
    def test_block(dtype, case):
        check_transformer_block(impl, case, dtype)

    @by_dtype
    @fewer
    @given(case=strategies.model_cases())
    def test_model_logits(dtype, case):
        check_model_logits(impl, case, dtype)

    @by_dtype
    @fewer
    @given(case=strategies.model_cases(), data=strategies.st.data())
    def test_model_cached_decode(dtype, case, data):
        prefill_len = data.draw(strategies.st.integers(1, case.tokens.shape[1]), label="prefill_len")
        check_model_logits(impl, case, dtype, prefill_len)

    @by_dtype
    def test_smollm2_logits(dtype, smollm2):
        check_smollm2_logits(impl, smollm2, dtype)

    def test_smollm2_greedy(smollm2):
        check_smollm2_greedy(impl, smollm2)

    tests = {
        "rms_norm": test_rms_norm,
        "rope": test_rope,
        "swiglu": test_swiglu,
        "attention": test_attention,
        "block": test_block,
        "model_logits": test_model_logits,
        "model_cached_decode": test_model_cached_decode,
        "smollm2_logits": test_smollm2_logits,
        "smollm2_greedy": test_smollm2_greedy,
    }
    named = {}
    for suffix, test in tests.items():
        test.__name__ = test.__qualname__ = f"test_{name}_{suffix}"
        named[test.__name__] = test
    return named
