"""Batch norm + ReLU: the fused kernel against the two kernels one after the other (Numba, CPU).

    python docs/bn_relu_bench.py                       # default threads
    NUMBA_NUM_THREADS=1 python docs/bn_relu_bench.py   # one thread

Median microseconds of forward (train mode) and backward at the shapes of the tiny and the
ResNet backbones' layers; the two give the same numbers (tests/nn/test_layers.py).
"""

import os
import time

import numba
import numpy as np

from minirccn.kernels import layers as K


def median_us(fn, n=300):
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.median(times) * 1e6


def main():
    rng = np.random.default_rng(0)
    print("load", os.getloadavg(), "numba threads", numba.get_num_threads())
    for shape in [(1, 16, 64, 64), (1, 32, 32, 32), (1, 16, 128, 128), (1, 64, 16, 16), (1, 32, 64, 64)]:
        x = rng.standard_normal(shape).astype(np.float32)
        c = shape[1]
        g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        dout = rng.standard_normal(shape).astype(np.float32)

        def unfused():
            out, xhat, inv_std, _, _ = K.batchnorm2d_numba(x, g, b, None, None, 1e-5)
            out, mask = K.relu_numba(out)
            return xhat, inv_std, mask

        def fused():
            return K.batchnorm2d_relu_numba(x, g, b, None, None, 1e-5)

        xhat, inv_std, mask = unfused()

        def unfused_back():
            dy = K.relu_backward_numba(dout, mask)
            return K.batchnorm2d_backward_numba(dy, xhat, inv_std, g, True)

        def fused_back():
            return K.batchnorm2d_relu_backward_numba(dout, mask, xhat, inv_std, g, True)

        print(
            f"{shape} fwd unfused {median_us(unfused):7.1f} us fused {median_us(fused):7.1f} us"
            f" | bwd unfused {median_us(unfused_back):7.1f} us fused {median_us(fused_back):7.1f} us"
        )


if __name__ == "__main__":
    main()
