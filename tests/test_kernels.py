"""The kernel convention (kernels/__init__.py): mirrored stems, compiled CUDA C and Numba-CUDA.

The simulator runs the Numba-CUDA kernels as Python and never compiles them, and
without a GPU nobody loads the CUDA C twins: so every ``.cu`` file is compiled
with ``nvcc -ptx`` (the options CuPy uses) and every ``@cuda.jit`` kernel with
Numba's real CUDA compiler, wherever the toolkit is installed.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from minirccn.kernels import _launch

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = sorted(
    p.stem for p in (ROOT / "kernels").glob("*.py") if not p.stem.startswith("_")
)

#: the entry points each CUDA C file must define (without the _f32 / _f64 suffix)
ENTRY_POINTS = {
    "nms": ["nms_mask"],
    "roi_pool": ["roi_pool_forward", "roi_pool_backward"],
    "roi_align": ["roi_align_forward", "roi_align_backward"],
}
#: CUDA C whose results must equal the reference bit for bit: no fused multiply-add
#: (roi_align sums its samples in another order anyway and agrees to rounding)
UNFUSED = {"nms", "roi_pool"}


def test_every_kernel_module_mirrors_a_reference_and_a_test_module():
    for stem in KERNEL_MODULES:
        references = list((ROOT / "minirccn").glob(f"*/{stem}.py"))
        assert len(references) == 1, f"kernels/{stem}.py: no minirccn/*/{stem}.py"
        package = references[0].parent.name
        assert (ROOT / "tests" / package / f"test_{stem}.py").exists(), stem
    for cu in (ROOT / "kernels" / "cuda").glob("*.cu"):
        assert cu.stem in KERNEL_MODULES, f"{cu.name} has no kernels/{cu.stem}.py"


def test_launch_sizes():
    assert _launch.blocks(0) == 1 and _launch.blocks(1) == 1
    assert _launch.blocks(_launch.THREADS) == 1 and _launch.blocks(_launch.THREADS + 1) == 2
    assert _launch.blocks(100, 64) == 2
    assert _launch.dtype_suffix("float32") == "f32" and _launch.dtype_suffix("float64") == "f64"


def test_unravel4_inverts_the_flat_index():
    import numpy as np

    shape = (2, 3, 4, 5)
    for index in range(int(np.prod(shape))):
        assert _launch.unravel4(index, *shape[1:]) == np.unravel_index(index, shape)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on the PATH")
@pytest.mark.parametrize("stem", sorted(ENTRY_POINTS))
def test_cuda_c_compiles(stem, tmp_path):
    assert {p.stem for p in _launch.CUDA_DIR.glob("*.cu")} == set(ENTRY_POINTS)
    out = tmp_path / f"{stem}.ptx"
    # the source alone, away from cuda/ (as CuPy hands NVRTC a string): includes must come
    # from the options
    source = tmp_path / f"{stem}.cu"
    source.write_text(_launch.cuda_source(stem).read_text())
    run = subprocess.run(
        ["nvcc", "-ptx", *_launch.CUDA_OPTIONS, str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    ptx = out.read_text()
    for name in ENTRY_POINTS[stem]:
        for suffix in ("f32", "f64"):
            assert f".entry {name}_{suffix}" in ptx
    if stem in UNFUSED:
        assert "fma." not in ptx  # no product may be fused into an add: the reference's bits


PTX_SCRIPT = r"""
import types
import numba
import numba.cuda.dispatcher as dispatcher
from numba import cuda
from minirccn.kernels import boxes, conv, nms, pool, roi_align, roi_pool

