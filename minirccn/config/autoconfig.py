"""Defaults derived from the data: image size, anchors, stride, steps and schedule.

The ``tiny`` preset's numbers were tuned on ``shapes`` (128x128 images, objects
of 8-80 px). For any other dataset :func:`derive` looks at the training images
and their boxes and picks, printing every choice (``minirccn train`` and
``minirccn config show --data D``) and recording it in ``metrics.json``:

1. **Image size.** ``scale`` makes the 10th percentile of the boxes' shorter
   sides :data:`SMALL_OBJECT_PX` pixels, and the images' median shorter side
   times ``scale`` becomes ``min_size``, clamped to
   ``[MIN_SHORT_SIDE, MAX_SHORT_SIDE]`` (a CPU-friendly cap) and never above
   the median shorter side itself (no upsampling of whole datasets);
   ``max_size = min_size * median(long / short)``, capped at :data:`MAX_LONG_SIDE`.
   Small objects outrank the cap: the images are never shrunk so far that the
   10th-percentile shorter side falls under :data:`KEEP_SMALL_PX` pixels (up to the
   native size, at most :data:`MAX_KEEP_SHORT_SIDE` x :data:`MAX_KEEP_LONG_SIDE`):
   12-px nuclei shrunk to 10 px lose more than the extra steps buy
   (docs/real_data.md).
2. **Anchors at that scale.** Box sides ``w, h`` times the resize scale of their
   image. Sizes: geometric steps of x2 from the 5th to the 95th percentile of
   ``sqrt(w h)`` (at least 2, at most 5 sizes; none below :data:`MIN_ANCHOR`).
   Aspect ratios (``h / w``): the 10th, 50th and 90th percentiles of ``h / w``,
   merged when closer than a factor 1.4 (so square-only data gets ``(1.0,)``),
   with ratios inserted (geometrically) where two neighbours are more than a
   factor 3 apart; at most 5, rounded to 2 digits.
3. **Stride.** The largest of 4, 8, 16 with ``2 * stride <=`` the 10th percentile
   of the scaled boxes' sides ``sqrt(w h)``: the small objects are at least two
   feature-map cells wide. The tiny stack drops pools to get it.
4. **Steps and schedule.** A fixed cost model of one training step
   (:func:`step_seconds`: seconds on an idle 2-core CPU as a function of the input
   pixels and the stride, measured once) turns the time budget (``--minutes``,
   default :data:`DEFAULT_MINUTES` minutes of training) into a number of steps,
   at most :data:`MAX_EPOCHS` passes over the data; deterministic: the same data
   and budget always give the same number. The schedule scales with it: warmup
   ``min(200, iters/10)``, batch norm frozen from 60 %, LR x0.1 at 80 %
   (the tiny preset's proportions).
5. **Augmentation.** Colour jitter and random scale + crop on when the steps
   visit every training image at least :data:`AUGMENT_EPOCHS` times (small data
   sets, where the network would otherwise memorise the images); for a short
   pass over many images they only slow learning down. Vertical flips and
   90-degree rotations stay off (they change what "up" means; turn them on with
   ``--set`` for overhead imagery).
6. **RoI pooling.** RoIAlign (bilinear samples, half-pixel aligned) instead of the
   preset's RoI max pooling: on the real nuclei sets of docs/real_data.md, where the
   objects span 3-12 cells of the feature map, max pooling's rounding to whole cells
   costs a tenth of COCO mAP.
7. **The box head's NMS.** ``box_nms_thresh`` 0.6 instead of the preset's 0.5: real
   objects of one class touch and overlap (nuclei, cells, fruit, cars in a row), and at
   0.5 NMS merges the detections of neighbours whose boxes overlap by IoU 0.5-0.6. On the
   two nuclei sets of docs/real_data.md (four seeds each) and on ``shapes`` exported as
   COCO it lost nothing on mAP@0.5, COCO mAP or mAR@100 and gained up to 0.01.
8. **Proposals at inference.** The RPN keeps :data:`PROPOSALS_PER_OBJECT` proposals after
   NMS per object of a crowded training image (the 95th percentile of the objects per
   image), at least :data:`TEST_PROPOSALS` (the preset: 100), at most
   :data:`MAX_TEST_PROPOSALS`, and :data:`PRE_NMS_FACTOR` times as many before NMS: with 15-45
   objects per image, 100 proposals leave objects without one (docs/real_data.md: recall
   and mAP@0.5 rise up to 200-500 proposals on every real set, most on the densest).
9. **The score threshold of the evaluated detections.** ``box_score_thresh`` 0.001 instead
   of 0.05: detections scoring 0.001-0.05 are the tail of the precision-recall curve, where
   a found object still raises recall and AP (the usual COCO evaluation practice). What
   ``minirccn detect`` writes and draws is cut at its own ``--score-thresh`` (0.5), as are
   the training run's ``detections.png``.

The caps and rule 5 rest on one measured composite set of real photographs (numbers:
docs/presets.md, "Defaults derived from the data").

``shapes`` gets none of this: its preset is its tuned config.
"""

