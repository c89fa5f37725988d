"""Which proposals the RoI head trains on, with their class and box targets.

Not differentiable: returns plain arrays that the head's losses treat as
constants. Runs on the host (NumPy): the sampling draws from a
``numpy.random.Generator`` and its sizes depend on the data; the arrays are
small (a few hundred proposals).

Per image (Fast R-CNN Sec. 2.3; torchvision's ``RoIHeads.select_training_samples``):

1. append the ground-truth boxes to the proposals (so the head always sees
   some perfect foreground, even before the RPN has learned anything);
2. ``iou = box_iou(proposals, gt)``; each proposal's best ground truth
   ``matched`` and IoU ``best``;
3. foreground: ``best >= fg_thresh`` (0.5), label = the ground truth's class;
   background: ``bg_lo <= best < bg_thresh`` ([0.0, 0.5)), label 0; others are
   ignored. No ground truth: every proposal is background;
4. sample at most ``batch_size`` (128) RoIs, at most ``positive_fraction``
   (25 %) foreground, uniformly at random without replacement;
5. regression targets ``encode_boxes(gt[matched], rois, weights)`` with weights
   (10, 10, 5, 5): dividing the deltas by their typical spread, so the box loss
   has a scale comparable with the classification loss.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops


def label_proposals(
    proposals,
    gt_boxes,
    gt_labels,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.5,
    bg_iou_lo: float = 0.0,
):
    """Class label (or -1: ignored) and best ground truth of each proposal (steps 2-3).

    Args:
        proposals: ``(P, 4)`` float boxes (ground truth already appended).
        gt_boxes: ``(G, 4)`` float boxes.
        gt_labels: ``(G,)`` int64 classes in 1..K-1.
        fg_iou_thresh, bg_iou_thresh, bg_iou_lo: see the module docstring.

    Returns:
        labels: ``(P,)`` int64: class >= 1 foreground, 0 background, -1 ignored.
        matched: ``(P,)`` int64 index of the best ground truth (0 if ``G = 0``).
    """
    p = proposals.shape[0]
    if gt_boxes.shape[0] == 0:
        return np.zeros(p, dtype=np.int64), np.zeros(p, dtype=np.int64)
    iou = ops.box_iou(proposals, gt_boxes, backend="numpy")  # (P, G)
    matched = iou.argmax(axis=1) if p else np.zeros(0, dtype=np.int64)
    best = iou[np.arange(p), matched]
    labels = np.full(p, -1, dtype=np.int64)
    labels[(best >= bg_iou_lo) & (best < bg_iou_thresh)] = 0
    fg = best >= fg_iou_thresh
    labels[fg] = np.asarray(gt_labels, dtype=np.int64)[matched[fg]]
    return labels, matched.astype(np.int64)


def sample_rois(labels, batch_size: int, positive_fraction: float, rng: np.random.Generator):
    """Indices of the sampled RoIs, foreground first (step 4).

    Args:
        labels: ``(P,)`` int64 from :func:`label_proposals`.
        batch_size: RoIs kept at most.
        positive_fraction: at most ``int(batch_size * positive_fraction)`` foreground.
        rng: the source of randomness.

    Returns:
        ``(S,)`` int64 indices, ``S <= batch_size``.
    """
    fg = np.nonzero(labels >= 1)[0]
    bg = np.nonzero(labels == 0)[0]
    num_fg = min(fg.size, int(batch_size * positive_fraction))
    num_bg = min(bg.size, batch_size - num_fg)
    keep_fg = fg[rng.permutation(fg.size)[:num_fg]]
    keep_bg = bg[rng.permutation(bg.size)[:num_bg]]
    return np.concatenate([keep_fg, keep_bg]).astype(np.int64)


def proposal_targets(
    proposals,
    gt_boxes,
    gt_labels,
    rng: np.random.Generator,
    *,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.5,
    bg_iou_lo: float = 0.0,
    batch_size: int = 128,
    positive_fraction: float = 0.25,
    weights=(10.0, 10.0, 5.0, 5.0),
):
    """Sampled RoIs of one image with their class labels and regression targets.

    Args:
        proposals: ``(P, 4)`` float proposals from the RPN (``P`` may be 0).
        gt_boxes: ``(G, 4)`` float ground truth (``G`` may be 0).
        gt_labels: ``(G,)`` int64 classes in 1..K-1.
        rng: ``numpy.random.Generator`` for the sampling.
        weights: ``(wx, wy, ww, wh)`` of :func:`minirccn.ops.encode_boxes`.

    Returns:
        rois: ``(S, 4)`` proposals' dtype, the sampled boxes (foreground first).
        labels: ``(S,)`` int64, 0 background or the class 1..K-1.
        targets: ``(S, 4)`` proposals' dtype, encoded ground truth (zero for background).
    """
    proposals = np.asarray(proposals)
    dtype = proposals.dtype
    gt_boxes = np.asarray(gt_boxes, dtype=dtype).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    boxes = np.concatenate([proposals, gt_boxes], axis=0)
    labels, matched = label_proposals(
        boxes, gt_boxes, gt_labels, fg_iou_thresh, bg_iou_thresh, bg_iou_lo
    )
    keep = sample_rois(labels, batch_size, positive_fraction, rng)
    rois, labels, matched = boxes[keep], labels[keep], matched[keep]
    targets = np.zeros_like(rois)
    fg = np.nonzero(labels >= 1)[0]
    if fg.size:
        targets[fg] = ops.encode_boxes(gt_boxes[matched[fg]], rois[fg], weights, backend="numpy")
    return rois, labels, targets
