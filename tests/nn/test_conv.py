"""conv2d (minirccn/nn/conv.py, kernels/conv.py): reference vs naive loops, kernels vs the
reference bit for bit, gradient checks, argument checks."""

import numpy as np
import pytest
from helpers import BACKENDS, FLOATS as DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st

from minirccn.core.dispatch import kernel
from minirccn.kernels import _launch
from minirccn.kernels import conv as kconv
from minirccn.nn import conv
from minirccn.nn.gradcheck import check_layer

# Finite differences call the forward twice per input element: too slow for the simulator.
# The cuda kernels are instead compared bit for bit with the reference (which is gradchecked).
CPU_BACKENDS = ["numpy", "numba"]
rng_for = np.random.default_rng


# ----------------------------------------------------------------------------- naive oracle


def naive_conv2d(x, w, b, s, p):
    """Direct six-loop convolution (no im2col), float64; ``s``, ``p``: ints or (h, w) pairs."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = (s, s) if np.isscalar(s) else s, (p, p) if np.isscalar(p) else p
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            out[:, :, i, j] = (
                np.tensordot(patch, w.astype(np.float64), axes=([1, 2, 3], [1, 2, 3])) + b
            )
    return out


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
    # the unfold is a copy and the fold adds in the reference's (i, j) order: the same bits
    shape, k, s, p = _unpack(g)
    rng = rng_for(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols = conv.im2col(x, k, s, p)
    fast = getattr(kconv, f"im2col_{backend}")(x, k, s, p)
    assert fast.dtype == x.dtype and fast.shape == cols.shape
    np.testing.assert_array_equal(fast, cols)
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    ref = conv.col2im(dcols, shape, k, s, p)
    out = getattr(kconv, f"col2im_{backend}")(dcols, shape, k, s, p)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, ref)


@given(g=conv_geometry, seed=st.integers(0, 2**16))
def test_col2im_is_the_adjoint_of_im2col(g, seed):
    # <im2col(x), c> == <x, col2im(c)> for every x, c: col2im is the exact transpose
    shape, k, s, p = _unpack(g)
    rng = rng_for(seed)
    x = rng.standard_normal(shape)
    cols = conv.im2col(x, k, s, p)
    c = rng.standard_normal(cols.shape)
    assert np.isclose(
        (cols * c).sum(), (x * conv.col2im(c, shape, k, s, p)).sum(), rtol=1e-10, atol=1e-10
    )


def test_im2col_layout_is_documented_one():
    x = np.arange(2 * 3 * 4, dtype=np.float64).reshape(1, 2, 3, 4)
    cols = conv.im2col(x, (2, 3), (1, 1), (1, 0))  # Ho = 3 + 2 - 2 + 1 = 4, Wo = 4 - 3 + 1 = 2
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
    out, _ = conv.conv2d_forward(x, w, b, s, p, backend="numpy")
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, s, p), rtol=1e-12, atol=1e-12)


def test_conv2d_rectangular_stride_and_padding():
    rng = rng_for(1)
    x, w, b = (
        rng.standard_normal((1, 2, 6, 7)),
        rng.standard_normal((3, 2, 3, 2)),
        rng.standard_normal(3),
    )
    out, _ = conv.conv2d_forward(x, w, b, stride=(2, 1), padding=(0, 1), backend="numpy")
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
    ref, rc = conv.conv2d_forward(x, w, b, 2, 1, backend="numpy")
    out, c = conv.conv2d_forward(x, w, b, 2, 1, backend=backend)
    assert c.backend == backend and out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(conv.conv2d_backward(dout, c), conv.conv2d_backward(dout, rc)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_conv2d_same_bits_twice():
    rng = rng_for(3)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = np.zeros(5, np.float32)
    o1, c1 = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
    o2, c2 = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
    assert np.array_equal(o1, o2)
    for g1, g2 in zip(conv.conv2d_backward(o1, c1), conv.conv2d_backward(o2, c2)):
        assert np.array_equal(g1, g2)


@pytest.mark.parametrize("k", [3, 1])
def test_conv2d_empty_batch(k):
    out, c = conv.conv2d_forward(
        np.zeros((0, 2, 5, 5)), np.ones((3, 2, k, k)), np.zeros(3), backend="numba"
    )
    assert out.shape == (0, 3, 6 - k, 6 - k)
    dx, dw, db = conv.conv2d_backward(out, c)
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
    fwd = lambda x, w, b: conv.conv2d_forward(x, w, b, s, p, backend=backend)  # noqa: E731
    assert check_layer(fwd, conv.conv2d_backward, [x, w, b]) < 1e-7


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (
            lambda: conv.conv2d_forward(np.ones((1, 2, 5)), np.ones((3, 2, 3, 3)), np.zeros(3)),
            ValueError,
            "x",
        ),
        (
            lambda: conv.conv2d_forward(np.ones((1, 2, 5, 5)), np.ones((3, 1, 3, 3)), np.zeros(3)),
            ValueError,
            "w",
        ),
        (
            lambda: conv.conv2d_forward(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(4)),
            ValueError,
            "b",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3), np.float32), np.zeros(3)
            ),
            TypeError,
            "w",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5), int), np.ones((3, 2, 3, 3)), np.zeros(3)
            ),
            TypeError,
            "x",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), stride=0
            ),
            ValueError,
            "stride",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), padding=-1
            ),
            ValueError,
            "padding",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), stride=1.5
            ),
            TypeError,
            "stride",
        ),
        (
            lambda: conv.conv2d_forward(np.ones((1, 2, 2, 2)), np.ones((3, 2, 3, 3)), np.zeros(3)),
            ValueError,
            "x",
        ),
        (
            lambda: conv.conv2d_forward(
                np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3), backend="tpu"
            ),
            ValueError,
            "backend",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_backward_rejects_wrong_dout_shape():
    out, c = conv.conv2d_forward(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="dout"):
        conv.conv2d_backward(np.ones((1, 3, 4, 4)), c)


def test_numba_conv_kernels_one_thread_below_the_threshold_same_bits(monkeypatch):
    """Small unfoldings run on one thread (waking the others costs more than the work);
    the numbers are the reference's on both sides of ``SERIAL_BELOW``, at it exactly too."""
    import numba

    from minirccn.kernels import _launch
    from minirccn.kernels import conv as kconv

    seen = []
    real = _launch.cpu_threads_for

    def spy(elements):
        seen.append(elements)
        return real(elements)

    monkeypatch.setattr(kconv, "cpu_threads_for", spy)
    monkeypatch.setattr(_launch, "machine_busy", lambda: False)  # a quiet machine
    threads_inside = []
    real_kernel = kconv._im2col_numba

    class Probe:  # records the thread count the kernel was called with
        def __call__(self, *a):
            threads_inside.append(numba.get_num_threads())
            return real_kernel(*a)

    monkeypatch.setattr(kconv, "_im2col_numba", Probe())
    rng = np.random.default_rng(0)
    # cols has C * kh * kw * Ho * Wo elements: below, exactly at, above 2^17
    cases = (((3, 16, 16), (3, 3), (1, 1)), ((1, 129, 131), (2, 4), (0, 0)), ((9, 64, 64), (3, 3), (1, 1)))
    for (c, h, w), k, p in cases:
        x = rng.standard_normal((1, c, h, w)).astype(np.float32)
        want = conv.im2col(x, k, (1, 1), p)
        got = kconv.im2col_numba(x, k, (1, 1), p)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            kconv.col2im_numba(want, x.shape, k, (1, 1), p), conv.col2im(want, x.shape, k, (1, 1), p)
        )
    sizes = seen[::2]
    assert sizes == [3 * 9 * 256, _launch.SERIAL_BELOW, 9 * 9 * 4096]  # exactly at: every thread
    assert threads_inside[0] == 1
    assert threads_inside[1] == threads_inside[2] == numba.get_num_threads()  # and restored


