"""Box coding: deltas by hand, the round trip, the clamp, per-class decoding, every backend.

Values marked "torchvision" were checked by hand against
``torchvision.models.detection._utils.BoxCoder`` (torchvision 0.29.2, CPU).
"""

import math

import numpy as np
import pytest
from helpers import FLOATS, as_np, assert_matches_reference
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirccn.core.backend import gpu_available
from minirccn.ops.box_coder import (
    BBOX_XFORM_CLIP,
    decode_boxes,
    decode_boxes_reference,
    encode_boxes,
    encode_boxes_reference,
)

RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@st.composite
def box_pairs(draw, max_n=10):
    """``(targets, proposals, weights)``: ``n`` positive-size boxes each, of one dtype."""
    n = draw(st.integers(0, max_n))
    dtype = draw(st.sampled_from(FLOATS))

    def boxes():
        xy = draw(hnp.arrays(np.float64, (n, 2), elements=st.floats(-500, 500)))
        wh = draw(
            hnp.arrays(np.float64, (n, 2), elements=st.floats(4, 200))
        )  # size ratios < 1000/16: no clamp
        return np.concatenate([xy, xy + wh], axis=1).astype(dtype)

    weights = draw(st.sampled_from([(1.0, 1.0, 1.0, 1.0), RCNN_WEIGHTS, (2.0, 0.5, 3.0, 1.5)]))
    return boxes(), boxes(), weights


# ----------------------------------------------------------------------------- by hand


def test_encode_by_hand(backend, dtype):
    proposals = np.array([[0, 0, 10, 20], [0, 0, 10, 20], [0, 0, 10, 20]], dtype)
    targets = np.array(
        [[0, 0, 10, 20], [10, 20, 20, 40], [-5, -10, 15, 30]], dtype
    )  # same, shifted, doubled
    deltas = as_np(encode_boxes(targets, proposals, backend=backend))
    assert deltas.dtype == dtype and deltas.shape == (3, 4)
    expected = [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, math.log(2), math.log(2)]]
    np.testing.assert_allclose(deltas, expected, rtol=1e-6, atol=1e-7)
    weighted = as_np(encode_boxes(targets, proposals, RCNN_WEIGHTS, backend=backend))
    np.testing.assert_allclose(weighted, np.array(expected) * RCNN_WEIGHTS, rtol=1e-6, atol=1e-6)


def test_decode_by_hand(backend):
    boxes = np.array([[0, 0, 10, 20]], np.float64)
    deltas = np.array([[1, 1, math.log(2), 0]], np.float64)  # move by one box, double the width
    np.testing.assert_allclose(
        as_np(decode_boxes(deltas, boxes, backend=backend)), [[5, 20, 25, 40]]
    )


def test_clamp():
    boxes = np.array([[0, 0, 16, 16]], np.float32)
    deltas = np.array([[0, 0, 100, -100]], np.float32)  # exp(100) would overflow float32
    out = decode_boxes_reference(deltas, boxes)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000, rtol=1e-5)  # 16 * exp(log(1000/16))
    np.testing.assert_allclose(
        out[0, 3] - out[0, 1], 16 * math.exp(-100), atol=1e-6
    )  # no lower clamp
    # the clamp acts after dividing by the weights: 5 * log(1000/16) is just at the limit
    weighted = decode_boxes_reference(
        np.array([[0, 0, 5 * BBOX_XFORM_CLIP, 0]]), boxes.astype(np.float64), RCNN_WEIGHTS
    )
    np.testing.assert_allclose(weighted[0, 2] - weighted[0, 0], 1000)
    assert BBOX_XFORM_CLIP == math.log(1000 / 16)


def test_matches_torchvision_numbers():
    # BoxCoder((10, 10, 5, 5)).encode_single / decode_single, float32, by hand
    proposals = np.array([[10, 20, 50, 80], [0, 0, 7, 3]], np.float32)
    targets = np.array([[12, 18, 60, 90], [1, 1, 6, 5]], np.float32)
    deltas = encode_boxes_reference(targets, proposals, RCNN_WEIGHTS)
    expected = [[1.5, 0.6666667, 0.911608, 0.911608], [0.0, 5.0, -1.6823611, 1.4384105]]
    np.testing.assert_allclose(deltas, expected, rtol=1e-6)
    np.testing.assert_allclose(
        decode_boxes_reference(deltas, proposals, RCNN_WEIGHTS), targets, rtol=1e-6
    )


# ----------------------------------------------------------------------------- properties


@given(box_pairs())
def test_round_trip(case):
    targets, proposals, weights = case
    deltas = encode_boxes_reference(targets, proposals, weights)
    assert deltas.dtype == targets.dtype and deltas.shape == targets.shape
    decoded = decode_boxes_reference(deltas, proposals, weights)
    tol = 2e-3 if targets.dtype == np.float32 else 1e-9  # float32 coordinates up to ~800
    np.testing.assert_allclose(decoded, targets, rtol=0, atol=tol)


