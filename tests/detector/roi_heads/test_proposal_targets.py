"""Proposal targets: ground truth appended, foreground / background rule, sampling, targets."""

import numpy as np
import pytest
from helpers import random_boxes
from hypothesis import given
from hypothesis import strategies as st

from minirccn.ops.box_coder import decode_boxes_reference
from minirccn.ops.boxes import box_iou_reference
from minirccn.detector.roi_heads.targets import ProposalTargetCreator

W = (10.0, 10.0, 5.0, 5.0)


def proposal_targets(proposals, gt, gt_labels, rng, **settings):
    return ProposalTargetCreator(**settings)(proposals, gt, gt_labels, rng)


def label_proposals(boxes, gt, gt_labels, **settings):
    return ProposalTargetCreator(**settings).label(boxes, gt, gt_labels)


@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 200),
    st.integers(0, 4),
    st.sampled_from([0.0, 0.1]),
    st.sampled_from([np.float32, np.float64]),
)
def test_sampled_rois_follow_the_rule(seed, p, g, bg_lo, dtype):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, g, size=100.0, hi=50.0).astype(dtype)
    gt_labels = rng.integers(1, 4, size=g)
    # proposals: some jittered copies of the ground truth, some random boxes
    props = random_boxes(rng, p, size=100.0, hi=50.0)
    if g:
        which = rng.integers(0, g, size=p // 2)
        props[: p // 2] = gt[which] + rng.normal(0, 2, size=(p // 2, 4))
        props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
    props = props.astype(dtype)
    rois, labels, targets = proposal_targets(
        props, gt, gt_labels, rng, batch_size_per_image=32, positive_fraction=0.25, bg_iou_lo=bg_lo
    )
    assert rois.dtype == dtype and targets.dtype == dtype and labels.dtype == np.int64
    assert rois.shape[0] == labels.shape[0] == targets.shape[0] <= 32
    fg = labels >= 1
    assert fg.sum() <= 8
    if g:
        assert fg.sum() >= 1  # the appended ground truth is foreground
        iou = box_iou_reference(rois.astype(np.float64), gt.astype(np.float64))
        best, matched = iou.max(1), iou.argmax(1)
        assert np.all(best[fg] >= 0.5 - 1e-6)
        assert np.all(labels[fg] == gt_labels[matched[fg]])
        assert np.all((best[~fg] < 0.5 + 1e-6) & (best[~fg] >= bg_lo - 1e-6))
        # decoding a foreground target from its RoI gives back its ground truth
        back = decode_boxes_reference(
            targets[fg].astype(np.float64), rois[fg].astype(np.float64), W
        )
        np.testing.assert_allclose(back, gt[matched[fg]], rtol=1e-4, atol=1e-2)
    else:
        assert not fg.any() and rois.shape[0] == min(p, 32)
    assert np.all(targets[~fg] == 0)
    assert np.all(np.diff(fg.astype(int)) <= 0)  # foreground first


def test_no_proposals_uses_ground_truth():
    gt = np.array([[10, 10, 30, 40], [50, 50, 60, 70]], np.float32)
    rois, labels, targets = proposal_targets(
        np.zeros((0, 4), np.float32), gt, np.array([2, 1]), np.random.default_rng(0)
    )
    assert sorted(labels.tolist()) == [1, 2]
    np.testing.assert_array_equal(np.sort(rois, 0), np.sort(gt, 0))
    np.testing.assert_allclose(targets, 0, atol=1e-6)


def test_no_ground_truth_no_proposals_is_empty():
    rois, labels, targets = proposal_targets(
        np.zeros((0, 4), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int64),
        np.random.default_rng(0),
    )
    assert rois.shape == (0, 4) and labels.shape == (0,) and targets.shape == (0, 4)


def test_ignored_band_between_bg_lo_and_zero():
    gt = np.array([[0, 0, 10, 10]], np.float64)
    props = np.array(
        [
            [50, 50, 60, 60],  # IoU 0   -> ignored when bg_lo = 0.1
            [0, 0, 10, 40],  # IoU .25 -> background
            [0, 0, 10, 11],
        ],
        np.float64,
    )  # IoU .91 -> foreground
    labels, _ = label_proposals(props, gt, np.array([3]), bg_iou_lo=0.1)
    assert labels.tolist() == [-1, 0, 3]
    labels, _ = label_proposals(props, gt, np.array([3]), bg_iou_lo=0.0)
    assert labels.tolist() == [0, 0, 3]


@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_for_a_seed(seed):
    rng = np.random.default_rng(5)
    props = random_boxes(rng, 300, size=100.0, hi=50.0).astype(np.float32)
    gt = random_boxes(rng, 3, size=100.0, hi=50.0).astype(np.float32)
    a = proposal_targets(props, gt, np.array([1, 2, 3]), np.random.default_rng(seed))
    b = proposal_targets(props, gt, np.array([1, 2, 3]), np.random.default_rng(seed))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
