"""Compare activation dumps trace point by trace point and explain the first divergence.

`compare_dumps(reference, candidate)` returns one DiffRow per trace point of the
reference, in execution order, with these metrics over the elements both arrays hold:

    max_abs   max |c - r|
    max_rel   max |c - r| / |r| over elements with |r| >= 1e-3 * max|r|, because
              near-zero elements would turn rounding noise into huge ratios
    cosine    <c, r> / (|c| |r|) over the flattened arrays
    nmse      sum (c - r)^2 / sum r^2

Entries that are the same inf in both arrays (the causal mask in attn_scores) are left
out. A row passes when max_abs <= atol + rtol * max|r| (tolerance_for) and both arrays
are finite at the same places. `diagnose` then looks for known bug signatures (RoPE layout, GQA head
order, RMSNorm eps, overflow) and returns plain-sentence findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from parity_tests.compare import compare
from parity_tests.tolerances import MODEL_TOLERANCES, Tolerance
from weights_tools.errors import LlamaParityError
from weights_tools.trace_format import COMPUTE_DTYPES, TraceDump, layer_of, split_name

# Activation tolerances reuse the whole-model bounds of parity_tests.tolerances, because
# every trace point after the first block carries the rounding differences of all the
# blocks before it. Measured worst max|c - r| / max|r| over all 513 trace points of
# numpy_llama against tf_llama on SmolLM2-135M (both in the same dtype, prompts of 5, 8,
# 10 and 15 tokens, 2-core x86):
#   float32: 6.8e-6 (attn_heads), inside the model bound 1e-5 + 1e-4 * peak (15x).
#   float16: 1.6e-2 (layers.12.attn_heads, 15 tokens), too close to the model bound of
#     2e-2, which was measured on logits only. 5e-2 leaves 3x.
#   bfloat16: not measured here, because numpy_llama cannot run bfloat16. The model
#     bound (against the float32 spec, 4x its measured 3.8e-2) is used.
ACTIVATION_TOLERANCES: dict[str, Tolerance] = {
    "float32": MODEL_TOLERANCES["float32"],
    "float16": Tolerance(
        rtol=5e-2,
        atol=1e-3,
        reason="numpy_llama and tf_llama both round every activation to float16 (u = 4.9e-4) at "
        "different points, and the difference grows through 30 blocks; 3x the measured 1.6e-2",
    ),
    "bfloat16": MODEL_TOLERANCES["bfloat16"],
}

# attn_probs lie in [0, 1] and matter in absolute terms (a probability off by 0.05 is
# off by 0.05 whatever the row's peak), so their bound is absolute: atol + rtol of the
# dtype, against a measured 4.2e-6 (float32) and 1.0e-2 (float16). Every other kind uses
# the peak-relative bound, which already scales with the kind's magnitude. attn_scores
# (peaks up to 28 in SmolLM2-135M) and logits measured no worse than the rest (float32
# 2.9e-6 and 3.0e-6, float16 6.1e-3 and 3.7e-3).
ABSOLUTE_KINDS = ("attn_probs",)


def tolerance_for(kind: str, dtype: str) -> Tolerance:
    """Return the tolerance for one activation kind at one compute dtype."""
    if dtype not in ACTIVATION_TOLERANCES:
        raise LlamaParityError(f"no tolerance for dtype {dtype!r}; use one of {', '.join(COMPUTE_DTYPES)}")
    base = ACTIVATION_TOLERANCES[dtype]
    if kind in ABSOLUTE_KINDS:
        return Tolerance(rtol=0.0, atol=base.atol + base.rtol, reason=f"absolute bound for {kind}")
    return base


def looser_dtype(first: str, second: str) -> str:
    """Return the less precise of two compute dtypes, whose tolerance a comparison uses."""
    return max(first, second, key=lambda name: ACTIVATION_TOLERANCES[name].rtol)


@dataclass
class Metrics:
    max_abs: float
    max_rel: float
    cosine: float
    nmse: float
    peak: float
    mismatched_nonfinite: int = 0


def compute_metrics(candidate: np.ndarray, reference: np.ndarray) -> Metrics:
    """Compute the error metrics of candidate against reference (same shape).

    max_abs, max_rel, peak and the non-finite count come from parity_tests.compare;
    cosine and nmse are taken over the elements finite in both arrays.
    """
    # The masked -inf entries of attn_scores make compare's c - r NaN before it drops them.
    with np.errstate(invalid="ignore"):
        comparison = compare(candidate, reference)
    c = candidate.astype(np.float64).ravel()
    r = reference.astype(np.float64).ravel()
    finite = np.isfinite(c) & np.isfinite(r)
    c, r = c[finite], r[finite]

    # Two all-zero arrays are identical, so they get cosine 1 and nmse 0.
    squared_error = float(np.sum((c - r) ** 2))
    norms = float(np.linalg.norm(c) * np.linalg.norm(r))
    if norms > 0:
        cosine = float(np.dot(c, r) / norms)
    else:
        cosine = 1.0 if squared_error == 0 else 0.0
    energy = float(np.sum(r * r))
    if energy > 0:
        nmse = squared_error / energy
    else:
        nmse = 0.0 if squared_error == 0 else math.inf
    return Metrics(
        comparison.max_abs, comparison.max_rel, cosine, nmse, comparison.peak, comparison.nonfinite_mismatches
    )


@dataclass
class DiffRow:
    """The comparison of one trace point; status is 'pass', 'fail', 'absent' or 'shape'."""

    name: str
    layer: int | None
    kind: str
    shape: tuple[int, ...]
    status: str
    metrics: Metrics | None = None
    bound: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "shape")


@dataclass
class DiffResult:
    """All rows of one candidate against the reference, the first failure and the findings."""

    reference: TraceDump
    candidate: TraceDump
    dtype: str
    rows: list[DiffRow]
    findings: list[str] = field(default_factory=list)

    @property
    def first_failure(self) -> DiffRow | None:
        return next((row for row in self.rows if row.failed), None)

    @property
    def passed(self) -> bool:
        return self.first_failure is None

    def row(self, name: str) -> DiffRow | None:
        return next((row for row in self.rows if row.name == name), None)


def check_same_prompt(reference: TraceDump, candidate: TraceDump) -> None:
    """Raise LlamaParityError when two dumps did not run the same prompt token ids."""
    if list(reference.prompt_ids) != list(candidate.prompt_ids):
        raise LlamaParityError(
            f"{candidate.label} ran prompt ids {_shorten(candidate.prompt_ids)} but the reference "
            f"{reference.label} ran {_shorten(reference.prompt_ids)}; dump both with the same --prompt-ids"
        )


def _shorten(ids: list[int], limit: int = 8) -> str:
    text = ",".join(str(i) for i in ids[:limit])
    return text if len(ids) <= limit else f"{text},... ({len(ids)} ids)"


def compare_row(name: str, reference: np.ndarray, candidate: np.ndarray | None, dtype: str) -> DiffRow:
    """Compare one trace point and decide pass or fail against the dtype's tolerance."""
    layer, kind = split_name(name)
    if candidate is None:
        return DiffRow(name, layer, kind, reference.shape, "absent", note="not in the candidate dump")
    if candidate.shape != reference.shape:
        return DiffRow(name, layer, kind, reference.shape, "shape", note=f"candidate shape {candidate.shape}")
    metrics = compute_metrics(candidate, reference)
    bound = tolerance_for(kind, dtype).bound(metrics.peak)
    status = "pass" if metrics.max_abs <= bound and metrics.mismatched_nonfinite == 0 else "fail"
    note = f"{metrics.mismatched_nonfinite} non-finite values" if metrics.mismatched_nonfinite else ""
    return DiffRow(name, layer, kind, reference.shape, status, metrics, bound, note)


