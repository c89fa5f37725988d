"""RetinaNet head: output order, prior-probability init, losses at their normalisation, and a
float64 gradient check of the explicit backward over two pyramid levels."""

import math

import numpy as np
import pytest

from minirccn.detector.dense.head import (
    from_anchor_order,
    init_retinanet_head,
    prior_bias,
    retinanet_head_backward,
    retinanet_head_forward,
    retinanet_losses,
    to_anchor_order,
)
from minirccn.nn import layers, losses
from minirccn.nn.gradcheck import directional_grad_check, numerical_grad, rel_error


def test_prior_bias_gives_pi_everywhere():
    b = prior_bias(0.01)
    assert b == pytest.approx(-math.log(99))
    assert 1 / (1 + math.exp(-b)) == pytest.approx(0.01)
    params = init_retinanet_head(8, 6, 9, 3, np.random.default_rng(0))
    np.testing.assert_allclose(params["head.cls.out.b"], np.float32(-math.log(99)))
    assert not params["head.box.out.b"].any()
    assert params["head.cls.out.w"].shape == (27, 6, 3, 3)
    assert params["head.box.out.w"].shape == (36, 6, 3, 3)
    assert params["head.cls.conv0.w"].shape == (6, 8, 3, 3)
    assert params["head.box.conv3.w"].shape == (6, 6, 3, 3)
    assert sum(k.startswith("head.cls.conv") and k.endswith(".w") for k in params) == 4
    # with zero-mean 0.01 weights and ReLUs the first logits are all ~ b: scores ~ pi
    x = np.random.default_rng(1).standard_normal((1, 8, 5, 4)).astype(np.float32)
    logits, deltas, _ = retinanet_head_forward(params, [x], backend="numpy")
    p = 1 / (1 + np.exp(-logits))
    assert logits.shape == (1, 5 * 4 * 9, 3) and deltas.shape == (1, 180, 4)
    np.testing.assert_allclose(p, 0.01, atol=1e-4)
    with pytest.raises(ValueError, match="prior_probability"):
        prior_bias(1.0)


def test_anchor_order_matches_loops():
    n, a, k, h, w = 2, 3, 4, 2, 5
    x = np.arange(n * a * k * h * w, dtype=np.float64).reshape(n, a * k, h, w)
    y = to_anchor_order(x, k)
    for i in range(n):
        for r in range(h):
            for c in range(w):
                for j in range(a):
                    for q in range(k):
                        assert y[i, (r * w + c) * a + j, q] == x[i, j * k + q, r, c]
    np.testing.assert_array_equal(from_anchor_order(y, k, h, w), x)


def _params(seed=0, in_ch=3, ch=4, a=2, kc=3, num_convs=2):
    rng = np.random.default_rng(seed)
    p = init_retinanet_head(in_ch, ch, a, kc, rng, num_convs=num_convs, dtype="float64")
    # larger weights and random biases so that every ReLU sees both signs
    return {
        k: (v * 40 if k.endswith(".w") else v + rng.normal(size=v.shape) * 0.1)
        for k, v in p.items()
    }


def test_levels_share_the_weights_and_concatenate_in_order():
    p = _params()
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 2, 3))
    lg, dl, _ = retinanet_head_forward(p, [f1, f2], backend="numpy", batched=False)
    lg1, dl1, _ = retinanet_head_forward(p, f1, backend="numpy")
    lg2, dl2, _ = retinanet_head_forward(p, [f2], backend="numpy")
    assert lg.shape == (2, 4 * 5 * 2 + 2 * 3 * 2, 3)
    np.testing.assert_array_equal(lg, np.concatenate([lg1, lg2], axis=1))
    np.testing.assert_array_equal(dl, np.concatenate([dl1, dl2], axis=1))
    # the levels batched: every conv one GEMM over both levels' pixels, the same to rounding
    lgb, dlb, _ = retinanet_head_forward(p, [f1, f2], backend="numpy")
    np.testing.assert_allclose(lgb, lg, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dlb, dl, rtol=1e-12, atol=1e-12)
    # one hand-run class subnet on level 2: conv, relu, conv, relu, out conv
    t = f2
    for i in range(2):
        t = np.maximum(
            layers.conv2d_forward(
                t, p[f"head.cls.conv{i}.w"], p[f"head.cls.conv{i}.b"], 1, 1, backend="numpy"
            )[0],
            0,
        )
    out = layers.conv2d_forward(t, p["head.cls.out.w"], p["head.cls.out.b"], 1, 1, backend="numpy")[
        0
    ]
    np.testing.assert_allclose(lg2, to_anchor_order(out, 3))


