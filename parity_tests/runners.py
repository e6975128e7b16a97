"""Run numpy_llama or tf_llama on one prompt and collect a TraceDump of its activations.

This is the only place that imports both implementations; each one receives the same
weights_tools Recorder through its `forward(..., tracer=...)` argument.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from weights_tools.checkpoint import Checkpoint
from weights_tools.errors import LlamaParityError
from weights_tools.trace_format import COMPUTE_DTYPES, Recorder, TraceDump, TraceSelection, implementation_version

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("numpy", "keras")


def numpy_dtype(name: str) -> np.dtype:
    """Map a compute dtype name to a NumPy dtype (bfloat16 comes from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def run_numpy(
    checkpoint: Checkpoint, prompt_ids: Sequence[int], dtype: str = "float32",
    selection: TraceSelection | None = None, model_name: str = "",
) -> TraceDump:
    """Trace one numpy_llama prefill of prompt_ids."""
    from numpy_llama.model import Llama
    from numpy_llama.trace import trace_forward

    model = Llama.from_checkpoint(checkpoint, dtype=numpy_dtype(dtype))
    return trace_forward(model, prompt_ids, selection, model_name)


def run_keras(
    checkpoint: Checkpoint, prompt_ids: Sequence[int], dtype: str = "float32",
    selection: TraceSelection | None = None, model_name: str = "",
) -> TraceDump:
    """Trace one tf_llama prefill of prompt_ids; forward runs eagerly, so every trace point fires."""
    # TensorFlow's C++ start-up lines would bury the table; keep its warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        from tf_llama.model import LlamaModel
    except ImportError as exc:
        raise LlamaParityError(
            f"the Keras implementation cannot be imported ({exc}); install tensorflow-cpu and keras, "
            "or pass --impl numpy"
        ) from None

    model = LlamaModel.from_checkpoint(checkpoint, dtype=dtype)
    recorder = Recorder(selection)
    model.forward(np.asarray([list(prompt_ids)], dtype=np.int64), tracer=recorder)
    return TraceDump(
        activations=dict(recorder.activations),
        implementation="tf_llama",
        implementation_version=implementation_version(),
        model=model_name,
        dtype=dtype,
        prompt_ids=[int(i) for i in prompt_ids],
        config=checkpoint.config.to_dict(),
    )


RUNNERS = {"numpy": run_numpy, "keras": run_keras}


def run_implementation(
    name: str, checkpoint: Checkpoint, prompt_ids: Sequence[int], dtype: str = "float32",
    selection: TraceSelection | None = None, model_name: str = "",
) -> TraceDump:
    """Trace one implementation by name ('numpy' or 'keras')."""
    if name not in RUNNERS:
        raise LlamaParityError(f"unknown implementation {name!r}; choose from {', '.join(IMPLEMENTATIONS)}")
    if dtype not in COMPUTE_DTYPES:
        raise LlamaParityError(f"unknown dtype {dtype!r}; choose from {', '.join(COMPUTE_DTYPES)}")
    if max(prompt_ids) >= checkpoint.config.vocab_size or min(prompt_ids) < 0:
        raise LlamaParityError(
            f"prompt ids must lie in 0 .. {checkpoint.config.vocab_size - 1} for this model, got {list(prompt_ids)[:8]}"
        )
    if len(prompt_ids) > checkpoint.config.max_seq_len:
        raise LlamaParityError(
            f"the prompt has {len(prompt_ids)} tokens but the context length is {checkpoint.config.max_seq_len}; "
            "shorten the prompt"
        )
    log.info("tracing %s (%s) on %d prompt tokens", name, dtype, len(prompt_ids))
    return RUNNERS[name](checkpoint, prompt_ids, dtype, selection, model_name)
