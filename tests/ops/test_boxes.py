"""Box geometry: area, IoU (reference, properties, kernels), clipping, small-box removal.

Expected values marked "torchvision" were computed by hand with
``torchvision.ops`` (torchvision 0.29.2, CPU) and are written out so the suite
never imports torch.
"""

import numpy as np
import pytest
from helpers import FLOATS, as_np, assert_matches_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirccn.core.backend import gpu_available
from minirccn.kernels import boxes as kernels
from minirccn.ops.boxes import (
    box_area,
    box_area_reference,
    box_iou,
    box_iou_reference,
    clip_boxes,
    clip_boxes_reference,
    remove_small_boxes,
    remove_small_boxes_reference,
)


@st.composite
def boxes_of(draw, dtype, max_n=8, nan=False):
    """``(n, 4)`` valid boxes of ``dtype``: grid coordinates (ties, touching edges, zero
    width or height, identical boxes) or arbitrary floats; optionally a NaN coordinate."""
    n = draw(st.integers(0, max_n))
    grid = st.integers(-4, 16).map(lambda v: v / 2)
    anywhere = st.floats(-1e3, 1e3, width=32)
    coord = draw(st.sampled_from([grid, anywhere]))
    xy = draw(hnp.arrays(np.float64, (n, 2), elements=coord))
    wh = draw(hnp.arrays(np.float64, (n, 2), elements=coord.map(abs)))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(dtype)
    if nan and n and draw(st.booleans()):
        boxes[draw(st.integers(0, n - 1)), draw(st.integers(0, 3))] = np.nan
    return boxes


pairs = st.sampled_from(FLOATS).flatmap(
    lambda t: st.tuples(boxes_of(t, nan=True), boxes_of(t, nan=True))
)


# ----------------------------------------------------------------------------- area


def test_box_area(backend, dtype):
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [-1, -2, 1.5, 0.5]], dtype)
    area = as_np(box_area(boxes, backend=backend))
    assert area.dtype == dtype
    np.testing.assert_array_equal(area, [6, 0, 6.25])
    assert as_np(box_area(np.zeros((0, 4), dtype), backend=backend)).shape == (0,)


# ----------------------------------------------------------------------------- IoU


