"""Defaults derived from the data: each rule against numbers computed here by hand."""

import numpy as np
import pytest

from minirccn.config import autoconfig as A
from minirccn.config.checks import check_fields
from minirccn.config import preset
from minirccn.data import DetectionDataset


class Boxes(DetectionDataset):
    """Blank images of given sizes with given boxes (no files)."""

    def __init__(self, sizes, boxes):
        self.sizes, self.boxes = sizes, boxes
        self.class_names = ["__background__", "thing"]
        self.name = "boxes"

    def __len__(self):
        return len(self.sizes)

    def _load(self, i):
        h, w = self.sizes[i]
        b = np.asarray(self.boxes[i], np.float32).reshape(-1, 4)
        return {
            "image": np.zeros((h, w, 3), np.uint8),
            "boxes": b,
            "labels": np.ones(len(b), np.int64),
            "difficult": np.zeros(len(b), bool),
            "image_id": str(i),
        }


def square_boxes(side, n=1, ratio=1.0):
    w = side / np.sqrt(ratio)
    h = side * np.sqrt(ratio)
    return [[10, 10, 10 + w, 10 + h]] * n


def test_large_photos_with_large_objects():
    # 480x640 photos, objects 200..390 px: the smallest size allowed is enough
    sizes = [(480, 640)] * 20
    boxes = [square_boxes(200 + 10 * i) for i in range(20)]
    fields, report = A.derive(Boxes(sizes, boxes), minutes=1.0)
    # 32 px / (p10 side / 480) = 32 * 480 / 219 = 70 px wanted -> the floor, 128
    assert A.SMALL_OBJECT_PX * 480 / np.percentile(200 + 10 * np.arange(20), 10) < 128
    assert (fields["min_size"], fields["max_size"]) == (128, 168)  # 128 * 4/3 to a multiple of 8
    scale = 128 / 480  # resize_scale(480, 640, 128, 168) = min(0.267, 0.2625)
    scale = min(128 / 480, 168 / 640)
    side = (200 + 10 * np.arange(20)) * scale
    lo, hi = np.percentile(side, 5), np.percentile(side, 95)
    count = int(np.clip(round(np.log2(hi / lo)) + 1, 2, 5))
    assert fields["anchor_sizes"] == tuple(int(round(s)) for s in np.geomspace(lo, hi, count))
    assert fields["aspect_ratios"] == (1.0,)
    # 10th percentile side ~57 px: stride 16 keeps it at least two cells wide
    assert report["stride"] == 16 and 2 * 16 <= np.percentile(side, 10)
    assert fields["backbone_stages"][2][2] and fields["backbone_stages"][3][2]


def test_small_objects_raise_the_resolution_up_to_the_cap_and_lower_the_stride():
    sizes = [(300, 400)] * 10
    boxes = [square_boxes(30, 3) for _ in range(10)]
    fields, report = A.derive(Boxes(sizes, boxes), minutes=1.0)
    assert fields["min_size"] == A.MAX_SHORT_SIDE  # 32 px wanted: needs 320, capped
    assert "CPU cap" in report["image_size_reason"]  # 30 * 160/300 = 16 px: the cap is fine
    # 12-px objects: the cap would make them 6.4 px; kept at 16 px needs 400: 256 at most
    boxes = [square_boxes(12, 3) for _ in range(10)]
    fields, report = A.derive(Boxes(sizes, boxes), minutes=1.0)
    assert (fields["min_size"], fields["max_size"]) == (A.MAX_KEEP_SHORT_SIDE, A.MAX_KEEP_LONG_SIDE)
    assert report["stride"] == 4  # 12 * 0.8 = 9.6 px objects: stride 4
    assert "small objects" in report["image_size_reason"]
    assert "small objects" in A.format_report(report)


def test_small_objects_keep_the_native_size():
    """192-px tiles of 11-px nuclei (the dsb dev set): never shrunk to the 160-px cap."""
    boxes = [square_boxes(11, 3) + square_boxes(25, 10) for _ in range(8)]
    fields, report = A.derive(Boxes([(192, 192)] * 8, boxes), minutes=1.0)
    assert (fields["min_size"], fields["max_size"]) == (192, 192)
    assert "keep their own size" in report["image_size_reason"]
    # the same objects on 400-px images: 16 px needs 16 / (11 / 400) = 582 px: 256 at most
    fields, _ = A.derive(Boxes([(400, 400)] * 8, boxes), minutes=1.0)
    assert (fields["min_size"], fields["max_size"]) == (256, 256)
    # images smaller than the cap are never upsampled as a whole
    fields, _ = A.derive(Boxes([(96, 128)] * 4, [square_boxes(5)] * 4), minutes=1.0)
    assert (fields["min_size"], fields["max_size"]) == (96, 128)


