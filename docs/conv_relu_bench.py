"""The fused conv + ReLU layer against the conv layer then the ReLU layer, forward + backward,
in one process, interleaved (7 rounds of 200 calls each, median), on three shapes: the `tiny`
preset's RPN conv, the bench's conv case, and a RetinaNet head layer over the packed pyramid
(docs/conv.md, section 8)::

    python docs/conv_relu_bench.py
    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python docs/conv_relu_bench.py
"""

import os
import time

import numpy as np

from minirccn.nn import conv, layers
from minirccn.nn import conv_levels as cl


def t_pair(fa, fb, reps=7, n=200):
    """Median ms per call of ``fa`` and of ``fb``, timed in alternating rounds."""
    ra, rb = [], []
    for _ in range(reps):
        for f, r in ((fa, ra), (fb, rb)):
            for _ in range(5):
                f()
            s = time.perf_counter()
            for _ in range(n):
                f()
            r.append((time.perf_counter() - s) / n * 1e3)
    return np.median(ra), np.median(rb)


def main():
    rng = np.random.default_rng(0)
    print("load", os.getloadavg(), "threads", os.environ.get("NUMBA_NUM_THREADS", "default"))
    for shape, f in (((1, 64, 32, 32), 64), ((2, 64, 64, 64), 128)):
        x = rng.standard_normal(shape).astype(np.float32)
        w = (rng.standard_normal((f, shape[1], 3, 3)) * 0.05).astype(np.float32)
        b = np.zeros(f, np.float32)
        d = rng.standard_normal((shape[0], f, shape[2], shape[3])).astype(np.float32)

        def unfused():
            y, c = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
            y, r = layers.relu_forward(y, backend="numba")
            conv.conv2d_backward(layers.relu_backward(d, r), c)

        def fused():
            y, c = conv.conv2d_forward(x, w, b, 1, 1, relu=True, backend="numba")
            conv.conv2d_backward(d, c)

        a, bb = t_pair(unfused, fused)
        print(
            f"conv3x3+relu fwd+bwd {shape}->{f}: unfused {a:.3f} ms  fused {bb:.3f} ms  "
            f"saved {a - bb:.3f} ms ({(a - bb) / a * 100:.1f}%)"
        )
    xs = [rng.standard_normal((1, 32, h, h)).astype(np.float32) for h in (32, 16, 8, 4, 2)]
    x = cl.pack_levels(xs)
    w = (rng.standard_normal((32, 32, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(32, np.float32)
    d = rng.standard_normal((1, 32, x.data.shape[2])).astype(np.float32)

    def unfused_levels():
        y, c = cl.conv2d_levels_forward(x, w, b, 1, 1, backend="numba")
        _, r = layers.relu_forward(y.data, backend="numba")
        cl.conv2d_levels_backward(cl.Packed(layers.relu_backward(d, r), y.sizes), c)

    def fused_levels():
        y, c = cl.conv2d_levels_forward(x, w, b, 1, 1, relu=True, backend="numba")
        cl.conv2d_levels_backward(cl.Packed(d, y.sizes), c)

    a, bb = t_pair(unfused_levels, fused_levels)
    print(
        f"RetinaNet head layer (levels 32..2, 32->32) fwd+bwd: conv then ReLU layer {a:.3f} ms  "
        f"fused {bb:.3f} ms  saved {a - bb:.3f} ms ({(a - bb) / a * 100:.1f}%)"
    )
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
