"""Compare a candidate array with a reference: max abs error, max rel error, worst element."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity_tests.tolerances import Tolerance


@dataclass(frozen=True)
class Comparison:
    """Errors of candidate against reference, both taken in float64.

    max_rel is max |c - r| / |r| over elements with |r| >= 1e-3 * peak (smaller
    references would give meaningless ratios). worst_index is the index of the largest
    absolute error. nonfinite_mismatches counts elements where exactly one side is not
    finite or both are but differ (an -inf mask entry on both sides is a match).
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    peak: float
    worst_index: tuple[int, ...]
    candidate_value: float
    reference_value: float
    nonfinite_mismatches: int

    def passes(self, tol: Tolerance) -> bool:
        return self.nonfinite_mismatches == 0 and self.max_abs <= tol.bound(self.peak)

    def describe(self, tol: Tolerance | None = None) -> str:
        text = (
            f"{self.name}: shape {self.shape}, max abs error {self.max_abs:.3e}, "
            f"max rel error {self.max_rel:.3e}, peak |ref| {self.peak:.3e}, worst at {self.worst_index} "
            f"(candidate {self.candidate_value:.6g}, reference {self.reference_value:.6g})"
        )
        if self.nonfinite_mismatches:
            text += f", {self.nonfinite_mismatches} non-finite mismatches"
        if tol is not None:
            text += f"; allowed {tol.bound(self.peak):.3e} = {tol.atol:g} + {tol.rtol:g} * peak"
        return text


def compare(candidate, reference, name: str = "array") -> Comparison:
    """Measure how far candidate is from reference. Raises AssertionError when the shapes differ."""
    c = np.asarray(candidate).astype(np.float64)
    r = np.asarray(reference).astype(np.float64)
    if c.shape != r.shape:
        raise AssertionError(f"{name}: candidate shape {c.shape} != reference shape {r.shape}")

    same_nonfinite = ~np.isfinite(r) & (c == r)
    finite = np.isfinite(c) & np.isfinite(r)
    nonfinite_mismatches = int(np.count_nonzero(~finite & ~same_nonfinite))

    error = np.where(finite, np.abs(c - r), 0.0)
    reference_magnitude = np.where(finite, np.abs(r), 0.0)
    peak = float(reference_magnitude.max()) if r.size else 0.0
    considered = reference_magnitude >= 1e-3 * peak
    if peak > 0 and considered.any():
        max_rel = float(np.max(error[considered] / reference_magnitude[considered]))
    else:
        max_rel = 0.0

    if nonfinite_mismatches:
        worst = np.unravel_index(np.argmax(~finite & ~same_nonfinite), c.shape) if c.size else ()
    else:
        worst = np.unravel_index(np.argmax(error), c.shape) if c.size else ()
    worst = tuple(int(i) for i in worst)
    return Comparison(
        name=name,
        shape=tuple(c.shape),
        max_abs=float(error.max()) if c.size else 0.0,
        max_rel=max_rel,
        peak=peak,
        worst_index=worst,
        candidate_value=float(c[worst]) if c.size else 0.0,
        reference_value=float(r[worst]) if c.size else 0.0,
        nonfinite_mismatches=nonfinite_mismatches,
    )


def assert_close(candidate, reference, tol: Tolerance, name: str = "array") -> Comparison:
    """Raise AssertionError with the errors and the worst element unless candidate is within tol."""
    result = compare(candidate, reference, name)
    if not result.passes(tol):
        raise AssertionError(result.describe(tol))
    return result
