"""The proposal layer: properties of its output, ties, empty results, backends agree."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.detector.anchors import generate_anchors
from minirccn.ops.boxes import box_iou_reference
from minirccn.config import preset
from minirccn.detector.rpn.proposal_layer import (
    ProposalCreator,
    objectness_scores,
    proposals_one_image,
    top_n,
)


def test_objectness_is_softmax_object_column():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 2)) * 5
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        objectness_scores(logits), (e / e.sum(1, keepdims=True))[:, 1], rtol=1e-12
    )


def test_top_n_breaks_ties_by_index():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1], np.float32)
    assert top_n(scores, 3).tolist() == [1, 3, 0]
    assert top_n(scores, 10).tolist() == [1, 3, 0, 2, 4]
    assert top_n(np.zeros(0, np.float32), 5).shape == (0,)


def _inputs(seed, m_side=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    anchors = generate_anchors((m_side, m_side), 16, (16, 32), (0.5, 1.0, 2.0)).astype(dtype)
    m = anchors.shape[0]
    logits = rng.normal(size=(m, 2)).astype(dtype)
    deltas = (rng.normal(size=(m, 4)) * 0.5).astype(dtype)
    return logits, deltas, anchors


@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 100),
    st.integers(1, 50),
    st.sampled_from([0.3, 0.7, 1.0]),
    st.sampled_from([np.float32, np.float64]),
)
def test_proposal_properties(seed, pre, post, thresh, dtype):
    logits, deltas, anchors = _inputs(seed, dtype=dtype)
    if seed % 4 == 0:
        logits[:] = 0  # every score tied
    boxes, scores, _ = proposals_one_image(
        logits,
        deltas,
        anchors,
        [len(anchors)],
        (50, 60),
        pre_nms_top_n=pre,
        post_nms_top_n=post,
        nms_thresh=thresh,
        min_size=1.0,
        backend="numpy",
    )
    assert boxes.dtype == dtype and scores.dtype == dtype
    assert boxes.shape[0] == scores.shape[0] <= min(post, pre)
    assert np.all(np.diff(scores) <= 0)  # best first
    assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= 60)  # clipped
    assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= 50)
    assert np.all(boxes[:, 2] - boxes[:, 0] >= 1.0) and np.all(boxes[:, 3] - boxes[:, 1] >= 1.0)
    iou = box_iou_reference(boxes.astype(np.float64), boxes.astype(np.float64))
    np.fill_diagonal(iou, 0)
    assert np.all(iou <= thresh + 1e-6)  # survived NMS
    # every score is one of the top-`pre` anchor scores
    all_scores = np.sort(objectness_scores(logits))[::-1][:pre]
    assert np.all(np.isin(scores, all_scores))


def test_no_proposal_survives():
    logits, deltas, anchors = _inputs(0)
    boxes, scores, _ = proposals_one_image(
        logits,
        deltas,
        anchors,
        [len(anchors)],
        (64, 64),
        pre_nms_top_n=100,
        post_nms_top_n=10,
        min_size=1000.0,
        backend="numpy",
    )
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_separate_train_and_test_numbers_are_honoured():
    logits, deltas, anchors = _inputs(1, m_side=8)
    cfg = preset("tiny")
    train = ProposalCreator.from_config(cfg, training=True)
    test = ProposalCreator.from_config(cfg, training=False)
    assert (train.pre_nms_top_n, train.post_nms_top_n) == (
        cfg.rpn_pre_nms_top_n_train,
        cfg.rpn_post_nms_top_n_train,
    )
    assert (test.pre_nms_top_n, test.post_nms_top_n) == (
        cfg.rpn_pre_nms_top_n_test,
        cfg.rpn_post_nms_top_n_test,
    )
    assert (test.nms_thresh, test.min_size) == (cfg.rpn_nms_thresh, cfg.rpn_min_size)
    small = ProposalCreator(pre_nms_top_n=20, post_nms_top_n=5)
    big = ProposalCreator(pre_nms_top_n=400, post_nms_top_n=300)
    ((b_small, _),) = small(logits[None], deltas[None], anchors, [len(anchors)], [(128, 128)], backend="numpy")
    ((b_big, _),) = big(logits[None], deltas[None], anchors, [len(anchors)], [(128, 128)], backend="numpy")
    assert b_small.shape[0] == 5 and b_big.shape[0] > 5


@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_backends_agree_with_numpy(backend):
    logits, deltas, anchors = _inputs(2, m_side=3)
    layer = ProposalCreator(pre_nms_top_n=40, post_nms_top_n=20, nms_thresh=0.7, min_size=1e-3)
    ref = layer(logits[None], deltas[None], anchors, [len(anchors)], [(48, 48)], backend="numpy")
    got = layer(logits[None], deltas[None], anchors, [len(anchors)], [(48, 48)], backend=backend)
    np.testing.assert_allclose(np.asarray(got[0][0]), ref[0][0], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got[0][1]), ref[0][1])
