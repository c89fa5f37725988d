"""Box coding: a box as four deltas relative to another box (R-CNN's parametrisation).

The networks never predict box corners. They predict how to move and resize a
known box ``p`` (an anchor, or a proposal) onto the target ``g``::

    pw = px2 - px1          pcx = px1 + 0.5 * pw        (same for h / y)
    dx = wx * (gcx - pcx) / pw                          dw = ww * log(gw / pw)
    dy = wy * (gcy - pcy) / ph                          dh = wh * log(gh / ph)

Decoding inverts it, clamping ``dw, dh`` (after dividing by the weights) at
``log(1000 / 16)`` so that ``exp`` cannot overflow on a wild prediction::

    cx = dx / wx * pw + pcx         w = exp(min(dw / ww, log(1000/16))) * pw
    x1 = cx - 0.5 * w               x2 = cx + 0.5 * w      (same for y / h)

These are torchvision's ``BoxCoder.encode_single`` / ``decode_single``, with
natural logarithms. The weights ``(wx, wy, ww, wh)`` scale the deltas to unit
variance: ``(1, 1, 1, 1)`` for the RPN, ``(10, 10, 5, 5)`` for the box head.

Arithmetic is done in the common dtype of the inputs. Both ops are elementwise
and cheap, so every backend runs this NumPy code (on CuPy arrays for ``cuda``
on a GPU; see :mod:`minirccn.core.dispatch`); there are no kernels. A box of zero
width or height gives ``inf`` or NaN deltas, as in torchvision (drop such boxes
first).
"""

from __future__ import annotations

import math

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_boxes, check_float, check_positive, check_shape, same_module
from minirccn.core.dispatch import kernel

#: clamp of ``dw``, ``dh`` in :func:`decode_boxes`: a box grows at most 1000/16 times
BBOX_XFORM_CLIP = math.log(1000.0 / 16)

# ----------------------------------------------------------------------------- references


def _centre_size(boxes):
    """``(cx, cy, w, h)`` of ``(N, 4)`` boxes, each ``(N,)`` of the boxes' dtype."""
    t = boxes.dtype.type
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + t(0.5) * widths, boxes[:, 1] + t(0.5) * heights, widths, heights


