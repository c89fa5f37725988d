"""The head's pooling chosen by config: RoI max pooling (default) or RoIAlign.

Float64 gradient checks of the head and of the whole detector with RoIAlign, the
config fields and preset, and a RoIAlign checkpoint through ``detect`` / ``eval``.
"""

import json

import numpy as np

import pytest
from PIL import Image

from helpers import NAMES, check_detector_gradients, small_batch, small_config, train_forward
from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint
from minirccn.app.cli import main
from minirccn.config import FasterRCNNConfig, preset
from minirccn.data.shapes import CLASS_NAMES
from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.roi_heads.box_head import head_backward, head_forward, head_losses, init_head
from minirccn.detector.roi_heads.poolers import RoIPooler, SingleLevelPooler
from minirccn.nn.gradcheck import numerical_grad, rel_error
from minirccn.ops.roi_align import RoIAlignCache, roi_align
from minirccn.ops.roi_pool import RoIPoolCache, roi_pool

def test_defaults_and_preset():
    cfg = FasterRCNNConfig()
    assert (cfg.box_roi_pool, cfg.box_roi_pool_sampling_ratio, cfg.box_roi_pool_aligned) == (
        "roi_pool",
        2,
        False,
    )
    assert preset("tiny").box_roi_pool == "roi_pool"
    align = preset("tiny-align")
    assert align == preset("tiny").replace(box_roi_pool="roi_align")
    assert preset("tiny-align", iters=7).iters == 7
    assert RoIPooler.from_config(align) == RoIPooler("roi_align", 7, 2, False)
    assert FasterRCNNConfig.from_json(align.to_json()) == align


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match="box_roi_pool"):
        RoIPooler.from_config(FasterRCNNConfig(box_roi_pool="roi_max"))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_pooler_runs_the_chosen_op(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 9))
    rois = np.array([[0, 3, 5, 30, 28], [1, 0, 0, 35, 31]], np.float64)
    out, cache = RoIPooler("roi_align", 3, 2, True).forward(x, rois, 0.25, backend=backend)
    assert isinstance(cache, RoIAlignCache)
    np.testing.assert_allclose(out, roi_align(x, rois, 3, 0.25, 2, True, backend="numpy"))
    g = RoIPooler.backward(np.ones_like(out), cache)
    assert g.shape == x.shape and g.sum() == pytest.approx(out.size)  # weights sum to 1 inside
    out, cache = RoIPooler("roi_pool", 3).forward(x, rois, 0.25, backend=backend)
    assert isinstance(cache, RoIPoolCache)
    np.testing.assert_array_equal(out, roi_pool(x, rois, 3, 0.25, backend="numpy")[0])


@pytest.mark.parametrize("ratio, aligned", [(2, False), (-1, True)])
def test_head_gradient_check_with_roi_align(ratio, aligned):
    rng = np.random.default_rng(0)
    params = init_head(2, 3, 6, rng, roi_output_size=2, dtype=np.float64)
    params = {k: v + rng.normal(size=v.shape) * 0.3 for k, v in params.items()}
    feats = rng.normal(size=(2, 2, 5, 6))
    rois = np.array(
        [[0, 0, 0, 40, 30], [1, 8, 8, 60, 60], [0, 20, 4, 90, 70], [1, 3, 2, 15, 15]], np.float64
    )
    labels = np.array([1, 2, 0, 1])
    targets = rng.normal(size=(4, 4)) * 0.3
    pooler = RoIPooler("roi_align", 2, ratio, aligned)

    def run():
        return head_forward(params, feats, rois, 1 / 16, backend="numpy", pooler=pooler)

    def loss():
        lg, dl, _ = run()
        a, b, _, _ = head_losses(lg, dl, labels, targets)
        return a + b

    lg, dl, cache = run()
    assert isinstance(cache.pool, RoIAlignCache)
    _, _, dlg, ddl = head_losses(lg, dl, labels, targets)
    dfeats, grads = head_backward(dlg, ddl, cache)
    for name in params:
        assert rel_error(grads[name], numerical_grad(loss, params[name])) < 1e-6, name
    assert rel_error(dfeats, numerical_grad(loss, feats)) < 1e-6
    assert np.count_nonzero(dfeats) > 30  # the bilinear backward reaches many cells