from __future__ import annotations

import math

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.data.transforms import resize_scale

SMALL_OBJECT_PX = 32.0  # the 10th-percentile object's shorter side, pixels, after resizing
MIN_SHORT_SIDE = 128  # input shorter side never below this (unless the images are smaller)
MAX_SHORT_SIDE = 160  # the CPU-friendly cap of the shorter side
MAX_LONG_SIDE = 224  # ... and of the longer side
KEEP_SMALL_PX = 16.0  # ... which small objects override: their 10th-percentile shorter side
MAX_KEEP_SHORT_SIDE = 256  # how far they may override it: shorter side
MAX_KEEP_LONG_SIDE = 320  # ... and longer side
DEFAULT_MINUTES = 5.0  # training budget when neither --iters nor --minutes is given
MAX_EPOCHS = 150  # at most this many passes over the training images
AUGMENT_EPOCHS = 12  # augmentation on when the steps visit each image at least this often
EVALUATIONS = 8  # validation evaluations during training (eval_every = iters / this)
MAX_STAT_IMAGES = 400  # images read to gather the statistics (evenly spaced)
MIN_ANCHOR = 8  # smallest anchor side, pixels (two cells of the finest stride)

#: augmentation turned on for data other than shapes (rule 5)
#: the RoI pooling of every derived config (rule 6)
ROI_POOL = {"box_roi_pool": "roi_align", "box_roi_pool_aligned": True}
#: the box head's NMS IoU threshold (rule 7) and score threshold (rule 9) of every derived config
BOX_HEAD = {"box_nms_thresh": 0.6, "box_score_thresh": 0.001}
TEST_PROPOSALS = 500  # rule 8: proposals kept after NMS at inference, at least
PROPOSALS_PER_OBJECT = 10  # ... or this many per object of a crowded image (95th percentile)
MAX_TEST_PROPOSALS = 1000  # ... at most
PRE_NMS_FACTOR = 3  # proposals kept before NMS per one kept after (the tiny preset's 300 / 100)

AUGMENT = {
    "jitter_brightness": 0.2,
    "jitter_contrast": 0.2,
    "jitter_saturation": 0.2,
    "jitter_hue": 0.02,
    "scale_jitter": (0.8, 1.25),
}

#: cost model of one training step of the tiny stack (seconds, idle 2-core AMD EPYC, numba,
#: one BLAS thread): ``a + b * pixels * (1 + c * 16 / stride**2)``, least squares on timed
#: runs of the own-data defaults with issue 22's Winograd convs (dsb at stride 4, cardio at
#: 8; 128, 192 and 256 px; whole 5-minute runs' steps are slower than a 600-step run's, and the
#: fit follows the whole runs), then x1.1 so that a run's training leaves room for its
#: validations and this VM's drift inside the budget (docs/real_data.md, "The budget")
STEP_COST = {"a": 0.021, "b": 6.9e-7, "c": 0.47}


