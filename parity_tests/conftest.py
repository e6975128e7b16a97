"""Shared fixtures: third-party test data, the default model and hypothesis profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# With oneDNN, TF picks matmul kernels by CPU features, so its rounding differs between
# machines (for example float16 RMSNorm outputs one ulp apart). Turning it off makes TF
# use Eigen everywhere; it must be set before TensorFlow is imported. Export
# TF_ENABLE_ONEDNN_OPTS=1 to test the oneDNN kernels instead.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The `ci` profile runs few examples in a fixed order so CI is fast and reproducible.
# The `thorough` profile runs at least 500 examples per property test; select it with
# LLAMA_PARITY_HYPOTHESIS_PROFILE=thorough.
settings.register_profile(
    "ci",
    max_examples=20,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("LLAMA_PARITY_HYPOTHESIS_PROFILE", "ci"))

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Return the third-party test data folder beside the project (override with LLAMA_PARITY_DATA)."""
    override = os.environ.get("LLAMA_PARITY_DATA")
    if override:
        return Path(override)
    return PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"third-party test data not found at {path}; set LLAMA_PARITY_DATA to its folder")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from weights_tools.default_model import default_model_path
    from weights_tools.errors import CheckpointError

    try:
        return default_model_path()
    except CheckpointError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """The SmolLM2-135M checkpoint, loaded once per test session."""
    from weights_tools.gguf_reader import load_gguf

    return load_gguf(smollm2_path)
