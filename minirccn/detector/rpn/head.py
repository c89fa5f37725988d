"""The Region Proposal Network head, its two losses and its backward pass.

The RPN slides a small network over the backbone's feature map (paper, Sec. 3.1)::

    features (N, C, H, W)
      -> 3x3 conv (C -> Cr, padding 1) -> ReLU          "rpn.conv"
      -> 1x1 conv (Cr -> 2A)   objectness logits       "rpn.cls"   (A with one logit)
      -> 1x1 conv (Cr -> 4A)   box deltas              "rpn.bbox"

``A`` anchors per location. Channel ``2a + c`` of ``rpn.cls`` is the score of
class ``c`` (0 background, 1 object) of anchor ``a`` (the paper's two-way softmax; with
``rpn_objectness="sigmoid"``, torchvision's, channel ``a`` is ONE logit ``l`` and the object
probability is ``sigmoid(l)``: the same as a softmax over ``(0, l)``); channel ``4a + j`` of
``rpn.bbox`` is delta ``j`` (dx, dy, dw, dh) of anchor ``a``. Both are reordered
to the anchors' order (location-major, then anchor: see
:func:`minirccn.detector.anchors.generate_anchors`), giving ``(N, H*W*A, 2)`` and
``(N, H*W*A, 4)``.

Losses (paper Eq. 1, normalised as torchvision does):

* ``loss_objectness`` = softmax cross-entropy averaged over the sampled anchors (one
  logit: binary cross-entropy on the logit, averaged the same way, as torchvision's);
* ``loss_rpn_box_reg`` = smooth-L1 (beta 1/9) summed over the positive samples'
  four deltas, divided by the number of sampled anchors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.core.backend import get_array_module
from minirccn.nn import layers, losses
from minirccn.nn.conv_levels import (
    Packed,
    conv2d_levels_backward,
    conv2d_levels_forward,
    pack_levels,
    unpack_levels,
)


def init_rpn(
    in_channels: int, channels: int, num_anchors: int, rng, dtype="float32", logits_per_anchor: int = 2
) -> dict:
    """RPN parameters, weights ~ N(0, 0.01^2), biases 0 (as the paper and torchvision).

    Args:
        in_channels: ``C``, channels of the feature map.
        channels: ``Cr``, channels of the 3x3 conv.
        num_anchors: ``A``, anchors per location.
        rng: ``numpy.random.Generator``.
        dtype: parameter dtype.
        logits_per_anchor: ``k``, 2 (softmax, the paper) or 1 (sigmoid, torchvision).

    Returns:
        dict name -> array: ``rpn.conv.w`` (Cr, C, 3, 3), ``rpn.conv.b`` (Cr,),
        ``rpn.cls.w`` (kA, Cr, 1, 1), ``rpn.cls.b`` (kA,),
        ``rpn.bbox.w`` (4A, Cr, 1, 1), ``rpn.bbox.b`` (4A,).
    """

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.01).astype(dtype)

    a, k = num_anchors, int(logits_per_anchor)
    if k not in (1, 2):
        raise ValueError(f"logits_per_anchor: expected 1 or 2, got {logits_per_anchor}")
    return {
        "rpn.conv.w": normal(channels, in_channels, 3, 3),
        "rpn.conv.b": np.zeros(channels, dtype),
        "rpn.cls.w": normal(k * a, channels, 1, 1),
        "rpn.cls.b": np.zeros(k * a, dtype),
        "rpn.bbox.w": normal(4 * a, channels, 1, 1),
        "rpn.bbox.b": np.zeros(4 * a, dtype),
    }


class RPNCache(NamedTuple):
    """What :func:`rpn_backward` needs: the three conv caches and the map shape."""

    conv: tuple  # the 3x3 conv and its ReLU (conv2d_forward with relu=True)
    cls: tuple
    bbox: tuple
    shape: tuple  # (N, A, H, W)


def _to_anchor_order(x, n: int, a: int, k: int):
    """``(N, A*k, H, W)`` conv output -> ``(N, H*W*A, k)`` in the anchors' order."""
    _, _, h, w = x.shape
    return x.reshape(n, a, k, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, k)


