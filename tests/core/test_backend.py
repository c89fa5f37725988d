"""Backend dispatch: which backend ``resolve`` picks, and the clear error when one cannot run."""

import numpy as np
import pytest

from minirccn.core import backend as B
from minirccn import ops
from minirccn.core.errors import BackendUnavailable, MinirccnError


class FakeCupyArray:
    """Looks like a CuPy array to :func:`minirccn.core.backend.is_cupy_array` (by module name only)."""


FakeCupyArray.__module__ = "cupy._core.core"


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MINIRCCN_BACKEND", raising=False)


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine with neither a GPU (CuPy) nor the CUDA simulator."""
    monkeypatch.setattr(B, "cuda_simulator", lambda: False)
    monkeypatch.setattr(B, "_cupy", lambda: None)


@pytest.mark.parametrize("name", B.BACKENDS)
def test_explicit_name_wins(name, monkeypatch):
    monkeypatch.setenv("MINIRCCN_BACKEND", "numpy" if name != "numpy" else "numba")
    assert B.resolve(name, np.zeros(3)) == name


def test_default_is_numba(no_env):
    assert B.DEFAULT_BACKEND == "numba"
    assert B.resolve(None, np.zeros(3)) == "numba"
    assert B.resolve() == "numba"


@pytest.mark.parametrize("name", B.BACKENDS)
def test_environment_variable(name, monkeypatch):
    monkeypatch.setenv("MINIRCCN_BACKEND", name)
    assert B.resolve(None, np.zeros(3)) == name


def test_empty_environment_variable_means_default(monkeypatch):
    monkeypatch.setenv("MINIRCCN_BACKEND", "")
    assert B.resolve() == "numba"


def test_cupy_array_selects_cuda(monkeypatch):
    monkeypatch.setenv("MINIRCCN_BACKEND", "numpy")
    assert B.is_cupy_array(FakeCupyArray()) and not B.is_cupy_array(np.zeros(1))
    assert (
        B.resolve(None, np.zeros(3), FakeCupyArray()) == "cuda"
    )  # the simulator makes cuda available


def test_unknown_name_is_a_value_error(monkeypatch):
    with pytest.raises(ValueError, match="backend.*'tpu'"):
        B.resolve("tpu")
    monkeypatch.setenv("MINIRCCN_BACKEND", "opencl")
    with pytest.raises(ValueError, match="backend.*'opencl'"):
        B.resolve()


def test_cuda_unavailable_without_gpu_or_simulator(no_gpu, no_env):
    assert not B.gpu_available()
    with pytest.raises(BackendUnavailable, match="cuda") as err:
        B.resolve("cuda")
    assert isinstance(err.value, MinirccnError) and "\n" not in str(
        err.value
    )  # one line for the CLI
    assert B.resolve("numba") == "numba"  # the CPU backends are unaffected
    assert B.resolve("numpy") == "numpy"


def test_cuda_unavailable_from_the_environment(no_gpu, monkeypatch):
    monkeypatch.setenv("MINIRCCN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable):
        B.resolve()


def test_ops_refuse_unavailable_cuda(no_gpu):
    boxes = np.array([[0, 0, 1, 1]], np.float32)
    for call in (
        lambda: ops.box_iou(boxes, boxes, backend="cuda"),
        lambda: ops.nms(boxes, np.ones(1, np.float32), 0.5, backend="cuda"),
        lambda: ops.decode_boxes(np.zeros((1, 4), np.float32), boxes, backend="cuda"),
    ):
        with pytest.raises(BackendUnavailable):
            call()


def test_simulator_runs_cuda_on_numpy():
    assert B.cuda_simulator()  # tests/conftest.py switches it on
    assert B.resolve("cuda") == "cuda"
    assert B.array_module("cuda") is np
    assert B.array_module("numba") is np and B.array_module("numpy") is np


def test_array_conversions():
    x = np.arange(4.0)
    assert B.get_array_module(x) is np
    moved = B.to_backend(x, "numba")
    assert type(moved) is np.ndarray
    np.testing.assert_array_equal(moved, x)
    np.testing.assert_array_equal(B.to_numpy([1, 2]), [1, 2])
