"""Detection metrics: COCO mAP@[.50:.95] and Pascal VOC AP@0.5, in plain NumPy.

:func:`evaluate` takes one prediction dict and one target dict per image:

* prediction: ``boxes`` ``(D, 4)``, ``scores`` ``(D,)``, ``labels`` ``(D,)``;
* target: ``boxes`` ``(G, 4)``, ``labels`` ``(G,)``, optional ``difficult`` ``(G,)`` bool.

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates: a box's area is
``(x2 - x1) * (y2 - y1)`` with no "+1", and

    IoU(a, b) = |a ∩ b| / (|a| + |b| - |a ∩ b|)      (0 when the union is 0)

everywhere. That is pycocotools' IoU exactly; the classic VOC devkit adds 1 to
every width and height (1-based inclusive pixels), which this project never
does, so VOC numbers here can differ slightly from the devkit's on tiny boxes.

Three metrics:

``metric="coco"`` -- pycocotools' ``COCOeval`` for boxes, step for step:
  for each image and class, detections sorted by score (stable) and cut at 100;
  for each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95 each detection in turn
  takes the unmatched ground truth with the highest IoU >= ``t`` (preferring
  non-ignored ones); "difficult" ground truth plays COCO's ``iscrowd``: it is
  ignored, may absorb any number of detections, and its IoU is
  ``|d ∩ g| / |d|``; a detection matched to an ignored box, or unmatched and
  outside the area range, is ignored. Precision is made monotone from the
  right and read at the 101 recalls 0, 0.01, ..., 1 ("101-point
  interpolation"); AP is its mean. Results: ``map`` (mean over IoUs 0.50:0.95),
  ``map50``, ``map75``, ``map_small`` / ``map_medium`` / ``map_large`` (areas
  < 32², 32²..96², > 96²), ``mar_1`` / ``mar_10`` / ``mar_100`` (recall with at
  most 1, 10, 100 detections per image), ``per_class`` {label: AP@[.50:.95]}
  and ``per_class50`` {label: AP@0.5}.

``metric="voc07"`` -- the classic VOC devkit at IoU 0.5: per class, detections
  of all images sorted by decreasing score; a detection whose best-IoU ground
  truth has IoU > 0.5 is a true positive if that box is not yet taken, a false
  positive if it is, and neither if it is difficult; any other detection is a
  false positive. Recall counts non-difficult boxes. AP is the mean over
  recalls 0, 0.1, ..., 1 of the best precision at that recall or above
  ("11-point"). Returns ``map50`` and ``per_class``.

``metric="voc"`` -- the same matching, AP = area under the monotone precision
  envelope over all recall points (VOC2010+). Returns ``map50``, ``per_class``.

Classes with no (non-ignored) ground truth anywhere have no AP: they are left
out of every mean and of ``per_class``, as pycocotools does (it marks them -1).
If no class has ground truth, the means are -1.0 (pycocotools' convention). A
class that appears only among predictions is therefore not penalised; classes
that have ground truth but no predictions count as AP 0.
"""

from __future__ import annotations

import numpy as np

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95 and recall points 0, 0.01, ..., 1
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
#: COCO's area ranges (pixels², both ends included) and detections kept per image
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
MAX_DETECTIONS = (1, 10, 100)
METRICS = ("coco", "voc07", "voc")


