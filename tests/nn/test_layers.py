"""Layers: reference vs naive formulas, every backend vs the reference, gradient checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirccn.nn import layers
from minirccn.nn.gradcheck import check_layer

BACKENDS = ["numpy", "numba", "cuda"]  # cuda runs in Numba's simulator here (tests/conftest.py)
# Finite differences call the forward twice per input element: too slow for the simulator.
# The cuda kernels are instead compared bit for bit with the reference (which is gradchecked).
CPU_BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]


def rng_for(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- naive oracles


def naive_conv2d(x, w, b, s, p):
    """Direct six-loop convolution (no im2col), float64."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * s : i * s + kh, j * s : j * s + kw]
            out[:, :, i, j] = (
                np.tensordot(patch, w.astype(np.float64), axes=([1, 2, 3], [1, 2, 3])) + b
            )
    return out


def naive_max_pool(x, k, s):
    """Loop max pool; first maximum in row-major window order wins."""
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, c, ho, wo), x.dtype)
    arg = np.zeros((n, c, ho, wo), np.int64)
    for a in range(n):
        for b in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, bi = None, -1
                    for di in range(k):
                        for dj in range(k):
                            v = x[a, b, i * s + di, j * s + dj]
                            if best is None or v > best:
                                best, bi = v, (i * s + di) * w + (j * s + dj)
                    out[a, b, i, j], arg[a, b, i, j] = best, bi
    return out, arg


# ----------------------------------------------------------------------------- im2col / col2im

conv_geometry = st.tuples(
    st.integers(0, 2),  # N
    st.integers(1, 3),  # C
    st.integers(1, 6),  # H
    st.integers(1, 6),  # W
    st.integers(1, 3),  # kh
    st.integers(1, 3),  # kw
    st.integers(1, 3),  # sh
    st.integers(1, 3),  # sw
    st.integers(0, 2),  # ph
    st.integers(0, 2),  # pw
).filter(lambda g: g[2] + 2 * g[8] >= g[4] and g[3] + 2 * g[9] >= g[5])


def _unpack(g):
    n, c, h, w, kh, kw, sh, sw, ph, pw = g
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@given(g=conv_geometry, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
@settings(max_examples=25)
def test_im2col_col2im_kernels_match_reference_bit_for_bit(backend, g, dtype, seed):
    shape, k, s, p = _unpack(g)
    rng = rng_for(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols = layers.im2col(x, k, s, p)
    fast = layers._im2col(backend, x, k, s, p)
    assert fast.dtype == x.dtype and fast.shape == cols.shape
    np.testing.assert_array_equal(fast, cols)
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    ref = layers.col2im(dcols, shape, k, s, p)
    out = layers._col2im(backend, dcols, shape, k, s, p)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, ref)


@given(g=conv_geometry, seed=st.integers(0, 2**16))
def test_col2im_is_the_adjoint_of_im2col(g, seed):
    # <im2col(x), c> == <x, col2im(c)> for every x, c: col2im is the exact transpose
    shape, k, s, p = _unpack(g)
    rng = rng_for(seed)
    x = rng.standard_normal(shape)
    cols = layers.im2col(x, k, s, p)
    c = rng.standard_normal(cols.shape)
    assert np.isclose(
        (cols * c).sum(), (x * layers.col2im(c, shape, k, s, p)).sum(), rtol=1e-10, atol=1e-10
    )


def test_im2col_layout_is_documented_one():
    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(1, 2, 3, 4)
    cols = layers.im2col(x, (2, 3), (1, 1), (1, 0))  # Ho = 3 + 2 - 2 + 1 = 4, Wo = 4 - 3 + 1 = 2
    assert cols.shape == (1, 2 * 2 * 3, 4 * 2)
    c, i, j, oh, ow = 1, 1, 2, 2, 1
    assert cols[0, (c * 2 + i) * 3 + j, oh * 2 + ow] == x[0, c, oh - 1 + i, ow + j]
    assert np.all(cols[0, :6, 0:2].reshape(2, 3, 2)[0] == 0)  # i = 0, oh = 0 reads the top padding


# ----------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize(
    "s,p,k", [(1, 0, 3), (1, 1, 3), (2, 1, 3), (3, 2, 2), (1, 0, 1), (2, 0, 5)]
)
def test_conv2d_reference_matches_naive_loops(s, p, k):
    rng = rng_for(0)
    x, w, b = (
        rng.standard_normal((2, 3, 7, 6)),
        rng.standard_normal((4, 3, k, k)),
        rng.standard_normal(4),
    )
    out, _ = layers.conv2d_forward(x, w, b, s, p, backend="numpy")
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, s, p), rtol=1e-12, atol=1e-12)


