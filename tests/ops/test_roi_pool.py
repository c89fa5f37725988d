"""RoI max pooling: the reference against torchvision's numbers, every backend against the reference.

The expected arrays written out below were computed by hand with
``torchvision.ops.roi_pool`` (torchvision 0.29.2, CPU) and are recorded here so
the suite never imports torch.
"""

import math

import numpy as np
import pytest
from helpers import BACKENDS, FLOATS, assert_matches_reference, assert_same_bits
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from minirccn.kernels import roi_pool as kernels

from minirccn.ops.roi_pool import (
    LOWEST,
    RoIPoolCache,
    c_round,
    roi_bins,
    roi_pool,
    roi_pool_backward,
    roi_pool_backward_reference,
    roi_pool_layer_forward,
    roi_pool_layer_backward,
    roi_pool_reference,
)



# ----------------------------------------------------------------------------- the rule, by hand


def test_small_example_by_hand(backend):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out, argmax = roi_pool(x, np.array([[0, 0, 0, 3, 3]], np.float32), 2, backend=backend)
    # 4x4 RoI, 2x2 bins of 2x2 cells; the max is each bin's bottom-right cell
    assert_same_bits(out, np.array([[[[5, 7], [13, 15]]]], np.float32))
    assert_same_bits(argmax, np.array([[[[5, 7], [13, 15]]]], np.int64))


def test_c_round_is_half_away_from_zero_and_exact():
    v = np.array(
        [0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 2.0**23 + 1, 0.0, -0.0], np.float32
    )
    want = np.array([1, -1, 2, 3, -3, 0, 0, 2.0**23 + 1, 0, 0], np.float32)
    np.testing.assert_array_equal(c_round(v), want)
    assert c_round(v).dtype == np.float32
    np.testing.assert_array_equal(c_round(v.astype(np.float64)), want.astype(np.float64))


@pytest.mark.parametrize(
    "x1, expected",
    [
        (8.0, [[260, 263], [452, 455]]),  # 8/16 = 0.5 rounds up to 1
        (-8.0, [[130, 134], [386, 390]]),  # -0.5 rounds to -1 (away from zero), then clipped
        (24.0, [[325, 328], [517, 520]]),  # 1.5 -> 2
        (7.99, [[195, 199], [451, 455]]),  # just under the half -> 0
    ],
)
def test_half_way_rounding_matches_torchvision(backend, x1, expected):
    x = np.arange(64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)
    rois = np.array([[0, x1, x1, x1 + 100, x1 + 100]], np.float32)
    if backend == "cuda":  # keep the simulator's map small: same answer on the top-left 16x16
        x = x.reshape(64, 64)[:16, :].reshape(1, 1, 16, 64)
    _, argmax = roi_pool(x, rois, 2, 1 / 16, backend=backend)
    np.testing.assert_array_equal(argmax[0, 0], expected)


@pytest.mark.parametrize("dtype, cell", [(np.float32, 501), (np.float64, 500)])
def test_arithmetic_is_done_in_the_features_dtype(dtype, cell):
    # 715 * 0.7 is 500.49999... in float64 but rounds to 500.5 in float32 (torchvision: 501 / 500)
    x = np.arange(600, dtype=dtype).reshape(1, 1, 1, 600)
    for backend in ("numpy", "numba"):
        _, argmax = roi_pool(x, np.array([[0, 715, 0, 715, 0]], dtype), 1, 0.7, backend=backend)
        assert argmax.item() == cell


def test_nan_and_minus_inf_like_torchvision(backend, dtype):
    roi = np.array([[0, 0, 0, 1, 1]], dtype)
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = np.nan, -np.inf
    out, argmax = roi_pool(x, roi, 1, backend=backend)  # NaN is never taken; 4 beats -inf
    assert (out.item(), argmax.item()) == (4.0, 4)
    x = np.full((1, 1, 4, 4), np.nan, dtype)
    x[0, 0, 1, 1] = 5
    out, argmax = roi_pool(x, roi, 1, backend=backend)
    assert (out.item(), argmax.item()) == (5.0, 5)
    for fill in (-np.inf, np.nan, LOWEST):  # nothing beats -FLT_MAX: output -FLT_MAX, argmax -1
        out, argmax = roi_pool(np.full((1, 1, 4, 4), fill, dtype), roi, 1, backend=backend)
        assert (out.item(), argmax.item()) == (np.float32(LOWEST), -1)
        assert out.dtype == dtype
    if dtype == np.float64:  # below -FLT_MAX in a float64 map: still -FLT_MAX, -1
        out, argmax = roi_pool(np.full((1, 1, 4, 4), -1e300), roi, 1, backend=backend)
        assert (out.item(), argmax.item()) == (float(np.float32(LOWEST)), -1)


