"""Tests of minirccn.evaluation: golden values from pycocotools, hand-computed VOC
cases, and properties every AP must have.

Golden values
-------------
``GOLDEN`` was produced by pycocotools 2.0.11 (numpy 2.4.6), which is *not* a test
dependency: ``python3 -m venv /opt/cocoenv && /opt/cocoenv/bin/pip install pycocotools numpy``,
then a script that, for each entry of ``CASES``:

* builds ``preds, targets = make_case(**kwargs)`` (the function below, same code);
* writes a COCO ground-truth dict: image ids ``1..N`` in list order, categories
  ``1..n_classes (+1 with extra_pred_class)``, one annotation per target box in
  order, ``bbox = [x1, y1, x2 - x1, y2 - y1]``, ``area = w * h``,
  ``iscrowd = difficult``;
* writes the results list in image order, each image's detections in order,
  ``bbox`` as above, ``score`` as a float;
* runs ``COCO(); coco.dataset = gt; coco.createIndex();
  ev = COCOeval(coco, coco.loadRes(res), "bbox"); ev.evaluate(); ev.accumulate(); ev.summarize()``
  and records ``ev.stats[:9]`` (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100) and, per
  category, the mean of ``ev.eval["precision"][:, :, k, 0, 2]`` over entries > -1,
  rounded to 6 decimals.

Boxes lie on a 0.25-pixel grid so xyxy <-> xywh is exact in float64 and both
implementations see the same numbers; scores have two decimals so ties occur.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.evaluation import IOU_THRESHOLDS, RECALL_POINTS, box_iou, evaluate, voc_ap


def make_case(
    seed,
    n_images=24,
    n_classes=3,
    extra_pred_class=False,
    max_gt=6,
    max_extra=4,
    p_crowd=0.15,
    p_no_gt=0.15,
    p_no_pred=0.1,
    size_range=(4.0, 160.0),
    region=200.0,
    jitter=0.12,
):
    """A random evaluation case: boxes on a 0.25-pixel grid (exact in float64), scores with ties."""
    rng = np.random.default_rng(seed)
    q = lambda b: np.round(np.asarray(b, dtype=np.float64) * 4) / 4

    def fix(b):
        b = q(b)
        b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 0.25)
        b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 0.25)
        return b

    def random_boxes(n):
        wh = np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]), (n, 2)))
        xy = rng.uniform(0, region, (n, 2))
        return fix(np.concatenate([xy, xy + wh], axis=1))

    preds, targets = [], []
    for _ in range(n_images):
        g = 0 if rng.random() < p_no_gt else int(rng.integers(1, max_gt + 1))
        boxes = random_boxes(g)
        labels = rng.integers(1, n_classes + 1, g)
        difficult = rng.random(g) < p_crowd
        targets.append({"boxes": boxes, "labels": labels, "difficult": difficult})
        found = rng.random(g) < 0.8
        parts_b, parts_l = [], []
        for copy in range(2):
            sel = found if copy == 0 else found & (rng.random(g) < 0.25)
            wh = boxes[sel, 2:] - boxes[sel, :2]
            noise = rng.normal(0, jitter, (int(sel.sum()), 4)) * np.concatenate([wh, wh], axis=1)
            parts_b.append(fix(boxes[sel] + noise))
            lab = labels[sel].copy()
            flip = rng.random(len(lab)) < 0.1
            lab[flip] = rng.integers(1, n_classes + 1, int(flip.sum()))
            parts_l.append(lab)
        n_extra = int(rng.integers(0, max_extra + 1))
        parts_b.append(random_boxes(n_extra))
        parts_l.append(rng.integers(1, n_classes + 1 + int(extra_pred_class), n_extra))
        pb, pl = np.concatenate(parts_b), np.concatenate(parts_l)
        ps = np.round(rng.random(len(pb)), 2)
        if rng.random() < p_no_pred:
            pb, pl, ps = pb[:0], pl[:0], ps[:0]
        preds.append({"boxes": pb, "scores": ps, "labels": pl})
    return preds, targets


CASES = {
    "basic": {"seed": 0},
    "pred_only_class": {"seed": 1, "n_classes": 4, "extra_pred_class": True, "n_images": 30},
    "over_100_dets": {
        "seed": 2,
        "n_images": 4,
        "max_extra": 160,
        "max_gt": 20,
        "size_range": (8.0, 60.0),
    },
    "crowded": {"seed": 3, "region": 40.0, "max_gt": 10, "p_crowd": 0.3, "size_range": (6.0, 40.0)},
    "over_100_one_class": {
        "seed": 13,
        "n_images": 3,
        "n_classes": 1,
        "max_extra": 180,
        "max_gt": 30,
        "size_range": (8.0, 60.0),
    },
    "good": {"seed": 5, "jitter": 0.03, "n_images": 30},
    "all_sizes": {"seed": 4, "n_images": 40, "size_range": (2.0, 300.0), "region": 300.0},
}

# name -> (summary numbers, per-class AP@[.50:.95]) from pycocotools (see the module docstring)
GOLDEN = {
    "basic": (
        {
            "map": 0.106633,
            "map50": 0.247028,
            "map75": 0.04987,
            "map_small": 0.118128,
            "map_medium": 0.14523,
            "map_large": 0.0,
            "mar_1": 0.12425,
            "mar_10": 0.282892,
            "mar_100": 0.282892,
        },
        {1: 0.143373, 2: 0.128177, 3: 0.048348},
    ),
    "pred_only_class": (
        {
            "map": 0.157142,
            "map50": 0.346392,
            "map75": 0.071843,
            "map_small": 0.175543,
            "map_medium": 0.164418,
            "map_large": 0.317162,
            "mar_1": 0.203328,
            "mar_10": 0.339164,
            "mar_100": 0.339164,
        },
        {1: 0.112966, 2: 0.198331, 3: 0.17666, 4: 0.140612},
    ),
    "over_100_dets": (
        {
            "map": 0.048552,
            "map50": 0.112683,
            "map75": 0.010991,
            "map_small": 0.052571,
            "map_medium": 0.0,
            "map_large": -1.0,
            "mar_1": 0.042857,
            "mar_10": 0.194286,
            "mar_100": 0.275238,
        },
        {1: 0.082349, 2: 0.036634, 3: 0.026674},
    ),
    "over_100_one_class": (
        {
            "map": 0.054156,
            "map50": 0.136823,
            "map75": 0.016866,
            "map_small": 0.052444,
            "map_medium": 0.080933,
            "map_large": -1.0,
            "mar_1": 0.007042,
            "mar_10": 0.030986,
            "mar_100": 0.322535,
        },
        {1: 0.054156},
    ),
    "crowded": (
        {
            "map": 0.093983,
            "map50": 0.244364,
            "map75": 0.018767,
            "map_small": 0.094769,
            "map_medium": 0.066667,
            "map_large": -1.0,
            "mar_1": 0.067619,
            "mar_10": 0.220894,
            "mar_100": 0.220894,
        },
        {1: 0.14423, 2: 0.09545, 3: 0.04227},
    ),
    "good": (
        {
            "map": 0.33406,
            "map50": 0.402811,
            "map75": 0.402811,
            "map_small": 0.354539,
            "map_medium": 0.329674,
            "map_large": 0.452228,
            "mar_1": 0.341919,
            "mar_10": 0.617026,
            "mar_100": 0.617026,
        },
        {1: 0.315167, 2: 0.376059, 3: 0.310954},
    ),
    "all_sizes": (
        {
            "map": 0.128369,
            "map50": 0.343629,
            "map75": 0.053042,
            "map_small": 0.12589,
            "map_medium": 0.186442,
            "map_large": 0.120207,
            "mar_1": 0.117741,
            "mar_10": 0.277934,
            "mar_100": 0.277934,
        },
        {1: 0.140965, 2: 0.166445, 3: 0.077697},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_coco_matches_pycocotools(name):
    preds, targets = make_case(**CASES[name])
    result = evaluate(preds, targets, metric="coco")
    summary, per_class = GOLDEN[name]
    for key, want in summary.items():
        assert result[key] == pytest.approx(want, abs=2e-6), key
    assert result["per_class"] == pytest.approx(per_class, abs=2e-6)


def test_case_exercises_crowds_empties_and_many_detections():
    """The golden cases cover what they claim to (so the comparison can fail)."""
    preds, targets = make_case(**CASES["crowded"])
    assert sum(t["difficult"].sum() for t in targets) >= 10
    assert any(len(t["boxes"]) == 0 for t in targets) and any(len(p["boxes"]) == 0 for p in preds)
    preds, _ = make_case(**CASES["over_100_one_class"])
    assert max(np.bincount(p["labels"]).max() for p in preds) > 100


def test_no_predictions_at_all_gives_zero():
    _, targets = make_case(seed=0)
    empty = [
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
        for _ in targets
    ]
    for metric in ("coco", "voc07", "voc"):
        r = evaluate(empty, targets, metric=metric)
        assert r["map50"] == 0.0
        assert all(v == 0.0 for v in r["per_class"].values())
    assert evaluate(empty, targets)["map"] == 0.0


def test_no_ground_truth_gives_minus_one():
    preds, _ = make_case(seed=0)
    targets = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)} for _ in preds]
    for metric in ("coco", "voc07", "voc"):
        r = evaluate(preds, targets, metric=metric)
        assert r["map50"] == -1.0 and r["per_class"] == {}


# ----------------------------------------------------------------------------- VOC by hand
def _one(boxes, labels=None, scores=None, difficult=None):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    d = {
        "boxes": boxes,
        "labels": np.ones(len(boxes), int) if labels is None else np.asarray(labels),
    }
    if scores is not None:
        d["scores"] = np.asarray(scores, dtype=np.float64)
    if difficult is not None:
        d["difficult"] = np.asarray(difficult, bool)
    return d


def test_voc_hand_computed():
    # TP (rec .5, prec 1), duplicate FP (rec .5, prec .5), TP (rec 1, prec 2/3)
    gt = _one([[0, 0, 10, 10], [20, 20, 30, 30]])
    pred = _one([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], scores=[0.9, 0.8, 0.7])
    voc07 = evaluate([pred], [gt], metric="voc07")
    assert voc07["map50"] == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert evaluate([pred], [gt], metric="voc")["map50"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # a detection on a difficult box is neither a hit nor a miss; the box is not counted
    gt_d = _one([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], difficult=[0, 0, 1])
    pred_d = _one(
        [[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
        scores=[0.95, 0.9, 0.8, 0.7],
    )
    assert evaluate([pred_d], [gt_d], metric="voc07")["map50"] == pytest.approx(voc07["map50"])


def test_iou_exactly_half_is_a_voc_miss_and_a_coco_hit():
    gt = _one([[0, 0, 10, 10]])
    pred = _one([[0, 0, 10, 5]], scores=[0.5])  # IoU = 50 / 100
    assert box_iou(pred["boxes"], gt["boxes"])[0, 0] == 0.5
    assert evaluate([pred], [gt], metric="voc07")["map50"] == 0.0
    coco = evaluate([pred], [gt], metric="coco")
    assert coco["map50"] == pytest.approx(1.0) and coco["map"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "side, small, medium, large",
    [
        (32.0, 1.0, 1.0, -1.0),  # area exactly 32^2: both ends of a COCO range are included
        (np.sqrt(32.0**2 - 1), 1.0, -1.0, -1.0),  # just below 32^2: small only
        (np.sqrt(32.0**2 + 1), -1.0, 1.0, -1.0),  # just above 32^2: medium only
        (96.0, -1.0, 1.0, 1.0),  # area exactly 96^2: medium and large
        (np.sqrt(96.0**2 + 1), -1.0, -1.0, 1.0),  # just above 96^2: large only
    ],
)
def test_coco_area_ranges_at_their_boundaries(side, small, medium, large):
    """One box found exactly: it counts in every COCO area range whose closed interval holds
    its area ``[0, 32^2]``, ``[32^2, 96^2]``, ``[96^2, 1e10]``, as pycocotools; other ranges are -1."""
    box = [[10.0, 10.0, 10.0 + side, 10.0 + 1.0 * side]]
    gt, pred = _one(box), _one(box, scores=[0.9])
    r = evaluate([pred], [gt], metric="coco")
    got = (r["map_small"], r["map_medium"], r["map_large"])
    assert got == pytest.approx((small, medium, large), abs=1e-12)


def test_voc_ap_formulas():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec, True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(rec, prec, False) == pytest.approx(0.5 + 1 / 3)
    assert voc_ap(np.array([0.35]), np.array([1.0]), True) == pytest.approx(4 / 11)
    # the devkit's recall points are np.arange(0, 1.1, 0.1), whose 0.3 is 0.30000000000000004
    assert voc_ap(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)
    assert voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_classes_without_ground_truth_are_left_out():
    gt = _one([[0, 0, 10, 10]], labels=[1])
    pred = _one([[0, 0, 10, 10], [30, 30, 40, 40]], labels=[1, 2], scores=[0.9, 0.99])
    for metric in ("coco", "voc07", "voc"):
        r = evaluate([pred], [gt], metric=metric)
        assert r["map50"] == pytest.approx(1.0) and set(r["per_class"]) == {1}


def test_coco_constants_are_pycocotools():
    assert IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[5] == 0.75 and len(IOU_THRESHOLDS) == 10
    assert len(RECALL_POINTS) == 101 and RECALL_POINTS[-1] == 1.0


def test_crowd_absorbs_detections_and_uses_detection_area():
    crowd = _one([[0, 0, 100, 100], [200, 200, 210, 210]], difficult=[1, 0])
    # three detections inside the crowd region (IoU with it tiny, |d ∩ g| / |d| = 1) are ignored
    pred = _one(
        [[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90], [200, 200, 210, 210]],
        scores=[0.9, 0.8, 0.7, 0.6],
    )
    assert evaluate([pred], [crowd])["map"] == pytest.approx(1.0)
    plain = _one([[0, 0, 100, 100], [200, 200, 210, 210]], difficult=[0, 0])
    assert evaluate([pred], [plain])["map"] < 0.5


# ----------------------------------------------------------------------------- validation
def test_bad_inputs_name_the_argument():
    gt = _one([[0, 0, 10, 10]])
    pred = _one([[0, 0, 10, 10]], scores=[0.5])
    with pytest.raises(ValueError, match="metric"):
        evaluate([pred], [gt], metric="map")
    with pytest.raises(ValueError, match="predictions, targets"):
        evaluate([pred], [gt, gt])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\]"):
        evaluate([dict(pred, scores=np.ones(3))], [gt])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        evaluate([pred], [dict(gt, boxes=np.ones((1, 3)))])
    with pytest.raises(ValueError, match="missing key 'scores'"):
        evaluate([{"boxes": pred["boxes"], "labels": pred["labels"]}], [gt])
    with pytest.raises(ValueError, match="NaN"):
        evaluate([dict(pred, scores=np.array([np.nan]))], [gt])
    with pytest.raises(TypeError):
        evaluate(pred, gt)


# ----------------------------------------------------------------------------- properties
coord = st.integers(0, 60)


@st.composite
def images(draw, max_boxes=5):
    """One image's targets: distinct positive-area integer boxes per class, labels 1..3."""
    n = draw(st.integers(0, max_boxes))
    boxes, labels = [], []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        label = draw(st.integers(1, 3))
        if (x1, y1, w, h, label) not in [
            (b[0], b[1], b[2] - b[0], b[3] - b[1], lab) for b, lab in zip(boxes, labels)
        ]:
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(label)
    difficult = draw(st.lists(st.booleans(), min_size=len(boxes), max_size=len(boxes)))
    return _one(
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.array(labels, int),
        difficult=np.array(difficult, bool),
    )


