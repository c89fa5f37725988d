"""max_pool2d (minirccn/nn/pool.py, kernels/pool.py): reference vs naive loops, kernels vs the
reference bit for bit, NaN and tie rules, gradient checks, argument checks."""

import numpy as np
import pytest
from helpers import BACKENDS, FLOATS as DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st

from minirccn.nn import pool
from minirccn.nn.gradcheck import check_layer

# Finite differences call the forward twice per input element: too slow for the simulator.
# The cuda kernels are instead compared bit for bit with the reference (which is gradchecked).
CPU_BACKENDS = ["numpy", "numba"]
rng_for = np.random.default_rng


# ----------------------------------------------------------------------------- naive oracle


def naive_max_pool(x, k, s):
    """Loop max pool; first maximum in row-major window order wins; ``k``, ``s``: ints or
    (h, w) pairs."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = (k, k) if np.isscalar(k) else k, (s, s) if np.isscalar(s) else s
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, c, ho, wo), x.dtype)
    arg = np.zeros((n, c, ho, wo), np.int64)
    for a in range(n):
        for b in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, bi = None, -1
                    for di in range(kh):
                        for dj in range(kw):
                            v = x[a, b, i * sh + di, j * sw + dj]
                            if best is None or v > best:
                                best, bi = v, (i * sh + di) * w + (j * sw + dj)
                    out[a, b, i, j], arg[a, b, i, j] = best, bi
    return out, arg


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
        out, argmax = pool.max_pool2d_reference(x, (k, k), (s, s))
        want, warg = naive_max_pool(x, k, s)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(argmax, warg)


def test_max_pool_first_max_wins_on_ties():
    x = np.array([[[[5.0, 5.0], [5.0, 5.0]]]])
    for backend in BACKENDS:
        out, c = pool.max_pool2d_forward(x, 2, backend=backend)
        assert out[0, 0, 0, 0] == 5 and c.argmax[0, 0, 0, 0] == 0
        np.testing.assert_array_equal(
            pool.max_pool2d_backward(np.ones((1, 1, 1, 1)), c)[0, 0], [[1, 0], [0, 0]]
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
    ref, rc = pool.max_pool2d_forward(x, k, s, backend="numpy")
    out, fc = pool.max_pool2d_forward(x, k, s, backend=backend)
    assert out.dtype == dtype and fc.argmax.dtype == np.int64
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(fc.argmax, rc.argmax)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(
        pool.max_pool2d_backward(dout, fc), pool.max_pool2d_backward(dout, rc)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_nan_is_the_maximum(backend):
    x = np.array([[[[1.0, np.nan, 3.0, 0.0], [np.nan, 2.0, 1.0, 1.0]]]])
    out, c = pool.max_pool2d_forward(x, 2, backend=backend)
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 3.0
    assert c.argmax[0, 0, 0, 0] == 1  # the first NaN in the window


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_floor_mode_drops_the_ragged_edge(backend):
    x = rng_for(7).standard_normal((1, 1, 5, 5))
    out, c = pool.max_pool2d_forward(x, 2, 2, backend=backend)
    assert out.shape == (1, 1, 2, 2)
    dx = pool.max_pool2d_backward(np.ones((1, 1, 2, 2)), c)
    assert not dx[0, 0, 4].any() and not dx[0, 0, :, 4].any() and dx.sum() == 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (3, 2)])
def test_max_pool_gradcheck(backend, k, s):
    x = rng_for(8).permutation(2 * 2 * 6 * 5).reshape(2, 2, 6, 5) / 7.0  # distinct values, no ties
    fwd = lambda x: pool.max_pool2d_forward(x, k, s, backend=backend)  # noqa: E731
    assert check_layer(fwd, pool.max_pool2d_backward, [x]) < 1e-7


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,hw", [((3, 1), (1, 1), (6, 5)), ((1, 5), (1, 2), (4, 9)), ((2, 3), (2, 1), (7, 6))]
)
def test_max_pool_gradcheck_non_square_windows(backend, k, s, hw):
    """kh != kw and non-square images: a pooling that swaps the window's two sides fails."""
    x = rng_for(9).permutation(2 * 2 * hw[0] * hw[1]).reshape(2, 2, *hw) / 7.0  # no ties
    fwd = lambda x: pool.max_pool2d_forward(x, k, s, backend=backend)  # noqa: E731
    assert check_layer(fwd, pool.max_pool2d_backward, [x]) < 1e-7


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "k,s,hw", [((3, 1), (1, 1), (6, 5)), ((1, 5), (1, 2), (4, 9)), ((2, 3), (2, 1), (7, 6))]
)
def test_max_pool_forward_non_square_matches_naive_loops(backend, k, s, hw):
    """The forward of the non-square gradchecks, float64 with ties, against loops: values and
    the argmax the backward scatters to."""
    x = rng_for(10).integers(0, 3, (2, 2, *hw)).astype(np.float64)  # many ties
    out, c = pool.max_pool2d_forward(x, k, s, backend=backend)
    want, warg = naive_max_pool(x, k, s)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(c.argmax, warg)


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: pool.max_pool2d_forward(np.ones((1, 1, 1, 1)), 2), ValueError, "x"),
        (lambda: pool.max_pool2d_forward(np.ones((1, 1, 4, 4)), 0), ValueError, "kernel_size"),
    ],
)
def test_bad_arguments_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_backward_rejects_wrong_dout_shape():
    out, c = pool.max_pool2d_forward(np.ones((1, 2, 4, 4)), 2)
    with pytest.raises(ValueError, match="dout"):
        pool.max_pool2d_backward(np.ones((1, 2, 3, 2)), c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_2x2_path_matches_reference_with_nans_and_ties(dtype):
    """The numba kernel's spelt-out 2x2 / stride 2 path (the backbone's): the reference's
    values and argmax bit for bit, NaNs and tied maxima included, odd sizes too."""
    from minirccn.kernels import pool as kpool

    rng = rng_for(10)
    x = rng.integers(-2, 3, (2, 3, 9, 11)).astype(dtype)  # many ties
    x.reshape(-1)[rng.random(x.size) < 0.1] = np.nan
    out, arg = kpool.max_pool2d_numba(x, (2, 2), (2, 2))
    want, want_arg = pool.max_pool2d_reference(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(arg, want_arg)