@pytest.mark.parametrize("batched", [True, False])
def test_head_backward_gradcheck_two_levels(batched):
    p = _params(seed=3)
    rng = np.random.default_rng(4)
    feats = [rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 3, 2, 2))]
    m = (12 + 4) * 2
    r_cls, r_box = rng.standard_normal((2, m, 3)), rng.standard_normal((2, m, 4))

    def f():
        lg, dl, _ = retinanet_head_forward(p, feats, backend="numpy", batched=batched)
        return float((lg * r_cls).sum() + (dl * r_box).sum())

    _, _, cache = retinanet_head_forward(p, feats, backend="numpy", batched=batched)
    dfeats, grads = retinanet_head_backward(r_cls, r_box, cache)
    assert set(grads) == set(p)
    for x, g in zip(feats, dfeats):
        assert rel_error(g, numerical_grad(f, x)) < 1e-7
    for k in ("head.cls.out.b", "head.box.out.b", "head.cls.conv0.b", "head.box.conv1.b"):
        assert rel_error(grads[k], numerical_grad(f, p[k])) < 1e-7, k
    for k in ("head.cls.out.w", "head.box.conv0.w", "head.cls.conv1.w"):
        assert directional_grad_check(f, p[k], grads[k], rng, n_dirs=4) < 1e-7, k


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_head_matches_the_per_level_head(backend, dtype):
    """The levels batched (one conv call over all of them) against the per-level path (the
    specification), forward and backward. The weight gradients are one sum over all the
    levels' pixels instead of a sum of per-level sums (and every GEMM is wider, so BLAS may
    split its sums differently): equal up to the order of the additions, so compared to
    rounding, relative to each array's scale: 1e-5 in float32, 1e-12 in float64."""
    rng = np.random.default_rng(7)
    p = init_retinanet_head(8, 6, 3, 4, rng, hidden_init="he", dtype=dtype)
    p = {k: v + (rng.normal(size=v.shape) * 0.1).astype(dtype) for k, v in p.items()}
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (3, 5)]
    feats = [rng.standard_normal((2, 8, h, w)).astype(dtype) for h, w in sizes]
    lg0, dl0, c0 = retinanet_head_forward(p, feats, backend="numpy", batched=False)
    lg, dl, c = retinanet_head_forward(p, feats, backend=backend)
    assert c.batched and not c0.batched
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert lg.dtype == dtype and rel_error(lg, lg0) < tol and rel_error(dl, dl0) < tol
    r_cls = rng.standard_normal(lg.shape).astype(dtype)
    r_box = rng.standard_normal(dl.shape).astype(dtype)
    df0, g0 = retinanet_head_backward(r_cls, r_box, c0)
    df, g = retinanet_head_backward(r_cls, r_box, c)
    assert len(df) == len(feats) and set(g) == set(g0) == set(p)
    for x, d, d0 in zip(feats, df, df0):
        assert d.shape == x.shape and d.dtype == dtype and rel_error(d, d0) < tol
    for k in p:
        assert g[k].shape == p[k].shape and g[k].dtype == dtype
        assert rel_error(g[k], g0[k]) < tol, k


def test_batched_head_on_one_level_is_the_per_level_head_bit_for_bit():
    # one level: the same products in the same order (the tiny RetinaNet's case)
    p = _params(seed=8)
    x = np.random.default_rng(9).standard_normal((2, 3, 5, 4))
    lg0, dl0, c0 = retinanet_head_forward(p, [x], backend="numpy", batched=False)
    lg, dl, c = retinanet_head_forward(p, [x], backend="numpy")
    np.testing.assert_array_equal(lg, lg0)
    np.testing.assert_array_equal(dl, dl0)
    r_cls, r_box = np.ones_like(lg), np.full_like(dl, 0.5)
    (d0,), g0 = retinanet_head_backward(r_cls, r_box, c0)
    (d,), g = retinanet_head_backward(r_cls, r_box, c)
    np.testing.assert_array_equal(d, d0)
    for k in p:
        np.testing.assert_array_equal(g[k], g0[k])


# ------------------------------------------------------------------------------------- losses


