"""Properties the NumPy spec must have on its own, checked with hypothesis in float32."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from numpy_llama import model as spec
from parity_tests import strategies
from parity_tests.compare import assert_close
from parity_tests.harness import run_with_cache
from parity_tests.tolerances import Tolerance

# Reordering the same float32 sums (another batch size, chunk or head layout) changes
# results only by rounding, so these comparisons allow a few float32 ulps of the peak.
REORDERED = Tolerance(rtol=1e-5, atol=1e-6, reason="same math, float32 sums in another order")


def tiny_model(config, seed) -> spec.Llama:
    return spec.Llama.from_checkpoint(strategies.random_checkpoint(config, seed))


@given(case=strategies.rope_cases())
def test_rope_preserves_pair_norms(case):
    cos, sin = spec.rope_table(case.x.shape[-1], case.start_pos + case.x.shape[1], case.rope_theta, case.rope_scaling)
    rotated = spec.apply_rope(case.x, cos[case.start_pos :], sin[case.start_pos :])

    pairs_before = np.hypot(case.x[..., 0::2], case.x[..., 1::2])
    pairs_after = np.hypot(rotated[..., 0::2], rotated[..., 1::2])
    assert_close(pairs_after, pairs_before, REORDERED, "per-pair norms")


@given(
    head_dim=st.sampled_from(strategies.HEAD_DIMS),
    positions=st.tuples(st.integers(0, 2048), st.integers(0, 2048)),
    shift=st.integers(1, 2048),
    rope_theta=strategies.rope_thetas,
    rope_scaling=strategies.rope_scalings(),
    seed=strategies.seeds,
)
def test_rope_dot_depends_on_offset(head_dim, positions, shift, rope_theta, rope_scaling, seed):
    """q(m) . k(n) after RoPE equals q(m + s) . k(n + s): so scores depend only on the offset m - n."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 1, 1, head_dim)).astype(np.float32)
    k = rng.standard_normal((1, 1, 1, head_dim)).astype(np.float32)
    cos, sin = spec.rope_table(head_dim, max(positions) + shift + 1, rope_theta, rope_scaling)

    def rotated_dot(m, n):
        q_rot = spec.apply_rope(q, cos[m : m + 1], sin[m : m + 1])
        k_rot = spec.apply_rope(k, cos[n : n + 1], sin[n : n + 1])
        return np.float64(np.sum(q_rot.astype(np.float64) * k_rot))

    m, n = positions
    scale = float(np.linalg.norm(q) * np.linalg.norm(k))
    # Angles up to 4096 rad are rounded to float32 in the table: about 4096 * 6e-8 = 2.4e-4 rad.
    assert abs(rotated_dot(m, n) - rotated_dot(m + shift, n + shift)) <= 1e-3 * scale


@given(config=strategies.model_configs(), seed=strategies.seeds, data=st.data())
def test_token_change_is_causal(config, seed, data):
    """Changing token j leaves the logits of every position before j unchanged."""
    model = tiny_model(config, seed)
    rng = np.random.default_rng(seed)
    seq_len = data.draw(st.integers(2, 24), label="seq_len")
    tokens = rng.integers(0, config.vocab_size, size=(1, seq_len))
    j = data.draw(st.integers(1, seq_len - 1), label="changed position")
    changed = tokens.copy()
    changed[0, j] = (tokens[0, j] + 1) % config.vocab_size

    before = model.forward(tokens)
    after = model.forward(changed)
    assert_close(after[:, :j], before[:, :j], REORDERED, f"logits before position {j}")
    assert not np.allclose(after[:, j:], before[:, j:]), "changing a token changed no later logits"


@given(case=strategies.attention_cases())
def test_gqa_equals_repeated_mha(case):
    """Grouped-query attention equals multi-head attention with each KV head repeated n_rep times in place."""
    shape = case.shape
    n_rep = shape.n_heads // shape.n_kv_heads
    x, start_pos = case.x, case.start_pos
    cos, sin = spec.rope_table(shape.head_dim, start_pos + x.shape[1], case.rope_theta, case.rope_scaling)
    cos, sin = cos[start_pos:], sin[start_pos:]
    w = case.weights

    def run(wk, wv, cache_k, cache_v, n_kv_heads):
        return spec.attention(
            x, w["wq"], wk, wv, w["wo"], cos, sin, cache_k.copy(), cache_v.copy(), start_pos, shape.n_heads, n_kv_heads
        )

    def repeat_heads(array, axis, n):
        return np.repeat(array, n, axis=axis)

    def weight_per_head(weight):
        return weight.reshape(shape.n_kv_heads, shape.head_dim, shape.dim)

    grouped = run(w["wk"], w["wv"], case.cache_k, case.cache_v, shape.n_kv_heads)
    wk_mha = repeat_heads(weight_per_head(w["wk"]), 0, n_rep).reshape(-1, shape.dim)
    wv_mha = repeat_heads(weight_per_head(w["wv"]), 0, n_rep).reshape(-1, shape.dim)
    multi_head = run(
        wk_mha, wv_mha, repeat_heads(case.cache_k, 2, n_rep), repeat_heads(case.cache_v, 2, n_rep), shape.n_heads
    )
    assert_close(grouped, multi_head, REORDERED, "grouped-query vs repeated multi-head")


def test_repeat_kv_repeats_not_tiles():
    kv = np.arange(2, dtype=np.float32).reshape(1, 1, 2, 1)
    assert spec.repeat_kv(kv, 2)[0, 0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


@given(config=strategies.model_configs(), seed=strategies.seeds, data=st.data())
def test_cached_decode_equals_recompute(config, seed, data):
    model = tiny_model(config, seed)
    rng = np.random.default_rng(seed)
    seq_len = data.draw(st.integers(2, 24), label="seq_len")
    tokens = rng.integers(0, config.vocab_size, size=(data.draw(strategies.batches, label="batch"), seq_len))
    prefill_len = data.draw(st.integers(1, seq_len - 1), label="prefill_len")

    decoded = run_with_cache(model, tokens, prefill_len)
    assert_close(decoded, model.forward(tokens), REORDERED, f"prefill {prefill_len} + decode vs one pass")


@given(config=strategies.model_configs(), seed=strategies.seeds, data=st.data())
def test_chunked_prefill_equals_one_pass(config, seed, data):
    model = tiny_model(config, seed)
    rng = np.random.default_rng(seed)
    seq_len = data.draw(st.integers(2, 32), label="seq_len")
    tokens = rng.integers(0, config.vocab_size, size=(1, seq_len))
    cuts = sorted(data.draw(st.sets(st.integers(1, seq_len - 1), min_size=1, max_size=4), label="chunk starts"))

    cache = model.new_cache(1, seq_len)
    bounds = [0, *cuts, seq_len]
    chunks = [model.forward(tokens[:, a:b], a, cache) for a, b in zip(bounds[:-1], bounds[1:])]
    assert_close(np.concatenate(chunks, axis=1), model.forward(tokens), REORDERED, f"chunks at {cuts}")


@given(config=strategies.model_configs(), seed=strategies.seeds, batch=st.integers(2, 4), seq_len=st.integers(1, 16))
def test_batch_rows_are_independent(config, seed, batch, seq_len):
    model = tiny_model(config, seed)
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, size=(batch, seq_len))

    together = model.forward(tokens)
    for row in range(batch):
        assert_close(together[row : row + 1], model.forward(tokens[row : row + 1]), REORDERED, f"batch row {row}")
