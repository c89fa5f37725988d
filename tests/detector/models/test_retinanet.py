"""RetinaNet: inference against an independent calculation at its exact thresholds, the whole
model's float64 gradient check, training step, checkpoint round trip and the CLI."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import pyramid_config, retina_config, train_forward
from minirccn.config import preset
from minirccn.data.batching import Batch
from minirccn.detector import registry
from minirccn.detector.registry import model_class
from minirccn.detector.models.retinanet import RetinaNet, RetinaNetPostprocess
from minirccn.engine.loop import make_optimizer, train_step
from minirccn.nn.gradcheck import directional_grad_check, numerical_grad, rel_error

# ------------------------------------------------------------------------ an independent inference


def _decode(d, a):
    """torchvision's BoxCoder.decode_single, weights (1, 1, 1, 1), written out per box."""
    w, h = a[2] - a[0], a[3] - a[1]
    cx, cy = a[0] + 0.5 * w, a[1] + 0.5 * h
    clamp = math.log(1000.0 / 16)
    dw, dh = min(d[2], clamp), min(d[3], clamp)
    pcx, pcy = d[0] * w + cx, d[1] * h + cy
    pw, ph = math.exp(dw) * w, math.exp(dh) * h
    return [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def independent_postprocess(scores, deltas, anchors, size, thresh, topk, nms, per_img):
    """Loops over levels, anchors and classes; greedy NMS per class; best first."""
    h, w = size
    cands = []  # (score, level order, box, label)
    for s, d, a in zip(scores, deltas, anchors):
        m, kc = s.shape
        level = [
            (s[i, c], i * kc + c, i, c) for i in range(m) for c in range(kc) if s[i, c] > thresh
        ]
        level.sort(key=lambda t: (-t[0], t[1]))
        for sc, _, i, c in level[:topk]:
            b = _decode(d[i], a[i])
            b = [
                min(max(b[0], 0), w),
                min(max(b[1], 0), h),
                min(max(b[2], 0), w),
                min(max(b[3], 0), h),
            ]
            cands.append((float(sc), len(cands), b, c + 1))
    cands.sort(key=lambda t: (-t[0], t[1]))
    kept = []
    for sc, _, b, lab in cands:
        if all(k[3] != lab or _iou(k[2], b) <= nms for k in kept):
            kept.append((sc, 0, b, lab))
    kept = kept[:per_img]
    return (
        np.array([k[2] for k in kept]).reshape(-1, 4),
        np.array([k[0] for k in kept]),
        np.array([k[3] for k in kept], np.int64),
    )


def test_candidates_at_the_exact_score_threshold_and_topk():
    post = RetinaNetPostprocess(score_thresh=0.05, topk_candidates=3)
    scores = np.array([[0.05, 0.0500001], [0.9, 0.2], [0.049, 0.2], [0.3, 0.05]])
    ai, ci, sc = post.candidates(scores)
    # flat: 0.05 (no: not > 0.05), 0.0500001, 0.9, 0.2, 0.049 (no), 0.2, 0.3, 0.05 (no);
    # top 3: 0.9 (flat 2), 0.3 (flat 6), then 0.2 at flat 3 before the tie at flat 5
    np.testing.assert_array_equal(ai, [1, 3, 1])
    np.testing.assert_array_equal(ci, [0, 0, 1])
    np.testing.assert_array_equal(sc, [0.9, 0.3, 0.2])
    ai, ci, sc = RetinaNetPostprocess(topk_candidates=1000).candidates(scores)
    assert len(sc) == 5 and 0.05 not in sc.tolist()


def test_nms_at_exactly_half_iou_and_class_wise():
    # three boxes of class 1 (zero deltas: the anchors themselves), one of class 2
    anchors = np.array([[0.0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 19], [0, 0, 10, 10]])
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6]])
    det = RetinaNetPostprocess()([scores], [np.zeros((4, 4))], [anchors], (100, 100))
    # box 1 has IoU exactly 0.5 with box 0: kept (suppression needs IoU > 0.5); box 2 has
    # IoU 10/19 > 0.5 with box 0 (and 19/20 with box 1): suppressed; class 2 kept
    np.testing.assert_array_equal(det["labels"], [1, 1, 2])
    np.testing.assert_allclose(det["scores"], [0.9, 0.8, 0.6])
    np.testing.assert_allclose(det["boxes"], anchors[[0, 1, 3]])


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    topk=st.sampled_from([1, 3, 1000]),
    per_img=st.sampled_from([2, 100]),
)
def test_postprocess_matches_independent_calculation(seed, topk, per_img):
    rng = np.random.default_rng(seed)
    levels = [6, 4]
    kc = 3
    anchors = []
    for m in levels:
        xy = rng.uniform(0, 40, (m, 2))
        anchors.append(np.concatenate([xy, xy + rng.uniform(4, 20, (m, 2))], axis=1))
    deltas = [rng.normal(0, 0.3, (m, 4)) for m in levels]
    # scores on a coarse grid: ties, and exact 0.05 values
    scores = [rng.choice([0.01, 0.05, 0.06, 0.3, 0.5, 0.5, 0.9], (m, kc)) for m in levels]
    post = RetinaNetPostprocess(0.05, topk, 0.5, per_img)
    det = post(scores, deltas, anchors, (40, 50))
    boxes, sc, labels = independent_postprocess(
        scores, deltas, anchors, (40, 50), 0.05, topk, 0.5, per_img
    )
    np.testing.assert_allclose(det["boxes"], boxes, atol=1e-9)
    np.testing.assert_array_equal(det["scores"], sc)
    np.testing.assert_array_equal(det["labels"], labels)


