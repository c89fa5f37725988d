"""Layers without kernels (relu, linear, dropout, batch norm) and the re-exports of
minirccn.nn.layers; conv2d and max_pool2d are tested in test_conv.py and test_pool.py."""

import numpy as np
import pytest

from helpers import BACKENDS
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


def test_relu_gradcheck():
    x = rng_for(5).standard_normal((3, 4, 2))
    assert check_layer(layers.relu_forward, layers.relu_backward, [x]) < 1e-7


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
