# %% [markdown]
# # Tutorial 11: the feature pyramid (FPN)
#
# The detectors so far look at ONE feature map. A stride-4 map sees the
# 8-pixel objects of `shapes` but is expensive and shallow; a stride-32 map is
# deep but an 8-pixel object is a quarter of a cell there. The Feature Pyramid
# Network (Lin et al. 2017) keeps several: a ResNet's stages C2..C5 (strides
# 4..32), a **top-down pathway** that adds each coarse map, upsampled, to the
# next finer one, and a 3x3 conv per level. Every level then has the deep
# features of the top AND its own resolution. torchvision's
# `fasterrcnn_resnet50_fpn` is this model; minirccn's `resnet-fpn-tiny` preset
# is a small copy of it.
#
# 1. **the levels**: map shapes, strides, one anchor size per level;
# 2. **the top-down pathway** written out by hand, against `fpn_forward`, and
#    the nearest upsampling's backward (a 2x2 sum);
# 3. **which RoI goes where**: torchvision's `LevelMapper` rule with numbers,
#    exactly at its boundaries;
# 4. **proposals per level** from a briefly trained network, and the levels
#    their RoIs are pooled from;
# 5. **gradients routed back** to the level each RoI came from.

# %%
import math

import matplotlib

matplotlib.use("Agg")
import _common as T
import matplotlib.pyplot as plt
import numpy as np

from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.data.batching import Batch
from minirccn.detector.backbones import fpn
from minirccn.detector.backbones import resnet
from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.roi_heads.poolers import LevelMapper, level_counts
from minirccn.detector.rpn.head import rpn_forward_levels
from minirccn.detector.rpn.proposal_layer import proposals_one_image
from minirccn.nn import layers
from minirccn.engine.loop import train

cfg = preset("resnet-fpn-tiny")
data = load_dataset("shapes", split="train", seed=0)
sample = data[3]
model = M.FasterRCNN(cfg, data.class_names, rng=np.random.default_rng(0))
pyr = model.backbone  # the ResNet + FPN: its spec and the strides of its levels
x = model.preprocess(sample["image"])[0][None]  # (1, 3, 128, 128)
print(
    f"preset resnet-fpn-tiny: backbone {cfg.backbone}, FPN width {cfg.fpn_channels}, input {x.shape}"
)

# %% [markdown]
# ## 1. The levels
#
# The ResNet gives one map per stage; the FPN turns each into an `F`-channel
# map `P` of the same size and adds `pool`, a kernel-1 stride-2 max pool of the
# top map (torchvision's `LastLevelMaxPool`: every other cell). Each level gets
# ONE anchor size (times the aspect ratios), growing with its stride, so small
# objects are matched on fine maps and large ones on coarse maps.

# %%
stages, _ = resnet.resnet_forward(model.params, x, pyr.spec, train=False, backend="numpy")
maps, _ = fpn.fpn_forward(model.params, stages, backend="numpy")
anchors, counts = model.anchor_generator([m.shape[2:] for m in maps])
names = ["P2", "P3", "P4", "P5", "pool"]
print("level  backbone map       pyramid map        stride  anchor  anchors")
for i, (name, p, s, size, n) in enumerate(zip(names, maps, pyr.strides, cfg.anchor_sizes, counts)):
    c = str(tuple(stages[i].shape[1:])) if i < len(stages) else "-"
    print(f"{name:5s}  {c:17s}  {tuple(p.shape[1:])!s:17s}  {s:6d}  {size:6d}  {n:7d}")
print(f"{sum(counts)} anchors in all, {len(cfg.aspect_ratios)} per cell of every level")
T.check(
    [tuple(s.shape[1:]) for s in stages] == resnet.feature_shapes(pyr.spec, 128, 128),
    "the maps have the shapes the layer arithmetic predicts",
)
r50 = resnet.feature_shapes("resnet50", 800, 1216)
print("ResNet-50 on an 800 x 1216 image (torchvision's detection size), C2..C5:", r50)
print(f"  -> pool {(256, math.ceil(r50[-1][1] / 2), math.ceil(r50[-1][2] / 2))} after the FPN")

