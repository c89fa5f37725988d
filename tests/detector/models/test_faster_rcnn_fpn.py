"""The FPN detector: multi-scale RoIAlign (routing, gradients), the end-to-end float64
gradient check, inference."""

import numpy as np
import pytest
from helpers import NAMES, check_detector_gradients, pyramid_config, train_forward

from minirccn import ops
from minirccn.config import preset
from minirccn.data.batching import Batch
from minirccn.detector.backbones import resnet
from minirccn.detector.backbones.levels import Pyramid
from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.roi_heads.poolers import MultiScaleRoIAlign
from minirccn.detector.rpn.proposal_layer import level_ids
from minirccn.nn.gradcheck import check_layer


@pytest.fixture
def tiny_fpn(monkeypatch):
    """:func:`helpers.pyramid_config`: a 32x32-input FPN detector small enough for finite
    differences."""
    return pyramid_config(monkeypatch)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 3, 32, 32))
    targets = [
        {"boxes": np.array([[1, 2, 9, 8], [6, 6, 30, 28]], float), "labels": np.array([1, 2])},
        {"boxes": np.array([[3, 3, 20, 17]], float), "labels": np.array([2])},
    ]
    return images, [(32, 32), (32, 32)], targets


# ------------------------------------------------------------------------ multi-scale pooling


