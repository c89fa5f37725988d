# %% [markdown]
# # Tutorial 1: boxes and intersection over union (IoU)
#
# A detector's input and output are boxes. Before anything else we need two
# things to be exact: how a box is written down, and how much two boxes
# overlap. IoU decides almost everything in Faster R-CNN: which anchors are
# positive, which proposals the proposal layer's NMS removes, which
# detections the final per-class NMS removes, which RoIs are foreground and
# whether a detection counts as a hit in the evaluation. The thresholds are
# config fields; the first cell prints them from the `tiny` preset (the table
# of every target-assignment rule is in `tutorials/RULES.md`).
#
# Run it as a script (`python tutorials/01_boxes_and_iou.py`) or open it as a
# notebook (jupytext reads the `# %%` cells).

# %%
import numpy as np
from PIL import Image, ImageDraw

import _common as T
from minirccn import ops
from minirccn.config import preset
from minirccn.evaluation import IOU_THRESHOLDS

rng = np.random.default_rng(0)
cfg = preset("tiny")
print(f"anchor positive (RPN):          IoU >= {cfg.rpn_fg_iou_thresh}  (rpn_fg_iou_thresh)")
print(f"proposal-layer NMS removes:     IoU >  {cfg.rpn_nms_thresh}  (rpn_nms_thresh)")
print(f"final per-class NMS removes:    IoU >  {cfg.box_nms_thresh}  (box_nms_thresh; the original Caffe code: 0.3)")
print(f"RoI foreground (head):          IoU >= {cfg.box_fg_iou_thresh}  (box_fg_iou_thresh)")
print(f"evaluation hit (COCO):          IoU >= {IOU_THRESHOLDS[0]:.2f} ... {IOU_THRESHOLDS[-1]:.2f}")

# %% [markdown]
# ## 1. Three ways to write a box
#
# | name | numbers | used by |
# | --- | --- | --- |
# | `xyxy` | `(x1, y1, x2, y2)`: two corners | minirccn, torchvision, Pascal VOC |
# | `cxcywh` | `(cx, cy, w, h)`: centre and size | the box coder (deltas), YOLO |
# | `xywh` | `(x, y, w, h)`: top-left corner and size | COCO json |
#
# minirccn uses `xyxy` in **continuous pixel coordinates**: pixel `(row r,
# column c)` covers the square `[c, c+1) x [r, r+1)`. A box covering pixel
# columns 10..29 is `x1 = 10, x2 = 30`, and its width is `x2 - x1 = 20`, with
# no "+1". The conversions are one line each:


# %%
def xyxy_to_cxcywh(b):
    """(N, 4) xyxy -> (N, 4) cxcywh."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.stack([b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h], axis=1)


def cxcywh_to_xyxy(b):
    """(N, 4) cxcywh -> (N, 4) xyxy."""
    return np.stack(
        [
            b[:, 0] - 0.5 * b[:, 2],
            b[:, 1] - 0.5 * b[:, 3],
            b[:, 0] + 0.5 * b[:, 2],
            b[:, 1] + 0.5 * b[:, 3],
        ],
        axis=1,
    )


def xyxy_to_xywh(b):
    """(N, 4) xyxy -> (N, 4) xywh (COCO)."""
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


box = np.array([[10.0, 20.0, 30.0, 60.0]])
print("xyxy   ", box[0])
print("cxcywh ", xyxy_to_cxcywh(box)[0])
print("xywh   ", xyxy_to_xywh(box)[0])
T.check(
    np.array_equal(cxcywh_to_xyxy(xyxy_to_cxcywh(box)), box),
    "xyxy -> cxcywh -> xyxy is the identity",
)
T.check(ops.box_area(box)[0] == 20 * 40, "box_area = (x2 - x1) * (y2 - y1) = 20 * 40")

# %% [markdown]
# ## 2. IoU, the maths
#
# For boxes `a` and `b`:
#
#     inter = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
#     union = area(a) + area(b) - inter
#     IoU   = inter / union        (minirccn: 0 when union == 0)
#
# IoU is 1 for identical boxes of non-zero area (two identical zero-area boxes
# have union 0: minirccn gives 0, section 4), 0 for disjoint ones, and symmetric. The
# `max(0, ...)` is what makes disjoint boxes give 0 rather than a negative
# "intersection".
#
# ## 3. A naive loop


# %%
def iou_loop(boxes1, boxes2):
    """Pairwise IoU, one pair at a time, in plain Python (the formula above, in the same order)."""
    out = np.zeros((len(boxes1), len(boxes2)), dtype=np.float64)
    for i, (ax1, ay1, ax2, ay2) in enumerate(boxes1.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(boxes2.tolist()):
            w = max(min(ax2, bx2) - max(ax1, bx1), 0.0)
            h = max(min(ay2, by2) - max(ay1, by1), 0.0)
            inter = w * h
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union if union != 0 else 0.0
    return out


a = np.array([[0.0, 0.0, 4.0, 4.0]])
b = np.array([[2.0, 1.0, 6.0, 5.0]])
print("inter = 2 * 3 = 6, union = 16 + 16 - 6 = 26, IoU = 6/26 =", 6 / 26)
print("iou_loop:", iou_loop(a, b)[0, 0])

# %% [markdown]
# ## 4. The vectorised reference: `minirccn.ops.box_iou`
#
# `minirccn.ops.boxes.box_iou_reference` computes all `N x M` pairs at once by
# broadcasting `(N, 1, 2)` corners against `(1, M, 2)` corners. We check it on
# random boxes plus the awkward cases: identical boxes, boxes touching along an
# edge (IoU 0), a box inside another, zero-area boxes (union 0: IoU 0, where
# torchvision would give NaN) and boxes partly off the image (negative
# coordinates are fine: IoU does not know about images).

# %%
n = T.pick(300, 60)
xy = rng.uniform(-20, 200, size=(n, 2))
wh = rng.uniform(0, 80, size=(n, 2))
random_boxes = np.concatenate([xy, xy + wh], axis=1)
awkward = np.array(
    [
        [0, 0, 10, 10],  # the reference box
        [0, 0, 10, 10],  # identical: IoU 1
        [10, 0, 20, 10],  # touches the right edge: IoU 0
        [2, 2, 5, 5],  # inside: IoU = 9 / 100
        [5, 5, 5, 5],  # zero area (a point)
        [5, 5, 5, 5],  # the same point: union 0 -> IoU 0
        [-8, -8, 2, 2],  # partly off the image
    ],
    dtype=np.float64,
)
boxes = np.concatenate([awkward, random_boxes])

loop = iou_loop(boxes, boxes)
ref = ops.box_iou(boxes, boxes, backend="numpy")
print("IoU of the awkward boxes with each other:\n", np.round(ref[:7, :7], 3))
T.check(
    np.array_equal(loop, ref),
    f"naive loop == box_iou reference, bit for bit, on {len(boxes)}x{len(boxes)} float64 pairs",
)
T.check(
    np.array_equal(ref, ops.box_iou(boxes, boxes, backend="numba")),
    "the Numba kernel gives the same bits (same operations, same order)",
)
ref32 = ops.box_iou(boxes.astype(np.float32), boxes.astype(np.float32), backend="numpy")
gap = np.abs(ref32 - ref).max()
print(
    f"float32 vs float64 IoU: largest difference {gap:.2e} (float32 rounds the coordinates first)"
)
T.check(
    ref32.dtype == np.float32 and gap < 1e-5,
    "float32 boxes give float32 IoU, within 1e-5 of float64",
)
T.check(
    np.allclose(ref, ref.T) and np.all((ref >= 0) & (ref <= 1)),
    "IoU is symmetric and lies in [0, 1]",
)
T.check(
    ref[4, 5] == 0 and ref[0, 2] == 0 and abs(ref[0, 3] - 0.09) < 1e-12,
    "point boxes 0, touching boxes 0, box inside 9/100",
)
# torchvision's box_iou beside it, when torch is importable: the same numbers, except 0 / 0
torch, torchvision = T.torchvision_or_note("box_iou")
if torch is not None:
    tv = torchvision.ops.box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    nan_at = sorted(map(tuple, np.argwhere(np.isnan(tv)).tolist()))
    print(f"torchvision.ops.box_iou: NaN at {nan_at} (the pairs whose union is 0), minirccn: 0 there")
    T.check(
        np.allclose(tv[~np.isnan(tv)], ref[~np.isnan(tv)], rtol=0, atol=1e-12) and np.all(ref[np.isnan(tv)] == 0),
        "torchvision's box_iou equals minirccn's wherever the union is not 0",
    )

# %% [markdown]
# ## 5. The "+1" convention, and why mixing conventions breaks IoU
#
# Older code (Caffe's Faster R-CNN, the VOC devkit) stores **inclusive pixel
# indices**: a box covering pixel columns 10..29 is `x1 = 10, x2 = 29`, and its
# width is `x2 - x1 + 1 = 20`. Both conventions are self-consistent. The bugs
# come from mixing them:
#
# * inclusive boxes fed to the no-"+1" formula look one pixel smaller on each
#   axis;
# * continuous boxes fed to a "+1" formula look one pixel bigger.
#
# One pixel is nothing for a 200-pixel box and everything for a 4-pixel one.
# Take two `s x s` boxes, one shifted right by a single pixel:


# %%
def iou_plus_one(a, b):
    """Legacy IoU with inclusive pixel indices: widths are x2 - x1 + 1 (teaching only)."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0)
    inter = w * h
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