# %% [markdown]
# ## 2. The top-down pathway, by hand
#
# From the top: `last = lateral(C5)`; then for each finer level,
# `last = lateral(C_i) + upsample_nearest(last)` and `P_i = conv3x3(last)`.
# Upsampling copies each cell into a 2x2 block (to the lateral's size: with an
# odd size, torch's rule `floor(o * in / out)` copies the last cell once less).
# Its backward is therefore a **2x2 sum**: each coarse cell collects the
# gradients of the cells that copied it.

# %%
p = model.params


def conv(h, name, pad):
    w, b = p[f"backbone.fpn.{name}.w"], p[f"backbone.fpn.{name}.b"]
    return layers.conv2d_forward(h, w, b, 1, pad, backend="numpy")[0]


last = conv(stages[3], "inner3", 0)
by_hand = [conv(last, "layer3", 1)]
for i in (2, 1, 0):
    last = conv(stages[i], f"inner{i}", 0) + last.repeat(2, axis=2).repeat(2, axis=3)
    by_hand.insert(0, conv(last, f"layer{i}", 1))
by_hand.append(by_hand[-1][:, :, ::2, ::2])
err = max(float(np.abs(a - b).max()) for a, b in zip(by_hand, maps))
print(f"largest difference, hand-written pathway vs fpn_forward: {err:.2e}")
T.check(err < 1e-5, "the top-down pathway by hand equals minirccn.detector.backbones.fpn.fpn_forward")
print("nearest indices 3 -> 5 cells (odd lateral size):", fpn.nearest_indices(3, 5).tolist())
print("nearest indices 3 -> 6 cells (exact 2x):        ", fpn.nearest_indices(3, 6).tolist())
_, up = fpn.upsample_nearest_forward(np.zeros((1, 1, 3, 3)), (5, 5))
d = fpn.upsample_nearest_backward(np.ones((1, 1, 5, 5)), up)[0, 0]
print("backward of a gradient of ones, 3x3 -> 5x5 (copies per cell):\n", d)
_, up = fpn.upsample_nearest_forward(np.zeros((1, 1, 3, 3)), (6, 6))
d2 = fpn.upsample_nearest_backward(np.ones((1, 1, 6, 6)), up)[0, 0]
T.check(
    np.all(d2 == 4) and d.sum() == 25,
    "exact 2x: every cell sums a 2x2 block; odd: fewer at the edge",
)

# %% [markdown]
# ## 3. Which RoI goes where
#
# Each RoI is pooled from ONE level (FPN paper, Eq. 1; torchvision's
# `LevelMapper`):
#
# `k = floor(k0 + log2(sqrt(w h) / s0) + 1e-6)`, clamped to the levels present,
#
# with `s0 = 224` (an ImageNet-sized box) at level `k0 = 4` (stride 16). A box
# of half that side goes one level finer, one of twice the side one coarser.
# The `1e-6` puts a box exactly on a boundary (side 112: `log2(1/2) = -1`) on
# the upper level even after rounding. (This rule sits with the RPN's, the
# head's and RetinaNet's target rules in one table: [`RULES.md`](RULES.md).)
# The rule, a naive loop, then the class:

# %%
mapper = LevelMapper.from_strides(model.pooler.strides)  # torchvision's s0 = 224, k0 = 4
sides = [8.0, 32.0, 80.0, 111.9999, 112.0, 150.0, 223.99, 224.0, 448.0, 1000.0]
print(f"levels present: k = {mapper.k_min} .. {mapper.k_max}")
print(" sqrt(area)   4 + log2(s / 224)   floor(+1e-6)   clamped   LevelMapper")
naive = []
for s in sides:
    raw = 4 + math.log2(s / 224)
    k = math.floor(raw + 1e-6)
    naive.append(min(max(k, mapper.k_min), mapper.k_max))
