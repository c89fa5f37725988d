"""Worked solutions of tutorial 14's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They use the tutorial's ``preds`` and ``gts`` from the running script.
"""

import __main__

import numpy as np

from minirccn import evaluation


def _copy(preds):
    return [{k: np.array(v, copy=True) for k, v in p.items()} for p in preds]


def swapped_metrics():
    preds = _copy(__main__.preds)
    preds[0]["scores"][[0, 1]] = preds[0]["scores"][[1, 0]]
    m = evaluation.evaluate(preds, __main__.gts, metric="coco")
    return m["map50"], m["map"]


def map50_with_empty_class():
    gts = [dict(g) for g in __main__.gts]
    gts[1] = {
        "boxes": np.concatenate([gts[1]["boxes"], [[60.0, 0, 90, 30]]]),
        "labels": np.concatenate([gts[1]["labels"], [2]]),
    }
    return evaluation.evaluate(__main__.preds, gts, metric="coco")["map50"]


def preds_with_junk(n):
    preds = _copy(__main__.preds)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (n, 2))
    junk = np.concatenate([xy, xy + 10], axis=1)
    preds[1] = {
        "boxes": np.concatenate([preds[1]["boxes"], junk]),
        "scores": np.concatenate([preds[1]["scores"], np.full(n, 0.01)]),
        "labels": np.concatenate([preds[1]["labels"], np.ones(n, np.int64)]),
    }
    return preds
