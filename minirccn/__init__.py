"""minirccn: Faster R-CNN written from scratch so that a reader can follow every number.

Submodules are imported on first use (``minirccn.ops``, ``minirccn.nn.layers``, ...)
so that ``import minirccn`` is cheap and the CLI starts fast.
"""

import importlib
import os
import sys

# Numba's parallel kernels run on an OpenMP pool. By default its idle threads
# spin; when the machine has other work (two cores, a test runner, a second
# process) every parallel call then waits for a descheduled spinner: we
# measured 8.5 ms per small conv call with spinning vs 0.095 ms with sleeping
# threads on a loaded 2-core machine. The pool reads this variable when it
# first starts, i.e. at the first parallel kernel call, after this import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_SUBMODULES = {
    "backend",
    "bench",
    "checkpoint",
    "cli",
    "config",
    "data",
    "detector",
    "errors",
    "evaluation",
    "kernels",
    "nn",
    "ops",
    "predict",
    "train",
    "viz",
}

#: the contract names of DESIGN.md that lived at the top level before the regrouping:
#: ``from minirccn import layers`` and ``import minirccn.layers`` keep working
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
