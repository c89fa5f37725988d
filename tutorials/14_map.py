# %% [markdown]
# # Tutorial 14: how mAP is computed
#
# Tutorial 8 printed "COCO mAP", "mAP@0.5" and "VOC07 AP@0.5" for the trained
# detector. This tutorial computes them by hand, step by step, on a small
# made-up example where every number can be followed, and checks each step
# against `minirccn.evaluation` (whose docstring is the specification):
#
# 1. **matching**: detections, best score first, each takes the best still
#    unmatched ground truth if their IoU passes the threshold: a true
#    positive (TP); otherwise a false positive (FP);
# 2. the **precision-recall curve** from the running TP and FP counts;
# 3. **AP** = the area under that curve, three ways: VOC07's 11 points,
#    VOC2010's all points, COCO's 101 points;
# 4. COCO's **mAP@[.5:.95]**: the same at ten IoU thresholds, averaged;
# 5. **AP by object size** (COCO's small / medium / large);
# 6. **difficult / crowd** boxes: neither a hit nor a miss.
#
# mAP is the mean of the per-class APs; one class is enough to see all of it,
# so most of the example has one class.

# %%
import numpy as np

import _common as T
from minirccn import evaluation, viz
from minirccn.data import load_dataset
from minirccn.engine.inference import evaluate_model

# three images, one class (label 1). Ground truth per image, then detections with scores.
gts = [
    {"boxes": np.array([[10.0, 10, 50, 50], [60, 60, 100, 110]]), "labels": np.array([1, 1])},
    {"boxes": np.array([[20.0, 30, 70, 80]]), "labels": np.array([1])},
    {"boxes": np.array([[5.0, 5, 25, 25], [30, 30, 130, 130]]), "labels": np.array([1, 1])},
]
preds = [
    {  # a good box, a duplicate of it, a box next to the second object
        "boxes": np.array([[12.0, 11, 50, 52], [8, 10, 48, 49], [64, 70, 100, 118]]),
        "scores": np.array([0.95, 0.80, 0.60]),
        "labels": np.array([1, 1, 1]),
    },
    {  # a confident box on nothing, a good box
        "boxes": np.array([[80.0, 0, 120, 30], [22, 28, 71, 79]]),
        "scores": np.array([0.90, 0.70]),
        "labels": np.array([1, 1]),
    },
    {  # the big object found, the small one missed (a loose box)
        "boxes": np.array([[33.0, 28, 128, 131], [0, 0, 40, 40]]),
        "scores": np.array([0.85, 0.30]),
        "labels": np.array([1, 1]),
    },
]
n_gt = sum(len(g["boxes"]) for g in gts)
print(f"{len(gts)} images, {n_gt} ground-truth boxes, {sum(len(p['boxes']) for p in preds)} detections")

# %% [markdown]
# ## 1. Matching by score at one IoU threshold
#
# Pool the detections of all images (VOC does this per class), sort them by
# score, and walk down the list. A detection looks at the ground truth of
# *its* image: if its best IoU passes the threshold and that box is not yet
# taken, it is a TP and takes it; if the box is taken already, the detection
# is a duplicate, an FP; below the threshold, an FP. Greedy by score means a
# confident duplicate can "steal" the box from a better-placed, less
# confident detection: score order, not IoU, decides.


