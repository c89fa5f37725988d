"""Worked solutions of tutorial 6's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np

from minirccn import ops
from minirccn.detector.matching import BalancedPositiveNegativeSampler


def anchors_inside_image(anchors, height, width):
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= width) & (anchors[:, 3] <= height)
    return int(inside.sum())


def objects_without_rule2(images, anchors, fg=0.7):
    lost, every = [], []
    for sample in images:
        gt = sample["boxes"].astype(np.float64)
        side = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
        best = ops.box_iou(anchors, gt).max(axis=0)
        lost += side[best < fg].tolist()
        every += side.tolist()
    return lost, every


def sample_64(labels, rng):
    pos, neg = BalancedPositiveNegativeSampler(64, 0.25)(labels, rng)
    return len(pos), len(neg)
