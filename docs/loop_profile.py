"""Where a RetinaNet training-loop step goes, next to the bench's step, in one process.

Runs the real loop (``minirccn train --model retinanet --iters N``, one OpenBLAS thread as
``train`` sets it) with a timer around each of its parts, then times the bench's RetinaNet
step (``minirccn.app.bench._train_step``: one fixed image, targets and all) in the same
process::

    OPENBLAS_NUM_THREADS=1 python docs/loop_profile.py [N]        # default N = 300

The parts are nested (``forward`` holds ``targets`` and ``losses``; ``train step`` holds
``forward``, ``backward``, ``clip`` and ``sgd``); "loop, rest" is what the loop spends
outside ``load batch`` and ``train step``. Works with any checkout of minirccn that has
these functions (it only wraps them).
"""

import collections
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from minirccn.app import bench  # noqa: E402
from minirccn.app.cli import main  # noqa: E402
from minirccn.detector.dense import targets as dense_targets  # noqa: E402
from minirccn.detector.models import retinanet  # noqa: E402
from minirccn.engine import loop  # noqa: E402
from minirccn.nn import optim  # noqa: E402

TIMES = collections.defaultdict(list)


def timed(owner, name, label):
    """Replace ``owner.name`` by a wrapper that records each call's seconds under ``label``."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


PARTS = (
    (loop, "train_step", "train step"),
    (retinanet.RetinaNet, "load_batch", "load batch"),
    (retinanet.RetinaNet, "forward", "forward"),
    (retinanet, "retinanet_head_forward", "head forward"),
    (dense_targets.RetinaNetTargets, "__call__", "targets"),
    (retinanet, "retinanet_losses", "losses"),
    (retinanet.RetinaNet, "backward", "backward"),
    (retinanet, "retinanet_head_backward", "head backward"),
    (optim, "clip_grad_norm", "clip"),
    (optim.SGD, "step", "sgd"),
)


def main_(iters: int) -> None:
    print(f"load average at start: {os.getloadavg()}")
    main(["train", "--model", "retinanet", "--iters", "20", "--out", "/tmp/loop_profile",
          "--overwrite", "--eval-split", "", "--no-progress"])  # compiles / loads the kernels
    for owner, name, label in PARTS:
        timed(owner, name, label)
    start = time.perf_counter()
    main(["train", "--model", "retinanet", "--iters", str(iters), "--out", "/tmp/loop_profile",
          "--overwrite", "--eval-split", "", "--no-progress"])
    wall = time.perf_counter() - start
    steps = len(TIMES["train step"])
    loop_s = sum(TIMES["train step"]) + sum(TIMES["load batch"])
    print(f"\n{steps} steps of the loop ({wall:.1f} s with the run's setup and outputs)")
    print("| part | ms per step (mean) | median ms |\n| --- | --- | --- |")
    for _, _, label in PARTS:
        t = np.array(TIMES[label]) * 1e3
        print(f"| {label} | {t.sum() / steps:.2f} | {np.median(t):.2f} |")
    print(f"| loop step (load batch + train step) | {loop_s / steps * 1e3:.2f} | |")
    inputs = bench._inputs_of("resnet-fpn-tiny", "retinanet")(np.random.default_rng(0))
    fn = bench._train_step("numba", inputs)
    for _ in range(5):
        fn()
    times = []
    for _ in range(100):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times = np.array(times) * 1e3
    print(f"| bench's step (100 calls) | {times.mean():.2f} | {np.median(times):.2f} |")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main_(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