def step_seconds(height: int, width: int, stride: int, images_per_batch: int = 1) -> float:
    """Modelled seconds of one SGD step of the tiny stack on ``height x width`` inputs."""
    px = float(height) * float(width)
    per_image = STEP_COST["a"] + STEP_COST["b"] * px * (1.0 + STEP_COST["c"] * 16.0 / stride**2)
    return per_image * int(images_per_batch)


def _percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def data_statistics(dataset, max_images: int = MAX_STAT_IMAGES) -> dict:
    """Image sizes and box sides of (up to ``max_images`` evenly spaced) training images.

    Returns:
        dict ``heights``, ``widths`` ``(I,)`` int, ``box_w``, ``box_h`` ``(B,)`` float64 (in the
        images' own pixels), ``box_image`` ``(B,)`` int (which image), ``num_images`` (all).
    """
    n = len(dataset)
    if n == 0:
        raise MinirccnError(f"{dataset.name}: the training data has no images")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
    hs, ws, bw, bh, bi = [], [], [], [], []
    for i in idx:
        try:
            s = dataset[int(i)]
        except MinirccnError:  # an unreadable image: the preflight check names and skips it
            continue
        k = len(hs)
        h, w = s["image"].shape[:2]
        hs.append(h)
        ws.append(w)
        b = np.asarray(s["boxes"], np.float64).reshape(-1, 4)
        b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
        bw.extend(b[:, 2] - b[:, 0])
        bh.extend(b[:, 3] - b[:, 1])
        bi.extend([k] * len(b))
    if not hs:
        raise MinirccnError(f"{dataset.name}: none of its images is readable")
    return {
        "heights": np.array(hs),
        "widths": np.array(ws),
        "box_w": np.array(bw, np.float64),
        "box_h": np.array(bh, np.float64),
        "box_image": np.array(bi, np.int64),
        "num_images": n,
    }


def choose_image_size(stats: dict) -> tuple:
    """``(min_size, max_size)`` (rule 1 of the module docstring)."""
    min_size, max_size, _ = _image_size(stats)
    return min_size, max_size


def _image_size(stats: dict) -> tuple:
    """``(min_size, max_size, reason)``: rule 1 and why, in words."""
    short = np.minimum(stats["heights"], stats["widths"]).astype(np.float64)
    long = np.maximum(stats["heights"], stats["widths"]).astype(np.float64)
    med_short = float(np.median(short))
    keep = 0.0
    if len(stats["box_w"]):
        scaled_short = np.minimum(stats["box_w"], stats["box_h"])
        # relative to the image's shorter side, so images of mixed sizes compare
        rel = max(_percentile(scaled_short / short[stats["box_image"]], 10), 1e-6)
        want = SMALL_OBJECT_PX / rel
        keep = KEEP_SMALL_PX / rel  # the size that keeps the small objects KEEP_SMALL_PX wide
    else:
        want = med_short
    capped = min(max(want, MIN_SHORT_SIDE), MAX_SHORT_SIDE, med_short)
    kept = min(keep, med_short, MAX_KEEP_SHORT_SIDE)
    min_size = max(capped, kept)
    min_size = int(max(round(min_size / 8) * 8, 32))
    aspect = float(np.median(long / short))
    long_cap = MAX_KEEP_LONG_SIDE if kept > capped else MAX_LONG_SIDE
    max_size = int(min(max(round(min_size * aspect / 8) * 8, min_size), long_cap))
    p10 = SMALL_OBJECT_PX * med_short / want if len(stats["box_w"]) else None
    if p10 is None:
        reason = "no boxes: the images' own size, within the CPU cap"
    elif kept > capped:
        reason = (
            f"small objects: their 10th-percentile shorter side is {p10:.1f} px in the images; "
            f"the {MAX_SHORT_SIDE}-px CPU cap would shrink it under {KEEP_SMALL_PX:g} px, so the "
            + ("images keep their own size" if kept >= med_short else
               f"images shrink only to {min_size} px (at most {MAX_KEEP_SHORT_SIDE})")
        )
    elif capped >= med_short:
        reason = (
            f"the images' own size (no upsampling; the 10th-percentile object's shorter side "
            f"is {p10:.1f} px)"
        )
    elif capped >= MAX_SHORT_SIDE:
        reason = (
            f"the {MAX_SHORT_SIDE}-px CPU cap: {want:.0f} px would make the 10th-percentile "
            f"object's shorter side ({p10:.1f} px in the images) {SMALL_OBJECT_PX:g} px; at the "
            f"cap it is {p10 * min_size / med_short:.1f} px, at least {KEEP_SMALL_PX:g}"
        )
    elif capped <= MIN_SHORT_SIDE:
        reason = f"the {MIN_SHORT_SIDE}-px floor: the objects are large"
    else:
        reason = f"makes the 10th-percentile object's shorter side {SMALL_OBJECT_PX:g} px"
    return min_size, max_size, reason


