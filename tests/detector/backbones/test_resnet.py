"""The ResNet backbone: float64 gradient checks, presets' shapes, ResNet-50's geometry."""

import numpy as np
import pytest

from minirccn.detector.backbones import resnet
from minirccn.detector.backbones.resnet import ResNetSpec
from minirccn.nn.gradcheck import check_layer


def _perturb(params, rng):
    """Non-trivial BN affine parameters, so every path carries a visible gradient."""
    for k in params:
        if k.endswith(".beta"):
            params[k] += rng.standard_normal(params[k].shape) * 0.3
        if k.endswith(".gamma"):
            params[k] += rng.random(params[k].shape)
    return params


def _check(spec, x, params, train=True, backend="numpy"):
    names = [k for k in params if ".running_" not in k]

    def fwd(*arrays):
        p = dict(params)
        p.update(zip(names, arrays))
        outs, cache = resnet.resnet_forward(p, x, spec, train=train, backend=backend)
        # every stage output is an output of the "layer", as an FPN uses them all
        return np.concatenate([o.reshape(-1) for o in outs]), (cache, [o.shape for o in outs])

    def bwd(dout, cache):
        cache, shapes = cache
        d, k = [], 0
        for s in shapes:
            n = int(np.prod(s))
            d.append(dout[k : k + n].reshape(s))
            k += n
        grads = resnet.resnet_backward(d, cache)
        return tuple(grads[k] for k in names)

    return check_layer(fwd, bwd, [params[k] for k in names], max_full=300, n_dirs=4)


SMALL_BASIC = ResNetSpec(
    widths=(3, 4, 4),
    blocks=(2, 1, 1),
    strides=(1, 2, 1),
    stem_channels=3,
    stem_kernel=3,
    stem_stride=1,
    stem_pool="max3",
    in_channels=2,
)
SMALL_BOTTLENECK = ResNetSpec(
    widths=(8, 8),
    blocks=(1, 2),
    strides=(1, 2),
    block="bottleneck",
    stem_channels=4,
    stem_kernel=3,
    stem_stride=2,
    stem_pool="max2",
    in_channels=2,
)


@pytest.mark.parametrize("spec", [SMALL_BASIC, SMALL_BOTTLENECK], ids=["basic", "bottleneck"])
def test_tiny_resnet_gradcheck_float64(spec):
    """Every parameter's gradient (stem, main paths, strided 1x1 shortcuts, identity
    shortcuts), with gradients flowing into every stage output, against finite differences."""
    rng = np.random.default_rng(0)
    params = _perturb(resnet.init_resnet(spec, rng, dtype=np.float64), rng)
    x = rng.standard_normal((2, 2, 9, 11))  # odd, non-square: floor modes everywhere
    assert _check(spec, x, params) < 1e-6


def test_gradcheck_with_running_statistics():
    """Frozen batch norm (running statistics, as after ``bn_freeze_iter``) is still trained
    through gamma and beta."""
    rng = np.random.default_rng(1)
    params = _perturb(resnet.init_resnet(SMALL_BASIC, rng, dtype=np.float64), rng)
    for k in params:
        if k.endswith(".running_mean"):
            params[k] += rng.standard_normal(params[k].shape) * 0.2
        if k.endswith(".running_var"):
            params[k] += rng.random(params[k].shape)
    x = rng.standard_normal((1, 2, 8, 8))
    assert _check(SMALL_BASIC, x, params, train=False) < 1e-6


def test_shortcut_is_identity_or_strided_projection():
    params = resnet.init_resnet(SMALL_BASIC, np.random.default_rng(0))
    assert "backbone.layer1.0.downsample.conv.w" not in params  # 3 -> 3 channels, stride 1
    assert "backbone.layer1.1.downsample.conv.w" not in params
    assert params["backbone.layer2.0.downsample.conv.w"].shape == (4, 3, 1, 1)  # stride 2
    assert "backbone.layer3.0.downsample.conv.w" not in params  # 4 -> 4, stride 1
    p = resnet.init_resnet(SMALL_BOTTLENECK, np.random.default_rng(0))
    # bottleneck: inner width a quarter of the output; the first block changes channels
    assert p["backbone.layer1.0.conv1.w"].shape == (2, 4, 1, 1)
    assert p["backbone.layer1.0.conv2.w"].shape == (2, 2, 3, 3)
    assert p["backbone.layer1.0.conv3.w"].shape == (8, 2, 1, 1)
    assert p["backbone.layer1.0.downsample.conv.w"].shape == (8, 4, 1, 1)
    assert "backbone.layer2.1.downsample.conv.w" not in p