# ----------------------------------------------------------------------------- fast conv2d vs the reference
#
# The numba conv2d multiplies one block of output rows at a time and unfolds again in the
# backward (kernels/conv.py): the same products, the sums split differently, so it agrees
# with the reference to rounding. The bound scales with the sum of the terms' magnitudes
# (the reference run on |x|, |w|, |dout|), so cancelling inputs do not make it meaningless.

EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}

fast_geometry = st.tuples(
    st.integers(1, 3),  # N
    st.integers(1, 4),  # C
    st.integers(1, 9),  # H
    st.integers(1, 9),  # W
    st.sampled_from([(1, 1), (3, 3), (3, 1), (1, 5), (2, 3), (1, 2)]),  # (kh, kw)
    st.integers(1, 3),  # sh
    st.integers(1, 3),  # sw
    st.integers(0, 2),  # ph
    st.integers(0, 2),  # pw
    st.integers(1, 5),  # F
).filter(lambda g: g[2] + 2 * g[7] >= g[4][0] and g[3] + 2 * g[8] >= g[4][1])

#: inputs: plain normal; a huge dynamic range with exact zeros; cancelling +-1e4 pairs
INPUTS = ("normal", "dynamic_range", "cancelling")


def _adversarial(rng, shape, kind, dtype):
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "dynamic_range":
        a = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)
        a[rng.random(shape) < 0.3] = 0.0
        return a.astype(dtype)
    return (rng.choice([-1e4, 1e4], shape) + rng.standard_normal(shape)).astype(dtype)


