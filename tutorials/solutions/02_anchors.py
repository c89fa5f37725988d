"""Worked solutions of tutorial 2's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np

from minirccn import ops
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.detector import anchors


def anchors_600x1000():
    grid = anchors.generate_anchors((600 // 16, 1000 // 16), 16, (128, 256, 512), (0.5, 1.0, 2.0), offset=0.5)
    return len(grid), int(anchors.anchors_inside(grid, (600, 1000)).sum())


def share_with_anchor_above(sizes, stride, images, threshold=0.7):
    tiny = preset("tiny")
    hits, total = 0, 0
    for sample in images:
        h, w = sample["image"].shape[:2]
        grid = anchors.generate_anchors(
            (h // stride, w // stride), stride, sizes, tiny.aspect_ratios, offset=tiny.anchor_offset
        )
        best = ops.box_iou(grid, sample["boxes"].astype(np.float32)).max(axis=0)
        hits += int((best >= threshold).sum())
        total += len(best)
    return hits / total


def best_iou_per_object(offset):
    tiny = preset("tiny")
    gt = load_dataset("shapes", split="train", seed=0)[3]["boxes"]
    grid = anchors.generate_anchors(8, 16, tiny.anchor_sizes, tiny.aspect_ratios, offset=offset)
    return ops.box_iou(grid, gt).max(axis=0)
