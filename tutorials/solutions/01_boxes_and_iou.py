"""Worked solutions of tutorial 1's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np


def iou_cxcywh(boxes1, boxes2):
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    w = np.clip(
        np.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
        - np.maximum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2),
        0,
        None,
    )
    h = np.clip(
        np.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
        - np.maximum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2),
        0,
        None,
    )
    inter = w * h
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_shifted(s, k):
    return (s - k) / (s + k)  # inter (s - k) s, union 2 s^2 - (s - k) s


def smallest_shift_at_most_half(s):
    k = 0
    while iou_shifted(s, k) > 0.5:
        k += 1
    return k


def nan_pairs(boxes):
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = []
    for i in range(len(boxes)):
        for j in range(len(boxes)):
            w = max(min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]), 0)
            h = max(min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]), 0)
            if area[i] + area[j] - w * h == 0:
                out.append((i, j))
    return out


def giou(boxes1, boxes2):
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    hull = (np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])) * (
        np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    )
    return inter / union - (hull - union) / hull