print(f"{'size s':>7} {'true IoU':>9} {'inclusive boxes, no +1':>23} {'continuous boxes, +1':>21}")
rows = []
for s in (2, 4, 8, 16, 64, 256):
    cont = np.array([[0, 0, s, s], [1, 0, s + 1, s]], dtype=np.float64)  # continuous coordinates
    incl = cont - np.array([0, 0, 1, 1])  # the same pixels, inclusive
    true = ops.box_iou(cont[:1], cont[1:])[0, 0]
    mixed_a = ops.box_iou(incl[:1], incl[1:])[0, 0]
    mixed_b = iou_plus_one(cont[0], cont[1])
    consistent = iou_plus_one(incl[0], incl[1])  # inclusive boxes, +1 formula: consistent again
    rows.append((s, true, mixed_a, mixed_b, consistent))
    print(f"{s:7d} {true:9.3f} {mixed_a:23.3f} {mixed_b:21.3f}")
T.check(
    all(np.isclose(r[4], r[1]) for r in rows),
    "inclusive boxes with the +1 formula give the true IoU at every size",
)
s4 = rows[1]
print(
    f"s=4 at NMS threshold {cfg.box_nms_thresh}: true IoU {s4[1]:.3f} suppresses; inclusive boxes "
    f"without +1 give {s4[2]:.3f} (not > {cfg.box_nms_thresh}: both boxes kept);\n"
    f"continuous boxes through the +1 formula give {s4[3]:.3f} (still suppressed, but the IoU is "
    "wrong and a higher threshold would flip it)."
)
T.check(
    s4[1] > cfg.box_nms_thresh >= s4[2] and s4[3] > cfg.box_nms_thresh,
    "s=4: the true IoU and the +1-on-continuous IoU are above the NMS threshold, "
    "the no-+1-on-inclusive IoU is not",
)
T.check(abs(rows[-1][1] - rows[-1][2]) < 0.01, "s=256: the conventions differ by less than 0.01")

