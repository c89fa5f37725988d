"""Weight initialisation, always through an explicit ``numpy.random.Generator``.

Values are drawn in float64 and then cast, so the same seed gives the same
weights (up to rounding) in float32 and float64.

* :func:`he_normal`: ``N(0, 2 / fan_in)`` (He et al. 2015), for conv / fc layers
  followed by a ReLU; ``fan_in = C * kh * kw`` for a conv weight ``(F, C, kh, kw)``
  and ``D`` for a linear weight ``(D, M)``.
* :func:`normal`: ``N(0, std^2)``; the Faster R-CNN paper initialises the new
  layers with std 0.01 (:data:`HEAD_STD`) and the box regressor with 0.001
  (:data:`BOX_STD`).
"""

from __future__ import annotations

import math

import numpy as np

HEAD_STD = 0.01  # RPN and classifier layers (paper, section 3.1.3)
BOX_STD = 0.001  # the final box-regression layer (torchvision / py-faster-rcnn)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")


def normal(shape, std: float, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """``shape`` array of ``N(0, std^2)`` samples, of ``dtype``."""
    _check_rng(rng)
    return (rng.standard_normal(shape) * std).astype(dtype)


def fan_in(shape) -> int:
    """Inputs feeding one output: ``C*kh*kw`` for a conv ``(F, C, kh, kw)``, ``D`` for ``(D, M)``."""
    if len(shape) == 4:
        return int(shape[1] * shape[2] * shape[3])
    if len(shape) == 2:
        return int(shape[0])
    raise ValueError(
        f"shape: expected a conv (F, C, kh, kw) or linear (D, M) shape, got {tuple(shape)}"
    )


def he_normal(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """He (Kaiming) normal init: ``N(0, 2 / fan_in)``; see :func:`fan_in`."""
    return normal(shape, math.sqrt(2.0 / fan_in(shape)), rng, dtype)


def conv_params(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    rng: np.random.Generator,
    std: float | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(w (F, C, k, k), b (F,))``: He normal weights (or ``N(0, std^2)``), zero bias."""
    return _weight_and_bias((out_channels, in_channels, kernel_size, kernel_size), out_channels, rng, std, dtype)


def linear_params(
    in_features: int,
    out_features: int,
    rng: np.random.Generator,
    std: float | None = None,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(w (D, M), b (M,))``: He normal weights (or ``N(0, std^2)``), zero bias."""
    return _weight_and_bias((in_features, out_features), out_features, rng, std, dtype)


def _weight_and_bias(shape, outputs, rng, std, dtype):
    """``(w shape, b (outputs,))``: He normal ``w`` (or ``N(0, std^2)``), zero ``b``."""
    w = he_normal(shape, rng, dtype) if std is None else normal(shape, std, rng, dtype)
    return w, np.zeros(outputs, dtype=dtype)
