"""The proposal layer: from every anchor's score and deltas to a few hundred boxes.

Not differentiable: proposals are treated as constants by the rest of the
network ("approximate joint training", paper Sec. 3.2), so this returns plain
arrays and has no backward.

Per image (paper Sec. 3.3; torchvision's ``RegionProposalNetwork.filter_proposals``):

1. ``score = softmax(logits)[:, 1]``, the object probability of each anchor (``sigmoid`` of
   the one logit with ``rpn_objectness="sigmoid"``, torchvision's);
2. keep the ``pre_nms_top_n`` highest scores (ties: lower anchor index first) *of each
   level*, so the many fine-level anchors of a pyramid cannot crowd out the coarse ones;
3. ``boxes = decode_boxes(deltas, anchors)`` and clip them to the image;
4. drop boxes whose width or height is below ``min_size`` (and, when ``score_thresh > 0``,
   those whose probability is below it: torchvision's ``score_thresh``);
5. NMS with IoU threshold ``nms_thresh`` *per level* (``batched_nms`` with the level as
   the category: boxes of different levels never suppress each other);
6. keep the ``post_nms_top_n`` best over all levels.

A one-level detector has one level, and steps 2 and 5 are the paper's.

Array work stays on the arrays' device; the sizes after steps 4-5 are
data-dependent (the host learns them, as with any NMS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.core.backend import get_array_module


def objectness_scores(logits):
    """Object probability ``softmax(logits)[..., 1] = 1 / (1 + exp(l0 - l1))``; with one
    logit ``l`` (torchvision's sigmoid objectness), ``sigmoid(l) = 1 / (1 + exp(-l))``.

    Args:
        logits: ``(..., 2)`` float (background, object) scores, or ``(..., 1)`` one logit.

    Returns:
        ``(...)`` float probabilities in [0, 1], logits' dtype.
    """
    xp = get_array_module(logits)
    if logits.shape[-1] == 1:
        return (1.0 / (1.0 + xp.exp(-logits[..., 0]))).astype(logits.dtype)
    return (1.0 / (1.0 + xp.exp(logits[..., 0] - logits[..., 1]))).astype(logits.dtype)


def top_n(scores, n: int):
    """Indices of the ``n`` highest scores, best first, ties by lower index (stable).

    Args:
        scores: ``(M,)`` float.
        n: how many to keep (all if ``n >= M``).

    Returns:
        ``(min(n, M),)`` int64 indices.
    """
    xp = get_array_module(scores)
    order = xp.argsort(-scores, kind="stable")  # NumPy and CuPy alike: ties keep index order
    return order[:n].astype(xp.int64)


def level_ids(counts, xp=np):
    """``(M,)`` int64: the level of each anchor, from the per-level ``counts``."""
    return xp.asarray(np.repeat(np.arange(len(counts), dtype=np.int64), counts))


def proposals_one_image(
    logits,
    deltas,
    anchors,
    counts,
    image_size,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float = 0.7,
    min_size: float = 1e-3,
    score_thresh: float = 0.0,
    backend=None,
):
    """Proposals of one image over its levels (steps 1-6 of the module docstring).

    Args:
        logits: ``(M, 2)`` float objectness scores of the anchors, levels concatenated
            (``(M, 1)``: one logit, the sigmoid objectness).
        deltas: ``(M, 4)`` float predicted deltas (weights 1, 1, 1, 1).
        anchors: ``(M, 4)`` float anchors in input pixels.
        counts: anchors per level (they sum to ``M``; ``[M]`` for a one-level detector).
        image_size: ``(height, width)`` of the input image.
        pre_nms_top_n: kept per LEVEL before NMS; post_nms_top_n: kept in all after NMS.
        nms_thresh, min_size, score_thresh: see above.
        backend: backend of decode / NMS.

    Returns:
        boxes: ``(P, 4)`` float proposals, best first, ``P <= post_nms_top_n``.
        scores: ``(P,)`` float object probabilities; levels: ``(P,)`` int64.

    With one level this is the paper's layer exactly (``batched_nms`` with one category
    is ``nms``).
    """
    xp = get_array_module(logits)
    scores = objectness_scores(logits)
    idx, start = [], 0
    for m in counts:  # the best of each level, so the many fine-level anchors cannot crowd
        idx.append(top_n(scores[start : start + m], pre_nms_top_n) + start)  # out the coarse
        start += m
    idx = xp.concatenate(idx)
    lvl = level_ids(counts, xp)[idx]
    scores, deltas, anchors = scores[idx], deltas[idx], anchors[idx]
    boxes = ops.decode_boxes(deltas, anchors, backend=backend)
    boxes = ops.clip_boxes(boxes, image_size, backend=backend)
    keep = ops.remove_small_boxes(boxes, min_size, backend=backend)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    if score_thresh > 0:
        keep = xp.nonzero(scores >= score_thresh)[0]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    keep = ops.batched_nms(boxes, scores, lvl, nms_thresh, backend=backend)[:post_nms_top_n]
    return boxes[keep], scores[keep], lvl[keep]


@dataclass(frozen=True)
class ProposalCreator:
    """The proposal layer with its numbers: :func:`proposals_one_image` on each image of a batch.

    Args:
        pre_nms_top_n: proposals kept per level by score before NMS.
        post_nms_top_n: proposals kept after NMS.
        nms_thresh: NMS IoU threshold.
        min_size: boxes narrower or lower than this (pixels) are dropped.
        score_thresh: > 0: proposals of lower object probability are dropped before NMS.

    Build it once (:meth:`from_config`, one for training and one for inference), then
    call it with data only.
    """

    pre_nms_top_n: int
    post_nms_top_n: int
    nms_thresh: float = 0.7
    min_size: float = 1e-3
    score_thresh: float = 0.0

    @classmethod
    def from_config(cls, config, training: bool) -> "ProposalCreator":
        """The proposal layer of a :class:`~minirccn.config.FasterRCNNConfig`: its
        ``rpn_*_train`` top-n numbers if ``training``, else its ``rpn_*_test`` ones."""
        split = "_train" if training else "_test"
        top_n = prefixed(config, "rpn_", "pre_nms_top_n", "post_nms_top_n", suffix=split)
        return cls(**top_n, **prefixed(config, "rpn_", "nms_thresh", "min_size", "score_thresh"))

    def __call__(self, logits, deltas, anchors, counts, image_sizes, backend=None):
        """Proposals of a batch.

        Args:
            logits: ``(N, M, 2)`` float.
            deltas: ``(N, M, 4)`` float.
            anchors: ``(M, 4)`` float, shared by the batch, levels concatenated.
            counts: anchors per level.
            image_sizes: ``N`` pairs ``(height, width)`` (the unpadded size of each image).
            backend: backend of decode / NMS.

        Returns:
            list of ``N`` pairs ``(boxes (P_i, 4), scores (P_i,))``.
        """
        return [
            proposals_one_image(
                logits[i],
                deltas[i],
                anchors,
                counts,
                image_sizes[i],
                pre_nms_top_n=self.pre_nms_top_n,
                post_nms_top_n=self.post_nms_top_n,
                nms_thresh=self.nms_thresh,
                min_size=self.min_size,
                score_thresh=self.score_thresh,
                backend=backend,
            )[:2]
            for i in range(logits.shape[0])
        ]
