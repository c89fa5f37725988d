"""Where a `tiny` training step's time goes: the bench's step (minirccn.app.bench._train_step),
timed, then profiled, its time split by layer (cumulative time of the layer functions).

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python docs/step_profile.py   # one thread
"""

import cProfile
import os
import pstats
import time

import numpy as np

from minirccn.app import bench

GROUPS = {
    "conv2d": ("conv2d_forward", "conv2d_backward"),
    "relu": ("relu_forward", "relu_backward"),
    "batch norm": ("batchnorm2d_forward", "batchnorm2d_backward"),
    "max pool": ("max_pool2d_forward", "max_pool2d_backward"),
    "linear": ("linear_forward", "linear_backward"),
    "roi pool": ("roi_pool", "roi_pool_backward"),
    "sgd": ("step",),
}
STEPS = 30


def main():
    print(f"load average: {os.getloadavg()}")
    inputs = bench._inputs_of("tiny", "fasterrcnn")(np.random.default_rng(0))
    fn = bench._train_step("numba", inputs)
    for _ in range(5):
        fn()
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    print(f"tiny train step, median of {STEPS}: {np.median(times) * 1e3:.1f} ms")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(STEPS):
        fn()
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = max(v[3] for k, v in stats.items() if k[2] == "fn")
    print(f"profiled step: {total / STEPS * 1e3:.1f} ms")
    for group, names in GROUPS.items():
        cum = sum(
            v[3]
            for k, v in stats.items()
            if k[2] in names and any(p in k[0] for p in ("nn/", "ops/", "optim"))
        )
        print(f"  {group:10s} {cum / STEPS * 1e3:6.2f} ms  {100 * cum / total:4.1f}%")


if __name__ == "__main__":
    main()
