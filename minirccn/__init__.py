"""minirccn: Faster R-CNN written from scratch so that a reader can follow every number.

Submodules are imported on first use (``minirccn.ops``, ``minirccn.nn.layers``, ...)
so that ``import minirccn`` is cheap and the CLI starts fast.
"""

import importlib
import os
import sys

# Numba's OpenMP pool: idle threads sleep instead of spinning, so a parallel call never waits
# for a descheduled spinner on a busy machine (measured: docs/threads.md). The pool reads this
# variable at the first parallel kernel call, after this import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_SUBMODULES = {
    "app",
    "config",
    "core",
    "data",
    "detector",
    "engine",
    "evaluation",
    "kernels",
    "nn",
    "ops",
    "proposals",
    "viz",
}

#: DESIGN.md's contract names -> the modules they live in now: ``from minirccn import layers``
#: and ``import minirccn.layers`` keep working for outside code whatever moves.
ALIASES = {
    "layers": "minirccn.nn.layers",
    "losses": "minirccn.nn.losses",
    "optim": "minirccn.nn.optim",
    "anchors": "minirccn.detector.anchors",
}


class _AliasFinder:
    """Import ``minirccn.<alias>`` as the module it now lives in (see :data:`ALIASES`)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        prefix, _, leaf = fullname.partition(".")
        if prefix != __name__ or leaf not in ALIASES:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _AliasFinder)

    @staticmethod
    def create_module(spec):
        return importlib.import_module(ALIASES[spec.name.partition(".")[2]])

    @staticmethod
    def exec_module(module):
        pass


sys.meta_path.append(_AliasFinder)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ALIASES:
        return importlib.import_module(ALIASES[name])
    raise AttributeError(f"module 'minirccn' has no attribute {name!r}")