def align_config(**kw):
    """:data:`helpers.SMALL` pooling with RoIAlign (aligned, sampling ratio 2)."""
    return small_config(
        box_roi_pool="roi_align", box_roi_pool_sampling_ratio=2, box_roi_pool_aligned=True, **kw
    )


def test_end_to_end_gradient_check_with_roi_align():
    """d(sum of the four losses)/d(parameters) against central differences, samples held fixed."""
    net = M.FasterRCNN(align_config(), NAMES, rng=np.random.default_rng(0))
    assert isinstance(net.pooler, SingleLevelPooler) and net.pooler.pooler.aligned
    for k in ("head.cls.w", "head.bbox.w", "rpn.cls.w", "rpn.bbox.w"):
        net.params[k] = net.params[k] * 50
    batch = small_batch(proposals=True)
    batch.proposals[0][1, 0], batch.proposals[1][0, 3] = 5.5, 12.5  # off the cell grid
    losses, _ = check_detector_gradients(net, batch, ("backbone.conv2_1.w", "head.fc6.w"))
    assert all(v > 0 for v in losses.values()), losses


def test_numba_training_step_matches_numpy_with_roi_align():
    cfg = align_config(dtype="float32")
    cfg = cfg.replace(box_roi_pool_aligned=False)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    targets = [{"boxes": np.array([[1, 2, 9, 8]], np.float32), "labels": np.array([1])}]
    runs = []
    for backend in ("numpy", "numba"):
        net = M.FasterRCNN(cfg, NAMES, rng=np.random.default_rng(0))
        losses, cache, _ = train_forward(net, images, [(16, 16)], targets, np.random.default_rng(1), backend=backend
        )
        runs.append((losses, net.backward(cache)))
    for k, v in runs[0][0].items():
        assert runs[1][0][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    for k, g in runs[0][1].items():
        np.testing.assert_allclose(runs[1][1][k], g, rtol=1e-3, atol=1e-5, err_msg=k)


def test_roi_align_checkpoint_detect_and_eval(tmp_path, capsys):
    cfg = preset(
        "tiny-align",
        backbone_stages=((4, 1, True), (8, 1, True)),
        min_size=64,
        max_size=64,
        rpn_channels=8,
        representation_size=16,
        roi_output_size=3,
        box_roi_pool_aligned=True,
        box_score_thresh=0.0,
    )
    net = M.FasterRCNN(cfg, CLASS_NAMES, rng=np.random.default_rng(0))
    for k in ("head.cls.w", "head.bbox.w"):
        net.params[k] = net.params[k] * 100  # spread the scores: some detections survive
    path = save_checkpoint(tmp_path / "align.npz", net)
    loaded, _ = load_checkpoint(path)
    assert loaded.pooler.pooler == RoIPooler("roi_align", 3, 2, True)
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    want = net.predict(image, backend="numba")
    got = loaded.predict(image, backend="numba")
    assert len(want["boxes"]) > 0
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    Image.fromarray(image).save(tmp_path / "img.png")
    out = tmp_path / "det"
    assert main(["detect", "--checkpoint", path, str(tmp_path / "img.png"), "--out", str(out)]) == 0
    assert (out / "img.png").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", path, "--limit", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["map50"] <= 1.0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"box_roi_pool": "roi_max"}, "box_roi_pool must be one of roi_pool, roi_align"),
        ({"box_roi_pool_sampling_ratio": 1.5}, "box_roi_pool_sampling_ratio must be an integer"),
        ({"box_roi_pool_sampling_ratio": 65}, "box_roi_pool_sampling_ratio must be in"),
        ({"box_roi_pool_aligned": "yes"}, "box_roi_pool_aligned must be true or false"),
    ],
)
def test_preflight_names_bad_pooling_fields(change, match):
    from minirccn.engine import checkpoint as preflight
    from minirccn.core.errors import MinirccnError

    preflight.check_config(preset("tiny-align"))
    with pytest.raises(MinirccnError, match=f"^here: {match}"):
        preflight.check_config(preset("tiny").replace(**change), "here")
