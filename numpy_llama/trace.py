"""Record the activations of a NumPy forward pass into an activation dump.

The trace point names, shapes and the dump format are defined in
weights_tools.trace_format, which tf_llama shares; this module only runs numpy_llama.

    model = Llama.from_checkpoint(load_checkpoint(path))
    dump = trace_forward(model, [1, 9038, 338], TraceSelection.from_strings(["layers.*.q_rope"]))
    write_dump(dump, "numpy.safetensors")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from numpy_llama.model import Llama
from weights_tools.trace_format import Recorder, TraceDump, TraceSelection, implementation_version

IMPLEMENTATION = "numpy_llama"

__all__ = ["IMPLEMENTATION", "Recorder", "TraceSelection", "trace_forward"]


def trace_forward(
    model: Llama,
    prompt_ids: Sequence[int],
    selection: TraceSelection | None = None,
    model_name: str = "",
) -> TraceDump:
    """Run one prefill of prompt_ids at start_pos 0 and return the selected activations.

    The forward pass is the ordinary one: the recorder only copies arrays it is handed.
    """
    recorder = Recorder(selection)
    tokens = np.asarray([list(prompt_ids)], dtype=np.int64)
    model.forward(tokens, tracer=recorder)
    return TraceDump(
        activations=dict(recorder.activations),
        implementation=IMPLEMENTATION,
        implementation_version=implementation_version(),
        model=model_name,
        dtype=model.dtype.name,
        prompt_ids=[int(i) for i in prompt_ids],
        config=model.config.to_dict(),
    )