def _from_anchor_order(g, n: int, a: int, k: int, h: int, w: int):
    """Inverse of :func:`_to_anchor_order`: ``(N, H*W*A, k)`` -> ``(N, A*k, H, W)``."""
    xp = get_array_module(g)
    g = g.reshape(n, h, w, a, k).transpose(0, 3, 4, 1, 2).reshape(n, a * k, h, w)
    return xp.ascontiguousarray(g)


def rpn_forward(params: dict, features, backend=None):
    """Objectness logits and box deltas of every anchor.

    Args:
        params: from :func:`init_rpn`.
        features: ``(N, C, H, W)`` float feature map.
        backend: backend of the convolutions.

    Returns:
        logits: ``(N, H*W*A, k)`` (background, object) scores, anchor order (``k = 2``; one
            object logit with ``k = 1``, the sigmoid objectness).
        deltas: ``(N, H*W*A, 4)`` (dx, dy, dw, dh), anchor order.
        cache: :class:`RPNCache`.
    """
    n, _, h, w = features.shape
    a = params["rpn.bbox.w"].shape[0] // 4
    k = params["rpn.cls.w"].shape[0] // a
    t, conv_cache = layers.conv2d_forward(  # the 3x3 conv and its ReLU, one layer
        features,
        params["rpn.conv.w"],
        params["rpn.conv.b"],
        stride=1,
        padding=1,
        relu=True,
        backend=backend,
    )
    cls, cls_cache = layers.conv2d_forward(
        t, params["rpn.cls.w"], params["rpn.cls.b"], backend=backend
    )
    box, bbox_cache = layers.conv2d_forward(
        t, params["rpn.bbox.w"], params["rpn.bbox.b"], backend=backend
    )
    logits = _to_anchor_order(cls, n, a, k)
    deltas = _to_anchor_order(box, n, a, 4)
    return logits, deltas, RPNCache(conv_cache, cls_cache, bbox_cache, (n, a, h, w))


def rpn_losses(logits, deltas, labels, regression_targets, beta: float = 1.0 / 9):
    """The two RPN losses and their gradients.

    Args:
        logits: ``(N, M, 2)`` float objectness scores (``(N, M, 1)``: one logit, sigmoid).
        deltas: ``(N, M, 4)`` float predicted deltas.
        labels: ``(N, M)`` int64: 1 positive, 0 negative, -1 not sampled.
        regression_targets: ``(N, M, 4)`` float encoded targets (used where label is 1).
        beta: smooth-L1 beta.

    Returns:
        loss_objectness, loss_rpn_box_reg: Python floats.
        dlogits: ``(N, M, 2)``, dL/dlogits of ``loss_objectness``.
        ddeltas: ``(N, M, 4)``, dL/ddeltas of ``loss_rpn_box_reg``.

    ``loss_objectness = mean over sampled anchors of -log softmax(logits)[label]`` (one logit
    ``z``: of ``-[label log sigmoid(z) + (1 - label) log(1 - sigmoid(z))]``, torchvision's
    ``binary_cross_entropy_with_logits`` over the sampled anchors);
    ``loss_rpn_box_reg = sum_{label = 1} smooth_l1(deltas - targets) / #sampled``.
    With no sampled anchor both losses are 0 and so are the gradients.
    """
    xp = get_array_module(logits)
    n, m, k = logits.shape
    flat_labels = labels.reshape(-1)
    num_sampled = int((flat_labels >= 0).sum())
    if num_sampled == 0:
        return 0.0, 0.0, xp.zeros_like(logits), xp.zeros_like(deltas)
    if k == 1:  # one logit: binary cross-entropy over the sampled anchors
        sampled = xp.nonzero(flat_labels >= 0)[0]
        flat = logits.reshape(n * m)
        loss_cls, d_sampled = losses.sigmoid_bce(flat[sampled], flat_labels[sampled].astype(logits.dtype))
        dlogits = xp.zeros(n * m, dtype=logits.dtype)
        dlogits[sampled] = d_sampled
    else:
        loss_cls, dlogits = losses.softmax_cross_entropy(logits.reshape(n * m, 2), flat_labels)
    pos = xp.nonzero(flat_labels == 1)[0]
    ddeltas = xp.zeros((n * m, 4), dtype=deltas.dtype)
    loss_box = 0.0
    if pos.size:
        loss_box, dpos = losses.smooth_l1(
            deltas.reshape(n * m, 4)[pos], regression_targets.reshape(n * m, 4)[pos], beta=beta
        )
        loss_box = float(loss_box) / num_sampled
        ddeltas[pos] = dpos / num_sampled
    return float(loss_cls), loss_box, dlogits.reshape(n, m, k), ddeltas.reshape(n, m, 4)


