"""conv2d over every pyramid level at once (minirccn/nn/conv_levels.py, kernels/conv_levels.py):
the batched op against the per-level conv (its specification), numpy vs numba, the kernels'
unfold and fold bit for bit, a float64 finite-difference check of the batched backward.

Tolerance: the forward's pixels are the per-level conv's dot products, but the weight and bias
gradients are ONE sum over every level's pixels instead of a sum of per-level sums (and BLAS
may split a wider GEMM differently): the same numbers up to the order of the additions, so
they are compared to rounding: relative 1e-5 in float32 (a sum of ~10^3 products of order 1
rounds at ~1e-7 relative each), 1e-12 in float64."""

import numpy as np
import pytest
from helpers import FLOATS as DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st
from minirccn.kernels import conv_levels as kcl

from minirccn.nn import conv, layers
from minirccn.nn import conv_levels as cl
from minirccn.nn.gradcheck import check_layer

CPU_BACKENDS = ["numpy", "numba"]
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _close(got, want, dtype, what=""):
    tol = TOL[np.dtype(dtype)]
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def _per_level(xs, w, b, s, p, douts, relu=False):
    """The specification: one conv2d (and relu) call per level, weight gradients added level by
    level."""
    outs, dxs, dw, db = [], [], 0, 0
    for x, d in zip(xs, douts):
        o, c = conv.conv2d_forward(x, w, b, s, p, backend="numpy")
        if relu:
            o, rc = layers.relu_forward(o, backend="numpy")
            d = layers.relu_backward(d, rc)
        gx, gw, gb = conv.conv2d_backward(d, c)
        outs.append(o)
        dxs.append(gx)
        dw, db = dw + gw, db + gb
    return outs, dxs, dw, db


level_size = st.tuples(st.integers(1, 7), st.integers(1, 7))  # 1x1, 2x2, non-square ...
geometry = st.tuples(
    st.integers(0, 2),  # N
    st.integers(1, 3),  # C
    st.integers(1, 4),  # F
    st.lists(level_size, min_size=1, max_size=5),  # the levels (one level included)
    st.sampled_from([(3, 1, 1), (3, 1, 0), (1, 1, 0), (3, 2, 1), (2, 1, 1), (1, 2, 0)]),  # k, s, p
).filter(lambda g: all(min(h, w) + 2 * g[4][2] >= g[4][0] for h, w in g[3]))


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["cuda"])
@given(
    g=geometry,
    relu=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=30, deadline=None)
