# %% [markdown]
# # Tutorial 2: anchors
#
# The region proposal network (RPN) does not invent boxes from nothing. Every
# cell of the backbone's feature map owns `A` fixed reference boxes, the
# **anchors**, and for each one the RPN predicts two things: is there an object
# here (objectness), and how should this anchor move and stretch to fit it (four
# deltas). Anchors are not learned and have no gradient; they are the grid of
# questions the network answers.
#
# This tutorial builds anchors by hand, checks them against
# `minirccn.detector.anchors.generate_anchors` (which reproduces torchvision's
# `AnchorGenerator` numbers), counts the 1764 anchors of the classic VGG16
# set-up, and draws them on a `shapes` image.

# %%
import numpy as np
from PIL import Image, ImageDraw

import _common as T
from minirccn.detector import anchors
from minirccn import ops, viz
from minirccn.data import load_dataset

# %% [markdown]
# ## 1. Base anchors: `A` boxes centred on (0, 0)
#
# For every aspect ratio `r = height / width` and every size `s` (the side of
# the square anchor with the same area), in float32 like torchvision:
#
#     h_ratio = sqrt(r),   w_ratio = 1 / h_ratio
#     w = w_ratio * s,     h = h_ratio * s          (so w * h = s^2)
#     base = round([-w, -h, w, h] / 2)
#
# ordered **ratio-major**: all sizes of the first ratio, then the next ratio.
# `round` is half-to-even (NumPy's and torch's `round`), so a size-5 square
# becomes `(-2, -2, 2, 2)`, 4 pixels wide, and so does a size-3 square.


# %%
def base_anchors_loop(sizes, ratios):
    """The base anchors, one at a time (teaching version of minirccn.detector.anchors.base_anchors)."""
    rows = []
    for r in ratios:
        h_ratio = np.sqrt(np.float32(r))
        w_ratio = np.float32(1) / h_ratio
        for s in sizes:
            w, h = w_ratio * np.float32(s), h_ratio * np.float32(s)
            rows.append([np.round(-w / 2), np.round(-h / 2), np.round(w / 2), np.round(h / 2)])
    return np.array(rows, dtype=np.float32)


sizes, ratios = (128, 256, 512), (0.5, 1.0, 2.0)
loop = base_anchors_loop(sizes, ratios)
ref = anchors.base_anchors(sizes, ratios)
print("base anchors (x1, y1, x2, y2), width x height:")
for row in ref:
    print(f"  {row}   {row[2] - row[0]:.0f} x {row[3] - row[1]:.0f}")
T.check(np.array_equal(loop, ref), "naive loop == minirccn.detector.anchors.base_anchors, exactly")
T.check(
    np.array_equal(anchors.base_anchors([5, 3], [1.0]), [[-2, -2, 2, 2], [-2, -2, 2, 2]]),
    "half-to-even: sizes 5 and 3 both round to 4-pixel squares",
)

# %% [markdown]
# ## 2. The grid: every anchor of a feature map
#
# A backbone with stride `S` (input pixels per feature cell) maps an
# `H_img x W_img` image to an `H x W` map. Cell `(i, j)` (row `i`, column `j`)
# sits at image position `((offset + j) * S, (offset + i) * S)`, and its anchors
# are the base anchors shifted there. The result is **location-major**: row
# `(i * W + j) * A + a` is anchor `a` of cell `(i, j)`, matching how the RPN's
# `(A * 4, H, W)` outputs are flattened.


# %%
def grid_anchors_loop(height, width, stride, base, offset):
    out = []
    for i in range(height):
        for j in range(width):
            cx, cy = np.float32((offset + j) * stride), np.float32((offset + i) * stride)
            for a in range(len(base)):
                out.append(base[a] + np.array([cx, cy, cx, cy], dtype=np.float32))
    return np.array(out, dtype=np.float32).reshape(-1, 4)


for offset in (0.0, 0.5):
    loop = grid_anchors_loop(3, 5, 16, ref, offset)
    fast = anchors.generate_anchors((3, 5), 16, sizes, ratios, offset=offset)
    T.check(
        np.array_equal(loop, fast),
        f"offset {offset}: loop == generate_anchors on a 3x5 map, exactly",
    )
