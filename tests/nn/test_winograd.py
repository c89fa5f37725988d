"""Winograd F(2x2, 3x3): the NumPy reference against im2col, the Numba kernel against the
reference, the fused ReLU, the rule that picks it, and finite differences of its backward.

The transforms change where the sums are rounded, so every comparison here is to a tolerance
(float64: 1e-12 relative to the products' magnitudes; float32: 1e-5), never bit for bit.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirccn.kernels import _launch
from minirccn.kernels import conv as kconv
from minirccn.kernels import winograd as kwino
from minirccn.nn import conv, winograd
from minirccn.nn.gradcheck import check_layer

rng_for = np.random.default_rng
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _case(rng, n, c, h, w, f, dtype):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, wt, b


def _close(got, want, dtype, scale):
    """``|got - want| <= tol * scale`` elementwise, ``scale`` the sum of the products' magnitudes."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_less(np.abs(got - want), TOL[dtype] * scale + 1e-30)


def _scales(x, wt, dout, padding):
    """Per-output bounds of every sum's magnitude: ``|w| * |x|`` convolved for the output,
    and the same for the three gradients (computed with the im2col reference on |.|)."""
    ax, aw = np.abs(x).astype(np.float64), np.abs(wt).astype(np.float64)
    zero = np.zeros(wt.shape[0])
    out, cols = conv.conv2d_reference(ax, aw, zero, (1, 1), padding)
    dx, dw, db = conv.conv2d_backward_reference(np.abs(dout).astype(np.float64), cols, aw, x.shape, (1, 1), padding)
    return out + 1.0, dx + 1.0, dw + 1.0, db + 1.0


geometry = st.tuples(
    st.integers(0, 2),  # N
    st.integers(1, 4),  # C
    st.integers(1, 9),  # H
    st.integers(1, 9),  # W
    st.integers(1, 4),  # F
    st.integers(0, 2),  # ph
    st.integers(0, 2),  # pw
).filter(lambda g: g[2] + 2 * g[5] >= 3 and g[3] + 2 * g[6] >= 3)


