"""NMS and batched NMS: the rules, every backend against the reference, the kernels' parts.

Expected index lists marked "torchvision" were computed by hand with
``torchvision.ops.nms`` / ``batched_nms`` (torchvision 0.29.2, CPU) and are
written out so the suite never imports torch.
"""

import math

import numpy as np
import pytest
from helpers import BACKENDS, FLOATS, as_np, assert_matches_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from minirccn.kernels import nms as kernels

from minirccn.core.backend import gpu_available
from minirccn.core.dispatch import kernel
from minirccn.ops.boxes import box_iou_reference
from minirccn.ops.nms import (
    batched_nms,
    batched_nms_reference,
    nms,
    nms_reference,
    nms_sorted_reference,
    score_order,
)


# ----------------------------------------------------------------------------- inputs


@st.composite
def nms_inputs(draw, max_n=12, nan=True):
    """``(boxes (n, 4), scores (n,), idxs (n,), threshold)``: grid coordinates (ties, touching
    edges, zero-area boxes, IoU exactly at the threshold) or arbitrary float32 values,
    tied scores, and sometimes NaN boxes or scores."""
    n = draw(st.integers(0, max_n))
    dtype = draw(st.sampled_from(FLOATS))
    grid = st.integers(-2, 12).map(lambda v: v / 2)
    anywhere = st.floats(-20, 40, width=32)
    coord = draw(st.sampled_from([grid, anywhere]))
    xy = draw(hnp.arrays(np.float64, (n, 2), elements=coord))
    wh = draw(hnp.arrays(np.float64, (n, 2), elements=st.one_of(grid.map(abs), anywhere.map(abs))))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(dtype)
    score = st.one_of(st.sampled_from([0.0, 0.25, 1.0, 2.0]), st.floats(0, 1, width=32))
    scores = draw(hnp.arrays(np.float64, (n,), elements=score)).astype(dtype)
    if nan and n and draw(st.booleans()):
        rows = draw(st.lists(st.integers(0, n - 1), max_size=2))
        if draw(st.booleans()):
            scores[rows] = np.nan
        else:
            boxes[rows, draw(st.integers(0, 3))] = np.nan
    idxs = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    threshold = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1))
    return boxes, scores, idxs, threshold


def clustered(rng, n, clusters, dtype=np.float32):
    """``n`` boxes jittered around ``clusters`` centres (what an RPN emits) and their scores."""
    centres = rng.uniform(0, 500, (clusters, 2))
    sizes = rng.uniform(10, 100, (clusters, 2))
    which = rng.integers(0, clusters, n)
    ctr = centres[which] + rng.normal(0, 0.1, (n, 2)) * sizes[which]
    wh = sizes[which] * rng.uniform(0.8, 1.25, (n, 2))
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=1).astype(dtype)
    return boxes, rng.random(n).astype(dtype)


# ----------------------------------------------------------------------------- properties


def check_greedy(boxes, scores, idxs, threshold, keep):
    """``keep`` is what greedy NMS must return: the properties, checked without the reference."""
    n = boxes.shape[0]
    assert keep.dtype == np.int64 and keep.ndim == 1
    assert len(np.unique(keep)) == len(keep) and np.all((keep >= 0) & (keep < n))
    # score order: decreasing, ties by lower index, NaN first
    key = [
        (0 if math.isnan(scores[k]) else 1, 0 if math.isnan(scores[k]) else -scores[k], k)
        for k in keep
    ]
    assert key == sorted(key)
    same = idxs[:, None] == idxs[None, :]
    iou = box_iou_reference(boxes, boxes).astype(np.float64)
    # kept boxes never overlap one another (in a category) by more than the threshold
    sub = (iou > threshold)[np.ix_(keep, keep)] & same[np.ix_(keep, keep)]
    assert not np.any(np.triu(sub, 1))
    # every dropped box overlaps a kept box of its category that comes before it
    rank = np.empty(n, np.int64)
    rank[score_order(scores)] = np.arange(n)
    for d in np.setdiff1d(np.arange(n), keep):
        assert np.any((iou[keep, d] > threshold) & same[keep, d] & (rank[keep] < rank[d])), d


