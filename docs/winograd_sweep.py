"""Print the numbers of docs/conv.md, section 9: Winograd F(2x2, 3x3) against the blocked im2col
kernel (and torch when it is installed), forward+backward of a 3x3 stride-1 conv, on one and
two threads, with the arithmetic that predicts where each wins.

    python docs/winograd_sweep.py            # ~2 minutes on the 2-core machine

Both paths are the numba backend's (``kernels/conv.py``, ``kernels/winograd.py``), forced by
the rule's thresholds (``WINOGRAD_MIN_TILES``: 0 for Winograd, a huge number for im2col); the
three are timed in turn, round after round, and each cell is the median of its rounds (this
VM's speed drifts: interleaving keeps the drift out of the ratios). Threads and torch's case are
docs/conv_sweep.py's (OpenBLAS through ctypes, ``numba.set_num_threads``,
``torch.set_num_threads``), the busy-machine policy off so the two-thread rows measure two
threads.
"""

from __future__ import annotations

import os
import statistics
import time

import conv_sweep  # docs/conv_sweep.py (beside this file): the thread settings, torch's case
import numpy as np

from minirccn.kernels import _launch
from minirccn.kernels import winograd as kwino
from minirccn.nn import conv

#: (N, C, H=W, F): the `tiny` preset's 3x3 stride-1 layers on the bench's 128 px image, maps of
#: 16x16 and 8x8, a 256-channel 16x16 layer, and the bench's conv case
SIZES = [
    (1, 3, 128, 16),
    (1, 16, 64, 32),
    (1, 32, 32, 32),
    (1, 32, 32, 64),
    (1, 64, 32, 64),
    (1, 64, 16, 64),
    (1, 32, 16, 32),
    (1, 64, 8, 64),
    (1, 256, 16, 256),
    (2, 64, 64, 128),
]
ROUNDS = 15


def arithmetic(n, c, hw, f):
    """``(GFLOP im2col, GFLOP Winograd, MB Winograd moves)`` of forward+backward, float32.

    GEMMs: im2col 3 products of ``2 * F * 9C * HW`` per image; Winograd 3 x 16 products of ``2 *
    F * C * T`` with ``T = ceil(H/2) ceil(W/2)`` tiles. Memory: the blocked im2col keeps its
    columns in the cache (docs/conv.md, section 2: about the tensors themselves); Winograd's
    transformed copies do not fit and go through memory: ``V`` (16 C T) written once and read by
    the forward GEMM and by the ``dU`` GEMM, ``M`` (16 F T) written and read, ``dM`` (16 F T)
    written and read by both backward GEMMs, ``dV`` (16 C T) written and read; plus the
    padded input and its gradient (written and read) and x, out, dout, dx."""
    t = n * ((hw + 1) // 2) ** 2
    g_im2col = 3 * 2 * n * f * 9 * c * hw * hw / 1e9
    g_wino = 3 * 2 * 16 * f * c * t / 1e9
    v, m = 16 * c * t, 16 * f * t
    padded = n * c * (2 * ((hw + 1) // 2) + 2) ** 2
    floats = 3 * v + 2 * m + 3 * m + 2 * v + 4 * padded + 2 * n * c * hw * hw + 2 * n * f * hw * hw
    return g_im2col, g_wino, floats * 4 / 1e6


def fns_for(n, c, hw, f):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(f, np.float32)
    dout = rng.standard_normal((n, f, hw, hw)).astype(np.float32)

    def numba_with(min_tiles):
        def fn():
            kwino.WINOGRAD_MIN_TILES = min_tiles
            out, cache = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
            conv.conv2d_backward(dout, cache)

        return fn

    fns = {"im2col": numba_with(1 << 40), "winograd": numba_with(0)}
    torch_fn = conv_sweep.case(n, c, hw, f).get("torch")  # the same inputs, drawn the same way
    if torch_fn is not None:
        fns["torch"] = torch_fn
    return fns


def interleaved_ms(fns):
    """Median ms of each function, timed in turn for :data:`ROUNDS` rounds (after a warm-up)."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        fn()
    for _ in range(ROUNDS):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main():
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    print(f"rule: WINOGRAD_MIN_TILES = {kwino.WINOGRAD_MIN_TILES}, "
          f"WINOGRAD_MIN_CHANNELS = {kwino.WINOGRAD_MIN_CHANNELS}")
    print()
    print("| size | tiles | GFLOP im2col | GFLOP Winograd | MB Winograd moves | threads | "
          "im2col ms | Winograd ms | torch ms | Winograd / im2col | Winograd / torch | rule picks |")
    print("|" + " --- |" * 12)
    real_busy, real_tiles = _launch.machine_busy, kwino.WINOGRAD_MIN_TILES
    _launch.machine_busy = lambda: False
    try:
        for n, c, hw, f in SIZES:
            g1, g2, mb = arithmetic(n, c, hw, f)
            tiles = n * ((hw + 1) // 2) ** 2
            kwino.WINOGRAD_MIN_TILES = real_tiles
            picks = kwino.use_winograd((n, c), (f, c, 3, 3), (1, 1), ((hw, hw),), (1, 1))
            fns = fns_for(n, c, hw, f)
            for t in (1, 2):
                conv_sweep.set_threads(t)
                ms = interleaved_ms(fns)
                torch_ms = f"{ms['torch']:.2f}" if "torch" in ms else ""
                vs_torch = f"{ms['winograd'] / ms['torch']:.2f}x" if "torch" in ms else ""
                print(
                    f"| {n}x{c}x{hw}x{hw} -> {f} | {tiles} | {g1:.3f} | {g2:.3f} | {mb:.1f} | {t} | "
                    f"{ms['im2col']:.2f} | {ms['winograd']:.2f} | {torch_ms} | "
                    f"{ms['winograd'] / ms['im2col']:.2f}x | {vs_torch} | {'Winograd' if picks else 'im2col'} |"
                )
    finally:
        _launch.machine_busy, kwino.WINOGRAD_MIN_TILES = real_busy, real_tiles
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