@settings(max_examples=60, deadline=None)
@given(g=geometry, dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_reference_and_kernel_equal_im2col(g, dtype, seed):
    """Forward and backward, odd and even sizes, non-square paddings and maps, an empty batch,
    a 1x1 output: the Winograd reference and the Numba kernel against im2col's reference."""
    n, c, h, w, f, ph, pw = g
    rng = rng_for(seed)
    x, wt, b = _case(rng, n, c, h, w, f, dtype)
    want, cols = conv.conv2d_reference(x, wt, b, (1, 1), (ph, pw))
    dout = rng.standard_normal(want.shape).astype(dtype)
    want_grads = conv.conv2d_backward_reference(dout, cols, wt, x.shape, (1, 1), (ph, pw))
    s_out, *s_grads = _scales(x, wt, dout, (ph, pw))
    ref, v = winograd.conv2d_winograd_reference(x, wt, b, (ph, pw))
    fast, saved = kwino.conv2d_winograd_numba(x, wt, b, (ph, pw))
    _close(ref, want, dtype, s_out)
    _close(fast, want, dtype, s_out)
    ref_grads = winograd.conv2d_winograd_backward_reference(dout, v, wt, x.shape, (ph, pw))
    fast_grads = kwino.conv2d_winograd_backward_numba(dout, saved, wt, x.shape, (ph, pw))
    for r, k, e, s in zip(ref_grads, fast_grads, want_grads, s_grads):
        _close(r, e, dtype, s)
        _close(np.ascontiguousarray(k), e, dtype, s)


def test_transforms_are_the_papers_matrices():
    """A^T [(G g G^T) * (B^T d B)] A is the 2x2 valid correlation of one 4x4 tile, for every
    one of the 16 unit tiles and 9 unit filters (the transforms' entries, exactly)."""
    for k in range(16):
        d = np.zeros(16)
        d[k] = 1
        d = d.reshape(4, 4)
        for q in range(9):
            g = np.zeros(9)
            g[q] = 1
            g = g.reshape(3, 3)
            y = winograd.AT @ ((winograd.G @ g @ winograd.G.T) * (winograd.BT @ d @ winograd.BT.T)) @ winograd.AT.T
            want = np.array([[np.sum(d[i : i + 3, j : j + 3] * g) for j in range(2)] for i in range(2)])
            np.testing.assert_array_equal(y, want)


def test_filter_transform_matches_the_reference():
    """The kernel's two ``tensordot`` give the reference's ``G w G^T`` and ``G^T dU G``."""
    rng = rng_for(1)
    w = rng.standard_normal((5, 3, 3, 3))
    np.testing.assert_allclose(kwino.filter_transform(w), winograd.filter_transform(w), rtol=1e-13)
    du = rng.standard_normal((16, 5, 3))
    want = np.einsum("ai,abfc,bj->fcij", winograd.G, du.reshape(4, 4, 5, 3), winograd.G)
    np.testing.assert_allclose(kwino._filter_gradient(du, 5, 3, np.float64), want, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_relu_is_conv_then_relu(dtype):
    """``relu=True``: the output pass's ``max(0, y)`` is the ReLU of the same pass's ``y``, bit
    for bit; outputs exactly 0 (a bias that cancels the sum) and NaN inputs give 0, as the
    reference's ``where(y > 0, y, 0)``."""
    rng = rng_for(2)
    x, wt, b = _case(rng, 2, 3, 7, 6, 4, dtype)
    x[0, 0, 2, 2] = np.nan  # poisons the outputs around it
    wt[3] = 0  # filter 3: y = b exactly
    b[3] = 0
    plain, _ = kwino.conv2d_winograd_numba(x, wt, b, (1, 1))
    fused, _ = kwino.conv2d_winograd_numba(x, wt, b, (1, 1), relu=True)
    assert np.isnan(plain).any() and not np.isnan(fused).any()
    np.testing.assert_array_equal(fused, np.where(plain > 0, plain, 0))
    assert np.all(fused[:, 3] == 0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("padding", [(1, 1), (0, 2), (2, 0)])
def test_gradcheck_float64(monkeypatch, relu, padding):
    """Finite differences through ``conv2d_forward``/``conv2d_backward`` on the numba backend
    with the Winograd path forced (its thresholds at 1), odd sizes, non-square paddings."""
    monkeypatch.setattr(kconv, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(kconv, "WINOGRAD_MIN_CHANNELS", 1)
    rng = rng_for(3)
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3) + (0.5 if relu else 0.0)

    def fwd(x, w, b):
        out, cache = conv.conv2d_forward(x, w, b, 1, padding, relu=relu, backend="numba")
        assert isinstance(cache.saved, kwino.WinogradSaved)
        return out, cache

    assert check_layer(fwd, conv.conv2d_backward, [x, w, b]) < 1e-7


def test_rule_at_its_thresholds(monkeypatch):
    """3x3, stride 1, >= 16 channels each side, >= 256 tiles: exactly at each threshold it is
    Winograd, one below it is not; 1x3 / 3x1 kernels and stride 2 never."""
    assert kconv.WINOGRAD_MIN_TILES == 256 and kconv.WINOGRAD_MIN_CHANNELS == 16
    use = kconv.use_winograd
    # 32x32 output, padding 1: 16 x 16 = 256 tiles; 31x31 (30x30 input... ) -> 15 x 15 = 225
    assert use((1, 16, 32, 32), (16, 16, 3, 3), (1, 1), (1, 1))
    assert not use((1, 16, 30, 30), (16, 16, 3, 3), (1, 1), (1, 1))  # 30x30 out: 225 tiles
    assert use((1, 16, 31, 31), (16, 16, 3, 3), (1, 1), (1, 1))  # 31x31 out: 16 x 16 (odd: rounded up)
    assert use((4, 16, 16, 16), (16, 16, 3, 3), (1, 1), (1, 1))  # 4 images x 64 tiles
    assert not use((1, 15, 32, 32), (16, 15, 3, 3), (1, 1), (1, 1))
    assert not use((1, 16, 32, 32), (15, 16, 3, 3), (1, 1), (1, 1))
    assert not use((1, 16, 32, 32), (16, 16, 3, 3), (2, 2), (1, 1))
    assert not use((1, 16, 32, 32), (16, 16, 1, 3), (1, 1), (0, 1))
    assert not use((1, 16, 32, 32), (16, 16, 3, 1), (1, 1), (1, 0))
    assert not use((1, 16, 32, 32), (16, 16, 3, 3), (1, 2), (1, 1))
    assert use((1, 16, 34, 34), (16, 16, 3, 3), (1, 1), (0, 0))  # no padding: 32x32 out


@pytest.mark.parametrize("relu", [False, True])
def test_numba_backend_takes_the_winograd_path_above_the_rule(relu):
    """A layer the rule picks: ``conv2d_forward`` keeps the transformed tiles, and the numbers
    are the im2col reference's to the float32 tolerance, forward and backward."""
    rng = rng_for(4)
    x, wt, b = _case(rng, 1, 16, 32, 31, 16, np.float32)
    out, cache = conv.conv2d_forward(x, wt, b, 1, 1, relu=relu, backend="numba")
    assert isinstance(cache.saved, kwino.WinogradSaved)
    want, wcache = conv.conv2d_forward(x, wt, b, 1, 1, relu=relu, backend="numpy")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    s_out, *s_grads = _scales(x, wt, dout, (1, 1))
    _close(out, want, np.float32, s_out)
    for got, exp, s in zip(conv.conv2d_backward(dout, cache), conv.conv2d_backward(dout, wcache), s_grads):
        _close(np.ascontiguousarray(got), exp, np.float32, s)


def test_below_the_rule_im2col_is_unchanged():
    """Below the thresholds the numba backend keeps im2col (the padded input is saved)."""
    rng = rng_for(5)
    x, wt, b = _case(rng, 1, 16, 30, 30, 16, np.float32)
    _, cache = conv.conv2d_forward(x, wt, b, 1, 1, backend="numba")
    assert isinstance(cache.saved, np.ndarray)


def test_winograd_reuses_its_buffers():
    """Steady state: the transformed products and their gradients live in reused buffers."""
    rng = rng_for(6)
    x, wt, b = _case(rng, 1, 16, 32, 32, 16, np.float32)
    for _ in range(2):
        out, cache = conv.conv2d_forward(x, wt, b, 1, 1, backend="numba")
        conv.conv2d_backward(out, cache)
        if _ == 0:
            before = {k: id(v) for k, v in _launch._scratch.items()}
    assert {k: id(v) for k, v in _launch._scratch.items()} == before
    assert any(k[0].startswith("winograd.") for k in before)
