"""Finite-difference gradient checks: is a hand-written backward right?

The derivative of a scalar function ``f`` along coordinate ``i`` is approximated
by the central difference ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``, whose
error is ``O(eps^2)``; in float64 with ``eps = 1e-6`` a correct backward agrees
to about 1e-8 relative error, a wrong one is off by order 1.

* :func:`numerical_grad`: every coordinate (2 evaluations each: small inputs).
* :func:`directional_grad_check`: random directions ``v`` (2 evaluations each):
  compares ``(f(x + eps v) - f(x - eps v)) / (2 eps)`` with ``<grad, v>``.
* :func:`check_layer`: checks any ``forward`` / ``backward`` pair in one line, by
  turning the layer into the scalar ``L = sum(out * R)`` for a fixed random ``R``
  (so ``dL/dout = R`` is what the backward receives).
* :func:`check_loss`: the same for a loss that returns ``(loss, dinput)``.

Inputs are perturbed in place and restored, so closures over them see the change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _check_float64(x, name: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{name}: finite differences need a float64 NumPy array, got {got}")


def rel_error(a, b) -> float:
    """``max|a - b| / max(max|a|, max|b|, 1e-12)``: a norm-wise relative error that does
    not blow up on gradient entries that are (nearly) zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-12)
    return float(np.abs(a - b).max() / scale)


def numerical_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to ``x``.

    Args:
        f: no-argument function returning a scalar; it must read ``x`` (a closure).
        x: float64 array, perturbed one element at a time in place and restored.
        eps: the step.

    Returns:
        ``(shape of x)`` float64: ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)``.
    """
    _check_float64(x, "x")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x: must be contiguous (it is perturbed in place)")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def _directional(f, x, analytic_grad, rng, n_dirs, eps) -> tuple[float, float]:
    """``(max |num - ana|, max(|num|, |ana|))`` over ``n_dirs`` random unit directions."""
    saved = x.copy()
    err = scale = 0.0
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        v /= max(np.linalg.norm(v), 1e-300)
        x[...] = saved + eps * v
        fp = float(f())
        x[...] = saved - eps * v
        fm = float(f())
        x[...] = saved
        num = (fp - fm) / (2 * eps)
        ana = float((analytic_grad * v).sum())
        err, scale = max(err, abs(num - ana)), max(scale, abs(num), abs(ana))
    return err, scale


def directional_grad_check(
    f: Callable[[], float],
    x: np.ndarray,
    analytic_grad,
    rng: np.random.Generator,
    n_dirs: int = 8,
    eps: float = 1e-6,
) -> float:
    """Compare ``analytic_grad`` with finite differences along ``n_dirs`` random unit directions.

    For tensors too big to difference coordinate by coordinate: 2 evaluations per direction.

    Args:
        f: no-argument scalar function reading ``x``.
        x: float64 array (perturbed in place along ``v``, then restored exactly).
        analytic_grad: ``x``'s shape, the gradient to check.
        rng: ``numpy.random.Generator`` for the directions.

    Returns:
        ``max_v |num - ana| / max_v max(|num|, |ana|, 1e-12)`` where
        ``num = (f(x + eps v) - f(x - eps v)) / (2 eps)`` and ``ana = <analytic_grad, v>``.
    """
    _check_float64(x, "x")
    analytic_grad = np.asarray(analytic_grad, dtype=np.float64)
    if analytic_grad.shape != x.shape:
        raise ValueError(f"analytic_grad: shape {analytic_grad.shape} differs from x's {x.shape}")
    err, scale = _directional(f, x, analytic_grad, rng, n_dirs, eps)
    return err / max(scale, 1e-12)


def check_layer(
    forward: Callable,
    backward: Callable,
    inputs: Sequence[np.ndarray],
    *,
    rng: np.random.Generator | None = None,
    eps: float = 1e-6,
    wrt: Sequence[int] | None = None,
    max_full: int = 2000,
    n_dirs: int = 8,
) -> float:
    """Check a layer's backward against finite differences; returns the max relative error.

    Args:
        forward: ``forward(*inputs) -> (out, cache)``.
        backward: ``backward(dout, cache)`` -> the gradient of each input, in order
            (a tuple, or a single array for a one-input layer).
        inputs: float64 arrays (contiguous; perturbed in place and restored).
        rng: for the random upstream gradient ``R`` and the directions (default: a fixed
            stream unrelated to ``default_rng(seed)`` for small seeds, so ``R`` is never
            accidentally equal to an input drawn from such a generator).
        wrt: indices of the inputs to check (default: all).
        max_full: inputs up to this size get every coordinate checked
            (:func:`numerical_grad`); larger ones get ``n_dirs`` random directions.

    The scalar checked is ``L = sum(out * R)``, so ``dL/dout = R``. The error is
    ``max |analytic - numeric|`` over all checked inputs divided by the largest gradient
    entry among them, so an input whose true gradient is zero (a conv bias before batch
    norm) is judged against the scale of the others, not against its own rounding noise.

    Example::

        err = check_layer(layers.relu_forward, layers.relu_backward, [x])
        assert err < 1e-7
    """
    rng = np.random.default_rng([0x67726164, 0x636B]) if rng is None else rng
    inputs = list(inputs)
    for k, x in enumerate(inputs):
        _check_float64(x, f"inputs[{k}]")
    out, cache = forward(*inputs)
    r = rng.standard_normal(np.shape(out))
    grads = backward(r, cache)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(inputs):
        raise ValueError(f"backward: returned {len(grads)} gradients for {len(inputs)} inputs")

    def loss() -> float:
        return float((np.asarray(forward(*inputs)[0]) * r).sum())

    err = scale = 0.0
    for k in range(len(inputs)) if wrt is None else wrt:
        x, g = inputs[k], np.asarray(grads[k], dtype=np.float64)
        if g.shape != x.shape:
            raise ValueError(f"backward: gradient {k} has shape {g.shape}, input has {x.shape}")
        if x.size == 0:
            continue
        if x.size <= max_full:
            num = numerical_grad(loss, x, eps)
            e, s = np.abs(g - num).max(), max(np.abs(g).max(), np.abs(num).max())
        else:
            e, s = _directional(loss, x, g, rng, n_dirs, eps)
        err, scale = max(err, float(e)), max(scale, float(s))
    return err / max(scale, 1e-12)


def check_loss(loss_fn: Callable, x: np.ndarray, *, eps: float = 1e-6) -> float:
    """Check a loss's gradient: ``loss_fn(x) -> (loss, dx)``; returns the relative error."""
    _check_float64(x, "x")
    _, g = loss_fn(x)
    return rel_error(np.asarray(g), numerical_grad(lambda: loss_fn(x)[0], x, eps))
