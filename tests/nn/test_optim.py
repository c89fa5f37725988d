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
