"""Worked solutions of tutorial 13's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import __main__

import numpy as np

from minirccn import ops
from minirccn.config import preset
from minirccn.detector.backbones import vgg as _bb
from minirccn.detector.models.rcnn import RCNN
from minirccn.proposals import selective_search as ss


def _recall(props, gt, t):
    return float((ops.box_iou(gt, np.asarray(props, np.float64)).max(axis=1) >= t).mean())


def fast_vs_quality(image, gt):
    f = ss.selective_search(image, "fast", min_size=10)
    q = ss.selective_search(image, "quality", min_size=10)
    return len(f), len(q), _recall(f, gt, 0.7), _recall(q, gt, 0.7)


def objects_lost_with_paper_min_size(image, gt):
    with10 = ops.box_iou(gt, np.asarray(ss.selective_search(image, "fast", min_size=10), np.float64)).max(axis=1)
    paper = ops.box_iou(gt, np.asarray(ss.selective_search(image, "fast", min_size=None), np.float64)).max(axis=1)
    return np.flatnonzero((with10 >= 0.5) & (paper < 0.5)).tolist()


def rcnn_backbone_inputs(n):
    calls = []
    real = _bb.backbone_forward

    def counting(params, x, spec, train=True, backend=None):
        calls.append(x.shape[0])
        return real(params, x, spec, train=train, backend=backend)

    _bb.backbone_forward = counting
    try:
        model = RCNN(preset("tiny", model="rcnn", max_proposals=n), __main__.names)
        model.predict(__main__.image, backend="numba")
    finally:
        _bb.backbone_forward = real
    return sum(calls)
