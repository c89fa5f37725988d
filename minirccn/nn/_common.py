"""What the layers share: argument checks, moving inputs to the backend, conv arithmetic.

Private to :mod:`minirccn.nn` (the layers re-export what users need).
"""

from __future__ import annotations

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_float, check_shape


def pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as ``(along H, along W)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
        values = tuple(value)
    else:
        values = (value, value)
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def prepare(backend, name_arrays: dict):
    """Resolve ``backend``, validate float dtypes and move arrays to the backend's module.

    Returns ``(backend, xp, [arrays...])``; every array must have the dtype of the first.
    """
    arrays = [check_float(a, n) for n, a in name_arrays.items()]
    backend = _backend.resolve(backend, *arrays)
    xp = _backend.array_module(backend)
    if xp is np:
        arrays = [_backend.to_numpy(a) for a in arrays]
    else:
        arrays = [xp.asarray(a) for a in arrays]
    names = list(name_arrays)
    for n, a in zip(names[1:], arrays[1:]):
        if a.dtype != arrays[0].dtype:
            raise TypeError(f"{n}: dtype {a.dtype} differs from {names[0]}'s {arrays[0].dtype}")
    return backend, xp, arrays


def check_grad(dout, name: str, shape, dtype, xp):
    """``dout`` as an array of ``xp`` with the forward output's ``shape`` and ``dtype``."""
    dout = check_float(dout, name)
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, name, tuple(shape))
    return dout.astype(dtype, copy=False)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv / pool along one axis: ``floor((size + 2p - k) / s) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def geometry(kernel_size, stride, padding):
    """``((kh, kw), (sh, sw), (ph, pw))`` from ints or pairs."""
    return pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")


def offset_view(a, i, j, ho, wo, sh, sw):
    """``a[:, :, i + oh*sh, j + ow*sw]`` for all ``oh < ho``, ``ow < wo``: a strided view."""
    return a[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
