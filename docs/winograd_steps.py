"""Whole training steps with and without the Winograd convolutions: the table of docs/conv.md,
section 9, that set ``WINOGRAD_MIN_CHANNELS``.

    OPENBLAS_NUM_THREADS=1 python docs/winograd_steps.py     # one BLAS thread, as train runs

The bench's training step (``minirccn.app.bench._train_step``: one fixed 128-px image) of three
detectors, four variants of the rule's thresholds ``(WINOGRAD_MIN_TILES,
WINOGRAD_MIN_CHANNELS)`` timed in turn, 40 rounds after a warm-up, median ms.
"""

import os
import statistics
import time

import numpy as np

from minirccn.app import bench
from minirccn.kernels import winograd as kwino

VARIANTS = {
    "im2col only": (1 << 40, 32),
    "from 16 channels": (256, 16),
    "from 32 (the rule)": (256, 32),
    "from 1024 tiles": (1024, 32),
}
DETECTORS = [("tiny", "fasterrcnn"), ("resnet-fpn-tiny", "fasterrcnn"), ("resnet-fpn-tiny", "retinanet")]
ROUNDS = 40


def main():
    print(f"load average at start: {os.getloadavg()}")
    print("| step | " + " | ".join(VARIANTS) + " |")
    print("|" + " --- |" * (len(VARIANTS) + 1))
    saved = kwino.WINOGRAD_MIN_TILES, kwino.WINOGRAD_MIN_CHANNELS
    try:
        for preset, model in DETECTORS:
            inputs = bench._inputs_of(preset, model)(np.random.default_rng(0))
            fns = {name: bench._train_step("numba", inputs) for name in VARIANTS}
            times = {name: [] for name in VARIANTS}
            for name, fn in fns.items():
                kwino.WINOGRAD_MIN_TILES, kwino.WINOGRAD_MIN_CHANNELS = VARIANTS[name]
                for _ in range(5):
                    fn()
            for _ in range(ROUNDS):
                for name, fn in fns.items():
                    kwino.WINOGRAD_MIN_TILES, kwino.WINOGRAD_MIN_CHANNELS = VARIANTS[name]
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            cells = " | ".join(f"{statistics.median(t) * 1e3:.2f}" for t in times.values())
            print(f"| {model} ({preset}) | {cells} |", flush=True)
    finally:
        kwino.WINOGRAD_MIN_TILES, kwino.WINOGRAD_MIN_CHANNELS = saved
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