# torchvision's AnchorGenerator beside it, when torch is importable (its grid is offset 0)
torch, torchvision = T.torchvision_or_note("AnchorGenerator")
if torch is not None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    base_tv = gen.generate_anchors(list(sizes), list(ratios)).numpy()
    gen.cell_anchors = [torch.from_numpy(base_tv)]
    grid_tv = gen.grid_anchors([(3, 5)], [[torch.tensor(16), torch.tensor(16)]])[0].numpy()
    T.check(
        np.array_equal(base_tv, ref)
        and np.array_equal(grid_tv, anchors.generate_anchors((3, 5), 16, sizes, ratios, offset=0.0)),
        "torchvision's AnchorGenerator gives the same base anchors and the offset-0 grid, exactly",
    )

# %% [markdown]
# ## 3. The 1764 anchors of a 224 x 224 VGG16 input
#
# VGG16's conv layers keep the size (3x3, padding 1). The classification
# network has five 2x2 max pools, but Faster R-CNN takes its features from
# conv5_3, *before* the fifth pool: minirccn's `vgg16` backbone spec (printed
# below) has four pooling stages, so 224 -> 112 -> 56 -> 28 -> 14, stride 16.
# With 3 sizes x 3 ratios that is 14 x 14 x 9 = **1764** anchors. The paper's
# sizes (128, 256, 512) were chosen for ~600-pixel images; on a 224-pixel image
# most of those anchors stick out of the image, which is why minirccn's `vgg16`
# preset uses (32, 64, 128).

# %%
from minirccn.detector.backbones import vgg as backbone

vgg = backbone.get_spec("vgg16")
pools = sum(st.pool for st in vgg.stages)
print("vgg16 stages (channels, convs, pool):", [(st.channels, st.convs, st.pool) for st in vgg.stages])
print(f"{len(vgg.stages)} conv stages, {pools} of them end in a 2x2 pool -> stride {backbone.stride(vgg)}")
T.check(pools == 4 and backbone.stride(vgg) == 16, "the vgg16 spec pools four times: stride 16")
feature, stride = 224 // backbone.stride(vgg), backbone.stride(vgg)
for anchor_sizes in ((128, 256, 512), (32, 64, 128)):
    all_anchors = anchors.generate_anchors(feature, stride, anchor_sizes, ratios, offset=0.5)
    inside = anchors.anchors_inside(all_anchors, (224, 224))
    print(
        f"sizes {anchor_sizes}: {all_anchors.shape[0]} anchors, "
        f"{int(inside.sum())} inside the image"
    )
    T.check(all_anchors.shape == (14 * 14 * 9, 4) == (1764, 4), "14 x 14 cells x 9 anchors = 1764")

# %% [markdown]
# ## 4. Where is a cell? offset 0 (torchvision) or 0.5 (the paper's figure)
#
# torchvision places cell `(i, j)`'s anchors at `(j * S, i * S)`: the top-left
# corner of the cell's `S x S` patch. The paper's figure (and minirccn's
# default `anchor_offset = 0.5`) centres them on the patch. With offset 0 the
# grid is shifted by `S / 2` up and left: its centres run from 0 to 208 on a
# 224-pixel image, so the right and bottom borders get fewer anchors.
# The network learns to compensate either way (the deltas absorb a constant
# shift), but the numbers of any comparison must use the same offset.

# %%
for offset in (0.0, 0.5):
    a = anchors.generate_anchors(feature, stride, (32, 64, 128), ratios, offset=offset)
    centres = (a[:, :2] + a[:, 2:]) / 2
    print(
        f"offset {offset}: centres from {centres.min(axis=0)} to {centres.max(axis=0)}, "
        f"mean {centres.mean(axis=0)} (image centre 112)"
    )
a0 = anchors.generate_anchors(feature, stride, (32, 64, 128), ratios, offset=0.0)
a5 = anchors.generate_anchors(feature, stride, (32, 64, 128), ratios, offset=0.5)
T.check(
    np.array_equal(a5 - a0, np.full_like(a0, 8.0)),
    "offset 0.5 moves every anchor by S/2 = 8 pixels",
)
T.check(
    np.allclose(((a5[:, :2] + a5[:, 2:]) / 2).mean(axis=0), 112),
    "offset 0.5: anchor centres are symmetric about the image centre",
)