# %%
def match_voc(preds, gts, threshold):
    """(scores, tp) of all detections in decreasing score order, VOC rules (IoU > threshold)."""
    rows = [(s, i, b) for i, p in enumerate(preds) for b, s in zip(p["boxes"], p["scores"])]
    rows.sort(key=lambda r: -r[0])  # stable: ties keep image order
    taken = [np.zeros(len(g["boxes"]), bool) for g in gts]
    scores, tp = [], []
    for s, i, b in rows:
        difficult = gts[i].get("difficult", np.zeros(len(gts[i]["boxes"]), bool))
        ious = evaluation.box_iou(b[None], gts[i]["boxes"])[0]
        j = int(np.argmax(ious)) if len(ious) else -1
        if j >= 0 and ious[j] > threshold and difficult[j]:
            continue  # a difficult box: neither a hit nor a miss (section 6)
        hit = j >= 0 and ious[j] > threshold and not taken[i][j]
        if hit:
            taken[i][j] = True
        print(
            f"  score {s:.2f} image {i}: best IoU {ious[j] if j >= 0 else 0:.2f} -> "
            f"{'TP' if hit else ('FP (duplicate)' if j >= 0 and ious[j] > threshold else 'FP')}"
        )
        scores.append(s)
        tp.append(hit)
    return np.array(scores), np.array(tp)


scores, tp = match_voc(preds, gts, 0.5)
T.check(len(tp) == 7 and tp.sum() == 4, f"{int(tp.sum())} TP and {int((~tp).sum())} FP at IoU 0.5")

# %% [markdown]
# ## 2. The precision-recall curve
#
# After the k best detections: precision = TP so far / k, recall = TP so far
# / number of ground-truth boxes. Recall only grows; precision zig-zags.

# %%
cum_tp = np.cumsum(tp)
precision = cum_tp / np.arange(1, len(tp) + 1)
recall = cum_tp / n_gt
for k in range(len(tp)):
    print(f"  top {k + 1}: score {scores[k]:.2f}  precision {precision[k]:.3f}  recall {recall[k]:.3f}")
envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or above
T.check(np.all(np.diff(recall) >= 0), "recall never decreases down the list")

# %% [markdown]
# ## 3. AP three ways
#
# * **VOC07, 11 points**: the mean over recalls 0, 0.1, ..., 1 of the best
#   precision at that recall or above (0 where the recall is never reached).
# * **VOC2010+, all points**: the area under the *envelope* (precision made
#   monotone from the right), summed where recall changes.
# * **COCO, 101 points**: the envelope read at recalls 0, 0.01, ..., 1
#   (the first detection whose recall reaches each point), averaged. COCO
#   also matches per image and keeps at most 100 detections per image, and
#   its IoU test is `>=` where VOC's is `>`; none of that changes this example.

# %%
ap11 = np.mean([precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in np.linspace(0, 1, 11)])
mrec = np.concatenate([[0.0], recall, [1.0]])
mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
ap_all = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
where = np.searchsorted(recall, evaluation.RECALL_POINTS, side="left")
ap101 = float(np.mean([envelope[w] if w < len(envelope) else 0.0 for w in where]))
print(f"AP@0.5: VOC07 11-point {ap11:.4f}, all-point {ap_all:.4f}, COCO 101-point {ap101:.4f}")
voc07 = evaluation.evaluate(preds, gts, metric="voc07")["map50"]
voc = evaluation.evaluate(preds, gts, metric="voc")["map50"]
coco = evaluation.evaluate(preds, gts, metric="coco")
print(f"minirccn.evaluation:    {voc07:.4f},            {voc:.4f},              {coco['map50']:.4f}")
T.check(np.isclose(ap11, voc07), "11-point AP by hand == evaluate(metric='voc07')")
T.check(np.isclose(ap_all, voc), "all-point AP by hand == evaluate(metric='voc')")
T.check(np.isclose(ap101, coco["map50"]), "101-point AP by hand == evaluate(metric='coco')['map50']")
viz.plot_pr_curves(
    {"precision": (recall, precision), "envelope (monotone)": (recall, envelope)},
    T.out_dir() / "14_pr_curve.png",
    title=f"PR curve at IoU 0.5: AP11 {ap11:.3f}, all-point {ap_all:.3f}, COCO-101 {ap101:.3f}",
    size=(640, 460),
)
print(f"wrote {T.out_dir() / '14_pr_curve.png'}")

