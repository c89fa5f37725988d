"""minirccn <-> torchvision without torch: the name table against the committed manifest of
torchvision's state_dicts, both directions of the conversion, the one-line errors, the CLI,
and the config fields that make minirccn compute what torchvision computes."""

import json
import os
import zipfile

import numpy as np
import pytest

safetensors_numpy = pytest.importorskip("safetensors.numpy")

from helpers import TINY

from minirccn.app.cli import main
from minirccn.config import preset
from minirccn.core.errors import MinirccnError
from minirccn.data import transforms
from minirccn.detector.anchors import AnchorGenerator
from minirccn.detector.registry import build_model
from minirccn.detector.rpn.proposal_layer import proposals_one_image
from minirccn.engine import interop
from minirccn.engine.checkpoint import load_checkpoint, param_shapes, save_checkpoint
from minirccn.engine.torchvision_export import build_spec, check_exportable, export_torchvision

HERE = os.path.dirname(__file__)
MANIFEST = os.path.join(HERE, "torchvision_manifest.json")
NAMES = ["__background__", "a", "b"]
#: a tiny one-level detector torchvision's FasterRCNN can hold (RPN as wide as the features)
TINY_TV = preset("tiny", **{**TINY, "rpn_channels": 8})


def shell(config, num_classes):
    """A model of ``config`` holding parameter shapes only (what the converter checks)."""
    model = build_model(config, interop.class_names_for(num_classes), params={})
    model.params = {k: s for k, (s, _d) in param_shapes(config, num_classes).items()}
    return model


def random_model(config, seed=0, names=NAMES):
    """A model whose every parameter is random: weights as initialised plus noise of half their
    spread, biases and batch-norm shifts N(0, 0.1), scales and variances U(0.5, 1.5)."""
    model = build_model(config, names, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for k, v in model.params.items():
        if k.endswith((".gamma", ".running_var")):
            new = rng.uniform(0.5, 1.5, v.shape)
        elif k.endswith(".w"):
            new = v + rng.normal(0, 0.5 * float(v.std()) + 1e-3, v.shape)
        else:
            new = rng.normal(0, 0.1, v.shape)
        model.params[k] = new.astype(v.dtype)
    return model


@pytest.mark.parametrize("arch", interop.ARCHS)
def test_the_name_table_is_torchvisions_state_dict(arch):
    """Every key and shape of the manifest (made with torchvision: scripts/torchvision_models.py)
    is one row of the table, and nothing else."""
    with open(MANIFEST) as fh:
        manifest = json.load(fh)["archs"][arch]
    model = shell(interop.arch_config(arch), 91)
    keys = interop.key_table(model)
    table = {k.torch: list(interop.torch_shape(k, model.params[k.ours])) for k in keys}
    assert table == manifest
    assert len({k.ours for k in keys}) == len(model.params) == len(keys)


def test_arch_configs_are_torchvisions_models():
    c4, fpn = (interop.arch_config(a) for a in interop.ARCHS)
    assert c4.backbone == "resnet50-c4" and c4.fpn_channels == 0 and c4.rpn_channels == 1024
    assert fpn.backbone == "resnet50" and fpn.fpn_channels == 256
    for cfg in (c4, fpn):
        assert (cfg.min_size, cfg.max_size, cfg.size_divisible) == (800, 1333, 32)
        assert (cfg.anchor_offset, cfg.anchor_grid, cfg.image_resize) == (
            0.0,
            "image",
            "torchvision",
        )
        assert (cfg.box_roi_pool, cfg.box_roi_pool_sampling_ratio) == ("roi_align", 2)
    with pytest.raises(MinirccnError, match="--arch: expected one of"):
        interop.arch_config("maskrcnn_resnet50_fpn")


def test_resnet50_c4_is_resnet50_up_to_layer3():
    shapes = param_shapes(interop.arch_config("fasterrcnn_resnet50_c4"), 91)
    backbone = sum(
        int(np.prod(s))
        for k, (s, _) in shapes.items()
        if k.startswith("backbone.") and ".running_" not in k
    )
    assert (
        backbone == 8_543_296
    )  # torchvision: sum of resnet50's conv1, bn1, layer1..layer3 parameters
    assert shapes["backbone.layer3.5.conv3.w"][0] == (1024, 256, 1, 1)
    assert not any(k.startswith("backbone.layer4") for k in shapes)


@pytest.mark.parametrize(
    "config",
    [TINY_TV, preset("resnet-fpn-tiny", rpn_channels=32, representation_size=16)],
    ids=["vgg-tiny", "resnet-fpn-tiny"],
)
def test_export_then_import_gives_the_same_detections(config, tmp_path):
    """to_torchvision then from_torchvision: every array back, the objectness as (0, l1 - l0)
    (the same probabilities), and the same detections."""
    model = random_model(config)
    keys = interop.key_table(model)
    tensors = interop.to_torchvision(model.params, keys)
    path = interop.write_state_dict(tmp_path / "m.safetensors", tensors)
    back = interop.from_torchvision(interop.read_state_dict(path), keys, np.float32)
    for k, v in model.params.items():
        if k.startswith("rpn.cls."):
            np.testing.assert_allclose(
                back[k][1::2] - back[k][0::2], v[1::2] - v[0::2], rtol=1e-6, atol=1e-6
            )
            assert not back[k][0::2].any()
        else:
            np.testing.assert_array_equal(back[k], v)
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = model.predict(image, backend="numpy")
    b = build_model(config, NAMES, params=back).predict(image, backend="numpy")
    assert len(a["scores"]) > 0
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)


