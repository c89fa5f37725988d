"""minirccn: Faster R-CNN written from scratch so that a reader can follow every number.

Submodules are imported on first use (``minirccn.ops``, ``minirccn.layers``, ...)
so that ``import minirccn`` is cheap and the CLI starts fast.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "anchor_targets", "anchors", "backbone", "backend", "bench", "box_coder", "boxes", "checkpoint",
    "cli", "config", "data", "errors", "evaluation", "gradcheck", "head", "init", "layers", "losses",
    "model", "nms", "ops", "optim", "predict", "proposal_targets", "proposals", "roi_pool", "rpn",
    "train", "viz",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'minirccn' has no attribute {name!r}")