def test_losses_normalisation_by_positives():
    # one image, 4 anchors, 2 classes: anchor 0 positive class 2, anchor 1 negative,
    # anchor 2 ignored, anchor 3 positive class 1
    logits = np.array([[[0.3, -1.0], [2.0, 0.5], [9.0, 9.0], [-0.2, 0.1]]])
    deltas = np.array([[[1.0, -2, 0, 0], [7, 7, 7, 7], [5, 5, 5, 5], [0, 0, 0.5, 0]]])
    labels = np.array([[2, 0, -1, 1]])
    targets = np.zeros((1, 4, 4))
    cls, box, dlog, ddel = retinanet_losses(logits, deltas, labels, targets)
    onehot = np.array([[0, 1], [0, 0], [1, 0]], float)
    focal, _ = losses.sigmoid_focal_loss(logits[0, [0, 1, 3]], onehot)
    assert cls == pytest.approx(focal / 2)  # 2 positives
    assert box == pytest.approx((1 + 2 + 0.5) / 2)  # L1 of the positives' deltas / 2
    assert not dlog[0, 2].any() and not ddel[0, 2].any()  # ignored anchor: no gradient
    assert not ddel[0, 1].any()  # a negative has no box loss
    np.testing.assert_allclose(ddel[0, 0], [0.5, -0.5, 0, 0])


def test_losses_no_ground_truth_is_finite_and_normalised_by_one():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((1, 6, 3))
    deltas = rng.standard_normal((1, 6, 4))
    labels = np.zeros((1, 6), np.int64)  # every anchor negative
    cls, box, dlog, ddel = retinanet_losses(logits, deltas, labels, np.zeros((1, 6, 4)))
    assert np.isfinite(cls) and box == 0.0 and not ddel.any()
    assert cls == pytest.approx(losses.sigmoid_focal_loss(logits[0], np.zeros((6, 3)))[0])
    cls, box, dlog, ddel = retinanet_losses(logits, deltas, -np.ones((1, 6), np.int64), deltas)
    assert (cls, box) == (0.0, 0.0) and not dlog.any() and not ddel.any()


def test_losses_mean_over_images_and_gradcheck():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((2, 7, 3)) * 2
    deltas = rng.standard_normal((2, 7, 4))
    labels = np.array([[0, 1, 3, -1, 0, 0, 2], [0, 0, -1, 0, 0, 0, 0]])
    targets = rng.standard_normal((2, 7, 4))
    cls, box, dlog, ddel = retinanet_losses(logits, deltas, labels, targets, alpha=0.3, gamma=1.5)
    c0, b0, _, _ = retinanet_losses(
        logits[:1], deltas[:1], labels[:1], targets[:1], alpha=0.3, gamma=1.5
    )
    c1, b1, _, _ = retinanet_losses(
        logits[1:], deltas[1:], labels[1:], targets[1:], alpha=0.3, gamma=1.5
    )
    assert cls == pytest.approx((c0 + c1) / 2) and box == pytest.approx((b0 + b1) / 2)

    def f(k):
        return lambda: retinanet_losses(logits, deltas, labels, targets, alpha=0.3, gamma=1.5)[k]

    assert rel_error(dlog, numerical_grad(f(0), logits)) < 1e-7
    assert rel_error(ddel, numerical_grad(f(1), deltas)) < 1e-7


def test_hidden_init_he_keeps_the_scale_and_the_prior():
    rng = np.random.default_rng(0)
    p = init_retinanet_head(64, 32, 9, 3, rng, hidden_init="he")
    w0, w1 = p["head.cls.conv0.w"], p["head.box.conv2.w"]
    assert abs(w0.std() / math.sqrt(2 / (64 * 9)) - 1) < 0.02
    assert abs(w1.std() / math.sqrt(2 / (32 * 9)) - 1) < 0.02
    assert abs(p["head.cls.out.w"].std() / 0.01 - 1) < 0.05  # output convs: still 0.01
    np.testing.assert_allclose(p["head.cls.out.b"], np.float32(prior_bias(0.01)))
    normal = init_retinanet_head(64, 32, 9, 3, np.random.default_rng(0))
    assert abs(normal["head.cls.conv0.w"].std() / 0.01 - 1) < 0.02
    with pytest.raises(ValueError, match="hidden_init"):
        init_retinanet_head(4, 4, 1, 1, rng, hidden_init="xavier")
    from minirccn.config import preset

    assert preset("tiny", model="retinanet").retina_hidden_init == "he"
    assert preset("tiny").retina_hidden_init == "normal"  # torchvision's default