datasets = st.lists(images(), min_size=1, max_size=4)
METRICS = ("coco", "voc07", "voc")


def _has_positive(targets):
    return any((~t["difficult"]).any() for t in targets)


def _perfect(targets, rng):
    preds = []
    for t in targets:
        preds.append(
            {
                "boxes": t["boxes"].copy(),
                "labels": t["labels"].copy(),
                "scores": rng.uniform(0.1, 1.0, len(t["boxes"])),
            }
        )
    return preds


@given(datasets, st.integers(0, 2**32 - 1))
def test_perfect_predictions_score_one(targets, seed):
    preds = _perfect(targets, np.random.default_rng(seed))
    for metric in METRICS:
        r = evaluate(preds, targets, metric=metric)
        if _has_positive(targets):
            assert r["map50"] == pytest.approx(1.0), metric
            if metric == "coco":
                assert r["map"] == pytest.approx(1.0) and r["mar_100"] == pytest.approx(1.0)
        else:
            assert r["map50"] == -1.0


@given(datasets)
def test_no_predictions_score_zero(targets):
    preds = [
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
        for _ in targets
    ]
    for metric in METRICS:
        r = evaluate(preds, targets, metric=metric)
        assert r["map50"] == (0.0 if _has_positive(targets) else -1.0)