def rpn_backward(dlogits, ddeltas, cache: RPNCache):
    """Backward of :func:`rpn_forward`, in reverse order of the forward.

    Args:
        dlogits: ``(N, H*W*A, k)`` gradient of the loss w.r.t. the logits.
        ddeltas: ``(N, H*W*A, 4)`` gradient of the loss w.r.t. the deltas.
        cache: from :func:`rpn_forward`.

    Returns:
        dfeatures: ``(N, C, H, W)`` gradient w.r.t. the feature map.
        grads: dict with the same keys as the RPN parameters.
    """
    n, a, h, w = cache.shape
    dcls = _from_anchor_order(dlogits, n, a, dlogits.shape[2], h, w)
    dbox = _from_anchor_order(ddeltas, n, a, 4, h, w)
    dt_cls, dw_cls, db_cls = layers.conv2d_backward(dcls, cache.cls)
    dt_box, dw_box, db_box = layers.conv2d_backward(dbox, cache.bbox)
    # the ReLU's backward, then the conv's: one call (the mask is the conv output's > 0)
    dfeatures, dw_conv, db_conv = layers.conv2d_backward(dt_cls + dt_box, cache.conv)
    grads = _named_grads(conv=(dw_conv, db_conv), cls=(dw_cls, db_cls), bbox=(dw_box, db_box))
    return dfeatures, grads


def _named_grads(**layers_) -> dict:
    """``{"rpn.<layer>.w": dw, "rpn.<layer>.b": db}`` of each ``layer=(dw, db)``."""
    return {f"rpn.{name}.{p}": g for name, wb in layers_.items() for p, g in zip("wb", wb)}


# ------------------------------------------------------------------------ over levels


class LevelsRPNCache(NamedTuple):
    """One :class:`RPNCache` per level and each level's anchor count."""

    levels: list
    counts: list


class PackedRPNCache(NamedTuple):
    """The RPN head run once over all the levels packed side by side (see
    :func:`rpn_forward_levels`): its layer caches and the levels' sizes."""

    conv: tuple  # the 3x3 conv and its ReLU (conv2d_levels_forward with relu=True)
    cls: tuple
    bbox: tuple
    sizes: tuple  # ((H_0, W_0), ...)
    num_anchors: int  # A
    counts: list  # anchors of each level, H_l * W_l * A (as LevelsRPNCache.counts)


def rpn_forward_levels(params: dict, maps, backend=None, *, batched: bool = True):
    """The RPN head, its weights shared, on each level's map (torchvision's RPN on an FPN; a
    one-level detector has one map).

    Args:
        params: ``rpn.*`` (see :func:`init_rpn`).
        maps: list of ``(N, C, H_l, W_l)``, finest first.
        batched: with several levels, run every layer ONCE over all of them, their pixels
            packed side by side (:mod:`minirccn.nn.conv_levels`: 3 conv calls instead of
            ``3 L``); the weight gradients are then one sum over every level's pixels, equal
            to the per-level path's sum of sums up to rounding. ``False`` (and one level, the
            ``tiny`` preset's, always): :func:`rpn_forward` level by level.

    Returns:
        logits ``(N, M, k)`` (``k`` = 2, the two-way softmax, or 1, the sigmoid: the
        parameters' ``rpn.cls``), deltas ``(N, M, 4)`` with ``M = sum_l H_l W_l A`` (levels
        concatenated in order, as the anchors are), cache: :class:`LevelsRPNCache` (level by
        level) or :class:`PackedRPNCache` (batched).
    """
    if batched and len(maps) > 1:
        return _rpn_forward_packed(params, maps, backend)
    xp = get_array_module(maps[0])
    logits, deltas, caches, counts = [], [], [], []
    for m in maps:
        lg, dl, c = rpn_forward(params, m, backend=backend)
        logits.append(lg)
        deltas.append(dl)
        caches.append(c)
        counts.append(lg.shape[1])
    return (
        xp.concatenate(logits, axis=1),
        xp.concatenate(deltas, axis=1),
        LevelsRPNCache(caches, counts),
    )


