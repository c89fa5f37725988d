"""Worked solutions of tutorial 7's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1).

They read the tutorial's own variables (``logits``, ``deltas``, ``anchors``, ``cfg``) from
the running script, as a student's code in the tutorial would.
"""

import __main__

import numpy as np

from minirccn import ops
from minirccn.detector.rpn.proposal_layer import ProposalCreator


def proposals_with_nms(threshold):
    m = __main__
    creator = ProposalCreator.from_config(m.cfg.replace(rpn_nms_thresh=threshold), training=False)
    ((boxes, _),) = creator(m.logits[None], m.deltas[None], m.anchors, m.counts, [(128, 128)])
    return len(boxes)


def foreground_candidates(proposals, gt, append_gt):
    boxes = np.concatenate([proposals, gt]) if append_gt else proposals
    return int((ops.box_iou(boxes, gt).max(axis=1) >= __main__.cfg.box_fg_iou_thresh).sum())


def kept_labels(boxes, scores, labels, per_class):
    t = __main__.cfg.box_nms_thresh
    keep = ops.batched_nms(boxes, scores, labels, t) if per_class else ops.nms(boxes, scores, t)
    return [int(v) for v in labels[keep]]