@given(nms_inputs(max_n=16))
def test_reference_properties(case):
    boxes, scores, idxs, threshold = case
    check_greedy(
        boxes, scores, np.zeros_like(idxs), threshold, nms_reference(boxes, scores, threshold)
    )
    check_greedy(
        boxes, scores, idxs, threshold, batched_nms_reference(boxes, scores, idxs, threshold)
    )


@given(nms_inputs(max_n=16))
def test_batched_is_nms_per_category(case):
    boxes, scores, idxs, threshold = case
    keep = batched_nms_reference(boxes, scores, idxs, threshold)
    for c in np.unique(idxs):
        members = np.nonzero(idxs == c)[0]
        expected = members[nms_reference(boxes[members], scores[members], threshold)]
        np.testing.assert_array_equal(keep[idxs[keep] == c], expected)


# ------------------------------------------------------------------------- backends vs reference


@settings(max_examples=30)
@given(case=nms_inputs())
def test_backend_matches_reference(fast_backend, case):
    boxes, scores, idxs, threshold = case
    assert_matches_reference(nms, nms_reference, boxes, scores, threshold, backend=fast_backend)
    assert_matches_reference(
        batched_nms, batched_nms_reference, boxes, scores, idxs, threshold, backend=fast_backend
    )


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_numba_matches_reference_clustered(dtype, threshold):
    rng = np.random.default_rng(0)
    boxes, scores = clustered(rng, 1500, 15, dtype)
    scores = np.round(scores * 20).astype(dtype)  # many ties
    idxs = rng.integers(0, 4, 1500)
    keep = assert_matches_reference(nms, nms_reference, boxes, scores, threshold, backend="numba")
    assert 15 <= len(keep) < 750  # the case really suppresses (15 clusters, 1500 boxes)
    assert_matches_reference(
        batched_nms, batched_nms_reference, boxes, scores, idxs, threshold, backend="numba"
    )


def test_cuda_matches_reference_several_blocks(dtype):
    # 150 boxes: 3 x 3 blocks of 64, so the mask has words from several column blocks
    rng = np.random.default_rng(1)
    boxes, scores = clustered(rng, 150, 4, dtype)
    idxs = rng.integers(0, 2, 150)
    assert_matches_reference(nms, nms_reference, boxes, scores, 0.5, backend="cuda")
    assert_matches_reference(
        batched_nms, batched_nms_reference, boxes, scores, idxs, 0.5, backend="cuda"
    )


# ------------------------------------------------------------------------- the rules, by example