got = (mapper(np.array([[0, 0, s, s] for s in sides])) + mapper.k_min).tolist()
for s, n, g in zip(sides, naive, got):
    raw = 4 + math.log2(s / 224)
    print(f"{s:11.4f}   {raw:17.7f}   {math.floor(raw + 1e-6):12d}   {n:7d}   P{g}")
T.check(naive == got, "LevelMapper equals the formula, at the boundaries 112 and 224 too")
# torchvision's own LevelMapper beside it, when torch is importable
torch, torchvision = T.torchvision_or_note("LevelMapper")
if torch is not None:
    from torchvision.ops.poolers import LevelMapper as TorchLevelMapper

    tv = TorchLevelMapper(mapper.k_min, mapper.k_max)(
        [torch.tensor([[0, 0, s, s] for s in sides], dtype=torch.float32)]
    )
    tv_levels = (tv.numpy() + mapper.k_min).tolist()
    print("torchvision's LevelMapper:", [f"P{k}" for k in tv_levels])
    T.check(tv_levels == got, "torchvision's LevelMapper gives the same levels")

# %% [markdown]
# On 128-pixel `shapes` images every object (sides of 7 to 80 pixels, tutorial 8) is below 112, so
# with torchvision's numbers every RoI that fits an object is pooled from P2; only a
# proposal larger than any object (sqrt(area) >= 112, up to the whole image) reaches P3,
# and section 4 prints how many did. torchvision's 224
# belongs to 800-pixel images; scaled to this image size it would be
# `224 * 128 / 800`. The preset's choice and where each size lands:

# %%
scaled = 224 * 128 / 800
for s0 in (cfg.roi_canonical_scale, scaled):
    m = LevelMapper.from_strides(model.pooler.strides, canonical_scale=s0)
    lv = (m(np.array([[0, 0, s, s] for s in (8, 16, 24, 32, 48, 64, 80)])) + m.k_min).tolist()
    print(f"s0 = {s0:6.2f}: sides 8, 16, 24, 32, 48, 64, 80 -> levels {lv}")
print(f"the preset uses s0 = {cfg.roi_canonical_scale}, level {cfg.roi_canonical_level}")

# %% [markdown]
# ## 4. Proposals per level
#
# A short training run (the preset itself trains for many more steps), then the
# proposal layer on one image: each level keeps its own best
# `rpn_pre_nms_top_n_test` anchors (so the thousands of P2 anchors cannot crowd
# out the few coarse ones), NMS runs per level (torchvision's `batched_nms`
# with the level as the category), then the best over all levels are kept.

# %%
steps = T.pick(400, 6)
short = cfg.replace(iters=steps, warmup_iters=steps // 10, milestones=(), bn_freeze_iter=steps // 2)
trained = train(short, train_data=data, out=None, eval_split=None, progress=False)["model"]
# the proposal layer by hand, to see each proposal's level: backbone, shared RPN head, anchors
t_maps, _ = trained.backbone.forward(trained.params, x, False, "numpy")
t_logits, t_deltas, _ = rpn_forward_levels(trained.params, t_maps, backend="numpy")
t_anchors, t_counts = trained.anchor_generator([m.shape[2:] for m in t_maps])
layer = trained.test_proposals  # the inference numbers (rpn_*_test)
boxes, scores, levels = proposals_one_image(
    t_logits[0],
    t_deltas[0],
    t_anchors,
    t_counts,
    (128, 128),
    pre_nms_top_n=layer.pre_nms_top_n,
    post_nms_top_n=layer.post_nms_top_n,
    nms_thresh=layer.nms_thresh,
    min_size=layer.min_size,
    backend="numpy",
)
rpn_counts = level_counts(levels, len(names))
pool_levels = trained.pooler.mapper(boxes)
pool_counts = level_counts(pool_levels, len(trained.pooler.strides))
print(
    f"{steps} training steps (the preset: {cfg.iters}); {len(boxes)} proposals on image 3 ({len(sample['boxes'])} objects)"
)
print("level  proposals from its anchors   RoIs pooled from it")
for i, name in enumerate(names):
    pooled = str(pool_counts[i]) if i < len(pool_counts) else "- (not pooled)"
    print(f"{name:5s}  {rpn_counts[i]:26d}   {pooled}")
T.check(
    rpn_counts.sum() == len(boxes) == pool_counts.sum(), "every proposal has one level of each kind"
)

# %%
fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.6))
for i, (ax, name) in enumerate(zip(axes, names)):
    ax.imshow(sample["image"])
    for k_gt, b in enumerate(sample["boxes"]):
        ax.add_patch(
            plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="white", lw=2.2, ls="--",
                          label="ground truth" if k_gt == 0 else None)
        )
    mine = np.nonzero(levels == i)[0][:8]  # the level's 8 best (props are by score)
    for n_k, k in enumerate(mine):
        b = boxes[k]
        ax.add_patch(
            plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="black", lw=1.6,
                          label=f"{name} proposals" if n_k == 0 else None)
        )
    ax.set_title(
        f"{name}: stride {trained.backbone.strides[i]}, anchor {cfg.anchor_sizes[i]}\n{rpn_counts[i]} proposals, best {len(mine)} drawn",
        fontsize=10,
    )
    ax.axis("off")