def test_block_output_is_relu_of_main_plus_shortcut():
    """An independent calculation of one basic block with an identity shortcut."""
    from minirccn.nn import layers

    spec = ResNetSpec(
        widths=(3,),
        blocks=(1,),
        strides=(1,),
        stem_channels=3,
        stem_kernel=1,
        stem_stride=1,
        stem_pool="",
    )
    rng = np.random.default_rng(3)
    params = _perturb(resnet.init_resnet(spec, rng, dtype=np.float64), rng)
    x = rng.standard_normal((2, 3, 5, 6))
    (out,), _ = resnet.resnet_forward(params, x, spec, train=True, backend="numpy")

    def bn(h, name):
        m, v = h.mean(axis=(0, 2, 3), keepdims=True), h.var(axis=(0, 2, 3), keepdims=True)
        g, b = params[f"{name}.gamma"], params[f"{name}.beta"]
        return g[None, :, None, None] * (h - m) / np.sqrt(v + 1e-5) + b[None, :, None, None]

    def conv(h, name):
        w = params[f"{name}.w"]
        return layers.conv2d_forward(
            h, w, np.zeros(w.shape[0]), 1, w.shape[2] // 2, backend="numpy"
        )[0]

    stem = np.maximum(bn(conv(x, "backbone.stem.conv"), "backbone.stem.bn"), 0)
    p = "backbone.layer1.0"
    h = np.maximum(bn(conv(stem, f"{p}.conv1"), f"{p}.bn1"), 0)
    h = bn(conv(h, f"{p}.conv2"), f"{p}.bn2")
    np.testing.assert_allclose(out, np.maximum(h + stem, 0), rtol=1e-12, atol=1e-12)


def test_resnet50_geometry_without_training():
    """ResNet-50's shape as torchvision builds it: parameters (fc excluded) and the C2..C5
    maps at strides 4, 8, 16, 32, computed by layer arithmetic and checked by one forward."""
    spec = resnet.get_spec("resnet50")
    assert resnet.stage_strides(spec) == (4, 8, 16, 32)
    assert resnet.stage_channels(spec) == (256, 512, 1024, 2048)
    assert resnet.feature_shapes(spec, 224, 224) == [
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]
    # an 800 x 1216 input (torchvision's detection size): every map rounds up
    assert resnet.feature_shapes(spec, 800, 1216)[3] == (2048, 25, 38)
    assert resnet.feature_shapes(spec, 801, 1217)[0] == (256, 201, 305)
    params = resnet.init_resnet(spec, np.random.default_rng(0))
    trainable = sum(v.size for k, v in params.items() if ".running_" not in k)
    assert trainable == 23_508_032  # torchvision resnet50: 25,557,032 minus fc's 2,049,000
    assert sum(1 for k in params if k.endswith("conv.w") or ".conv" in k and k.endswith(".w")) == 53
    x = np.random.default_rng(1).standard_normal((1, 3, 67, 45)).astype(np.float32)
    outs, _ = resnet.resnet_forward(params, x, spec, train=False, backend="numba")
    assert [o.shape[1:] for o in outs] == resnet.feature_shapes(spec, 67, 45)


def test_tiny_presets_shapes_and_backends_agree():
    assert resnet.stage_strides("resnet-tiny") == (2, 4, 4)
    assert resnet.stride("resnet-tiny") == 4 and resnet.out_channels("resnet-tiny") == 64
    assert resnet.stage_strides("resnet-fpn-tiny") == (4, 8, 16, 32)
    assert resnet.feature_shapes("resnet-fpn-tiny", 128, 128) == [
        (32, 32, 32),
        (64, 16, 16),
        (64, 8, 8),
        (64, 4, 4),
    ]
    x = np.random.default_rng(3).standard_normal((2, 3, 20, 28))
    res = []
    for be in ("numpy", "numba"):
        params = resnet.init_resnet("resnet-fpn-tiny", np.random.default_rng(0), dtype=np.float64)
        outs, cache = resnet.resnet_forward(params, x, "resnet-fpn-tiny", backend=be)
        assert [o.shape[1:] for o in outs] == resnet.feature_shapes("resnet-fpn-tiny", 20, 28)
        res.append((outs, resnet.resnet_backward([np.ones_like(o) for o in outs], cache)))
    for a, b in zip(res[0][0], res[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert set(res[0][1]) == {k for k in params if ".running_" not in k}
    for k in res[0][1]:
        # the numba conv and batch norm sum in another order (docs/conv.md): entries that
        # cancel to ~1e-3 of the array's scale keep an absolute error relative to that scale
        ref = res[0][1][k]
        atol = 1e-11 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(res[1][1][k], ref, rtol=1e-9, atol=atol)


def test_backward_only_from_the_last_stage_and_bad_specs():
    params = resnet.init_resnet(SMALL_BASIC, np.random.default_rng(0), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8))
    outs, cache = resnet.resnet_forward(params, x, SMALL_BASIC, backend="numpy")
    g = resnet.resnet_backward([None, None, np.ones_like(outs[2])], cache)
    assert set(g) == {k for k in params if ".running_" not in k}
    with pytest.raises(ValueError, match="dstages"):
        resnet.resnet_backward([None], cache)
    with pytest.raises(ValueError, match="block"):
        ResNetSpec(widths=(4,), blocks=(1,), strides=(1,), block="wide")
    with pytest.raises(ValueError, match="same length"):
        ResNetSpec(widths=(4, 8), blocks=(1,), strides=(1,))
    with pytest.raises(ValueError, match="spec"):
        resnet.get_spec("resnet51")
