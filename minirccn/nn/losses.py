"""Losses, each returning the loss *and* its gradient: ``loss, dinput = loss_fn(...)``.

A loss is the end of the forward pass, so its "backward" needs no upstream
gradient: the function returns ``d loss / d input`` directly, with the input's
shape and dtype, ready to be handed to the previous layer's backward.
The loss itself is a Python ``float``.

Reductions follow torch's defaults as Faster R-CNN uses them:

=========================  ====================================  ===================================
function                   loss                                  torch equivalent
=========================  ====================================  ===================================
``softmax_cross_entropy``  mean over labels >= 0 of ``-log p``   ``cross_entropy(ignore_index=-1)``
``sigmoid_bce``            mean over elements (opt. weighted)    ``binary_cross_entropy_with_logits``
``smooth_l1``              *sum* over elements                   ``smooth_l1_loss(reduction="sum")``
=========================  ====================================  ===================================
"""

from __future__ import annotations

import numpy as np

from minirccn import backend as _backend
from minirccn._checks import check_float, check_shape


def _same_module(x, ref):
    """``x`` as an array of the module of ``ref`` (NumPy or CuPy)."""
    xp = _backend.get_array_module(ref)
    return _backend.to_numpy(x) if xp is np else xp.asarray(x)


def softmax(logits, axis=-1):
    """Numerically stable softmax: ``exp(z - max z) / sum exp(z - max z)`` along ``axis``."""
    xp = _backend.get_array_module(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits, axis=-1):
    """``log softmax(z) = z - max z - log sum exp(z - max z)`` along ``axis`` (stable)."""
    xp = _backend.get_array_module(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """Softmax cross-entropy, averaged over the rows whose label is not ignored.

    Args:
        logits: ``(R, K)`` float32/float64 class scores.
        labels: ``(R,)`` integer, in ``[0, K)``, or ``-1`` for "ignore this row".

    Returns:
        loss: ``float``, ``-(1/V) * sum_{r valid} log softmax(logits[r])[labels[r]]`` with
            ``V`` the number of valid rows; ``0.0`` when ``V == 0``.
        dlogits: ``(R, K)``, same dtype: ``(softmax(logits[r]) - onehot(labels[r])) / V``
            for a valid row, 0 for an ignored one (all zeros when ``V == 0``).
    """
    logits = check_float(logits, "logits")
    check_shape(logits, "logits", (None, None))
    labels = _same_module(labels, logits)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
    check_shape(labels, "labels", (logits.shape[0],))
    xp = _backend.get_array_module(logits)
    r, k = logits.shape
    if r and (int(labels.min()) < -1 or int(labels.max()) >= k):
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(
            f"labels: expected values in [0, {k}) or -1 (ignore), got range [{lo}, {hi}]"
        )
    valid = labels >= 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        return 0.0, xp.zeros_like(logits)
    safe = xp.where(valid, labels, 0).astype(xp.int64)
    rows = xp.arange(r)
    logp = log_softmax(logits)
    loss = -float((logp[rows, safe] * valid).sum()) / n_valid
    dlogits = xp.exp(logp)
    dlogits[rows, safe] -= 1
    dlogits *= (valid / n_valid).astype(logits.dtype)[:, None]
    return loss, dlogits


def sigmoid_bce(logits, targets, weights=None):
    """Binary cross-entropy on logits, averaged over all elements (numerically stable).

    Args:
        logits: any shape ``S``, float32/float64.
        targets: shape ``S``, values in ``[0, 1]``.
        weights: optional shape ``S`` (or broadcastable) per-element weights.

    Returns:
        loss: ``float``, ``mean(w * (max(z, 0) - z * t + log(1 + exp(-|z|))))``, which equals
            ``mean(-w * (t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))))``; 0.0 when empty.
        dlogits: shape ``S``, same dtype: ``w * (sigmoid(z) - t) / size``.
    """
    logits = check_float(logits, "logits")
    xp = _backend.get_array_module(logits)
    targets = _same_module(targets, logits)
    check_shape(targets, "targets", logits.shape)
    targets = targets.astype(logits.dtype, copy=False)
    if weights is None:
        w = xp.ones((), dtype=logits.dtype)
    else:
        w = _same_module(weights, logits).astype(logits.dtype, copy=False)
        try:
            np.broadcast_shapes(w.shape, logits.shape)
        except ValueError:
            raise ValueError(
                f"weights: shape {tuple(w.shape)} does not broadcast to {tuple(logits.shape)}"
            ) from None
    n = logits.size
    if n == 0:
        return 0.0, xp.zeros_like(logits)
    per = xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))
    loss = float((w * per).sum()) / n
    # sigmoid without overflow: exp of a non-positive number only
    e = xp.exp(-xp.abs(logits))
    sig = xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    dlogits = (w * (sig - targets) / n).astype(logits.dtype, copy=False)
    return loss, xp.broadcast_to(dlogits, logits.shape).copy()


def smooth_l1(pred, target, beta=1.0 / 9):
    """Smooth L1 (Huber-like) loss, *summed* over all elements.

    With ``d = pred - target``:

    * ``|d| < beta``: ``0.5 * d**2 / beta``, gradient ``d / beta``;
    * otherwise: ``|d| - 0.5 * beta``, gradient ``sign(d)``;
    * ``beta = 0`` is plain L1 (gradient ``sign(d)``, 0 at ``d = 0``).

    Args:
        pred, target: same shape, float32/float64.
        beta: the switch point, ``>= 0`` (Faster R-CNN uses 1/9).

    Returns:
        loss: ``float``; dpred: ``pred``'s shape and dtype.
    """
    pred = check_float(pred, "pred")
    target = _same_module(check_float(target, "target"), pred)
    check_shape(target, "target", pred.shape)
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"beta: expected a number, got {beta!r}") from None
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
    xp = _backend.get_array_module(pred)
    d = pred - target.astype(pred.dtype, copy=False)
    ad = xp.abs(d)
    if beta == 0:
        return float(ad.sum()), xp.sign(d)
    small = ad < beta
    loss = float(xp.where(small, 0.5 * d * d / beta, ad - 0.5 * beta).sum())
    dpred = xp.where(small, d / beta, xp.sign(d)).astype(pred.dtype, copy=False)
    return loss, dpred