def scaled_boxes(stats: dict, min_size: int, max_size: int) -> tuple:
    """Box widths and heights ``(B,)`` after each image is resized by torchvision's rule."""
    scales = np.array(
        [resize_scale(h, w, min_size, max_size) for h, w in zip(stats["heights"], stats["widths"])]
    )
    s = scales[stats["box_image"]] if len(stats["box_image"]) else np.zeros(0)
    return stats["box_w"] * s, stats["box_h"] * s


def choose_anchors(box_w, box_h) -> tuple:
    """``(anchor_sizes, aspect_ratios)`` from scaled box sides (rule 2)."""
    if len(box_w) == 0:
        return (16, 32, 64), (0.5, 1.0, 2.0)
    side = np.sqrt(box_w * box_h)
    lo, hi = _percentile(side, 5), _percentile(side, 95)
    count = int(np.clip(round(math.log2(max(hi / lo, 1.0))) + 1, 2, 5))
    sizes = np.geomspace(lo, hi, count) if hi > lo else np.array([lo / 1.4, lo * 1.4])
    sizes = tuple(int(max(round(s), MIN_ANCHOR)) for s in sizes)
    sizes = tuple(sorted(set(sizes)))
    log_r = np.log(box_h / box_w)
    ratios = []
    for q in (10, 50, 90):
        r = _percentile(log_r, q)
        if not ratios or r - ratios[-1] > math.log(1.4):
            ratios.append(r)
    filled = [ratios[0]]
    for r in ratios[1:]:  # no gap wider than a factor 3 between neighbouring ratios
        gap = r - filled[-1]
        steps = int(math.ceil(gap / math.log(3.0)))
        filled.extend(filled[-1] + gap * np.arange(1, steps + 1) / steps)
    aspect = tuple(round(float(np.exp(r)), 2) for r in filled[:5])
    return sizes, aspect


def choose_stride(box_w, box_h) -> int:
    """The largest of 4, 8, 16 with the small objects at least two cells wide (rule 3)."""
    if len(box_w) == 0:
        return 8
    small = _percentile(np.sqrt(box_w * box_h), 10)
    for stride in (16, 8):
        if 2 * stride <= small:
            return stride
    return 4


def objects_per_image(stats: dict) -> np.ndarray:
    """``(I,)`` int: the boxes of each image read (images without boxes count 0)."""
    return np.bincount(stats["box_image"], minlength=len(stats["heights"]))


def choose_test_proposals(p95: float) -> dict:
    """Rule 8: ``rpn_post_nms_top_n_test = clip(PROPOSALS_PER_OBJECT * p95, TEST_PROPOSALS,
    MAX_TEST_PROPOSALS)`` (rounded up to a multiple of 50; ``p95``: the 95th percentile of
    :func:`objects_per_image`) and ``rpn_pre_nms_top_n_test = PRE_NMS_FACTOR * post``."""
    per_object = int(math.ceil(PROPOSALS_PER_OBJECT * p95 / 50.0)) * 50
    post = int(min(max(TEST_PROPOSALS, per_object), MAX_TEST_PROPOSALS))
    return {"rpn_pre_nms_top_n_test": PRE_NMS_FACTOR * post, "rpn_post_nms_top_n_test": post}


def backbone_stages(stride: int) -> tuple:
    """The tiny preset's stack with the pools that give ``stride`` (4, 8 or 16)."""
    return ((16, 1, True), (32, 1, True), (64, 1, stride >= 8), (64, 1, stride >= 16))


