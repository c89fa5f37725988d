"""The layers of minirccn/nn/layers.py (relu, linear, dropout, batch norm), the kernels of
kernels/layers.py (relu, batch norm) against their references, and the re-exports of
minirccn.nn.layers; conv2d and max_pool2d are tested in test_conv.py and test_pool.py."""

import numpy as np
import pytest

from helpers import BACKENDS, FLOATS
from hypothesis import given, settings
from hypothesis import strategies as st
from minirccn.nn import layers
from minirccn.nn.gradcheck import check_layer



def rng_for(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- relu


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_values_and_gradient_at_zero(backend):
    x = np.array([[-1.0, 0.0, 2.0, -0.0, 3.5]], np.float32)
    out, c = layers.relu_forward(x, backend=backend)
    np.testing.assert_array_equal(out, [[0, 0, 2, 0, 3.5]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(layers.relu_backward(np.ones_like(x), c), [[0, 0, 1, 0, 1]])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_relu_gradcheck(backend):
    x = rng_for(5).standard_normal((3, 4, 2))
    fwd = lambda x: layers.relu_forward(x, backend=backend)  # noqa: E731
    assert check_layer(fwd, layers.relu_backward, [x]) < 1e-7


@pytest.mark.parametrize("dtype", FLOATS)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=4), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_relu_kernel_matches_reference_bit_for_bit(dtype, shape, seed):
    """Random values with +-0, NaN, +-inf and subnormals sprinkled in; above and below the
    one-thread threshold (``CHUNK`` splits of the flat array)."""
    from minirccn.kernels import layers as klayers

    rng = rng_for(seed)
    x = rng.standard_normal(shape).astype(dtype)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, np.finfo(dtype).tiny / 4], dtype)
    pick = rng.random(x.shape) < 0.2
    x[pick] = rng.choice(special, int(pick.sum()))
    want, want_mask = layers.relu_reference(x)
    got, mask = klayers.relu_numba(x)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == dtype and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, want_mask)
    dout = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(
        klayers.relu_backward_numba(dout, mask), layers.relu_backward_reference(dout, want_mask)
    )


def test_relu_kernel_over_many_chunks():
    from minirccn.kernels import layers as klayers

    x = rng_for(6).standard_normal((3, 5, 77, 91)).astype(np.float32)  # > CHUNK and > 2^17
    assert x.size > 4 * klayers.CHUNK
    got, mask = klayers.relu_numba(x)
    want, want_mask = layers.relu_reference(x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mask, want_mask)


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


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradcheck(train, backend):
    rng = rng_for(14)
    x, gamma, beta = (
        rng.standard_normal((3, 2, 3, 4)),
        rng.standard_normal(2) + 1,
        rng.standard_normal(2),
    )
    rv = rng.random(2) + 0.5

    def fwd(x, g, b):
        return layers.batchnorm2d_forward(
            x, g, b, np.zeros(2), rv.copy(), train=train, backend=backend
        )

    assert check_layer(fwd, layers.batchnorm2d_backward, [x, gamma, beta]) < 1e-7


BN_INPUTS = ("normal", "offset", "dynamic_range", "constant_channel")