def compare_dumps(reference: TraceDump, candidate: TraceDump, selection=None) -> DiffResult:
    """Compare every (selected) trace point of the reference with the candidate, in execution order.

    Raises LlamaParityError when the prompts differ or no trace point is in both dumps.
    """
    check_same_prompt(reference, candidate)
    dtype = looser_dtype(reference.dtype, candidate.dtype)
    rows = []
    for name in reference.order:
        if selection is not None and not selection.selects(name):
            continue
        rows.append(compare_row(name, reference.activations[name], candidate.activations.get(name), dtype))
    if not any(row.status != "absent" for row in rows):
        raise LlamaParityError(
            f"{reference.label} and {candidate.label} share no selected trace point; check --filter and both dumps"
        )
    result = DiffResult(reference, candidate, dtype, rows)
    result.findings = diagnose(result)
    return result


# ---------------------------------------------------------------------------------------
# Diagnosis of known bug signatures


def interleaved_to_half(x: np.ndarray) -> np.ndarray:
    """Reorder the last axis from interleaved pairs (x0, x1, x2, x3, ...) to halves (x0, x2, ..., x1, x3, ...).

    This is the row permutation Hugging Face's converter applies to wq and wk, so that
    its rotate-half RoPE pairs dimension i with i + Hd/2.
    """
    head_dim = x.shape[-1]
    return x.reshape(*x.shape[:-1], head_dim // 2, 2).swapaxes(-1, -2).reshape(x.shape)


def half_to_interleaved(x: np.ndarray) -> np.ndarray:
    """Inverse of interleaved_to_half: rotate-half layout back to interleaved pairs."""
    head_dim = x.shape[-1]
    return x.reshape(*x.shape[:-1], 2, head_dim // 2).swapaxes(-1, -2).reshape(x.shape)


def _close(candidate: np.ndarray, reference: np.ndarray, kind: str, dtype: str) -> bool:
    if candidate.shape != reference.shape:
        return False
    metrics = compute_metrics(candidate, reference)
    return metrics.mismatched_nonfinite == 0 and metrics.max_abs <= tolerance_for(kind, dtype).bound(metrics.peak)


def _status(result: DiffResult, name: str) -> str | None:
    """Return a trace point's row status; for a point --filter left out, compare it now."""
    row = result.row(name)
    if row is not None:
        return row.status
    reference, candidate = result.reference.activations, result.candidate.activations
    if name not in reference or name not in candidate:
        return None
    return compare_row(name, reference[name], candidate[name], result.dtype).status


def _diagnose_rope_layout(result: DiffResult, layer: int) -> str | None:
    prefix = f"layers.{layer}."
    status = {kind: _status(result, prefix + kind) for kind in ("q", "k", "q_rope", "k_rope")}
    if status["q"] == "pass" and status["k"] == "pass" and "fail" in (status["q_rope"], status["k_rope"]):
        return (
            f"layers.{layer}: q and k match but q_rope/k_rope do not, so RoPE pairs dimensions differently: "
            "the q/k weights look permuted for the other RoPE convention (rotate-half vs interleaved pairs); "
            "permute the wq/wk rows or use the matching apply_rope"
        )
    reference, candidate = result.reference.activations, result.candidate.activations
    for kind in ("q", "k", "q_rope", "k_rope"):
        name = prefix + kind
        if status[kind] != "fail" or name not in candidate:
            continue
        for convert in (interleaved_to_half, half_to_interleaved):
            if _close(convert(candidate[name]), reference[name], kind, result.dtype):
                return (
                    f"layers.{layer}: {kind} differs from the reference exactly by the rotate-half row "
                    "permutation within each head: the q/k weights look permuted for the other RoPE "
                    "convention (Hugging Face rotate-half vs Meta interleaved pairs); un-permute wq/wk"
                )
    return None


def tile_head_order(n_heads: int, n_kv_heads: int) -> np.ndarray:
    """Return the head permutation that maps tile-grouped heads back to repeat-grouped ones.

    Repeat grouping gives query head h the KV head h // n_rep, and tile grouping gives it
    h % K. Head order[h] of a tile-grouped output reads the same KV head as head h does
    under repeat grouping.
    """
    n_rep = n_heads // n_kv_heads
    heads = np.arange(n_heads)
    return (heads // n_rep) + n_kv_heads * (heads % n_rep)


def _attention_with_tile(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recompute causal attention from q [B,S,H,Hd], k, v [B,S,K,Hd] with tile GQA grouping (KV head h % K)."""
    n_heads, n_kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    seq_len = q.shape[1]
    keys = np.tile(k, (1, 1, n_heads // n_kv_heads, 1)).astype(np.float64)
    values = np.tile(v, (1, 1, n_heads // n_kv_heads, 1)).astype(np.float64)
    scores = np.einsum("bshd,bthd->bhst", q.astype(np.float64), keys) / math.sqrt(head_dim)
    scores = scores + np.triu(np.full((seq_len, seq_len), -np.inf), k=1)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = probs / probs.sum(axis=-1, keepdims=True)
    heads = np.einsum("bhst,bthd->bshd", probs, values).reshape(q.shape[0], seq_len, n_heads * head_dim)
    return scores.astype(np.float32), probs.astype(np.float32), heads.astype(np.float32)


def _diagnose_gqa_order(result: DiffResult, layer: int) -> str | None:
    prefix = f"layers.{layer}."
    reference, candidate = result.reference.activations, result.candidate.activations
    failing = [kind for kind in ("attn_scores", "attn_probs", "attn_heads") if _status(result, prefix + kind) == "fail"]
    if not failing:
        return None
    message = (
        f"layers.{layer}: the attention outputs match only after reordering heads as tile instead of "
        "repeat: query head h reads KV head h % n_kv_heads instead of h // n_rep; "
        "use np.repeat / tf.repeat on the KV heads, not tile"
    )

    # Same heads in another order: an implementation that also groups its query heads by tile.
    heads_name = prefix + "attn_heads"
    if "attn_heads" in failing and heads_name in candidate:
        q_name = prefix + "q"
        k_name = prefix + "k"
        if q_name in reference and k_name in reference:
            n_heads, n_kv_heads = reference[q_name].shape[2], reference[k_name].shape[2]
            if n_heads != n_kv_heads:
                batch, seq_len, width = candidate[heads_name].shape
                split = candidate[heads_name].reshape(batch, seq_len, n_heads, width // n_heads)
                reordered = split[:, :, tile_head_order(n_heads, n_kv_heads)].reshape(batch, seq_len, width)
                if _close(reordered, reference[heads_name], "attn_heads", result.dtype):
                    return message

    # Or the reference's own q_rope, k_rope and v, recombined with tile grouping.
    needed = [prefix + kind for kind in ("q_rope", "k_rope", "v")]
    if not all(name in reference for name in needed):
        return None
    q, k, v = (reference[name] for name in needed)
    if q.shape[2] == k.shape[2] or q.shape[1] != k.shape[1]:
        return None
    recomputed = dict(zip(("attn_scores", "attn_probs", "attn_heads"), _attention_with_tile(q, k, v)))
    for kind in failing:
        name = prefix + kind
        if name in candidate and _close(candidate[name], recomputed[kind], kind, result.dtype):
            return message
    return None


def _norm_input_name(name: str, n_layers: int | None) -> str | None:
    layer, kind = split_name(name)
    if kind == "attn_norm":
        return "embed" if layer == 0 else f"layers.{layer - 1}.resid_post"
    if kind == "ffn_norm":
        return f"layers.{layer}.resid_mid"
    if kind == "final_norm" and n_layers:
        return f"layers.{n_layers - 1}.resid_post"
    return None


def _diagnose_norm(result: DiffResult, row: DiffRow) -> str | None:
    """Explain a failing RMSNorm whose input matches: overflow, or an estimate of the eps used."""
    config = result.reference.config or {}
    input_name = _norm_input_name(row.name, config.get("n_layers"))
    if input_name is None or _status(result, input_name) != "pass":
        return None
    candidate = result.candidate.activations[row.name].astype(np.float64)
    reference = result.reference.activations[row.name].astype(np.float64)
    if not np.all(np.isfinite(candidate)) or (not candidate.any() and reference.any()):
        return (
            f"{row.name}: RMSNorm output is non-finite or zero while its input {input_name} matches: the mean "
            "square overflowed; compute RMSNorm in float32 and cast back (float16 overflows at |x| > 256)"
        )
    eps = config.get("norm_eps")
    x = result.reference.activations[input_name].astype(np.float64)
    mean_square = np.mean(x * x, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # y = x * w / sqrt(ms + eps), so the ratio of two outputs fixes the other eps.
        ratio = np.sum(reference * reference, axis=-1) / np.sum(candidate * candidate, axis=-1)
    if eps is None or not np.all(np.isfinite(ratio)):
        return None
    estimate = float(np.median(ratio * (mean_square + eps) - mean_square))
    if not abs(estimate - eps) > 0.1 * eps:
        return None
    return (
        f"{row.name}: RMSNorm output differs while its input {input_name} matches; the candidate behaves "
        f"like norm_eps ~= {estimate:.3g} instead of {eps:g} (or a different norm weight)"
    )


def _diagnose_nonfinite(row: DiffRow) -> str | None:
    if row.metrics is None or not row.metrics.mismatched_nonfinite:
        return None
    return f"{row.name}: {row.metrics.mismatched_nonfinite} values are inf or NaN in one dump only (an overflow)"


def diagnose(result: DiffResult) -> list[str]:
    """Return plain-sentence findings about the failing rows, first failure first."""
    findings: list[str] = []
    layers_seen: set[int] = set()
    for row in result.rows:
        if not row.failed:
            continue
        if row.kind in ("attn_norm", "ffn_norm", "final_norm"):
            finding = _diagnose_norm(result, row)
            if finding:
                findings.append(finding)
        layer = layer_of(row.name)
        if layer is not None and layer not in layers_seen:
            layers_seen.add(layer)
            for check in (_diagnose_rope_layout, _diagnose_gqa_order):
                finding = check(result, layer)
                if finding:
                    findings.append(finding)
    first = result.first_failure
    if first is not None:
        finding = _diagnose_nonfinite(first)
        if finding and not any(f.startswith(first.name) for f in findings):
            findings.insert(0, finding)
        # A config difference explains failures better than a guess from the numbers.
        finding = _diagnose_config(result)
        if finding:
            findings.insert(0, finding)
    return findings


# Config fields that change the numbers; a difference in any of them is reported first.
COMPARED_CONFIG_FIELDS = ("norm_eps", "rope_theta", "rope_scaling", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size")


def _diagnose_config(result: DiffResult) -> str | None:
    """Name the config fields in which the two dumps' recorded configs differ, if both have one."""
    reference, candidate = result.reference.config, result.candidate.config
    if not reference or not candidate:
        return None
    differences = [
        f"{name} {candidate.get(name)!r} vs {reference.get(name)!r}"
        for name in COMPARED_CONFIG_FIELDS
        if candidate.get(name) != reference.get(name)
    ]
    if not differences:
        return None
    return (
        "the two sources ran different model configs (candidate vs reference): "
        + "; ".join(differences)
        + "; the failures below may follow from that rather than from a bug"
    )