@pytest.mark.parametrize("backend", BACKENDS)
class TestRules:
    def test_empty(self, backend):
        for dtype in FLOATS:
            empty = np.zeros((0, 4), dtype)
            for keep in (
                nms(empty, np.zeros(0, dtype), 0.5, backend=backend),
                batched_nms(empty, np.zeros(0, dtype), np.zeros(0, np.int64), 0.5, backend=backend),
            ):
                assert as_np(keep).dtype == np.int64 and as_np(keep).shape == (0,)

    def test_one_box(self, backend):
        keep = as_np(
            nms(
                np.array([[0, 0, 1, 1]], np.float32),
                np.array([0.5], np.float32),
                0.5,
                backend=backend,
            )
        )
        np.testing.assert_array_equal(keep, [0])

    def test_equal_scores_keep_lower_index(self, backend):
        boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (4, 1))
        # torchvision: [1] and [0]
        np.testing.assert_array_equal(
            as_np(nms(boxes, np.array([1, 2, 2, 1], np.float32), 0.5, backend=backend)), [1]
        )
        np.testing.assert_array_equal(
            as_np(nms(boxes, np.ones(4, np.float32), 0.5, backend=backend)), [0]
        )

    def test_strictly_greater_suppresses(self, backend):
        boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)  # IoU exactly 0.5
        scores = np.array([2, 1], np.float32)
        np.testing.assert_array_equal(
            as_np(nms(boxes, scores, 0.5, backend=backend)), [0, 1]
        )  # torchvision
        np.testing.assert_array_equal(as_np(nms(boxes, scores, 0.4999, backend=backend)), [0])

    def test_threshold_compared_in_float64(self, backend):
        # IoU = 1 / 10: float32(0.1) = 0.10000000149 > 0.1, but in float64 it is exactly 0.1
        boxes = np.array([[0, 0, 10, 1], [0, 0, 1, 1]], np.float64)
        scores = np.array([2.0, 1.0])
        keep32 = nms(boxes.astype(np.float32), scores.astype(np.float32), 0.1, backend=backend)
        keep64 = nms(boxes, scores, 0.1, backend=backend)
        np.testing.assert_array_equal(as_np(keep32), [0])  # torchvision
        np.testing.assert_array_equal(as_np(keep64), [0, 1])  # torchvision

    def test_zero_area_and_touching_boxes(self, backend):
        zero = np.array([[1, 1, 1, 1], [1, 1, 1, 1]], np.float64)  # union 0: IoU 0, both kept
        np.testing.assert_array_equal(as_np(nms(zero, np.ones(2), 0.0, backend=backend)), [0, 1])
        touching = np.array([[0, 0, 1, 1], [1, 0, 2, 1]], np.float64)  # IoU 0 is not > 0
        np.testing.assert_array_equal(
            as_np(nms(touching, np.ones(2), 0.0, backend=backend)), [0, 1]
        )

    def test_nan_scores_rank_first(self, backend):
        boxes = np.array(
            [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], np.float32
        )
        scores = np.array([1, np.nan, 3, np.inf], np.float32)
        np.testing.assert_array_equal(
            as_np(nms(boxes, scores, 0.5, backend=backend)), [1, 3, 2, 0]
        )  # torchvision

    def test_nan_boxes_neither_suppress_nor_are_suppressed(self, backend):
        boxes = np.array(
            [[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, 10, 10], [0, np.nan, 10, 10]], np.float32
        )
        scores = np.array([4, 3, 2, 1], np.float32)
        np.testing.assert_array_equal(as_np(nms(boxes, scores, 0.5, backend=backend)), [0, 1, 3])
        np.testing.assert_array_equal(
            as_np(batched_nms(boxes, scores, np.zeros(4, np.int64), 0.5, backend=backend)),
            [0, 1, 3],
        )

    def test_batched_only_within_category(self, backend):
        boxes = np.array(
            [[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32
        )
        scores = np.array([0.9, 0.8, 0.95, 0.5], np.float32)
        keep = batched_nms(boxes, scores, np.array([0, 0, 1, 1]), 0.5, backend=backend)
        np.testing.assert_array_equal(as_np(keep), [2, 0, 3])  # torchvision
        keep = batched_nms(boxes, scores, np.array([0, 1, 2, 3], np.uint8), 0.5, backend=backend)
        np.testing.assert_array_equal(as_np(keep), [2, 0, 1, 3])


def test_same_result_every_call():
    rng = np.random.default_rng(2)
    boxes, scores = clustered(rng, 500, 5)
    first = nms(boxes, scores, 0.7, backend="numba")
    for _ in range(3):
        np.testing.assert_array_equal(nms(boxes, scores, 0.7, backend="numba"), first)


def test_score_order():
    scores = np.array([1.0, np.nan, 3.0, 3.0, -np.inf, np.nan, np.inf])
    np.testing.assert_array_equal(score_order(scores), [1, 5, 6, 2, 3, 0, 4])
    assert score_order(np.zeros(0)).dtype == np.int64


# ----------------------------------------------------------------------------- the kernels' parts


def test_reduce_mask_by_hand():
    # 3 boxes: 0 suppresses 1, 1 would suppress 2 but is itself suppressed, so 2 survives
    mask = np.array([[0b010], [0b100], [0b000]], np.uint64)
    np.testing.assert_array_equal(kernels.reduce_mask(mask), [0, 2])
    # across a word boundary: box 0 suppresses box 64 (word 1, bit 0)
    mask = np.zeros((66, 2), np.uint64)
    mask[0, 1] = 1
    np.testing.assert_array_equal(kernels.reduce_mask(mask), [i for i in range(66) if i != 64])


def test_mask_bits_by_hand():
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]], np.float32
    )
    labels = np.array([0, 0, 1, 0], np.int64)
    mask = kernels.nms_mask_cuda(boxes, labels, 0.5)
    # box 0 suppresses box 1 (same label), not box 2 (other label) nor box 3 (disjoint)
    np.testing.assert_array_equal(mask[:, 0], np.array([0b0010, 0, 0, 0], np.uint64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sorted_walk_keeps_categories_apart(backend):
    # four copies of one box: only a box of the same category suppresses, whatever the order
    boxes = np.array([[0, 0, 10, 10]] * 4, np.float64)
    walk = kernel("nms_sorted", backend)
    for labels, kept in (([0, 0, 1, 2], [0, 2, 3]), ([0, 1, 0, 1], [0, 1]), (None, [0])):
        labels = None if labels is None else np.array(labels, np.int64)
        positions = as_np(walk(boxes, labels, 0.5))
        assert positions.dtype == np.int64
        np.testing.assert_array_equal(positions, kept)
    assert as_np(walk(np.zeros((0, 4)), None, 0.5)).shape == (0,)


@settings(max_examples=20)
@given(data=nms_inputs(max_n=12))
def test_sorted_walk_kernels_match_its_reference(fast_backend, data):
    boxes, scores, idxs, threshold = data
    ordered = boxes[score_order(scores)]
    for labels in (None, idxs.astype(np.int64)):
        np.testing.assert_array_equal(
            as_np(kernel("nms_sorted", fast_backend)(ordered, labels, threshold)),
            nms_sorted_reference(ordered, labels, threshold),
        )


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: nms(np.zeros((2, 4, 1)), np.zeros(2), 0.5), ValueError, "boxes"),
        (lambda: nms(np.zeros((2, 3)), np.zeros(2), 0.5), ValueError, "boxes"),
        (lambda: nms(np.zeros((2, 4), np.int64), np.zeros(2), 0.5), TypeError, "boxes"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(3), 0.5), ValueError, "scores"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2, np.int32), 0.5), TypeError, "scores"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), -0.1), ValueError, "iou_threshold"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), float("nan")), ValueError, "iou_threshold"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), "high"), TypeError, "iou_threshold"),
        (lambda: nms(np.zeros((2, 4)), np.zeros(2), 0.5, backend="tpu"), ValueError, "backend"),
        (lambda: batched_nms(np.zeros((2, 4)), np.zeros(2), np.zeros(2), 0.5), TypeError, "idxs"),
        (
            lambda: batched_nms(np.zeros((2, 4)), np.zeros(2), np.zeros(3, np.int64), 0.5),
            ValueError,
            "idxs",
        ),
    ],
)
def test_validation_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ----------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["cuda", "cudac"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_matches_reference(impl, dtype):
    import cupy

    assert gpu_available()
    rng = np.random.default_rng(3)
    boxes, scores = clustered(rng, 3000, 30, dtype)
    scores = np.round(scores * 50).astype(dtype)
    idxs = rng.integers(0, 5, 3000)
    expected = nms_reference(boxes, scores, 0.7)
    keep = nms(
        cupy.asarray(boxes), cupy.asarray(scores), 0.7
    )  # CuPy arrays select the cuda backend
    assert isinstance(keep, cupy.ndarray)
    np.testing.assert_array_equal(keep.get(), expected)
    np.testing.assert_array_equal(
        batched_nms(cupy.asarray(boxes), cupy.asarray(scores), cupy.asarray(idxs), 0.7).get(),
        batched_nms_reference(boxes, scores, idxs, 0.7),
    )
    # the Numba-CUDA walk and its CUDA C twin directly, on the sorted boxes
    order = score_order(scores)
    ordered = cupy.asarray(boxes[order])
    for labels in (None, idxs[order]):
        got = kernel("nms_sorted", impl)(
            ordered, None if labels is None else cupy.asarray(labels), 0.7
        )
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(got.get(), nms_sorted_reference(boxes[order], labels, 0.7))
