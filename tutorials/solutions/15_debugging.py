"""Worked solutions of tutorial 15's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's ``overfit``, ``active_fc6``, ``one``, ``sample`` and ``BACKEND``.
"""

import __main__

import numpy as np

from minirccn import ops


def swap_xy(boxes):
    return np.asarray(boxes)[:, [1, 0, 3, 2]]


def best_iou_after_overfit(cfg):
    m = __main__
    model, _, _ = m.overfit(cfg)
    det = model.predict(m.sample["image"], backend=m.BACKEND)
    iou = ops.box_iou(m.sample["boxes"].astype(np.float32), det["boxes"][:10].astype(np.float32))
    return iou.max(axis=1) if iou.size else np.zeros(len(m.sample["boxes"]))


def lr_factor_sweep(factors):
    m = __main__
    out = {}
    for f in factors:
        cfg = m.one.replace(lr=m.one.lr * f)
        model, hist, err = m.overfit(cfg)
        if err:
            out[f] = None
        else:
            q = max(1, len(hist) // 4)
            out[f] = (float(np.mean(hist[-q:])), m.active_fc6(model, m.one))
    return out
