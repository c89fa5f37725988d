"""The RPN over a feature pyramid: one head shared by every level, proposals gathered
over levels (torchvision's ``RegionProposalNetwork`` with an FPN).

* **Anchors**: level ``l`` (stride ``s_l``) gets ONE anchor size ``sizes[l]`` and every
  aspect ratio, so ``A = len(aspect_ratios)`` per cell on every level; the levels' anchors
  are concatenated, finest level first (torchvision's ``AnchorGenerator`` with
  ``sizes=((32,), (64,), ...)``).
* **Head**: the same :func:`minirccn.detector.rpn.rpn_forward` parameters slide over each
  level; the outputs are concatenated in the anchors' order. Anchor targets and the two
  RPN losses then see one long list of anchors, as with a single map.
* **Backward**: the concatenated gradients are cut back into levels; each level's part
  goes through the shared head's backward, and the head's parameter gradients are the
  SUM over levels (one set of weights used five times).
* **Proposals** (not differentiable), per image: the ``pre_nms_top_n`` best anchors *of
  each level*; decode; clip; drop small boxes; NMS *per level* (``batched_nms`` with the
  level as the category, so boxes of different levels never suppress each other); then
  the ``post_nms_top_n`` best over all levels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.backend import get_array_module
from minirccn.detector.anchors import generate_anchors
from minirccn.detector.proposals import objectness_scores, top_n
from minirccn.detector.rpn import rpn_backward, rpn_forward


def multilevel_anchors(map_sizes, strides, sizes, aspect_ratios, offset=0.0):
    """Anchors of every level, concatenated finest first.

    Args:
        map_sizes: ``(H_l, W_l)`` of each level.
        strides: input pixels per cell of each level.
        sizes: one anchor size per level.
        aspect_ratios: height / width ratios, shared by the levels.

    Returns:
        anchors: ``(sum_l H_l * W_l * A, 4)`` float32; counts: ``H_l * W_l * A`` per level.
    """
    if not len(map_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"sizes: expected one anchor size per level ({len(map_sizes)} levels), got {len(sizes)}"
        )
    per = [
        generate_anchors(tuple(hw), s, (size,), aspect_ratios, offset=offset)
        for hw, s, size in zip(map_sizes, strides, sizes)
    ]
    return np.concatenate(per), [a.shape[0] for a in per]


class LevelsRPNCache(NamedTuple):
    """One :class:`~minirccn.detector.rpn.RPNCache` per level and each level's anchor count."""

    levels: list
    counts: list


def rpn_forward_levels(params: dict, maps, backend=None):
    """The shared RPN head on each map.

    Args:
        params: ``rpn.*`` (see :func:`minirccn.detector.rpn.init_rpn`).
        maps: list of ``(N, C, H_l, W_l)``.

    Returns:
        logits ``(N, M, 2)``, deltas ``(N, M, 4)`` with ``M = sum_l H_l W_l A`` (levels
        concatenated in order), cache: :class:`LevelsRPNCache`.
    """
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


def rpn_backward_levels(dlogits, ddeltas, cache: LevelsRPNCache):
    """Backward of :func:`rpn_forward_levels`.

    Returns:
        dmaps: the gradient of each level's map; grads: ``rpn.*`` gradients summed over levels.
    """
    dmaps, grads = [], {}
    start = 0
    for c, m in zip(cache.levels, cache.counts):
        dm, g = rpn_backward(dlogits[:, start : start + m], ddeltas[:, start : start + m], c)
        start += m
        dmaps.append(dm)
        for k, v in g.items():
            grads[k] = v if k not in grads else grads[k] + v
    return dmaps, grads


def level_ids(counts, xp=np):
    """``(M,)`` int64: the level of each anchor, from the per-level ``counts``."""
    return xp.asarray(np.repeat(np.arange(len(counts), dtype=np.int64), counts))


def proposals_one_image_levels(
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
    backend=None,
):
    """Proposals of one image over all levels (see the module docstring).

    Args:
        logits: ``(M, 2)``; deltas: ``(M, 4)``; anchors: ``(M, 4)``, levels concatenated.
        counts: anchors per level (they sum to ``M``).
        image_size: ``(height, width)``.
        pre_nms_top_n: kept per level before NMS; post_nms_top_n: kept in all after NMS.

    Returns:
        boxes ``(P, 4)``, scores ``(P,)`` (by decreasing score), levels ``(P,)`` int64.
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
    keep = ops.batched_nms(boxes, scores, lvl, nms_thresh, backend=backend)[:post_nms_top_n]
    return boxes[keep], scores[keep], lvl[keep]


def generate_proposals_levels(
    logits,
    deltas,
    anchors,
    counts,
    image_sizes,
    *,
    pre_nms_top_n,
    post_nms_top_n,
    nms_thresh=0.7,
    min_size=1e-3,
    backend=None,
):
    """:func:`proposals_one_image_levels` on each image of a batch.

    Returns:
        list of ``N`` triples ``(boxes (P_i, 4), scores (P_i,), levels (P_i,))``.
    """
    return [
        proposals_one_image_levels(
            logits[i],
            deltas[i],
            anchors,
            counts,
            image_sizes[i],
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
            nms_thresh=nms_thresh,
            min_size=min_size,
            backend=backend,
        )
        for i in range(logits.shape[0])
    ]


class LevelsProposalCreator:
    """The multi-level proposal layer with its numbers, built once, then called with data.

    Args:
        pre_nms_top_n: proposals kept per LEVEL by score before NMS.
        post_nms_top_n: proposals kept per image after NMS (over all levels).
        nms_thresh: NMS IoU threshold (per level).
        min_size: boxes narrower or lower than this (pixels) are dropped.
    """

    def __init__(
        self, pre_nms_top_n: int, post_nms_top_n: int, nms_thresh: float = 0.7, min_size=1e-3
    ):
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.min_size = min_size

    def __repr__(self) -> str:
        return (
            f"LevelsProposalCreator(pre_nms_top_n={self.pre_nms_top_n} per level, "
            f"post_nms_top_n={self.post_nms_top_n}, nms_thresh={self.nms_thresh}, "
            f"min_size={self.min_size})"
        )

    @classmethod
    def from_config(cls, config, training: bool) -> "LevelsProposalCreator":
        """The ``rpn_*_train`` numbers if ``training``, else the ``rpn_*_test`` ones."""
        return cls(
            config.rpn_pre_nms_top_n_train if training else config.rpn_pre_nms_top_n_test,
            config.rpn_post_nms_top_n_train if training else config.rpn_post_nms_top_n_test,
            config.rpn_nms_thresh,
            config.rpn_min_size,
        )

    def __call__(self, logits, deltas, anchors, counts, image_sizes, backend=None):
        """:func:`generate_proposals_levels` with this layer's numbers: ``N`` triples
        ``(boxes (P_i, 4), scores (P_i,), levels (P_i,))``."""
        return generate_proposals_levels(
            logits,
            deltas,
            anchors,
            counts,
            image_sizes,
            pre_nms_top_n=self.pre_nms_top_n,
            post_nms_top_n=self.post_nms_top_n,
            nms_thresh=self.nms_thresh,
            min_size=self.min_size,
            backend=backend,
        )