def test_rois_off_the_map_give_zero_and_minus_one(backend):
    x = np.ones((1, 2, 5, 5), np.float32)
    rois = np.array([[0, 50, 50, 80, 80], [0, -40, -40, -10, -10], [0, -40, 2, -10, 3]], np.float32)
    out, argmax = roi_pool(x, rois, (2, 3), backend=backend)
    assert out.shape == (3, 2, 2, 3) and argmax.dtype == np.int64
    assert np.all(out == 0) and np.all(argmax == -1)
    grad = roi_pool_backward(np.ones_like(out), rois, argmax, x.shape, backend=backend)
    assert np.all(grad == 0)


def test_zero_size_and_malformed_rois_are_one_cell(backend):
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    rois = np.array([[0, 2, 3, 2, 3], [0, 4, 4, 1, 1]], np.float64)  # a point; x2 < x1
    out, argmax = roi_pool(x, rois, 2, backend=backend)
    # the 1x1 RoI at (x1', y1'): every bin covers just that cell
    np.testing.assert_array_equal(argmax[0, 0], np.full((2, 2), 3 * 5 + 2))
    np.testing.assert_array_equal(argmax[1, 0], np.full((2, 2), 4 * 5 + 4))
    np.testing.assert_array_equal(out[:, 0], [np.full((2, 2), 17.0), np.full((2, 2), 24.0)])


def test_ties_first_maximum_wins(backend):
    x = np.zeros((1, 1, 4, 6), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = x[0, 0, 0, 2] = 3  # bin (0, 0) = rows 0-1, columns 0-2
    out, argmax = roi_pool(x, np.array([[0, 0, 0, 5, 3]], np.float32), 2, backend=backend)
    assert argmax[0, 0, 0, 0] == 2  # row-major scan: (0, 2) comes before (1, 0) and (1, 1)
    np.testing.assert_array_equal(
        argmax[0, 0], [[2, 3], [12, 15]]
    )  # all-zero bins: their first cell
    np.testing.assert_array_equal(out[0, 0], [[3, 0], [0, 0]])


def test_no_rois(backend, dtype):
    x = np.ones((2, 3, 4, 4), dtype)
    out, argmax = roi_pool(x, np.zeros((0, 5), dtype), (2, 3), backend=backend)
    assert out.shape == argmax.shape == (0, 3, 2, 3)
    assert out.dtype == dtype and argmax.dtype == np.int64
    grad = roi_pool_backward(out, np.zeros((0, 5), dtype), argmax, x.shape, backend=backend)
    assert grad.shape == x.shape and grad.dtype == dtype and not grad.any()


def test_bins_of_a_ratio_one_sixteenth_roi():
    # x: round(0/16) = 0 .. round(208/16) = 13, both ends included: 14 cells, bins of 2;
    # y: 0 .. round(96/16) = 6: 7 cells, bins of 1
    rois = np.array([[0, 0, 0, 208, 96]], np.float32)
    batch, hstart, hend, wstart, wend = roi_bins(rois, (7, 7), 1 / 16, 40, 40)
    np.testing.assert_array_equal(wstart[0], [0, 2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(wend[0], [2, 4, 6, 8, 10, 12, 14])
    np.testing.assert_array_equal(hstart[0], np.arange(7))
    np.testing.assert_array_equal(hend[0], np.arange(1, 8))
    assert batch.dtype == hstart.dtype == np.int64


# ----------------------------------------------------------------------------- backends agree


@st.composite
def roi_cases(draw, max_side=8, max_rois=5, max_channels=3, max_bins=4):
    """Small maps with ties, NaN, +-inf and -FLT_MAX; RoIs on half-pixel edges, off the map, empty."""
    dtype = draw(st.sampled_from(FLOATS))
    n = draw(st.integers(1, 2))
    shape = (
        n,
        draw(st.integers(1, max_channels)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    special = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, np.nan, -np.inf, np.inf, LOWEST])
    elements = st.one_of(special, st.integers(-2, 2).map(float), st.floats(-10, 10, width=32))
    features = draw(hnp.arrays(dtype, shape, elements=elements))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 16, 0.7]))
    side = max(shape[2:])
    coord = st.one_of(
        st.integers(-6, 2 * side + 6).map(
            lambda k: k * 0.5 / scale
        ),  # lands on .0 or .5 after scaling
        st.floats(-math.ceil(3 / scale), math.ceil((side + 3) / scale), width=32),
    )
    r = draw(st.integers(0, max_rois))
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), coord, coord, coord, coord), min_size=r, max_size=r
        )
    )
    rois = np.array(rows, dtype=dtype).reshape(r, 5)
    output_size = (draw(st.integers(1, max_bins)), draw(st.integers(1, max_bins)))
    return features, rois, output_size, scale


