"""Worked solutions of tutorial 11's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's variables (``trained``, ``t_pyr``, ``x``, ``sample``) from the running
script, as a student's code in the tutorial would.
"""

import __main__

import numpy as np

from minirccn.data.batching import Batch
from minirccn.detector.roi_heads.poolers import LevelMapper, level_counts


def rois_per_level(boxes, canonical_scale):
    strides = __main__.trained.pooler.strides
    mapper = LevelMapper.from_strides(strides, canonical_scale=canonical_scale)
    return level_counts(mapper(boxes), len(strides)).tolist()


def groups_reached_from_p2():
    m = __main__
    targets = [{"boxes": m.sample["boxes"].astype(np.float32), "labels": m.sample["labels"]}]
    small = np.array([[30, 30, 46, 46]], np.float32)  # side 16: level P2
    batch = Batch(m.x.astype(np.float32), [(128, 128)], targets)
    _, cache = m.trained.forward(
        batch, np.random.default_rng(0), backend="numpy", proposals=[small], parts=("head",)
    )
    grads = m.trained.backward(cache)
    groups = ("backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4")
    return sorted(
        g for g in groups
        if any(np.abs(v).max() > 0 for k, v in grads.items() if k.startswith(g + ".") and k.endswith(".w"))
    )


def pyramid_anchor_count(map_shapes, n_sizes, n_ratios):
    return sum(h * w * n_sizes * n_ratios for h, w in map_shapes)
