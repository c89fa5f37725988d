"""Test set-up shared by the whole suite.

* The Numba-CUDA kernels run in Numba's simulator unless the caller says
  otherwise: ``NUMBA_ENABLE_CUDASIM`` must be set before Numba is imported, so
  it is set here. On a GPU machine run ``NUMBA_ENABLE_CUDASIM=0 pytest -m gpu``.
* Hypothesis is derandomised (the same examples every run) and has no deadline
  (the first call of a Numba kernel compiles it).
* Fixtures ``backend`` (every backend), ``fast_backend`` (the kernels: numba, cuda) and
  ``dtype`` (float32, float64): a test that names one runs once per value. The lists and
  the reference comparison ``assert_matches_reference`` live in ``tests/helpers.py``.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import sys  # noqa: E402

if "numba" in sys.modules:  # pytest imported numba early to resolve a filterwarnings entry
    from numba.core import config as _numba_config  # noqa: E402

    _numba_config.reload_config()  # re-read NUMBA_ENABLE_CUDASIM before numba.cuda is imported

import pytest  # noqa: E402
from helpers import BACKENDS, FAST, FLOATS  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "minirccn",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minirccn"))


# module scope: hypothesis' @given accepts them (it refuses function-scoped fixtures)
@pytest.fixture(params=BACKENDS, scope="module")
def backend(request):
    """Each backend: ``"numpy"`` (the reference), ``"numba"``, ``"cuda"`` (simulator here)."""
    return request.param


@pytest.fixture(params=FAST, scope="module")
def fast_backend(request):
    """Each backend with kernels of its own: ``"numba"``, ``"cuda"``."""
    return request.param


@pytest.fixture(params=FLOATS, ids=["float32", "float64"], scope="module")
def dtype(request):
    """Each float dtype the ops accept."""
    return request.param


def _gpu_available() -> bool:
    from minirccn.core.backend import gpu_available

    return gpu_available()


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a real NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
