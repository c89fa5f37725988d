"""Worked solutions of tutorial 10's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's ``neighbours(v, size)`` (torchvision's edge rules) from the running
script, as a student's code in the tutorial would.
"""

import __main__

import numpy as np


def columns_never_read():
    # bins 2 cells wide from 0; one sample at each bin's centre: x = 2 j + 1, an integer, so
    # bilinear reads column 2 j + 1 with weight 1 and column 2 j + 2 with weight 0
    read = {2 * j + 1 for j in range(7)}
    return [c for c in range(14) if c not in read]


def rois_changed_by_aligned_clamp(rois, spatial_scale):
    w = (rois[:, 3] - rois[:, 1]) * spatial_scale
    h = (rois[:, 4] - rois[:, 2]) * spatial_scale
    return np.flatnonzero((w < 1) | (h < 1)).tolist()


def _samples(roi, ph, pw, s, ratio):
    _, x1, y1, x2, y2 = roi
    sx, sy = x1 * s, y1 * s
    rw, rh = max(x2 * s - sx, 1.0), max(y2 * s - sy, 1.0)
    for i in range(ph):
        for j in range(pw):
            pts = [
                (sy + i * rh / ph + (iy + 0.5) * (rh / ph) / ratio, sx + j * rw / pw + (ix + 0.5) * (rw / pw) / ratio)
                for iy in range(ratio)
                for ix in range(ratio)
            ]
            yield i, j, pts


def _read(plane, y, x):
    ny, nx = __main__.neighbours(y, plane.shape[0]), __main__.neighbours(x, plane.shape[1])
    if ny is None or nx is None:
        return 0.0, []
    taps = [(p, q, wy * wx) for p, wy in ny for q, wx in nx]
    return sum(w * plane[p, q] for p, q, w in taps), taps


def roi_align_max(features, rois, ph, pw, s, sampling_ratio):
    out = np.zeros((len(rois), features.shape[1], ph, pw))
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        for c in range(features.shape[1]):
            for i, j, pts in _samples(roi, ph, pw, s, sampling_ratio):
                out[r, c, i, j] = max(_read(features[b, c], y, x)[0] for y, x in pts)
    return out


def roi_align_max_backward(dout, features, rois, ph, pw, s, sampling_ratio):
    grad = np.zeros_like(features)
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        for c in range(features.shape[1]):
            for i, j, pts in _samples(roi, ph, pw, s, sampling_ratio):
                reads = [_read(features[b, c], y, x) for y, x in pts]
                _, taps = max(reads, key=lambda v: v[0])  # the first winner on a tie
                for p, q, w in taps:
                    grad[b, c, p, q] += dout[r, c, i, j] * w
    return grad
