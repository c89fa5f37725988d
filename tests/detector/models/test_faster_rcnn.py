"""The whole detector: end-to-end float64 gradient check, edge cases, inference, the VGG16 preset."""

import numpy as np

from helpers import NAMES, check_detector_gradients, small_batch, small_config, train_forward
import pytest

from minirccn.data.batching import clean_targets
from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.backbones.vgg import backbone_forward
from minirccn.config import preset
from minirccn.detector.rpn.head import init_rpn, rpn_forward



def test_end_to_end_gradient_check():
    """d(sum of the four losses)/d(parameters) against central differences, samples held fixed."""
    net = M.FasterRCNN(small_config(), NAMES, rng=np.random.default_rng(0))
    # larger head weights than the 0.01 / 0.001 init, so every path carries a visible gradient
    for k in ("head.cls.w", "head.bbox.w", "rpn.cls.w", "rpn.bbox.w"):
        net.params[k] = net.params[k] * 50
    full = ("backbone.conv1_1.w", "backbone.conv2_1.bn.gamma", "head.fc6.w", "head.cls.w")
    losses, grads = check_detector_gradients(
        net, small_batch(proposals=True), full + ("head.bbox.w", "rpn.conv.w")
    )
    assert all(v > 0 for v in losses.values()), losses
    assert set(grads) == set(net.trainable())


def test_gradient_is_sum_of_both_parts():
    cfg = small_config()
    net = M.FasterRCNN(cfg, NAMES, rng=np.random.default_rng(0))
    images, sizes, targets, _ = small_batch()
    _, cache, samples = train_forward(
        net, images, sizes, targets, np.random.default_rng(1), backend="numpy"
    )
    both = net.backward(cache)
    _, c_rpn, _ = train_forward(
        net, images, sizes, targets, None, backend="numpy", samples=samples, parts=("rpn",)
    )
    _, c_head, _ = train_forward(
        net, images, sizes, targets, None, backend="numpy", samples=samples, parts=("head",)
    )
    g_rpn, g_head = net.backward(c_rpn), net.backward(c_head)
    assert not any(k.startswith("head.") for k in g_rpn)
    assert not any(k.startswith("rpn.") for k in g_head)
    name = "backbone.conv1_1.w"
    np.testing.assert_allclose(both[name], g_rpn[name] + g_head[name], rtol=1e-10, atol=1e-14)
    _, c_frozen, _ = train_forward(
        net, images, sizes, targets, None, backend="numpy", samples=samples, train_backbone=False
    )
    assert not any(k.startswith("backbone.") for k in net.backward(c_frozen))