def test_batched_conv_matches_the_per_level_conv(backend, g, relu, dtype, seed):
    n, c, f, sizes, (k, s, p) = g
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((n, c, h, w)).astype(dtype) for h, w in sizes]
    w = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    outs, cache = cl.conv2d_levels_forward(xs, w, b, s, p, relu=relu, backend=backend)
    douts = [rng.standard_normal(o.shape).astype(dtype) for o in outs]
    want_outs, want_dxs, want_dw, want_db = _per_level(xs, w, b, s, p, douts, relu)
    assert [o.shape for o in outs] == [o.shape for o in want_outs]
    for i, (o, want) in enumerate(zip(outs, want_outs)):
        assert o.dtype == dtype
        _close(o, want, dtype, f"out[{i}]")
    dxs, dw, db = cl.conv2d_levels_backward(douts, cache)
    assert dw.shape == w.shape and db.shape == b.shape and dw.dtype == dtype
    for i, (d, want) in enumerate(zip(dxs, want_dxs)):
        assert d.shape == xs[i].shape and d.dtype == dtype
        _close(d, want, dtype, f"dx[{i}]")
    _close(dw, want_dw, dtype, "dw")
    _close(db, want_db, dtype, "db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_level_is_the_plain_conv_bit_for_bit(dtype):
    # one level: the same im2col, the same GEMM shapes: the reference's very bits
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    (out,), cache = cl.conv2d_levels_forward([x], w, b, 1, 1, backend="numpy")
    ref, rc = conv.conv2d_forward(x, w, b, 1, 1, backend="numpy")
    np.testing.assert_array_equal(out, ref)
    d = rng.standard_normal(out.shape).astype(dtype)
    (dx,), dw, db = cl.conv2d_levels_backward([d], cache)
    for got, want in zip((dx, dw, db), conv.conv2d_backward(d, rc)):
        np.testing.assert_array_equal(got, want)


@given(
    sizes=st.lists(level_size, min_size=1, max_size=5),
    ksp=st.sampled_from([(3, 1, 1), (3, 1, 0), (3, 2, 1), (2, 1, 1), (3, 3, 2), (1, 2, 0)]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_unfold_and_fold_kernels_are_the_references_bit_for_bit(sizes, ksp, dtype, seed):
    k, s, p = ksp
    sizes = [(h, w) for h, w in sizes if min(h, w) + 2 * p >= k] or [(k, k)]
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((2, 3, h, w)).astype(dtype) for h, w in sizes]
    packed = cl.pack_levels(xs)
    want = np.concatenate([conv.im2col(x, k, s, p) for x in xs], axis=2)
    got = kcl.im2col_levels_numba(packed.data, packed.sizes, (k, k), (s, s), (p, p))
    np.testing.assert_array_equal(got, want)
    dcols = rng.standard_normal(want.shape).astype(dtype)
    dx = kcl.col2im_levels_numba(dcols, packed.sizes, packed.data.shape, (k, k), (s, s), (p, p))
    o_out = cl.offsets(cl._out_sizes(packed.sizes, (k, k), (s, s), (p, p)))
    for i, (x, d) in enumerate(zip(xs, cl.unpack_levels(cl.Packed(dx, packed.sizes)))):
        ref = conv.col2im(dcols[:, :, o_out[i] : o_out[i + 1]], x.shape, k, s, p)
        np.testing.assert_array_equal(d, ref)


def test_numba_matches_numpy_on_a_retinanet_pyramid():
    # the RetinaNet preset's shapes: 32 channels, 3x3, levels 32x32 down to 2x2 (and 1x1)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 32, h, h)).astype(np.float32) for h in (32, 16, 8, 4, 2, 1)]
    w = (rng.standard_normal((27, 32, 3, 3)) * 0.05).astype(np.float32)
    b = rng.standard_normal(27).astype(np.float32)
    x = cl.pack_levels(xs)
    for relu in (False, True):
        ref, rc = cl.conv2d_levels_forward(x, w, b, 1, 1, relu=relu, backend="numpy")
        out, c = cl.conv2d_levels_forward(x, w, b, 1, 1, relu=relu, backend="numba")
        assert isinstance(out, cl.Packed) and out.sizes == x.sizes and c.backend == "numba"
        _close(out.data, ref.data, np.float32)
        if relu:
            assert (out.data >= 0).all() and 0 < (out.data > 0).mean() < 1
        d = cl.Packed(rng.standard_normal(out.data.shape).astype(np.float32), out.sizes)
        for got, want in zip(cl.conv2d_levels_backward(d, c), cl.conv2d_levels_backward(d, rc)):
            got, want = getattr(got, "data", got), getattr(want, "data", want)
            _close(got, want, np.float32)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,p,relu",
    [(3, 1, 1, False), (3, 1, 1, True), (3, 2, 1, True), (1, 1, 0, True), (2, 1, 0, False)],
)
def test_batched_backward_gradcheck(backend, k, s, p, relu):
    rng = np.random.default_rng(4)
    sizes = ((4, 3), (2, 2), (1, 1), (3, 5))
    sizes = tuple((h, w) for h, w in sizes if min(h, w) + 2 * p >= k)
    x = cl.pack_levels([rng.standard_normal((2, 2, h, w)) for h, w in sizes]).data
    w, b = rng.standard_normal((3, 2, k, k)), rng.standard_normal(3)

    def fwd(x, w, b):
        out, cache = cl.conv2d_levels_forward(
            cl.Packed(x, sizes), w, b, s, p, relu=relu, backend=backend
        )
        return out.data, (cache, out.sizes)

    def bwd(dout, cache):
        dx, dw, db = cl.conv2d_levels_backward(cl.Packed(dout, cache[1]), cache[0])
        return dx.data, dw, db

    assert check_layer(fwd, bwd, [x, w, b]) < 1e-7


def test_pack_and_unpack_round_trip_and_checks():
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((2, 3, h, w)) for h, w in ((3, 4), (1, 1), (2, 5))]
    packed = cl.pack_levels(xs)
    assert packed.data.shape == (2, 3, 12 + 1 + 10) and packed.sizes == ((3, 4), (1, 1), (2, 5))
    for a, b in zip(cl.unpack_levels(packed), xs):
        np.testing.assert_array_equal(a, b)
    w, b = np.ones((2, 3, 3, 3)), np.zeros(2)
    with pytest.raises(ValueError, match="add up"):
        cl.conv2d_levels_forward(cl.Packed(packed.data, ((3, 4),)), w, b, 1, 1)
    with pytest.raises(ValueError, match="smaller than"):
        cl.conv2d_levels_forward(xs, w, b, 1, 0)
    with pytest.raises(ValueError, match="maps"):
        cl.pack_levels([])
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        cl.pack_levels([xs[0], rng.standard_normal((2, 4, 2, 2))])
    outs, cache = cl.conv2d_levels_forward(xs, w, b, 1, 1, backend="numpy")
    with pytest.raises(ValueError, match="dout"):
        cl.conv2d_levels_backward([o[:, :, :1] for o in outs], cache)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_relu_is_the_unfused_pair_bit_for_bit_and_keeps_no_mask(backend, dtype):
    """``relu=True`` = the batched conv without it, then the ReLU layer, bit for bit both ways
    (integer inputs: exact sums, many outputs exactly 0 on the threshold); the cache keeps the
    output (the backward's mask is ``out > 0``), no bool mask."""
    rng = np.random.default_rng(7)
    xs = [rng.integers(-1, 2, (2, 3, h, w)).astype(dtype) for h, w in ((5, 4), (3, 3), (1, 2))]
    w = rng.integers(-1, 2, (4, 3, 3, 3)).astype(dtype)
    b = rng.integers(-1, 2, 4).astype(dtype)
    x = cl.pack_levels(xs)
    y, c1 = cl.conv2d_levels_forward(x, w, b, 1, 1, backend=backend)
    want, rc = layers.relu_forward(y.data, backend=backend)
    out, c2 = cl.conv2d_levels_forward(x, w, b, 1, 1, relu=True, backend=backend)
    assert np.array_equal(out.data, want) and (y.data == 0).any()
    assert c2.saved[1] is out.data and not any(getattr(a, "dtype", None) == np.bool_ for a in c2.saved)
    d = rng.standard_normal(want.shape).astype(dtype)
    got = cl.conv2d_levels_backward(cl.Packed(d, out.sizes), c2)
    exp = cl.conv2d_levels_backward(cl.Packed(layers.relu_backward(d, rc), y.sizes), c1)
    for a, e in zip(got, exp):
        assert np.array_equal(getattr(a, "data", a), getattr(e, "data", e))