# %% [markdown]
# ## 4. COCO's mAP@[.5:.95]
#
# The same matching and 101-point AP at each IoU threshold 0.50, 0.55, ...,
# 0.95, averaged: a loose box counts at 0.5 and not at 0.9, so the number
# rewards localisation. The matching below is **COCO's** rule, not VOC's:
# boxes already taken are masked out (`ious[taken[i]] = -1`) before the argmax,
# so a detection takes the best *unmatched* box above the threshold; VOC's rule
# (section 1) looks at the best box even if it is taken, and then the
# detection is a duplicate. On this example the two rules give the same TP/FP
# at IoU 0.5 (checked below); they differ when a detection overlaps two
# objects and the better one is already taken.

# %%
aps, hits_at = [], {}
for t in evaluation.IOU_THRESHOLDS:
    rows = [(s, i, b) for i, p in enumerate(preds) for b, s in zip(p["boxes"], p["scores"])]
    rows.sort(key=lambda r: -r[0])
    taken = [np.zeros(len(g["boxes"]), bool) for g in gts]
    hits = []
    for s, i, b in rows:
        ious = evaluation.box_iou(b[None], gts[i]["boxes"])[0]
        ious[taken[i]] = -1  # COCO: only unmatched boxes can be taken
        j = int(np.argmax(ious))
        hit = ious[j] >= t
        if hit:
            taken[i][j] = True
        hits.append(hit)
    hits_at[round(float(t), 2)] = hits
    c = np.cumsum(hits)
    p, r = c / np.arange(1, len(c) + 1), c / n_gt
    env = np.maximum.accumulate(p[::-1])[::-1]
    w = np.searchsorted(r, evaluation.RECALL_POINTS, side="left")
    aps.append(np.mean([env[k] if k < len(env) else 0.0 for k in w]))
T.check(
    hits_at[0.5] == tp.tolist(),
    "on this example COCO's rule (taken boxes masked) and VOC's (section 1) give the same TP/FP at 0.5",
)
print("AP per IoU threshold:", " ".join(f"{t:.2f}:{a:.3f}" for t, a in zip(evaluation.IOU_THRESHOLDS, aps)))
print(f"mean: {np.mean(aps):.4f}   minirccn.evaluation 'map': {coco['map']:.4f}")
T.check(np.isclose(np.mean(aps), coco["map"]), "mAP@[.5:.95] by hand == evaluate(...)['map']")
T.check(np.isclose(aps[5], coco["map75"]), "AP at IoU 0.75 == evaluate(...)['map75']")

# %% [markdown]
# Section 1 said a confident duplicate can "steal" an object from a better-placed,
# less confident detection. In image 0 the good box and its duplicate overlap the
# object almost equally (IoU printed below), so their order changes nothing. Make the
# duplicate *loose* (IoU between 0.5 and 0.75) and more confident than the good box:
# at IoU 0.5 it takes the object and the good box becomes the duplicate, which costs
# nothing there (one TP, one FP either way); at 0.75 the loose box misses, so the
# object is found only later in the ranking, and `map75` and `map` drop.

# %%
print("image 0: IoU of the good box and its duplicate with the object:",
      np.round(evaluation.box_iou(preds[0]["boxes"][:2], gts[0]["boxes"][:1])[:, 0], 3).tolist())
loose_box = np.array([4.0, 4, 50, 48])  # the first object is (10, 10, 50, 50)
print("a loose box instead of the duplicate: IoU",
      round(float(evaluation.box_iou(loose_box[None], gts[0]["boxes"][:1])[0, 0]), 3))


def with_loose(loose_score):
    out = [dict(p) for p in preds]
    out[0] = dict(preds[0], boxes=preds[0]["boxes"].copy(), scores=preds[0]["scores"].copy())
    out[0]["boxes"][1] = loose_box
    out[0]["scores"][1] = loose_score
    return evaluation.evaluate(out, gts, metric="coco")


