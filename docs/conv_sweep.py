"""Print the numbers of docs/conv.md: this CPU's sgemm peak, the memory traffic of im2col
against the blocked kernel, and a size sweep of conv2d forward+backward (NumPy reference,
the numba kernel, torch when it is installed) on one and two threads, with the share of
the sgemm peak each reaches.

    python docs/conv_sweep.py            # ~1-2 minutes on the 2-core machine

Threads: OpenBLAS's count is set per column through ctypes
(``kernels/_launch._openblas_threads``), Numba's with ``numba.set_num_threads`` and torch's
with ``torch.set_num_threads``. The numba kernel's own policy (``blas_threads_for``: one
BLAS thread when the machine is busy) is switched off for the two-thread column, so that the
column measures two threads, and on for the "2, policy" rows (what a user gets); the load
average is printed beside the table.
"""

from __future__ import annotations

import os
import statistics
import time

import numba
import numpy as np

from minirccn.kernels import _launch
from minirccn.kernels import conv as kconv
from minirccn.nn import conv

#: (N, C, H=W, F): the `tiny` preset's 3x3 layers, the bench case, a pyramid head level
SIZES = [
    (1, 3, 128, 16),
    (1, 16, 64, 32),
    (1, 32, 32, 64),
    (1, 64, 32, 64),
    (1, 64, 8, 64),
    (2, 64, 64, 128),
]


def best_ms(fn, min_time=0.4, repeats=3):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times) * 1e3


def set_threads(n):
    get, set_ = _launch._openblas_threads()
    set_(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def sgemm_peak():
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    b = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    return 2 * 1024**3 / (min(best_ms(lambda: a @ b) for _ in range(3)) * 1e-3) / 1e9


def traffic_mb(n, c, hw, f, k=3):
    """Bytes (float32) the forward+backward moves through memory, im2col vs blocked: the
    reference writes cols and reads it back twice (GEMM, dW GEMM), writes dcols and reads it
    back (col2im); the blocked kernel keeps each block of both in the cache, so what is left is
    the input, its padded copy, the output, dout and dx."""
    cols = n * c * k * k * hw * hw * 4
    tensors = (n * c * hw * hw * 4) * 3 + (n * f * hw * hw * 4) * 2  # x, xpad, dx; out, dout
    return (tensors + 5 * cols) / 1e6, tensors / 1e6, cols / 1e6


def case(n, c, hw, f):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(f, np.float32)
    dout = rng.standard_normal((n, f, hw, hw)).astype(np.float32)

    def ref():
        out, cols = conv.conv2d_reference(x, w, b, (1, 1), (1, 1))
        return conv.conv2d_backward_reference(dout, cols, w, x.shape, (1, 1), (1, 1))

    def fast():
        out, saved = kconv.conv2d_numba(x, w, b, (1, 1), (1, 1))
        return kconv.conv2d_backward_numba(dout, saved, w, x.shape, (1, 1), (1, 1))

    fns = {"numpy": ref, "numba": fast}
    try:
        import torch

        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w).requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        td = torch.from_numpy(dout)

        def tfn():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.conv2d(tx, tw, tb, padding=1).backward(td)

        fns["torch"] = tfn
    except ImportError:
        pass
    return fns


def main():
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    print(f"cpu: {os.cpu_count()} cores, OpenBLAS found: {_launch._openblas_threads() is not None}")
    peaks = {}
    for t in (1, 2):
        set_threads(t)
        peaks[t] = sgemm_peak()
        print(f"sgemm 1024^3 on {t} thread(s): {peaks[t]:.0f} GFLOP/s")
    print()
    print("memory traffic of conv2d fwd+bwd, float32 (MB): im2col reference | blocked | one cols")
    for n, c, hw, f in SIZES:
        ref_mb, blk_mb, cols_mb = traffic_mb(n, c, hw, f)
        print(f"  {n}x{c}x{hw}x{hw} -> {f}: {ref_mb:.1f} | {blk_mb:.1f} | {cols_mb:.1f}")
    print()
    real_busy = _launch.machine_busy  # "2": two threads forced; "2, policy": blas_threads_for
    head = "| size | GFLOP | threads | numpy ms | numba ms | torch ms | numba GFLOP/s | numba % of peak | numba / torch |"
    print(head)
    print("|" + " --- |" * 9)
    try:
        for n, c, hw, f in SIZES:
            gflop = 3 * 2 * n * f * c * 9 * hw * hw / 1e9  # forward, dW, dX: three GEMMs
            fns = case(n, c, hw, f)
            for t, policy in ((1, False), (2, False), (2, True)):
                set_threads(t)
                _launch.machine_busy = real_busy if policy else (lambda: False)
                ms = {k: best_ms(fn) for k, fn in fns.items()}
                rate = gflop / (ms["numba"] * 1e-3)
                torch_ms = f"{ms['torch']:.2f}" if "torch" in ms else ""
                vs = f"{ms['numba'] / ms['torch']:.2f}x" if "torch" in ms else ""
                label = f"{t}, policy" if policy else str(t)
                print(
                    f"| {n}x{c}x{hw}x{hw} -> {f} | {gflop:.3f} | {label} | {ms['numpy']:.2f} | "
                    f"{ms['numba']:.2f} | {torch_ms} | {rate:.0f} | {100 * rate / peaks[t]:.0f}% | {vs} |"
                )
    finally:
        _launch.machine_busy = real_busy
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