def test_a_state_dict_of_another_arch_is_one_line_naming_the_keys():
    c4 = shell(interop.arch_config("fasterrcnn_resnet50_c4"), 91)
    tensors = {
        k.torch: np.zeros(interop.torch_shape(k, c4.params[k.ours]), np.float32)
        for k in interop.key_table(c4)
    }
    tensors["backbone.1.num_batches_tracked"] = np.zeros((), np.int64)  # nn.BatchNorm2d's: ignored
    fpn = interop.arch_config("fasterrcnn_resnet50_fpn")
    with pytest.raises(MinirccnError) as err:
        interop.convert(
            tensors, fpn, interop.class_names_for(91), "m.safetensors", "fasterrcnn_resnet50_fpn"
        )
    text = str(err.value)
    assert "\n" not in text and text.startswith(
        "m.safetensors: not a fasterrcnn_resnet50_fpn state_dict"
    )
    assert (
        "missing key(s): backbone.body." in text and "unexpected key(s): backbone.0.weight" in text
    )
    assert "try --arch fasterrcnn_resnet50_c4" in text
    # one mis-shaped key, named with both shapes
    del tensors["backbone.1.num_batches_tracked"]
    tensors["rpn.head.bbox_pred.bias"] = np.zeros(61, np.float32)
    with pytest.raises(
        MinirccnError,
        match=r"1 mis-shaped key\(s\): rpn.head.bbox_pred.bias is \(61,\), expected \(60,\)",
    ):
        interop.convert(
            tensors,
            interop.arch_config("fasterrcnn_resnet50_c4"),
            interop.class_names_for(91),
            "m",
            "fasterrcnn_resnet50_c4",
        )


def test_num_classes_must_agree_with_the_predictor():
    tensors = {"roi_heads.box_predictor.cls_score.weight": np.zeros((91, 1024), np.float32)}
    with pytest.raises(
        MinirccnError, match="--num-classes 21 disagrees .* 91 rows.*use --num-classes 91"
    ):
        interop.convert(
            tensors,
            interop.arch_config("fasterrcnn_resnet50_fpn"),
            interop.class_names_for(21),
            "m",
            "x",
        )


