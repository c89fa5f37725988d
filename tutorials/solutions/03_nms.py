"""Worked solutions of tutorial 3's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np

from minirccn import ops


def soft_nms(boxes, scores, sigma=0.5, score_thresh=0.001):
    scores = np.asarray(scores, dtype=np.float64).copy()
    remaining = list(range(len(boxes)))
    keep, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda r: (scores[r], -r))  # re-sort by the decayed scores
        remaining.remove(best)
        if scores[best] < score_thresh:
            break  # every other remaining box scores lower still
        keep.append(best)
        kept_scores.append(scores[best])
        if remaining:
            iou = ops.box_iou(boxes[best : best + 1], boxes[remaining])[0]
            scores[remaining] *= np.exp(-(iou**2) / sigma)
    return np.array(keep, dtype=np.int64), np.array(kept_scores)


def mask_words_and_bytes(n):
    words = n * ((n + 63) // 64)
    return words, words * 8


def blocks_computed(n):
    b = (n + 63) // 64
    return b * (b + 1) // 2
