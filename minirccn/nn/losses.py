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
``sigmoid_focal_loss``     *sum* (or mean / none)                ``ops.sigmoid_focal_loss``
=========================  ====================================  ===================================
"""

from __future__ import annotations

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_float, check_shape
from minirccn.core.dispatch import kernel


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


def _sigmoid_pair(x):
    """``(sigmoid(x), sigmoid(-x)) = (p, 1 - p)``, both computed without cancellation or overflow:
    only ``exp`` of non-positive numbers, and ``1 - p`` never formed by a subtraction."""
    xp = _backend.get_array_module(x)
    e = xp.exp(-xp.abs(x))  # in (0, 1]
    big = 1 / (1 + e)  # sigmoid(|x|) in [0.5, 1]
    small = e / (1 + e)  # sigmoid(-|x|) in [0, 0.5]
    pos = x >= 0
    return xp.where(pos, big, small), xp.where(pos, small, big)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow, in ``x``'s dtype (see :func:`_sigmoid_pair`)."""
    return _sigmoid_pair(x)[0]


FOCAL_REDUCTIONS = ("none", "mean", "sum")


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum"):
    """The focal loss of RetinaNet (Lin et al. 2017, Eq. 5), exactly torchvision's definition.

    Per element, with ``x`` the logit and ``t`` the target in ``[0, 1]``::

        p       = sigmoid(x)
        ce      = -(t log p + (1 - t) log(1 - p))          binary cross-entropy on the logit
        p_t     = p t + (1 - p)(1 - t)                     the probability of the "right" answer
        q       = 1 - p_t = p (1 - t) + (1 - p) t          how wrong the prediction is
        loss    = alpha_t * ce * q**gamma
        alpha_t = alpha t + (1 - alpha)(1 - t)  if alpha >= 0,  else 1 (no weighting)

    ``q**gamma`` is the "focusing" factor: an easy example (``q`` near 0, e.g. a
    background anchor with ``p = 0.01``) is scaled down by ``q**gamma`` (``1e-4`` for
    ``gamma = 2``), a hard one (``q`` near 1) keeps its cross-entropy. ``gamma = 0``
    and ``alpha < 0`` give plain BCE.

    Gradient, derived by hand (``d/dx``, per element; ``alpha_t`` does not depend on ``x``)::

        dp/dx   = p (1 - p)                                (the sigmoid's derivative)
        dce/dx  = p - t                                    (BCE-with-logits)
        dq/dx   = (1 - t) dp/dx - t dp/dx = (1 - 2t) p (1 - p)
        dloss/dx = alpha_t * [(p - t) q**gamma + gamma * ce * q**(gamma - 1) * (1 - 2t) p (1 - p)]

    (product rule on ``ce * q**gamma``). The second term is computed as
    ``gamma * ce * q**gamma * (1 - 2t) * r`` with ``r = p (1 - p) / q``: ``q`` is a
    convex combination of ``p`` and ``1 - p``, so ``q >= min(p, 1 - p) >= p (1 - p)``
    and ``0 <= r <= 1``; no ``0 * inf`` appears even for ``gamma < 1``, where
    ``q**(gamma - 1)`` itself is infinite at ``q = 0``. ``gamma = 0`` drops the term.

    Numerical stability: ``p`` and ``1 - p`` both come from ``exp(-|x|)`` (never
    ``1 - sigmoid(x)``); ``ce = max(x, 0) - x t + log1p(exp(-|x|))``; ``q`` and
    ``p - t = p (1 - t) - (1 - p) t`` are formed from ``p`` and ``1 - p`` without a
    cancelling subtraction. So logits of +-40 (or +-1000) give finite, accurate values:
    ``x = 40, t = 1`` gives ``q = 4.2e-18`` where ``1 - sigmoid(40)`` rounds to 0, and
    the gradient ``-alpha (1 + gamma) e^(-40 (1 + gamma))`` to full relative accuracy.
    torchvision forms ``1 - p_t`` literally; the two agree to rounding wherever ``q``
    is representable, and both give ~0 where it is not.

    Args:
        logits: any shape ``S``, float32/float64 (NumPy or CuPy).
        targets: shape ``S``, values in ``[0, 1]`` (one-hot for detection; soft allowed).
        alpha: weight of the positives in ``[0, 1]``; any negative number disables it.
        gamma: focusing exponent ``>= 0``.
        reduction: ``"none"`` (per-element losses), ``"mean"`` or ``"sum"`` (default).

    Returns:
        loss: ``"none"``: array of shape ``S`` (logits' dtype); otherwise a Python ``float``
            (``"mean"`` of an empty input is NaN, as in torch).
        dlogits: shape ``S``, logits' dtype: the gradient of ``loss`` (``"sum"``/``"mean"``)
            or of ``loss.sum()`` (``"none"``: each element's own derivative) w.r.t. ``logits``.
    """
    logits = check_float(logits, "logits")
    xp = _backend.get_array_module(logits)
    targets = _same_module(targets, logits)
    check_shape(targets, "targets", logits.shape)
    t = targets.astype(logits.dtype, copy=False)
    try:
        alpha, gamma = float(alpha), float(gamma)
    except (TypeError, ValueError):
        raise TypeError(f"alpha, gamma: expected numbers, got {alpha!r}, {gamma!r}") from None
    if not np.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma: expected a non-negative number, got {gamma!r}")
    if not np.isfinite(alpha) or alpha > 1:
        raise ValueError(f"alpha: expected a number <= 1 (negative disables it), got {alpha!r}")
    if reduction not in FOCAL_REDUCTIONS:
        raise ValueError(
            f"reduction: expected one of {', '.join(FOCAL_REDUCTIONS)}, got {reduction!r}"
        )
    x = logits
    p, one_minus_p = _sigmoid_pair(x)
    ce = xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
    q = p * (1 - t) + one_minus_p * t
    qg = q**gamma  # 0**0 == 1, as torch
    loss = ce * qg
    grad = (p * (1 - t) - one_minus_p * t) * qg  # (p - t) * q**gamma, no cancellation at p ~ 1
    if gamma != 0:
        pq = p * one_minus_p
        r = xp.where(q > 0, pq / xp.where(q > 0, q, 1), 0)
        grad = grad + gamma * ce * qg * (1 - 2 * t) * r
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
        grad = alpha_t * grad
    loss = loss.astype(logits.dtype, copy=False)
    grad = grad.astype(logits.dtype, copy=False)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return float(loss.sum()), grad
    n = loss.size
    if n == 0:
        return float("nan"), grad
    return float(loss.sum()) / n, grad / logits.dtype.type(n)