fig.suptitle(
    "proposals of each RPN level on image 3\n"
    "black: the level's best proposals (at most 8); white dashed: the ground truth",
    fontsize=12,
)
fig.tight_layout(rect=(0, 0, 1, 0.86))  # leave the suptitle its own band above the panel titles
fig.savefig(T.out_dir() / "11_proposals_per_level.png", dpi=100)
plt.close(fig)

fig, ax = plt.subplots(figsize=(6, 3))
xs = np.arange(len(names))
ax.bar(xs - 0.2, rpn_counts, 0.4, label="proposals from the level's anchors")
ax.bar(xs[:-1] + 0.2, pool_counts, 0.4, label="RoIs pooled from the level (LevelMapper)")
ax.set_xticks(xs, names)
ax.set_ylabel("boxes")
ax.legend(fontsize=8)
ax.set_title(f"image 3, {len(boxes)} proposals, s0 = {cfg.roi_canonical_scale}", fontsize=10)
fig.tight_layout()
fig.savefig(T.out_dir() / "11_levels_chart.png", dpi=80)
plt.close(fig)
print("wrote", T.out_dir() / "11_proposals_per_level.png", "and 11_levels_chart.png")

# %% [markdown]
# ## 5. Gradients go back to the level they came from
#
# In the backward each RoI's pooled gradient goes to its own level's map only
# (RoIAlign's backward on that level); the RPN's gradient goes to every level
# whose anchors were sampled, through ONE shared head whose weight gradients
# are summed over the levels. Head loss only, on three chosen proposals (and the
# ground truth, which proposal sampling appends); the 127-pixel one reaches P3:

# %%
targets = [{"boxes": sample["boxes"].astype(np.float32), "labels": sample["labels"]}]
chosen = np.array([[10, 10, 20, 20], [30, 30, 40, 42], [0, 0, 127, 127]], np.float32)
batch = Batch(x.astype(np.float32), [(128, 128)], targets)
_, cache = trained.forward(
    batch, np.random.default_rng(0), backend="numpy", proposals=[chosen], parts=("head",)
)
samples = cache.samples
grads = trained.backward(cache)
used = sorted(set(cache.pool.levels.tolist()))
print(f"{len(samples.rois)} sampled RoIs, pooled from levels {[names[i] for i in used]}")
for i in range(4):
    g = float(np.abs(grads[f"backbone.fpn.layer{i}.w"]).max())
    print(f"  {names[i]} output conv: max |gradient| {g:.3g}")
got = [i for i in range(4) if np.abs(grads[f"backbone.fpn.layer{i}.w"]).max() > 0]
T.check(got == used, "only the levels some RoI was pooled from get a gradient in their output conv")

