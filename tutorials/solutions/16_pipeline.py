"""Worked solutions of tutorial 16's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import math

import numpy as np


def network_size(h, w, min_size, max_size):
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return max(math.floor(h * scale), 1), max(math.floor(w * scale), 1)


def hflip_boxes(boxes, width):
    out = np.array(boxes, dtype=np.float64, copy=True)
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def padded_shape(sizes, size_divisible):
    d = size_divisible
    return -(-max(h for h, _ in sizes) // d) * d, -(-max(w for _, w in sizes) // d) * d