def check_against_reference(case, backend, grad_rtol=None):
    """Forward bit for bit; backward bit for bit, or to ``grad_rtol`` (atomics: any order)."""
    features, rois, output_size, scale = case
    args = (features, rois, output_size, scale)
    _, argmax = assert_matches_reference(roi_pool, roi_pool_reference, *args, backend=backend)
    grad_out = np.linspace(-1, 2, argmax.size, dtype=features.dtype).reshape(argmax.shape)
    args = (grad_out, rois, argmax, features.shape)
    ref, rtol = roi_pool_backward_reference, grad_rtol
    assert_matches_reference(roi_pool_backward, ref, *args, backend=backend, rtol=rtol, atol=1e-6)


@given(roi_cases())
def test_numba_equals_reference(case):
    check_against_reference(case, "numba")  # race-free, same summation order: bit for bit


@settings(max_examples=12)
@given(roi_cases(max_side=5, max_rois=3, max_channels=2, max_bins=3))
def test_cuda_equals_reference(case):
    check_against_reference(case, "cuda", grad_rtol=1e-6)


# ----------------------------------------------------------------------------- backward


@given(roi_cases(), st.integers(0, 2**32 - 1))
def test_backward_is_the_adjoint_of_forward(case, seed):
    """With argmax fixed, forward is the linear map P: out = P x on the bins with argmax >= 0.

    Its adjoint is the backward B: <P x, g> == <x, B g> for any g. Bins with argmax -1
    (empty, or nothing above -FLT_MAX) output a constant, not a function of x, and B
    sends them nothing; so only bins with argmax >= 0 enter the sum.
    """
    features, rois, output_size, scale = case
    features = np.where(np.isfinite(features), features, 0).astype(features.dtype)
    out, argmax = roi_pool_reference(features, rois, output_size, scale)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    grad = roi_pool_backward_reference(g, rois, argmax, features.shape)
    lhs = np.sum(np.where(argmax >= 0, out, 0) * g)
    rhs = np.sum(grad * features)
    assert math.isclose(lhs, rhs, rel_tol=1e-9, abs_tol=1e-9)


def test_backward_sums_shared_cells():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1  # one peak inside both RoIs and every bin
    rois = np.array([[0, 0, 0, 2, 2], [0, 1, 1, 1, 1]], np.float64)
    out, argmax = roi_pool(x, rois, 2, backend="numpy")
    assert np.all(argmax == 4)
    for backend in BACKENDS:
        grad = roi_pool_backward(np.ones((2, 1, 2, 2)), rois, argmax, x.shape, backend=backend)
        assert grad[0, 0, 1, 1] == 8 and grad.sum() == 8


def test_layer_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 6))  # continuous values: no ties, gaps >> eps
    rois = np.array(
        [[0, 0, 0, 9, 7], [1, 2, 1, 11, 9], [1, 4, 4, 4, 5], [0, -2, 3, 5, 13]], np.float64
    )
    weights = rng.standard_normal((4, 2, 2, 3))

    def loss(features):
        return np.sum(roi_pool_reference(features, rois, (2, 3), 0.5)[0] * weights)

    out, cache = roi_pool_layer_forward(x, rois, (2, 3), 0.5, backend=backend)
    assert (
        isinstance(cache, RoIPoolCache)
        and cache.backend == backend
        and cache.input_shape == x.shape
    )
    dx = roi_pool_layer_backward(weights, cache)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        numeric[idx] = (loss(x + step) - loss(x - step)) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(dx) > 10  # the check covers many cells


# ----------------------------------------------------------------------------- the public API


def test_ops_reexports_and_int_output_size():
    ops = pytest.importorskip("minirccn.ops")  # needs the box ops of another module too
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    rois = np.array([[0, 1, 1, 4, 5]], np.float32)
    a = ops.roi_pool(x, rois, 3, backend="numpy")
    b = ops.roi_pool(x, rois, (3, 3), backend="numba")
    assert_same_bits(a[0], b[0])
    assert_same_bits(a[1], b[1])
    g = ops.roi_pool_backward(a[0], rois, a[1], x.shape, backend="numpy")
    assert g.shape == x.shape