def _rpn_forward_packed(params, maps, backend):
    """:func:`rpn_forward` on every level at once: the packed ``(N, C, P)`` levels seen as one
    ``P x 1`` map for the anchor order (level after level, location-major, then anchor)."""
    x = pack_levels(maps)
    n, p = x.data.shape[0], x.data.shape[2]
    a = params["rpn.bbox.w"].shape[0] // 4
    k = params["rpn.cls.w"].shape[0] // a  # 2 (softmax) or 1 (sigmoid objectness)
    t, conv_cache = conv2d_levels_forward(  # the 3x3 conv and its ReLU
        x, params["rpn.conv.w"], params["rpn.conv.b"], 1, 1, relu=True, backend=backend
    )
    cls, cls_cache = conv2d_levels_forward(
        t, params["rpn.cls.w"], params["rpn.cls.b"], backend=backend
    )
    box, bbox_cache = conv2d_levels_forward(
        t, params["rpn.bbox.w"], params["rpn.bbox.b"], backend=backend
    )
    logits = _to_anchor_order(cls.data.reshape(n, k * a, p, 1), n, a, k)
    deltas = _to_anchor_order(box.data.reshape(n, 4 * a, p, 1), n, a, 4)
    counts = [h * w * a for h, w in x.sizes]
    cache = PackedRPNCache(conv_cache, cls_cache, bbox_cache, x.sizes, a, counts)
    return logits, deltas, cache


def rpn_backward_levels(dlogits, ddeltas, cache: LevelsRPNCache):
    """Backward of :func:`rpn_forward_levels`: the gradients are cut back into levels, each
    goes through the shared head's backward, and the head's parameter gradients are the SUM
    over levels (one set of weights used on every level).

    Returns:
        dmaps: the gradient of each level's map; grads: ``rpn.*`` gradients.
    """
    if isinstance(cache, PackedRPNCache):
        return _rpn_backward_packed(dlogits, ddeltas, cache)
    dmaps, grads = [], {}
    start = 0
    for c, m in zip(cache.levels, cache.counts):
        dm, g = rpn_backward(dlogits[:, start : start + m], ddeltas[:, start : start + m], c)
        start += m
        dmaps.append(dm)
        for k, v in g.items():
            grads[k] = v if k not in grads else grads[k] + v
    return dmaps, grads


def _rpn_backward_packed(dlogits, ddeltas, cache: PackedRPNCache):
    """Backward of :func:`_rpn_forward_packed`: every layer once over all the levels."""
    n, a, sizes = dlogits.shape[0], cache.num_anchors, cache.sizes
    k = dlogits.shape[-1]  # 2 (softmax) or 1 (sigmoid objectness)
    p = sum(h * w for h, w in sizes)
    dcls = _from_anchor_order(dlogits, n, a, k, p, 1).reshape(n, k * a, p)
    dbox = _from_anchor_order(ddeltas, n, a, 4, p, 1).reshape(n, 4 * a, p)
    dt_cls, dw_cls, db_cls = conv2d_levels_backward(Packed(dcls, sizes), cache.cls)
    dt_box, dw_box, db_box = conv2d_levels_backward(Packed(dbox, sizes), cache.bbox)
    dt = Packed(dt_cls.data + dt_box.data, sizes)
    dx, dw_conv, db_conv = conv2d_levels_backward(dt, cache.conv)  # the ReLU, then the conv
    xp = get_array_module(dx.data)
    grads = _named_grads(conv=(dw_conv, db_conv), cls=(dw_cls, db_cls), bbox=(dw_box, db_box))
    return [xp.ascontiguousarray(m) for m in unpack_levels(dx)], grads
