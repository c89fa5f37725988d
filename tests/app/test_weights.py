"""--weights: torchvision-named safetensors files mapped name by name and shape by shape."""

import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")

from minirccn.app import weights  # noqa: E402
from minirccn.config import preset  # noqa: E402
from minirccn.detector.models.faster_rcnn import FasterRCNN  # noqa: E402
from minirccn.core.errors import MinirccnError  # noqa: E402

# a VGG-style stack small enough for a test: two stages of 2 and 1 convs, no batch norm
SMALL = preset(
    "vgg16",
    backbone_stages=((4, 2, True), (6, 1, False)),
    backbone_batch_norm=False,
    representation_size=8,
    roi_output_size=2,
    rpn_channels=4,
)


def torchvision_like(cfg, rng):
    """What torchvision's VGG ``state_dict()`` would hold for ``cfg``'s stack: ``features.i``
    for conv i (ReLU and a pool after each stage counted), ``classifier.0/3/6``."""
    tensors, i, c_in = {}, 0, 3
    for channels, convs, _pool in cfg.backbone_stages:
        for _ in range(convs):
            tensors[f"features.{i}.weight"] = rng.normal(size=(channels, c_in, 3, 3))
            tensors[f"features.{i}.bias"] = rng.normal(size=channels)
            c_in, i = channels, i + 2
        i += 1
    flat = c_in * cfg.roi_output_size**2
    d = cfg.representation_size
    tensors["classifier.0.weight"] = rng.normal(size=(d, flat))
    tensors["classifier.0.bias"] = rng.normal(size=d)
    tensors["classifier.3.weight"] = rng.normal(size=(d, d))
    tensors["classifier.3.bias"] = rng.normal(size=d)
    tensors["classifier.6.weight"] = rng.normal(size=(1000, d))
    tensors["classifier.6.bias"] = rng.normal(size=1000)
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def test_vgg16_names_are_torchvisions():
    names = weights.torchvision_names(preset("vgg16"))
    convs = [k for k in names if k.startswith("features.") and k.endswith(".weight")]
    assert [int(k.split(".")[1]) for k in convs] == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert names["features.0.weight"] == ("backbone.conv1_1.w", False)
    assert names["features.28.bias"] == ("backbone.conv5_3.b", False)
    assert names["classifier.0.weight"] == ("head.fc6.w", True)
    assert set(v[0] for v in names.values()) <= set(
        FasterRCNN.init_params(SMALL, 2, np.random.default_rng(0))
    ) | {f"backbone.conv{s}_{k}.{p}" for s in range(1, 6) for k in range(1, 4) for p in "wb"}


def test_file_maps_name_by_name(tmp_path):
    rng = np.random.default_rng(0)
    tensors = torchvision_like(SMALL, rng)
    path = tmp_path / "vgg.safetensors"
    safetensors_numpy.save_file(tensors, str(path))
    params = weights.backbone_params(str(path), SMALL)
    np.testing.assert_array_equal(params["backbone.conv1_1.w"], tensors["features.0.weight"])
    np.testing.assert_array_equal(params["backbone.conv1_2.b"], tensors["features.2.bias"])
    np.testing.assert_array_equal(params["backbone.conv2_1.w"], tensors["features.5.weight"])
    np.testing.assert_array_equal(params["head.fc6.w"], tensors["classifier.0.weight"].T)
    np.testing.assert_array_equal(params["head.fc7.b"], tensors["classifier.3.bias"])
    assert len(params) == 3 * 2 + 4
    # the loaded layers compute what torchvision's would: conv1_1 of an image
    model = FasterRCNN(SMALL, ["__background__", "a"])
    model.params.update(params)
    from minirccn.nn import layers

    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    out, _ = layers.conv2d_forward(
        x, model.params["backbone.conv1_1.w"], model.params["backbone.conv1_1.b"], 1, 1
    )
    w, b = tensors["features.0.weight"], tensors["features.0.bias"]
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    want = b[:, None, None] + np.einsum(
        "fcij,cyxij->fyx",
        w,
        np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2)),
    )
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-4)


def test_mismatches_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    good = torchvision_like(SMALL, rng)

    def fails(tensors, *words):
        with pytest.raises(MinirccnError) as e:
            weights.map_weights(tensors, SMALL)
        for w in words:
            assert w in str(e.value)

    fails({**good, "features.3.weight": good["features.0.weight"]}, "features.3.weight", "not in")
    fails({k: v for k, v in good.items() if k != "features.2.bias"}, "missing", "features.2.bias")
    bad = dict(good)
    bad["features.5.weight"] = np.zeros((6, 5, 3, 3), np.float32)
    fails(bad, "features.5.weight", "(6, 5, 3, 3)", "backbone.conv2_1.w", "(6, 4, 3, 3)")
    with pytest.raises(MinirccnError, match="batch norm"):
        weights.map_weights(good, preset("tiny"))
    with pytest.raises(MinirccnError, match="not found"):
        weights.backbone_params(str(tmp_path / "none.safetensors"), SMALL)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(MinirccnError, match="junk.safetensors"):
        weights.backbone_params(str(junk), SMALL)
