"""RoIAlign: the reference against torchvision's numbers and a scalar transcription of the rule,
every backend against the reference, and the backward against finite differences.

The expected arrays written out below were computed by hand with
``torchvision.ops.roi_align`` (torchvision 0.29.1, CPU, float64) and are recorded
here so the suite never imports torch.
"""

import math

import numpy as np
import pytest
from helpers import FAST, FLOATS
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from minirccn.kernels import roi_align as kernels

from minirccn.nn.gradcheck import check_layer
from minirccn.ops.roi_align import (
    RoIAlignCache,
    interpolation_matrix,
    roi_align,
    roi_align_backward,
    roi_align_backward_reference,
    roi_align_layer_forward,
    roi_align_layer_backward,
    roi_align_reference,
    sample_tables,
)


def assert_close(a, b, dtype):
    """Agreement to rounding: the kernels add the samples in another order than the reference."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    tol = 1e-11 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- the rule, by hand


def scalar_roi_align(x, rois, output_size, scale, sampling_ratio, aligned, grad_out=None):
    """The rule transcribed one sample at a time in Python floats (float64), independent of the
    vectorised tables: forward ``(R, C, ph, pw)``, or with ``grad_out`` the backward ``(N, C, H, W)``."""
    _, c, height, width = x.shape
    ph, pw = output_size
    out = np.zeros((len(rois), c, ph, pw))
    grad = np.zeros(x.shape)

    def neighbours(v, size):  # [(index, weight), (index, weight)] or None outside
        if v < -1 or v > size or size == 0:
            return None
        v = max(v, 0.0)
        lo = int(v)
        if lo >= size - 1:
            return [(size - 1, 1.0), (size - 1, 0.0)]
        return [(lo, 1 - (v - lo)), (lo + 1, v - lo)]

    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        off = 0.5 if aligned else 0.0
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                for iy in range(gh):
                    ny = neighbours(sy + i * bh + (iy + 0.5) * bh / gh, height)
                    for ix in range(gw):
                        nx = neighbours(sx + j * bw + (ix + 0.5) * bw / gw, width)
                        if ny is None or nx is None:
                            continue
                        for p, wp in ny:
                            for q, wq in nx:
                                out[r, :, i, j] += wp * wq * x[int(b), :, p, q] / count
                                if grad_out is not None:
                                    grad[int(b), :, p, q] += wp * wq * grad_out[r, :, i, j] / count
    return out if grad_out is None else grad


# 4x5 map, not linear, so every neighbour and weight matters
X45 = (np.arange(20.0) ** 1.5 % 7).reshape(1, 1, 4, 5)

# (rois, output_size, spatial_scale, sampling_ratio, aligned, torchvision out, torchvision grad
#  of sum(out))
TORCHVISION = [
    (  # samples at x = -1 (clamped to 0), 1, 3 and y = -1, 1, 3, 5 (5 > H: outside, 0)
        [[0, -2, -2, 4, 6]], (4, 3), 1.0, 1, False,
        [[0.0, 1.0, 5.196152422706632], [4.180339887498949, 0.6969384566990691, 1.6274169979695223],
         [2.0947501931112527, 1.0, 6.367532368147138], [0.0, 0.0, 0.0]],
        [[1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0],
         [1.0, 1.0, 0.0, 1.0, 0.0]],
    ),
    (  # one sample at exactly x = W, y = H: reads the last cell
        [[0, 3, 2, 7, 6]], (1, 1), 1.0, 1, False, [[5.819079927272796]],
        [[0.0] * 5, [0.0] * 5, [0.0] * 5, [0.0, 0.0, 0.0, 0.0, 1.0]],
    ),
    (  # just past W and H: outside
        [[0, 3, 2, 7.0002, 6.0002]], (1, 1), 1.0, 1, False, [[0.0]], [[0.0] * 5] * 4,
    ),
    (  # zero size, not aligned: clamped to 1x1, adaptive grid of 1
        [[0, 1, 1, 1, 1]], (2, 2), 1.0, -1, False,
        [[1.9281913191268296, 3.997729925377185], [2.479036683605819, 4.864331781603823]],
        [[0.0] * 5, [0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [0.0] * 5],
    ),
    (  # zero size, aligned: adaptive grid of 0, no samples
        [[0, 1, 1, 1, 1]], (2, 2), 1.0, -1, True, [[0.0, 0.0], [0.0, 0.0]], [[0.0] * 5] * 4,
    ),
    (  # sub-pixel, aligned, 2x2 samples
        [[0, 1.25, 0.5, 1.5, 2.0]], (2, 3), 1.0, 2, True,
        [[1.0282843247100582, 0.9715113633308953, 0.9147384019517324],
         [1.4819975311818896, 1.2208830605056686, 0.9597685898294477]],
        [[0.24609374999999994, 1.7226562500000002, 0.0, 0.0, 0.0],
         [0.44531249999999994, 3.1171875000000004, 0.0, 0.0, 0.0],
         [0.058593749999999986, 0.41015625, 0.0, 0.0, 0.0], [0.0] * 5],
    ),
    (  # scale 1/16, adaptive (sampling_ratio 0)
        [[0, 8, 4, 72, 56]], (3, 2), 1 / 16, 0, False,
        [[2.4865309087835095, 3.6520666956652095], [3.4917852593059706, 4.2088703580211115],
         [1.0900928521299738, 5.786177843057398]],
        [[0.0] + [0.11979166666666669] * 4, [0.0] + [0.4635416666666667] * 4,
         [0.0] + [0.45833333333333337] * 4, [0.0] + [0.45833333333333326] * 4],
    ),
    (  # scale 0.25, 3x3 samples, aligned
        [[0, 2, 2, 18, 14]], (2, 2), 0.25, 3, True,
        [[2.005805604888637, 3.5468459941064916], [2.3423587508873536, 4.756324117563234]],
        [[0.07407407407407407, 0.18518518518518517, 0.14814814814814814, 0.18518518518518517,
          0.07407407407407411],
         [0.14814814814814814, 0.3703703703703703, 0.2962962962962963, 0.3703703703703703,
          0.14814814814814822],
         [0.14814814814814814, 0.3703703703703703, 0.2962962962962962, 0.3703703703703703,
          0.14814814814814822],
         [0.07407407407407407, 0.18518518518518515, 0.14814814814814814, 0.18518518518518517,
          0.07407407407407411]],
    ),
    (  # off the map
        [[0, -40, -40, -20, -20]], (2, 2), 1.0, 2, False, [[0.0, 0.0], [0.0, 0.0]],
        [[0.0] * 5] * 4,
    ),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["numpy", *FAST])
@pytest.mark.parametrize("case", TORCHVISION, ids=range(len(TORCHVISION)))
def test_torchvision_numbers(case, backend):
    rois, size, scale, ratio, aligned, want_out, want_grad = case
    rois = np.array(rois, np.float64)
    out = roi_align(X45, rois, size, scale, ratio, aligned, backend=backend)
    np.testing.assert_allclose(out[0, 0], want_out, rtol=0, atol=1e-13)
    grad = roi_align_backward(
        np.ones_like(out), rois, X45.shape, size, scale, ratio, aligned, backend=backend
    )
    np.testing.assert_allclose(grad[0, 0], want_grad, rtol=0, atol=1e-13)
    np.testing.assert_allclose(
        scalar_roi_align(X45, rois, size, scale, ratio, aligned), out, rtol=0, atol=1e-13
    )


def test_linear_map_is_read_exactly_at_bin_centres():
    """Bilinear interpolation of a linear map is exact, so a bin's average is the map's value
    at the mean of its sample points: the bin centre. Independent of any table."""
    height, width = 9, 11
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (3.0 * yy - 2.0 * xx + 0.5)[None, None]
    rois = np.array([[0, 4.0, 2.0, 28.0, 26.0], [0, 8.4, 6.8, 30.2, 20.6]])  # inside, scale 1/4
    ph, pw = 3, 4
    for backend in ["numpy", *FAST]:
        for aligned in (False, True):
            out = roi_align(x, rois, (ph, pw), 0.25, 2, aligned, backend=backend)
            o = 0.5 if aligned else 0.0
            for r, (_, x1, y1, x2, y2) in enumerate(rois):
                sx, sy, ex, ey = x1 / 4 - o, y1 / 4 - o, x2 / 4 - o, y2 / 4 - o
                cy = sy + (np.arange(ph) + 0.5) * (ey - sy) / ph
                cx = sx + (np.arange(pw) + 0.5) * (ex - sx) / pw
                np.testing.assert_allclose(out[r, 0], 3 * cy[:, None] - 2 * cx[None] + 0.5)


def test_quantisation_shift_that_roi_align_avoids():
    """A RoI starting at 0.5 cells: the aligned read is exactly half a cell later than at 0."""
    x = np.arange(8.0)[None, None, None, :].repeat(4, 2)  # value = column
    a = roi_align(x, np.array([[0, 0.0, 0, 4, 4], [0, 0.5, 0, 4.5, 4]]), (1, 4), 1.0, 1)
    np.testing.assert_allclose(a[1] - a[0], 0.5)


@pytest.mark.parametrize("backend", ["numpy", *FAST])
@pytest.mark.parametrize("dtype", FLOATS)
def test_no_rois_and_empty_map(backend, dtype):
    x = np.ones((2, 3, 4, 4), dtype)
    out = roi_align(x, np.zeros((0, 5), dtype), (2, 3), backend=backend)
    assert out.shape == (0, 3, 2, 3) and out.dtype == dtype
    grad = roi_align_backward(out, np.zeros((0, 5), dtype), x.shape, (2, 3), backend=backend)
    assert grad.shape == x.shape and grad.dtype == dtype and not grad.any()
    flat = np.ones((1, 2, 0, 5), dtype)  # H = 0: every sample is outside
    rois = np.array([[0, 0, 0, 3, 3]], dtype)
    assert not roi_align(flat, rois, 2, backend=backend).any()
    assert roi_align_backward(np.ones((1, 2, 2, 2), dtype), rois, flat.shape, 2).shape == flat.shape


def test_aligned_negative_size_gives_zero():
    """``aligned`` keeps a negative size; the adaptive grid is then <= 0: no samples, output 0
    (torchvision raises on some of these: its per-RoI table would get a negative length)."""
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6))
    rois = np.array([[0, 4, 4, 1, 5], [0, 4, 4, 1, 1]], np.float64)
    for backend in ["numpy", *FAST]:
        assert not roi_align(x, rois, 2, 1.0, -1, True, backend=backend).any()
        assert roi_align(x, rois, 2, 1.0, 2, True, backend=backend).any()  # fixed grid: samples


def test_adaptive_grid_and_sample_tables():
    rois = np.array([[0, 0, 0, 10, 3], [1, 2, 2, 2.5, 2.5]], np.float32)
    tab = sample_tables(rois, (2, 3), 1.0, -1, False, 8, 12)
    assert tab.y.lo.shape == (2, 2, 2) and tab.x.lo.shape == (2, 3, 4)  # ceil(3/2), ceil(10/3)
    np.testing.assert_array_equal(tab.count, [8, 1])  # RoI 1 clamped to 1x1: grid 1x1
    np.testing.assert_array_equal(tab.batch, [0, 1])
    assert tab.count.dtype == tab.y.w_lo.dtype == np.float32 and tab.y.lo.dtype == np.int64
    np.testing.assert_array_equal(tab.y.lo[1, :, 1:], -1)  # padding beyond RoI 1's grid
    np.testing.assert_array_equal(tab.x.lo[1, :, 1:], -1)
    # x samples of RoI 0, bin 0: 0 + (g + 0.5) * (10/3) / 4 = 0.41667, 1.25, 2.0833, 2.9167
    np.testing.assert_array_equal(tab.x.lo[0, 0], [0, 1, 2, 2])
    np.testing.assert_allclose(tab.x.w_hi[0, 0], [5 / 12, 0.25, 1 / 12, 11 / 12], rtol=1e-6)
    a = interpolation_matrix(tab.x, 12)
    np.testing.assert_allclose(a[0].sum(axis=1), 4, rtol=1e-6)  # 4 samples, weights sum to 1


# ----------------------------------------------------------------------------- backends agree


@st.composite
def align_cases(draw, max_side=8, max_rois=5, max_channels=3, max_bins=4, dtypes=FLOATS):
    """Small maps; RoIs on half-cell edges (samples exactly on cells and at -1, W), sub-pixel,
    zero-size, negative and off the map; every sampling ratio, aligned or not."""
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(1, 2))
    shape = (
        n,
        draw(st.integers(1, max_channels)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    elements = st.one_of(st.integers(-3, 3).map(float), st.floats(-10, 10, width=32))
    features = draw(hnp.arrays(dtype, shape, elements=elements))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 16, 0.7]))
    side = max(shape[2:])
    coord = st.one_of(
        st.integers(-6, 2 * side + 6).map(lambda k: k * 0.5 / scale),  # .0 or .5 after scaling
        st.integers(-12, 4 * side + 12).map(lambda k: k * 0.25 / scale),
        st.floats(-math.ceil(3 / scale), math.ceil((side + 3) / scale), width=32),
    )
    r = draw(st.integers(0, max_rois))
    rows = []
    for _ in range(r):
        b, x1, y1 = draw(st.integers(0, n - 1)), draw(coord), draw(coord)
        if draw(st.booleans()):  # free corners: may be inverted
            x2, y2 = draw(coord), draw(coord)
        else:  # small or zero sizes
            d = st.sampled_from([0.0, 1e-3, 0.25, 0.5, 1.0]).map(lambda v: v / scale)
            x2, y2 = x1 + draw(d), y1 + draw(d)
        rows.append((b, x1, y1, x2, y2))
    rois = np.array(rows, dtype=dtype).reshape(r, 5)
    output_size = (draw(st.integers(1, max_bins)), draw(st.integers(1, max_bins)))
    ratio = draw(st.sampled_from([-1, 0, 1, 2, 3]))
    return features, rois, output_size, scale, ratio, draw(st.booleans())


def _grad_out(shape, dtype):
    return np.linspace(-1, 2, math.prod(shape), dtype=dtype).reshape(shape)


@settings(max_examples=40)
@given(align_cases(dtypes=[np.float64]))
def test_reference_equals_the_scalar_rule(case):
    features, rois, size, scale, ratio, aligned = case
    out = roi_align_reference(features, rois, size, scale, ratio, aligned)
    np.testing.assert_allclose(
        out, scalar_roi_align(features, rois, size, scale, ratio, aligned), rtol=0, atol=1e-12
    )
    g = _grad_out(out.shape, np.float64)
    grad = roi_align_backward_reference(g, rois, features.shape, size, scale, ratio, aligned)
    want = scalar_roi_align(features, rois, size, scale, ratio, aligned, grad_out=g)
    np.testing.assert_allclose(grad, want, rtol=0, atol=1e-12)


@given(align_cases())
def test_numba_equals_reference(case):
    features, rois, size, scale, ratio, aligned = case
    args = (size, scale, ratio, aligned)
    out = roi_align(features, rois, *args, backend="numba")
    assert_close(out, roi_align_reference(features, rois, *args), features.dtype)
    g = _grad_out(out.shape, out.dtype)
    grad = roi_align_backward(g, rois, features.shape, *args, backend="numba")
    ref = roi_align_backward_reference(g, rois, features.shape, *args)
    assert_close(grad, ref, features.dtype)
    again = roi_align_backward(g, rois, features.shape, *args, backend="numba")
    np.testing.assert_array_equal(grad, again)  # race-free: the same bits every run


@settings(max_examples=10)
@given(align_cases(max_side=5, max_rois=3, max_channels=2, max_bins=3))
def test_cuda_equals_reference(case):
    features, rois, size, scale, ratio, aligned = case
    args = (size, scale, ratio, aligned)
    out = roi_align(features, rois, *args, backend="cuda")
    assert_close(out, roi_align_reference(features, rois, *args), features.dtype)
    g = _grad_out(out.shape, out.dtype)
    grad = roi_align_backward(g, rois, features.shape, *args, backend="cuda")
    assert_close(grad, roi_align_backward_reference(g, rois, features.shape, *args), g.dtype)


# ----------------------------------------------------------------------------- backward


@settings(max_examples=30)
@given(align_cases(dtypes=[np.float64]), st.integers(0, 2**32 - 1))
def test_backward_is_the_adjoint_of_forward(case, seed):
    """RoIAlign is linear in the features: <align(x), g> == <x, align_backward(g)>."""
    features, rois, size, scale, ratio, aligned = case
    out = roi_align_reference(features, rois, size, scale, ratio, aligned)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    grad = roi_align_backward_reference(g, rois, features.shape, size, scale, ratio, aligned)
    assert math.isclose(np.sum(out * g), np.sum(grad * features), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", *FAST])
@pytest.mark.parametrize("ratio, aligned", [(-1, False), (2, True), (3, False)])
def test_layer_gradient_matches_finite_differences(backend, ratio, aligned):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 6))
    rois = np.array(
        [[0, 0, 0, 9, 7], [1, 2.3, 1.1, 11, 9.7], [1, 4, 4, 4.2, 5], [0, -2, 3, 5, 13]], np.float64
    )

    def forward(f):
        return roi_align_layer_forward(f, rois, (2, 3), 0.5, ratio, aligned, backend=backend)

    out, cache = forward(x)
    assert isinstance(cache, RoIAlignCache) and cache.backend == backend
    assert cache.input_shape == x.shape and cache.output_size == (2, 3)
    full = 0 if backend == "cuda" else 2000  # the simulator is slow: random directions only
    assert check_layer(forward, roi_align_layer_backward, [x], max_full=full, n_dirs=4) < 1e-8
    assert np.count_nonzero(roi_align_layer_backward(np.ones_like(out), cache)) > 20


def test_backward_sums_shared_cells():
    """Two RoIs reading the same cell: its gradient is the sum of both."""
    x = np.zeros((1, 1, 4, 4))
    rois = np.array([[0, 1, 1, 2, 2], [0, 1, 1, 2, 2]], np.float64)  # one sample at (1.5, 1.5)
    for backend in ["numpy", *FAST]:
        grad = roi_align_backward(np.ones((2, 1, 1, 1)), rois, x.shape, 1, 1.0, 1, backend=backend)
        np.testing.assert_allclose(grad[0, 0, 1:3, 1:3], 0.5)  # 2 RoIs x 4 neighbours x 1/4
        assert grad.sum() == 2


# ----------------------------------------------------------------------------- the public API


def test_ops_reexports_defaults_and_int_output_size():
    from minirccn import ops

    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0, 1, 1, 4, 5]], np.float32)
    a = ops.roi_align(x, rois, 3, backend="numpy")
    b = ops.roi_align(x, rois, (3, 3), 1.0, -1, False, backend="numba")
    assert_close(a, b, np.float32)
    c = ops.roi_align(x, rois, 3, 1.0, 0, backend="numpy")  # 0 is adaptive as -1
    np.testing.assert_array_equal(a, c)
    g = ops.roi_align_backward(a, rois, x.shape, 3, backend="numpy")
    assert g.shape == x.shape


def test_rois_are_cast_to_the_features_dtype():
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    rois64 = np.array([[0, 1.2, 0.6, 4.4, 5.5]], np.float64)
    for backend in ("numpy", "numba"):
        out = roi_align(x, rois64, 2, 0.7, 2, True, backend=backend)
        ref = roi_align_reference(x, rois64.astype(np.float32), (2, 2), 0.7, 2, True)
        assert_close(out, ref, np.float32)


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda x, r: roi_align(x[0], r, 2), ValueError, "features"),
        (lambda x, r: roi_align(x.astype(np.int32), r, 2), TypeError, "features"),
        (lambda x, r: roi_align(x, r[:, :4], 2), ValueError, "rois"),
        (lambda x, r: roi_align(x, r + [[0.5, 0, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_align(x, r + [[2, 0, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_align(x, r + [[0, np.inf, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_align(x, r + [[0, 1e9, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_align(x, r, 0), ValueError, "output_size"),
        (lambda x, r: roi_align(x, r, (2, 2, 2)), ValueError, "output_size"),
        (lambda x, r: roi_align(x, r, 2, -1.0), ValueError, "spatial_scale"),
        (lambda x, r: roi_align(x, r, 2, 1.0, 1.5), TypeError, "sampling_ratio"),
        (lambda x, r: roi_align(x, r, 2, 1.0, True), TypeError, "sampling_ratio"),
        (lambda x, r: roi_align(x, r, 2, 1.0, 2, 1), TypeError, "aligned"),
        (lambda x, r: roi_align(x, r, 2, backend="tpu"), ValueError, "backend"),
        (
            lambda x, r: roi_align_backward(np.ones((1, 3, 2, 2), np.float32), r, x.shape, 2),
            ValueError,
            "grad_out",
        ),
        (
            lambda x, r: roi_align_backward(np.ones((1, 2, 2, 2), np.float32), r, x.shape, 3),
            ValueError,
            "grad_out",
        ),
        (
            lambda x, r: roi_align_backward(np.ones((1, 2, 2, 2), np.float32), r, (2, 2, 4), 2),
            ValueError,
            "input_shape",
        ),
        (
            lambda x, r: roi_align_backward(
                np.ones((1, 2, 2, 2), np.float32), np.zeros((2, 5), np.float32), x.shape, 2
            ),
            ValueError,
            "rois",
        ),
        (
            lambda x, r: roi_align_backward(np.ones((1, 2, 2, 2)), r, x.shape, 2, 1.0, "2"),
            TypeError,
            "sampling_ratio",
        ),
    ],
)
def test_bad_arguments_are_named(call, exc, name):
    x = np.ones((2, 2, 4, 4), np.float32)
    rois = np.array([[1, 0, 0, 2, 2]], np.float32)
    with pytest.raises(exc, match=name):
        call(x, rois)


# ----------------------------------------------------------------------------- CUDA C and the GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("ratio, aligned", [(-1, False), (2, True)])
def test_gpu_numba_cuda_and_cuda_c_on_cupy_arrays(dtype, ratio, aligned):
    import cupy

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 40, 48)).astype(dtype)
    xy = rng.uniform(-100, 900, (300, 2))
    wh = rng.uniform(0, 400, (300, 2))
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), xy, xy + wh], 1).astype(dtype)
    args = ((7, 7), 1 / 16, ratio, aligned)
    ref_out = roi_align_reference(x, rois, *args)
    g = rng.standard_normal(ref_out.shape).astype(dtype)
    ref_grad = roi_align_backward_reference(g, rois, x.shape, *args)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}

    xg, rg, gg = cupy.asarray(x), cupy.asarray(rois), cupy.asarray(g)
    out = roi_align(xg, rg, *args)  # CuPy arrays select the cuda backend
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(out.get(), ref_out, **tol)
    grad = roi_align_backward(gg, rg, x.shape, *args)
    np.testing.assert_allclose(grad.get(), ref_grad, **tol)

    tab = sample_tables(rg, *args, 40, 48, cupy)
    np.testing.assert_allclose(kernels.roi_align_cudac(xg, tab).get(), ref_out, **tol)
    grad = kernels.roi_align_backward_cudac(gg, tab, x.shape)
    np.testing.assert_allclose(grad.get(), ref_grad, **tol)