@given(box_pairs(), st.integers(1, 4))
def test_per_class_deltas(case, k):
    _, boxes, weights = case
    rng = np.random.default_rng(len(boxes))
    deltas = rng.normal(0, 1, (len(boxes), 4 * k)).astype(boxes.dtype)
    out = decode_boxes_reference(deltas, boxes, weights)
    assert out.shape == deltas.shape and out.dtype == boxes.dtype
    for c in range(k):  # class c's columns decode exactly like a (N, 4) call
        np.testing.assert_array_equal(
            out[:, 4 * c : 4 * c + 4],
            decode_boxes_reference(deltas[:, 4 * c : 4 * c + 4], boxes, weights),
        )


def test_backends_agree(fast_backend):
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 100, (6, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2] + 1
    targets = boxes[::-1].copy()
    deltas = rng.normal(0, 1, (6, 8)).astype(np.float32)
    encode, decode = encode_boxes_reference, decode_boxes_reference
    w = RCNN_WEIGHTS
    assert_matches_reference(encode_boxes, encode, targets, boxes, w, backend=fast_backend)
    assert_matches_reference(decode_boxes, decode, deltas, boxes, backend=fast_backend)


def test_empty_and_mixed_dtypes(backend):
    empty = np.zeros((0, 4), np.float32)
    assert as_np(encode_boxes(empty, empty, backend=backend)).shape == (0, 4)
    assert as_np(decode_boxes(np.zeros((0, 8), np.float32), empty, backend=backend)).shape == (0, 8)
    out = as_np(
        decode_boxes(
            np.zeros((1, 4), np.float32), np.array([[0, 0, 1, 1]], np.float64), backend=backend
        )
    )
    assert out.dtype == np.float64


def test_zero_size_proposal_gives_inf_not_a_warning():
    with np.errstate(all="raise"):
        deltas = encode_boxes_reference(np.array([[0, 0, 1, 1.0]]), np.array([[0, 0, 0, 1.0]]))
    assert np.isinf(deltas[0, 0]) and np.isinf(deltas[0, 2])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: encode_boxes(np.zeros((2, 4)), np.zeros((3, 4))), ValueError, "proposals"),
        (lambda: encode_boxes(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, "reference_boxes"),
        (
            lambda: encode_boxes(np.zeros((2, 4), np.int64), np.zeros((2, 4))),
            TypeError,
            "reference_boxes",
        ),
        (
            lambda: encode_boxes(np.zeros((2, 4)), np.zeros((2, 4)), (1, 1, 1)),
            ValueError,
            "weights",
        ),
        (lambda: encode_boxes(np.zeros((2, 4)), np.zeros((2, 4)), 1.0), TypeError, "weights"),
        (lambda: decode_boxes(np.zeros((2, 5)), np.zeros((2, 4))), ValueError, "deltas"),
        (lambda: decode_boxes(np.zeros((2, 0)), np.zeros((2, 4))), ValueError, "deltas"),
        (lambda: decode_boxes(np.zeros((2, 4), np.int32), np.zeros((2, 4))), TypeError, "deltas"),
        (lambda: decode_boxes(np.zeros((2, 4)), np.zeros((3, 4))), ValueError, "boxes"),
        (
            lambda: decode_boxes(np.zeros((2, 4)), np.zeros((2, 4)), (1, 1, 0, 1)),
            ValueError,
            "weights",
        ),
        (
            lambda: decode_boxes(np.zeros((2, 4)), np.zeros((2, 4)), backend="metal"),
            ValueError,
            "backend",
        ),
    ],
)
def test_validation_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ----------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_box_coder_matches_reference(dtype):
    import cupy

    assert gpu_available()
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 500, (1000, 4)).astype(dtype)
    boxes[:, 2:] += boxes[:, :2] + 1
    targets = boxes[::-1].copy()
    deltas = rng.normal(0, 1, (1000, 12)).astype(dtype)
    enc = encode_boxes(cupy.asarray(targets), cupy.asarray(boxes), RCNN_WEIGHTS)
    assert isinstance(enc, cupy.ndarray)
    np.testing.assert_allclose(
        enc.get(), encode_boxes_reference(targets, boxes, RCNN_WEIGHTS), rtol=1e-5, atol=1e-5
    )
    dec = decode_boxes(cupy.asarray(deltas), cupy.asarray(boxes), RCNN_WEIGHTS)
    np.testing.assert_allclose(
        dec.get(), decode_boxes_reference(deltas, boxes, RCNN_WEIGHTS), rtol=1e-5, atol=1e-3
    )
