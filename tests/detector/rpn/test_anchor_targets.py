"""Anchor targets: the assignment rule against a brute-force loop, sampling limits, edge cases."""

import numpy as np
import pytest
from helpers import plain_iou, random_boxes
from hypothesis import given
from hypothesis import strategies as st

from minirccn.detector.rpn.targets import AnchorTargetCreator
from minirccn.detector.anchors import generate_anchors
from minirccn.ops.box_coder import decode_boxes_reference


def brute_force_labels(anchors, gt, fg=0.7, bg=0.3):
    """The rule written as plain loops over anchors and ground truths."""

    m, g = len(anchors), len(gt)
    if g == 0:
        return [0] * m
    table = [[plain_iou(anchors[i], gt[j]) for j in range(g)] for i in range(m)]
    labels = []
    for i in range(m):
        best = max(table[i])
        labels.append(1 if best >= fg else (0 if best < bg else -1))
    for j in range(g):
        col = [table[i][j] for i in range(m)]
        top = max(col)
        if top > 0:
            for i in range(m):
                if col[i] == top:
                    labels[i] = 1
    return labels


DEFAULT = AnchorTargetCreator()


def assign_anchors(anchors, gt):
    return DEFAULT.label(anchors, gt)


def anchor_targets(anchors, gt, image_size, rng, **settings):
    return AnchorTargetCreator(**settings)(anchors, gt, image_size, rng)


@given(st.integers(0, 2**31 - 1), st.integers(0, 5), st.booleans())
def test_assignment_matches_brute_force(seed, g, snap):
    rng = np.random.default_rng(seed)
    anchors = generate_anchors((4, 4), 16, (16, 32), (0.5, 1.0, 2.0)).astype(np.float64)
    gt = random_boxes(rng, g, margin=8.0)
    if snap:  # integer corners: exact ties between anchors are common
        gt = np.round(gt / 8) * 8
        gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 8)
    if g and seed % 3 == 0:
        gt[0] = anchors[5]  # an exact anchor: IoU 1
    labels, matched = assign_anchors(anchors, gt)
    assert labels.tolist() == brute_force_labels(anchors, gt)
    assert labels.dtype == np.int64 and matched.shape == (anchors.shape[0],)


def test_no_ground_truth_gives_all_negative_samples():
    anchors = generate_anchors((8, 8), 16, (16, 32, 64), (0.5, 1.0, 2.0))
    labels, targets = anchor_targets(
        anchors, np.zeros((0, 4), np.float32), (128, 128), np.random.default_rng(0)
    )
    assert (labels == 1).sum() == 0
    assert (labels == 0).sum() == 256
    assert np.all(targets == 0)


def test_each_gt_best_anchor_is_positive_with_ties():
    # two identical anchors (a tie) overlapping the object with IoU 0.25 only
    anchors = np.array([[0, 0, 16, 16], [0, 0, 16, 16], [40, 40, 56, 56]], np.float32)
    gt = np.array([[0, 0, 8, 8]], np.float32)
    labels, matched = assign_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, 0]
    assert matched.tolist()[:2] == [0, 0]


def test_object_larger_than_every_anchor_gets_its_best_anchor():
    anchors = generate_anchors((8, 8), 16, (16,), (1.0,), offset=0.5)
    gt = np.array([[0, 0, 128, 128]], np.float32)  # IoU <= 1/64 with every anchor
    labels, _ = assign_anchors(anchors, gt)
    assert (labels == 1).sum() >= 1
    lab, targets = anchor_targets(anchors, gt, (128, 128), np.random.default_rng(0))
    pos = np.nonzero(lab == 1)[0]
    assert pos.size >= 1
    # decoding the target from the positive anchor gives back the object
    back = decode_boxes_reference(targets[pos], anchors[pos])
    np.testing.assert_allclose(back, np.repeat(gt, pos.size, 0), atol=1e-3)


def test_gt_overlapping_no_anchor_gets_no_positive():
    anchors = np.array([[0, 0, 16, 16]], np.float32)
    gt = np.array([[100, 100, 110, 110]], np.float32)
    labels, _ = assign_anchors(anchors, gt)
    assert labels.tolist() == [0]


def test_one_tiny_object():
    anchors = generate_anchors((8, 8), 16, (16, 32, 64), (0.5, 1.0, 2.0), offset=0.5)
    gt = np.array([[60, 60, 64, 63]], np.float32)
    lab, targets = anchor_targets(anchors, gt, (128, 128), np.random.default_rng(1))
    pos = np.nonzero(lab == 1)[0]
    assert pos.size >= 1 and np.all(np.isfinite(targets))
    back = decode_boxes_reference(targets[pos], anchors[pos])
    np.testing.assert_allclose(back, np.repeat(gt, pos.size, 0), atol=1e-3)


@given(st.integers(0, 2**31 - 1), st.integers(0, 300), st.integers(0, 300), st.integers(1, 300))
def test_sampling_limits(seed, n_pos, n_neg, batch):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg), -np.ones(7)]).astype(np.int64)
    labels = labels[rng.permutation(labels.size)]
    out = AnchorTargetCreator(batch_size_per_image=batch).sample(labels, rng)
    num_pos, num_neg = (out == 1).sum(), (out == 0).sum()
    assert num_pos == min(n_pos, int(batch * 0.5))
    assert num_neg == min(n_neg, batch - num_pos)
    assert np.all(labels[out == 1] == 1) and np.all(labels[out == 0] == 0)


def test_sampling_is_deterministic_and_random():
    labels = np.zeros(1000, np.int64)
    a = DEFAULT.sample(labels, np.random.default_rng(3))
    b = DEFAULT.sample(labels, np.random.default_rng(3))
    c = DEFAULT.sample(labels, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_border_anchors_are_ignored():
    anchors = generate_anchors((8, 8), 16, (32,), (1.0,), offset=0.0)  # first row/col cross
    gt = np.array([[0, 0, 20, 20]], np.float32)
    lab, _ = anchor_targets(anchors, gt, (128, 128), np.random.default_rng(0), allowed_border=0)
    outside = (
        (anchors[:, 0] < 0) | (anchors[:, 1] < 0) | (anchors[:, 2] > 128) | (anchors[:, 3] > 128)
    )
    assert outside.any() and np.all(lab[outside] == -1)
    lab_all, _ = anchor_targets(
        anchors, gt, (128, 128), np.random.default_rng(0), allowed_border=-1
    )
    assert np.any(lab_all[outside] >= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_targets_dtype_and_zero_outside_positives(dtype):
    anchors = generate_anchors((4, 4), 16, (16, 32), (1.0,)).astype(dtype)
    gt = np.array([[10, 10, 40, 30]], dtype)
    lab, targets = anchor_targets(anchors, gt, (64, 64), np.random.default_rng(0))
    assert targets.dtype == dtype and targets.shape == anchors.shape
    assert np.all(targets[lab != 1] == 0)
