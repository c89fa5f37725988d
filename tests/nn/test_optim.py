"""SGD (torch.optim.SGD's rule) and the warmup + step learning-rate schedule."""

import numpy as np
import pytest

from minirccn.nn import optim


def test_sgd_matches_the_torch_rule_by_hand():
    p0 = np.array([1.0, -2.0, 3.0])
    g1, g2, g3 = np.array([0.5, 0.5, -1.0]), np.array([1.0, 0.0, 2.0]), np.array([-1.0, 1.0, 0.0])
    lr, m, wd = 0.1, 0.9, 0.01
    p = p0.copy()
    opt = optim.SGD({"p": p}, lr, momentum=m, weight_decay=wd)
    # by hand
    q = p0.copy()
    d = g1 + wd * q
    buf = d
    q = q - lr * buf
    opt.step({"p": g1})
    np.testing.assert_allclose(p, q, rtol=1e-15)
    for g in (g2, g3):
        d = g + wd * q
        buf = m * buf + d
        q = q - lr * buf
        opt.step({"p": g})
        np.testing.assert_allclose(p, q, rtol=1e-15)


def test_sgd_updates_in_place_and_keeps_dtype():
    p = np.ones((2, 3), np.float32)
    params = {"w": p}
    optim.SGD(params, 0.5, momentum=0.0, weight_decay=0.0).step({"w": np.ones((2, 3), np.float64)})
    assert params["w"] is p and p.dtype == np.float32
    np.testing.assert_array_equal(p, 0.5)


def test_sgd_skips_params_without_grad_and_rejects_unknown():
    a, b = np.ones(2), np.ones(2)
    opt = optim.SGD({"a": a, "b": b}, 0.1)
    opt.step({"a": np.ones(2)})
    assert np.all(b == 1) and np.all(a < 1)
    with pytest.raises(ValueError, match="'c'"):
        opt.step({"c": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"a": np.ones(3)})


def test_sgd_lr_attribute_is_used():
    p = np.zeros(1)
    opt = optim.SGD({"p": p}, 1.0, momentum=0.0, weight_decay=0.0)
    opt.lr = 0.25
    opt.step({"p": np.ones(1)})
    assert p[0] == -0.25


def test_sgd_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(4) for _ in range(6)]
    p1 = np.ones(4)
    o1 = optim.SGD({"p": p1}, 0.1)
    for g in grads:
        o1.step({"p": g})
    p2 = np.ones(4)
    o2 = optim.SGD({"p": p2}, 0.1)
    for g in grads[:3]:
        o2.step({"p": g})
    state = {
        k: np.asarray(v) for k, v in o2.state_dict().items()
    }  # as np.load would give them back
    assert set(state) == {"lr", "momentum", "weight_decay", "buffer.p"}
    p3 = p2.copy()
    o3 = optim.SGD({"p": p3}, 99.0, momentum=0.0)
    o3.load_state_dict(state)
    assert o3.lr == 0.1 and o3.momentum == 0.9
    for g in grads[3:]:
        o3.step({"p": g})
    np.testing.assert_array_equal(p3, p1)  # bit for bit


def test_sgd_load_state_dict_rejects_mismatch():
    opt = optim.SGD({"p": np.ones(3)}, 0.1)
    with pytest.raises(ValueError, match="buffer"):
        opt.load_state_dict(
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "buffer.q": np.ones(3)}
        )
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "buffer.p": np.ones(2)}
        )
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict({})


def test_sgd_bad_arguments():
    with pytest.raises(TypeError, match="params"):
        optim.SGD([np.ones(2)], 0.1)
    with pytest.raises(TypeError, match="params"):
        optim.SGD({"p": np.ones(2, int)}, 0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD({"p": np.ones(2)}, -0.1)


def test_lr_schedule_warmup_then_steps():
    lrs = [
        optim.lr_at(s, 0.02, warmup_iters=5, warmup_factor=1 / 3, milestones=[7, 9], gamma=0.1)
        for s in range(11)
    ]
    want = [0.02 * (1 / 3 * (1 - s / 5) + s / 5) for s in range(5)] + [
        0.02,
        0.02,
        0.002,
        0.002,
        0.0002,
        0.0002,
    ]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    assert optim.lr_at(0, 0.1) == 0.1 and optim.lr_at(100, 0.1, milestones=(100,)) == pytest.approx(
        0.01
    )
    with pytest.raises(ValueError, match="step"):
        optim.lr_at(-1, 0.1)


# ------------------------------------------------------------------------ gradient clipping


def test_clip_grad_norm_scales_every_gradient_by_the_joint_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}  # joint norm 5
    out, total = optim.clip_grad_norm(grads, 2.5)
    assert total == 5.0
    coef = 2.5 / (5.0 + 1e-6)  # torch's clip_grad_norm_: max_norm / (total + 1e-6)
    np.testing.assert_array_equal(out["a"], grads["a"] * coef)
    np.testing.assert_array_equal(out["b"], grads["b"] * coef)
    assert np.sqrt(sum((g**2).sum() for g in out.values())) == pytest.approx(2.5, abs=1e-6)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # the inputs are not changed


def test_clip_grad_norm_at_and_below_the_limit_changes_nothing():
    grads = {"a": np.array([3.0, 4.0], np.float32)}
    for max_norm in (5.0 + 1e-6, 100.0):  # coef >= 1: left alone
        out, total = optim.clip_grad_norm(grads, max_norm)
        assert total == 5.0 and out["a"] is grads["a"]
    out, _ = optim.clip_grad_norm(grads, 5.0)  # exactly at the norm: torch's eps scales a hair
    np.testing.assert_array_equal(out["a"], grads["a"] * np.float32(5.0 / (5.0 + 1e-6)))
    out, _ = optim.clip_grad_norm(grads, 4.0)
    assert out["a"].dtype == np.float32  # the dtype is kept when scaling
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(grads, 0.0)


def test_train_step_clips_only_when_the_config_asks(monkeypatch):
    from minirccn.engine import loop as T

    seen = []
    real = optim.clip_grad_norm
    monkeypatch.setattr(optim, "clip_grad_norm", lambda g, m: seen.append(m) or real(g, m))

    big = {"w": np.array([30.0, 40.0])}

    class Model:
        """The protocol's two calls, with a fixed gradient."""

        def __init__(self, clip):
            from minirccn.config import preset

            self.config = preset("tiny", clip_grad_norm=clip, warmup_iters=0)

        def forward(self, batch, rng, **options):
            return {"loss_x": 1.0}, None

        def backward(self, cache):
            return dict(big)

    class Opt:
        lr = 0.0

        def step(self, grads):
            self.grads = grads

    batch = None
    opt = Opt()
    T.train_step(Model(0.0), opt, batch, None, 0, backend="numpy")
    assert seen == [] and np.array_equal(opt.grads["w"], [30.0, 40.0])  # 0: off (the default)
    T.train_step(Model(5.0), opt, batch, None, 0, backend="numpy")
    assert seen == [5.0]
    np.testing.assert_allclose(np.linalg.norm(opt.grads["w"]), 5.0, rtol=1e-6)
