"""Worked solutions of tutorial 12's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's variables (``cfg``, ``anchors``, ``logits``, ``labels``, ``valid``,
``t_valid``) from the running script, as a student's code in the tutorial would.
"""

import __main__

import numpy as np

from minirccn.detector.dense.targets import RetinaNetTargets
from minirccn.nn import losses


def objects_without_positive(images, allow_low_quality):
    m = __main__
    targets = RetinaNetTargets.from_config(m.cfg.replace(retina_allow_low_quality_matches=allow_low_quality))
    lost = 0
    for sample in images:
        gt = sample["boxes"].astype(np.float64)
        labels, _, matches = targets(m.anchors.astype(np.float64), gt, sample["labels"])
        lost += sum(not np.any((labels >= 1) & (matches == j)) for j in range(len(gt)))
    return lost


def focal_grad_negative(z, gamma):
    p = 1 / (1 + np.exp(-z))
    # d/dz [-(p^g) log(1 - p)] with dp/dz = p (1 - p):
    #   -g p^(g-1) p (1 - p) log(1 - p) + p^g p
    return -gamma * p**gamma * (1 - p) * np.log1p(-p) + p ** (gamma + 1)


def negatives_share(gamma):
    m = __main__
    per, _ = losses.sigmoid_focal_loss(m.logits[0, m.valid], m.t_valid, -1, gamma, "none")
    return float(per[m.labels[m.valid] == 0].sum() / per.sum())
