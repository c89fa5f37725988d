"""Which anchors RetinaNet trains as which class, and where their boxes should move.

Not differentiable: plain host NumPy arrays that the losses treat as constants.

The rule (RetinaNet paper Sec. 4; torchvision's ``RetinaNet.compute_loss``), per image,
with the same :class:`~minirccn.detector.matching.Matcher` the two-stage targets use,
built as ``Matcher(0.5, 0.4, allow_low_quality_matches=True)``:

1. ``iou = box_iou(anchors, gt)`` ``(M, G)``; each anchor's best ground truth and its IoU.
2. best IoU ``>= 0.5``: **positive**, of its best ground truth's class;
   ``< 0.4``: **negative** (background); in ``[0.4, 0.5)``: **ignored** (no loss at all).
3. Each ground truth's best anchor(s) are positive too, even below 0.5 (so a small or
   oddly shaped object still trains some anchor).
4. An image with no ground truth: every anchor is negative.

No sampling: every positive and negative anchor contributes to the classification loss
(the focal loss keeps the ~thousands of easy negatives from dominating); only positives
get box targets, ``encode_boxes(gt[matched], anchors)`` with weights (1, 1, 1, 1).

The class output of an anchor is ``Kc = K - 1`` sigmoid logits, one per object class.
Its target is one-hot: a 1 in column ``label - 1`` of a positive, all zeros for a
negative (background is "no class"), not used for an ignored anchor
(:func:`onehot_targets`). That is how a ``(K x A)``-channel class map learns from
integer labels: the integer picks the one channel that should say "yes".
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.detector.matching import BETWEEN_THRESHOLDS, Matcher

IGNORED = -1  #: label of an anchor in between the thresholds (no loss)
BACKGROUND = 0  #: label of a negative anchor


class RetinaNetTargets:
    """Anchor labels and box targets of one image (see the module docstring).

    Args:
        fg_iou_thresh: best IoU ``>=`` this: positive (0.5).
        bg_iou_thresh: best IoU ``<`` this: negative (0.4); in between: ignored.
        allow_low_quality_matches: each ground truth's best anchor(s) are positive too.
        weights: box coder weights of the targets (RetinaNet: (1, 1, 1, 1)).

    The thresholds are fixed at construction (from the config); calls take data only.
    """

    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        allow_low_quality_matches: bool = True,
        weights=(1.0, 1.0, 1.0, 1.0),
    ):
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
        self.weights = tuple(float(w) for w in weights)

    @classmethod
    def from_config(cls, config) -> "RetinaNetTargets":
        """The targets of a :class:`~minirccn.config.FasterRCNNConfig` (its ``retina_*`` fields)."""
        names = ("fg_iou_thresh", "bg_iou_thresh", "allow_low_quality_matches")
        return cls(**prefixed(config, "retina_", *names))

    def __repr__(self) -> str:
        return f"RetinaNetTargets({self.matcher!r}, weights={self.weights})"

    def __call__(self, anchors, gt_boxes, gt_labels, backend: str = "numpy"):
        """Labels and regression targets of every anchor of one image.

        Args:
            anchors: ``(M, 4)`` float boxes (every level, concatenated).
            gt_boxes: ``(G, 4)`` float ground-truth boxes (``G`` may be 0).
            gt_labels: ``(G,)`` int classes in ``1..K-1``.
            backend: ``"numpy"`` (the references) or ``"numba"`` (the IoU and the matcher's
                kernels, on these host arrays): the same numbers either way. The IoU is
                computed as ``box_iou(gt, anchors)`` ``(G, M)`` and matched through its
                transpose: IoU is symmetric operation for operation (``min``, ``max``, the
                areas' sum commute), and ``G`` rows of ``M`` columns suit the kernel's
                vectorised rows.

        Returns:
            labels: ``(M,)`` int64: the class (``>= 1``) of a positive anchor,
                :data:`BACKGROUND` (0) for a negative one, :data:`IGNORED` (-1) in between.
            box_targets: ``(M, 4)`` anchors' dtype: ``encode_boxes(gt[matched], anchor)``
                on the positives, 0 elsewhere.
            matches: ``(M,)`` int64: the :class:`Matcher`'s output (a ground-truth index,
                ``BELOW_LOW_THRESHOLD`` or ``BETWEEN_THRESHOLDS``).
        """
        anchors = np.asarray(anchors)
        gt_boxes = np.asarray(gt_boxes, dtype=anchors.dtype).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        if gt_labels.shape[0] != gt_boxes.shape[0]:
            raise ValueError(
                f"gt_labels: expected {gt_boxes.shape[0]} labels (one per box), "
                f"got {gt_labels.shape[0]}"
            )
        m = anchors.shape[0]
        iou = ops.box_iou(gt_boxes, anchors, backend=backend).T if gt_boxes.shape[0] else None
        matches = (
            self.matcher(iou, backend)
            if iou is not None
            else self.matcher(np.zeros((m, 0), anchors.dtype))
        )
        labels = np.full(m, BACKGROUND, dtype=np.int64)
        labels[matches == BETWEEN_THRESHOLDS] = IGNORED
        pos = np.nonzero(matches >= 0)[0]
        labels[pos] = gt_labels[matches[pos]]
        box_targets = np.zeros_like(anchors)
        if pos.size:
            box_targets[pos] = ops.encode_boxes(
                gt_boxes[matches[pos]], anchors[pos], self.weights, backend="numpy"
            )
        return labels, box_targets, matches


def onehot_targets(labels, num_classes: int, dtype=np.float32):
    """The class-output targets of anchor labels: one sigmoid target per object class.

    Args:
        labels: ``(M,)`` int: ``c >= 1`` positive of class ``c``, 0 negative, -1 ignored.
        num_classes: ``Kc``, object classes (no background column).
        dtype: of the result.

    Returns:
        ``(M, Kc)``: row ``i`` is all zeros unless ``labels[i] >= 1``, then a single 1 in
        column ``labels[i] - 1``. (An ignored row is zeros too; the loss skips it.)
    """
    labels = np.asarray(labels).reshape(-1)
    out = np.zeros((labels.shape[0], int(num_classes)), dtype=dtype)
    pos = np.nonzero(labels >= 1)[0]
    out[pos, labels[pos] - 1] = 1
    return out
