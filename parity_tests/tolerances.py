"""Tolerances for comparing an implementation with the NumPy spec, per compute dtype.

A candidate c passes against the reference r when every element satisfies

    |c - r| <= atol + rtol * max|r|

The bound scales with the tensor's peak magnitude, not each element's. Two correct
implementations differ by rounding proportional to the size of the values they sum, and
an element near zero can be the small difference of large ones (a rotated pair, a
residual sum, a dot product), so a per-element relative bound would fail correct code. Every comparison still reports the per-element relative error.

The reference is the spec run in the same dtype (parity_tests.harness.SpecReference):
float16 with NumPy's float16 and bfloat16 with ml_dtypes' bfloat16. In both, projections
accumulate in float32 and round to the compute dtype, and RMSNorm, RoPE and softmax run
in float32, as the spec defines.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """Allowed |candidate - reference|: atol + rtol * max|reference|."""

    rtol: float
    atol: float
    reason: str

    def bound(self, peak: float) -> float:
        return self.atol + self.rtol * peak


# Unit roundoff u = 2**-(significand bits): float32 6.0e-8, float16 4.9e-4, bfloat16 3.9e-3.
# Measured worst max|c - r| / max|r| of tf_llama against the spec, 40 random cases per
# component (parity_tests.strategies) with oneDNN off and on, on a 2-core x86 machine:
#   float32   4.4e-6 (attention)   float16  2.1e-3 (block)   bfloat16  3.9e-2 (attention)
#   tiny random models:            float32 1.0e-6, float16 3.5e-3, bfloat16 2.8e-2
#   SmolLM2 logits, 10 tokens:     float32 3.0e-6, float16 5.1e-3, bfloat16 4.4e-2
# The top-1 SmolLM2 token agreed at every position in every dtype. The `thorough`
# profile (500 cases per component and dtype) passes with these bounds.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(
        rtol=2e-5,
        atol=1e-6,
        reason="BLAS (NumPy) and Eigen or oneDNN (TF) sum dot products in different orders; the "
        "bound is 4x the measured 4.4e-6, while a wrong eps, RoPE pairing or KV-head order fails "
        "by orders of magnitude",
    ),
    "float16": Tolerance(
        rtol=8e-3,
        atol=1e-4,
        reason="both sides round every matmul output and the SwiGLU product to float16 "
        "(u = 4.9e-4) with different accumulation orders and precision; 4x the measured 2.1e-3",
    ),
    "bfloat16": Tolerance(
        rtol=1.5e-1,
        atol=1e-3,
        reason="both sides round q and k to bfloat16 (u = 3.9e-3), and a one-ulp difference is "
        "multiplied by the score magnitude in the softmax (up to about 30 for inputs of scale 4); "
        "4x the measured 3.9e-2",
    ),
}

# Logits of a whole model accumulate error through every layer's residual stream.
MODEL_TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(
        rtol=1e-4,
        atol=1e-5,
        reason="rounding differences grow through n_layers residual additions and the vocab "
        "projection; 30x the 3.0e-6 measured on SmolLM2's 30 layers",
    ),
    "float16": Tolerance(
        rtol=2e-2,
        atol=1e-3,
        reason="both sides in float16 (u = 4.9e-4), each layer adding a few ulps of rounding "
        "differences; 4x the 5.1e-3 measured on SmolLM2",
    ),
    "bfloat16": Tolerance(
        rtol=1.5e-1,
        atol=1e-2,
        reason="bfloat16 (u = 3.9e-3, 8x float16's) on both sides through all layers; "
        "3.4x the 4.4e-2 measured on SmolLM2",
    ),
}

DTYPES = tuple(TOLERANCES)


def tolerance(dtype: str, model: bool = False) -> Tolerance:
    """Return the component tolerance for dtype, or the whole-model one when model is True."""
    table = MODEL_TOLERANCES if model else TOLERANCES
    if dtype not in table:
        raise KeyError(f"no tolerance for dtype {dtype!r}; expected one of {', '.join(table)}")
    return table[dtype]
