"""minirccn: Faster R-CNN written from scratch so that a reader can follow every number.

Submodules are imported on first use (``minirccn.ops``, ``minirccn.layers``, ...)
so that ``import minirccn`` is cheap and the CLI starts fast.
"""

import importlib
import os

# Numba's parallel kernels run on an OpenMP pool. By default its idle threads
# spin; when the machine has other work (two cores, a test runner, a second
# process) every parallel call then waits for a descheduled spinner: we
# measured 8.5 ms per small conv call with spinning vs 0.095 ms with sleeping
# threads on a loaded 2-core machine. The pool reads this variable when it
# first starts, i.e. at the first parallel kernel call, after this import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_SUBMODULES = {
    "anchor_targets",
    "anchors",
    "backbone",
    "backend",
    "bench",
    "box_coder",
    "boxes",
    "checkpoint",
    "cli",
    "config",
    "data",
    "errors",
    "evaluation",
    "gradcheck",
    "head",
    "init",
    "layers",
    "losses",
    "model",
    "nms",
    "ops",
    "optim",
    "predict",
    "proposal_targets",
    "proposals",
    "roi_pool",
    "rpn",
    "train",
    "viz",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'minirccn' has no attribute {name!r}")