def test_multiscale_roi_align_pools_each_roi_from_its_level_and_routes_gradients():
    rng = np.random.default_rng(0)
    maps = [rng.standard_normal((2, 3, 32 // s, 32 // s)) for s in (4, 8, 16)]
    pooler = MultiScaleRoIAlign((4, 8, 16), output_size=2, sampling_ratio=2, canonical_scale=16)
    # sqrt(area) 4 -> k = 2 (P2), 8 -> 3, 16 -> 4, 32 -> 5 -> clamped to 4, 7.9 -> 2
    rois = np.array(
        [
            [0, 2, 2, 6, 6],
            [1, 0, 4, 8, 12],
            [0, 10, 12, 26, 28],
            [1, 0, 0, 32, 32],
            [1, 3, 3, 10.9, 10.9],
        ],
        float,
    )
    out, cache = pooler.forward(maps, rois, backend="numpy")
    assert cache.levels.tolist() == [0, 1, 2, 2, 0]
    for r, lv in enumerate(cache.levels):  # independently: the op on that level alone
        ref = ops.roi_align(
            maps[lv], rois[r : r + 1], 2, 1 / (4, 8, 16)[lv], sampling_ratio=2, backend="numpy"
        )
        np.testing.assert_allclose(out[r : r + 1], ref, rtol=1e-12)
    dmaps = pooler.backward(np.ones_like(out), cache, backend="numpy")
    assert [d.shape for d in dmaps] == [m.shape for m in maps]
    # level 1 received only RoI 1 (image 1): image 0 of that level gets no gradient
    assert not dmaps[1][0].any() and dmaps[1][1].any()
    # the gradient of a mean pooling of ones sums to the number of pooled values
    assert [round(float(d.sum()), 9) for d in dmaps] == [2 * 12.0, 12.0, 2 * 12.0]

    def fwd(*ms):
        return pooler.forward(list(ms), rois, backend="numpy")

    def bwd(d, c):
        return tuple(pooler.backward(d, c, backend="numpy"))

    assert check_layer(fwd, bwd, maps) < 1e-9
    for be in ("numba",):
        out2, c2 = pooler.forward(maps, rois, backend=be)
        np.testing.assert_allclose(out2, out, rtol=1e-12, atol=1e-14)
        for a, b in zip(pooler.backward(np.ones_like(out), c2, backend=be), dmaps):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------ the detector


def test_fpn_parameters_and_levels(tiny_fpn):
    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    assert net.backbone.strides == (2, 4, 8, 16, 32) and net.pooler.strides == (2, 4, 8, 16)
    p = net.params
    assert p["rpn.cls.w"].shape == (2 * 2, 3, 1, 1)  # A = 2 ratios, one size per level
    assert p["backbone.fpn.inner3.w"].shape == (3, 4, 1, 1)
    assert p["head.fc6.w"].shape == (3 * 2 * 2, 5)
    assert net.anchor_generator.num_anchors == 2
    with pytest.raises(ValueError, match="one anchor size per level"):
        Pyramid(tiny_fpn.replace(anchor_sizes=(4, 8)))
    with pytest.raises(ValueError, match="ResNet"):
        Pyramid(tiny_fpn.replace(backbone="tiny"))


def test_fpn_end_to_end_gradient_check(tiny_fpn):
    """d(sum of the four losses)/d(every parameter) against central differences, samples
    held fixed; RoIs on every level of P2..P5."""
    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    for k in ("head.cls.w", "head.bbox.w", "rpn.cls.w", "rpn.bbox.w"):
        net.params[k] = net.params[k] * 50
    images, sizes, targets = _batch()
    proposals = [
        np.array(
            [[0, 0, 4, 4], [2, 2, 10, 10], [4, 4, 20, 20], [0, 0, 32, 32], [5, 6, 30, 27]], float
        ),
        np.array([[2, 2, 13, 12], [0, 0, 16, 16], [3, 4, 7, 9]], float),
    ]
    full = ("backbone.stem.conv.w", "backbone.fpn.layer1.w", "backbone.fpn.inner3.w")
    batch = Batch(images, sizes, targets, proposals)
    losses, grads = check_detector_gradients(
        net, batch, full + ("rpn.conv.w", "head.fc6.w"), directions=1
    )
    assert all(v > 0 for v in losses.values()), losses
    assert set(grads) == set(net.trainable())
    _, cache, _ = train_forward(
        net, images, sizes, targets, np.random.default_rng(1), backend="numpy", proposals=proposals
    )
    assert set(cache.pool.levels.tolist()) == {0, 1, 2, 3}  # every pooled level is exercised


def test_each_level_gets_its_own_gradient(tiny_fpn):
    """Head only, every RoI (proposals and ground truth, sqrt(area) in [8, 16)) on the
    stride-4 level: of the output convs only that level's gets a gradient; of the laterals,
    that level's and the coarser ones (they reach it through the top-down sums), not the
    finer one. The RPN alone gives every level's output conv a gradient (one shared head)."""
    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    images, sizes, _ = _batch()
    targets = [
        {"boxes": np.array([[2, 2, 12, 12]], float), "labels": np.array([1])},
        {"boxes": np.array([[4, 4, 16, 14]], float), "labels": np.array([2])},
    ]
    props = [np.array([[0, 0, 8, 8], [4, 4, 12, 12]], float), np.array([[8, 8, 16, 16]], float)]
    _, cache, _ = train_forward(net,
        images,
        sizes,
        targets,
        np.random.default_rng(1),
        backend="numpy",
        proposals=props,
        parts=("head",),
    )
    assert set(cache.pool.levels.tolist()) == {1}
    g = net.backward(cache)
    used = {i: bool(np.abs(g[f"backbone.fpn.layer{i}.w"]).max() > 0) for i in range(4)}
    assert used == {0: False, 1: True, 2: False, 3: False}
    lateral = {i: bool(np.abs(g[f"backbone.fpn.inner{i}.w"]).max() > 0) for i in range(4)}
    assert lateral == {0: False, 1: True, 2: True, 3: True}
    assert not any(k.startswith("rpn.") for k in g)
    _, cache, samples = train_forward(
        net, images, sizes, targets, np.random.default_rng(1), backend="numpy", parts=("rpn",)
    )
    g = net.backward(cache)
    # the levels whose anchors were sampled (the pool level is a view of the stride-16 map)
    counts = cache.rpn.counts
    sampled = set(level_ids(counts)[(samples.rpn_labels >= 0).any(axis=0)].tolist())
    sampled = {min(lv, 3) for lv in sampled}
    assert len(sampled) >= 3
    used = {i for i in range(4) if np.abs(g[f"backbone.fpn.layer{i}.w"]).max() > 0}
    assert used == sampled
    assert not any(k.startswith("head.") for k in g)


def test_fpn_inference_and_backends(tiny_fpn):
    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    net.params["head.cls.w"] = net.params["head.cls.w"] * 300  # confident enough to keep boxes
    images, sizes, _ = _batch()
    dets = net.detect(images, sizes, backend="numpy")
    assert len(dets) == 2 and len(dets[0]["boxes"]) > 0
    for d in dets:
        b = d["boxes"]
        assert np.all((b >= 0) & (b <= 32)) and np.all(np.diff(d["scores"]) <= 1e-12)
        assert set(d["labels"].tolist()) <= {1, 2}
    alone = net.detect(images[1:], sizes[1:], backend="numpy")[0]
    np.testing.assert_allclose(alone["boxes"], dets[1]["boxes"], rtol=1e-10, atol=1e-10)
    numba = net.detect(images, sizes, backend="numba")
    for a, b in zip(dets, numba):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-9, atol=1e-9)
    _, props = net.rpn_proposals(images, sizes, backend="numpy")
    props = [b for b, _ in props]
    assert len(props) == 2 and all(len(p) <= 10 for p in props)


def test_fpn_checkpoint_round_trip(tiny_fpn, tmp_path):
    """The checkpoint stores the config: a loaded FPN model predicts the same boxes."""
    from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint

    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    net.params["head.cls.w"] = net.params["head.cls.w"] * 300
    path = save_checkpoint(tmp_path / "fpn.npz", net, step=3)
    loaded, state = load_checkpoint(path)
    assert loaded.config == tiny_fpn and state["step"] == 3 and isinstance(loaded.backbone, Pyramid)
    image = (np.random.default_rng(4).random((32, 32, 3)) * 255).astype(np.uint8)
    a, b = net.predict(image, backend="numpy"), loaded.predict(image, backend="numpy")
    assert len(a["boxes"]) > 0
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize("top_n", [3, 15])
def test_lineage_proposals_honour_top_n_on_a_pyramid(tiny_fpn, top_n):
    """The lineage's RPN proposals at a requested top-n, on an FPN model: the layer it asks for
    is the one used (it used to set a single-level attribute that a pyramid model ignored, so
    the model's own rpn_post_nms_top_n_test, 10, applied instead)."""
    from minirccn.app.lineage import rpn_proposals

    net = M.FasterRCNN(tiny_fpn, NAMES, rng=np.random.default_rng(0))
    image = (np.random.default_rng(5).random((32, 32, 3)) * 255).astype(np.uint8)
    assert tiny_fpn.rpn_post_nms_top_n_test == 10
    boxes = rpn_proposals(net, image, top_n, "numpy")
    x, _ = net.preprocess(image)
    _, ref = net.rpn_proposals(x[None], [x.shape[1:]], backend="numpy")
    assert len(ref[0][0]) == 10  # the model's own number
    assert len(boxes) == top_n  # the lineage's: fewer, or more, than the model's own
    assert net.test_proposals.post_nms_top_n == 10  # the model is left as it was