# %% [markdown]
# ## 5. Anchors on a real image
#
# The `shapes` dataset has 128 x 128 images. The `tiny` preset that
# `minirccn train` uses (printed below from `minirccn.config`) has stride 4: a
# 32 x 32 map, too dense to draw legibly (1024 dots, 9216 boxes). **This
# section pins stride 16** (an 8 x 8 map) with the preset's sizes, ratios and
# offset, so that each cell and its anchors can be seen; the code is the same
# for any stride. (Why the preset went from stride 16 to 4: tutorial 8.)
# For each ground-truth box we look up its best anchor by IoU (tutorial 1's
# `ops.box_iou`): that anchor is what the RPN is trained to call positive and
# to move onto the object.

# %%
from minirccn.config import preset
from minirccn.detector.backbones.levels import backbone_spec

tiny = preset("tiny")
tiny_stride_preset = backbone.stride(backbone_spec(tiny))
side = 128 // tiny_stride_preset
n_preset = side * side * len(tiny.anchor_sizes) * len(tiny.aspect_ratios)
print(
    f"the tiny preset: stride {tiny_stride_preset}, a {side} x {side} map, sizes {tiny.anchor_sizes}, "
    f"ratios {tiny.aspect_ratios}, offset {tiny.anchor_offset}: {n_preset} anchors"
)
sample = load_dataset("shapes", split="train", seed=0)[T.pick(3, 3)]
image, gt, labels = sample["image"], sample["boxes"], sample["labels"]
tiny_sizes, tiny_stride = tiny.anchor_sizes, 16  # stride pinned to 16 for the pictures
cells = 128 // tiny_stride
grid = anchors.generate_anchors(
    cells, tiny_stride, tiny_sizes, tiny.aspect_ratios, offset=tiny.anchor_offset
)
iou = ops.box_iou(grid, gt)  # (cells * cells * 9, G)
best = iou.argmax(axis=0)  # (G,) best anchor of each object
print(f"at the pinned stride {tiny_stride}: {len(grid)} anchors; ground truth:\n{gt}")
for g, k in enumerate(best):
    cell, a = divmod(int(k), 9)
    print(
        f"  object {g}: best anchor {k} = cell {divmod(cell, cells)}, anchor {a}, "
        f"box {grid[k]}, IoU {iou[k, g]:.2f}"
    )
T.check(
    len(grid) == cells * cells * 9,
    f"stride {tiny_stride} on 128 x 128: {cells} x {cells} x 9 = {len(grid)} anchors",
)
T.check(
    np.all(iou[best, np.arange(len(gt))] == iou.max(axis=0)),
    "argmax picks each object's highest-IoU anchor",
)

scale = T.pick(3, 2)


def centres_panel(offset):
    """The image with grid lines and one dot per cell at the anchors' centre."""
    img = Image.fromarray(image).resize((128 * scale, 128 * scale), Image.NEAREST)
    d = ImageDraw.Draw(img)
    for k in range(0, 129, tiny_stride):
        d.line([(k * scale, 0), (k * scale, 128 * scale)], fill=(255, 255, 255))
        d.line([(0, k * scale), (128 * scale, k * scale)], fill=(255, 255, 255))
    a = anchors.generate_anchors(cells, tiny_stride, tiny_sizes, ratios, offset=offset)[::9]
    for x, y in (a[:, :2] + a[:, 2:]) / 2 * scale:
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(255, 255, 255), outline=(0, 0, 0), width=2)
    return T.caption(img, f"cell positions (white dots), offset {offset}")


# the 9 anchors of the cell holding the first object's best anchor
cell = int(best[0]) // 9
nine = grid[cell * 9 : (cell + 1) * 9]
panel_nine = T.caption(
    viz.draw_detections(
        image, nine, np.arange(9) // 3, class_names=["1:2", "1:1", "2:1"], scale=scale, width=2
    ),
    "the 9 anchors of one cell\n(tag = height:width)",
)
objects = viz.draw_detections(
    image, gt, np.zeros(len(gt), int), class_names=["object"], scale=scale, width=2
)
panel_best = T.caption(
    viz.draw_detections(
        objects,
        grid[best] * scale,
        np.ones(len(gt), int),
        iou[best, np.arange(len(gt))],
        class_names=["", "anchor"],
        width=2,
    ),
    "objects (red) and their best anchors\n(green, tag = IoU)",
)
T.save_grid(
    [centres_panel(0.0), centres_panel(0.5), panel_nine, panel_best], "02_anchors.png", colours=256
)