def test_pickled_torch_files_are_refused_with_the_way_to_convert(tmp_path):
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x02not read")
    with pytest.raises(
        MinirccnError, match=r"model.pth: a pickled torch file .*save_file\(model.state_dict\(\)"
    ):
        interop.read_state_dict(pth)
    disguised = tmp_path / "model.safetensors"  # torch.save writes a zip archive
    with zipfile.ZipFile(disguised, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(MinirccnError, match="a pickled torch file is not read"):
        interop.read_state_dict(disguised)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(MinirccnError, match="not a readable safetensors file"):
        interop.read_state_dict(garbage)
    with pytest.raises(MinirccnError, match="file not found"):
        interop.read_state_dict(tmp_path / "missing.safetensors")


def test_class_names():
    assert (
        interop.class_names_for(91)[1] == "person" and len(set(interop.class_names_for(91))) == 91
    )
    assert interop.class_names_for(3) == ["__background__", "class1", "class2"]
    assert interop.class_names_for(3, ["cat", "dog"]) == ["__background__", "cat", "dog"]
    with pytest.raises(MinirccnError, match="--class-names: expected 2 distinct"):
        interop.class_names_for(3, ["cat"])


def test_export_refuses_what_torchvision_cannot_express(tmp_path):
    retina = build_model(preset("tiny", model="retinanet", **TINY), NAMES)
    with pytest.raises(MinirccnError, match="a retinanet checkpoint cannot be exported"):
        check_exportable(retina)
    narrow = build_model(preset("tiny", **{**TINY, "rpn_channels": 5}), NAMES)
    with pytest.raises(
        MinirccnError, match="rpn_channels 5 differs from the backbone's 8 channels"
    ):
        check_exportable(narrow)
    aligned = build_model(
        preset("resnet-fpn-tiny", rpn_channels=32, box_roi_pool_aligned=True), NAMES
    )
    with pytest.raises(MinirccnError, match="MultiScaleRoIAlign has no aligned"):
        check_exportable(aligned)
    per_image = build_model(preset("tiny", **{**TINY, "image_norm": "per_image"}), NAMES)
    with pytest.raises(MinirccnError, match="image_norm=per_image cannot be exported"):
        check_exportable(per_image)
    check_exportable(build_model(preset("tiny", **TINY), NAMES))  # the default exports
    ck = save_checkpoint(tmp_path / "r.npz", retina)
    assert (
        main(["export", "--checkpoint", ck, "--to", "torchvision", "--out", str(tmp_path / "o")])
        == 2
    )


def test_convert_and_export_commands(tmp_path, capsys):
    """minirccn convert of a (shrunk) C4 state_dict, then minirccn export of the checkpoint: the
    same tensors come back, and build.py holds the model's numbers."""
    sets = {
        "backbone": "resnet-tiny",
        "rpn_channels": 64,
        "representation_size": 16,
        "min_size": 64,
        "max_size": 64,
    }
    config = interop.arch_config("fasterrcnn_resnet50_c4").replace(**sets)
    model = random_model(config, names=interop.class_names_for(3))
    tensors = interop.to_torchvision(model.params, interop.key_table(model))
    src = interop.write_state_dict(tmp_path / "c4.safetensors", tensors)
    ck = str(tmp_path / "c4.npz")
    argv = ["convert", src, "--arch", "fasterrcnn_resnet50_c4", "--num-classes", "3", "--out", ck]
    argv += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    converted, _ = load_checkpoint(ck)
    assert converted.config == config and converted.class_names == [
        "__background__",
        "class1",
        "class2",
    ]
    assert (
        main(["export", "--checkpoint", ck, "--to", "torchvision", "--out", str(tmp_path / "tv")])
        == 0
    )
    again = interop.read_state_dict(tmp_path / "tv" / "model.safetensors")
    assert set(again) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_allclose(again[k], v, rtol=1e-6, atol=1e-6)
    build_py = (tmp_path / "tv" / "build.py").read_text()
    assert "def build(" in build_py and "import torchvision" not in build_py.split("SPEC =")[
        0
    ].replace("from torchvision", "")
    spec = json.loads(build_py.split('SPEC = json.loads(r"""', 1)[1].split('""")', 1)[0])
    assert spec == json.loads(json.dumps(build_spec(converted)))
    assert spec["backbone"]["kind"] == "resnet" and spec["anchor_grid"] == "image"
    # bad input: one line, status 2
    capsys.readouterr()
    assert (
        main(
            [
                "convert",
                src,
                "--arch",
                "fasterrcnn_resnet50_c4",
                "--num-classes",
                "5",
                "--out",
                ck,
                *argv[8:],
            ]
        )
        == 2
    )
    assert "--num-classes 5 disagrees" in capsys.readouterr().err
    assert (
        main(
            ["convert", src, "--arch", "fasterrcnn_resnet50_fpn", "--num-classes", "3", "--out", ck]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a fasterrcnn_resnet50_fpn state_dict" in err


def test_export_writes_build_py_of_every_preset_kind(tmp_path):
    for name, config in (("vgg", TINY_TV), ("fpn", preset("resnet-fpn-tiny", rpn_channels=32))):
        out = export_torchvision(random_model(config), str(tmp_path / name))
        with open(out["build"]) as fh:
            text = fh.read()
        compile(text, out["build"], "exec")  # valid Python (torch is not needed to compile it)
        assert len(interop.read_state_dict(out["weights"])) == out["tensors"]


# ----------------------------------------------------------------------------- config fields


def test_torchvision_resize_size_follows_torch_precision():
    # 320 * (1 / 100) is 3.1999998 in float32: a 100-pixel side becomes 319 pixels
    assert transforms.torchvision_size(100, 37, 320, 320) == (319, 118)
    assert transforms.torchvision_size(480, 640, 320, 320) == (240, 320)
    assert transforms.torchvision_size(500, 333, 320, 320) == (320, 213)


def test_bilinear_resize_is_torchs_rule():
    x = np.random.default_rng(0).normal(size=(2, 6, 8)).astype(np.float32)
    half = transforms.bilinear_resize(x, 3, 4)  # exactly half: the mean of each 2x2 block
    np.testing.assert_allclose(half, x.reshape(2, 3, 2, 4, 2).mean(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_array_equal(transforms.bilinear_resize(x, 6, 8), x)  # same size: a copy
    up = transforms.bilinear_resize(
        x[:, :1, :2], 1, 4
    )  # 2 -> 4: sources -0.25 (clamped), 0.25, 0.75, 1.25
    np.testing.assert_allclose(
        up[:, 0],
        np.stack(
            [
                x[:, 0, 0],
                0.75 * x[:, 0, 0] + 0.25 * x[:, 0, 1],
                0.25 * x[:, 0, 0] + 0.75 * x[:, 0, 1],
                x[:, 0, 1],
            ],
            -1,
        ),
        rtol=1e-6,
    )


def test_torchvision_preprocess_normalises_then_resizes_and_rescales_per_axis():
    cfg = preset("tiny", **{**TINY, "image_resize": "torchvision", "size_divisible": 32})
    model = build_model(cfg, NAMES)
    image = np.random.default_rng(1).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    x, _scale = model.preprocess(image)
    expect = transforms.bilinear_resize(
        transforms.normalize(image), *transforms.torchvision_size(50, 100, 64, 64)
    )
    np.testing.assert_array_equal(x, expect)
    det = model.predict(
        image, backend="numpy"
    )  # padded to 64 x 64 inside: runs, boxes in the image
    assert (
        det["boxes"].shape[1] == 4
        and (det["boxes"][:, 2] <= 100).all()
        and (det["boxes"][:, 3] <= 50).all()
    )


def test_size_divisible_pads_training_batches():
    cfg = preset("tiny", **{**TINY, "size_divisible": 32})
    assert build_model(cfg, NAMES).size_divisible == 32
    assert build_model(preset("tiny", **TINY), NAMES).size_divisible == 8  # the stride, as before


def test_anchor_grid_image_divides_the_input_by_the_map():
    gen = AnchorGenerator((64,), [(32,)], (1.0,), offset=0.0, grid="image")
    anchors, _ = gen([(4, 4)], image_size=(224, 224))  # a 7-cell P5 pooled to 4: stride 56, not 64
    np.testing.assert_array_equal(anchors[:2, 0], [-16, 40])
    fixed, _ = AnchorGenerator((64,), [(32,)], (1.0,), offset=0.0)([(4, 4)])
    np.testing.assert_array_equal(fixed[:2, 0], [-16, 48])
    with pytest.raises(ValueError, match="grid"):
        AnchorGenerator((64,), [(32,)], (1.0,), grid="corner")


def test_rpn_score_thresh_drops_low_proposals():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (50, 2)).astype(np.float32)
    anchors = np.concatenate([rng.uniform(0, 40, (50, 2)), rng.uniform(50, 90, (50, 2))], 1).astype(
        np.float32
    )
    deltas = np.zeros((50, 4), np.float32)
    common = {"pre_nms_top_n": 50, "post_nms_top_n": 50, "nms_thresh": 0.99, "backend": "numpy"}
    _, all_scores, _ = proposals_one_image(logits, deltas, anchors, [50], (100, 100), **common)
    _, kept, _ = proposals_one_image(
        logits, deltas, anchors, [50], (100, 100), score_thresh=0.5, **common
    )
    assert (kept >= 0.5).all() and len(kept) == int((all_scores >= 0.5).sum()) < len(all_scores)


def test_train_fine_tunes_a_checkpoint(tmp_path, capsys):
    """train --weights CK.npz: the checkpoint's network and weights; a predictor of other
    classes starts afresh, with a note naming it."""
    config = preset("tiny", **TINY)
    start = random_model(config, names=["__background__", "x"])
    ck = save_checkpoint(tmp_path / "ck.npz", start)
    out = tmp_path / "ft"
    argv = [
        "train",
        "--weights",
        ck,
        "--iters",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--eval-images",
        "1",
    ]
    assert main(argv + ["--set", "lr=1e-12", "--set", "warmup_iters=0"]) == 0
    err = capsys.readouterr().err
    assert (
        "fine-tuning its tiny network" in err
        and "start afresh (head.bbox.b, head.bbox.w, head.cls.b, head.cls.w)" in err
    )
    tuned, _ = load_checkpoint(out / "checkpoint.npz")
    assert (
        tuned.config.backbone_stages == config.backbone_stages and tuned.num_classes == 4
    )  # shapes: 3 + bg
    np.testing.assert_allclose(
        tuned.params["backbone.conv1_1.w"], start.params["backbone.conv1_1.w"], atol=1e-6
    )
    np.testing.assert_allclose(tuned.params["rpn.bbox.w"], start.params["rpn.bbox.w"], atol=1e-6)


def test_sigmoid_and_softmax_objectness_give_the_same_detections():
    """torchvision's one-logit RPN copied (sigmoid) or as (0, l) (softmax): one detector; and a
    sigmoid model trains: forward and the hand-written backward run, every parameter a gradient."""
    sig_cfg = TINY_TV.replace(rpn_objectness="sigmoid")
    sig = random_model(sig_cfg)
    keys = interop.key_table(sig)
    assert {k.kind for k in keys if k.ours.startswith("rpn.cls")} == {"copy"}
    tensors = interop.to_torchvision(sig.params, keys)
    two = build_model(
        TINY_TV,
        NAMES,
        params=interop.from_torchvision(tensors, interop.key_table(shell(TINY_TV, 3)), np.float32),
    )
    image = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a, b = sig.predict(image, backend="numpy"), two.predict(image, backend="numpy")
    assert len(a["scores"]) > 0
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    from minirccn.data.batching import Batch

    x = sig.preprocess(image)[0][None]
    batch = Batch(
        x, [(64, 64)], [{"boxes": np.array([[8, 8, 40, 30]], np.float32), "labels": np.array([1])}]
    )
    losses, cache = sig.forward(batch, np.random.default_rng(0), backend="numpy")
    grads = sig.backward(cache)
    assert losses["loss_objectness"] > 0 and grads["rpn.cls.w"].shape == sig.params[
        "rpn.cls.w"
    ].shape == (9, 8, 1, 1)