behind, ahead = with_loose(0.80), with_loose(0.97)  # the good box scores 0.95
for name, m in (("loose box behind the good one", behind), ("loose box ahead (it steals)", ahead)):
    print(f"  {name:30s}: map50 {m['map50']:.4f}  map75 {m['map75']:.4f}  map {m['map']:.4f}")
T.check(
    np.isclose(behind["map50"], ahead["map50"]) and ahead["map75"] < behind["map75"],
    "a confident loose duplicate leaves map50 alone and lowers map75: score order decides",
)

# %% [markdown]
# ## 5. AP by object size
#
# COCO splits objects by area: small `< 32^2`, medium `32^2 .. 96^2`, large
# `> 96^2` (pixels^2, `evaluation.AREA_RANGES`). For "small", ground truth of
# other sizes is *ignored* (a detection matched to it is neither TP nor FP),
# and an unmatched detection counts as FP only if its own area is small. So
# a detector can be good on large objects and poor on small ones, and
# `map_small` says so.

# %%
print("areas of the ground truth:", [evaluation.box_area(g["boxes"]).round(0).tolist() for g in gts])
for size in ("small", "medium", "large"):
    lo, hi = evaluation.AREA_RANGES[size]
    aps_size = []
    for t in evaluation.IOU_THRESHOLDS:
        rows = [(s, i, b) for i, p in enumerate(preds) for b, s in zip(p["boxes"], p["scores"])]
        rows.sort(key=lambda r: -r[0])
        taken = [np.zeros(len(g["boxes"]), bool) for g in gts]
        ignored = [~((evaluation.box_area(g["boxes"]) >= lo) & (evaluation.box_area(g["boxes"]) <= hi)) for g in gts]
        hits, counted = [], []
        for s, i, b in rows:
            ious = evaluation.box_iou(b[None], gts[i]["boxes"])[0]
            ious[taken[i]] = -1
            # prefer a counted box: look at ignored ones only if no counted box passes
            ok = ious >= t
            pick = np.flatnonzero(ok & ~ignored[i])
            if not len(pick):
                pick = np.flatnonzero(ok & ignored[i])
            if len(pick):
                j = pick[np.argmax(ious[pick])]
                taken[i][j] = True
                hits.append(True)
                counted.append(not ignored[i][j])
            else:
                area = evaluation.box_area(b[None])[0]
                hits.append(False)
                counted.append(lo <= area <= hi)
        counted = np.array(hits)[np.array(counted, bool)]  # the TP/FP flags that count
        n_size = int(sum((~ig).sum() for ig in ignored))
        if n_size == 0:
            break
        c = np.cumsum(counted)
        p, r = c / np.arange(1, len(c) + 1), c / n_size
        env = np.maximum.accumulate(p[::-1])[::-1] if len(p) else p
        w = np.searchsorted(r, evaluation.RECALL_POINTS, side="left")
        aps_size.append(np.mean([env[k] if k < len(env) else 0.0 for k in w]))
    by_hand = float(np.mean(aps_size)) if aps_size else -1.0
    print(f"  {size:6s}: by hand {by_hand:.4f}, evaluate map_{size} {coco['map_' + size]:.4f}")
    T.check(np.isclose(by_hand, coco["map_" + size]), f"AP of {size} objects by hand == map_{size}")

# %% [markdown]
# ## 6. Difficult (VOC) and crowd (COCO) boxes
#
# VOC marks some objects *difficult* (tiny, heavily occluded). A detection
# on one is neither a TP nor an FP, and difficult boxes do not count in the
# recall: a detector is neither rewarded nor punished for them. COCO's
# `iscrowd` regions play the same role (minirccn maps "difficult" onto it),
# with one more rule: any number of detections may fall on a crowd region.
# Below, the small object of image 2 (missed: the loose box near it overlaps
# it too little) becomes difficult: one missed object fewer in the recall.