def labeled_focal_loss_reference(logits, labels, alpha=0.25, gamma=2.0):
    """RetinaNet's classification loss of one image's anchors, from their integer labels.

    The specification of the ``labeled_focal_loss`` op (:mod:`minirccn.core.dispatch`): the
    summed :func:`sigmoid_focal_loss` over the anchors that are not ignored, each with its
    one-hot target (a 1 in column ``label - 1`` of a positive, all zeros for a negative)::

        valid  = labels >= 0
        onehot = one-hot of labels[valid] - 1 (zero rows for labels 0)
        loss, d = sigmoid_focal_loss(logits[valid], onehot, alpha, gamma, "sum")
        dlogits[valid] = d;  0 on the ignored rows

    Args:
        logits: ``(M, Kc)`` float32/float64 (NumPy or CuPy).
        labels: ``(M,)`` int: ``c >= 1`` positive of class ``c`` (``c <= Kc``), 0 negative,
            -1 ignored.
        alpha, gamma: of :func:`sigmoid_focal_loss`.

    Returns:
        loss: Python ``float``, the sum over the valid anchors' ``Kc`` outputs;
        dlogits: ``(M, Kc)`` logits' dtype, its gradient (0 on ignored rows).
    """
    xp = _backend.get_array_module(logits)
    labels = xp.asarray(labels)
    kc = logits.shape[1]
    valid = xp.nonzero(labels >= 0)[0]
    onehot = xp.zeros((int(valid.size), kc), dtype=logits.dtype)
    lv = labels[valid]
    rows = xp.nonzero(lv >= 1)[0]
    onehot[rows, lv[rows] - 1] = 1
    loss, d = sigmoid_focal_loss(logits[valid], onehot, alpha, gamma, "sum")
    dlogits = xp.zeros_like(logits)
    dlogits[valid] = d
    return loss, dlogits


def labeled_focal_loss(logits, labels, alpha=0.25, gamma=2.0, *, backend=None):
    """:func:`labeled_focal_loss_reference` on ``backend`` (the ``labeled_focal_loss`` op:
    ``numba`` makes one pass over the anchors, ``minirccn.kernels.losses``: the same numbers
    for ``gamma`` 0, 0.5, 1 and 2, others to rounding). ``backend`` None: inferred from ``logits`` (else ``MINIRCCN_BACKEND``, else
    ``numba``)."""
    logits = check_float(logits, "logits")
    name = _backend.resolve(backend, logits)
    return kernel("labeled_focal_loss", name)(logits, labels, alpha, gamma)
