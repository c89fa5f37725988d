"""One matcher and one balanced sampler: the two halves of every "which boxes train" rule.

The RPN's anchor targets (:mod:`minirccn.detector.rpn.targets`) and the RoI
head's proposal targets (:mod:`minirccn.detector.roi_heads.targets`) ask the same
two questions, with different numbers:

1. **Match** (:class:`Matcher`, torchvision's ``Matcher``): which ground truth does
   each box (anchor or proposal) belong to, if any? With ``iou = box_iou(boxes, gt)``
   ``(M, G)``, each box looks at its best ground truth ``argmax_g iou`` (first index
   on a tie) and its IoU ``best = max_g iou``::

       matches_i = argmax_g iou[i, g]     if best_i >= high_threshold
                   BELOW_LOW_THRESHOLD    if best_i <  low_threshold      (-1)
                   BETWEEN_THRESHOLDS     otherwise                       (-2)

   ``allow_low_quality_matches``: every box that has, for some ground truth, that
   ground truth's highest IoU (all ties) keeps its ``argmax`` match even below
   ``high_threshold``, so that every object gets a box. Unlike torchvision, a ground
   truth whose highest IoU is 0 (it overlaps no box at all) promotes nothing.

2. **Sample** (:class:`BalancedPositiveNegativeSampler`): draw at most
   ``batch_size_per_image`` of the labelled boxes, at most ``positive_fraction`` of
   them positive, uniformly at random without replacement::

       num_pos = min(#positives, int(batch_size_per_image * positive_fraction))
       num_neg = min(#negatives, batch_size_per_image - num_pos)

   positives first (``rng.permutation`` of the positives, then of the negatives).

Both objects are built once with their numbers and then called with data only.
Not differentiable; host NumPy (the draws come from a ``numpy.random.Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirccn.core.dispatch import kernel

BELOW_LOW_THRESHOLD = -1  #: a match code: best IoU < low_threshold (negative / background)
BETWEEN_THRESHOLDS = -2  #: a match code: low_threshold <= best IoU < high_threshold (ignored)


@dataclass(frozen=True)
class Matcher:
    """Each box's ground-truth index, or a code saying why it has none (see the module docstring).

    Args:
        high_threshold: best IoU >= this: matched.
        low_threshold: best IoU < this: :data:`BELOW_LOW_THRESHOLD`; in between:
            :data:`BETWEEN_THRESHOLDS`. Must be <= ``high_threshold``.
        allow_low_quality_matches: also match each ground truth's best box(es).
    """

    high_threshold: float
    low_threshold: float
    allow_low_quality_matches: bool = False

    def __post_init__(self):
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({self.low_threshold}) must be <= "
                f"high_threshold ({self.high_threshold})"
            )

    def __call__(self, iou, backend: str = "numpy") -> np.ndarray:
        """Match the ``M`` boxes of ``iou``'s rows to the ``G`` ground truths of its columns.

        Args:
            iou: ``(M, G)`` float IoU of every box with every ground truth (``G`` may be 0);
                any strides (a transposed ``(G, M)`` result is fine).
            backend: ``"numpy"`` (:func:`match_reference`, the specification) or ``"numba"``
                (one pass, ``minirccn.kernels.matching``); host arrays either way.

        Returns:
            ``(M,)`` int64: a ground-truth index in ``0..G-1``, :data:`BELOW_LOW_THRESHOLD`
            or :data:`BETWEEN_THRESHOLDS`. With no ground truth every box is below low.
        """
        iou = np.asarray(iou)
        m, g = iou.shape
        if m == 0 or g == 0:
            return np.full(m, BELOW_LOW_THRESHOLD, dtype=np.int64)
        return kernel("match", backend)(
            iou, self.high_threshold, self.low_threshold, self.allow_low_quality_matches
        )

    @staticmethod
    def best_box_of_each_gt(iou) -> np.ndarray:
        """``(M,)`` bool: the box is, for some ground truth with a positive highest IoU, one of
        the boxes with that highest IoU (all ties). ``iou`` is ``(M, G)`` with ``M, G >= 1``."""
        gt_best = iou.max(axis=0)  # (G,)
        return ((iou == gt_best[None, :]) & (gt_best[None, :] > 0)).any(axis=1)


def match_reference(iou, high_threshold, low_threshold, allow_low_quality_matches):
    """The matching rule of :class:`Matcher` on a non-empty ``iou`` (the specification of the
    ``match`` op; the module docstring says it in words).

    Args:
        iou: ``(M, G)`` float, ``M, G >= 1``.
        high_threshold, low_threshold: floats, ``low <= high``.
        allow_low_quality_matches: bool.

    Returns:
        ``(M,)`` int64 matches. A NaN IoU follows NumPy: ``argmax`` picks a row's first NaN,
        which is then neither below ``low`` nor between (it keeps its index), and a column
        holding a NaN has a NaN maximum (it promotes nothing).
    """
    m = iou.shape[0]
    best_gt = iou.argmax(axis=1)  # (M,) first index on a tie
    best = iou[np.arange(m), best_gt]
    matches = best_gt.astype(np.int64)
    matches[best < low_threshold] = BELOW_LOW_THRESHOLD
    matches[(best >= low_threshold) & (best < high_threshold)] = BETWEEN_THRESHOLDS
    if allow_low_quality_matches:
        promoted = Matcher.best_box_of_each_gt(iou)
        matches[promoted] = best_gt[promoted]
    return matches


@dataclass(frozen=True)
class BalancedPositiveNegativeSampler:
    """Draw a fixed-size, class-balanced subset of labelled boxes (see the module docstring).

    Args:
        batch_size_per_image: boxes drawn at most.
        positive_fraction: at most ``int(batch_size_per_image * positive_fraction)`` of
            them positive.
    """

    batch_size_per_image: int
    positive_fraction: float

    def __call__(self, labels, rng: np.random.Generator):
        """The sampled positives and negatives of one image.

        Args:
            labels: ``(M,)`` int: ``>= 1`` positive (a class), ``0`` negative, ``-1`` ignored.
            rng: the source of the draws: ``rng.permutation`` of the positives, then of
                the negatives (always both calls, in this order).

        Returns:
            pos: ``(P,)`` int64 indices into ``labels``, in drawn order.
            neg: ``(Q,)`` int64 indices, in drawn order; ``P + Q <= batch_size_per_image``.
        """
        labels = np.asarray(labels)
        pos = np.nonzero(labels >= 1)[0]
        neg = np.nonzero(labels == 0)[0]
        num_pos = min(pos.size, int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(neg.size, self.batch_size_per_image - num_pos)
        keep_pos = pos[rng.permutation(pos.size)[:num_pos]]
        keep_neg = neg[rng.permutation(neg.size)[:num_neg]]
        return keep_pos.astype(np.int64), keep_neg.astype(np.int64)