def schedule(iters: int) -> dict:
    """Warmup, batch-norm freeze and LR step at the tiny preset's proportions of ``iters``."""
    iters = int(iters)
    return {
        "iters": iters,
        "warmup_iters": int(min(200, max(iters // 10, 1))),
        "bn_freeze_iter": int(round(0.6 * iters)),
        "milestones": (int(round(0.8 * iters)),),
    }


def steps_for_budget(minutes: float, min_size, max_size, stride, images_per_batch, num_images):
    """SGD steps that fit ``minutes`` of training by :func:`step_seconds` (deterministic)."""
    if not (minutes > 0 and math.isfinite(minutes)):
        raise MinirccnError(f"--minutes: expected a positive finite number, got {minutes}")
    per_step = step_seconds(min_size, max_size, stride, images_per_batch)
    steps = int(minutes * 60.0 / per_step)
    cap = int(math.ceil(MAX_EPOCHS * num_images / images_per_batch))
    return max(min(steps, cap), 1)


def derive(
    dataset, minutes: float | None = None, images_per_batch: int = 1, iters: int | None = None
) -> tuple:
    """Config fields derived from ``dataset`` (module docstring), and a report of why.

    Args:
        dataset: the training dataset.
        minutes: training budget (None: :data:`DEFAULT_MINUTES`).
        images_per_batch: images per step (the cost model counts them).
        iters: a number of steps the user chose (the schedule follows it; no budget).

    Returns:
        ``(fields, report)``: a dict of config fields, and a dict of the statistics and
        choices (JSON-serialisable) for printing and for ``metrics.json``.
    """
    stats = data_statistics(dataset)
    min_size, max_size, size_reason = _image_size(stats)
    bw, bh = scaled_boxes(stats, min_size, max_size)
    sizes, ratios = choose_anchors(bw, bh)
    stride = choose_stride(bw, bh)
    objects_p95 = _percentile(objects_per_image(stats), 95)
    budget = DEFAULT_MINUTES if minutes is None else float(minutes)
    capped = False
    if iters is None:
        iters = steps_for_budget(
            budget, min_size, max_size, stride, images_per_batch, len(dataset)
        )
        # the budget buys more steps than MAX_EPOCHS passes over the data: say so, and
        # report the minutes the capped steps take, not the ones asked for
        full = int(budget * 60.0 / step_seconds(min_size, max_size, stride, images_per_batch))
        if full > iters:
            capped = True
            budget = round(iters * step_seconds(min_size, max_size, stride, images_per_batch) / 60, 2)
    else:
        budget = round(int(iters) * step_seconds(min_size, max_size, stride, images_per_batch) / 60, 2)
    epochs = int(iters) * int(images_per_batch) / max(len(dataset), 1)
    fields = {
        "min_size": min_size,
        "max_size": max_size,
        "anchor_sizes": sizes,
        "aspect_ratios": ratios,
        "backbone_stages": backbone_stages(stride),
        "images_per_batch": int(images_per_batch),
        **(AUGMENT if epochs >= AUGMENT_EPOCHS else {}),
        **ROI_POOL,
        **BOX_HEAD,
        **choose_test_proposals(objects_p95),
        **schedule(iters),
        "eval_every": max(int(iters) // EVALUATIONS, 1),
    }
    short = np.minimum(stats["heights"], stats["widths"])
    report = {
        "images": int(stats["num_images"]),
        "images_read": int(len(stats["heights"])),
        "boxes_read": int(len(bw)),
        "median_image_hw": [int(np.median(stats["heights"])), int(np.median(stats["widths"]))],
        "median_short_side": float(np.median(short)),
        "image_size_reason": size_reason,
        "box_side_at_scale_p5_p50_p95": [
            round(_percentile(np.sqrt(bw * bh), q), 1) if len(bw) else None for q in (5, 50, 95)
        ],
        "box_side_at_scale_p10": round(_percentile(np.sqrt(bw * bh), 10), 1)
        if len(bw)
        else None,
        "box_ratio_p10_p50_p90": [
            round(float(np.exp(_percentile(np.log(bh / bw), q))), 2) if len(bw) else None
            for q in (10, 50, 90)
        ],
        "stride": stride,
        "objects_per_image_p95": round(objects_p95, 1),
        "minutes": budget,
        "modelled_step_seconds": round(step_seconds(min_size, max_size, stride, images_per_batch), 4),
        "epochs": round(epochs, 1),
        "capped_at_epochs": MAX_EPOCHS if capped else None,
        "minutes_asked": float(minutes) if capped and minutes is not None else None,
        "fields": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
    }
    return fields, report


def format_report(report: dict) -> str:
    """The derived defaults as the lines ``minirccn train`` prints before training."""
    f = report["fields"]
    p5, p50, p95 = report["box_side_at_scale_p5_p50_p95"]
    r10, r50, r90 = report.get("box_ratio_p10_p50_p90") or (None, None, None)
    ratios = (
        f"; ratios h/w: 10%={r10} 50%={r50} 90%={r90}, merged when within x1.4"
        if r50 is not None
        else ""
    )
    lines = [
        f"derived from the data ({report['images']} images, statistics of "
        f"{report['images_read']} images / {report['boxes_read']} boxes):",
        f"  image size      min_size={f['min_size']} max_size={f['max_size']} "
        f"(median image {report['median_image_hw'][0]}x{report['median_image_hw'][1]}; "
        f"{report.get('image_size_reason', '')})",
        f"  anchors         anchor_sizes={tuple(f['anchor_sizes'])} "
        f"aspect_ratios={tuple(f['aspect_ratios'])} (sizes in x2 steps over the box side "
        f"sqrt(w h) at that scale: 5%={p5} 50%={p50} 95%={p95} px{ratios})",
        f"  stride          {report['stride']} (small boxes, 10th percentile "
        f"{report['box_side_at_scale_p10']} px, at least two cells wide)",
        f"  steps           iters={f['iters']} for {report['minutes']:g} min at a modelled "
        f"{report['modelled_step_seconds']} s/step; warmup {f['warmup_iters']}, batch norm "
        f"frozen from {f['bn_freeze_iter']}, LR x0.1 at {f['milestones'][0]}, "
        f"validation every {f['eval_every']} ({EVALUATIONS} evaluations)"
        + (
            f" (capped at {report['capped_at_epochs']} passes over the data: "
            + (
                f"--minutes {report['minutes_asked']:g} asked for more"
                if report.get("minutes_asked")
                else "the time budget buys more"
            )
            + ")"
            if report.get("capped_at_epochs")
            else ""
        ),
        f"  RoI pooling     box_roi_pool={f['box_roi_pool']} aligned="
        f"{str(f['box_roi_pool_aligned']).lower()} (bilinear, not rounded to whole cells: "
        f"small objects cover few cells)",
        f"  box head        box_nms_thresh={f['box_nms_thresh']} (neighbouring objects of a "
        f"class overlap: 0.5 merges the boxes of some touching ones); box_score_thresh="
        f"{f['box_score_thresh']:g} (low-scoring detections still add recall to the evaluation; "
        f"detect draws and writes those >= its --score-thresh)",
        f"  proposals       rpn_pre_nms_top_n_test={f['rpn_pre_nms_top_n_test']} "
        f"rpn_post_nms_top_n_test={f['rpn_post_nms_top_n_test']} at inference (at least "
        f"{TEST_PROPOSALS}, {PROPOSALS_PER_OBJECT} per object of a crowded image: 95th "
        f"percentile {report.get('objects_per_image_p95')} objects per image)",
        "  augmentation    "
        + (
            " ".join(f"{k}={tuple(f[k]) if isinstance(f[k], list) else f[k]}" for k in AUGMENT)
            + f" ({report['epochs']:g} passes over the data), and the horizontal flip"
            if "jitter_hue" in f
            else f"the horizontal flip only ({report['epochs']:g} passes over the data, "
            f"fewer than {AUGMENT_EPOCHS})"
        ),
    ]
    return "\n".join(lines)
