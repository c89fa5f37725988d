"""minirccn: Faster R-CNN written from scratch so that a reader can follow every number.

Submodules are imported on first use (``minirccn.ops``, ``minirccn.layers``, ...)
so that ``import minirccn`` is cheap and the CLI starts fast.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "anchors", "backend", "box_coder", "boxes", "data", "errors", "evaluation", "gradcheck",
    "layers", "losses", "nms", "ops", "optim", "roi_pool",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'minirccn' has no attribute {name!r}")