# %%
gts_d = [dict(g) for g in gts]
gts_d[2] = dict(gts[2], difficult=np.array([True, False]))
scores_d, tp_d = match_voc(preds, gts_d, 0.5)
n_gt_d = n_gt - 1
c = np.cumsum(tp_d)
p_d, r_d = c / np.arange(1, len(c) + 1), c / n_gt_d
mrec = np.concatenate([[0.0], r_d, [1.0]])
mpre = np.maximum.accumulate(np.concatenate([[0.0], p_d, [0.0]])[::-1])[::-1]
ap_d = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
voc_d = evaluation.evaluate(preds, gts_d, metric="voc")["map50"]
print(f"all-point AP@0.5 with the small box difficult: by hand {ap_d:.4f}, evaluate {voc_d:.4f} (was {voc:.4f})")
T.check(np.isclose(ap_d, voc_d), "difficult boxes by hand == evaluate(metric='voc')")

# %% [markdown]
# ## 7. What the errors are: a small error analysis
#
# mAP says how good a detector is, not what goes wrong. Following Hoiem et al.
# (2012), take the detections above a score (0.5 here) and ask of each, best score
# first per image:
#
# * **correct**: IoU >= 0.5 with a not yet matched object of its class;
# * **duplicate**: IoU >= 0.5 with an object of its class that is taken already;
# * **localisation**: its class, but 0.1 <= IoU < 0.5 (a badly placed box);
# * **confusion**: IoU >= 0.1 with an object of *another* class (the wrong label);
# * **background**: IoU < 0.1 with every object.
#
# The loop below is the rule; it is checked against `T.error_breakdown` (which
# tutorial 8 uses) on the made-up example, then run on the default run's
# detections, with each class's AP, when a trained checkpoint is available
# (`$MINIRCCN_TUTORIAL_CHECKPOINT` or `tutorials/.cache/default-run/`; in full
# mode without one a shortened run is trained now and cached, see tutorial 8).


# %%
def error_kinds(preds, gts, score_thresh=0.5, fg=0.5, bg=0.1):
    """Count each detection scoring > score_thresh by kind, per image best score first."""
    counts = dict.fromkeys(T.ERROR_KINDS, 0)
    for p, g in zip(preds, gts):
        taken = np.zeros(len(g["boxes"]), bool)
        for k in np.argsort(-np.asarray(p["scores"]), kind="stable"):
            if p["scores"][k] <= score_thresh:
                continue
            ious = evaluation.box_iou(np.asarray(p["boxes"][k], np.float64)[None], g["boxes"])[0]
            same = g["labels"] == p["labels"][k]
            free = same & ~taken & (ious >= fg)
            if free.any():
                taken[np.flatnonzero(free)[np.argmax(ious[free])]] = True
                counts["correct"] += 1
            elif (same & (ious >= fg)).any():
                counts["duplicate"] += 1
            elif (same & (ious >= bg)).any():
                counts["localisation"] += 1
            elif (~same & (ious >= bg)).any():
                counts["confusion"] += 1
            else:
                counts["background"] += 1
    return counts


toy_counts = error_kinds(preds, gts)
print("the made-up example, detections > 0.5:", toy_counts)
T.check(toy_counts == T.error_breakdown(preds, gts)[0], "the loop == T.error_breakdown on the example")
T.check(toy_counts["duplicate"] == 1 and toy_counts["background"] == 1,
        "image 0's second box is a duplicate, image 1's confident box is on background")