def test_aspect_ratios_follow_the_boxes_and_fill_gaps():
    boxes = [square_boxes(40, ratio=r) for r in [0.25] * 10 + [1.0] * 10 + [4.0] * 10]
    fields, _ = A.derive(Boxes([(200, 200)] * 30, boxes), minutes=1.0)
    r = fields["aspect_ratios"]
    assert r[0] == pytest.approx(0.25, abs=0.01) and r[-1] == pytest.approx(4.0, abs=0.02)
    assert all(b / a <= 3.0 + 1e-6 for a, b in zip(r, r[1:]))  # no gap wider than 3x
    assert 0.9 <= r[len(r) // 2] <= 1.1


def test_steps_follow_the_budget_deterministically():
    ds = Boxes([(192, 256)] * 1000, [square_boxes(50)] * 1000)
    f1, _ = A.derive(ds, minutes=2.0)
    f2, _ = A.derive(ds, minutes=4.0)
    per = A.step_seconds(f1["min_size"], f1["max_size"], 16)
    assert f1["iters"] == int(120 / per)
    assert f2["iters"] == int(240 / per)
    assert A.derive(ds, minutes=2.0)[0] == f1
    # the schedule scales with the steps (the tiny preset's proportions)
    assert f1["bn_freeze_iter"] == round(0.6 * f1["iters"])
    assert f1["milestones"] == (round(0.8 * f1["iters"]),)
    assert f1["eval_every"] == f1["iters"] // A.EVALUATIONS
    # a tiny dataset is not trained for more than MAX_EPOCHS passes
    small = Boxes([(192, 256)] * 3, [square_boxes(50)] * 3)
    assert A.derive(small, minutes=60.0)[0]["iters"] == A.MAX_EPOCHS * 3
    # an explicit number of steps wins over the budget, the schedule follows it
    fields, _ = A.derive(ds, iters=500)
    assert fields["iters"] == 500 and fields["milestones"] == (400,)


def test_cost_model_matches_the_preset_on_shapes():
    """The tiny stack's 128x128 stride-4 step as the model has it lies between the default
    `shapes` run's measured step (docs/metrics.json: 5000 steps of the tiny preset, RoI max
    pooling, alone on the 2-core machine) and 1.5x it: conservative (the own-data defaults
    pool with the slower RoIAlign, and validate), not wildly off."""
    import json
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "docs", "metrics.json")) as f:
        run = json.load(f)
    measured = run["train_seconds"] / run["iters"]
    cfg = preset("tiny")
    modelled = A.step_seconds(cfg.min_size, cfg.max_size, 4)
    assert measured <= modelled <= 1.5 * measured


def test_derived_fields_make_a_valid_config_and_report():
    fields, report = A.derive(Boxes([(240, 320)] * 5, [square_boxes(30, 2)] * 5), minutes=0.5)
    cfg = preset("tiny").replace(**fields)
    check_fields(cfg)  # every derived field has its type and range
    text = A.format_report(report)
    assert cfg.box_roi_pool == "roi_align" and cfg.box_roi_pool_aligned  # rule 6
    assert cfg.box_nms_thresh == 0.6 and preset("tiny").box_nms_thresh == 0.5  # rule 7
    assert cfg.box_score_thresh == 0.001 and preset("tiny").box_score_thresh == 0.05  # rule 9
    assert "box_score_thresh=0.001" in text
    words = ("min_size", "anchor_sizes", "stride", "iters", "jitter_hue", "roi_align")
    for word in words + ("box_nms_thresh=0.6",):
        assert word in text
    # why: the percentiles each rule read (square boxes: every h/w is 1), the evaluation count
    assert report["box_ratio_p10_p50_p90"] == [1.0, 1.0, 1.0] and cfg.aspect_ratios == (1.0,)
    assert "ratios h/w: 10%=1.0 50%=1.0 90%=1.0" in text
    assert f"validation every {cfg.eval_every} ({A.EVALUATIONS} evaluations)" in text


def test_augmentation_only_when_the_steps_revisit_each_image_often():
    few = Boxes([(192, 256)] * 20, [square_boxes(50)] * 20)
    fields, report = A.derive(few, iters=20 * A.AUGMENT_EPOCHS)
    assert fields["jitter_hue"] > 0 and fields["scale_jitter"] and report["epochs"] == 12
    assert "jitter_hue" in A.format_report(report)
    fields, report = A.derive(few, iters=20 * A.AUGMENT_EPOCHS - 1)
    assert "jitter_hue" not in fields and "scale_jitter" not in fields
    assert "horizontal flip only" in A.format_report(report)


def test_no_anchor_below_the_minimum():
    tiny_objects = Boxes([(400, 400)] * 10, [square_boxes(s) for s in range(3, 13)])
    fields, _ = A.derive(tiny_objects, minutes=0.5)
    assert min(fields["anchor_sizes"]) == A.MIN_ANCHOR
    assert len(set(fields["anchor_sizes"])) == len(fields["anchor_sizes"])


def _proposals(counts):
    """Rule 8's fields for images holding ``counts[i]`` boxes each."""
    ds = Boxes([(192, 192)] * len(counts), [square_boxes(20, n) for n in counts])
    fields, report = A.derive(ds, iters=10)
    post = fields["rpn_post_nms_top_n_test"]
    assert fields["rpn_pre_nms_top_n_test"] == A.PRE_NMS_FACTOR * post
    assert "rpn_post_nms_top_n_test=%d" % post in A.format_report(report)
    return post, report["objects_per_image_p95"]


@pytest.mark.parametrize(
    "counts, post",
    [
        ([1] * 20, 500),  # sparse: the floor, 5x the preset's 100
        ([0] * 10, 500),  # no boxes at all
        ([50] * 20, 500),  # exactly at the floor: 10 per object of 50
        ([51] * 20, 550),  # just above: 510, rounded up to a multiple of 50
        ([5] * 19 + [80], 500),  # one crowded image of 20 is above the 95th percentile's reach
        ([5] * 10 + [80] * 10, 800),
        ([150] * 20, 1000),  # the cap
    ],
)
def test_test_time_proposals_follow_the_crowded_images(counts, post):
    got, p95 = _proposals(counts)
    assert p95 == pytest.approx(np.percentile(counts, 95), abs=0.05)  # reported to 0.1
    # by hand: max(500, 10 * p95) up to a multiple of 50, at most 1000
    assert got == post == min(max(500, int(np.ceil(10 * p95 / 50) * 50)), 1000)
    assert preset("tiny").rpn_post_nms_top_n_test == 100  # what the rule replaces
