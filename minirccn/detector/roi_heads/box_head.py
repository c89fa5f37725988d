"""The RoI head (Fast R-CNN): classify each RoI and refine its box, per class.

Forward, for ``R`` RoIs on a feature map ``(N, C, H, W)``::

    RoI pooling   -> (R, C, 7, 7) -> flatten (R, C*49)   max pool or RoIAlign (poolers.py)
    fc6 -> ReLU [-> dropout]      -> (R, D)            "head.fc6"
    fc7 -> ReLU [-> dropout]      -> (R, D)            "head.fc7"
    cls                           -> (R, K)   class scores            "head.cls"
    bbox                          -> (R, 4K)  deltas, 4 per class      "head.bbox"

Losses (Fast R-CNN Eq. 1, normalised as torchvision does):

* ``loss_classifier`` = softmax cross-entropy averaged over the sampled RoIs;
* ``loss_box_reg`` = smooth-L1 (beta 1/9) summed over the foreground RoIs' four
  deltas *of their own class*, divided by the number of sampled RoIs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.core.backend import get_array_module
from minirccn.detector.roi_heads.poolers import RoIPooler
from minirccn.nn import layers, losses


def init_head(
    in_channels: int,
    num_classes: int,
    representation_size: int,
    rng,
    roi_output_size: int = 7,
    dtype="float32",
) -> dict:
    """Head parameters.

    fc6 / fc7 weights ~ N(0, 2 / fan_in) (He, they feed ReLUs); ``cls`` weights
    ~ N(0, 0.01^2) and ``bbox`` weights ~ N(0, 0.001^2) (as the paper); biases 0.

    Args:
        in_channels: ``C`` of the feature map.
        num_classes: ``K`` including background.
        representation_size: ``D``, width of fc6 and fc7.
        rng: ``numpy.random.Generator``.
        roi_output_size: pooled size ``P`` (7).
        dtype: parameter dtype.

    Returns:
        dict: ``head.fc6.w`` (C*P*P, D), ``head.fc6.b`` (D,), ``head.fc7.w`` (D, D),
        ``head.fc7.b`` (D,), ``head.cls.w`` (D, K), ``head.cls.b`` (K,),
        ``head.bbox.w`` (D, 4K), ``head.bbox.b`` (4K,).
    """
    d_in = in_channels * roi_output_size * roi_output_size
    d = representation_size

    def normal(std, *shape):
        return (rng.standard_normal(shape) * std).astype(dtype)

    return {
        "head.fc6.w": normal(np.sqrt(2.0 / d_in), d_in, d),
        "head.fc6.b": np.zeros(d, dtype),
        "head.fc7.w": normal(np.sqrt(2.0 / d), d, d),
        "head.fc7.b": np.zeros(d, dtype),
        "head.cls.w": normal(0.01, d, num_classes),
        "head.cls.b": np.zeros(num_classes, dtype),
        "head.bbox.w": normal(0.001, d, 4 * num_classes),
        "head.bbox.b": np.zeros(4 * num_classes, dtype),
    }


class BoxHeadCache(NamedTuple):
    """What :func:`box_head_backward` needs: one cache per fc layer (``None`` for an absent
    dropout)."""

    fc6: tuple
    relu6: tuple
    drop6: tuple | None
    fc7: tuple
    relu7: tuple
    drop7: tuple | None
    cls: tuple
    bbox: tuple


class HeadCache(NamedTuple):
    """What :func:`head_backward` needs: the pooling's cache, the pooled shape, the fc layers'."""

    pool: tuple
    pooled_shape: tuple
    box: BoxHeadCache


def box_head_forward(params: dict, x, *, dropout: float = 0.0, rng=None, backend=None):
    """The fc part of the head on pooled RoI features (torchvision's ``TwoMLPHead`` +
    ``FastRCNNPredictor``), whatever pooled them.

    Args:
        params: from :func:`init_head`.
        x: ``(R, C*P*P)`` float flattened pooled features.
        dropout, rng, backend: as :func:`head_forward`.

    Returns:
        class_logits: ``(R, K)``; box_deltas: ``(R, 4K)``; cache: :class:`BoxHeadCache`.
    """
    x, fc6 = layers.linear_forward(x, params["head.fc6.w"], params["head.fc6.b"], backend=backend)
    x, relu6 = layers.relu_forward(x)
    drop6 = None
    if dropout > 0:
        x, drop6 = layers.dropout_forward(x, dropout, rng)
    x, fc7 = layers.linear_forward(x, params["head.fc7.w"], params["head.fc7.b"], backend=backend)
    x, relu7 = layers.relu_forward(x)
    drop7 = None
    if dropout > 0:
        x, drop7 = layers.dropout_forward(x, dropout, rng)
    class_logits, cls = layers.linear_forward(
        x, params["head.cls.w"], params["head.cls.b"], backend=backend
    )
    box_deltas, bbox = layers.linear_forward(
        x, params["head.bbox.w"], params["head.bbox.b"], backend=backend
    )
    return class_logits, box_deltas, BoxHeadCache(fc6, relu6, drop6, fc7, relu7, drop7, cls, bbox)


def head_forward(
    params: dict,
    features,
    rois,
    spatial_scale: float,
    *,
    output_size: int = 7,
    dropout: float = 0.0,
    rng=None,
    backend=None,
    pooler: RoIPooler | None = None,
):
    """Class scores and per-class deltas of each RoI.

    Args:
        params: from :func:`init_head`.
        features: ``(N, C, H, W)`` float feature map.
        rois: ``(R, 5)`` float rows ``(batch_index, x1, y1, x2, y2)`` in input pixels.
        spatial_scale: ``1 / stride`` of the feature map.
        output_size: pooled size (7) of the default pooler.
        dropout: drop probability after fc6 and fc7 (0: no dropout, e.g. at inference).
        rng: ``numpy.random.Generator`` for the dropout masks (needed if ``dropout > 0``).
        backend: backend of RoI pooling and the layers.
        pooler: a :class:`~minirccn.detector.roi_heads.poolers.RoIPooler` (default: RoI max pooling
            to ``output_size``).

    Returns:
        class_logits: ``(R, K)``; box_deltas: ``(R, 4K)``; cache: :class:`HeadCache`.
    """
    pooler = pooler if pooler is not None else RoIPooler("roi_pool", output_size)
    pooled, pool_cache = pooler.forward(features, rois, spatial_scale, backend=backend)
    r, c, ph, pw = pooled.shape
    x = pooled.reshape(r, c * ph * pw)  # explicit: R may be 0
    class_logits, box_deltas, box = box_head_forward(
        params, x, dropout=dropout, rng=rng, backend=backend
    )
    return class_logits, box_deltas, HeadCache(pool_cache, pooled.shape, box)


def head_losses(class_logits, box_deltas, labels, regression_targets, beta: float = 1.0 / 9):
    """The two head losses and their gradients.

    Args:
        class_logits: ``(R, K)`` float.
        box_deltas: ``(R, 4K)`` float.
        labels: ``(R,)`` int64 in 0..K-1 (0 background).
        regression_targets: ``(R, 4)`` float targets of each RoI (used where label >= 1).
        beta: smooth-L1 beta.

    Returns:
        loss_classifier, loss_box_reg: Python floats.
        dlogits: ``(R, K)``; ddeltas: ``(R, 4K)`` (non-zero only in each foreground
        RoI's own class's four columns).

    ``loss_classifier = mean_r -log softmax(logits_r)[label_r]``;
    ``loss_box_reg = sum_{r: label_r >= 1} smooth_l1(deltas_r[4 label_r : 4 label_r + 4] - t_r) / R``.
    With ``R = 0`` both are 0.
    """
    xp = get_array_module(class_logits)
    r = class_logits.shape[0]
    if r == 0:
        return 0.0, 0.0, xp.zeros_like(class_logits), xp.zeros_like(box_deltas)
    loss_cls, dlogits = losses.softmax_cross_entropy(class_logits, labels)
    ddeltas = xp.zeros_like(box_deltas)
    fg = xp.nonzero(labels >= 1)[0]
    loss_box = 0.0
    if fg.size:
        cols = 4 * labels[fg][:, None] + xp.arange(4)[None, :]  # (F, 4)
        pred = box_deltas[fg[:, None], cols]
        loss_box, dpred = losses.smooth_l1(pred, regression_targets[fg], beta=beta)
        loss_box = float(loss_box) / r
        ddeltas[fg[:, None], cols] = dpred / r
    return float(loss_cls), loss_box, dlogits, ddeltas


def box_head_backward(dlogits, ddeltas, cache: BoxHeadCache):
    """Backward of :func:`box_head_forward`, in reverse order of the forward.

    Returns:
        dx: ``(R, C*P*P)`` gradient w.r.t. the flattened pooled features;
        grads: dict with the same keys as the head parameters.
    """
    dx_cls, dw_cls, db_cls = layers.linear_backward(dlogits, cache.cls)
    dx_box, dw_box, db_box = layers.linear_backward(ddeltas, cache.bbox)
    dx = dx_cls + dx_box
    if cache.drop7 is not None:
        dx = layers.dropout_backward(dx, cache.drop7)
    dx = layers.relu_backward(dx, cache.relu7)
    dx, dw7, db7 = layers.linear_backward(dx, cache.fc7)
    if cache.drop6 is not None:
        dx = layers.dropout_backward(dx, cache.drop6)
    dx = layers.relu_backward(dx, cache.relu6)
    dx, dw6, db6 = layers.linear_backward(dx, cache.fc6)
    grads = {
        "head.fc6.w": dw6,
        "head.fc6.b": db6,
        "head.fc7.w": dw7,
        "head.fc7.b": db7,
        "head.cls.w": dw_cls,
        "head.cls.b": db_cls,
        "head.bbox.w": dw_box,
        "head.bbox.b": db_box,
    }
    return dx, grads


def head_backward(dlogits, ddeltas, cache: HeadCache):
    """Backward of :func:`head_forward`, in reverse order of the forward.

    Args:
        dlogits: ``(R, K)`` gradient w.r.t. the class scores.
        ddeltas: ``(R, 4K)`` gradient w.r.t. the box deltas.
        cache: from :func:`head_forward`.

    Returns:
        dfeatures: ``(N, C, H, W)`` gradient w.r.t. the feature map.
        grads: dict with the same keys as the head parameters.
    """
    dx, grads = box_head_backward(dlogits, ddeltas, cache.box)
    dfeatures = RoIPooler.backward(dx.reshape(cache.pooled_shape), cache.pool)
    return dfeatures, grads
