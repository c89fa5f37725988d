"""What every kernel module shares: launch sizes, the CUDA C loader, the output's array module.

* :data:`THREADS` threads per block and :func:`blocks` for a one-thread-per-item
  launch (``kernel[blocks(n), THREADS](...)``);
* :func:`unravel4` (a CUDA device function): the flat index of a thread as four
  coordinates ``(a, b, c, d)`` of a C-ordered ``(A, B, C, D)`` array;
* :func:`raw_kernel`: the CUDA C twin of a kernel, compiled once per name and
  dtype from ``cuda/<stem>.cu`` into a CuPy ``RawKernel`` (real GPU only); the
  ``.cu`` files share ``cuda/_launch.cuh`` (``flat_index()``, ``unravel4``);
* :func:`array_module`: ``numpy`` or ``cupy``, whichever the inputs belong to,
  so a kernel allocates its outputs where its inputs live;
* :func:`cpu_threads_for`: one CPU thread for a parallel Numba kernel whose work is too
  small to pay for waking the others (the same compiled kernel, so the same numbers).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numba

import numpy as np
from numba import cuda

from minirccn.core.backend import get_array_module as array_module

__all__ = [
    "THREADS",
    "CUDA_DIR",
    "SERIAL_BELOW",
    "array_module",
    "blocks",
    "cpu_threads_for",
    "cuda_source",
    "raw_kernel",
    "unravel4",
]

#: threads per block of every one-thread-per-item launch
THREADS = 128

#: where the CUDA C twins live: ``cuda/<stem>.cu``, one file per kernel module
CUDA_DIR = Path(__file__).with_name("cuda")

#: NVRTC options for every ``.cu`` file (the tests compile them with ``nvcc -ptx`` and the same);
#: ``-I`` finds ``cuda/_launch.cuh``, the CUDA C side of this module
CUDA_OPTIONS = ("-std=c++14", f"-I{CUDA_DIR}")


#: a parallel CPU kernel touching fewer elements than this runs on the calling thread alone.
#: Waking the idle threads costs ~70 us a call (``OMP_WAIT_POLICY=PASSIVE``); measured on the
#: 2-core machine, im2col of 73,728 elements took 125 us on 2 threads and 105 us on one,
#: of 294,912 elements 269 us and 352 us (docs/retinanet.md: a RetinaNet step makes ~70
#: small im2col/col2im calls on the pyramid's coarse levels)
SERIAL_BELOW = 1 << 17


@contextlib.contextmanager
def cpu_threads_for(elements: int):
    """Run the enclosed Numba ``parallel=True`` call on one thread when ``elements`` (the
    work's size, e.g. the output's ``size``) is below :data:`SERIAL_BELOW`, else on every
    thread. Only the thread count changes: each kernel gives every output element to
    exactly one thread, so the numbers are the same either way."""
    if elements >= SERIAL_BELOW:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def blocks(items: int, threads: int = THREADS) -> int:
    """Blocks of ``threads`` threads that cover ``items`` items (at least 1)."""
    return max(1, -(-int(items) // threads))


@cuda.jit(device=True)
def unravel4(index, b_size, c_size, d_size):
    """``(a, b, c, d)`` of the flat C-order ``index`` into an ``(A, B, C, D)`` array."""
    d = index % d_size
    c = (index // d_size) % c_size
    b = (index // (d_size * c_size)) % b_size
    a = index // (d_size * c_size * b_size)
    return a, b, c, d


def cuda_source(stem: str) -> Path:
    """The CUDA C file ``cuda/<stem>.cu`` (``stem`` is the kernel module's, e.g. ``"nms"``)."""
    return CUDA_DIR / f"{stem}.cu"


def dtype_suffix(dtype) -> str:
    """``"f32"`` or ``"f64"``: how the ``extern "C"`` entry points name their dtype."""
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


@functools.cache
def _raw_module(stem: str):
    import cupy

    return cupy.RawModule(code=cuda_source(stem).read_text(), options=CUDA_OPTIONS)


def raw_kernel(stem: str, name: str, dtype):
    """Entry point ``<name>_f32`` / ``<name>_f64`` of ``cuda/<stem>.cu`` as a CuPy ``RawKernel``.

    Args:
        stem: the ``.cu`` file's stem (the kernel module's).
        name: the entry point without its dtype suffix, e.g. ``"roi_pool_forward"``.
        dtype: float32 or float64, the arrays' dtype.

    The module is compiled by NVRTC on first use and cached, one per file.
    """
    return _raw_module(stem).get_function(f"{name}_{dtype_suffix(dtype)}")