def test_detections_per_image_cap():
    m = 150
    anchors = np.stack(
        [np.arange(m) * 20.0, np.zeros(m), np.arange(m) * 20.0 + 10, np.full(m, 10.0)], 1
    )
    scores = np.linspace(0.1, 0.9, m)[:, None]
    det = RetinaNetPostprocess()([scores], [np.zeros((m, 4))], [anchors], (10, 4000))
    assert len(det["scores"]) == 100 and det["scores"][0] == 0.9
    assert np.all(np.diff(det["scores"]) < 0)


# ------------------------------------------------------------------------ the model


def level_anchors(model, levels):
    """Each level's anchors ``(H_l * W_l * A, 4)``, cut from the model's generator."""
    anchors, counts = model.anchor_generator([f.shape[2:] for f in levels])
    bounds = np.cumsum([0] + list(counts))
    return [anchors[s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def _batch(rng):
    images = rng.standard_normal((2, 3, 16, 16))
    targets = [
        {
            "boxes": np.array([[1.0, 2.0, 9.0, 11.0], [6.0, 5.0, 15.0, 12.0]]),
            "labels": np.array([1, 3]),
        },
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)},
    ]
    return images, [(16, 16), (16, 16)], targets


def test_whole_model_gradcheck_float64():
    cfg = retina_config()
    names = ["__background__", "a", "b", "c"]
    model = RetinaNet(cfg, names, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    # larger weights than the 0.01 init so that every layer matters to the loss
    for k, v in model.params.items():
        if k.startswith("head.") and k.endswith(".w"):
            model.params[k] = v * 30
    images, sizes, targets = _batch(rng)
    losses, cache, samples = train_forward(model, images, sizes, targets, None, backend="numpy", batch_stats=False
    )
    assert set(losses) == {"classification", "bbox_regression"}
    assert (samples.labels[0] > 0).sum() >= 2 and set(samples.labels[0][samples.labels[0] > 0]) == {
        1,
        3,
    }
    assert (samples.labels[1] == 0).all()  # the empty image: every anchor background
    grads = model.backward(cache)
    assert set(grads) == set(model.trainable())

    def f():
        out, _, _ = train_forward(model, images, sizes, targets, None, backend="numpy", samples=samples, batch_stats=False
        )
        return sum(out.values())

    for k in ("head.cls.out.b", "head.box.out.b", "head.cls.conv1.b"):
        assert rel_error(grads[k], numerical_grad(f, model.params[k])) < 1e-6, k
    for k in (
        "head.box.conv0.w",
        "head.cls.out.w",
        "backbone.conv1_1.w",
        "backbone.conv2_1.bn.gamma",
    ):
        assert k in model.params, k
        assert directional_grad_check(f, model.params[k], grads[k], rng, n_dirs=3) < 1e-6, k


def test_train_step_checkpoint_and_predict(tmp_path):
    from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint

    cfg = retina_config(dtype="float32")
    names = ["__background__", "a", "b", "c"]
    assert model_class(cfg) is RetinaNet
    model = RetinaNet(cfg, names, rng=np.random.default_rng(0))
    opt = make_optimizer(model)
    rng = np.random.default_rng(2)
    images, sizes, targets = _batch(rng)
    batch = Batch(images.astype(np.float32), sizes, targets)
    before = {k: v.copy() for k, v in model.params.items()}
    out = train_step(model, opt, batch, rng, 150, backend="numpy")
    assert set(out) == {"classification", "bbox_regression", "loss"} and np.isfinite(out["loss"])
    assert not np.array_equal(before["head.cls.out.w"], model.params["head.cls.out.w"])
    save_checkpoint(tmp_path / "c.npz", model)
    loaded, _ = load_checkpoint(tmp_path / "c.npz")
    assert isinstance(loaded, RetinaNet) and loaded.config == cfg
    image = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    a, b = model.predict(image, backend="numpy"), loaded.predict(image, backend="numpy")
    for k in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["boxes"].shape[1] == 4 and len(a["scores"]) <= 100
    if len(a["boxes"]):
        assert a["boxes"][:, 2].max() <= 24 and a["boxes"][:, 3].max() <= 20


def test_detect_equals_postprocess_of_the_head_outputs():
    from minirccn.detector.dense.head import retinanet_head_forward
    from minirccn.nn.losses import sigmoid

    cfg = retina_config(retina_score_thresh=0.0)
    model = RetinaNet(cfg, ["__background__", "a", "b"], rng=np.random.default_rng(3))
    images = np.random.default_rng(4).standard_normal((1, 3, 16, 16))
    det = model.detect(images, [(16, 16)], backend="numpy")[0]
    levels, _ = model.backbone.forward(model.params, images, False, "numpy")
    logits, deltas, _ = retinanet_head_forward(model.params, levels, backend="numpy")
    (anchors,) = level_anchors(model, levels)
    boxes, sc, labels = independent_postprocess(
        [sigmoid(logits[0])], [deltas[0]], [anchors], (16, 16), 0.0, 1000, 0.5, 100
    )
    np.testing.assert_allclose(det["boxes"], boxes, atol=1e-9)
    np.testing.assert_allclose(det["scores"], sc)
    np.testing.assert_array_equal(det["labels"], labels)
    assert len(sc) > 1


def test_cli_train_detect_eval_retinanet(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import minirccn.data as data_module
    import minirccn.app.predict as predict_module
    import minirccn.app.userdata as userdata_module
    from minirccn.app.cli import main
    from minirccn.data import ShapesConfig, load_dataset
    from minirccn.engine.checkpoint import load_checkpoint

    small = ShapesConfig(train_size=4, val_size=2, test_size=2)
    real = data_module.load_dataset

    def load_small(*a, **k):
        return real(*a, **{**k, "shapes_config": small})

    for module in (data_module, userdata_module, predict_module):
        if hasattr(module, "load_dataset"):
            monkeypatch.setattr(module, "load_dataset", load_small)
    out = tmp_path / "run"
    argv = ["train", "--model", "retinanet", "--iters", "1", "--out", str(out), "--no-progress"]
    assert main([*argv, "--eval-split", ""]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final_losses"]) == {"classification", "bbox_regression", "loss"}
    assert metrics["model"] == "retinanet" and metrics["preset"] == "resnet-fpn-tiny"
    ckpt = str(out / "checkpoint.npz")
    model, _ = load_checkpoint(ckpt)
    assert isinstance(model, RetinaNet) and model.config.model == "retinanet"
    img = tmp_path / "x.png"
    Image.fromarray(load_dataset("shapes", "test")[0]["image"]).save(img)
    assert main(["detect", "--checkpoint", ckpt, str(img), "--out", str(tmp_path / "det")]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", ckpt, "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_images"] == 2 and "map50" in result
    argv = ["train", "--model", "retinanet", "--alternating", "--out", str(tmp_path / "r2")]
    assert main(argv) == 2
    assert "--alternating" in capsys.readouterr().err


def test_preflight_knows_the_retinanet_config_and_its_parameters():
    from minirccn.core.errors import MinirccnError
    from minirccn.engine.checkpoint import check_config, param_shapes

    cfg = preset("tiny", model="retinanet")
    check_config(cfg)
    model = RetinaNet(cfg, ["__background__", "a", "b", "c"])
    want = {k: (v.shape, v.dtype) for k, v in model.params.items()}
    assert param_shapes(cfg, 4) == want
    for bad in ({"model": "yolo"}, {"retina_channels": 0}, {"retina_hidden_init": "x"}):
        with pytest.raises(MinirccnError, match=next(iter(bad))):
            check_config(cfg.replace(**bad))


def test_bench_retinanet_cases_run_the_training_step_and_predict():
    from minirccn.app import bench

    cases = {c.name: c for c in bench.detector_cases()}
    case = cases["train step (retinanet resnet-fpn-tiny)"]
    inputs = case.make(np.random.default_rng(0))
    step = case.run("numba", inputs)
    got = [step(), step()]  # the second step's losses show the first step's update
    model = bench._tiny_detector(inputs, "numba")
    assert isinstance(model, RetinaNet)
    cfg = model.config
    assert cfg == preset("resnet-fpn-tiny", model="retinanet") and cfg.clip_grad_norm > 0
    opt = make_optimizer(model)
    batch = model.load_batch(inputs["data"], [inputs["index"]], None, "numba")
    want = [train_step(model, opt, batch, None, cfg.warmup_iters, backend="numba") for _ in range(2)]
    assert set(got[0]) == {"classification", "bbox_regression", "loss"}
    for g, w in zip(got, want):  # the same steps as minirccn train's, clipping included
        assert g == {k: w[k] for k in g}
    det = cases["predict (retinanet resnet-fpn-tiny)"].run("numba", inputs)()
    assert set(det) == {"boxes", "scores", "labels"}


def test_model_retinanet_defaults_to_the_pyramid_preset(capsys):
    from minirccn.app.cli import main

    assert registry.default_preset("retinanet") == "resnet-fpn-tiny"
    assert registry.default_preset("fasterrcnn") == registry.default_preset("rcnn") == "tiny"
    assert main(["config", "show", "--model", "retinanet", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = json.loads(preset("resnet-fpn-tiny", model="retinanet").to_json())
    assert got == want and got["clip_grad_norm"] > 0
    args = ["config", "show", "--model", "retinanet", "--preset", "tiny", "--json"]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got == json.loads(preset("tiny", model="retinanet").to_json())
    assert main(["config", "show", "--json"]) == 0  # Faster R-CNN: unchanged
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got == json.loads(preset("tiny").to_json())


# ------------------------------------------------------------------------ on a feature pyramid


def test_fpn_preset_anchor_sizes_are_torchvisions_octave_scales():
    from minirccn.detector.models.retinanet import level_anchor_sizes

    cfg = preset("resnet-fpn-tiny", model="retinanet")
    # torchvision's retinanet_resnet50_fpn: tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))))
    want = [(x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (16, 32, 64, 128, 256)]
    assert level_anchor_sizes(cfg) == want
    model = RetinaNet(cfg, ["__background__", "a", "b", "c"])
    assert model.anchor_generator.num_anchors == 9  # 3 scales x 3 ratios per cell of every level
    assert model.strides == (4, 8, 16, 32, 64)
    assert model.params["head.cls.conv0.w"].shape[1] == cfg.fpn_channels
    assert model.params["head.cls.out.w"].shape[0] == 9 * 3
    levels, _ = model.backbone.forward(model.params, np.zeros((1, 3, 128, 128), np.float32), False, "numpy")
    anchors = level_anchors(model, levels)
    assert [a.shape[0] for a in anchors] == [32 * 32 * 9, 16 * 16 * 9, 8 * 8 * 9, 4 * 4 * 9, 2 * 2 * 9]
    # level 0, cell (0, 0): ratio 0.5 of size 20 is 28 x 14 (torchvision's rounding), centred at 2
    w = anchors[0][1, 2] - anchors[0][1, 0]
    h = anchors[0][1, 3] - anchors[0][1, 1]
    assert (w, h) == (28.0, 14.0)
    # the single-level preset is unchanged by the scales (default (1.0,))
    tiny = preset("tiny", model="retinanet")
    assert level_anchor_sizes(tiny) == [tuple(tiny.anchor_sizes)]
    assert RetinaNet(tiny, ["__background__", "a"]).anchor_generator.num_anchors == 9


def test_fpn_needs_one_anchor_size_per_level(monkeypatch):
    cfg = pyramid_config(monkeypatch, "retinanet", anchor_sizes=(4, 8, 16))
    with pytest.raises(ValueError, match="anchor_sizes"):
        RetinaNet(cfg, ["__background__", "a"])


def test_fpn_whole_model_gradcheck_float64(monkeypatch):
    cfg = pyramid_config(monkeypatch, "retinanet")
    model = RetinaNet(cfg, ["__background__", "a", "b", "c"], rng=np.random.default_rng(0))
    for k, v in model.params.items():
        if k.startswith("head.") and k.endswith(".w"):
            model.params[k] = v * 30
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 3, 32, 32))
    targets = [
        {"boxes": np.array([[1.0, 2.0, 7.0, 8.0], [4.0, 6.0, 30.0, 28.0]]), "labels": np.array([1, 3])},
        {"boxes": np.array([[10.0, 3.0, 26.0, 17.0]]), "labels": np.array([2])},
    ]
    sizes = [(32, 32), (32, 32)]
    losses, cache, samples = train_forward(model, images, sizes, targets, None, backend="numpy", batch_stats=False
    )
    counts = [a.shape[0] for a in level_anchors(model, model.backbone.forward(model.params, images, False, "numpy")[0])]
    bounds = np.cumsum([0] + counts)
    pos_levels = {int(np.searchsorted(bounds, i, side="right") - 1) for i in np.nonzero(samples.labels[0] > 0)[0]}
    assert len(pos_levels) >= 2  # the small and the large object train different levels
    grads = model.backward(cache)
    assert set(grads) == set(model.trainable())

    def f():
        out, _, _ = train_forward(model, images, sizes, targets, None, backend="numpy", samples=samples, batch_stats=False
        )
        return sum(out.values())

    # the loss sums ~10^4 terms: a step of 1e-5 keeps the round-off of f below the check
    for k in ("head.cls.out.b", "head.box.conv1.b", "backbone.fpn.layer0.b", "backbone.fpn.inner3.b"):
        assert rel_error(grads[k], numerical_grad(f, model.params[k], 1e-5)) < 1e-6, k
    for k in ("head.cls.conv0.w", "backbone.fpn.layer3.w", "backbone.stem.conv.w", "backbone.layer4.0.conv1.w"):
        assert k in model.params, k
        assert directional_grad_check(f, model.params[k], grads[k], rng, n_dirs=3) < 1e-6, k


def test_fpn_detect_equals_independent_postprocess_per_level(monkeypatch):
    from minirccn.detector.dense.head import retinanet_head_forward
    from minirccn.nn.losses import sigmoid

    cfg = pyramid_config(monkeypatch, "retinanet", retina_score_thresh=0.3, retina_topk_candidates=7)
    model = RetinaNet(cfg, ["__background__", "a", "b"], rng=np.random.default_rng(3))
    for k, v in model.params.items():
        if k.startswith("head.") and k.endswith(".w"):
            model.params[k] = v * 300  # scores spread around the threshold
    images = np.random.default_rng(4).standard_normal((1, 3, 32, 32))
    det = model.detect(images, [(32, 32)], backend="numpy")[0]
    levels, _ = model.backbone.forward(model.params, images, False, "numpy")
    logits, deltas, _ = retinanet_head_forward(model.params, levels, backend="numpy")
    anchors = level_anchors(model, levels)
    bounds = np.cumsum([0] + [a.shape[0] for a in anchors])
    scores = sigmoid(logits[0])
    boxes, sc, labels = independent_postprocess(
        [scores[s:e] for s, e in zip(bounds[:-1], bounds[1:])],
        [deltas[0][s:e] for s, e in zip(bounds[:-1], bounds[1:])],
        anchors,
        (32, 32),
        0.3,
        7,
        0.5,
        100,
    )
    np.testing.assert_allclose(det["boxes"], boxes, atol=1e-9)
    np.testing.assert_allclose(det["scores"], sc)
    np.testing.assert_array_equal(det["labels"], labels)
    assert 7 < len(sc)  # more than one level's top-k survived


def test_fpn_preflight_param_shapes_and_checkpoint_round_trip(monkeypatch, tmp_path):
    from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint
    from minirccn.engine.checkpoint import check_config, param_shapes

    cfg = pyramid_config(monkeypatch, "retinanet", dtype="float32")
    check_config(cfg)
    model = RetinaNet(cfg, ["__background__", "a", "b"])
    assert param_shapes(cfg, 3) == {k: (v.shape, v.dtype) for k, v in model.params.items()}
    save_checkpoint(tmp_path / "c.npz", model)
    loaded, _ = load_checkpoint(tmp_path / "c.npz")
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    a, b = model.predict(image, backend="numpy"), loaded.predict(image, backend="numpy")
    for k in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(a[k], b[k])
