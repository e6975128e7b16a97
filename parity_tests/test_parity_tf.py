"""tf_llama against the NumPy spec: every component, whole models and SmolLM2, in each dtype.

The tests come from parity_tests.harness, the same factory a third implementation uses;
parity_tests.tf_adapter is the TF side.
"""

import pytest

pytest.importorskip("tensorflow")

from parity_tests.harness import parity_tests_for  # noqa: E402
from parity_tests.tf_adapter import TFImplementation  # noqa: E402

globals().update(parity_tests_for(TFImplementation(), prefix="tf"))