# ----------------------------------------------------------------------------- boxes
def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` float64 boxes -> ``(N,)`` areas ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of every detection with every ground truth.

    Args:
        dt: ``(D, 4)`` float64.
        gt: ``(G, 4)`` float64.
        crowd: optional ``(G,)`` bool; for those columns the denominator is the
            detection's area alone (COCO's crowd rule).

    Returns:
        ``(D, G)`` float64; 0 where the intersection is empty or the union is 0.
    """
    iw = np.minimum(dt[:, None, 2], gt[None, :, 2]) - np.maximum(dt[:, None, 0], gt[None, :, 0])
    ih = np.minimum(dt[:, None, 3], gt[None, :, 3]) - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_dt = box_area(dt)[:, None]
    union = area_dt + box_area(gt)[None, :] - inter
    if crowd is not None:
        union = np.where(crowd[None, :], area_dt, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((inter > 0) & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)


# ----------------------------------------------------------------------------- inputs
def _as_float_boxes(x, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{where}: expected shape (N, 4), got {a.shape}")
    return a


def _vector(x, n: int, dtype, where: str) -> np.ndarray:
    a = np.asarray(x, dtype=dtype).reshape(-1)
    if len(a) != n:
        raise ValueError(f"{where}: expected {n} values (one per box), got {len(a)}")
    return a


def _prepare(predictions, targets):
    """Validate and convert to lists of float64 / int64 / bool arrays."""
    if not isinstance(predictions, (list, tuple)) or not isinstance(targets, (list, tuple)):
        raise TypeError("predictions, targets: expected lists with one dict per image")
    if len(predictions) != len(targets):
        raise ValueError(
            f"predictions, targets: {len(predictions)} predictions but {len(targets)} targets; "
            "expected one of each per image"
        )
    preds, gts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        for key in ("boxes", "scores", "labels"):
            if key not in p:
                raise ValueError(f"predictions[{i}]: missing key {key!r}")
        for key in ("boxes", "labels"):
            if key not in t:
                raise ValueError(f"targets[{i}]: missing key {key!r}")
        pb = _as_float_boxes(p["boxes"], f"predictions[{i}]['boxes']")
        ps = _vector(p["scores"], len(pb), np.float64, f"predictions[{i}]['scores']")
        pl = _vector(p["labels"], len(pb), np.int64, f"predictions[{i}]['labels']")
        tb = _as_float_boxes(t["boxes"], f"targets[{i}]['boxes']")
        tl = _vector(t["labels"], len(tb), np.int64, f"targets[{i}]['labels']")
        difficult = t.get("difficult")
        td = (
            np.zeros(len(tb), bool)
            if difficult is None
            else _vector(difficult, len(tb), bool, f"targets[{i}]['difficult']")
        )
        if not np.all(np.isfinite(ps)):
            raise ValueError(f"predictions[{i}]['scores']: NaN or infinite score")
        preds.append((pb, ps, pl))
        gts.append((tb, tl, td))
    return preds, gts


# ----------------------------------------------------------------------------- COCO
def _coco_match(dt_boxes, dt_scores, gt_boxes, gt_crowd, area_range, max_det):
    """COCOeval.evaluateImg for one image, one class, one area range.

    Args:
        dt_boxes: ``(D, 4)``, dt_scores: ``(D,)`` -- this image's detections of the class.
        gt_boxes: ``(G, 4)``, gt_crowd: ``(G,)`` bool -- its ground truth of the class.
        area_range: ``(lo, hi)``; boxes outside are ignored.
        max_det: detections kept, best first.

    Returns:
        ``(scores (D',), matched (T, D') bool, dt_ignore (T, D') bool, gt_ignore (G,) bool)``,
        detections sorted by decreasing score (stable), ``D' = min(D, max_det)``.
    """
    order = np.argsort(-dt_scores, kind="mergesort")[:max_det]
    dt_boxes, dt_scores = dt_boxes[order], dt_scores[order]
    lo, hi = area_range
    gt_area = box_area(gt_boxes)
    gt_ignore = gt_crowd | (gt_area < lo) | (gt_area > hi)
    g_order = np.argsort(gt_ignore, kind="mergesort")  # non-ignored first
    gt_boxes, gt_crowd, gt_ignore = gt_boxes[g_order], gt_crowd[g_order], gt_ignore[g_order]
    ious = box_iou(dt_boxes, gt_boxes, gt_crowd)
    n_t, n_d, n_g = len(IOU_THRESHOLDS), len(dt_boxes), len(gt_boxes)
    matched = np.zeros((n_t, n_d), bool)
    dt_ignore = np.zeros((n_t, n_d), bool)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    gt_taken = np.zeros((n_t, n_g), bool)  # per threshold: which boxes are matched
    rows = np.arange(n_t)
    can_match = (ious >= thresholds[0, 0]).any(axis=1) if n_g else np.zeros(n_d, bool)
    for d in np.flatnonzero(can_match):  # greedily, best score first; all thresholds at once
        # a candidate is free (crowds always are) and overlaps at least t: (T, G)
        ok = (~gt_taken | gt_crowd) & (ious[d] >= thresholds)
        m = np.full(n_t, -1)
        for group in (~gt_ignore, gt_ignore):  # prefer a non-ignored box
            value = np.where(ok & group, ious[d], -1.0)[:, ::-1]
            best = n_g - 1 - np.argmax(value, axis=1)  # highest IoU; ties: the last box
            found = (m < 0) & (value.max(axis=1) >= 0)
            m = np.where(found, best, m)
        hit = m >= 0
        matched[hit, d] = True
        dt_ignore[hit, d] = gt_ignore[m[hit]]
        gt_taken[rows[hit], m[hit]] = True
    dt_area = box_area(dt_boxes)
    outside = (dt_area < lo) | (dt_area > hi)
    dt_ignore |= ~matched & outside[None, :]
    return dt_scores, matched, dt_ignore, gt_ignore


def _coco_accumulate(per_image, max_det):
    """COCOeval.accumulate for one class and area: precision ``(T, R)`` and recall ``(T,)``.

    Args:
        per_image: list of :func:`_coco_match` results (images with neither
            detections nor ground truth left out).
        max_det: detections per image kept.

    Returns:
        ``(precision, recall)``, or ``(None, None)`` if there is no non-ignored ground truth.
    """
    if not per_image:
        return None, None
    scores = np.concatenate([r[0][:max_det] for r in per_image])
    matched = np.concatenate([r[1][:, :max_det] for r in per_image], axis=1)
    dt_ignore = np.concatenate([r[2][:, :max_det] for r in per_image], axis=1)
    n_pos = int(sum(np.count_nonzero(~r[3]) for r in per_image))
    if n_pos == 0:
        return None, None
    order = np.argsort(-scores, kind="mergesort")
    matched, dt_ignore = matched[:, order], dt_ignore[:, order]
    tp = np.cumsum(matched & ~dt_ignore, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~dt_ignore, axis=1, dtype=np.float64)
    n_t, n_d = tp.shape
    precision = np.zeros((n_t, len(RECALL_POINTS)))
    recall = np.zeros(n_t)
    for ti in range(n_t):
        rc = tp[ti] / n_pos
        pr = tp[ti] / (fp[ti] + tp[ti] + np.spacing(1))
        recall[ti] = rc[-1] if n_d else 0.0
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone envelope from the right
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        valid = idx < n_d
        precision[ti, valid] = pr[idx[valid]]
    return precision, recall


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else -1.0


def _coco(preds, gts) -> dict:
    labels = sorted(set(np.concatenate([t[1] for t in gts] + [np.zeros(0, np.int64)]).tolist()))
    ap = {area: {} for area in AREA_RANGES}  # area -> label -> (T, R) precision
    ar = {m: {} for m in MAX_DETECTIONS}  # max_det -> label -> (T,) recall
    for label in labels:
        for area, rng in AREA_RANGES.items():
            per_image = []
            for (pb, ps, pl), (tb, tl, td) in zip(preds, gts):
                dm, gm = pl == label, tl == label
                if not dm.any() and not gm.any():
                    continue
                per_image.append(
                    _coco_match(pb[dm], ps[dm], tb[gm], td[gm], rng, MAX_DETECTIONS[-1])
                )
            for max_det in MAX_DETECTIONS:
                if area != "all" and max_det != MAX_DETECTIONS[-1]:
                    continue
                precision, recall = _coco_accumulate(per_image, max_det)
                if max_det == MAX_DETECTIONS[-1]:
                    ap[area][label] = precision
                if area == "all":
                    ar[max_det][label] = recall
    have = [k for k, v in ap["all"].items() if v is not None]

    def mean_ap(area, t=None):
        return _mean(
            [
                None if p is None else float(p.mean() if t is None else p[t].mean())
                for p in ap[area].values()
            ]
        )

    return {
        "map": mean_ap("all"),
        "map50": mean_ap("all", 0),
        "map75": mean_ap("all", 5),
        "map_small": mean_ap("small"),
        "map_medium": mean_ap("medium"),
        "map_large": mean_ap("large"),
        **{
            f"mar_{m}": _mean([None if r is None else float(r.mean()) for r in ar[m].values()])
            for m in MAX_DETECTIONS
        },
        "per_class": {int(k): float(ap["all"][k].mean()) for k in have},
        "per_class50": {int(k): float(ap["all"][k][0].mean()) for k in have},
    }


# ----------------------------------------------------------------------------- VOC
def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (detections in decreasing score order).

    Args:
        recall, precision: ``(D,)`` float64.
        use_07_metric: 11-point ``mean_{r in 0, 0.1, .., 1} max(precision[recall >= r])``
            (0 where no point reaches ``r``); else the area under the monotone envelope
            of the curve extended with ``(0, 0)`` and ``(1, 0)``.
    """
    if use_07_metric:
        points = [
            precision[recall >= r].max() if np.any(recall >= r) else 0.0
            for r in np.arange(0.0, 1.1, 0.1)
        ]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _voc_class(preds, gts, label, use_07_metric, iou_threshold=0.5):
    """VOC AP of one class, or None without non-difficult ground truth."""
    n_pos = sum(int(np.count_nonzero((tl == label) & ~td)) for _, tl, td in gts)
    if n_pos == 0:
        return None
    image_idx, scores, boxes = [], [], []
    for i, (pb, ps, pl) in enumerate(preds):
        m = pl == label
        image_idx.append(np.full(int(m.sum()), i))
        scores.append(ps[m])
        boxes.append(pb[m])
    image_idx, scores, boxes = (
        np.concatenate(image_idx),
        np.concatenate(scores),
        np.concatenate(boxes),
    )
    order = np.argsort(-scores, kind="mergesort")
    taken = [np.zeros(int(np.count_nonzero(tl == label)), bool) for _, tl, _ in gts]
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, d in enumerate(order):
        tb, tl, td = gts[image_idx[d]]
        gm = tl == label
        if not gm.any():
            fp[k] = 1
            continue
        ious = box_iou(boxes[d : d + 1], tb[gm])[0]
        j = int(np.argmax(ious))
        if ious[j] > iou_threshold:
            if td[gm][j]:
                continue  # difficult: neither a hit nor a miss
            if not taken[image_idx[d]][j]:
                tp[k] = 1
                taken[image_idx[d]][j] = True
            else:
                fp[k] = 1  # a duplicate of a box already found
        else:
            fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / n_pos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric)


def _voc(preds, gts, use_07_metric) -> dict:
    labels = sorted(set(np.concatenate([t[1] for t in gts] + [np.zeros(0, np.int64)]).tolist()))
    per_class = {}
    for label in labels:
        ap = _voc_class(preds, gts, label, use_07_metric)
        if ap is not None:
            per_class[int(label)] = ap
    return {"map50": _mean(per_class.values()), "per_class": per_class}


# ----------------------------------------------------------------------------- API
def evaluate(predictions: list, targets: list, metric: str = "coco") -> dict:
    """Mean average precision of ``predictions`` against ``targets`` (see the module docstring).

    Args:
        predictions: one dict per image: ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)``.
        targets: one dict per image: ``boxes (G, 4)``, ``labels (G,)``, optional
            ``difficult (G,)`` bool.
        metric: ``"coco"``, ``"voc07"`` or ``"voc"``.

    Returns:
        A dict of floats: ``map``, ``map50``, ``map75``, ``map_small``, ``map_medium``,
        ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``per_class``,
        ``per_class50`` for ``"coco"``; ``map50`` and ``per_class`` for the VOC metrics.
        ``per_class`` maps a label to its AP.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    preds, gts = _prepare(predictions, targets)
    if metric == "coco":
        return _coco(preds, gts)
    return _voc(preds, gts, use_07_metric=(metric == "voc07"))
