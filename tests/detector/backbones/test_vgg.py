"""The VGG-style backbone and weight initialisation."""

import numpy as np
import pytest

from minirccn.detector.backbones import vgg as backbone
from minirccn.nn import init
from minirccn.detector.backbones.vgg import BackboneSpec, Stage
from minirccn.nn.gradcheck import check_layer


def test_vgg16_parameter_count_names_and_geometry():
    params = backbone.init_backbone("vgg16", np.random.default_rng(0))
    assert backbone.count_params(params) == 14_714_688
    assert len(params) == 26 and "backbone.conv1_1.w" in params and "backbone.conv5_3.b" in params
    assert (
        params["backbone.conv3_3.w"].shape == (256, 256, 3, 3)
        and params["backbone.conv1_1.w"].dtype == np.float32
    )
    assert backbone.out_channels("vgg16") == 512 and backbone.stride("vgg16") == 16


def test_vgg16_maps_224_to_14x14x512():
    params = backbone.init_backbone("vgg16", np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feats, _ = backbone.backbone_forward(params, x, "vgg16", train=False, backend="numba")
    assert feats.shape == (1, 512, 14, 14) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats)) and (feats > 0).any()


def test_tiny_preset_shapes_and_backward_names():
    spec = backbone.get_spec("tiny")
    params = backbone.init_backbone(spec, np.random.default_rng(0))
    assert backbone.stride(spec) == 16 and backbone.out_channels(spec) == 128
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 48)).astype(np.float32)
    feats, cache = backbone.backbone_forward(params, x, spec, train=True)
    assert feats.shape == (2, 128, 4, 3)
    grads = backbone.backbone_backward(np.ones_like(feats), cache)
    trainable = {k for k in params if ".running_" not in k}
    assert set(grads) == trainable
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == np.float32 for k in grads)


def test_train_mode_updates_running_stats_eval_mode_does_not():
    spec = BackboneSpec(stages=(Stage(4),), batch_norm=True)
    params = backbone.init_backbone(spec, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) + 3
    rm = params["backbone.conv1_1.bn.running_mean"]
    backbone.backbone_forward(params, x, spec, train=False)
    assert not rm.any()
    backbone.backbone_forward(params, x, spec, train=True)
    assert rm.any() and params["backbone.conv1_1.bn.running_mean"] is rm


def _backbone_check(spec, x, params, backend="numpy"):
    names = [k for k in params if ".running_" not in k]

    def fwd(*arrays):
        p = dict(params)
        p.update(zip(names, arrays))
        return backbone.backbone_forward(p, x, spec, train=True, backend=backend)

    def bwd(dout, cache):
        grads = backbone.backbone_backward(dout, cache)
        return tuple(grads[k] for k in names)

    return check_layer(fwd, bwd, [params[k] for k in names])


@pytest.mark.parametrize("batch_norm", [False, True])
def test_small_backbone_gradcheck(batch_norm):
    spec = BackboneSpec(
        stages=(Stage(3, convs=2), Stage(4, pool=False), Stage(2)),
        batch_norm=batch_norm,
        in_channels=2,
    )
    rng = np.random.default_rng(2)
    params = backbone.init_backbone(spec, rng, dtype=np.float64)
    for k in params:  # non-trivial BN affine parameters and biases
        if k.endswith((".b", ".beta")):
            params[k] += rng.standard_normal(params[k].shape) * 0.1
        if k.endswith(".gamma"):
            params[k] += rng.random(params[k].shape)
    x = rng.standard_normal((2, 2, 8, 8))
    assert _backbone_check(spec, x, params) < 1e-6


def test_backbone_backends_agree():
    spec = BackboneSpec(stages=(Stage(4), Stage(6)), batch_norm=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 12, 12)).astype(np.float64)
    outs = []
    for be in ("numpy", "numba"):
        params = backbone.init_backbone(spec, np.random.default_rng(0), dtype=np.float64)
        feats, cache = backbone.backbone_forward(params, x, spec, backend=be)
        outs.append((feats, backbone.backbone_backward(feats, cache)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    for k in outs[0][1]:
        np.testing.assert_allclose(outs[0][1][k], outs[1][1][k], rtol=1e-10, atol=1e-12)


def test_unknown_preset():
    with pytest.raises(ValueError, match="spec"):
        backbone.get_spec("resnet51")


# ----------------------------------------------------------------------------- init


def test_init_is_deterministic_and_has_the_right_std():
    w1, b1 = init.conv_params(64, 128, 3, np.random.default_rng(7))
    w2, _ = init.conv_params(64, 128, 3, np.random.default_rng(7))
    assert np.array_equal(w1, w2) and w1.dtype == np.float32 and not b1.any()
    assert w1.std() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.02)
    w64, _ = init.conv_params(64, 128, 3, np.random.default_rng(7), dtype=np.float64)
    np.testing.assert_allclose(w64, w1, rtol=1e-6)  # same draws in both dtypes
    wl, bl = init.linear_params(1000, 500, np.random.default_rng(0), std=init.HEAD_STD)
    assert wl.shape == (1000, 500) and bl.shape == (500,)
    assert wl.std() == pytest.approx(0.01, rel=0.02)
    assert init.fan_in((7, 5)) == 7 and init.fan_in((4, 3, 2, 2)) == 12
    with pytest.raises(TypeError, match="rng"):
        init.normal((2,), 1.0, 0)
