"""Layers with an explicit backward pass, losses, initialisation, SGD and a gradient checker.

Every layer is a pair ``out, cache = x_forward(...)`` / ``dx, ... = x_backward(dout, cache)``;
nothing here knows about detection (``ops`` and ``nn`` never import ``detector``).

===============  ===================================================================
module           what
===============  ===================================================================
``layers``       conv2d, relu, max_pool2d, linear, dropout, batch norm
``conv_levels``  one conv over every level of a pyramid (shared-weight heads), one GEMM
``losses``       softmax cross-entropy, smooth L1, sigmoid BCE
``init``         weight initialisation
``optim``        SGD with momentum and weight decay, warmup + step learning rate
``gradcheck``    float64 finite-difference checks of any forward/backward pair
===============  ===================================================================
"""

import importlib

_SUBMODULES = {"layers", "losses", "init", "optim", "gradcheck", "conv", "conv_levels", "pool"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