def test_conv2d_rectangular_stride_and_padding():
    rng = rng_for(1)
    x, w, b = (
        rng.standard_normal((1, 2, 6, 7)),
        rng.standard_normal((3, 2, 3, 2)),
        rng.standard_normal(3),
    )
    out, _ = layers.conv2d_forward(x, w, b, stride=(2, 1), padding=(0, 1), backend="numpy")
    xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)))
    assert out.shape == (1, 3, 2, 8)
    want = (xp[0, :, 2:5, 3:5] * w[1]).sum() + b[1]
    assert np.isclose(out[0, 1, 1, 3], want)


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backends_match_numpy(backend, dtype):
    rng = rng_for(2)
    x = rng.standard_normal((2, 2, 5, 4)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype)
    ref, rc = layers.conv2d_forward(x, w, b, 2, 1, backend="numpy")
    out, c = layers.conv2d_forward(x, w, b, 2, 1, backend=backend)
    assert c.backend == backend and out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(layers.conv2d_backward(dout, c), layers.conv2d_backward(dout, rc)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_conv2d_same_bits_twice():
    rng = rng_for(3)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = np.zeros(5, np.float32)
    o1, c1 = layers.conv2d_forward(x, w, b, 1, 1, backend="numba")
    o2, c2 = layers.conv2d_forward(x, w, b, 1, 1, backend="numba")
    assert np.array_equal(o1, o2)
    for g1, g2 in zip(layers.conv2d_backward(o1, c1), layers.conv2d_backward(o2, c2)):
        assert np.array_equal(g1, g2)


def test_conv2d_empty_batch():
    out, c = layers.conv2d_forward(
        np.zeros((0, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), backend="numba"
    )
    assert out.shape == (0, 3, 3, 3)
    dx, dw, db = layers.conv2d_backward(out, c)
    assert dx.shape == (0, 2, 5, 5) and not dw.any() and not db.any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("s,p", [(1, 0), (1, 1), (2, 1), (2, 0)])
def test_conv2d_gradcheck(backend, s, p):
    rng = rng_for(4)
    x, w, b = (
        rng.standard_normal((2, 2, 5, 4)),
        rng.standard_normal((3, 2, 3, 3)),
        rng.standard_normal(3),
    )
    fwd = lambda x, w, b: layers.conv2d_forward(x, w, b, s, p, backend=backend)  # noqa: E731
    assert check_layer(fwd, layers.conv2d_backward, [x, w, b]) < 1e-7


# ----------------------------------------------------------------------------- relu


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_values_and_gradient_at_zero(backend):
    x = np.array([[-1.0, 0.0, 2.0, -0.0, 3.5]], np.float32)
    out, c = layers.relu_forward(x, backend=backend)
    np.testing.assert_array_equal(out, [[0, 0, 2, 0, 3.5]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(layers.relu_backward(np.ones_like(x), c), [[0, 0, 1, 0, 1]])


def test_relu_gradcheck():
    x = rng_for(5).standard_normal((3, 4, 2))
    assert check_layer(layers.relu_forward, layers.relu_backward, [x]) < 1e-7


# ----------------------------------------------------------------------------- max pool

pool_geometry = st.tuples(
    st.integers(0, 2),
    st.integers(1, 3),
    st.integers(1, 7),
    st.integers(1, 7),
    st.integers(1, 3),
    st.integers(1, 3),
).filter(lambda g: g[2] >= g[4] and g[3] >= g[4])


def test_max_pool_reference_matches_naive_with_ties():
    rng = rng_for(6)
    for k, s in [(2, 2), (3, 2), (3, 1), (2, 3), (1, 1)]:
        x = rng.integers(0, 3, (2, 2, 7, 8)).astype(np.float64)  # many ties
        out, argmax = layers.max_pool2d_reference(x, (k, k), (s, s))
        want, warg = naive_max_pool(x, k, s)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(argmax, warg)


def test_max_pool_first_max_wins_on_ties():
    x = np.array([[[[5.0, 5.0], [5.0, 5.0]]]])
    for backend in BACKENDS:
        out, c = layers.max_pool2d_forward(x, 2, backend=backend)
        assert out[0, 0, 0, 0] == 5 and c.argmax[0, 0, 0, 0] == 0
        np.testing.assert_array_equal(
            layers.max_pool2d_backward(np.ones((1, 1, 1, 1)), c)[0, 0], [[1, 0], [0, 0]]
        )


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@given(
    g=pool_geometry, dtype=st.sampled_from(DTYPES), ties=st.booleans(), seed=st.integers(0, 2**16)
)
@settings(max_examples=25)
def test_max_pool_kernels_match_reference_bit_for_bit(backend, g, dtype, ties, seed):
    n, c, h, w, k, s = g
    rng = rng_for(seed)
    x = (rng.integers(-2, 2, (n, c, h, w)) if ties else rng.standard_normal((n, c, h, w))).astype(
        dtype
    )
    ref, rc = layers.max_pool2d_forward(x, k, s, backend="numpy")
    out, fc = layers.max_pool2d_forward(x, k, s, backend=backend)
    assert out.dtype == dtype and fc.argmax.dtype == np.int64
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(fc.argmax, rc.argmax)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(
        layers.max_pool2d_backward(dout, fc), layers.max_pool2d_backward(dout, rc)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_nan_is_the_maximum(backend):
    x = np.array([[[[1.0, np.nan, 3.0, 0.0], [np.nan, 2.0, 1.0, 1.0]]]])
    out, c = layers.max_pool2d_forward(x, 2, backend=backend)
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 3.0
    assert c.argmax[0, 0, 0, 0] == 1  # the first NaN in the window


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_floor_mode_drops_the_ragged_edge(backend):
    x = rng_for(7).standard_normal((1, 1, 5, 5))
    out, c = layers.max_pool2d_forward(x, 2, 2, backend=backend)
    assert out.shape == (1, 1, 2, 2)
    dx = layers.max_pool2d_backward(np.ones((1, 1, 2, 2)), c)
    assert not dx[0, 0, 4].any() and not dx[0, 0, :, 4].any() and dx.sum() == 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2)])
def test_max_pool_gradcheck(backend, k, s):
    x = rng_for(8).permutation(2 * 2 * 6 * 5).reshape(2, 2, 6, 5) / 7.0  # distinct values, no ties
    fwd = lambda x: layers.max_pool2d_forward(x, k, s, backend=backend)  # noqa: E731
    assert check_layer(fwd, layers.max_pool2d_backward, [x]) < 1e-7


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_values_and_gradcheck(backend):
    rng = rng_for(9)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    out, _ = layers.linear_forward(x, w, b, backend=backend)
    np.testing.assert_allclose(out, np.einsum("nd,dm->nm", x, w) + b, rtol=1e-12)
    fwd = lambda x, w, b: layers.linear_forward(x, w, b, backend=backend)  # noqa: E731
    assert check_layer(fwd, layers.linear_backward, [x, w, b]) < 1e-7


# ----------------------------------------------------------------------------- dropout


def test_dropout_mask_from_generator_and_scaling():
    x = np.ones((200, 50), np.float32)
    out1, c1 = layers.dropout_forward(x, 0.25, np.random.default_rng(3))
    out2, _ = layers.dropout_forward(x, 0.25, np.random.default_rng(3))
    np.testing.assert_array_equal(out1, out2)  # same seed, same mask
    assert out1.dtype == np.float32
    assert set(np.unique(out1)) == {0.0, np.float32(1 / 0.75)}
    assert abs((out1 == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(layers.dropout_backward(np.ones_like(x), c1), out1)


def test_dropout_inactive_and_extremes():
    x = rng_for(10).standard_normal((3, 4))
    for out, c in [
        layers.dropout_forward(x, 0.5, None, train=False),
        layers.dropout_forward(x, 0.0, None),
    ]:
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(layers.dropout_backward(x, c), x)
    out, c = layers.dropout_forward(x, 1.0, np.random.default_rng(0))
    assert not out.any() and not layers.dropout_backward(x, c).any()
    with pytest.raises(ValueError, match="p"):
        layers.dropout_forward(x, 1.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        layers.dropout_forward(x, 0.5, 0)


def test_dropout_gradcheck():
    x = rng_for(11).standard_normal((4, 6))
    fwd = lambda x: layers.dropout_forward(x, 0.4, np.random.default_rng(1))  # noqa: E731
    assert check_layer(fwd, layers.dropout_backward, [x]) < 1e-7


# ----------------------------------------------------------------------------- batch norm


def test_batchnorm_train_normalises_and_updates_running_stats():
    rng = rng_for(12)
    x = rng.standard_normal((4, 3, 5, 5)) * np.array([1, 2, 3])[None, :, None, None] + 7
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    rm, rv = np.zeros(3), np.ones(3)
    out, _ = layers.batchnorm2d_forward(x, gamma, beta, rm, rv, train=True, momentum=0.1)
    xhat = (out - beta[None, :, None, None]) / gamma[None, :, None, None]
    np.testing.assert_allclose(xhat.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(
        xhat.var(axis=(0, 2, 3)), 1 / (1 + 1e-5 / x.var(axis=(0, 2, 3))), rtol=1e-9
    )
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(
        rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12
    )  # unbiased


def test_batchnorm_eval_uses_running_stats():
    x = rng_for(13).standard_normal((2, 2, 3, 3))
    rm, rv = np.array([0.5, -1.0]), np.array([4.0, 0.25])
    out, _ = layers.batchnorm2d_forward(
        x, np.ones(2), np.zeros(2), rm.copy(), rv.copy(), train=False
    )
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(out, want, rtol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradcheck(train):
    rng = rng_for(14)
    x, gamma, beta = (
        rng.standard_normal((3, 2, 3, 4)),
        rng.standard_normal(2) + 1,
        rng.standard_normal(2),
    )
    rv = rng.random(2) + 0.5

    def fwd(x, g, b):
        return layers.batchnorm2d_forward(x, g, b, np.zeros(2), rv.copy(), train=train)

    assert check_layer(fwd, layers.batchnorm2d_backward, [x, gamma, beta]) < 1e-7


def test_batchnorm_needs_two_values_per_channel():
    with pytest.raises(ValueError, match="x"):
        layers.batchnorm2d_forward(
            np.ones((1, 2, 1, 1)), np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)
        )


# ----------------------------------------------------------------------------- checks


def test_gradcheck_catches_a_wrong_backward():
    x = rng_for(15).standard_normal((2, 3, 4, 4))

    def wrong_backward(dout, cache):  # forgets the ReLU mask
        return dout

    assert check_layer(layers.relu_forward, wrong_backward, [x]) > 0.1


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (
            lambda: layers.conv2d_forward(np.ones((1, 2, 5)), np.ones((3, 2, 3, 3)), np.zeros(3)),
            ValueError,
            "x",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 1, 3, 3)), np.zeros(3)
            ),
            ValueError,
            "w",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(4)
            ),
            ValueError,
            "b",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3), np.float32), np.zeros(3)
            ),
            TypeError,
            "w",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5), int), np.ones((3, 2, 3, 3)), np.zeros(3)
            ),
            TypeError,
            "x",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), stride=0
            ),
            ValueError,
            "stride",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), padding=-1
            ),
            ValueError,
            "padding",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), stride=1.5
            ),
            TypeError,
            "stride",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 2, 2)), np.ones((3, 2, 3, 3)), np.zeros(3)
            ),
            ValueError,
            "x",
        ),
        (
            lambda: layers.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), backend="tpu"
            ),
            ValueError,
            "backend",
        ),
        (lambda: layers.max_pool2d_forward(np.ones((1, 1, 1, 1)), 2), ValueError, "x"),
        (lambda: layers.max_pool2d_forward(np.ones((1, 1, 4, 4)), 0), ValueError, "kernel_size"),
        (
            lambda: layers.linear_forward(np.ones((2, 3)), np.ones((4, 5)), np.zeros(5)),
            ValueError,
            "w",
        ),
        (
            lambda: layers.linear_forward(np.ones((2, 3)), np.ones((3, 5)), np.zeros(4)),
            ValueError,
            "b",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_backward_rejects_wrong_dout_shape():
    out, c = layers.conv2d_forward(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="dout"):
        layers.conv2d_backward(np.ones((1, 3, 4, 4)), c)
    out, c = layers.max_pool2d_forward(np.ones((1, 2, 4, 4)), 2)
    with pytest.raises(ValueError, match="dout"):
        layers.max_pool2d_backward(np.ones((1, 2, 3, 2)), c)