@st.composite
def cases(draw):
    """Targets plus noisy predictions with distinct scores."""
    targets = draw(datasets)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    preds, k = [], 0
    total = sum(len(t["boxes"]) for t in targets) * 2 + 4 * len(targets)
    scores = rng.permutation(total) / total + 0.5 / total  # distinct, in (0, 1)
    for t in targets:
        keep = rng.random(len(t["boxes"])) < 0.8
        boxes = t["boxes"][keep] + np.round(rng.normal(0, 2, (int(keep.sum()), 4)))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = t["labels"][keep]
        n_fp = int(rng.integers(0, 3))
        fp = rng.integers(0, 60, (n_fp, 2)).astype(float)
        boxes = np.concatenate(
            [boxes, np.concatenate([fp, fp + rng.integers(1, 30, (n_fp, 2))], 1)]
        )
        labels = np.concatenate([labels, rng.integers(1, 4, n_fp)])
        preds.append({"boxes": boxes, "labels": labels, "scores": scores[k : k + len(boxes)]})
        k += len(boxes)
    return preds, targets


def _summary(r):
    return (
        [r["map50"]]
        + ([r["map"], r["map75"], r["mar_100"]] if "map" in r else [])
        + [float(label) for label in sorted(r["per_class"])]
        + [float(ap) for _, ap in sorted(r["per_class"].items())]
    )


