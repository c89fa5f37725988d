"""The gradient-check helpers themselves: they must pass right gradients and catch wrong ones."""

import numpy as np
import pytest

from minirccn.nn import gradcheck


def test_numerical_grad_of_a_known_function_and_restores_x():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    saved = x.copy()
    g = gradcheck.numerical_grad(lambda: float((x**3).sum()), x)
    np.testing.assert_allclose(g, 3 * saved**2, rtol=1e-8)
    np.testing.assert_array_equal(x, saved)


def test_numerical_grad_needs_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck.numerical_grad(lambda: 0.0, np.ones(3, np.float32))


def test_directional_check_accepts_right_and_rejects_wrong():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000)
    saved = x.copy()
    f = lambda: float(np.sin(x).sum())  # noqa: E731
    assert gradcheck.directional_grad_check(f, x, np.cos(x), rng) < 1e-7
    assert gradcheck.directional_grad_check(f, x, np.cos(x) * 1.01, rng) > 1e-3
    np.testing.assert_array_equal(x, saved)


def test_check_layer_passes_a_correct_layer_and_catches_a_wrong_one():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))

    def fwd(x, w):
        return x @ w, (x, w)

    def bwd(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout

    def bwd_wrong(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout * 2

    assert gradcheck.check_layer(fwd, bwd, [x, w]) < 1e-8
    assert gradcheck.check_layer(fwd, bwd_wrong, [x, w]) > 0.1
    assert gradcheck.check_layer(fwd, bwd_wrong, [x, w], wrt=[0]) < 1e-8  # only x checked
    assert gradcheck.check_layer(fwd, bwd_wrong, [x, w], max_full=1) > 0.1  # directional path


def test_check_layer_rejects_wrong_arity_and_shapes():
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="gradients"):
        gradcheck.check_layer(lambda x: (x * 2, None), lambda d, c: (d, d), [x])
    with pytest.raises(ValueError, match="shape"):
        gradcheck.check_layer(lambda x: (x * 2, None), lambda d, c: d[0], [x])


def test_check_loss():
    t = np.array([0.5, -1.0, 2.0])
    x = np.array([1.0, 2.0, 3.0])
    assert gradcheck.check_loss(lambda x: (float(((x - t) ** 2).sum()), 2 * (x - t)), x) < 1e-8
    assert gradcheck.check_loss(lambda x: (float(((x - t) ** 2).sum()), x - t), x) > 0.1


def test_rel_error():
    assert gradcheck.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gradcheck.rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(
        0.2 / 2.2
    )
