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


# ----------------------------------------------------------------------------- focal loss


def _focal_direct(x, t, alpha, gamma):
    """The focal loss written as torchvision writes it (fine for moderate logits)."""
    p = 1 / (1 + np.exp(-x))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


@given(
    seed=st.integers(0, 2**16),
    alpha=st.sampled_from([0.25, 0.5, 0.0, 1.0, -1.0]),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]),
    soft=st.booleans(),
)
def test_focal_loss_matches_direct_formula(seed, alpha, gamma, soft):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 5)) * 3
    t = rng.random((3, 5)) if soft else rng.integers(0, 2, (3, 5)).astype(float)
    want = _focal_direct(x, t, alpha, gamma)
    loss, _ = losses.sigmoid_focal_loss(x, t, alpha, gamma, reduction="none")
    np.testing.assert_allclose(loss, want, rtol=1e-9, atol=1e-14)
    total, _ = losses.sigmoid_focal_loss(x, t, alpha, gamma)  # default reduction "sum"
    assert np.isclose(total, want.sum(), rtol=1e-9, atol=1e-14)
    mean, _ = losses.sigmoid_focal_loss(x, t, alpha, gamma, reduction="mean")
    assert np.isclose(mean, want.mean(), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_focal_loss_gradcheck(gamma, alpha, reduction):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6)) * 3
    t = np.where(rng.random((4, 6)) < 0.5, rng.random((4, 6)), rng.integers(0, 2, (4, 6)))
    err = check_loss(lambda z: losses.sigmoid_focal_loss(z, t, alpha, gamma, reduction), x)
    assert err < 1e-7


def test_focal_loss_none_gives_each_elements_derivative():
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal(8) * 2, rng.random(8)
    per, d_none = losses.sigmoid_focal_loss(x, t, reduction="none")
    total, d_sum = losses.sigmoid_focal_loss(x, t, reduction="sum")
    assert per.shape == x.shape and np.isclose(per.sum(), total)
    np.testing.assert_array_equal(d_none, d_sum)
    _, d_mean = losses.sigmoid_focal_loss(x, t, reduction="mean")
    np.testing.assert_allclose(d_mean, d_sum / 8)


def test_focal_loss_defaults_and_special_cases():
    rng = np.random.default_rng(4)
    x, t = rng.standard_normal(10) * 3, rng.integers(0, 2, 10).astype(float)
    # defaults: alpha 0.25, gamma 2, reduction "sum"
    assert (
        losses.sigmoid_focal_loss(x, t)[0] == losses.sigmoid_focal_loss(x, t, 0.25, 2.0, "sum")[0]
    )
    # gamma 0 and alpha < 0: plain binary cross-entropy (sigmoid_bce is its mean)
    bce, dbce = losses.sigmoid_bce(x, t)
    loss, d = losses.sigmoid_focal_loss(x, t, alpha=-1, gamma=0, reduction="mean")
    assert np.isclose(loss, bce) and np.allclose(d, dbce)
    # alpha weights the positives by alpha and the negatives by 1 - alpha
    none = losses.sigmoid_focal_loss(x, t, alpha=-1, reduction="none")[0]
    weighted = losses.sigmoid_focal_loss(x, t, alpha=0.25, reduction="none")[0]
    np.testing.assert_allclose(weighted, np.where(t == 1, 0.25, 0.75) * none)


def test_focal_loss_easy_examples_are_down_weighted():
    # p = 0.01 on a background anchor (x = -log(99)): CE = -log(0.99); focal = 0.75 * CE * 0.01**2
    x = np.array([-np.log(99.0)])
    loss, _ = losses.sigmoid_focal_loss(x, np.zeros(1))
    assert np.isclose(loss, 0.75 * -np.log(0.99) * 1e-4, rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_is_stable_at_large_logits(gamma):
    x = np.array([40.0, -40.0, 40.0, -40.0, 1000.0, -1000.0, 1000.0, -1000.0, 40.0])
    t = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.5])
    for dtype in (np.float64, np.float32):
        loss, d = losses.sigmoid_focal_loss(x.astype(dtype), t, gamma=gamma, reduction="none")
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d)) and d.dtype == dtype
    loss, d = losses.sigmoid_focal_loss(x, t, gamma=gamma, reduction="none")
    # confidently wrong: CE = |x|, q = 1: loss = alpha_t |x|, gradient = alpha_t * sign
    np.testing.assert_allclose(loss[[2, 3, 6, 7]], [30.0, 10.0, 750.0, 250.0])
    np.testing.assert_allclose(d[[2, 3, 6, 7]], [0.75, -0.25, 0.75, -0.25])
    # confidently right at +-40: CE = q = e^-40 (to 1e-17), loss = alpha_t e^(-40 (1 + gamma)),
    # accurate where 1 - sigmoid(40) would round to 0
    e = np.exp(-40.0)
    np.testing.assert_allclose(loss[:2], np.array([0.25, 0.75]) * e ** (1 + gamma), rtol=1e-12)
    np.testing.assert_allclose(
        d[:2], np.array([-0.25, 0.75]) * (1 + gamma) * e ** (1 + gamma), rtol=1e-12
    )
    assert not loss[[4, 5]].any() and not d[[4, 5]].any()  # e^-1000 underflows to exactly 0
    # soft target 0.5 at x = 40: q = 0.5, CE = 40 * 0.5 + log1p(e^-40)
    assert np.isclose(loss[8], 0.5 * (20 + e) * 0.5**gamma, rtol=1e-12)


