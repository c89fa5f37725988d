"""Losses: values against direct formulas, gradients against finite differences, edge cases."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.nn import losses
from minirccn.nn.gradcheck import check_loss

# ----------------------------------------------------------------------------- softmax / CE


def test_softmax_is_stable_and_sums_to_one():
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    p = losses.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(p[1], np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())


def test_cross_entropy_value_ignores_minus_one():
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]])
    labels = np.array([0, -1, 2])
    loss, d = losses.softmax_cross_entropy(z, labels)
    logp0 = z[0, 0] - np.log(np.exp(z[0]).sum())
    logp2 = -np.log(3.0)
    assert np.isclose(loss, -(logp0 + logp2) / 2)
    assert not d[1].any()  # ignored row
    np.testing.assert_allclose(d[2], (np.full(3, 1 / 3) - [0, 0, 1]) / 2)


def test_cross_entropy_all_ignored_gives_zero():
    z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    loss, d = losses.softmax_cross_entropy(z, np.full(4, -1))
    assert loss == 0.0 and d.dtype == np.float32 and not d.any()
    loss, d = losses.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64))
    assert loss == 0.0 and d.shape == (0, 3)


def test_cross_entropy_huge_logits_stay_finite():
    z = np.array([[1e4, -1e4], [-1e4, 1e4]], np.float32)
    loss, d = losses.softmax_cross_entropy(z, np.array([1, 1]))
    assert np.isclose(loss, 1e4) and np.all(np.isfinite(d))


@given(
    seed=st.integers(0, 2**16),
    r=st.integers(1, 6),
    k=st.integers(2, 5),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_cross_entropy_gradient_is_softmax_minus_onehot(seed, r, k, dtype):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((r, k)) * 3).astype(dtype)
    labels = rng.integers(-1, k, r)
    loss, d = losses.softmax_cross_entropy(z, labels)
    assert d.dtype == dtype and np.isfinite(loss)
    valid = labels >= 0
    if valid.any():
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        want = (p - np.eye(k)[np.maximum(labels, 0)]) * valid[:, None] / valid.sum()
        np.testing.assert_allclose(d, want, rtol=1e-4, atol=1e-6)
    else:
        assert loss == 0.0 and not d.any()


def test_cross_entropy_gradcheck():
    rng = np.random.default_rng(1)
    labels = np.array([0, -1, 2, 1, 2])
    assert (
        check_loss(lambda z: losses.softmax_cross_entropy(z, labels), rng.standard_normal((5, 3)))
        < 1e-7
    )


@pytest.mark.parametrize(
    "labels, exc",
    [
        (np.array([0, 3]), ValueError),
        (np.array([0, -2]), ValueError),
        (np.array([0.0, 1.0]), TypeError),
        (np.array([0]), ValueError),
    ],
)
def test_cross_entropy_bad_labels(labels, exc):
    with pytest.raises(exc, match="labels"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), labels)


# ----------------------------------------------------------------------------- sigmoid BCE


def test_bce_matches_direct_formula_and_weights():
    rng = np.random.default_rng(2)
    z, t, w = rng.standard_normal((3, 4)), rng.random((3, 4)), rng.random((3, 4))
    s = 1 / (1 + np.exp(-z))
    loss, d = losses.sigmoid_bce(z, t, w)
    assert np.isclose(loss, np.mean(-w * (t * np.log(s) + (1 - t) * np.log(1 - s))))
    np.testing.assert_allclose(d, w * (s - t) / z.size)


def test_bce_huge_logits_stay_finite():
    z = np.array([1000.0, -1000.0, 1000.0, -1000.0], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    loss, d = losses.sigmoid_bce(z, t)
    assert np.isclose(loss, 500.0) and d.dtype == np.float32
    np.testing.assert_allclose(d, [0, 0, 0.25, -0.25])


def test_bce_gradcheck_and_empty():
    rng = np.random.default_rng(3)
    t, w = rng.random((4, 3)), rng.random(3)
    assert check_loss(lambda z: losses.sigmoid_bce(z, t, w), rng.standard_normal((4, 3)) * 3) < 1e-7
    loss, d = losses.sigmoid_bce(np.zeros(0), np.zeros(0))
    assert loss == 0.0 and d.shape == (0,)
    with pytest.raises(ValueError, match="targets"):
        losses.sigmoid_bce(np.zeros(3), np.zeros(4))


# ----------------------------------------------------------------------------- smooth L1


def test_smooth_l1_piecewise_values():
    beta = 1 / 9
    d = np.array([0.0, 0.05, -0.05, 1 / 9, 0.5, -2.0])
    loss, g = losses.smooth_l1(d, np.zeros_like(d), beta)
    want = np.where(np.abs(d) < beta, 0.5 * d**2 / beta, np.abs(d) - 0.5 * beta)
    assert np.isclose(loss, want.sum())
    np.testing.assert_allclose(g, [0.0, 0.45, -0.45, 1.0, 1.0, -1.0])


def test_smooth_l1_default_beta_is_one_ninth():
    assert np.isclose(losses.smooth_l1(np.array([0.05]), np.array([0.0]))[0], 0.5 * 0.05**2 * 9)


def test_smooth_l1_beta_zero_is_l1():
    rng = np.random.default_rng(4)
    p, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    t[0, 0] = p[0, 0]
    loss, g = losses.smooth_l1(p, t, beta=0)
    assert np.isclose(loss, np.abs(p - t).sum())
    np.testing.assert_array_equal(g, np.sign(p - t))
    assert g[0, 0] == 0


@pytest.mark.parametrize("beta", [1 / 9, 1.0, 0.0])
def test_smooth_l1_gradcheck(beta):
    rng = np.random.default_rng(5)
    t = rng.standard_normal((4, 4))
    p = t + rng.choice([-1, 1], (4, 4)) * (rng.random((4, 4)) * 2 + 0.01)  # away from the kinks
    p[0] = t[0] + np.array([0.02, -0.03, 0.05, -0.001])  # inside the quadratic zone
    assert check_loss(lambda x: losses.smooth_l1(x, t, beta), p) < 1e-7


def test_smooth_l1_keeps_dtype_and_checks_args():
    p = np.ones((2, 4), np.float32)
    _, g = losses.smooth_l1(p, np.zeros((2, 4), np.float32))
    assert g.dtype == np.float32
    with pytest.raises(ValueError, match="beta"):
        losses.smooth_l1(p, p, beta=-1)
    with pytest.raises(ValueError, match="target"):
        losses.smooth_l1(p, np.zeros((4, 2), np.float32))
