"""RetinaNet anchor labelling: exact thresholds 0.5 / 0.4, low-quality matches, two classes
in one image, no ground truth, against a brute-force loop on a real shapes image."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirccn.config import preset
from minirccn.detector.anchors import generate_anchors
from minirccn.detector.dense.targets import RetinaNetTargets, onehot_targets
from minirccn.detector.matching import Matcher
from minirccn.ops.box_coder import encode_boxes_reference


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force(anchors, gt, gt_labels, fg=0.5, bg=0.4):
    """The rule as plain loops: labels (class / 0 / -1) and matched ground truth."""
    m, g = len(anchors), len(gt)
    if g == 0:
        return [0] * m, [-1] * m
    table = [[_iou(anchors[i], gt[j]) for j in range(g)] for i in range(m)]
    labels, match = [], []
    for i in range(m):
        best = max(table[i])
        j = table[i].index(best)  # first best on a tie
        if best >= fg:
            labels.append(int(gt_labels[j]))
            match.append(j)
        else:
            labels.append(0 if best < bg else -1)
            match.append(-1)
    for j in range(g):
        col = [table[i][j] for i in range(m)]
        top = max(col)
        for i in range(m):
            if top > 0 and col[i] == top:  # each object's best anchor(s): positive
                k = table[i].index(max(table[i]))
                labels[i], match[i] = int(gt_labels[k]), k
    return labels, match


def test_exact_thresholds():
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    anchors = np.array(
        [
            [0.0, 0.0, 10.0, 20.0],  # IoU 100/200 = 0.5 exactly: positive
            [0.0, 0.0, 10.0, 20.5],  # IoU 0.4878: ignored
            [0.0, 0.0, 10.0, 25.0],  # IoU 100/250 = 0.4 exactly: ignored (not < 0.4)
            [0.0, 0.0, 10.0, 26.0],  # IoU 0.3846: negative
            [50.0, 50.0, 60.0, 60.0],  # IoU 0: negative
        ]
    )
    for dtype in (np.float64, np.float32):
        labels, targets, matches = RetinaNetTargets()(anchors.astype(dtype), gt, [2])
        np.testing.assert_array_equal(labels, [2, -1, -1, 0, 0])
        np.testing.assert_array_equal(matches, [0, -2, -2, -1, -1])
        assert targets.dtype == dtype and not targets[1:].any()
        np.testing.assert_allclose(
            targets[0], encode_boxes_reference(gt, anchors[:1])[0], rtol=1e-6, atol=1e-6
        )


def test_low_quality_match_makes_an_objects_best_anchor_positive():
    gt = np.array([[0.0, 0.0, 10.0, 10.0]])
    anchors = np.array([[0.0, 0.0, 10.0, 30.0], [0.0, 0.0, 10.0, 40.0], [40.0, 0, 50, 10]])
    labels, _, matches = RetinaNetTargets()(anchors, gt, [1])  # best IoU 1/3 < 0.4
    np.testing.assert_array_equal(labels, [1, 0, 0])
    np.testing.assert_array_equal(matches, [0, -1, -1])
    labels, _, _ = RetinaNetTargets(allow_low_quality_matches=False)(anchors, gt, [1])
    np.testing.assert_array_equal(labels, [0, 0, 0])


def test_two_classes_in_one_image_each_train_their_own_column():
    gt = np.array([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 64.0, 48.0]])
    gt_labels = np.array([3, 1])
    anchors = np.array(
        [
            [0.0, 0.0, 16.0, 16.0],  # object 0 exactly: class 3
            [32.0, 32.0, 64.0, 48.0],  # object 1 exactly: class 1
            [0.0, 0.0, 16.0, 32.0],  # IoU 0.5 with object 0: class 3
            [100.0, 100.0, 120.0, 120.0],  # background
        ]
    )
    labels, targets, matches = RetinaNetTargets()(anchors, gt, gt_labels)
    np.testing.assert_array_equal(labels, [3, 1, 3, 0])
    np.testing.assert_array_equal(matches, [0, 1, 0, -1])
    onehot = onehot_targets(labels, 3)
    np.testing.assert_array_equal(onehot, [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(targets[:2], 0, atol=1e-12)  # anchors equal to their objects
    np.testing.assert_allclose(targets[2], [0, -0.25, 0, np.log(0.5)])


def test_no_ground_truth_every_anchor_negative():
    anchors = generate_anchors((3, 3), 8, (16,), (1.0,)).astype(np.float32)
    labels, targets, matches = RetinaNetTargets()(anchors, np.zeros((0, 4)), np.zeros(0))
    assert (labels == 0).all() and (matches == -1).all() and not targets.any()
    assert not onehot_targets(labels, 3).any()


def test_uses_the_shared_matcher_with_the_configs_thresholds():
    t = RetinaNetTargets.from_config(preset("tiny", model="retinanet"))
    assert isinstance(t.matcher, Matcher)
    assert (t.matcher.high_threshold, t.matcher.low_threshold) == (0.5, 0.4)
    assert t.matcher.allow_low_quality_matches is True
    with pytest.raises(ValueError, match="labels"):
        t(np.zeros((2, 4)), np.ones((1, 4)), [1, 2])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), g=st.integers(0, 4), snap=st.booleans())
def test_matches_brute_force(seed, g, snap):
    rng = np.random.default_rng(seed)
    anchors = generate_anchors((4, 4), 8, (8, 16), (0.5, 1.0, 2.0), offset=0.5).astype(np.float64)
    if snap and g:  # ground truths copied from anchors and stretched: ties and exact IoUs
        idx = rng.integers(0, len(anchors), g)
        gt = anchors[idx] * rng.choice([1.0, 1.0, 0.5, 2.0], size=(g, 1))
    else:
        wh = rng.uniform(2, 30, (g, 2))
        xy = rng.uniform(-4, 30, (g, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
    gt_labels = rng.integers(1, 4, g)
    labels, targets, _ = RetinaNetTargets()(anchors, gt, gt_labels)
    want, match = brute_force(anchors, gt, gt_labels)
    np.testing.assert_array_equal(labels, want)
    for i, j in enumerate(match):
        if j >= 0:
            np.testing.assert_allclose(
                targets[i], encode_boxes_reference(gt[j : j + 1], anchors[i : i + 1])[0]
            )
        else:
            assert not targets[i].any()


def test_real_shapes_image_against_brute_force():
    from minirccn.data import load_dataset

    cfg = preset("tiny", model="retinanet")
    data = load_dataset("shapes", "train")
    sample = next(data[i] for i in range(20) if len(set(data[i]["labels"].tolist())) >= 2)
    anchors = generate_anchors((32, 32), 4, cfg.anchor_sizes, cfg.aspect_ratios, 0.5)
    anchors = anchors.astype(np.float64)[::7]  # a subset keeps the loops fast
    gt = sample["boxes"].astype(np.float64)
    labels, _, _ = RetinaNetTargets.from_config(cfg)(anchors, gt, sample["labels"])
    want, _ = brute_force(anchors, gt, sample["labels"])
    np.testing.assert_array_equal(labels, want)
    assert len(set(labels[labels > 0].tolist())) >= 2  # two classes of positives


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    g=st.integers(0, 5),
    snap=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_numba_targets_are_the_references_bit_for_bit(seed, g, snap, dtype):
    # the numba path (IoU kernel on (G, M), transposed; the one-pass matcher) gives the same
    # labels, targets and matches as the references, exactly
    rng = np.random.default_rng(seed)
    anchors = generate_anchors((6, 5), 8, (8, 16, 24), (0.5, 1.0, 2.0), offset=0.5).astype(dtype)
    if snap and g:
        gt = anchors[rng.integers(0, len(anchors), g)] * rng.choice([1.0, 0.5, 2.0], size=(g, 1))
    else:
        wh = rng.uniform(2, 40, (g, 2))
        xy = rng.uniform(-4, 40, (g, 2))
        gt = np.concatenate([xy, xy + wh], axis=1)
    gt = gt.astype(dtype)
    gt_labels = rng.integers(1, 4, g)
    t = RetinaNetTargets()
    want = t(anchors, gt, gt_labels, backend="numpy")
    got = t(anchors, gt, gt_labels, backend="numba")
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and np.array_equal(a, b)