# %% [markdown]
# ## 6. A picture
#
# Left: boxes `a` (blue) and `b` (red), their intersection filled. Right: the
# two conventions on a pixel grid: the same 4x4 pixels are `(1, 1, 5, 5)`
# continuous but `(1, 1, 4, 4)` inclusive, and reading the inclusive numbers as
# continuous coordinates loses a row and a column (the dashed box).


# %%
def draw_iou_picture(a, b, scale=40):
    """Two boxes on a grid, intersection filled, IoU written underneath."""
    size = 8 * scale
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img, "RGBA")
    for k in range(9):
        d.line([(k * scale, 0), (k * scale, size)], fill=(225, 225, 225))
        d.line([(0, k * scale), (size, k * scale)], fill=(225, 225, 225))
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    if x2 > x1 and y2 > y1:
        d.rectangle([x1 * scale, y1 * scale, x2 * scale, y2 * scale], fill=(145, 30, 180, 110))
    d.rectangle([v * scale for v in a], outline=(0, 90, 200), width=3)
    d.rectangle([v * scale for v in b], outline=(220, 30, 60), width=3)
    iou = ops.box_iou(np.array([a]), np.array([b]))[0, 0]
    return T.caption(img, f"a = {tuple(a)}, b = {tuple(b)}\ninter 6, union 26, IoU {iou:.3f}")


def draw_conventions(scale=40):
    size = 8 * scale
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img, "RGBA")
    for r in range(8):
        for c in range(8):
            inside = 1 <= r <= 4 and 1 <= c <= 4
            d.rectangle(
                [c * scale, r * scale, (c + 1) * scale, (r + 1) * scale],
                fill=(255, 215, 120) if inside else (250, 250, 250),
                outline=(200, 200, 200),
            )
    d.rectangle([1 * scale, 1 * scale, 5 * scale, 5 * scale], outline=(0, 90, 200), width=3)
    for k in range(1 * scale, 4 * scale, 12):  # dashed: (1, 1, 4, 4) read as continuous
        for p, q in (
            ((k, scale), (k + 6, scale)),
            ((k, 4 * scale), (k + 6, 4 * scale)),
            ((scale, k), (scale, k + 6)),
            ((4 * scale, k), (4 * scale, k + 6)),
        ):
            d.line([p, q], fill=(220, 30, 60), width=3)
    return T.caption(
        img,
        "4x4 pixels: continuous (1,1,5,5), width 4 (blue)\n"
        "inclusive (1,1,4,4) read without +1: width 3 (red)",
    )


a_box, b_box = (1.0, 1.0, 5.0, 5.0), (3.0, 2.0, 7.0, 6.0)
T.check(
    np.isclose(ops.box_iou(np.array([a_box]), np.array([b_box]))[0, 0], 6 / 26),
    "picture: IoU = 6/26",
)
T.save_grid([draw_iou_picture(a_box, b_box), draw_conventions()], "01_iou.png")

# %% [markdown]
# ## Summary
#
# * minirccn boxes are `(x1, y1, x2, y2)` in continuous pixel coordinates;
#   width is `x2 - x1`, no "+1".
# * IoU = intersection / union; `ops.box_iou` computes all pairs at once, the
#   Numba kernel repeats the same operations in the same order and gives the
#   same bits.
# * Mixing the inclusive ("+1") and continuous conventions shifts the IoU of
#   two 4-pixel boxes by 0.07 to 0.1, of 2-pixel boxes by 0.17 to 0.33, and of
#   boxes from 8 pixels up by 0.03 or less (the table of section 5): enough to
#   flip a threshold for small boxes.
#
# ## Exercises
#
# Each exercise has a stub below (a function that raises `NotImplementedError`)
# and a check cell: fill in the stub and re-run; the check prints `passed` or
# what it expected. Run with `MINIRCCN_TUTORIAL_STUDENT=1` while you experiment
# with the code above: a failed `T.check` then reports and the script goes on.
#
# 1. Write IoU for `(cx, cy, w, h)` boxes without converting them first.
# 2. For two `s x s` boxes, the second shifted right by `k` pixels, derive IoU
#    as a function of `s` and `k`, and the smallest whole shift `k` for which
#    IoU falls to 0.5 or below (so NMS at 0.5 no longer removes the copy).
# 3. torchvision's `box_iou` divides by the union without a guard (NaN for two
#    zero-area boxes); minirccn returns 0. Which pairs `(i, j)` of the 7
#    `awkward` boxes of section 4 would give NaN? (Then think: where in the
#    detector could a NaN do harm? An IoU compared with `>=` is False for NaN.)
# 4. Generalised IoU (GIoU) subtracts `(hull - union) / hull`, where `hull` is
#    the area of the smallest box enclosing both. Implement it with NumPy
#    broadcasting; it equals IoU for nested boxes and is negative for
#    distant ones.