def test_iou_by_hand():
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]], np.float64)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [2, 0, 4, 2], [5, 5, 6, 6], [0, 0, 0, 0]], np.float64)
    expected = [
        [1 / 7, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]  # overlap, same, touching, disjoint, zero-area
    np.testing.assert_allclose(box_iou_reference(a, b), expected, rtol=1e-15)
    # torchvision gives NaN for the two zero-area boxes; the union is 0 and minirccn defines 0
    assert box_iou_reference(a[1:], b[4:])[0, 0] == 0


@given(pairs)
def test_iou_properties(pair):
    a, b = pair
    iou = box_iou_reference(a, b)
    assert iou.dtype == a.dtype and iou.shape == (len(a), len(b))
    np.testing.assert_array_equal(iou, box_iou_reference(b, a).T)  # symmetric, bit for bit
    nan_rows = np.isnan(a).any(axis=1)[:, None] | np.isnan(b).any(axis=1)[None, :]
    np.testing.assert_array_equal(np.isnan(iou), nan_rows)  # NaN exactly where a coordinate is NaN
    valid = iou[~nan_rows]
    assert np.all((valid >= 0) & (valid <= 1))
    zero_area = (box_area_reference(a) == 0)[:, None] | (box_area_reference(b) == 0)[None, :]
    assert np.all(iou[zero_area & ~nan_rows] == 0)
    disjoint = (
        np.maximum(a[:, None, 0], b[None, :, 0]) >= np.minimum(a[:, None, 2], b[None, :, 2])
    ) | (np.maximum(a[:, None, 1], b[None, :, 1]) >= np.minimum(a[:, None, 3], b[None, :, 3]))
    assert np.all(iou[disjoint & ~nan_rows] == 0)
    self_iou = np.diag(box_iou_reference(a, a))
    positive = box_area_reference(a) > 0
    np.testing.assert_array_equal(self_iou[positive], 1)


# the kernels repeat the reference's operations in its order: equal bit for bit
@settings(max_examples=25)
@given(pair=pairs)
def test_iou_kernels_match_reference(fast_backend, pair):
    assert_matches_reference(box_iou, box_iou_reference, *pair, backend=fast_backend)


def test_iou_kernels_larger(fast_backend, dtype):
    rng = np.random.default_rng(0)
    n, m = (300, 200) if fast_backend == "numba" else (20, 17)  # the simulator is slow
    a = rng.uniform(0, 100, (n, 4)).astype(dtype)
    a[:, 2:] += a[:, :2]
    b = rng.uniform(0, 100, (m, 4)).astype(dtype)
    b[:, 2:] += b[:, :2]
    assert_matches_reference(box_iou, box_iou_reference, a, b, backend=fast_backend)
    assert_matches_reference(box_iou, box_iou_reference, a, b[:0], backend=fast_backend)


def test_iou_mixed_dtypes_compute_in_float64(backend):
    a = np.array([[0, 0, 3, 3]], np.float32)
    b = np.array([[1, 1, 4, 4]], np.float64)
    iou = as_np(box_iou(a, b, backend=backend))
    assert iou.dtype == np.float64
    assert iou[0, 0] == 4 / 14


# ----------------------------------------------------------------------------- clip, remove small


def test_clip_boxes(backend, dtype):
    boxes = np.array(
        [[-5, -5, 300, 200], [10, 20, 30, 40], [300, 120, 400, 150], [np.nan, 1, 2, 3]], dtype
    )
    out = as_np(clip_boxes(boxes, (100, 250), backend=backend))
    assert out.dtype == dtype
    expected = [
        [0, 0, 250, 100],
        [10, 20, 30, 40],
        [250, 100, 250, 100],
        [np.nan, 1, 2, 3],
    ]  # torchvision
    np.testing.assert_array_equal(out, np.array(expected, dtype))
    assert boxes[0, 0] == -5  # the input is left alone


@given(st.sampled_from(FLOATS).flatmap(boxes_of), st.integers(0, 20), st.integers(0, 20))
def test_clip_properties(boxes, height, width):
    out = clip_boxes_reference(boxes, (height, width))
    assert np.all((out[:, 0::2] >= 0) & (out[:, 0::2] <= width))
    assert np.all((out[:, 1::2] >= 0) & (out[:, 1::2] <= height))
    inside = (
        (boxes[:, 0::2] >= 0).all(1)
        & (boxes[:, 0::2] <= width).all(1)
        & (boxes[:, 1::2] >= 0).all(1)
        & (boxes[:, 1::2] <= height).all(1)
    )
    np.testing.assert_array_equal(out[inside], boxes[inside])
    np.testing.assert_array_equal(clip_boxes_reference(out, (height, width)), out)  # idempotent


def test_remove_small_boxes(backend, dtype):
    boxes = np.array(
        [[0, 0, 1, 1], [0, 0, 0.5, 2], [0, 0, 2, 2], [0, 0, 2, 0.999], [np.nan, 0, 2, 2]], dtype
    )
    keep = as_np(remove_small_boxes(boxes, 1.0, backend=backend))
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, [0, 2])  # torchvision: width and height >= min_size
    np.testing.assert_array_equal(
        as_np(remove_small_boxes(boxes[:0], 1.0, backend=backend)), np.zeros(0)
    )
    np.testing.assert_array_equal(remove_small_boxes_reference(boxes, 0), [0, 1, 2, 3])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: box_area(np.zeros(4)), ValueError, "boxes"),
        (lambda: box_area(np.zeros((2, 4), np.int32)), TypeError, "boxes"),
        (lambda: box_iou(np.zeros((2, 5)), np.zeros((2, 4))), ValueError, "boxes1"),
        (lambda: box_iou(np.zeros((2, 4)), np.zeros((2, 4), np.int64)), TypeError, "boxes2"),
        (lambda: box_iou(np.zeros((2, 4)), [[0, 0, 1, 1, 2]]), TypeError, "boxes2"),
        (lambda: box_iou(np.zeros((2, 4)), np.zeros((2, 4)), backend="gpu"), ValueError, "backend"),
        (lambda: clip_boxes(np.zeros((2, 4)), (10,)), ValueError, "image_size"),
        (lambda: clip_boxes(np.zeros((2, 4)), (10, -1)), ValueError, "image_size"),
        (lambda: clip_boxes(np.zeros((2, 4)), ("a", 3)), TypeError, "image_size"),
        (lambda: remove_small_boxes(np.zeros((2, 4)), -1), ValueError, "min_size"),
        (lambda: remove_small_boxes(np.zeros((2, 4, 1)), 1), ValueError, "boxes"),
    ],
)
def test_validation_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ----------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
def test_gpu_box_ops_match_reference(dtype):
    import cupy

    assert gpu_available()
    rng = np.random.default_rng(1)
    a = rng.uniform(-10, 500, (700, 4)).astype(dtype)
    a[:, 2:] += np.abs(a[:, :2]) * 0.2
    b = a[::-1][:300].copy()
    a[3] = [5, 5, 5, 5]
    ga, gb = cupy.asarray(a), cupy.asarray(b)
    iou = box_iou(ga, gb)  # CuPy arrays select the cuda backend
    assert isinstance(iou, cupy.ndarray)
    np.testing.assert_array_equal(
        iou.get(), box_iou_reference(a, b)
    )  # libdevice multiplies: no FMA
    np.testing.assert_array_equal(kernels.box_iou_cuda(ga, gb).get(), box_iou_reference(a, b))
    np.testing.assert_allclose(box_area(ga).get(), box_area_reference(a), rtol=1e-6)
    np.testing.assert_allclose(
        clip_boxes(ga, (300, 200)).get(), clip_boxes_reference(a, (300, 200))
    )
    np.testing.assert_array_equal(
        remove_small_boxes(ga, 20.0).get(), remove_small_boxes_reference(a, 20.0)
    )