def _bn_input(rng, shape, kind, dtype):
    x = rng.standard_normal(shape)
    if kind == "offset":  # a mean far larger than the spread: the variance cancels
        x = 1e3 + 0.1 * x
    elif kind == "dynamic_range":
        x = x * 10.0 ** rng.integers(-4, 4, shape)
    elif kind == "constant_channel":
        x[:, 0] = 3.0  # variance 0: inv_std = 1/sqrt(eps)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    kind=st.sampled_from(BN_INPUTS),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_batchnorm_kernel_matches_reference_to_rounding(dtype, shape, kind, train, seed):
    """The kernel sums the statistics in float64 in (n, h, w) order, NumPy pairwise in the
    dtype: both are compared with a float64 evaluation of the same formulas, and the kernel
    must be no less accurate than the reference (up to a few units of rounding)."""
    from minirccn.kernels import layers as klayers

    if train and shape[0] * shape[2] * shape[3] < 2:
        return
    rng = rng_for(seed)
    x = _bn_input(rng, shape, kind, dtype)
    c = shape[1]
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    stats = (None, None) if train else ((rng.standard_normal(c)).astype(dtype), (rng.random(c) + 0.5).astype(dtype))
    exact = layers.batchnorm2d_reference(
        x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64),
        *(None if s is None else s.astype(np.float64) for s in stats), 1e-5,
    )
    want = layers.batchnorm2d_reference(x, gamma, beta, *stats, 1e-5)
    got = klayers.batchnorm2d_numba(x, gamma, beta, *stats, 1e-5)
    eps = np.finfo(dtype).eps
    for g, w, e in zip(got, want, exact):
        assert g.dtype == dtype and g.shape == w.shape
        scale = np.abs(e).max() if e.size else 0.0
        err_ref = np.abs(w - e).max() if e.size else 0.0
        err_got = np.abs(g - e).max() if e.size else 0.0
        assert err_got <= 2 * err_ref + 64 * eps * max(scale, 1.0)
    dout = rng.standard_normal(shape).astype(dtype)
    _, xhat, inv_std, _, _ = want
    want_b = layers.batchnorm2d_backward_reference(dout, xhat, inv_std, gamma, train)
    got_b = klayers.batchnorm2d_backward_numba(dout, xhat, inv_std, gamma, train)
    exact_b = layers.batchnorm2d_backward_reference(
        dout.astype(np.float64), xhat.astype(np.float64), inv_std.astype(np.float64),
        gamma.astype(np.float64), train,
    )
    for g, w, e in zip(got_b, want_b, exact_b):
        assert g.dtype == dtype and g.shape == w.shape
        scale = max(np.abs(e).max(), np.abs(dout).max() * np.abs(gamma * inv_std).max())
        err_ref, err_got = np.abs(w - e).max(), np.abs(g - e).max()
        m = shape[0] * shape[2] * shape[3]
        assert err_got <= 2 * err_ref + 8 * m * eps * scale


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


def test_every_layer_is_reexported_by_layers():
    # the contract of DESIGN.md: every layer is minirccn.layers.<name>, wherever it lives
    from minirccn import layers as top
    from minirccn.nn import conv, pool

    assert top is layers
    for module in (conv, pool):
        for name in dir(module):
            value = getattr(module, name)
            if getattr(value, "__module__", None) == module.__name__ and not name.startswith("_"):
                assert getattr(layers, name) is value, name


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(3, 5, 4), (64, 3136, 256)])  # small; the head's fc6 (big)
def test_linear_kernel_matches_reference(dtype, shape):
    """The numba linear runs the reference's GEMMs, choosing only OpenBLAS's thread count."""
    from minirccn.kernels import layers as klayers

    n, d, m = shape
    rng = rng_for(15)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((n, d), (d, m), (m,)))
    dout = rng.standard_normal((n, m)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        klayers.linear_numba(x, w, b), layers.linear_reference(x, w, b), rtol=tol, atol=tol * d
    )
    for got, want in zip(
        klayers.linear_backward_numba(dout, x, w), layers.linear_backward_reference(dout, x, w)
    ):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(n, m))


# ----------------------------------------------------------------------------- batch norm + ReLU, fused


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_relu_gradcheck(train, backend):
    # float64 finite differences through the fused layer (away from the kink: |y| > 1e-3)
    rng = rng_for(15)
    x = rng.standard_normal((2, 3, 3, 5))
    gamma, beta = rng.standard_normal(3) + 1, rng.standard_normal(3) * 0.5
    rv = rng.random(3) + 0.5
    rm = rng.standard_normal(3) * 0.1

    def fwd(x, g, b):
        return layers.batchnorm2d_forward(
            x, g, b, rm.copy(), rv.copy(), train=train, relu=True, backend=backend
        )

    out, _ = fwd(x, gamma, beta)
    assert (out > 0).any() and (out == 0).any()
    assert check_layer(fwd, layers.batchnorm2d_backward, [x, gamma, beta], eps=1e-7) < 1e-6