trained, trained_at, note = T.default_run()
print(note)
if trained is not None:
    test = load_dataset("shapes", split="test", seed=0)
    n_eval = T.pick(len(test), 20)
    result = evaluate_model(trained, test, progress=False, limit=n_eval)
    print(f"{n_eval} test images: mAP@0.5 {result['map50']:.3f}, COCO mAP {result['map']:.3f}")
    print(f"  {'class':10s} {'AP@0.5':>7s} {'AP@[.5:.95]':>12s}")
    for name, ap in result["per_class"].items():
        print(f"  {name:10s} {ap['ap50']:7.3f} {ap['ap']:12.3f}")
    det = [trained.predict(test[i]["image"]) for i in range(n_eval)]
    truth = [{"boxes": test[i]["boxes"], "labels": test[i]["labels"]} for i in range(n_eval)]
    kinds = error_kinds(det, truth)
    _, missed, total = T.error_breakdown(det, truth)
    print(f"detections > 0.5 by kind: {kinds}; objects missed: {missed} of {total}")
    T.check(kinds == T.error_breakdown(det, truth)[0], "the loop == T.error_breakdown on the trained run")
    viz.plot_bars(
        {f"detections scoring > 0.5 on {n_eval} test images": {k: float(v) for k, v in kinds.items()},
         f"AP@0.5 per class (x100)": {n: 100 * a["ap50"] for n, a in result["per_class"].items()}},
        T.out_dir() / "14_error_analysis.png",
        title=("a shortened default run" if "shortening" in note else "the default run")
        + ": what its confident detections are, and AP per class",
    )
    print(f"wrote {T.out_dir() / '14_error_analysis.png'}")
else:
    print("the trained-run part of section 7 skipped (fast mode without a checkpoint)")

# %% [markdown]
# ## Summary
#
# * Matching is greedy by score, per class; a duplicate is a false positive.
# * The PR curve comes from running TP/FP counts; AP is the area under its
#   monotone envelope: 11 points (VOC07), every point (VOC2010+) or 101
#   points (COCO). They differ by a few points on the same detections.
# * COCO averages AP over IoU 0.50:0.95 (localisation matters) and reports
#   it by object size; mAP is the mean over classes with ground truth.
# * Difficult / crowd boxes are neither hits nor misses.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it expected.
#
# 1. Swapping the scores of image 0's good box and its duplicate changes no number
#    (both overlap the object by about 0.88). Return the AP@0.5 and the COCO mAP
#    after the swap, and see for yourself; then read the loose-box cell of section 4
#    for the case where the order does matter.
# 2. Add a second class (label 2) with one ground-truth box in image 1 and no
#    detections. What happens to `map50`, the mean over the classes with ground truth?
# 3. COCO keeps at most 100 detections per image. Add `n` junk boxes scoring 0.01 (far
#    below every true positive) to image 1. Does any AP change? (Trailing false
#    positives after the last true positive do not lower the envelope anywhere.)


# %%
@T.stub
def swapped_metrics():
    """(map50, map) of evaluate(..., metric="coco") with image 0's first two scores swapped."""
    raise NotImplementedError


@T.stub
def map50_with_empty_class():
    """map50 (COCO) after adding a label-2 box (60, 0, 90, 30) to image 1's ground truth."""
    raise NotImplementedError


@T.stub
def preds_with_junk(n):
    """``preds`` with ``n`` extra boxes scoring 0.01 (anywhere, label 1) in image 1."""
    raise NotImplementedError


# %%
def _check_swap():
    m50, m = swapped_metrics()
    print(f"  after the swap: map50 {m50:.4f}, map {m:.4f} (before: {coco['map50']:.4f}, {coco['map']:.4f})")
    return np.isclose(m50, coco["map50"]) and np.isclose(m, coco["map"])


T.exercise("14.1", _check_swap, "no change: the two boxes give the same TP/FP sequence")
T.exercise(
    "14.2",
    lambda: np.isclose(map50_with_empty_class(), coco["map50"] / 2),
    f"half of {coco['map50']:.4f}: the new class has AP 0 and mAP is the mean of two APs",
)


def _check_junk():
    junk = preds_with_junk(150)
    m_j = evaluation.evaluate(junk, gts, metric="coco")
    print(f"  image 1 with {len(junk[1]['boxes'])} detections: map {m_j['map']:.4f} (before {coco['map']:.4f})")
    return len(junk[1]["boxes"]) == len(preds[1]["boxes"]) + 150 and np.isclose(m_j["map"], coco["map"])


T.exercise("14.3", _check_junk, "the same mAP: junk below every true positive costs nothing")
