"""R-CNN and Fast R-CNN on external proposals: crops, gradients, inference against per-RoI
computations, batches, training, checkpoints and the CLI."""

import argparse
import json

import numpy as np
import pytest

from minirccn.app import train as cmd
from minirccn.engine import loop as T
from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint
from minirccn.app.cli import main
from minirccn.config import preset
from minirccn.data import load_dataset
from helpers import NAMES, SHAPES, check_detector_gradients, small_batch, small_config, tiny_config
from minirccn.data import augment
from minirccn.data.batching import batch_indices, load_batch
from minirccn.detector.models.external import scale_proposals
from minirccn.detector.models.fast_rcnn import FastRCNN
from minirccn.detector.models.rcnn import RCNN, classifier_forward, context_boxes, warp_crops
from minirccn.detector.registry import build_model, uses_external_proposals
from minirccn.detector.roi_heads.box_head import head_forward
from minirccn.detector.roi_heads.postprocess import BoxPostprocess
from minirccn.core.errors import MinirccnError


@pytest.fixture(autouse=True)
def proposal_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRCCN_CACHE", str(tmp_path / "cache"))


def proposal_file(tmp_path, boxes_by_id, name="proposals.json"):
    path = tmp_path / name
    path.write_text(json.dumps({k: np.asarray(v).tolist() for k, v in boxes_by_id.items()}))
    return str(path)


def external_config(tmp_path, model, **kw):
    """:data:`helpers.SMALL` with external proposals from a file (``model``: fastrcnn / rcnn)."""
    path = proposal_file(tmp_path, {"x": [[0, 0, 4, 4]]}, "default.json")
    return small_config(model=model, **{"proposals": path, **kw})


# ----------------------------------------------------------------------------- crops


def bilinear_zero_outside(img, y, x):
    """An independent bilinear sample: pixels outside the image are 0."""
    c, h, w = img.shape

    def pix(yy, xx):
        return img[:, yy, xx] if 0 <= yy < h and 0 <= xx < w else np.zeros(c)

    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0
    return (
        pix(y0, x0) * (1 - ly) * (1 - lx)
        + pix(y0, x0 + 1) * (1 - ly) * lx
        + pix(y0 + 1, x0) * ly * (1 - lx)
        + pix(y0 + 1, x0 + 1) * ly * lx
    )


def test_warp_crops_against_a_loop():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 7, 9))
    boxes = np.array(
        [[1.0, 1.0, 6.0, 5.0], [-4.0, -3.0, 3.5, 2.0], [5.0, 4.0, 12.0, 11.0], [2.0, 2.0, 2.0, 6.0]]
    )
    s = 5
    got = warp_crops(img, boxes, s)
    assert got.shape == (4, 3, s, s) and got.dtype == img.dtype
    for r, (x1, y1, x2, y2) in enumerate(boxes):
        for i in range(s):
            for j in range(s):
                y = y1 + (i + 0.5) * (y2 - y1) / s - 0.5
                x = x1 + (j + 0.5) * (x2 - x1) / s - 0.5
                np.testing.assert_allclose(
                    got[r, :, i, j], bilinear_zero_outside(img, y, x), atol=1e-12
                )


def test_warp_of_the_whole_image_at_its_size_is_the_image():
    img = np.random.default_rng(1).normal(size=(3, 6, 6))
    np.testing.assert_array_equal(warp_crops(img, np.array([[0.0, 0, 6, 6]]), 6)[0], img)
    # far outside: all zero (the mean colour)
    assert (warp_crops(img, np.array([[20.0, 20, 30, 30]]), 4) == 0).all()


