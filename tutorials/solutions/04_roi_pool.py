"""Worked solutions of tutorial 4's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import math

import numpy as np

from minirccn import ops
from minirccn.ops.roi_pool import c_round


def rois_moved_by_half_to_even(rois, spatial_scale):
    coords = rois[:, 1:] * spatial_scale
    moved = np.any(c_round(coords) != np.round(coords), axis=1)
    return sorted(np.flatnonzero(moved).tolist())


def pool_point(features, x, y, spatial_scale):
    out, _ = ops.roi_pool(features, np.array([[0, x, y, x, y]], dtype=np.float64), 2, spatial_scale)
    return out[0]


def _bins(roi, ph, pw, s, height, width):
    def cr(v):
        return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)

    x1, y1, x2, y2 = (cr(v * s) for v in roi)
    bin_w, bin_h = max(x2 - x1 + 1, 1) / pw, max(y2 - y1 + 1, 1) / ph
    for i in range(ph):
        h0 = min(max(math.floor(i * bin_h) + y1, 0), height)
        h1 = min(max(math.ceil((i + 1) * bin_h) + y1, 0), height)
        for j in range(pw):
            w0 = min(max(math.floor(j * bin_w) + x1, 0), width)
            w1 = min(max(math.ceil((j + 1) * bin_w) + x1, 0), width)
            yield i, j, h0, h1, w0, w1


def roi_avg_pool(features, rois, ph, pw, s):
    _, c, height, width = features.shape
    out = np.zeros((len(rois), c, ph, pw), dtype=features.dtype)
    for r, row in enumerate(rois.tolist()):
        b = int(row[0])
        for i, j, h0, h1, w0, w1 in _bins(row[1:], ph, pw, s, height, width):
            if h1 > h0 and w1 > w0:
                out[r, :, i, j] = features[b, :, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def roi_avg_pool_backward(dout, rois, input_shape, ph, pw, s):
    grad = np.zeros(input_shape, dtype=dout.dtype)
    height, width = input_shape[2:]
    for r, row in enumerate(rois.tolist()):
        b = int(row[0])
        for i, j, h0, h1, w0, w1 in _bins(row[1:], ph, pw, s, height, width):
            if h1 > h0 and w1 > w0:
                n = (h1 - h0) * (w1 - w0)
                grad[b, :, h0:h1, w0:w1] += dout[r, :, i, j][:, None, None] / n
    return grad