# %% [markdown]
# ## Summary
#
# * (The deviations of this pyramid from the FPN paper and torchvision are
#   listed in [`DEVIATIONS.md`](DEVIATIONS.md).)
# * An FPN keeps one map per stride; the top-down pathway adds coarse, deep
#   features into the fine maps (nearest 2x upsampling; backward: 2x2 sums).
# * One RPN head slides over every level with one anchor size per level;
#   proposals are picked per level, suppressed per level, then merged.
# * Each RoI is pooled from one level: `floor(4 + log2(sqrt(area) / 224) +
#   1e-6)`, clamped; the canonical 224 belongs to 800-pixel images.
# * `minirccn train --preset resnet-fpn-tiny` trains the whole thing; docs/fpn.md
#   compares it with the default preset.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected.
#
# 1. Map section 4's proposals (`boxes`) to levels with `roi_canonical_scale`
#    36 (224 scaled to 128-pixel images) instead of the preset's: return the
#    number of RoIs per pooled level. (A training run with
#    `--set roi_canonical_scale=36` then tells whether it helps; a few minutes.)
# 2. The top-down pathway is what lets a RoI pooled on P2 train the deep
#    stages: P2 = conv(lateral(C2) + upsample(... lateral(C5))). Run the head
#    loss on one small RoI, which LevelMapper sends to P2, and return the
#    ResNet parameter groups (`backbone.stem`, `backbone.layer1` ..
#    `backbone.layer4`) whose weights get a non-zero gradient. (Without the
#    top-down additions, `last = lateral`, only the groups up to C2 would: a
#    P5 RoI never reaches P2 either way, since P2 is not upstream of P5.)
# 3. How many anchors does the pyramid have on a 128 x 128 image with
#    `n_sizes` anchor sizes per level (times the 3 ratios)? The preset has one
#    size per level; the config rejects more (`pyramid_levels` raises "an FPN
#    needs one anchor size per level": several sizes per level would need
#    another anchor generator and RPN head), so compute it from the level
#    shapes of section 1.


# %%
@T.stub
def rois_per_level(boxes, canonical_scale):
    """Counts of ``boxes`` per pooled level (len(trained.pooler.strides) counts) with that s0."""
    raise NotImplementedError


@T.stub
def groups_reached_from_p2():
    """Sorted ResNet groups among backbone.stem, backbone.layer1..4 with a non-zero weight
    gradient from the head loss of one small RoI (pooled on P2) of the ``trained`` model."""
    raise NotImplementedError


@T.stub
def pyramid_anchor_count(map_shapes, n_sizes, n_ratios):
    """Anchors of all levels: sum over (H, W) in map_shapes of H * W * n_sizes * n_ratios."""
    raise NotImplementedError


# %%
def _check_levels():
    same = list(rois_per_level(boxes, cfg.roi_canonical_scale))
    small = list(rois_per_level(boxes, 36))
    print(f"  RoIs per pooled level: s0 = {cfg.roi_canonical_scale}: {same}; s0 = 36: {small}")
    weight = np.arange(len(small))
    return same == pool_counts.tolist() and sum(small) == len(boxes) and np.dot(small, weight) >= np.dot(same, weight)


T.exercise("11.1", _check_levels, "the preset's s0 reproduces section 4's counts; s0 = 36 moves RoIs to coarser levels")


def _check_groups():
    got = sorted(groups_reached_from_p2())
    print(f"  groups with gradient from a P2 RoI: {got}")
    return got == ["backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4", "backbone.stem"]


T.exercise("11.2", _check_groups, "all five: the stem and layer1..layer4 (C5's features reach P2 top-down)")
shapes = [tuple(m.shape[2:]) for m in maps]


def _check_count():
    one = pyramid_anchor_count(shapes, 1, len(cfg.aspect_ratios))
    three = pyramid_anchor_count(shapes, 3, len(cfg.aspect_ratios))
    print(f"  anchors: one size per level {one}, three sizes per level {three}")
    return one == sum(counts) and three == 3 * one


T.exercise("11.3", _check_count, f"one size: section 1's {sum(counts)}; three sizes: 3x that")