# %%
@T.stub
def iou_cxcywh(boxes1, boxes2):
    """(N, 4) and (M, 4) cxcywh boxes -> (N, M) IoU, without converting to xyxy first."""
    raise NotImplementedError


@T.stub
def iou_shifted(s, k):
    """IoU of two s x s boxes, one shifted right by k pixels (0 <= k): a formula in s and k."""
    raise NotImplementedError


@T.stub
def smallest_shift_at_most_half(s):
    """The smallest whole k >= 0 with iou_shifted(s, k) <= 0.5."""
    raise NotImplementedError


@T.stub
def nan_pairs(boxes):
    """Sorted list of the (i, j) pairs whose union is 0 (torchvision's formula gives NaN)."""
    raise NotImplementedError


@T.stub
def giou(boxes1, boxes2):
    """(N, 4), (M, 4) xyxy -> (N, M) generalised IoU, by broadcasting."""
    raise NotImplementedError


# %%
cx_boxes = xyxy_to_cxcywh(boxes[7:27])
T.exercise(
    "1.1",
    lambda: np.allclose(iou_cxcywh(cx_boxes, cx_boxes), ops.box_iou(boxes[7:27], boxes[7:27])),
    "iou_cxcywh == ops.box_iou on the xyxy boxes (to float tolerance)",
)


def _check_shift():
    ok = True
    for s in (4, 8, 30):
        for k in range(0, s + 1):
            pair = np.array([[0, 0, s, s], [k, 0, s + k, s]], dtype=np.float64)
            ok &= bool(np.isclose(iou_shifted(s, k), ops.box_iou(pair[:1], pair[1:])[0, 0]))
    print("  smallest shift with IoU <= 0.5 for s = 3, 4, 30:", [smallest_shift_at_most_half(s) for s in (3, 4, 30)])
    return ok and [smallest_shift_at_most_half(s) for s in (3, 4, 30)] == [1, 2, 10]


T.exercise("1.2", _check_shift, "IoU = (s - k) / (s + k); at most 0.5 from k = s / 3: 1, 2, 10 for s = 3, 4, 30")
T.exercise(
    "1.3",
    lambda: nan_pairs(awkward) == [(4, 4), (4, 5), (5, 4), (5, 5)],
    "4 pairs: the two point boxes (rows 4 and 5) with themselves and each other",
)


def _check_giou():
    outer = np.array([[0.0, 0, 10, 10]])
    inner = np.array([[2.0, 2, 5, 5]])
    far = np.array([[20.0, 0, 30, 10]])  # hull 30 x 10 = 300, union 200: GIoU = 0 - 100/300
    g = giou(np.concatenate([outer, inner]), np.concatenate([inner, far]))
    print(f"  GIoU nested {g[0, 0]:.3f} (IoU 0.090), distant {g[0, 1]:.3f}")
    return g.shape == (2, 2) and np.isclose(g[0, 0], 0.09) and np.isclose(g[0, 1], -1 / 3)


T.exercise("1.4", _check_giou, "nested: GIoU = IoU = 0.090; two 10x10 boxes 10 px apart: -1/3")