@pytest.mark.parametrize("dtype", FLOATS)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 7)),
    kind=st.sampled_from(BN_INPUTS),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_batchnorm_relu_fused_equals_unfused(dtype, shape, kind, train, seed):
    """The fused kernel gives exactly the unfused numba pair's numbers (batch norm's kernel,
    then the ReLU's), and the fused reference exactly the references' pair; the two backends
    agree to rounding (the batch-norm comparison above), the masks wherever ``y`` is not
    within rounding of 0."""
    from minirccn.kernels import layers as klayers

    if train and shape[0] * shape[2] * shape[3] < 2:
        return
    rng = rng_for(seed)
    x = _bn_input(rng, shape, kind, dtype)
    c = shape[1]
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    stats = (None, None) if train else ((rng.standard_normal(c)).astype(dtype), (rng.random(c) + 0.5).astype(dtype))
    dout = rng.standard_normal(shape).astype(dtype)
    for bn, relu, bn_back, relu_back, fused, fused_back in (
        (layers.batchnorm2d_reference, layers.relu_reference, layers.batchnorm2d_backward_reference,
         layers.relu_backward_reference, layers.batchnorm2d_relu_reference,
         layers.batchnorm2d_relu_backward_reference),
        (klayers.batchnorm2d_numba, klayers.relu_numba, klayers.batchnorm2d_backward_numba,
         klayers.relu_backward_numba, klayers.batchnorm2d_relu_numba,
         klayers.batchnorm2d_relu_backward_numba),
    ):
        out, xhat, inv_std, mean, var = bn(x, gamma, beta, *stats, 1e-5)
        out, mask = relu(out)
        got = fused(x, gamma, beta, *stats, 1e-5)
        for g, w in zip(got, (out, xhat, inv_std, mean, var, mask)):
            assert g.dtype == w.dtype and np.array_equal(g, w)
        want_b = bn_back(relu_back(dout, mask), xhat, inv_std, gamma, train)
        got_b = fused_back(dout, got[5], got[1], got[2], gamma, train)
        for g, w in zip(got_b, want_b):
            assert g.dtype == w.dtype and np.array_equal(g, w)
    ref = layers.batchnorm2d_relu_reference(x, gamma, beta, *stats, 1e-5)
    fast = klayers.batchnorm2d_relu_numba(x, gamma, beta, *stats, 1e-5)
    y = layers.batchnorm2d_reference(x, gamma, beta, *stats, 1e-5)[0]
    clear = np.abs(y) > 1e3 * np.finfo(dtype).eps * (np.abs(y).max() + 1)
    assert np.array_equal(ref[5][clear], fast[5][clear])


def test_batchnorm_relu_layer_updates_running_stats_like_the_unfused():
    rng = rng_for(16)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    for backend in ("numpy", "numba"):
        rm1, rv1, rm2, rv2 = (np.zeros(3, np.float32), np.ones(3, np.float32)) * 2
        y1, c1 = layers.batchnorm2d_forward(x, g, b, rm1, rv1, backend=backend)
        y1, r1 = layers.relu_forward(y1, backend=backend)
        y2, c2 = layers.batchnorm2d_forward(x, g, b, rm2, rv2, relu=True, backend=backend)
        assert np.array_equal(y1, y2) and np.array_equal(rm1, rm2) and np.array_equal(rv1, rv2)
        dout = rng.standard_normal(x.shape).astype(np.float32)
        want = layers.batchnorm2d_backward(layers.relu_backward(dout, r1), c1)
        got = layers.batchnorm2d_backward(dout, c2)
        for a, w in zip(got, want):
            assert np.array_equal(a, w)