def encode_boxes_reference(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    """Deltas that move each proposal onto its reference box (formula in the module docstring).

    Args:
        reference_boxes: ``(N, 4)`` float, the targets ``g`` (e.g. matched ground truth).
        proposals: ``(N, 4)`` float, the boxes ``p`` the deltas are relative to;
            same dtype as ``reference_boxes``.
        weights: ``(wx, wy, ww, wh)`` numbers.

    Returns:
        ``(N, 4)`` ``(dx, dy, dw, dh)``, the inputs' dtype.
    """
    xp = _backend.get_array_module(proposals)
    t = proposals.dtype.type
    wx, wy, ww, wh = (t(w) for w in weights)
    pcx, pcy, pw, ph = _centre_size(proposals)
    gcx, gcy, gw, gh = _centre_size(reference_boxes)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero-size boxes: inf/NaN, no warning
        dx = wx * (gcx - pcx) / pw
        dy = wy * (gcy - pcy) / ph
        dw = ww * xp.log(gw / pw)
        dh = wh * xp.log(gh / ph)
    return xp.stack([dx, dy, dw, dh], axis=1)


def decode_boxes_reference(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """Apply deltas to boxes: the inverse of :func:`encode_boxes_reference`, with the clamp.

    Args:
        deltas: ``(N, 4 K)`` float ``(dx, dy, dw, dh)`` per box and per class
            (``K = 1`` for the RPN, ``K`` classes in the box head).
        boxes: ``(N, 4)`` float, same dtype as ``deltas``.
        weights: ``(wx, wy, ww, wh)`` numbers.

    Returns:
        ``(N, 4 K)`` ``(x1, y1, x2, y2)`` per class, the inputs' dtype.
    """
    xp = _backend.get_array_module(deltas)
    t = deltas.dtype.type
    wx, wy, ww, wh = (t(w) for w in weights)
    pcx, pcy, pw, ph = (v[:, None] for v in _centre_size(boxes))  # each (N, 1)
    dx = deltas[:, 0::4] / wx  # (N, K)
    dy = deltas[:, 1::4] / wy
    dw = xp.minimum(deltas[:, 2::4] / ww, t(BBOX_XFORM_CLIP))
    dh = xp.minimum(deltas[:, 3::4] / wh, t(BBOX_XFORM_CLIP))
    cx = dx * pw + pcx
    cy = dy * ph + pcy
    half_w = t(0.5) * (xp.exp(dw) * pw)
    half_h = t(0.5) * (xp.exp(dh) * ph)
    out = xp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=2)  # (N, K, 4)
    return out.reshape(deltas.shape)


# ----------------------------------------------------------------------------- public ops


def encode_boxes(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0), *, backend=None):
    """Deltas moving ``proposals`` onto ``reference_boxes`` (torchvision ``encode_single``).

    Args:
        reference_boxes: ``(N, 4)`` float32 or float64, the target boxes.
        proposals: ``(N, 4)`` float32 or float64, the anchors / proposals.
        weights: four positive numbers ``(wx, wy, ww, wh)``.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (all run the reference).

    Returns:
        ``(N, 4)`` deltas ``(dx, dy, dw, dh)`` in the inputs' common dtype.
    """
    reference_boxes = check_boxes(reference_boxes, "reference_boxes")
    proposals = check_shape(
        check_boxes(proposals, "proposals"), "proposals", (reference_boxes.shape[0], 4)
    )
    same_module("reference_boxes", reference_boxes, "proposals", proposals)
    weights = _check_weights(weights)
    name, reference_boxes, proposals = _common(backend, reference_boxes, proposals)
    return kernel("encode_boxes", name)(reference_boxes, proposals, weights)


def decode_boxes(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0), *, backend=None):
    """Boxes from deltas (torchvision ``decode_single``); ``dw, dh`` clamped at ``log(1000/16)``.

    Args:
        deltas: ``(N, 4 K)`` float32 or float64, ``K >= 1`` sets of ``(dx, dy, dw, dh)``.
        boxes: ``(N, 4)`` float32 or float64, the anchors / proposals.
        weights: four positive numbers ``(wx, wy, ww, wh)``.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (all run the reference).

    Returns:
        ``(N, 4 K)`` boxes ``(x1, y1, x2, y2)`` per set, in the inputs' common dtype.
    """
    deltas = check_float(deltas, "deltas")
    if deltas.ndim != 2 or deltas.shape[1] == 0 or deltas.shape[1] % 4:
        raise ValueError(
            f"deltas: expected shape (N, 4 * K) with K >= 1, got {tuple(deltas.shape)}"
        )
    boxes = check_shape(check_boxes(boxes, "boxes"), "boxes", (deltas.shape[0], 4))
    same_module("deltas", deltas, "boxes", boxes)
    weights = _check_weights(weights)
    name, deltas, boxes = _common(backend, deltas, boxes)
    return kernel("decode_boxes", name)(deltas, boxes, weights)


def _common(backend, a, b):
    """``(backend name, a, b)``: both arrays on the resolved backend, in their common dtype."""
    name = _backend.resolve(backend, a, b)
    dtype = np.result_type(a.dtype, b.dtype)
    return (name, *(_backend.to_backend(x, name).astype(dtype, copy=False) for x in (a, b)))


def _check_weights(weights) -> tuple[float, float, float, float]:
    """``weights`` as four positive floats, or a ``ValueError``/``TypeError`` naming it."""
    try:
        values = tuple(weights)
    except TypeError:
        raise TypeError(
            f"weights: expected four numbers (wx, wy, ww, wh), got {weights!r}"
        ) from None
    if len(values) != 4:
        raise ValueError(f"weights: expected four numbers (wx, wy, ww, wh), got {weights!r}")
    return tuple(check_positive(w, "weights") for w in values)