# compile_ptx asks the device only for the compute capability of device functions
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
i64, u64 = numba.int64, numba.uint64
for name, suffix in (("float32", "f32"), ("float64", "f64")):
    t = getattr(numba, name)
    f1, f2, f3, f4 = t[::1], t[:, ::1], t[:, :, ::1], t[:, :, :, ::1]
    tables = (i64[::1], f1, *[i64[:, :, ::1], i64[:, :, ::1], f3, f3] * 2)
    kernels = [  # (kernel, signature, exact: no fused multiply-add, libdevice mul.rn)
        (nms._nms_mask_kernel(name), (f2, f1, i64[::1], numba.float64, u64[:, ::1]), "mul"),
        (boxes._iou_pairs_kernel(name), (f2, f1, f2, f1, f2), "mul"),
        (roi_pool._forward_cuda, (f4, i64[::1], *[i64[:, ::1]] * 4, t, f4, i64[:, :, :, ::1]), 1),
        (roi_pool._backward_cuda, (f4, i64[::1], i64[:, :, :, ::1], i64, i64, f1), 1),
        (conv._im2col_cuda, (f4, *[i64] * 8, f3), 1),
        (conv._col2im_cuda, (f3, *[i64] * 8, f4), 1),
        (pool._max_pool2d_cuda, (f4, *[i64] * 4, f4, i64[:, :, :, ::1]), 1),
        (pool._max_pool2d_backward_cuda, (f4, i64[:, :, :, ::1], *[i64] * 4, f4), 1),
        # RoIAlign agrees with its reference to rounding only (another order of the sums)
        (roi_align._forward_cuda, (f4, *tables, t, f4), 0),
        (roi_align._backward_cuda, (f4, *tables, f4), 0),
    ]
    for f, sig, exact in kernels:
        ptx, _ = cuda.compile_ptx(f.py_func, sig, cc=(8, 0))
        assert not exact or "fma." not in ptx, (f.__name__, name)
        assert exact != "mul" or "mul.rn." + suffix in ptx, (f.__name__, name)
print("ok")
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit (NVVM) on this machine")
def test_numba_cuda_kernels_compile_to_ptx():
    # the simulator never compiles: compile the real kernels to PTX in a process without it,
    # and check that no product is fused into an add (the IoU uses libdevice mul.rn)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    run = subprocess.run(
        [sys.executable, "-c", PTX_SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    if "NvvmSupportError" in run.stderr or "libNVVM cannot be found" in run.stderr:
        pytest.skip("libNVVM not found")
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_no_launch_helper_is_copied_into_a_kernel_module():
    for stem in KERNEL_MODULES:
        text = (ROOT / "kernels" / f"{stem}.py").read_text()
        assert not re.search(r"^(_?THREADS|_?[A-Z_]*THREADS)\s*=", text, re.M), stem
        assert not re.search(r"^def _?blocks\(", text, re.M), stem
        assert "RawModule" not in text and "read_text" not in text, stem


def test_blas_threads_for_small_gemms_and_a_busy_machine(monkeypatch):
    """One OpenBLAS thread for small GEMMs or on a busy machine, the previous count after."""
    handles = _launch._openblas_threads()
    if handles is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS found by name")
    get, set_ = handles
    previous = get()
    set_(2)
    try:
        monkeypatch.setattr(_launch, "machine_busy", lambda: False)
        with _launch.blas_threads_for(_launch.BLAS_SERIAL_BELOW - 1):
            assert get() == 1
        assert get() == 2
        with _launch.blas_threads_for(_launch.BLAS_SERIAL_BELOW):
            assert get() == 2
        monkeypatch.setattr(_launch, "machine_busy", lambda: True)
        with _launch.blas_threads_for(_launch.BLAS_SERIAL_BELOW * 100):
            assert get() == 1
        assert get() == 2
    finally:
        set_(previous)


def test_machine_busy_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(_launch, "_load", {"at": -1e9, "busy": False})
    monkeypatch.setattr(_launch.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_launch, "_read_load", lambda: (3.5, 0))
    assert _launch.machine_busy()  # a 1-minute average above cores + 1
    monkeypatch.setattr(_launch, "_read_load", lambda: (0.5, 0))
    assert _launch.machine_busy()  # read at most every LOAD_READ_EVERY seconds
    _launch._load["at"] = -1e9
    assert not _launch.machine_busy()
    monkeypatch.setattr(_launch, "_read_load", lambda: (0.5, 1))
    _launch._load["at"] = -1e9
    assert _launch.machine_busy()  # another process runnable: fewer than 2 cores free


def test_read_load_leaves_out_this_process():
    average, others = _launch._read_load()
    assert average >= 0 and others >= 0
    assert _launch._own_running() >= 1  # this thread, reading
