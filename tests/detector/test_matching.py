"""The one Matcher and the one BalancedPositiveNegativeSampler, directly and through the RPN's
and the RoI head's target creators: exactly at every threshold, at non-default and default
fractions, and draw for draw against explicit ``rng.permutation`` calls."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.config import FasterRCNNConfig, preset
from minirccn.detector.rpn.targets import AnchorTargetCreator
from minirccn.detector.roi_heads.targets import ProposalTargetCreator
from minirccn.detector.matching import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    BalancedPositiveNegativeSampler,
    Matcher,
)

BELOW, BETWEEN = BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS


def strips(percents, dtype=np.float64):
    """Boxes ``[0, 0, k, 1]`` and the ground truth ``[0, 0, 100, 1]``: IoU exactly ``k / 100``
    (``k / 100`` integers divided once: the float nearest to the decimal, e.g. 0.7 itself)."""
    boxes = np.array([[0, 0, k, 1] for k in percents], dtype)
    return boxes, np.array([[0, 0, 100, 1]], dtype)


# ------------------------------------------------------------------------ Matcher


def matcher_loop(iou, high, low, allow_low_quality):
    """The matching rule, one box and one ground truth at a time."""
    m, g = iou.shape
    if m == 0 or g == 0:
        return [BELOW] * m
    out = []
    for i in range(m):
        j = max(range(g), key=lambda k: (iou[i, k], -k))  # first best on a tie
        best = iou[i, j]
        out.append(j if best >= high else (BELOW if best < low else BETWEEN))
    if allow_low_quality:
        for j in range(g):
            top = max(iou[i, j] for i in range(m))
            for i in range(m):
                if top > 0 and iou[i, j] == top:
                    out[i] = max(range(g), key=lambda k: (iou[i, k], -k))
    return out


@given(
    st.integers(0, 12),
    st.integers(0, 4),
    st.booleans(),
    st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.5, 0.4), (0.5, 0.0)]),
    st.integers(0, 2**31 - 1),
)
def test_matcher_matches_the_loop(m, g, allow, thresholds, seed):
    # IoU values on a grid that holds every threshold: exact hits and ties everywhere
    grid = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0])
    iou = np.random.default_rng(seed).choice(grid, size=(m, g))
    high, low = thresholds
    got = Matcher(high, low, allow)(iou)
    assert got.dtype == np.int64 and got.shape == (m,)
    assert got.tolist() == matcher_loop(iou, high, low, allow)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matcher_exactly_at_the_rpn_thresholds(dtype):
    iou = np.array([[0.29], [0.3], [0.31], [0.69], [0.7], [0.71], [1.0]], dtype)
    assert Matcher(0.7, 0.3)(iou).tolist() == [BELOW, BETWEEN, BETWEEN, BETWEEN, 0, 0, 0]


def test_matcher_exactly_at_equal_thresholds():
    iou = np.array([[0.0], [0.49], [0.5], [0.51]])
    assert Matcher(0.5, 0.5)(iou).tolist() == [BELOW, BELOW, 0, 0]


def test_low_quality_matches_ties_and_zero():
    # ground truth 0: best IoU 0.25, shared by boxes 0 and 1 (a tie): both matched;
    # ground truth 1: overlaps nothing (IoU 0 everywhere): promotes nothing
    iou = np.array([[0.25, 0.0], [0.25, 0.0], [0.1, 0.0], [0.0, 0.0]])
    assert Matcher(0.7, 0.3, True)(iou).tolist() == [0, 0, BELOW, BELOW]
    assert Matcher(0.7, 0.3, False)(iou).tolist() == [BELOW, BELOW, BELOW, BELOW]


def test_low_quality_match_keeps_the_boxs_own_best():
    # box 0 is ground truth 1's best box, but its own best is ground truth 0 (as torchvision)
    iou = np.array([[0.6, 0.5], [0.1, 0.2]])
    assert Matcher(0.7, 0.3, True)(iou).tolist() == [0, BELOW]


def test_matcher_first_ground_truth_wins_a_tie():
    assert Matcher(0.7, 0.3)(np.array([[0.8, 0.8], [0.2, 0.9]])).tolist() == [0, 1]


def test_matcher_empty_inputs():
    assert Matcher(0.7, 0.3, True)(np.zeros((5, 0))).tolist() == [BELOW] * 5
    assert Matcher(0.7, 0.3, True)(np.zeros((0, 3))).shape == (0,)


def test_matcher_rejects_low_above_high():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


# ------------------------------------------------------------------------ Sampler


def labels_with(n_pos, n_neg, n_ignored=5, seed=0, pos_label=1):
    labels = np.array([pos_label] * n_pos + [0] * n_neg + [-1] * n_ignored, np.int64)
    return labels[np.random.default_rng(seed).permutation(labels.size)]


@pytest.mark.parametrize(
    "batch, fraction, n_pos, n_neg, want_pos, want_neg",
    [
        (16, 0.25, 20, 50, 4, 12),  # non-default fraction, both plentiful
        (14, 0.25, 20, 50, 3, 11),  # int(3.5) = 3: truncation, not rounding
        (16, 0.25, 2, 50, 2, 14),  # few positives: negatives fill the batch
        (16, 0.25, 20, 5, 4, 5),  # few negatives: the batch is not filled
        (16, 0.5, 20, 50, 8, 8),
        (256, 0.5, 300, 1000, 128, 128),  # the RPN's default
        (128, 0.25, 300, 1000, 32, 96),  # the RoI head's default
        (7, 0.0, 3, 3, 0, 3),
    ],
)
def test_sampler_counts(batch, fraction, n_pos, n_neg, want_pos, want_neg):
    labels = labels_with(n_pos, n_neg, pos_label=2)  # a class label >= 1 is positive
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels, np.random.default_rng(0))
    assert (pos.size, neg.size) == (want_pos, want_neg)
    assert np.all(labels[pos] == 2) and np.all(labels[neg] == 0)
    assert np.unique(np.concatenate([pos, neg])).size == pos.size + neg.size
    assert pos.dtype == neg.dtype == np.int64


@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_sampler_draws_exactly_two_permutations(n_pos, n_neg, batch, seed):
    labels = labels_with(n_pos, n_neg, seed=seed)
    rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
    pos, neg = BalancedPositiveNegativeSampler(batch, 0.25)(labels, rng)
    all_pos, all_neg = np.nonzero(labels == 1)[0], np.nonzero(labels == 0)[0]
    num_pos = min(n_pos, int(batch * 0.25))
    num_neg = min(n_neg, batch - num_pos)
    assert pos.tolist() == all_pos[twin.permutation(n_pos)[:num_pos]].tolist()
    assert neg.tolist() == all_neg[twin.permutation(n_neg)[:num_neg]].tolist()
    assert rng.integers(2**62) == twin.integers(2**62)  # the generator is left in step


def test_sampler_is_random_and_seeded():
    labels = labels_with(0, 1000)
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    a = sampler(labels, np.random.default_rng(3))[1]
    b = sampler(labels, np.random.default_rng(3))[1]
    c = sampler(labels, np.random.default_rng(4))[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------ the creators' numbers


def test_default_fractions_come_from_the_config():
    cfg, tiny = FasterRCNNConfig(), preset("tiny")
    assert (cfg.rpn_positive_fraction, cfg.box_positive_fraction) == (0.5, 0.25)
    assert (cfg.rpn_batch_size_per_image, cfg.box_batch_size_per_image) == (256, 128)
    labels = labels_with(300, 1000)
    for creator, batch, fraction in [
        (AnchorTargetCreator(), 256, 0.5),
        (AnchorTargetCreator.from_config(cfg), 256, 0.5),
        (ProposalTargetCreator(), 128, 0.25),
        (ProposalTargetCreator.from_config(cfg), 128, 0.25),
        (ProposalTargetCreator.from_config(tiny), 64, 0.5),
    ]:
        pos, neg = creator.sampler(labels, np.random.default_rng(0))
        assert (pos.size, neg.size) == (int(batch * fraction), batch - int(batch * fraction))


def test_from_config_uses_every_field():
    cfg = FasterRCNNConfig(
        rpn_fg_iou_thresh=0.6,
        rpn_bg_iou_thresh=0.2,
        rpn_batch_size_per_image=20,
        rpn_positive_fraction=0.25,
        rpn_allowed_border=3,
        box_fg_iou_thresh=0.55,
        box_bg_iou_thresh=0.45,
        box_bg_iou_lo=0.1,
        box_batch_size_per_image=12,
        box_positive_fraction=0.75,
        bbox_reg_weights=(1.0, 2.0, 3.0, 4.0),
    )
    a, p = AnchorTargetCreator.from_config(cfg), ProposalTargetCreator.from_config(cfg)
    assert (a.matcher.high_threshold, a.matcher.low_threshold) == (0.6, 0.2)
    assert a.matcher.allow_low_quality_matches and a.allowed_border == 3
    assert (a.sampler.batch_size_per_image, a.sampler.positive_fraction) == (20, 0.25)
    assert (p.matcher.high_threshold, p.matcher.low_threshold) == (0.55, 0.45)
    assert not p.matcher.allow_low_quality_matches
    assert (p.bg_iou_lo, p.weights) == (0.1, (1.0, 2.0, 3.0, 4.0))
    assert (p.sampler.batch_size_per_image, p.sampler.positive_fraction) == (12, 0.75)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_anchor_labels_exactly_at_0_7_and_0_3(dtype):
    # IoU 0.29 / 0.30 / 0.31 / 0.69 / 0.70 / 0.71; the 1.0 box takes the low-quality rule
    boxes, gt = strips([29, 30, 31, 69, 70, 71, 100], dtype)
    creator = AnchorTargetCreator.from_config(FasterRCNNConfig())
    labels, matches = creator.label(boxes, gt)
    assert labels.tolist() == [0, -1, -1, -1, 1, 1, 1]
    assert matches.tolist() == [BELOW, BETWEEN, BETWEEN, BETWEEN, 0, 0, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_proposal_labels_exactly_at_0_5_and_bg_lo(dtype):
    boxes, gt = strips([9, 10, 11, 49, 50, 51], dtype)
    labels, _ = ProposalTargetCreator.from_config(FasterRCNNConfig()).label(boxes, gt, [3])
    assert labels.tolist() == [0, 0, 0, 0, 3, 3]
    labels, _ = ProposalTargetCreator(bg_iou_lo=0.1).label(boxes, gt, [3])
    assert labels.tolist() == [-1, 0, 0, 0, 3, 3]  # IoU exactly 0.1 is background


def test_proposal_sampling_at_a_quarter():
    # 40 foreground (IoU >= 0.5) and 60 background proposals; 16 sampled, 25 % foreground
    boxes, gt = strips([60] * 40 + [20] * 60)
    rois, labels, targets = ProposalTargetCreator(
        batch_size_per_image=16, positive_fraction=0.25
    )(boxes, gt, [1], np.random.default_rng(0))
    assert labels.tolist() == [1] * 4 + [0] * 12
    assert np.all(targets[4:] == 0) and np.all(targets[:4, [0, 2]] != 0)


# ----------------------------------------------------------------------------- the numba matcher


@given(
    st.integers(1, 30),
    st.integers(1, 5),
    st.booleans(),
    st.sampled_from([(0.7, 0.3), (0.5, 0.5), (0.5, 0.4), (0.5, 0.0)]),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_numba_matcher_equals_the_reference(m, g, allow, thresholds, dtype, transposed, nans, seed):
    # values on a grid holding every threshold in both dtypes (exact hits, ties), NaNs when
    # asked, and a (G, M) result matched through its transpose as the RetinaNet targets do
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0] + ([np.nan] if nans else [])
    iou = np.random.default_rng(seed).choice(np.array(grid), size=(m, g)).astype(dtype)
    if transposed:
        iou = np.ascontiguousarray(iou.T).T
    high, low = thresholds
    want = Matcher(high, low, allow)(iou, backend="numpy")
    got = Matcher(high, low, allow)(iou, backend="numba")
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    if not nans:
        assert got.tolist() == matcher_loop(iou, high, low, allow)


def test_numba_matcher_random_ious_and_empty():
    rng = np.random.default_rng(0)
    iou = rng.random((5000, 4)).astype(np.float32)
    for allow in (True, False):
        m = Matcher(0.5, 0.4, allow)
        assert np.array_equal(m(iou, backend="numba"), m(iou, backend="numpy"))
    assert Matcher(0.5, 0.4, True)(np.zeros((3, 0)), backend="numba").tolist() == [BELOW] * 3
    assert Matcher(0.5, 0.4, True)(np.zeros((0, 2)), backend="numba").shape == (0,)


@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 5),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
)
def test_rpn_anchor_targets_numba_equal_numpy(seed, g, dtype, snap):
    # the RPN's anchor labels through the numba IoU (on (G, M), transposed) and matcher: the
    # same labels, matches, samples and targets as the references, bit for bit
    from minirccn.detector.anchors import generate_anchors

    rng = np.random.default_rng(seed)
    anchors = generate_anchors((7, 6), 8, (16, 32), (0.5, 1.0, 2.0)).astype(dtype)
    if snap and g:
        gt = anchors[rng.integers(0, len(anchors), g)] * rng.choice([1.0, 0.5], size=(g, 1))
    else:
        xy = rng.uniform(-4, 40, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(2, 40, (g, 2))], axis=1)
    gt = gt.astype(dtype)
    creator = AnchorTargetCreator.from_config(preset("tiny"))
    for a, b in zip(creator.label(anchors, gt, (48, 56)), creator.label(anchors, gt, (48, 56), backend="numba")):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    want = creator(anchors, gt, (48, 56), np.random.default_rng(seed))
    got = creator(anchors, gt, (48, 56), np.random.default_rng(seed), backend="numba")
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and np.array_equal(a, b)
