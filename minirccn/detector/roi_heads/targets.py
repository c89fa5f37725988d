"""Which proposals the RoI head trains on, with their class and box targets.

Not differentiable: returns plain arrays that the head's losses treat as
constants. Runs on the host (NumPy): the sampling draws from a
``numpy.random.Generator`` and its sizes depend on the data; the arrays are
small (a few hundred proposals).

Per image (Fast R-CNN Sec. 2.3; torchvision's ``RoIHeads.select_training_samples``),
with the two pieces of :mod:`minirccn.detector.matching`:

1. append the ground-truth boxes to the proposals (so the head always sees
   some perfect foreground, even before the RPN has learned anything);
2. :class:`~minirccn.detector.matching.Matcher` on ``iou = box_iou(proposals, gt)``
   with ``high_threshold = fg_iou_thresh`` (0.5), ``low_threshold = bg_iou_thresh``
   (0.5), no low-quality matches: foreground ``best >= fg_iou_thresh``, label = the
   ground truth's class; background ``bg_iou_lo <= best < bg_iou_thresh``
   ([0.0, 0.5)), label 0; others are ignored. No ground truth: every proposal is
   background;
3. :class:`~minirccn.detector.matching.BalancedPositiveNegativeSampler`: at most
   ``batch_size_per_image`` (128) RoIs, at most ``positive_fraction`` (25 %)
   foreground, uniformly at random without replacement, foreground first;
4. regression targets ``encode_boxes(gt[matched], rois, weights)`` with weights
   (10, 10, 5, 5): dividing the deltas by their typical spread, so the box loss
   has a scale comparable with the classification loss.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.detector.matching import (
    BELOW_LOW_THRESHOLD,
    BalancedPositiveNegativeSampler,
    Matcher,
)


#: the config fields (with their prefix) that :meth:`from_config` reads
_FIELDS = ("fg_iou_thresh", "bg_iou_thresh", "bg_iou_lo", "batch_size_per_image", "positive_fraction")


class ProposalTargetCreator:
    """Sampled RoIs of one image with their class labels and regression targets.

    Args:
        fg_iou_thresh: best IoU >= this: foreground.
        bg_iou_thresh: best IoU < this (and >= ``bg_iou_lo``): background.
        bg_iou_lo: low bound of the background IoU (Fast R-CNN used 0.1).
        batch_size_per_image: RoIs sampled per image.
        positive_fraction: at most this fraction of them foreground.
        weights: ``(wx, wy, ww, wh)`` of :func:`minirccn.ops.encode_boxes`.

    Build it once (:meth:`from_config`), then call it with data only.
    """

    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        bg_iou_lo: float = 0.0,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        weights=(10.0, 10.0, 5.0, 5.0),
    ):
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.bg_iou_lo = bg_iou_lo
        self.weights = tuple(weights)

    @classmethod
    def from_config(cls, config) -> "ProposalTargetCreator":
        """The creator of a :class:`~minirccn.config.FasterRCNNConfig` (``box_*`` fields and
        ``bbox_reg_weights``)."""
        return cls(**prefixed(config, "box_", *_FIELDS), weights=config.bbox_reg_weights)

    def label(self, boxes, gt_boxes, gt_labels):
        """Class label (or -1: ignored) and match of each box (step 2).

        Args:
            boxes: ``(P, 4)`` float boxes (ground truth already appended).
            gt_boxes: ``(G, 4)`` float boxes, same dtype.
            gt_labels: ``(G,)`` int64 classes in 1..K-1.

        Returns:
            labels: ``(P,)`` int64: class >= 1 foreground, 0 background, -1 ignored.
            matches: ``(P,)`` int64 of the :class:`~minirccn.detector.matching.Matcher`:
                the ground-truth index of each foreground box, -1 / -2 for the others.
        """
        p = boxes.shape[0]
        if gt_boxes.shape[0] == 0:
            return np.zeros(p, dtype=np.int64), np.full(p, BELOW_LOW_THRESHOLD, dtype=np.int64)
        iou = ops.box_iou(boxes, gt_boxes, backend="numpy")  # (P, G)
        matches = self.matcher(iou)
        labels = np.full(p, -1, dtype=np.int64)
        labels[(matches == BELOW_LOW_THRESHOLD) & (iou.max(axis=1) >= self.bg_iou_lo)] = 0
        fg = matches >= 0
        labels[fg] = np.asarray(gt_labels, dtype=np.int64)[matches[fg]]
        return labels, matches

    def __call__(self, proposals, gt_boxes, gt_labels, rng: np.random.Generator):
        """Sampled RoIs of one image (steps 1-4).

        Args:
            proposals: ``(P, 4)`` float proposals from the RPN (``P`` may be 0).
            gt_boxes: ``(G, 4)`` float ground truth (``G`` may be 0).
            gt_labels: ``(G,)`` int64 classes in 1..K-1.
            rng: ``numpy.random.Generator`` for the sampling.

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
        labels, matches = self.label(boxes, gt_boxes, gt_labels)
        fg, bg = self.sampler(labels, rng)
        keep = np.concatenate([fg, bg])
        rois, labels, matches = boxes[keep], labels[keep], matches[keep]
        targets = np.zeros_like(rois)
        fg = np.nonzero(labels >= 1)[0]
        if fg.size:
            targets[fg] = ops.encode_boxes(
                gt_boxes[matches[fg]], rois[fg], self.weights, backend="numpy"
            )
        return rois, labels, targets


def sample_rois(creator: ProposalTargetCreator, proposals, targets, rng, dtype):
    """The RoI head's training samples of a batch (host; draws from ``rng`` image by image).

    Args:
        creator: the :class:`ProposalTargetCreator`.
        proposals: ``N`` arrays ``(P_i, 4)``; targets: ``N`` dicts with ``boxes``, ``labels``.
        rng: the draws; dtype: of the boxes.

    Returns:
        ``rois (R, 5)`` (batch index first), ``labels (R,)`` int64, ``targets (R, 4)``,
        image 0's RoIs first.
    """
    rois, labels, regression = [], [], []
    for i, (boxes, t) in enumerate(zip(proposals, targets)):
        boxes = np.asarray(boxes, dtype=dtype).reshape(-1, 4)
        r, lab, reg = creator(boxes, t["boxes"], t["labels"], rng)
        rois.append(np.concatenate([np.full((r.shape[0], 1), i, dtype=r.dtype), r], axis=1))
        labels.append(lab)
        regression.append(reg)
    return np.concatenate(rois), np.concatenate(labels), np.concatenate(regression)