# %% [markdown]
# ## Summary
#
# * `A = len(ratios) * len(sizes)` base anchors, `round([-w, -h, w, h] / 2)`
#   with `w * h = size^2` and `h / w = ratio`, ratio-major.
# * Shifted to every cell, location-major: `H * W * A` anchors
#   (14 x 14 x 9 = 1764 for VGG16 at 224 x 224).
# * `offset = 0` (torchvision) puts them at cell corners, `offset = 0.5`
#   at cell centres.
#
# ## Exercises
#
# Each exercise has a stub (fill it in) and a check cell that prints `passed`
# or the expected answer (`MINIRCCN_TUTORIAL_STUDENT=1` keeps the script going
# if an edit of yours breaks one of the tutorial's own checks).
#
# 1. How many anchors does a 600 x 1000 image give with stride 16 (a
#    `600 // 16` x `1000 // 16` map), the paper's sizes (128, 256, 512) and 3
#    ratios, offset 0.5? How many lie wholly inside the image
#    (`anchors.anchors_inside`)? The paper says "roughly 20000" and "about
#    6000" (Sec. 3.3).
# 2. At the `tiny` preset's own stride (printed in section 5) and sizes, what
#    share of the objects of the first 40 training images has an anchor with
#    IoU >= 0.7 (the RPN's positive threshold)? Then add size 24: does the share
#    go up? (Small objects cannot reach 0.7 against a 16-px anchor: an object
#    of side `s < 16` has IoU at most `s^2 / 256`; rotated or triangular
#    objects fall between the three aspect ratios at every size.)
# 3. Recompute each object's best IoU of section 5 with `offset = 0`: does it go
#    up or down? (At stride 16 a shift of `S / 2 = 8` pixels is half a 16-pixel
#    anchor: single IoUs move a lot, either way. For the network it is only a
#    constant shift of 8 pixels that the deltas learn: `dx = 8 / anchor width`,
#    `dy = 8 / anchor height`, 0.5 for the square 16-pixel anchors, 0.125 for
#    the square 64-pixel ones.)


# %%
@T.stub
def anchors_600x1000():
    """(total, inside): the anchor count of a 600 x 1000 image at stride 16 and those inside it."""
    raise NotImplementedError


@T.stub
def share_with_anchor_above(sizes, stride, images, threshold=0.7):
    """Share (0..1) of the objects of ``images`` (samples of load_dataset) whose best anchor
    (sizes ``sizes``, the tiny preset's ratios and offset, at ``stride``) has IoU >= threshold."""
    raise NotImplementedError


@T.stub
def best_iou_per_object(offset):
    """(G,) best anchor IoU of each object of section 5's image, at the pinned stride 16."""
    raise NotImplementedError


# %%
def _check_600():
    total, inside = anchors_600x1000()
    print(f"  600 x 1000: {total} anchors, {inside} inside")
    return total == 37 * 62 * 9 and 4000 <= inside <= 10000


T.exercise("2.1", _check_600, "37 x 62 x 9 = 20646 anchors; several thousand inside (paper: about 6000)")
first40 = [load_dataset("shapes", split="train", seed=0)[i] for i in range(T.pick(40, 10))]


def _check_share():
    base = share_with_anchor_above(tiny.anchor_sizes, tiny_stride_preset, first40)
    more = share_with_anchor_above(tuple(sorted(tiny.anchor_sizes + (24,))), tiny_stride_preset, first40)
    print(f"  share at IoU >= 0.7: sizes {tiny.anchor_sizes}: {base:.2f}; with 24 added: {more:.2f}")
    return 0.2 <= base <= 0.9 and more >= base


T.exercise("2.2", _check_share, "about half of the objects (0.2 .. 0.9), no less with size 24")


def _check_offset():
    b5, b0 = best_iou_per_object(0.5), best_iou_per_object(0.0)
    print(f"  best IoU, offset 0.5: {np.round(b5, 2)}; offset 0: {np.round(b0, 2)}")
    return np.allclose(b5, iou[best, np.arange(len(gt))]) and len(b0) == len(gt)


T.exercise("2.3", _check_offset, "offset 0.5 reproduces section 5's IoUs; offset 0 moves them, some by 0.3 and more")