def test_image_without_ground_truth():
    net = M.FasterRCNN(small_config(dtype="float32"), NAMES, rng=np.random.default_rng(0))
    images, sizes, targets, _ = small_batch(np.float32, empty=True)
    losses, cache, samples = train_forward(
        net, images, sizes, targets, np.random.default_rng(0), backend="numpy"
    )
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0
    assert losses["loss_objectness"] > 0
    assert (samples.rpn_labels == 1).sum() == 0 and (samples.rpn_labels == 0).sum() == 2 * 16
    assert np.all(samples.roi_labels == 0)  # no foreground RoI at all
    grads = net.backward(cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_no_roi_at_all():
    """An image without ground truth and without proposals: zero RoIs, finite losses."""
    net = M.FasterRCNN(small_config(dtype="float32"), NAMES, rng=np.random.default_rng(0))
    images, sizes, targets, _ = small_batch(np.float32, empty=True)
    no_props = [np.zeros((0, 4), np.float32)] * 2
    losses, cache, samples = train_forward(
        net, images, sizes, targets, np.random.default_rng(0), backend="numpy", proposals=no_props
    )
    assert samples.rois.shape == (0, 5)
    assert losses["loss_classifier"] == 0 and losses["loss_box_reg"] == 0
    assert all(np.all(np.isfinite(g)) for g in net.backward(cache).values())


def test_zero_width_ground_truth_is_dropped_with_a_warning():
    boxes = np.array([[1, 1, 1, 5], [2, 2, 6, 6], [3, 4, 9, 4]], np.float32)
    with pytest.warns(UserWarning, match="dropped 2"):
        b, lab = clean_targets(boxes, np.array([1, 2, 1]), where="img7")
    assert b.tolist() == [[2, 2, 6, 6]] and lab.tolist() == [2]


def test_no_proposal_survives_gives_no_detection():
    net = M.FasterRCNN(
        small_config(dtype="float32", rpn_min_size=1e6), NAMES, rng=np.random.default_rng(0)
    )
    image = np.random.default_rng(0).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    det = net.predict(image, backend="numpy")
    assert det["boxes"].shape == (0, 4) and det["boxes"].dtype == np.float32
    assert det["scores"].dtype == np.float32 and det["labels"].dtype == np.int64


def test_predict_maps_boxes_back_to_the_original_image(monkeypatch):
    net = M.FasterRCNN(
        small_config(dtype="float32", min_size=32, max_size=32), NAMES, rng=np.random.default_rng(0)
    )
    seen = {}

    def fake_detect(images, sizes, backend=None, proposals=None):
        seen["shape"] = images.shape
        return [
            {
                "boxes": np.array([[4, 8, 20, 40]], np.float32),
                "scores": np.array([0.9], np.float32),
                "labels": np.array([2]),
            }
        ]

    monkeypatch.setattr(net, "detect", fake_detect)
    det = net.predict(np.zeros((16, 16, 3), np.uint8), backend="numpy")
    assert seen["shape"] == (1, 3, 32, 32)
    np.testing.assert_allclose(det["boxes"], [[2, 4, 10, 16]])  # halved, then clipped to 16
    assert det["labels"].dtype == np.int64


def test_predict_output_contract():
    cfg = small_config(dtype="float32", box_score_thresh=0.0, box_detections_per_img=5)
    net = M.FasterRCNN(cfg, NAMES, rng=np.random.default_rng(0))
    image = np.random.default_rng(0).integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
    det = net.predict(image, backend="numpy")
    d = det["boxes"].shape[0]
    assert 0 < d <= 5
    assert det["scores"].shape == (d,) and np.all(np.diff(det["scores"]) <= 0)
    assert np.all((det["labels"] >= 1) & (det["labels"] <= 2))
    assert np.all(det["boxes"][:, [0, 2]] <= 24) and np.all(det["boxes"][:, [1, 3]] <= 20)
    with pytest.raises(ValueError, match="image"):
        net.predict(np.zeros((16, 16), np.uint8))


def test_same_seed_same_losses_bit_for_bit_and_backends_agree():
    cfg = small_config(dtype="float32")
    images, sizes, targets, _ = small_batch(np.float32)
    runs = []
    for backend in ("numpy", "numpy", "numba"):
        net = M.FasterRCNN(cfg, NAMES, rng=np.random.default_rng(0))
        losses, cache, _ = train_forward(net, images, sizes, targets, np.random.default_rng(1), backend=backend
        )
        runs.append((losses, net.backward(cache)))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert np.array_equal(runs[0][1][k], runs[1][1][k])
    for k, v in runs[0][0].items():
        assert runs[2][0][k] == pytest.approx(v, rel=1e-4, abs=1e-6)
    # the numba backend's gradients, not only its losses, agree with the reference
    assert runs[2][1].keys() == runs[0][1].keys()
    for k, g in runs[0][1].items():
        np.testing.assert_allclose(runs[2][1][k], g, rtol=1e-3, atol=1e-5, err_msg=k)


def test_vgg16_preset_feature_map_and_anchors():
    cfg = preset("vgg16")
    rng = np.random.default_rng(0)
    from minirccn.detector.backbones.vgg import init_backbone

    params = init_backbone("vgg16", rng, np.float32)
    params.update(init_rpn(512, 512, 9, rng, np.float32))
    net = M.FasterRCNN(cfg, NAMES, params=params)
    assert net.anchor_generator.num_anchors == 9
    x = rng.normal(size=(1, 3, 224, 224)).astype(np.float32)
    features, _ = backbone_forward(params, x, backbone_spec(cfg), train=False, backend="numba")
    assert features.shape == (1, 512, 14, 14) and net.backbone.strides == (16,)
    anchors, _ = net.anchor_generator([features.shape[2:]])
    assert anchors.shape == (1764, 4)
    logits, deltas, _ = rpn_forward(params, features, backend="numba")
    assert logits.shape == (1, 1764, 2) and deltas.shape == (1, 1764, 4)