def test_focal_loss_empty_and_bad_arguments():
    loss, d = losses.sigmoid_focal_loss(np.zeros((0, 3)), np.zeros((0, 3)))
    assert loss == 0.0 and d.shape == (0, 3)
    assert np.isnan(losses.sigmoid_focal_loss(np.zeros(0), np.zeros(0), reduction="mean")[0])
    with pytest.raises(ValueError, match="reduction"):
        losses.sigmoid_focal_loss(np.zeros(2), np.zeros(2), reduction="max")
    with pytest.raises(ValueError, match="gamma"):
        losses.sigmoid_focal_loss(np.zeros(2), np.zeros(2), gamma=-1)
    with pytest.raises(ValueError, match="alpha"):
        losses.sigmoid_focal_loss(np.zeros(2), np.zeros(2), alpha=1.5)
    with pytest.raises(ValueError, match="targets"):
        losses.sigmoid_focal_loss(np.zeros(2), np.zeros(3))


def test_focal_loss_contract_name():
    from minirccn import losses as contract

    assert contract.sigmoid_focal_loss is losses.sigmoid_focal_loss


# ----------------------------------------------------------------------------- labelled focal loss
# RetinaNet's loss over integer anchor labels: the reference (one-hot, gather, sigmoid_focal_loss,
# scatter) and the one-pass Numba kernel (kernels/losses.py) agree to rounding.


def _labeled_case(seed, m, kc, dtype, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, kc)) * scale).astype(dtype)
    labels = rng.integers(-1, kc + 1, m)
    return x, labels


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.integers(0, 40),
    kc=st.integers(1, 5),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from([0.1, 1.0, 8.0, 50.0, 1000.0]),
    alpha=st.sampled_from([0.25, 0.0, 1.0, -1.0]),
    gamma=st.sampled_from([2.0, 0.0, 0.5, 1.0, 1.5, 3.0]),
)
def test_labeled_focal_loss_kernel_matches_the_reference(seed, m, kc, dtype, scale, alpha, gamma):
    # bit for bit where q**gamma is exact in both (gamma 0, 0.5, 1, 2: NumPy's fast paths);
    # other exponents go through pow: to rounding
    x, labels = _labeled_case(seed, m, kc, dtype, scale)
    want, dwant = losses.labeled_focal_loss(x, labels, alpha, gamma, backend="numpy")
    got, dgot = losses.labeled_focal_loss(x, labels, alpha, gamma, backend="numba")
    assert dgot.dtype == dtype and dgot.shape == x.shape
    assert not dgot[labels < 0].any()  # ignored anchors: no gradient
    if gamma in (0.0, 0.5, 1.0, 2.0):
        assert got == want and np.array_equal(dgot, dwant)
        return
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert abs(got - want) <= rtol * max(abs(want), 1e-30) + 1e-37
    np.testing.assert_allclose(dgot, dwant, rtol=rtol, atol=np.finfo(dtype).tiny)


def test_labeled_focal_loss_kernel_is_exact_on_a_retinanet_image():
    # the default run's sizes and settings: 12,276 anchors x 3 classes, alpha 0.25, gamma 2
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((12276, 3)) * 3 - 4).astype(np.float32)
    labels = rng.choice([-1, 0, 0, 0, 1, 2, 3], 12276)
    want = losses.labeled_focal_loss(x, labels, 0.25, 2.0, backend="numpy")
    got = losses.labeled_focal_loss(x, labels, 0.25, 2.0, backend="numba")
    assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_labeled_focal_loss_adversarial_logits():
    # saturated logits both ways, exact zeros, all targets; every class column of a positive
    x = np.array([[40.0, -40.0, 0.0], [1000.0, -1000.0, 1e-30], [-0.0, 88.0, -88.0]] * 2)
    labels = np.array([1, 2, 3, 0, -1, 3])
    for dtype in (np.float32, np.float64):
        for gamma in (0.0, 0.5, 2.0):
            want, dwant = losses.labeled_focal_loss(x.astype(dtype), labels, 0.25, gamma, backend="numpy")
            got, dgot = losses.labeled_focal_loss(x.astype(dtype), labels, 0.25, gamma, backend="numba")
            assert np.isfinite(got) and np.all(np.isfinite(dgot))
            assert got == want and np.array_equal(dgot, dwant)


def test_labeled_focal_loss_all_ignored_and_empty():
    x = np.ones((4, 2), np.float32)
    for backend in ("numpy", "numba"):
        loss, d = losses.labeled_focal_loss(x, -np.ones(4, np.int64), backend=backend)
        assert loss == 0.0 and d.shape == (4, 2) and not d.any()
        loss, d = losses.labeled_focal_loss(np.zeros((0, 3)), np.zeros(0, np.int64), backend=backend)
        assert loss == 0.0 and d.shape == (0, 3)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_labeled_focal_loss_gradcheck(gamma, backend):
    x, labels = _labeled_case(3, 12, 3, np.float64, 2.0)
    err = check_loss(lambda z: losses.labeled_focal_loss(z, labels, 0.25, gamma, backend=backend), x)
    assert err < 1e-6


def test_labeled_focal_loss_kernel_checks_like_the_reference():
    x = np.zeros((2, 2), np.float32)
    for backend in ("numpy", "numba"):
        with pytest.raises(ValueError, match="gamma"):
            losses.labeled_focal_loss(x, np.zeros(2, np.int64), 0.25, -1.0, backend=backend)
        with pytest.raises(ValueError, match="alpha"):
            losses.labeled_focal_loss(x, np.zeros(2, np.int64), 2.0, 2.0, backend=backend)
