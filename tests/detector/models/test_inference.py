"""Faster R-CNN inference against an independent calculation of its numbers.

``detect()`` is recomputed here from the parameters with plain loops and the formulas of the
papers: RoI max pooling at ``1 / stride`` (C rounding, floor/ceil bins), the two fc layers,
softmax, box decoding with the config's box-coder weights, clipping, the score threshold,
greedy NMS per class and the detection cap. A wrong spatial scale, wrong weights or a wrong
threshold changes boxes or scores, so this test fails where a shape test would not.
"""

import math

import numpy as np
import pytest

from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.backbones.vgg import backbone_forward

from helpers import NAMES, small_batch, small_config


def _c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _roi_max_pool(feature, box, scale, p):
    """One RoI of a ``(C, H, W)`` map pooled to ``(C, p, p)`` by loops (Fast R-CNN's rule)."""
    c, h, w = feature.shape
    x1, y1, x2, y2 = (_c_round(v * scale) for v in box)
    rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    out = np.zeros((c, p, p))
    for i in range(p):
        for j in range(p):
            hs = min(max(math.floor(i * rh / p) + y1, 0), h)
            he = min(max(math.ceil((i + 1) * rh / p) + y1, 0), h)
            ws = min(max(math.floor(j * rw / p) + x1, 0), w)
            we = min(max(math.ceil((j + 1) * rw / p) + x1, 0), w)
            if he > hs and we > ws:
                out[:, i, j] = feature[:, hs:he, ws:we].reshape(c, -1).max(axis=1)
    return out


def _decode(d, box, weights):
    wx, wy, ww, wh = weights
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
    dw = min(d[2] / ww, math.log(1000.0 / 16))
    dh = min(d[3] / wh, math.log(1000.0 / 16))
    pcx, pcy = d[0] / wx * w + cx, d[1] / wy * h + cy
    pw, ph = math.exp(dw) * w, math.exp(dh) * h
    return np.array([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph])


def _iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _by_hand(net, features, proposals, size, cfg):
    p = net.params
    (stride,) = net.backbone.strides
    dets = []
    for box in proposals:
        x = _roi_max_pool(features, box, 1.0 / stride, cfg.roi_output_size).reshape(-1)
        x = np.maximum(x @ p["head.fc6.w"] + p["head.fc6.b"], 0)
        x = np.maximum(x @ p["head.fc7.w"] + p["head.fc7.b"], 0)
        logits = x @ p["head.cls.w"] + p["head.cls.b"]
        deltas = x @ p["head.bbox.w"] + p["head.bbox.b"]
        e = np.exp(logits - logits.max())
        scores = e / e.sum()
        for k in range(1, len(scores)):
            b = _decode(deltas[4 * k : 4 * k + 4], box, cfg.bbox_reg_weights)
            b = np.clip(b, 0, [size[1], size[0], size[1], size[0]])
            if scores[k] > cfg.box_score_thresh and min(b[2] - b[0], b[3] - b[1]) >= 1e-2:
                dets.append((scores[k], k, b))
    dets.sort(key=lambda t: -t[0])
    kept = []
    for s, k, b in dets:
        if all(kk != k or _iou(b, bb) <= cfg.box_nms_thresh for _, kk, bb in kept):
            kept.append((s, k, b))
    return kept[: cfg.box_detections_per_img]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_detect_matches_an_independent_calculation(backend):
    cfg = small_config(box_detections_per_img=7, box_score_thresh=0.3, box_nms_thresh=0.4)
    assert cfg.bbox_reg_weights != (1.0, 1.0, 1.0, 1.0)  # the weights must matter here
    net = M.FasterRCNN(cfg, NAMES, rng=np.random.default_rng(3))
    images, sizes, _, _ = small_batch()
    got = net.detect(images, sizes, backend=backend)
    features, _ = backbone_forward(
        net.params, images, backbone_spec(cfg), train=False, backend="numpy"
    )
    _, props = net.rpn_proposals(images, sizes, backend="numpy")
    proposals = [b for b, _ in props]
    total = 0
    for i in range(len(images)):
        want = _by_hand(net, features[i], np.asarray(proposals[i]), sizes[i], cfg)
        total += len(want)
        np.testing.assert_array_equal(got[i]["labels"], [k for _, k, _ in want])
        np.testing.assert_allclose(got[i]["scores"], [s for s, _, _ in want], rtol=1e-9)
        np.testing.assert_allclose(
            got[i]["boxes"], np.array([b for _, _, b in want]).reshape(-1, 4), rtol=1e-9, atol=1e-9
        )
    assert total > 2  # the case must exercise the pipeline