def test_context_boxes_leave_p_warped_pixels_around_the_box():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(context_boxes(boxes, 32, 0.0), boxes)
    big = context_boxes(boxes, 32, 16.0)
    p = 16.0 * 32 / 227
    # where the original box's left / top edge falls in the 32-pixel crop
    np.testing.assert_allclose((boxes[0, 0] - big[0, 0]) / (big[0, 2] - big[0, 0]) * 32, p)
    np.testing.assert_allclose((big[0, 3] - boxes[0, 3]) / (big[0, 3] - big[0, 1]) * 32, p)
    np.testing.assert_allclose((big[:, :2] + big[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    with pytest.raises(ValueError, match="context_padding"):
        context_boxes(boxes, 8, 200.0)


# ----------------------------------------------------------------------------- gradients


def test_fast_rcnn_gradient_check(tmp_path):
    net = FastRCNN(external_config(tmp_path, "fastrcnn"), NAMES, rng=np.random.default_rng(0))
    for k in ("head.cls.w", "head.bbox.w"):
        net.params[k] = net.params[k] * 50
    full = ("backbone.conv1_1.w", "head.fc6.w", "head.bbox.w")
    losses, grads = check_detector_gradients(net, small_batch(proposals=True), full)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(
        v > 0 for v in losses.values()
    )
    assert set(grads) == set(net.trainable()) and not any(k.startswith("rpn.") for k in net.params)


def test_rcnn_gradient_check(tmp_path):
    net = RCNN(external_config(tmp_path, "rcnn"), NAMES, rng=np.random.default_rng(0))
    assert net.map_size == 2 and net.params["head.fc6.w"].shape == (6 * 2 * 2, 7)
    for k in ("head.cls.w", "head.bbox.w"):
        net.params[k] = net.params[k] * 50
    full = ("backbone.conv2_1.w", "head.fc6.w", "head.cls.w")
    losses, grads = check_detector_gradients(net, small_batch(proposals=True), full)
    assert all(v > 0 for v in losses.values()), losses
    assert set(grads) == set(net.trainable())


def test_rcnn_without_any_roi(tmp_path):
    net = RCNN(external_config(tmp_path, "rcnn"), NAMES, rng=np.random.default_rng(0))
    batch = small_batch(empty=True)._replace(proposals=[np.zeros((0, 4))] * 2)
    losses, cache = net.forward(batch, np.random.default_rng(0))
    assert losses == {"loss_classifier": 0.0, "loss_box_reg": 0.0} and net.backward(cache) == {}


# ----------------------------------------------------------------------------- inference


def test_fast_rcnn_detect_equals_the_head_on_each_roi_alone(tmp_path):
    net = FastRCNN(
        external_config(tmp_path, "fastrcnn", box_score_thresh=0.0),
        NAMES,
        rng=np.random.default_rng(3),
    )
    net.params["head.cls.w"] = net.params["head.cls.w"] * 300
    x = np.random.default_rng(4).normal(size=(3, 16, 16))
    props = np.array([[0.0, 0, 10, 9], [5, 5, 16, 15], [2, 1, 8, 9], [0, 0, 16, 16]])
    got = net.detect(x[None], [(16, 16)], "numpy", proposals=[props])[0]
    (feats,), _ = net.backbone.forward(net.params, x[None], False, "numpy")
    (stride,) = net.backbone.strides
    rows = [
        head_forward(
            net.params, feats, np.array([[0.0, *b]]), 1 / stride, output_size=2, backend="numpy"
        )
        for b in props
    ]
    logits = np.concatenate([r[0] for r in rows])
    deltas = np.concatenate([r[1] for r in rows])
    post = BoxPostprocess.from_config(net.config)
    want = post(logits, deltas, props, (16, 16), backend="numpy")
    assert len(want["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12)


def test_rcnn_detect_equals_one_crop_at_a_time(tmp_path, monkeypatch):
    net = RCNN(
        external_config(tmp_path, "rcnn", box_score_thresh=0.0), NAMES, rng=np.random.default_rng(3)
    )
    net.params["head.cls.w"] = net.params["head.cls.w"] * 300
    monkeypatch.setattr(RCNN, "CHUNK", 2)  # three chunks of the five proposals
    x = np.random.default_rng(4).normal(size=(3, 16, 16))
    props = np.array([[0.0, 0, 10, 9], [5, 5, 16, 15], [2, 1, 8, 9], [0, 0, 16, 16], [3, 4, 5, 12]])
    got = net.detect(x[None], [(16, 16)], "numpy", proposals=[props])[0]
    logits, deltas = [], []
    for b in props:
        crop = warp_crops(x, context_boxes(b[None], 8, 16.0), 8)
        (feats,), _ = net.backbone.forward(net.params, crop, False, "numpy")
        lg, dl, _ = classifier_forward(net.params, feats, backend="numpy")
        logits.append(lg)
        deltas.append(dl)
    want = BoxPostprocess.from_config(net.config)(
        np.concatenate(logits), np.concatenate(deltas), props, (16, 16), backend="numpy"
    )
    assert len(want["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-10)


def test_predict_scales_proposals_in_and_detections_out(tmp_path, monkeypatch):
    path = proposal_file(tmp_path, {"im": [[4, 8, 20, 40], [0, 0, 64, 64], [10, 10, 70, 30]]})
    cfg = external_config(tmp_path, "fastrcnn", proposals=path, min_size=32, max_size=32, dtype="float32"
    )
    net = FastRCNN(cfg, NAMES, rng=np.random.default_rng(0))
    seen = {}

    def fake_detect(images, sizes, backend=None, proposals=None):
        (props,) = proposals
        seen["x"], seen["props"] = images.shape[1:], props.copy()
        return [
            {
                "boxes": props,
                "scores": np.ones(len(props), np.float32),
                "labels": np.ones(len(props), np.int64),
            }
        ]

    monkeypatch.setattr(net, "detect", fake_detect)
    image = np.zeros((64, 64, 3), np.uint8)
    out = net.predict(image, image_id="im")
    assert seen["x"] == (3, 32, 32)
    assert seen["props"].tolist() == [
        [2, 4, 10, 20],
        [0, 0, 32, 32],
        [5, 5, 32, 15],
    ]  # halved, clipped
    assert out["boxes"].tolist() == [[4, 8, 20, 40], [0, 0, 64, 64], [10, 10, 64, 30]]
    assert scale_proposals(np.array([[1.0, 1, 3, 3]]), (4, 8), (8, 4)).tolist() == [
        [0.5, 2, 1.5, 6]
    ]
    with pytest.raises(MinirccnError, match="no proposals for image"):
        FastRCNN(cfg, NAMES).predict(image, image_id="other")


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", "train", shapes_config=SHAPES), load_dataset(
        "shapes", "test", shapes_config=SHAPES
    )


def small(model, **kw):
    """:func:`helpers.tiny_config` for ``model``, with 16-pixel crops and 30 proposals."""
    return tiny_config(model=model, **{"rcnn_crop_size": 16, "max_proposals": 30, **kw})


def test_batch_with_proposals_is_load_batch_plus_flipped_boxes(data):
    cfg = small("fastrcnn")
    net = build_model(cfg, data[0].class_names)
    assert uses_external_proposals(cfg) and not uses_external_proposals(preset("tiny"))
    for seed in range(4):
        a = load_batch(data[0], [0, 1], cfg, np.random.default_rng(seed), "numpy", 8)
        got = net.load_batch(data[0], [0, 1], np.random.default_rng(seed), "numpy")
        np.testing.assert_array_equal(a.images, got.images)
        assert a.image_sizes == got.image_sizes and a.proposals is None
        flips = np.random.default_rng(seed).random(2) < 0.5
        for n, i in enumerate([0, 1]):
            np.testing.assert_array_equal(a.targets[n]["boxes"], got.targets[n]["boxes"])
            raw = net.source(data[0][i]["image"], data[0][i]["image_id"])
            if flips[n]:
                raw = np.stack([64 - raw[:, 2], raw[:, 1], 64 - raw[:, 0], raw[:, 3]], 1)
            np.testing.assert_array_equal(got.proposals[n], raw)


def test_proposals_follow_the_augmentations_of_their_image(data):
    """With own-data augmentations on (vertical flips, 90-degree turns, scale jitter), an
    external-proposal batch transforms each image's proposals exactly as its ground truth: a
    proposal equal to a ground-truth box stays equal to it (the augmentations used to be
    skipped for R-CNN and Fast R-CNN)."""
    cfg = small("fastrcnn", vflip=True, rot90=True, scale_jitter=(0.8, 1.25))
    assert augment.enabled(cfg)
    net = build_model(cfg, data[0].class_names)
    net.source = _GroundTruthSource(data[0])
    plain = load_batch(data[0], [0, 1, 2], cfg, None, "numpy", 8)
    changed = 0
    for seed in range(6):
        got = net.load_batch(data[0], [0, 1, 2], np.random.default_rng(seed), "numpy")
        want = load_batch(data[0], [0, 1, 2], cfg, np.random.default_rng(seed), "numpy", 8)
        np.testing.assert_array_equal(got.images, want.images)  # the same draws as without
        for n in range(3):
            gt = got.targets[n]["boxes"]
            np.testing.assert_array_equal(gt, want.targets[n]["boxes"])
            # every surviving ground-truth box has its twin among the proposals
            for box in gt:
                assert np.any(np.all(np.abs(got.proposals[n] - box) < 1e-4, axis=1)), box
            changed += not np.array_equal(gt, plain.targets[n]["boxes"])
    assert changed > 0  # the augmentations did move boxes


class _GroundTruthSource:
    """A proposal source whose proposals are each image's own ground-truth boxes."""

    def __init__(self, dataset):
        self.by_id = {dataset[i]["image_id"]: dataset[i]["boxes"] for i in range(len(dataset))}

    def __call__(self, image, image_id):
        return np.asarray(self.by_id[image_id], np.float32)


@pytest.mark.parametrize("model", ["fastrcnn", "rcnn"])
def test_train_evaluate_checkpoint_resume(model, data, tmp_path):
    cfg = small(model)
    run = dict(train_data=data[0], test_data=data[1], backend="numba", progress=False)
    out = tmp_path / "a"
    result = T.train(cfg, out=str(out), iters=4, **run)
    m = result["metrics"]
    assert m["model"] == model and m["proposals"]["source"] == "selective-search" and "map50" in m
    assert set(m["final_losses"]) == {"loss_classifier", "loss_box_reg", "loss"}
    assert m["final_losses"]["loss_classifier"] > 0
    loaded, _ = load_checkpoint(str(out / "checkpoint.npz"))
    assert type(loaded) is type(result["model"]) and loaded.source.record() == m["proposals"]
    image = data[1][0]["image"]
    a, b = result["model"].predict(image, backend="numba"), loaded.predict(image, backend="numba")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # 2 steps + resume + 2 steps == 4 steps, bit for bit
    half = tmp_path / "b"
    T.train(cfg, out=str(half), iters=2, eval_split="", outputs=False, **run)
    resumed = T.train(cfg, out=str(half), iters=4, resume=True, eval_split="", outputs=False, **run)
    for k, v in result["model"].params.items():
        np.testing.assert_array_equal(v, resumed["model"].params[k])
    with pytest.raises(MinirccnError, match="--alternating"):
        T.train(cfg, out=str(tmp_path / "c"), iters=4, alternating=True, **run)


def test_a_checkpoint_whose_proposal_file_is_gone(tmp_path):
    path = proposal_file(tmp_path, {"x": [[0, 0, 2, 2]]})
    cfg = external_config(tmp_path, "fastrcnn", proposals=path)
    ckpt = save_checkpoint(str(tmp_path / "c.npz"), FastRCNN(cfg, NAMES))
    (tmp_path / "proposals.json").unlink()
    with pytest.raises(MinirccnError, match="proposals.json: proposal file not found"):
        load_checkpoint(ckpt)


def test_cli_file_proposals_rcnn_and_detect(tmp_path, capsys):
    train, test = load_dataset("shapes", "train"), load_dataset("shapes", "test")
    ids = {}
    for ds, idx in (
        (train, batch_indices(0, 0, 1, len(train)) + batch_indices(0, 1, 1, len(train))),
        (test, range(8)),
    ):  # eval 2, pictures of 8
        for i in idx:
            s = ds[i]
            ids[s["image_id"]] = np.concatenate([s["boxes"] + 1, [[0, 0, 128, 128]]])
    ids["img0"] = [[0, 0, 50, 50]]
    path = proposal_file(tmp_path, ids)
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--iters", "2", "--eval-images", "2", "--no-progress"]
    assert main([*args, "--proposals", path, "--max-proposals", "5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["proposals"] == {
        "source": path,
        "max_proposals": 5,
    }
    from PIL import Image

    Image.fromarray(test[0]["image"]).save(tmp_path / "img0.png")
    assert (
        main(
            [
                "detect",
                "--checkpoint",
                str(out / "checkpoint.npz"),
                str(tmp_path / "img0.png"),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    flags = dict(model=None, proposals=None, max_proposals=None, selective_search_mode=None)
    args = argparse.Namespace(**{**flags, "model": "rcnn", "max_proposals": 9})
    cfg = cmd.lineage_config(preset("tiny", model=cmd.chosen_model(args)), args)
    assert (cfg.model, cfg.proposals, cfg.max_proposals) == ("rcnn", "selective-search", 9)
    assert cmd.chosen_model(argparse.Namespace(**{**flags, "proposals": "x.json"})) == "fastrcnn"
    assert cmd.chosen_model(argparse.Namespace(**flags)) == "fasterrcnn"
    assert cmd.lineage_config(preset("tiny"), argparse.Namespace(**flags)) == preset("tiny")
    bad = [
        (["--proposals", str(tmp_path / "missing.json")], "--proposals"),
        (["--model", "fasterrcnn", "--proposals", "selective-search"], "--proposals: only for"),
        (["--model", "rcnn", "--max-proposals", "0"], "--max-proposals"),
        (["--selective-search-mode", "quality"], "--selective-search-mode: only for"),
    ]
    for extra, message in bad:
        assert main(["train", "--out", str(tmp_path / "x"), "--iters", "1", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