def test_rois_are_cast_to_the_features_dtype():
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    rois64 = np.array([[0, 1.2, 0.6, 4.4, 5.5]], np.float64)
    for backend in ("numpy", "numba"):
        out, argmax = roi_pool(x, rois64, 2, backend=backend)
        ref = roi_pool_reference(x, rois64.astype(np.float32), (2, 2), 1.0)
        assert_same_bits(out, ref[0])
        assert_same_bits(argmax, ref[1])


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda x, r: roi_pool(x[0], r, 2), ValueError, "features"),
        (lambda x, r: roi_pool(x.astype(np.int32), r, 2), TypeError, "features"),
        (lambda x, r: roi_pool(x, r[:, :4], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r.astype(np.int64), 2), TypeError, "rois"),
        (lambda x, r: roi_pool(x, r + [[0.5, 0, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r + [[2, 0, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r - [[2, 0, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r + [[0, np.nan, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r + [[0, 1e9, 0, 0, 0]], 2), ValueError, "rois"),
        (lambda x, r: roi_pool(x, r, 0), ValueError, "output_size"),
        (lambda x, r: roi_pool(x, r, (2, 2, 2)), ValueError, "output_size"),
        (lambda x, r: roi_pool(x, r, 1.5), TypeError, "output_size"),
        (lambda x, r: roi_pool(x, r, 2, 0.0), ValueError, "spatial_scale"),
        (lambda x, r: roi_pool(x, r, 2, backend="tpu"), ValueError, "backend"),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 3, 2, 2), np.float32), r, np.zeros((1, 3, 2, 2), np.int64), (2, 2, 4, 4)
            ),
            ValueError,
            "grad_out",
        ),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 2, 2, 2), np.float32), r, np.zeros((1, 2, 2, 3), np.int64), x.shape
            ),
            ValueError,
            "argmax",
        ),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 2, 2, 2), np.float32), r, np.zeros((1, 2, 2, 2)), x.shape
            ),
            TypeError,
            "argmax",
        ),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 2, 2, 2), np.float32), r, np.full((1, 2, 2, 2), 16), x.shape
            ),
            ValueError,
            "argmax",
        ),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 2, 2, 2), np.float32), r, np.zeros((1, 2, 2, 2), np.int64), (2, 2, 4)
            ),
            ValueError,
            "input_shape",
        ),
        (
            lambda x, r: roi_pool_backward(
                np.ones((1, 2, 2, 2), np.float32),
                np.zeros((2, 5), np.float32),
                np.zeros((1, 2, 2, 2), np.int64),
                x.shape,
            ),
            ValueError,
            "rois",
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
def test_gpu_numba_cuda_and_cuda_c_on_cupy_arrays(dtype):
    import cupy

    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, (2, 16, 40, 48)).astype(dtype)  # many ties
    x[0, 0, :5, :5] = np.nan
    xy = rng.uniform(-100, 900, (300, 2))
    wh = rng.uniform(0, 400, (300, 2))
    rois = np.concatenate([rng.integers(0, 2, (300, 1)), xy, xy + wh], 1).astype(dtype)
    ref_out, ref_argmax = roi_pool_reference(x, rois, (7, 7), 1 / 16)
    g = rng.standard_normal(ref_out.shape).astype(dtype)
    ref_grad = roi_pool_backward_reference(g, rois, ref_argmax, x.shape)

    xg, rg, gg = cupy.asarray(x), cupy.asarray(rois), cupy.asarray(g)
    out, argmax = roi_pool(xg, rg, 7, 1 / 16)  # CuPy arrays select the cuda backend
    assert isinstance(out, cupy.ndarray)
    assert_same_bits(out.get(), ref_out)
    assert_same_bits(argmax.get(), ref_argmax)
    grad = roi_pool_backward(gg, rg, argmax, x.shape)
    np.testing.assert_allclose(grad.get(), ref_grad, rtol=1e-5, atol=1e-5)

    bins = roi_bins(rg, (7, 7), 1 / 16, 40, 48, cupy)
    out, argmax = kernels.roi_pool_cudac(xg, *bins)
    assert_same_bits(out.get(), ref_out)
    assert_same_bits(argmax.get(), ref_argmax)
    grad = kernels.roi_pool_backward_cudac(gg, rg, argmax, x.shape)
    np.testing.assert_allclose(grad.get(), ref_grad, rtol=1e-5, atol=1e-5)
