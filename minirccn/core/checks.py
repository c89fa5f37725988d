"""Input validation at the public boundary of the ops.

Every public op checks its arguments here first, so a wrong rank, shape or
dtype is one ``ValueError`` / ``TypeError`` that names the argument, never an
``IndexError`` from deep inside a kernel.
"""

from __future__ import annotations

import numpy as np

from minirccn.core.backend import get_array_module, is_cupy_array

FLOAT_DTYPES = (np.float32, np.float64)


def as_array(x, name: str):
    """``x`` as a NumPy or CuPy array (lists and tuples become NumPy arrays)."""
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists, objects
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} ({exc})") from None


def check_float(x, name: str):
    """``x`` as an array, raising ``TypeError`` unless its dtype is float32 or float64."""
    x = as_array(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    return x


def check_shape(x, name: str, shape: tuple):
    """Raise ``ValueError`` unless ``x.shape`` matches ``shape`` (None matches any size)."""
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    return x


def check_boxes(boxes, name: str = "boxes"):
    """``boxes`` as a float ``(N, 4)`` array of ``(x1, y1, x2, y2)`` rows."""
    return check_shape(check_float(boxes, name), name, (None, 4))


def check_scores(scores, n: int, name: str = "scores"):
    """``scores`` as a float ``(n,)`` array."""
    return check_shape(check_float(scores, name), name, (n,))


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    """``value`` as a float, raising ``ValueError`` unless it is finite and > 0 (or >= 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
        )
    return v


def same_module(name_a: str, a, name_b: str, b) -> None:
    """Raise ``TypeError`` if ``a`` and ``b`` live on different devices (NumPy vs CuPy)."""
    if get_array_module(a) is not get_array_module(b):
        raise TypeError(f"{name_a} and {name_b}: both must be NumPy arrays or both CuPy arrays")