def _assert_close_to_rounding(got, want, magnitude, dtype, terms):
    """``|got - want| <= 4 * terms * eps * magnitude`` elementwise (a forward-error bound of a
    sum of ``terms`` products, twice over: both sides round)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    bound = 4 * max(terms, 1) * EPS[dtype] * magnitude + np.finfo(dtype).tiny
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@given(
    g=fast_geometry,
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(INPUTS),
    block=st.sampled_from([1, 7, 64, 1 << 18]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_conv2d_kernels_match_reference_to_rounding(backend, g, dtype, kind, block, seed):
    """Forward and backward, float32 and float64, non-square kernels and images, strides
    1-3, padding 0-2; ``BLOCK_ELEMENTS`` as small as one output row per block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kconv, "BLOCK_ELEMENTS", block)
        _check_conv2d_kernel(backend, g, dtype, kind, seed)


def _check_conv2d_kernel(backend, g, dtype, kind, seed):
    n, c, h, wd, (kh, kw), sh, sw, ph, pw, f = g
    rng = rng_for(seed)
    x = _adversarial(rng, (n, c, h, wd), kind, dtype)
    w = _adversarial(rng, (f, c, kh, kw), kind, dtype)
    b = _adversarial(rng, (f,), kind, dtype)
    ref_out, ref_saved = conv.conv2d_reference(x, w, b, (sh, sw), (ph, pw))
    out, saved = kernel("conv2d", backend)(x, w, b, (sh, sw), (ph, pw))
    mag_out, _ = conv.conv2d_reference(np.abs(x), np.abs(w), np.abs(b), (sh, sw), (ph, pw))
    _assert_close_to_rounding(out, ref_out, mag_out, dtype, c * kh * kw + 1)
    dout = _adversarial(rng, ref_out.shape, kind, dtype)
    want = conv.conv2d_backward_reference(dout, ref_saved, w, x.shape, (sh, sw), (ph, pw))
    got = kernel("conv2d_backward", backend)(dout, saved, w, x.shape, (sh, sw), (ph, pw))
    _, abs_cols = conv.conv2d_reference(np.abs(x), np.abs(w), np.abs(b), (sh, sw), (ph, pw))
    mags = conv.conv2d_backward_reference(np.abs(dout), abs_cols, np.abs(w), x.shape, (sh, sw), (ph, pw))
    ho, wo = ref_out.shape[2:]
    terms = (f * kh * kw, n * ho * wo, n * ho * wo)  # dx, dw, db: terms per sum
    for got_g, want_g, mag, t in zip(got, want, mags, terms):
        _assert_close_to_rounding(np.asarray(got_g), want_g, mag, dtype, t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_numba_many_blocks_of_a_real_layer(dtype, monkeypatch):
    """A backbone-sized layer cut into 1-row blocks and into one block: the same numbers to
    rounding as the reference (and both block sizes agree with each other)."""
    rng = rng_for(5)
    x = rng.standard_normal((2, 16, 20, 24)).astype(dtype)
    w = (rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    ref, rc = conv.conv2d_forward(x, w, b, 1, 1, backend="numpy")
    dout = rng.standard_normal(ref.shape).astype(dtype)
    want = conv.conv2d_backward(dout, rc)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for block in (1, 1 << 18):
        monkeypatch.setattr(kconv, "BLOCK_ELEMENTS", block)
        out, c = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
        for got, exp in zip(conv.conv2d_backward(dout, c), want):
            np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * np.abs(exp).max())


def test_conv2d_numba_reuses_its_buffers():
    """Steady state: the column buffers are allocated once, not per call."""
    rng = rng_for(6)
    x = rng.standard_normal((1, 4, 10, 10)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    out, c = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
    conv.conv2d_backward(out, c)
    before = {k: id(v) for k, v in _launch._scratch.items()}
    out, c = conv.conv2d_forward(x, w, b, 1, 1, backend="numba")
    conv.conv2d_backward(out, c)
    assert {k: id(v) for k, v in _launch._scratch.items()} == before


# ----------------------------------------------------------------------------- non-square kernels


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,p,hw",
    [((3, 1), (1, 1), (1, 0), (5, 4)), ((1, 5), (1, 2), (0, 2), (4, 7)), ((2, 3), (2, 1), (1, 1), (5, 6))],
)
def test_conv2d_gradcheck_non_square_kernels(backend, k, s, p, hw):
    """kh != kw, non-square images and strides: catches a backward that mixes up kh and kw
    (an output width from kh, dw laid out (F, C, kw, kh))."""
    rng = rng_for(7)
    x = rng.standard_normal((2, 2, *hw))
    w = rng.standard_normal((3, 2, *k))
    b = rng.standard_normal(3)
    fwd = lambda x, w, b: conv.conv2d_forward(x, w, b, s, p, backend=backend)  # noqa: E731
    assert check_layer(fwd, conv.conv2d_backward, [x, w, b]) < 1e-7


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,p,hw",
    [((3, 1), (1, 1), (1, 0), (5, 4)), ((1, 5), (1, 2), (0, 2), (4, 7)), ((2, 3), (2, 1), (1, 1), (5, 6))],
)
def test_conv2d_forward_non_square_matches_naive_loops(backend, k, s, p, hw):
    """The forward of the non-square gradchecks above, float64, against six loops: the
    gradcheck proves the backward matches this forward, this proves the forward is the
    convolution (an output width computed from kh fails both)."""
    rng = rng_for(8)
    x, w, b = rng.standard_normal((2, 2, *hw)), rng.standard_normal((3, 2, *k)), rng.standard_normal(3)
    out, _ = conv.conv2d_forward(x, w, b, s, p, backend=backend)
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, s, p), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- conv2d + ReLU, fused
#
# conv2d_forward(..., relu=True) (the conv2d_relu op): the bias pass writes max(., 0); the
# backward masks dout by out > 0, read off the output the cache keeps (no mask). A ReLU rounds
# nothing, so the fused op must give the unfused pair's bits on every backend (the same conv
# kernel, then relu_reference / relu_backward_reference), and the kernels agree with the fused
# reference to rounding, as the plain conv's do.

