"""Which anchors the RPN should call "object", and where their boxes should move.

Not differentiable: everything here returns plain arrays that the losses treat
as constants. It runs on the host (NumPy) because the sampling draws random
numbers from a ``numpy.random.Generator`` and its result sizes depend on the
data; the arrays involved are small (one row per anchor).

The rule (paper Sec. 3.1.2; torchvision's ``Matcher`` with
``allow_low_quality_matches=True`` and ``BalancedPositiveNegativeSampler``):

1. ``iou = box_iou(anchors, gt)``, ``(M, G)``. For each anchor, its best
   ground truth ``matched = argmax_g iou`` and ``best = max_g iou``.
2. ``best >= fg_thresh`` (0.7): positive (1). ``best < bg_thresh`` (0.3):
   negative (0). Otherwise: ignored (-1).
3. For each ground truth, the anchor(s) with its highest IoU (all ties) are
   positive too, so that every object has an anchor even when no anchor
   reaches 0.7 (a tiny object, or one larger than every anchor). A ground truth
   that overlaps no anchor at all (IoU 0 everywhere) gets none.
4. Optionally (``allowed_border >= 0``) anchors crossing the image border by
   more than ``allowed_border`` pixels are ignored (paper: 0, at training).
5. Sample at most ``batch_size`` labels, at most ``positive_fraction`` of them
   positive, uniformly at random; the rest become -1.

An image with no ground truth: every anchor is negative before sampling.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.detector.anchors import anchors_inside


def assign_anchors(
    anchors, gt_boxes, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3, valid=None
):
    """Label every anchor 1 / 0 / -1 and name its best ground truth (steps 1-4 above).

    Args:
        anchors: ``(M, 4)`` float boxes.
        gt_boxes: ``(G, 4)`` float boxes (``G`` may be 0).
        fg_iou_thresh, bg_iou_thresh: the two IoU thresholds.
        valid: optional ``(M,)`` bool; anchors where it is False are ignored (-1).

    Returns:
        labels: ``(M,)`` int64 in {1, 0, -1}.
        matched: ``(M,)`` int64 index of each anchor's best ground truth (0 if ``G = 0``).
    """
    anchors = np.asarray(anchors)
    gt_boxes = np.asarray(gt_boxes)
    m = anchors.shape[0]
    labels = np.full(m, -1, dtype=np.int64)
    matched = np.zeros(m, dtype=np.int64)
    if gt_boxes.shape[0] == 0:
        labels[:] = 0
    elif m > 0:
        iou = ops.box_iou(anchors, gt_boxes.astype(anchors.dtype), backend="numpy")  # (M, G)
        matched = iou.argmax(axis=1)
        best = iou[np.arange(m), matched]
        labels[best < bg_iou_thresh] = 0
        labels[best >= fg_iou_thresh] = 1
        # each ground truth's best anchor(s), ties included, are positive
        gt_best = iou.max(axis=0)  # (G,)
        is_best = (iou == gt_best[None, :]) & (gt_best[None, :] > 0)
        labels[is_best.any(axis=1)] = 1
    if valid is not None:
        labels[~np.asarray(valid, dtype=bool)] = -1
    return labels, matched


def sample_labels(labels, batch_size: int, positive_fraction: float, rng: np.random.Generator):
    """Keep a random subset of the labelled anchors; set the others to -1 (step 5 above).

    Args:
        labels: ``(M,)`` int64 in {1, 0, -1}.
        batch_size: samples kept at most.
        positive_fraction: at most ``int(batch_size * positive_fraction)`` positives.
        rng: the source of randomness.

    Returns:
        ``(M,)`` int64 labels with at most ``batch_size`` entries >= 0.

    ``num_pos = min(#positives, int(batch_size * positive_fraction))`` and
    ``num_neg = min(#negatives, batch_size - num_pos)`` are drawn without
    replacement (``rng.permutation``), positives first.
    """
    labels = np.asarray(labels)
    pos = np.nonzero(labels == 1)[0]
    neg = np.nonzero(labels == 0)[0]
    num_pos = min(pos.size, int(batch_size * positive_fraction))
    num_neg = min(neg.size, batch_size - num_pos)
    keep_pos = pos[rng.permutation(pos.size)[:num_pos]]
    keep_neg = neg[rng.permutation(neg.size)[:num_neg]]
    out = np.full_like(labels, -1)
    out[keep_pos] = 1
    out[keep_neg] = 0
    return out


def anchor_targets(
    anchors,
    gt_boxes,
    image_size,
    rng: np.random.Generator,
    *,
    fg_iou_thresh: float = 0.7,
    bg_iou_thresh: float = 0.3,
    batch_size: int = 256,
    positive_fraction: float = 0.5,
    allowed_border: int = -1,
):
    """Sampled labels and regression targets of one image's anchors.

    Args:
        anchors: ``(M, 4)`` float boxes in input-image pixels.
        gt_boxes: ``(G, 4)`` float ground-truth boxes (``G`` may be 0).
        image_size: ``(height, width)`` of the input image.
        rng: ``numpy.random.Generator`` for the sampling.
        fg_iou_thresh, bg_iou_thresh, batch_size, positive_fraction: see the module docstring.
        allowed_border: >= 0 ignores anchors reaching more than this many pixels
            outside the image; -1 keeps all anchors.

    Returns:
        labels: ``(M,)`` int64 in {1, 0, -1} (at most ``batch_size`` entries >= 0).
        targets: ``(M, 4)`` anchors' dtype: ``encode_boxes(gt[matched], anchors)``
            with weights (1, 1, 1, 1) on the positive samples; zero elsewhere.
    """
    anchors = np.asarray(anchors)
    gt_boxes = np.asarray(gt_boxes, dtype=anchors.dtype).reshape(-1, 4)
    valid = None
    if allowed_border >= 0:
        valid = anchors_inside(anchors, image_size, allowed_border)
    labels, matched = assign_anchors(anchors, gt_boxes, fg_iou_thresh, bg_iou_thresh, valid)
    labels = sample_labels(labels, batch_size, positive_fraction, rng)
    targets = np.zeros_like(anchors)
    pos = np.nonzero(labels == 1)[0]
    if pos.size:
        targets[pos] = ops.encode_boxes(gt_boxes[matched[pos]], anchors[pos], backend="numpy")
    return labels, targets
