"""Backend dispatch: which implementation of an op runs, on which arrays.

Three backends compute the same numbers:

========  ===========  =====================================================
name      arrays       kernels
========  ===========  =====================================================
numpy     NumPy        the reference code itself (the specification)
numba     NumPy        ``@numba.njit(parallel=True, cache=True)`` CPU kernels
cuda      CuPy         ``@numba.cuda.jit`` kernels and CuPy ``RawKernel`` s
========  ===========  =====================================================

``backend=None`` means: a CuPy array among the inputs selects ``cuda``; else the
environment variable ``MINIRCCN_BACKEND``; else ``numba``.

Under ``NUMBA_ENABLE_CUDASIM=1`` (and no GPU), ``backend="cuda"`` runs the
Numba-CUDA kernels in Numba's simulator on NumPy arrays, so the GPU kernels are
exercised on any machine. Asking for a backend that cannot run raises
:class:`~minirccn.core.errors.BackendUnavailable`; nothing falls back silently.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from minirccn.core.errors import BackendUnavailable

BACKENDS = ("numpy", "numba", "cuda")
DEFAULT_BACKEND = "numba"


def cuda_simulator() -> bool:
    """True when Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cupy():
    """The ``cupy`` module if it imports and sees a GPU, else None."""
    if cuda_simulator():
        return None
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:  # ImportError, CUDARuntimeError: no usable GPU
        return None


def is_cupy_array(x) -> bool:
    """True for a ``cupy.ndarray`` (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def gpu_available() -> bool:
    """True when a real NVIDIA GPU is usable through CuPy and Numba-CUDA."""
    return _cupy() is not None


def check_available(name: str) -> None:
    """Raise :class:`BackendUnavailable` (one clear line) if backend ``name`` cannot run here."""
    if name == "cuda" and not (cuda_simulator() or gpu_available()):
        raise BackendUnavailable(
            "backend 'cuda' is not available: no NVIDIA GPU with CuPy was found "
            "(install the 'cuda' extra on a GPU machine, or set NUMBA_ENABLE_CUDASIM=1 "
            "to run the Numba-CUDA kernels in the simulator)"
        )


def resolve(backend: str | None = None, *arrays) -> str:
    """Name of the backend to run: ``backend`` if given, else inferred from ``arrays``.

    Args:
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None.
        *arrays: the op's array arguments; a CuPy array among them selects ``cuda``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        BackendUnavailable: the backend cannot run on this machine.
    """
    if backend is None:
        if any(is_cupy_array(a) for a in arrays):
            backend = "cuda"
        else:
            backend = os.environ.get("MINIRCCN_BACKEND") or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise ValueError(
            f"backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    check_available(backend)
    return backend


def host_backend(backend: str) -> str:
    """The backend for a model's host NumPy work (targets, matching) when the model runs on
    ``backend``: ``numpy`` keeps the references, ``numba`` and ``cuda`` use the Numba CPU
    kernels (they return the references' numbers)."""
    return "numpy" if backend == "numpy" else "numba"


def array_module(backend: str):
    """The array module of ``backend``: ``cupy`` for ``cuda`` on a GPU, else ``numpy``."""
    if backend == "cuda" and not cuda_simulator():
        check_available("cuda")
        return _cupy()
    return np


def get_array_module(x):
    """``cupy`` if ``x`` is a CuPy array, else ``numpy`` (like ``cupy.get_array_module``)."""
    if is_cupy_array(x):
        import cupy

        return cupy
    return np


def to_backend(x, backend: str):
    """``x`` as an array of ``backend``'s module (copies host -> device for ``cuda`` on a GPU)."""
    xp = array_module(backend)
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def to_numpy(x) -> np.ndarray:
    """``x`` as a NumPy array (copies device -> host for a CuPy array)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)
