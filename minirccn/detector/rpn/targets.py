"""Which anchors the RPN should call "object", and where their boxes should move.

Not differentiable: everything here returns plain arrays that the losses treat
as constants. It runs on the host (NumPy) because the sampling draws random
numbers from a ``numpy.random.Generator`` and its result sizes depend on the
data; the arrays involved are small (one row per anchor).

The rule (paper Sec. 3.1.2), with the two pieces of :mod:`minirccn.detector.matching`:

1. :class:`~minirccn.detector.matching.Matcher` on ``iou = box_iou(anchors, gt)``
   ``(M, G)`` with ``high_threshold = fg_iou_thresh`` (0.7), ``low_threshold =
   bg_iou_thresh`` (0.3) and ``allow_low_quality_matches=True``: an anchor whose
   best IoU is ``>= 0.7`` is positive (1), ``< 0.3`` negative (0), in between
   ignored (-1); and for each ground truth, the anchor(s) with its highest IoU
   (all ties) are positive too, so that every object has an anchor even when no
   anchor reaches 0.7 (a tiny object, or one larger than every anchor). A ground
   truth that overlaps no anchor at all (IoU 0 everywhere) gets none.
2. Optionally (``allowed_border >= 0``) anchors crossing the image border by
   more than ``allowed_border`` pixels are ignored (paper: 0, at training).
3. :class:`~minirccn.detector.matching.BalancedPositiveNegativeSampler`: at most
   ``batch_size_per_image`` (256) labels, at most ``positive_fraction`` (0.5) of them
   positive, uniformly at random; the rest become -1.
4. Regression targets ``encode_boxes(gt[matched], anchors)`` (weights 1, 1, 1, 1)
   on the sampled positives.

An image with no ground truth: every anchor is negative before sampling.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.detector.anchors import anchors_inside
from minirccn.detector.matching import (
    BELOW_LOW_THRESHOLD,
    BalancedPositiveNegativeSampler,
    Matcher,
)


#: the config fields (with their prefix) that :meth:`from_config` reads
_FIELDS = ("fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction", "allowed_border")


class AnchorTargetCreator:
    """Labels and regression targets of one image's anchors, for the RPN losses.

    Args:
        fg_iou_thresh: best IoU >= this: positive.
        bg_iou_thresh: best IoU < this: negative.
        batch_size_per_image: anchors sampled per image.
        positive_fraction: at most this fraction of them positive.
        allowed_border: >= 0 ignores anchors reaching more than this many pixels
            outside the image; -1 keeps all anchors.

    Build it once (:meth:`from_config`), then call it with data only.
    """

    def __init__(
        self,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        allowed_border: int = -1,
    ):
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.allowed_border = allowed_border

    @classmethod
    def from_config(cls, config) -> "AnchorTargetCreator":
        """The creator of a :class:`~minirccn.config.FasterRCNNConfig` (its ``rpn_*`` fields)."""
        return cls(**prefixed(config, "rpn_", *_FIELDS))

    def label(self, anchors, gt_boxes, image_size=None, backend: str = "numpy"):
        """Every anchor's label before sampling, and its match (steps 1-2).

        Args:
            anchors: ``(M, 4)`` float boxes.
            gt_boxes: ``(G, 4)`` float boxes (``G`` may be 0).
            image_size: ``(height, width)``; needed only when ``allowed_border >= 0``.
            backend: ``"numpy"`` (the references) or ``"numba"`` (the IoU kernel on
                ``(G, M)``, transposed, and the one-pass matcher on these host arrays): the
                same numbers (IoU is symmetric operation for operation).

        Returns:
            labels: ``(M,)`` int64 in {1, 0, -1}.
            matches: ``(M,)`` int64 of the :class:`~minirccn.detector.matching.Matcher`:
                the ground-truth index of each positive anchor, -1 / -2 for the others.
        """
        anchors = np.asarray(anchors)
        gt_boxes = np.asarray(gt_boxes, dtype=anchors.dtype).reshape(-1, 4)
        iou = ops.box_iou(gt_boxes, anchors, backend=backend).T  # (M, G)
        matches = self.matcher(iou, backend)
        labels = np.where(matches >= 0, 1, np.where(matches == BELOW_LOW_THRESHOLD, 0, -1))
        if self.allowed_border >= 0:
            labels[~anchors_inside(anchors, image_size, self.allowed_border)] = -1
        return labels.astype(np.int64), matches

    def sample(self, labels, rng: np.random.Generator):
        """``labels`` with all but the sampled anchors set to -1 (step 3).

        Args:
            labels: ``(M,)`` int64 in {1, 0, -1}.
            rng: the source of the draws.

        Returns:
            ``(M,)`` int64 labels with at most ``batch_size_per_image`` entries >= 0.
        """
        pos, neg = self.sampler(labels, rng)
        out = np.full_like(np.asarray(labels), -1)
        out[pos] = 1
        out[neg] = 0
        return out

    def __call__(self, anchors, gt_boxes, image_size, rng: np.random.Generator, backend: str = "numpy"):
        """Sampled labels and regression targets of one image's anchors.

        Args:
            anchors: ``(M, 4)`` float boxes in input-image pixels.
            gt_boxes: ``(G, 4)`` float ground-truth boxes (``G`` may be 0).
            image_size: ``(height, width)`` of the input image.
            rng: ``numpy.random.Generator`` for the sampling.
            backend: of the IoU and the matcher (:meth:`label`).

        Returns:
            labels: ``(M,)`` int64 in {1, 0, -1} (at most ``batch_size_per_image`` >= 0).
            targets: ``(M, 4)`` anchors' dtype: ``encode_boxes(gt[matched], anchors)``
                with weights (1, 1, 1, 1) on the positive samples; zero elsewhere.
        """
        anchors = np.asarray(anchors)
        gt_boxes = np.asarray(gt_boxes, dtype=anchors.dtype).reshape(-1, 4)
        labels, matches = self.label(anchors, gt_boxes, image_size, backend)
        labels = self.sample(labels, rng)
        targets = np.zeros_like(anchors)
        pos = np.nonzero(labels == 1)[0]
        if pos.size:
            targets[pos] = ops.encode_boxes(gt_boxes[matches[pos]], anchors[pos], backend="numpy")
        return labels, targets
