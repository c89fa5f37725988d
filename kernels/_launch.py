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
  small to pay for waking the others (the same compiled kernel, so the same numbers);
* :func:`blas_threads_for`: the same choice for NumPy's OpenBLAS, per call, by the GEMMs'
  floating-point operations and by how busy the machine is.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import time
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
    "blas_threads_for",
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


#: a parallel CPU kernel touching fewer elements than this runs on the calling thread alone:
#: below it, waking the idle threads costs more than they save (measured in docs/threads.md)
SERIAL_BELOW = 1 << 17


@contextlib.contextmanager
def cpu_threads_for(elements: int):
    """Run the enclosed Numba ``parallel=True`` call on one thread when ``elements`` (the
    work's size, e.g. the output's ``size``) is below :data:`SERIAL_BELOW` or the machine is
    busy (:func:`machine_busy`: a thread the OS deschedules stalls the others at the join),
    else on every thread. Only the thread count changes: each kernel gives every output element to
    exactly one thread, so the numbers are the same either way."""
    if elements >= SERIAL_BELOW and not machine_busy():
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


#: GEMMs of fewer floating-point operations than this run on one OpenBLAS thread: below it,
#: handing half to a second thread costs more than it saves (docs/conv.md, section 3)
BLAS_SERIAL_BELOW = 1 << 27

#: the machine counts as busy when its 1-minute load average exceeds the core count by more
#: than this: a process of ours with two busy threads adds about 2 to the load of 2 cores,
#: so a load above 3 means someone else's work is running too
BUSY_LOAD_MARGIN = 1.0


@functools.cache
def _openblas_threads():
    """``(get, set)`` of the OpenBLAS that NumPy loaded (its thread count), or None when there
    is none to find (another BLAS: then :func:`blas_threads_for` changes nothing)."""
    names = (
        ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
        ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
        ("openblas_get_num_threads", "openblas_set_num_threads"),
    )
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in names:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, set_ = getattr(lib, get_name), getattr(lib, set_name)
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, set_
    return None


_load = {"at": -1.0, "busy": False}

#: how long one reading of /proc/loadavg is trusted, seconds
LOAD_READ_EVERY = 0.25


def _own_running() -> int:
    """How many of this process's threads are runnable now (``R`` in ``/proc/self/task``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return count


def _read_load():
    """``(1-minute load average, runnable tasks of other processes now)``: from
    ``/proc/loadavg`` less this process's runnable threads (Linux), else ``os.getloadavg()``
    and 0."""
    try:
        with open("/proc/loadavg") as fh:
            fields = fh.read().split()
        return float(fields[0]), max(0, int(fields[3].split("/")[0]) - _own_running())
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0], 0


def machine_busy() -> bool:
    """Whether other work keeps this machine's cores busy: other processes' runnable tasks
    leave fewer than two cores free right now, or the 1-minute load average (ours included:
    a process with two busy threads adds about 2) exceeds the cores by more than
    :data:`BUSY_LOAD_MARGIN`. Read at most every :data:`LOAD_READ_EVERY` seconds."""
    now = time.monotonic()
    if now - _load["at"] > LOAD_READ_EVERY:
        cores = os.cpu_count() or 1
        try:
            average, others = _read_load()
            _load["busy"] = others > cores - 2 or average > cores + BUSY_LOAD_MARGIN
        except OSError:
            _load["busy"] = False
        _load["at"] = now
    return _load["busy"]


@contextlib.contextmanager
def blas_threads_for(flops: int, serial_below: int = BLAS_SERIAL_BELOW):
    """Run the enclosed NumPy GEMMs on one OpenBLAS thread when they are small (``flops``
    below ``serial_below``, default :data:`BLAS_SERIAL_BELOW`) or when the machine is busy
    (:func:`machine_busy`), else on OpenBLAS's own count; restored on exit. A kernel whose
    GEMMs have a shape measured to split well passes its own ``serial_below``.

    Why: OpenBLAS's threads wait for each other by spinning, and a thread the OS has
    descheduled stalls every call (measured in docs/conv.md, section 3). Only the thread count changes;
    OpenBLAS splits a GEMM among threads by output blocks, so each element's sum is taken
    the same way (the tests compare with the reference to rounding either way).
    """
    handles = _openblas_threads()
    if handles is None or (flops >= serial_below and not machine_busy()):
        yield
        return
    get, set_ = handles
    previous = get()
    if previous == 1:
        yield
        return
    set_(1)
    try:
        yield
    finally:
        set_(previous)


#: the reusable scratch arrays of the CPU kernels, by (slot, dtype) (see :func:`scratch_buffer`)
_scratch: dict = {}


def scratch_buffer(slot: str, shape, dtype):
    """A reusable ``shape`` array of ``dtype`` (contents undefined): one per ``slot`` and
    dtype, grown when a bigger one is asked for, so that steady-state calls allocate nothing."""
    size = math.prod(shape)
    key = (slot, np.dtype(dtype))
    buf = _scratch.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        _scratch[key] = buf
    return buf[:size].reshape(shape)


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