#: the fast geometry's inputs, and small integers: every sum is exact in float32 and float64,
#: so many outputs are exactly 0, on the ReLU's threshold, on every backend alike
RELU_INPUTS = INPUTS + ("integers",)


def _relu_input(rng, shape, kind, dtype):
    if kind == "integers":
        return rng.integers(-1, 2, shape).astype(dtype)
    return _adversarial(rng, shape, kind, dtype)


def _relu_case(g, kind, dtype, seed):
    n, c, h, wd, (kh, kw), sh, sw, ph, pw, f = g
    rng = rng_for(seed)
    x = _relu_input(rng, (n, c, h, wd), kind, dtype)
    w = _relu_input(rng, (f, c, kh, kw), kind, dtype)
    b = _relu_input(rng, (f,), kind, dtype)
    return rng, x, w, b, (sh, sw), (ph, pw)


@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda"])
@given(
    g=fast_geometry,
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(RELU_INPUTS),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_conv2d_relu_fused_equals_unfused_bit_for_bit(backend, g, dtype, kind, seed):
    """Forward and backward of the fused op = the backend's conv kernel, then the ReLU's
    reference, bit for bit: non-square kernels and strides, padding, values exactly 0 at the
    threshold (``integers``), a gradient that is exactly 0 where the output is 0."""
    from minirccn.nn import layers

    rng, x, w, b, s, p = _relu_case(g, kind, dtype, seed)
    y, saved_plain = kernel("conv2d", backend)(x, w, b, s, p)
    want, mask = layers.relu_reference(y)
    out, saved = kernel("conv2d_relu", backend)(x, w, b, s, p)
    assert out.dtype == dtype and np.array_equal(out, want)
    assert np.array_equal(out > 0, mask)  # the mask the backward reads off the output
    dout = _relu_input(rng, out.shape, kind, dtype)
    want_g = kernel("conv2d_backward", backend)(
        layers.relu_backward_reference(dout, mask), saved_plain, w, x.shape, s, p
    )
    got_g = kernel("conv2d_relu_backward", backend)(dout, saved, out, w, x.shape, s, p)
    for got_a, want_a in zip(got_g, want_g):
        got_a = np.asarray(got_a)
        assert got_a.dtype == want_a.dtype and np.array_equal(got_a, want_a)


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@given(
    g=fast_geometry,
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(RELU_INPUTS),
    block=st.sampled_from([1, 7, 1 << 18]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_conv2d_relu_kernels_match_reference_to_rounding(backend, g, dtype, kind, block, seed):
    """The fused kernels against :func:`conv.conv2d_relu_reference` / its backward: the forward
    to rounding (a ReLU is 1-Lipschitz: the conv's bound holds), the masks wherever the output is
    clear of rounding, the backward to rounding given the same output (the mask it reads)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kconv, "BLOCK_ELEMENTS", block)
        rng, x, w, b, s, p = _relu_case(g, kind, dtype, seed)
        n, c, _, _, (kh, kw), *_, f = g
        ref_out, ref_saved = conv.conv2d_relu_reference(x, w, b, s, p)
        out, saved = kernel("conv2d_relu", backend)(x, w, b, s, p)
        mag, abs_cols = conv.conv2d_reference(np.abs(x), np.abs(w), np.abs(b), s, p)
        _assert_close_to_rounding(out, ref_out, mag, dtype, c * kh * kw + 1)
        assert (out >= 0).all()
        clear = np.abs(ref_out) > 4 * (c * kh * kw + 1) * EPS[dtype] * mag
        assert np.array_equal((out > 0)[clear], (ref_out > 0)[clear])
        dout = _relu_input(rng, out.shape, kind, dtype)
        want = conv.conv2d_relu_backward_reference(dout, ref_saved, out, w, x.shape, s, p)
        got = kernel("conv2d_relu_backward", backend)(dout, saved, out, w, x.shape, s, p)
        dy_abs = np.where(out > 0, np.abs(dout), 0).astype(dtype)
        mags = conv.conv2d_backward_reference(dy_abs, abs_cols, np.abs(w), x.shape, s, p)
        ho, wo = out.shape[2:]
        for got_g, want_g, m, t in zip(got, want, mags, (f * kh * kw, n * ho * wo, n * ho * wo)):
            _assert_close_to_rounding(np.asarray(got_g), want_g, m, dtype, t)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,p,hw",
    [
        ((3, 3), (1, 1), (1, 1), (5, 4)),
        ((3, 3), (2, 2), (1, 1), (6, 5)),
        ((3, 1), (1, 1), (1, 0), (5, 4)),
        ((1, 5), (1, 2), (0, 2), (4, 7)),
        ((2, 3), (2, 1), (1, 1), (5, 6)),
        ((1, 1), (1, 1), (0, 0), (3, 4)),
    ],
)
def test_conv2d_relu_gradcheck(backend, k, s, p, hw):
    """float64 finite differences through the fused layer (non-square kernels, strides and
    images; the 1x1 case takes the no-unfold path). Random inputs put no output within the
    step of the kink; the check asserts both sides of it are present."""
    rng = rng_for(9)
    x = rng.standard_normal((2, 2, *hw))
    w = rng.standard_normal((3, 2, *k))
    b = rng.standard_normal(3) * 0.5
    fwd = lambda x, w, b: conv.conv2d_forward(x, w, b, s, p, relu=True, backend=backend)  # noqa: E731
    out, cache = fwd(x, w, b)
    assert (out > 0).any() and (out == 0).any() and cache.out is out
    assert np.abs(conv.conv2d_forward(x, w, b, s, p, backend="numpy")[0]).min() > 1e-4
    assert check_layer(fwd, conv.conv2d_backward, [x, w, b]) < 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_relu_layer_equals_conv_then_relu_layers(backend, dtype):
    """The layer API: ``conv2d_forward(relu=True)`` + ``conv2d_backward`` give exactly what the
    conv layer, then ``relu_forward`` / ``relu_backward``, give; the default (``relu=False``)
    keeps no output and is the plain conv; an empty batch works fused too."""
    from minirccn.nn import layers

    rng = rng_for(10)
    x = rng.integers(-2, 3, (2, 3, 6, 5)).astype(dtype)  # exact sums: zeros on the threshold
    w = rng.integers(-1, 2, (4, 3, 3, 3)).astype(dtype)
    b = rng.integers(-1, 2, 4).astype(dtype)
    y, c1 = conv.conv2d_forward(x, w, b, 1, 1, backend=backend)
    assert c1.out is None
    y_default, _ = conv.conv2d_forward(x, w, b, 1, 1, relu=False, backend=backend)
    assert np.array_equal(np.asarray(y), np.asarray(y_default))
    want, rc = layers.relu_forward(y, backend=backend)
    got, c2 = conv.conv2d_forward(x, w, b, 1, 1, relu=True, backend=backend)
    assert c2.backend == backend and np.array_equal(np.asarray(got), np.asarray(want))
    assert (np.asarray(y) == 0).any()  # the threshold is exercised
    dout = rng.standard_normal(y.shape).astype(dtype)
    for a, e in zip(conv.conv2d_backward(dout, c2), conv.conv2d_backward(layers.relu_backward(dout, rc), c1)):
        assert a.dtype == dtype and np.array_equal(np.asarray(a), np.asarray(e))
    out, c = conv.conv2d_forward(np.zeros((0, 3, 5, 5), dtype), w, b, 1, 1, relu=True, backend=backend)
    assert out.shape == (0, 4, 5, 5)
    dx, dw, db = conv.conv2d_backward(out, c)
    assert dx.shape == (0, 3, 5, 5) and not np.asarray(dw).any() and not np.asarray(db).any()


def test_conv2d_relu_numba_reuses_its_buffers_and_keeps_no_mask():
    """Steady state of the fused numba layer: no new scratch buffer per call; the cache holds
    the output (the mask's source), not a bool mask."""
    rng = rng_for(11)
    x = rng.standard_normal((1, 4, 10, 10)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    out, c = conv.conv2d_forward(x, w, b, 1, 1, relu=True, backend="numba")
    conv.conv2d_backward(out, c)
    before = {k: id(v) for k, v in _launch._scratch.items()}
    out, c = conv.conv2d_forward(x, w, b, 1, 1, relu=True, backend="numba")
    conv.conv2d_backward(out, c)
    assert {k: id(v) for k, v in _launch._scratch.items()} == before
    assert c.out is out and not any(getattr(a, "dtype", None) == np.bool_ for a in c)
