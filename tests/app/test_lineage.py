"""``minirccn lineage``: proposal recall against a loop, and one tiny end-to-end run."""

import json

import numpy as np
import pytest

from minirccn.app import lineage as L
from minirccn.app.cli import main
from minirccn.config import preset
from minirccn.data import ShapesConfig, load_dataset
from minirccn.core.errors import MinirccnError
from minirccn.ops import box_iou


def test_recall_against_a_loop_and_at_the_thresholds():
    gt = [
        np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        np.zeros((0, 4)),
        np.array([[5.0, 5, 9, 9]]),
    ]
    props = [
        # IoU exactly 0.5 with the first box, then 0.7 exactly (70 of 100 px), then the second
        np.array([[0.0, 0, 10, 5], [0, 0, 10, 7], [20, 20, 30, 30]]),
        np.array([[0.0, 0, 1, 1]]),
        np.zeros((0, 4)),
    ]
    r = L.proposal_recall(props, gt, counts=(1, 2, 3, 10), thresholds=(0.5, 0.7))
    np.testing.assert_allclose(r, [[1 / 3, 1 / 3, 2 / 3, 2 / 3], [0, 1 / 3, 2 / 3, 2 / 3]])
    rng = np.random.default_rng(0)
    props, gt = [], []
    for _ in range(5):
        xy = rng.uniform(0, 50, size=(30, 2))
        props.append(np.concatenate([xy, xy + rng.uniform(1, 30, size=(30, 2))], 1))
        xy = rng.uniform(0, 50, size=(3, 2))
        gt.append(np.concatenate([xy, xy + rng.uniform(1, 30, size=(3, 2))], 1))
    counts, thresholds = (1, 5, 30), (0.3, 0.5)
    want = np.zeros((2, 3))
    for p, g in zip(props, gt):
        for c, n in enumerate(counts):
            for t, thr in enumerate(thresholds):
                for box in g:
                    want[t, c] += max(box_iou(box[None], p[:n], backend="numpy")[0]) >= thr
    np.testing.assert_allclose(L.proposal_recall(props, gt, counts, thresholds), want / 15)


def test_scaled_config():
    cfg = L.scaled_config("rcnn", 500, max_proposals=7)
    assert (cfg.model, cfg.iters, cfg.max_proposals) == ("rcnn", 500, 7)
    assert cfg.milestones == (400,) and cfg.bn_freeze_iter == 300 and cfg.warmup_iters == 20


SHAPES = ShapesConfig(
    image_size=64, min_object_size=8, max_object_size=40, train_size=6, val_size=2, test_size=3
)


def test_a_tiny_lineage_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRCCN_CACHE", str(tmp_path / "cache"))
    data = (
        load_dataset("shapes", "train", shapes_config=SHAPES),
        load_dataset("shapes", "test", shapes_config=SHAPES),
    )
    base = preset(
        "tiny",
        backbone_stages=((4, 1, True), (8, 1, True), (8, 1, False)),
        min_size=64,
        max_size=64,
        representation_size=16,
        rpn_channels=8,
        box_batch_size_per_image=16,
        rcnn_crop_size=16,
    )
    out = tmp_path / "lineage"
    report = L.run_lineage(
        str(out),
        iters=2,
        test_images=2,
        rcnn_max_proposals=5,
        rpn_top_n=50,
        backend="numba",
        progress=False,
        data=data,
        base_config=base,
    )
    for name in ("lineage.md", "lineage.json", "recall.png", "proposals.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "lineage.json").read_text()) == report
    rows = report["rows"]
    assert list(rows) == ["rcnn", "fastrcnn", "fasterrcnn"]
    assert rows["rcnn"]["proposals_per_image"] <= 5
    for r in rows.values():
        assert r["total_seconds"] == pytest.approx(r["network_seconds"] + r["proposal_seconds"])
        assert 0 <= r["recall70"] <= r["recall50"] <= 1 and 0 <= r["map"] <= r["map50"] <= 1
    for curve in report["recall"]["selective_search"] + report["recall"]["rpn"]:
        assert (np.diff(curve) >= 0).all()
    table = (out / "lineage.md").read_text()
    assert (
        table.count("\n| ") == 5
    )  # header, rule, 3 rows and "| R-CNN | selective search | " in table
    # a second run into the same folder is refused (before any work) unless --overwrite
    with pytest.raises(MinirccnError, match="--overwrite"):
        L.run_lineage(str(out), iters=2, data=data, base_config=base)
    assert (
        main(
            ["lineage", "--out", str(tmp_path / "x"), "--rpn-checkpoint", str(tmp_path / "no.npz")]
        )
        == 2
    )
