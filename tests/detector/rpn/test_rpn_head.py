"""RPN head: anchor ordering of the outputs, losses, and a float64 gradient check."""

import numpy as np
import pytest

from minirccn.nn.gradcheck import numerical_grad, rel_error
from minirccn.detector.rpn.head import (
    _from_anchor_order,
    _to_anchor_order,
    init_rpn,
    rpn_backward,
    rpn_forward,
    rpn_losses,
)


def test_anchor_order_matches_loops():
    n, a, k, h, w = 2, 3, 4, 2, 5
    x = np.arange(n * a * k * h * w, dtype=np.float64).reshape(n, a * k, h, w)
    y = _to_anchor_order(x, n, a, k)
    for i in range(n):
        for r in range(h):
            for c in range(w):
                for j in range(a):
                    for q in range(k):
                        assert y[i, (r * w + c) * a + j, q] == x[i, j * k + q, r, c]
    np.testing.assert_array_equal(_from_anchor_order(y, n, a, k, h, w), x)


def _setup(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        k: (v * 30 if k.endswith(".w") else v + rng.normal(size=v.shape) * 0.1).astype(dtype)
        for k, v in init_rpn(3, 4, 2, rng, dtype).items()
    }
    x = rng.normal(size=(2, 3, 3, 4)).astype(dtype)
    m = 3 * 4 * 2
    labels = rng.integers(-1, 2, size=(2, m))
    targets = rng.normal(size=(2, m, 4)).astype(dtype) * 0.2
    return params, x, labels, targets


def test_shapes_and_dtypes():
    params, x, labels, targets = _setup(np.float32)
    logits, deltas, _ = rpn_forward(params, x, backend="numpy")
    assert logits.shape == (2, 24, 2) and deltas.shape == (2, 24, 4)
    assert logits.dtype == deltas.dtype == np.float32


def test_losses_normalisation():
    logits = np.zeros((1, 4, 2))
    deltas = np.array([[[1.0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 5], [0, 0, 0, 0]]])
    labels = np.array([[1, 0, -1, 1]])
    targets = np.zeros((1, 4, 4))
    lo, lb, dlo, dd = rpn_losses(logits, deltas, labels, targets, beta=1 / 9)
    assert lo == pytest.approx(np.log(2))
    assert lb == pytest.approx((1 - 0.5 / 9) / 3)  # one positive delta of 1, 3 samples
    assert np.all(dd[0, 2] == 0) and np.all(dlo[0, 2] == 0)  # the ignored anchor
    lo, lb, dlo, dd = rpn_losses(logits, deltas, -np.ones((1, 4), np.int64), targets)
    assert (lo, lb) == (0.0, 0.0) and not dlo.any() and not dd.any()


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gradient_check(backend):
    params, x, labels, targets = _setup()

    def loss():
        logits, deltas, _ = rpn_forward(params, x, backend=backend)
        lo, lb, _, _ = rpn_losses(logits, deltas, labels, targets)
        return lo + lb

    logits, deltas, cache = rpn_forward(params, x, backend=backend)
    _, _, dlo, dd = rpn_losses(logits, deltas, labels, targets)
    dx, grads = rpn_backward(dlo, dd, cache)
    assert set(grads) == set(params)
    for name in params:
        assert rel_error(grads[name], numerical_grad(loss, params[name])) < 1e-6, name
    assert rel_error(dx, numerical_grad(loss, x)) < 1e-6


# ---------------------------------------------------------------- one logit (rpn_objectness="sigmoid")


def _setup_sigmoid(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        k: (v * 30 if k.endswith(".w") else v + rng.normal(size=v.shape) * 0.1).astype(dtype)
        for k, v in init_rpn(3, 4, 2, rng, dtype, logits_per_anchor=1).items()
    }
    x = rng.normal(size=(2, 3, 3, 4)).astype(dtype)
    labels = rng.integers(-1, 2, size=(2, 24))
    targets = rng.normal(size=(2, 24, 4)).astype(dtype) * 0.2
    return params, x, labels, targets


def test_one_logit_losses_are_binary_cross_entropy():
    z = np.array([[[2.0], [-1.0], [5.0], [0.5]]])
    labels = np.array([[1, 0, -1, 1]])
    lo, _, dlo, _ = rpn_losses(z, np.zeros((1, 4, 4)), labels, np.zeros((1, 4, 4)))
    sig = 1 / (1 + np.exp(-z[0, [0, 1, 3], 0]))
    y = np.array([1.0, 0.0, 1.0])
    assert lo == pytest.approx(-np.mean(y * np.log(sig) + (1 - y) * np.log(1 - sig)))
    np.testing.assert_allclose(dlo[0, [0, 1, 3], 0], (sig - y) / 3)
    assert dlo.shape == (1, 4, 1) and dlo[0, 2, 0] == 0  # the ignored anchor


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_one_logit_gradient_check(backend):
    params, x, labels, targets = _setup_sigmoid()
    assert params["rpn.cls.w"].shape == (2, 4, 1, 1)

    def loss():
        logits, deltas, _ = rpn_forward(params, x, backend=backend)
        lo, lb, _, _ = rpn_losses(logits, deltas, labels, targets)
        return lo + lb

    logits, deltas, cache = rpn_forward(params, x, backend=backend)
    assert logits.shape == (2, 24, 1)
    _, _, dlo, dd = rpn_losses(logits, deltas, labels, targets)
    dx, grads = rpn_backward(dlo, dd, cache)
    for name in params:
        assert rel_error(grads[name], numerical_grad(loss, params[name])) < 1e-6, name
    assert rel_error(dx, numerical_grad(loss, x)) < 1e-6


def test_one_logit_is_the_softmax_of_zero_and_the_logit():
    from minirccn.detector.rpn.proposal_layer import objectness_scores

    z = np.random.default_rng(0).normal(0, 4, (50, 1))
    np.testing.assert_allclose(objectness_scores(z), objectness_scores(np.concatenate([0 * z, z], 1)), rtol=1e-12)