@given(cases(), st.integers(0, 2**32 - 1))
def test_permutation_invariance(case, seed):
    preds, targets = case
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(preds))
    shuffled_p, shuffled_t = [], []
    for i in order:
        pp, tt = preds[i], targets[i]
        dp, dt = rng.permutation(len(pp["boxes"])), rng.permutation(len(tt["boxes"]))
        shuffled_p.append({k: v[dp] for k, v in pp.items()})
        shuffled_t.append({k: v[dt] for k, v in tt.items()})
    for metric in METRICS:
        a, b = (
            evaluate(preds, targets, metric=metric),
            evaluate(shuffled_p, shuffled_t, metric=metric),
        )
        assert _summary(a) == pytest.approx(_summary(b)), metric


@given(cases(), st.integers(0, 3), st.integers(1, 3))
def test_low_score_false_positive_never_raises_ap(case, where, label):
    preds, targets = case
    i = where % len(preds)
    low = min([p["scores"].min() for p in preds if len(p["scores"])] + [1.0]) / 2
    worse = list(preds)
    worse[i] = {
        "boxes": np.concatenate([preds[i]["boxes"], [[500.0, 500.0, 520.0, 520.0]]]),
        "scores": np.concatenate([preds[i]["scores"], [low]]),
        "labels": np.concatenate([preds[i]["labels"], [label]]),
    }
    for metric in METRICS:
        a, b = evaluate(preds, targets, metric=metric), evaluate(worse, targets, metric=metric)
        assert b["map50"] <= a["map50"] + 1e-12, metric
        for k, v in a["per_class"].items():
            assert b["per_class"][k] <= v + 1e-12
        if metric == "coco":
            assert b["map"] <= a["map"] + 1e-12


@given(cases())
def test_ap_bounds(case):
    preds, targets = case
    r = evaluate(preds, targets, metric="coco")
    if _has_positive(targets):
        assert 0.0 <= r["map"] <= r["map50"] <= 1.0 and 0 <= r["map75"] <= r["map50"]
        for metric in ("voc07", "voc"):
            assert 0.0 <= evaluate(preds, targets, metric=metric)["map50"] <= 1.0


def test_float32_and_lists_accepted():
    preds, targets = make_case(seed=5, n_images=6)
    r64 = evaluate(preds, targets)
    p32 = [
        {
            "boxes": p["boxes"].astype(np.float32),
            "scores": p["scores"].astype(np.float32),
            "labels": p["labels"].tolist(),
        }
        for p in preds
    ]
    t32 = [
        {
            "boxes": t["boxes"].astype(np.float32).tolist(),
            "labels": t["labels"],
            "difficult": t["difficult"],
        }
        for t in targets
    ]
    assert evaluate(p32, t32)["map"] == pytest.approx(r64["map"], abs=1e-6)
