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
    monkeypatch.setattr(kwino, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(kwino, "WINOGRAD_MIN_CHANNELS", 1)
    rng = rng_for(3)
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3) + (0.5 if relu else 0.0)

    def fwd(x, w, b):
        out, cache = conv.conv2d_forward(x, w, b, 1, padding, relu=relu, backend="numba")
        assert isinstance(cache.saved, kwino.WinogradSaved)
        return out, cache

    assert check_layer(fwd, conv.conv2d_backward, [x, w, b]) < 1e-7


def test_rule_at_its_thresholds():
    """3x3, stride 1, >= 32 channels each side, >= 256 tiles (over images and levels): exactly
    at each threshold it is Winograd, one below it is not; 1x3 / 3x1 kernels and stride 2
    never."""
    assert kwino.WINOGRAD_MIN_TILES == 256 and kwino.WINOGRAD_MIN_CHANNELS == 32
    use = kwino.use_winograd
    w = (32, 32, 3, 3)
    assert use((1, 32), w, (1, 1), ((32, 32),), (1, 1))  # 32x32 out: 16 x 16 = 256 tiles
    assert not use((1, 32), w, (1, 1), ((30, 30),), (1, 1))  # 30x30 out: 225
    assert use((1, 32), w, (1, 1), ((31, 31),), (1, 1))  # 31x31 out: 16 x 16 (rounded up)
    assert use((4, 32), w, (1, 1), ((16, 16),), (1, 1))  # 4 images x 64 tiles
    assert not use((3, 32), w, (1, 1), ((16, 16),), (1, 1))  # 192
    assert use((1, 32), w, (1, 1), ((30, 30), (8, 8), (6, 8), (2, 6)), (1, 1))  # 225+16+12+3
    assert not use((1, 32), w, (1, 1), ((30, 30), (8, 8), (6, 8)), (1, 1))  # 253
    assert not use((1, 31), (32, 31, 3, 3), (1, 1), ((32, 32),), (1, 1))
    assert not use((1, 32), (31, 32, 3, 3), (1, 1), ((32, 32),), (1, 1))
    assert not use((1, 32), w, (2, 2), ((64, 64),), (1, 1))
    assert not use((1, 32), w, (1, 2), ((64, 64),), (1, 1))
    assert not use((1, 32), (32, 32, 1, 3), (1, 1), ((64, 64),), (0, 1))
    assert not use((1, 32), (32, 32, 3, 1), (1, 1), ((64, 64),), (1, 0))
    assert use((1, 32), w, (1, 1), ((34, 34),), (0, 0))  # no padding: 32x32 out


@pytest.mark.parametrize("relu", [False, True])
def test_numba_backend_takes_the_winograd_path_above_the_rule(relu):
    """A layer the rule picks: ``conv2d_forward`` keeps the transformed tiles, and the numbers
    are the im2col reference's to the float32 tolerance, forward and backward."""
    rng = rng_for(4)
    x, wt, b = _case(rng, 1, 32, 32, 31, 32, np.float32)
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
    x, wt, b = _case(rng, 1, 32, 30, 30, 32, np.float32)
    _, cache = conv.conv2d_forward(x, wt, b, 1, 1, backend="numba")
    assert isinstance(cache.saved, np.ndarray)


def test_winograd_reuses_its_buffers():
    """Steady state: the transformed products and their gradients live in reused buffers."""
    rng = rng_for(6)
    x, wt, b = _case(rng, 1, 32, 32, 32, 32, np.float32)
    for _ in range(2):
        out, cache = conv.conv2d_forward(x, wt, b, 1, 1, backend="numba")
        conv.conv2d_backward(out, cache)
        if _ == 0:
            before = {k: id(v) for k, v in _launch._scratch.items()}
    assert {k: id(v) for k, v in _launch._scratch.items()} == before
    assert any(k[0].startswith("winograd.") for k in before)


# ----------------------------------------------------------------------------- pyramid levels

level_sizes = st.lists(
    st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=4
)


@settings(max_examples=40, deadline=None)
@given(
    sizes=level_sizes,
    n=st.integers(0, 2),
    pad=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    relu=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_levels_reference_and_kernel_equal_per_level_im2col(sizes, n, pad, relu, dtype, seed):
    """Packed pyramids (1x1 to 8x8 levels, odd sizes, non-square paddings, an empty batch): the
    Winograd levels reference and kernel against the im2col levels reference, forward and
    backward, through the fused ReLU."""
    from minirccn.nn import conv_levels

    rng = rng_for(seed)
    c, f = 3, 2
    p = sum(h * w for h, w in sizes)
    x = rng.standard_normal((n, c, p)).astype(dtype)
    wt = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    want, wsaved = conv_levels.conv2d_levels_reference(x, sizes, wt, b, (1, 1), pad, relu)
    dout = rng.standard_normal(want.shape).astype(dtype)
    want_g = conv_levels.conv2d_levels_backward_reference(dout, wsaved, wt, sizes, x.shape, (1, 1), pad)
    ref, rsaved = winograd.conv2d_winograd_levels_reference(x, sizes, wt, b, pad, relu)
    fast, ksaved = kwino.conv2d_winograd_levels_numba(x, sizes, wt, b, pad, relu)
    scale = np.abs(x).max(initial=0) * np.abs(wt).sum() + np.abs(b).max() + 1
    tol = TOL[dtype] * scale
    np.testing.assert_allclose(ref, want, rtol=0, atol=tol)
    np.testing.assert_allclose(fast, want, rtol=0, atol=tol)
    ref_g = winograd.conv2d_winograd_levels_backward_reference(dout, rsaved, wt, sizes, x.shape, pad)
    if relu:  # the kernel takes dout already through the mask (conv_levels' backward does it)
        dout = np.where(fast > 0, dout, 0).astype(dtype)
    fast_g = kwino.conv2d_winograd_levels_backward_numba(dout, ksaved, wt, sizes, x.shape, pad)
    gscale = (np.abs(dout).max(initial=0) + 1) * (np.abs(wt).sum() + np.abs(x).sum() + p + 1)
    for r, k, e in zip(ref_g, fast_g, want_g):
        assert r.shape == e.shape and k.shape == e.shape
        np.testing.assert_allclose(r, e, rtol=0, atol=TOL[dtype] * gscale)
        np.testing.assert_allclose(k, e, rtol=0, atol=TOL[dtype] * gscale)


@pytest.mark.parametrize("relu", [False, True])
def test_conv_levels_layer_takes_the_winograd_path(relu):
    """RetinaNet's head shape (32 -> 32 channels over a 32x32 ... 2x2 pyramid, 341 tiles): the
    numba layer goes Winograd's way, equal to the numpy layer (im2col) to the float32
    tolerance; a float64 finite-difference check of the same path with the thresholds at 1."""
    from minirccn.nn import conv_levels

    rng = rng_for(8)
    sizes = ((32, 32), (16, 16), (8, 8), (4, 4), (2, 2))
    maps = [rng.standard_normal((1, 32, h, w)).astype(np.float32) for h, w in sizes]
    wt = (rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    out, cache = conv_levels.conv2d_levels_forward(maps, wt, b, 1, 1, relu=relu, backend="numba")
    assert isinstance(cache.saved[0], kwino.WinogradSaved)
    want, wcache = conv_levels.conv2d_levels_forward(maps, wt, b, 1, 1, relu=relu, backend="numpy")
    for o, e in zip(out, want):
        np.testing.assert_allclose(o, e, rtol=0, atol=1e-5 * (np.abs(e).max() + 1) * 10)
    douts = [rng.standard_normal(o.shape).astype(np.float32) for o in out]
    got = conv_levels.conv2d_levels_backward(douts, cache)
    exp = conv_levels.conv2d_levels_backward(douts, wcache)
    for gx, ex in zip(got[0], exp[0]):
        np.testing.assert_allclose(gx, ex, rtol=0, atol=1e-4 * (np.abs(ex).max() + 1))
    for g, e in zip(got[1:], exp[1:]):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * (np.abs(e).max() + 1))


@pytest.mark.parametrize("relu", [False, True])
def test_conv_levels_gradcheck_float64(monkeypatch, relu):
    """Finite differences through ``conv2d_levels_forward``/``backward`` on the numba backend with
    the Winograd path forced: three levels (odd, non-square), non-square padding."""
    from minirccn.nn import conv_levels

    monkeypatch.setattr(kwino, "WINOGRAD_MIN_TILES", 1)
    monkeypatch.setattr(kwino, "WINOGRAD_MIN_CHANNELS", 1)
    rng = rng_for(9)
    sizes = ((5, 4), (3, 3), (1, 2))
    p = sum(h * w for h, w in sizes)
    x = rng.standard_normal((2, 2, p))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3) + (0.5 if relu else 0.0)

    out_sizes = []

    def fwd(x, w, b):
        out, cache = conv_levels.conv2d_levels_forward(
            conv_levels.Packed(x, sizes), w, b, 1, (1, 2), relu=relu, backend="numba"
        )
        assert isinstance(cache.saved[0], kwino.WinogradSaved)
        out_sizes[:] = [out.sizes]
        return out.data, cache

    def bwd(dout, cache):
        dx, dw, db = conv_levels.conv2d_levels_backward(conv_levels.Packed(dout, out_sizes[0]), cache)
        return dx.data, dw, db

    assert check_layer(fwd, bwd, [x, w, b]) < 1e-7
