# %% [markdown]
# # Tutorial 12: RetinaNet and the focal loss
#
# Faster R-CNN (tutorials 6-8) works in two stages: the RPN proposes a few hundred
# boxes, the head classifies them. RetinaNet (Lin et al. 2017) is **one stage**: a small
# network on the feature map classifies and regresses *every anchor* directly. That
# raises four questions, which a student asked in exactly these words, and which this
# tutorial answers with numbers printed from minirccn's code on a real `shapes` image:
#
# 1. How do anchors become positive (IoU >= `retina_fg_iou_thresh`) or negative (IoU <
#    `retina_bg_iou_thresh`), and what happens to the ones in between? (0.5 and 0.4 in
#    the paper and torchvision; the preset's values are printed below. The rule sits
#    with the RPN's and the head's in one table: [`RULES.md`](RULES.md).)
# 2. How do several objects of different classes in one image each train the right
#    outputs? (the target tensors of one image with objects of several classes: this
#    one has three, printed below)
# 3. How is a W x H x (4 x 9) box output regressed when a box has 4 numbers, and how
#    does a W x H x (K x 9) class output learn from integer labels?
# 4. Why the focal loss, and what does its gamma do to the easy negatives?
#
# Two more follow from training it: 5. what changes on a feature pyramid (every level
# has its own anchor sizes; one head, shared), and 6. why its training needs its
# gradients clipped at this size (one image at a time).
#
# The code: `minirccn.detector.dense.targets` (labels), `retinanet_head` (the two
# subnets and the losses), `retinanet` (the model), `minirccn.nn.losses.sigmoid_focal_loss`.

# %%
import math

import _common as T
import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from minirccn import ops
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.detector.models.retinanet import RetinaNet, RetinaNetPostprocess
from minirccn.detector.dense.head import (
    from_anchor_order,
    retinanet_head_forward,
    retinanet_losses,
)
from minirccn.detector.dense.targets import RetinaNetTargets, onehot_targets
from minirccn.nn import losses
from minirccn.data.batching import Batch
from minirccn.engine.loop import lr_at, make_optimizer, train_step

cfg = preset("tiny", model="retinanet")
data = load_dataset("shapes", split="train", seed=0)
names = data.class_names
# the first training image with objects of at least two classes
index = next(i for i in range(50) if len(set(data[i]["labels"].tolist())) >= 2)
sample = data[index]
image, gt, gt_labels = sample["image"], sample["boxes"].astype(np.float64), sample["labels"]
model = RetinaNet(cfg, names, rng=np.random.default_rng(0))
x, _ = model.preprocess(image)
levels, _ = model.backbone.forward(model.params, x[None], False, "numpy")
anchors, _ = model.anchor_generator([levels[0].shape[2:]])  # one level: every anchor size
H, W = levels[0].shape[2:]
A = model.anchor_generator.num_anchors
Kc = len(names) - 1
print(f"image {index}: {image.shape[1]}x{image.shape[0]}, objects:")
for b, c in zip(gt, gt_labels):
    print(f"  {names[c]:8s} (label {c}) box {np.round(b, 1).tolist()}")
print(
    f"feature map {H}x{W} (stride {model.strides[0]}), A = {A} anchors per cell "
    f"(sizes {cfg.anchor_sizes} x ratios {cfg.aspect_ratios}): M = {H}*{W}*{A} = {len(anchors)}"
)
print(f"K = {len(names)} classes with background: the class subnet predicts Kc = {Kc} sigmoids")
print(f"this image has objects of {len(set(gt_labels.tolist()))} classes")

# %% [markdown]
# ## 1. Positive, negative, ignored
#
# Every anchor looks at its best object (highest IoU), with the same `Matcher` the
# two-stage targets use, built as `Matcher(0.5, 0.4, allow_low_quality_matches=True)`:
#
#     best IoU >= 0.5        -> positive, of that object's class
#     best IoU <  0.4        -> negative (background)
#     0.4 <= best IoU < 0.5  -> ignored: no loss at all, neither class nor box
#
# plus: each object's best anchor(s) are positive even below 0.5 (a small object may
# have no anchor at 0.5). The ignored band keeps the classifier from being taught
# "object" and "background" for nearly the same box. Unlike the RPN (tutorial 6)
# **nothing is sampled**: every positive and every negative anchor is in the loss.

# %%
targets = RetinaNetTargets.from_config(cfg)
print(targets)
labels, box_targets, matches = targets(anchors.astype(np.float64), gt, gt_labels)
iou = ops.box_iou(anchors.astype(np.float64), gt)
best = iou.max(axis=1)
pos, ign, neg = labels >= 1, labels == -1, labels == 0
print(f"positive {pos.sum()}, ignored {ign.sum()}, negative {neg.sum()} (of {len(labels)})")


def label_loop(best_iou, is_objects_best, fg=0.5, bg=0.4):
    """The rule for one anchor, as a reader would write it."""
    if is_objects_best:
        return "positive"
    if best_iou >= fg:
        return "positive"
    if best_iou < bg:
        return "negative"
    return "ignored"


objects_best = ((iou == iou.max(axis=0)[None, :]) & (iou.max(axis=0)[None, :] > 0)).any(axis=1)
loop = np.array([label_loop(b, o) for b, o in zip(best, objects_best)])
code = np.where(pos, "positive", np.where(ign, "ignored", "negative"))
T.check(np.array_equal(loop, code), "the loop and RetinaNetTargets label every anchor alike")

# anchors of this image around the two thresholds
print("anchors of this image near the thresholds (best IoU -> label):")
for want in (0.35, 0.39, 0.41, 0.45, 0.49, 0.51, 0.6):
    m = int(np.argmin(np.abs(best - want)))
    print(f"  anchor {m:5d}: best IoU {best[m]:.4f} -> {code[m]}")

# the exact thresholds, on boxes built for it: IoU 100/200 = 0.5 and 100/250 = 0.4 exactly
toy_gt = np.array([[0.0, 0.0, 10.0, 10.0]])
toy = np.array([[0.0, 0, 10, 20], [0.0, 0, 10, 25], [0.0, 0, 10, 26]])
toy_labels, _, _ = targets(toy, toy_gt, [1])
for a, lab in zip(toy, toy_labels):
    print(f"  toy anchor {a.tolist()}: IoU {ops.box_iou(a[None], toy_gt)[0, 0]:.4f} -> label {lab}")
T.check(
    toy_labels.tolist() == [1, -1, 0], "IoU 0.5 is positive, IoU 0.4 is ignored, 0.385 negative"
)
low_quality = np.nonzero(pos & (best < 0.5))[0]
print(
    f"positives below IoU 0.5 (each object's best anchor): {len(low_quality)} "
    f"(IoUs {np.round(best[low_quality], 3).tolist()})"
)

# %%
S = 4  # picture scale: one feature-map cell is 4 x 4 image pixels, 16 x 16 picture pixels
# positive green, ignored orange, negative blue: the shapes' backgrounds are often reddish, so
# no red marker; every panel's caption carries the key
COLOUR = {1: (40, 200, 60), -1: (250, 160, 0), 0: (40, 90, 230)}
KEY = "key: green positive, orange ignored, blue negative"
pic = Image.fromarray(image).resize((image.shape[1] * S, image.shape[0] * S), Image.NEAREST)
grid = np.where(labels >= 1, 1, labels).reshape(H, W, A)  # 1 / -1 / 0 per cell and anchor
panels = []
n_sizes = len(cfg.anchor_sizes)
square = list(cfg.aspect_ratios).index(1.0)
for k, size in enumerate(cfg.anchor_sizes):
    a = square * n_sizes + k  # anchors are ratio-major, then size (tutorial 2)
    p = pic.copy()
    d = ImageDraw.Draw(p, "RGBA")
    for r in range(H):
        for c in range(W):
            x0, y0 = c * model.strides[0] * S, r * model.strides[0] * S
            d.rectangle(  # a black rim: the markers stay visible on blue or green shapes too
                (x0 + 3, y0 + 3, x0 + 12, y0 + 12), fill=COLOUR[int(grid[r, c, a])] + (230,),
                outline=(0, 0, 0, 255),
            )
    for b in gt:
        d.rectangle((b * S).tolist(), outline=(255, 255, 255), width=2)
    counts = {lab: int((grid[:, :, a] == lab).sum()) for lab in (1, -1, 0)}
    panels.append(
        T.caption(
            p,
            f"{size}x{size} anchor of each cell: {counts[1]} positive,\n"
            f"{counts[-1]} ignored, {counts[0]} negative\n{KEY}",
        )
    )
# one object: its best positive, a few ignored and near-negative anchors drawn as boxes
j = int(np.argmin([(b[2] - b[0]) * (b[3] - b[1]) for b in gt]))  # the smallest object
p = pic.copy()
d = ImageDraw.Draw(p)
mine = matches == j
for lab, pick_ in (
    (0, (best >= 0.3) & (iou[:, j] == best) & neg),
    (-1, ign & (iou[:, j] == best)),
    (1, mine),
):
    for m in np.nonzero(pick_)[0][:4]:
        d.rectangle((anchors[m] * S).tolist(), outline=COLOUR[lab], width=2)
d.rectangle((gt[j] * S).tolist(), outline=(255, 255, 255), width=3)
panels.append(
    T.caption(
        p,
        f"the {names[gt_labels[j]]}: positive (green), ignored (orange)\n"
        f"and 0.3 <= IoU < 0.4 negative (blue) anchors\n{KEY}",
    )
)
T.save_grid(panels, "12_retinanet_anchors.png", cols=2, colours=64)

# %% [markdown]
# ### When objects compete for an anchor
#
# Two rules decide, both torchvision's `Matcher`:
#
# * an anchor that overlaps several objects takes the one with the **highest IoU**
#   (the first on a tie), and its label is that object's class;
# * the low-quality rule makes each object's best anchor(s) positive even below the
#   threshold, but the promoted anchor is matched to **its own** best object, not to
#   the object that promoted it. So an object whose best anchor belongs more to a
#   neighbour gets no positive anchor at all.
#
# This image's low-quality positives and its contested anchors, then three toy cases:
# a small object promoted below 0.5, an anchor between two objects, and the
# reassignment.

# %%
second = np.sort(iou, axis=1)[:, -2] if iou.shape[1] > 1 else np.zeros(len(iou))
contested = np.nonzero(second > 0.1)[0]
contested_pos = contested[labels[contested] >= 1]
print(
    f"this image: {len(contested)} anchors overlap two objects (IoU > 0.1 with each), "
    f"{len(contested_pos)} of them positive; each positive is matched to the object it "
    f"overlaps most: {bool(np.all(matches[contested_pos] == iou[contested_pos].argmax(axis=1)))}"
)
T.check(
    np.all(matches[pos] == iou[pos].argmax(axis=1)),
    "every positive anchor is matched to the object it overlaps most",
)
toy_anchors = np.array([[0.0, 0, 16, 16], [40, 0, 56, 16], [100, 100, 116, 116]])
cases = {
    "a 6x6 object in a 16x16 anchor": (np.array([[5.0, 5, 11, 11]]), [1]),
    "an anchor between two objects": (np.array([[0.0, 0, 16, 14], [4, 0, 20, 16]]), [1, 2]),
    "reassignment": (np.array([[0.0, 0, 16, 16], [0, 0, 16, 40]]), [1, 2]),
}
toy_out = {}
for name_c, (obj, lab) in cases.items():
    lab_c, _, match_c = targets(toy_anchors, obj, np.array(lab))
    iou_c = ops.box_iou(toy_anchors, obj)
    toy_out[name_c] = (lab_c, match_c)
    print(f"{name_c}: IoU of anchor 0 with each object {np.round(iou_c[0], 3).tolist()} -> "
          f"labels {lab_c.tolist()}, matched objects {match_c.tolist()}")
T.check(toy_out["a 6x6 object in a 16x16 anchor"][0][0] == 1,
        "low quality: the 6x6 object's best anchor (IoU 36/256 = 0.14) is positive")
T.check(toy_out["an anchor between two objects"][1][0] == 0,
        "an anchor over two objects takes the one it overlaps more (object 0)")
lab_r, match_r = toy_out["reassignment"]
T.check(
    match_r[0] == 0 and not np.any(match_r == 1),
    "object 1's best anchor (IoU 0.4) is promoted but stays matched to object 0 (IoU 1): "
    "object 1 gets no positive anchor",
)

# %% [markdown]
# ## 2. The target tensors of one image with objects of several classes
#
# An anchor's class target is not an integer but **Kc numbers**, one per object class
# (no background column): a 1 at column `label - 1` for a positive anchor, all zeros for
# a negative one (background = "no class says yes"); an ignored anchor's row is not
# used. Its box target is 4 numbers, only for a positive:
#
#     tx = (gx - ax) / aw,  ty = (gy - ay) / ah,  tw = log(gw / aw),  th = log(gh / ah)
#
# (centres `x, y`, sizes `w, h` of the ground truth `g` and the anchor `a`; weights 1).

# %%
onehot = onehot_targets(labels, Kc)
print(
    f"labels {labels.shape} int64, one-hot class targets {onehot.shape}, "
    f"box targets {box_targets.shape}"
)


def describe(m):
    cell, a = divmod(int(m), A)
    r, c = divmod(cell, W)
    return f"anchor {m:5d} = cell (row {r:2d}, col {c:2d}), anchor {a}"


shown = []
for cls in sorted(set(gt_labels.tolist())):
    ms = np.nonzero(labels == cls)[0]
    shown.append(ms[np.argmax(best[ms])])
shown += [int(np.nonzero(ign)[0][0]), int(np.nonzero(neg)[0][0])]
for m in shown:
    kind = names[labels[m]] if labels[m] >= 1 else ("ignored" if labels[m] == -1 else "negative")
    bt = ", ".join(f"{v:+.3f}" for v in box_targets[m])
    print(
        f"{describe(m)}: label {labels[m]:2d} ({kind:8s}) class target {onehot[m].tolist()} "
        f"box target [{bt}]"
    )
per_class = onehot[pos].sum(axis=0)
for c in range(Kc):
    print(f"  column {c} ({names[c + 1]}): {int(per_class[c])} positive anchors say 1")
T.check(
    set(np.nonzero(per_class)[0] + 1) == set(gt_labels.tolist()),
    "each object's class column is 1 exactly on the anchors matched to an object of that class",
)
m = shown[0]
T.check(
    np.allclose(
        box_targets[m],
        ops.encode_boxes(gt[matches[m]][None], anchors[m][None].astype(np.float64))[0],
    ),
    "a positive's box target is encode_boxes(its object, the anchor)",
)

# %% [markdown]
# ## 3. How the W x H x (4 x 9) and W x H x (K x 9) outputs learn
#
# The box subnet ends in a 3x3 conv with `4 * A = 36` output channels: at cell
# `(row, col)`, channels `4a .. 4a+3` are the deltas `(dx, dy, dw, dh)` **of anchor
# `a` at that cell**. "A box has 4 numbers" and "36 channels" do not clash: each
# location predicts 4 numbers for each of its 9 anchors. The class subnet likewise ends
# in `Kc * A = 27` channels: channel `a * Kc + c` is "anchor `a` holds class `c + 1`".
# Reordered to anchor order (`(N, H*W*A, 4)` and `(N, H*W*A, Kc)`), row `m` of the
# outputs lines up with anchor `m` and with row `m` of the targets above.
#
# The losses (torchvision's normalisation, `P` = number of positive anchors):
#
#     classification  = sum over non-ignored anchors and all Kc columns of focal(logit, onehot) / P
#     bbox_regression = sum over positive anchors of |delta - target| (L1, 4 numbers) / P
#
# (L1 is torchvision's default box loss for RetinaNet; the paper used smooth L1, with
# `beta = 0.11` in its authors' Detectron code: one of the deviations listed in
# [`DEVIATIONS.md`](DEVIATIONS.md).)
#
# So the gradient reaches a box channel only at a positive anchor's 4 channels, and
# reaches the class channels of every anchor that is not ignored: the right column of a
# positive is pushed up, every other column (and every column of a negative) down.

# %%
logits, deltas, _ = retinanet_head_forward(model.params, levels, backend="numpy")
print(
    f"class output {logits.shape} = (N, H*W*A, Kc); as a map (N, A*Kc, H, W) = "
    f"{from_anchor_order(logits, Kc, H, W).shape}"
)
print(
    f"box output   {deltas.shape} = (N, H*W*A, 4);  as a map (N, 4*A, H, W) = "
    f"{from_anchor_order(deltas, 4, H, W).shape}"
)
p0 = 1 / (1 + np.exp(-logits))
print(
    f"untrained scores: mean {p0.mean():.4f}, min {p0.min():.4f}, max {p0.max():.4f} "
    f"(prior-probability init: bias -log(0.99 / 0.01) = {model.params['head.cls.out.b'][0]:.4f})"
)
cls_loss, box_loss, dlogits, ddeltas = retinanet_losses(
    logits, deltas, labels[None], box_targets[None].astype(np.float32)
)
print(f"classification {cls_loss:.4f}, bbox_regression {box_loss:.4f} (P = {pos.sum()} positives)")
dmap = from_anchor_order(ddeltas, 4, H, W)
T.check(
    np.count_nonzero(dmap) == 4 * pos.sum(),
    f"the box loss reaches exactly 4 x {pos.sum()} = {4 * pos.sum()} of the "
    f"{dmap.size} box-map entries",
)
for m in shown:
    cell, a = divmod(int(m), A)
    r, c = divmod(cell, W)
    ch = list(range(a * Kc, (a + 1) * Kc))
    g = from_anchor_order(dlogits, Kc, H, W)[0, ch, r, c]
    grad = ", ".join(f"{v:+.2e}" for v in g)
    print(f"{describe(m)} label {labels[m]:2d}: class channels {ch} gradient [{grad}]")
T.check(not dlogits[0, ign].any(), "ignored anchors get no gradient")
T.check((dlogits[0, neg] > 0).all(), "every column of a negative anchor is pushed down")
rows = np.nonzero(pos)[0]
right = dlogits[0, rows, labels[rows] - 1]
T.check((right < 0).all(), "the right column of every positive anchor is pushed up")

# a few SGD steps on this one image: the right class channels of the positives rise
steps = T.pick(60, 3)
opt = make_optimizer(model)  # train_step sets its lr from the schedule at each step
boxes = sample["boxes"].astype(np.float32)
batch = Batch(x[None], [x.shape[1:]], [{"boxes": boxes, "labels": gt_labels}])
before = p0[0, rows, labels[rows] - 1].mean()
for step in range(steps):
    out = train_step(model, opt, batch, np.random.default_rng(step), 1000, backend="numpy")
after_logits, _, _ = retinanet_head_forward(
    model.params, model.backbone.forward(model.params, x[None], False, "numpy")[0], backend="numpy"
)
pa = 1 / (1 + np.exp(-after_logits))
after = pa[0, rows, labels[rows] - 1].mean()
print(
    f"after {steps} SGD steps on this image alone: mean score of the positives' own class "
    f"{before:.4f} -> {after:.4f}; of the negatives' columns {p0[0, neg].mean():.4f} -> "
    f"{pa[0, neg].mean():.4f}"
)
T.check(after > before, "training raises the score of each positive anchor's own class")

# %% [markdown]
# ## 4. The focal loss: what gamma does to the easy negatives
#
# With `p_t` the probability the network gives the right answer (`p` for a positive,
# `1 - p` for a negative):
#
#     CE = -log(p_t)           FL = -(1 - p_t)^gamma * log(p_t)     (times alpha_t)
#
# An image has thousands of anchors (this one's `M` is printed at the top), almost all
# background. With plain cross-entropy each negative contributes a little, and thousands
# of littles can swamp the few positives: how much depends on how easy the negatives
# already are and on how many anchors there are per positive (the table below prints
# this image's share at two starting points; the paper's images have far more anchors
# per object than this one). `(1 - p_t)^gamma` scales an easy example's loss down by
# orders of magnitude and leaves a hard one (small `p_t`) almost untouched.

# %%
pt = np.linspace(0.001, 0.999, 999)
x_pt = np.log(pt / (1 - pt))  # the logit whose sigmoid is p_t, for a target of 1
fig = Figure(figsize=(6.4, 4.2), dpi=100)
ax = fig.add_subplot()
for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
    fl, _ = losses.sigmoid_focal_loss(
        x_pt, np.ones_like(pt), alpha=-1, gamma=gamma, reduction="none"
    )
    ax.plot(pt, fl, label=f"gamma = {gamma:g}" + (" (cross-entropy)" if gamma == 0 else ""))
ax.set_xlabel("probability of the right class, p_t")
ax.set_ylabel("loss")
ax.set_ylim(0, 5)
ax.axvspan(0.6, 1.0, color="0.92")
ax.text(0.62, 4.5, "well-classified examples", fontsize=9)
ax.legend()
ax.set_title("focal loss vs cross-entropy (minirccn.nn.losses.sigmoid_focal_loss)")
fig.tight_layout()
path = T.out_dir() / "12_focal_loss.png"
fig.savefig(path)
print(f"wrote {path}")

print("one example, target 1, p_t -> CE and FL (alpha off):")
for p in (0.1, 0.5, 0.9, 0.99):
    xv = np.array([math.log(p / (1 - p))])
    ce = losses.sigmoid_focal_loss(xv, np.ones(1), alpha=-1, gamma=0)[0]
    fl2 = losses.sigmoid_focal_loss(xv, np.ones(1), alpha=-1, gamma=2)[0]
    print(f"  p_t = {p:4}: CE {ce:.5f}, FL(gamma 2) {fl2:.7f}, ratio {fl2 / ce:.5f}")

# an untrained network on this image: how much of the loss is the negatives', with
# cross-entropy and with the focal loss, starting from the prior-probability bias
# (every score 0.01) and from a zero bias (every score 0.5)?
valid = ~ign
t_valid = onehot[valid]
print("untrained network, this image (all non-ignored anchors, all Kc columns):")
for init, z in (
    ("bias 0, p = 0.5", np.zeros_like(logits[0, valid])),
    ("prior bias, p = 0.01", logits[0, valid]),
):
    for gamma, alpha in ((0.0, -1.0), (2.0, -1.0), (2.0, 0.25)):
        per, _ = losses.sigmoid_focal_loss(z, t_valid, alpha, gamma, "none")
        from_neg = per[labels[valid] == 0].sum()
        total = per.sum()
        print(
            f"  {init:20s} gamma {gamma:g}, alpha {alpha:5}: loss / P = {total / pos.sum():8.3f}, "
            f"of it from the {neg.sum()} negatives: {from_neg / total:7.3%}"
        )
ce_all, _ = losses.sigmoid_focal_loss(logits[0, valid], t_valid, -1, 0.0, "none")
fl_all, _ = losses.sigmoid_focal_loss(logits[0, valid], t_valid, -1, 2.0, "none")
T.check(
    fl_all[labels[valid] == 0].sum() / ce_all[labels[valid] == 0].sum() < 1e-3,
    "gamma 2 shrinks the easy negatives' loss more than 1000-fold at p = 0.01",
)
# torchvision's sigmoid_focal_loss beside it, when torch is importable
torch, torchvision = T.torchvision_or_note("sigmoid_focal_loss")
if torch is not None:
    ours, _ = losses.sigmoid_focal_loss(logits[0, valid], t_valid, 0.25, 2.0, "sum")
    tv_loss = torchvision.ops.sigmoid_focal_loss(
        torch.from_numpy(np.asarray(logits[0, valid], np.float64)),
        torch.from_numpy(np.asarray(t_valid, np.float64)),
        alpha=0.25, gamma=2.0, reduction="sum",
    ).item()
    print(f"focal loss (alpha 0.25, gamma 2, sum): minirccn {float(ours):.6f}, torchvision {tv_loss:.6f}")
    T.check(np.isclose(float(ours), tv_loss, rtol=1e-5), "torchvision.ops.sigmoid_focal_loss gives the same sum")

# %% [markdown]
# ## 5. On a feature pyramid: which level trains which object
#
# Sections 1-4 used one stride-4 map that carries every anchor size. The RetinaNet of
# the paper (and torchvision's `retinanet_resnet50_fpn`) runs its head on the levels
# **P3 .. P7** of a feature pyramid: P3-P5 from the FPN, P6 a 3x3 stride-2 conv (on C5 in
# the paper, on P5 in torchvision) and P7 a 3x3 stride-2 conv on ReLU(P6); there is no
# P2. minirccn's RetinaNet on the `resnet-fpn-tiny` preset reuses tutorial 11's Faster
# R-CNN pyramid instead: **P2 .. P5 plus a max-pooled level** (strides printed below).
# That is a deviation (listed in [`DEVIATIONS.md`](DEVIATIONS.md)): on 128-pixel images
# the small objects need the stride-4 level, and one pyramid serves both detectors. What
# is the paper's: level `l` gets anchors of ONE base size (4 x its stride) times three
# octave scales `1, 2^(1/3), 2^(2/3)` (truncated to whole pixels, as torchvision's
# `int(x * 2 ** (1 / 3))`) times the three ratios: still `A = 9` per cell, the same
# 9 x Kc and 9 x 4 output channels, the same weights on every level. The labelling is unchanged: all levels' anchors are concatenated and
# matched at once, so an object is positive on the level(s) whose anchors fit it.

# %%
from minirccn.detector.models.retinanet import level_anchor_sizes  # noqa: E402

fcfg = preset("resnet-fpn-tiny", model="retinanet")
fmodel = RetinaNet(fcfg, names, rng=np.random.default_rng(0))
flevels, _ = fmodel.backbone.forward(fmodel.params, x[None], False, "numpy")
all_anchors, fcounts = fmodel.anchor_generator([f.shape[2:] for f in flevels])
fanchors = np.split(all_anchors, np.cumsum(fcounts)[:-1])  # each level's anchors
sizes = level_anchor_sizes(fcfg)
bounds = np.cumsum([0] + [len(a) for a in fanchors])
flabels, _, fmatches = RetinaNetTargets.from_config(fcfg)(
    np.concatenate(fanchors).astype(np.float64), gt, gt_labels
)
for li, (f, s, n) in enumerate(zip(flevels, fmodel.strides, sizes)):
    print(
        f"level {li}: map {f.shape[2]}x{f.shape[3]}, stride {s:2d}, anchor sizes {n}: "
        f"{len(fanchors[li])} anchors"
    )
T.check(
    sizes[0] == (16, int(16 * 2 ** (1 / 3)), int(16 * 2 ** (2 / 3))) == (16, 20, 25),
    "level 0's sizes are 16 x (1, 2^(1/3), 2^(2/3)), truncated",
)
level_of = np.searchsorted(bounds, np.arange(bounds[-1]), side="right") - 1
print("positive anchors of each object, per level:")
for j, (b, c) in enumerate(zip(gt, gt_labels)):
    side = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
    per = [int(((fmatches == j) & (level_of == li)).sum()) for li in range(len(fanchors))]
    print(f"  {names[c]:8s} sqrt(area) {side:5.1f} px: {per}")
mean_level = [
    (level_of[fmatches == j]).mean() for j in range(len(gt))
]  # the level its positives sit on, on average
order = np.argsort([(b[2] - b[0]) * (b[3] - b[1]) for b in gt])
T.check(
    all(mean_level[a] <= mean_level[b] for a, b in zip(order[:-1], order[1:])),
    "a larger object's positives sit on the same or a coarser level",
)

# %% [markdown]
# ## 6. Training it one image at a time: why the gradients are clipped
#
# torchvision trains RetinaNet on 16 images per step; here a step sees ONE image, and
# both losses are divided by that image's number of positives `P` (max(1, P)): an image
# with one small object (`P` = 4) weighs each of its anchors 50 times more than an image
# whose big object has 200 positives, and an image with no object divides its whole
# background loss by 1. Once the network has learnt to raise some scores, such an image
# gives a gradient many times the usual one; SGD with momentum takes it, the class
# subnet's hidden units are pushed below zero everywhere, and their ReLUs never fire
# again ("dead"): the class subnet outputs its biases, the same score for every anchor.
# Or a step is so large that the loss overflows and the run is lost (which of the two
# happens first depends on the run: the line printed below says).
#
# The cure the RetinaNet presets use is mmdetection's: **clip the gradient's norm**
# (the config's `clip_grad_norm`, torch's `clip_grad_norm_`: when the norm of all the
# gradients together exceeds it, every gradient is scaled down by the same factor), which
# also allows a higher learning rate (docs/retinanet.md has the sweep). Below, two copies
# of the same network train on the same images at the preset's learning rate, one
# clipped: the gradient norms each saw, and the share of the class subnet's last ReLUs
# that fire on two test images (not measured for a run whose loss overflowed).

# %%
print(f"the preset: lr {fcfg.lr}, clip_grad_norm {fcfg.clip_grad_norm}")

# %%
from minirccn.detector.dense.head import num_convs_of  # noqa: E402
from minirccn.nn import optim  # noqa: E402
test_data = load_dataset("shapes", split="test")
test_batch = fmodel.load_batch(test_data, [0, 1], None, "numpy")


def relus_firing(m):
    """Share of the class subnet's last hidden ReLUs > 0 on two test images, all levels."""
    lv, _ = m.backbone.forward(m.params, test_batch.images, False, "numpy")
    # level by level (batched=False): each hidden layer is conv + ReLU fused, and its cache
    # keeps the layer's output, whose positive entries are the ReLUs that fire
    _, _, hc = retinanet_head_forward(m.params, lv, backend="numpy", batched=False)
    masks = [level.convs[num_convs_of(m.params) - 1].out > 0 for level in hc.cls]
    return sum(float(k.sum()) for k in masks) / sum(k.size for k in masks)


steps = T.pick(300, 6)
backend = T.pick("numba", "numpy")  # the same numbers up to rounding; numba is faster
firing = {}
for clip in (0.0, fcfg.clip_grad_norm):
    c = fcfg.replace(clip_grad_norm=clip)
    m = RetinaNet(c, names, rng=np.random.default_rng(0)).to(backend)
    o = make_optimizer(m)
    rng = np.random.default_rng(0)
    norms, diverged = [], None
    for step in range(steps):  # train_step's work, written out to see the norm
        b = m.load_batch(data, [step], rng, backend)
        with np.errstate(all="ignore"):  # an unclipped run may overflow: reported below
            out, cache = m.forward(b, rng, backend=backend)
        if not np.isfinite(sum(out.values())):
            diverged = step  # the loss overflowed: the run is lost
            break
        g = m.backward(cache)
        norms.append(float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in g.values()))))
        if clip:
            g, _ = optim.clip_grad_norm(g, clip)
        o.lr = lr_at(step, c)
        o.step(g)
    firing[clip] = 0.0 if diverged is not None else relus_firing(m)
    big = int(np.argmax(norms))
    print(
        f"clip_grad_norm {clip:g}: {len(norms)} steps at lr {c.lr}"
        + (f" (the loss overflowed at step {diverged})" if diverged is not None else "")
        + f", gradient norm median {np.median(norms):.2f}, above 10x the median on "
        f"{int((np.array(norms) > 10 * np.median(norms)).sum())} steps, largest "
        f"{norms[big]:.3g} (step {big}, {len(data[big]['labels'])} objects); "
        + (
            "class-subnet ReLUs not measured (the run is lost)"
            if diverged is not None
            else f"class-subnet ReLUs firing {firing[clip]:.2%}"
        )
    )
if not T.FAST:  # six steps (fast mode) are too few for the collapse
    T.check(
        firing[fcfg.clip_grad_norm] > 5 * firing[0.0],
        "without clipping, the class subnet's ReLUs die (or the loss overflows)",
    )

# %% [markdown]
# ## 7. Inference: per level top-k, threshold, decode, class-wise NMS
#
# At test time (torchvision's `RetinaNet.postprocess_detections`), per image:
#
# 1. per level: the sigmoid scores of every `(anchor, class)` pair, flattened; keep those
#    `> retina_score_thresh`, then the `retina_topk_candidates` best of them;
# 2. decode each kept pair's anchor with its 4 deltas (weights 1) and clip to the image;
# 3. all levels together: NMS **per class** at `retina_nms_thresh` (an anchor can give a
#    box for two classes; they do not suppress each other);
# 4. the `retina_detections_per_img` best.
#
# Below, the loop by hand on the clipped network trained in section 6, against the
# library's `detect`. Its few steps give low scores, so the loop and the library run
# with a score threshold of 0.01 here (the preset's is printed) to have candidates.

# %%
print(
    f"the preset: score > {fcfg.retina_score_thresh}, top {fcfg.retina_topk_candidates} per "
    f"level, NMS IoU > {fcfg.retina_nms_thresh} per class, at most {fcfg.retina_detections_per_img}"
)
post = RetinaNetPostprocess(0.01, fcfg.retina_topk_candidates, fcfg.retina_nms_thresh,
                            fcfg.retina_detections_per_img)
shown_model = RetinaNet(fcfg.replace(retina_score_thresh=0.01), names, params=m.params)
image_t = test_batch.images[:1]
lv_t, _ = shown_model.backbone.forward(shown_model.params, image_t, False, "numpy")
logit_t, delta_t, _ = retinanet_head_forward(shown_model.params, lv_t, backend="numpy")
all_t, counts_t = shown_model.anchor_generator([f.shape[2:] for f in lv_t])
anchor_t = np.split(all_t, np.cumsum(counts_t)[:-1])  # each level's anchors
score_t = 1 / (1 + np.exp(-logit_t[0]))
cand_boxes, cand_scores, cand_labels = [], [], []
start = 0
for li, a_l in enumerate(anchor_t):
    sc_l = score_t[start : start + len(a_l)].reshape(-1)  # (M_l * Kc,) flat index anchor * Kc + class
    d_l = delta_t[0, start : start + len(a_l)]
    start += len(a_l)
    idx = np.nonzero(sc_l > 0.01)[0]
    idx = idx[np.argsort(-sc_l[idx], kind="stable")][: fcfg.retina_topk_candidates]
    a_i, c_i = idx // Kc, idx % Kc
    boxes_l = ops.clip_boxes(ops.decode_boxes(d_l[a_i], a_l[a_i]), (128, 128))
    print(f"  level {li}: {len(a_l) * Kc} (anchor, class) pairs, {len(idx)} above 0.01 kept")
    cand_boxes.append(boxes_l)
    cand_scores.append(sc_l[idx])
    cand_labels.append(c_i + 1)
cb, cs, cl = np.concatenate(cand_boxes), np.concatenate(cand_scores), np.concatenate(cand_labels)
keep_t = ops.batched_nms(cb, cs, cl, fcfg.retina_nms_thresh)[: fcfg.retina_detections_per_img]
print(f"{len(cb)} candidates -> {len(keep_t)} after class-wise NMS; the best 3:")
for k in keep_t[:3]:
    print(f"  {names[cl[k]]:8s} {cs[k]:.3f} {np.round(cb[k].astype(np.float64), 1).tolist()}")
lib = shown_model.detect(image_t, [(128, 128)], backend="numpy")[0]
T.check(
    np.allclose(lib["boxes"], cb[keep_t]) and np.array_equal(lib["labels"], cl[keep_t]),
    "the inference loop by hand == minirccn's RetinaNet detect (boxes and labels)",
)

# %% [markdown]
# ## Summary
#
# * Anchors: best IoU >= `retina_fg_iou_thresh` positive (plus each object's best
#   anchor, matched to its own best object), < `retina_bg_iou_thresh` negative, in
#   between ignored (no loss). Every non-ignored anchor trains the classifier.
# * Targets: Kc sigmoid targets per anchor (one-hot, background = all zeros) and 4 box
#   numbers on positives only; several objects of different classes each light up their
#   own column on their own anchors.
# * Outputs: channel `4a + j` of the box map and `a * Kc + c` of the class map belong to
#   anchor `a` of that cell; the loss touches only the channels its targets name.
# * Focal loss: `(1 - p_t)^gamma` makes easy negatives (`p_t` near 1) a tiny part of the
#   loss; the prior-probability init (`p = 0.01`) makes every negative easy from the first
#   step. Neither alone is enough (section 4's table): at bias 0 every anchor is equally
#   hard and gamma leaves the negatives' share where it was; with the prior init and no
#   gamma they are still a sizeable share.
# * Pyramid: every level has its own anchor sizes and the same head; the matcher sends
#   each object to the level(s) whose anchors fit it. (minirccn's levels are P2-P5 and a
#   max-pooled level, not the paper's P3-P7: [`DEVIATIONS.md`](DEVIATIONS.md).)
# * Inference: per level top-k above a score threshold, decode, clip; class-wise NMS over
#   all levels; the best `retina_detections_per_img`.
# * One image per step: the per-image normalisation makes some steps' gradients far
#   larger than the rest; clipping the gradient norm keeps the class subnet alive.
#
# `minirccn train --model retinanet` trains the whole detector (docs/retinanet.md).
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it expected.
#
# 1. Count the objects of section 1's image, and of the first 20 training images, that
#    get no positive anchor with `retina_allow_low_quality_matches=False` (stride-4 map,
#    the `tiny` RetinaNet of sections 1-4).
# 2. The focal loss's gradient with respect to the logit, for a negative (target 0) with
#    `alpha` off: write it from `FL = -(p)^gamma log(1 - p)`, `p = sigmoid(z)`, for gamma 0
#    and 2. How much smaller is it at gamma 2 for an easy negative (`p = 0.01`)?
# 3. `minirccn train --model retinanet --set focal_gamma=0` trains with plain
#    cross-entropy (a few minutes; compare its `metrics.json` with the default's). Here:
#    with the prior init `p = 0.01`, what share of section 4's untrained loss comes from
#    the negatives at gamma 0, and at gamma 2? (Compare with section 4's bias-0 rows.)


# %%
@T.stub
def objects_without_positive(images, allow_low_quality):
    """Number of objects of ``images`` (samples) with no positive anchor, tiny RetinaNet anchors."""
    raise NotImplementedError


@T.stub
def focal_grad_negative(z, gamma):
    """d FL / d z for target 0, alpha off: FL = -(p ** gamma) * log(1 - p), p = sigmoid(z)."""
    raise NotImplementedError


@T.stub
def negatives_share(gamma):
    """Share (0..1) of section 4's untrained loss (prior bias, alpha off) from the negatives."""
    raise NotImplementedError


# %%
first20 = [data[i] for i in range(T.pick(20, 5))]


def _check_no_low_quality():
    lost_on = objects_without_positive(first20, True)
    lost_off = objects_without_positive(first20, False)
    expected = 0
    for smp in first20:
        iou_s = ops.box_iou(anchors.astype(np.float64), smp["boxes"].astype(np.float64))
        owner = iou_s.argmax(axis=1)
        good = iou_s.max(axis=1) >= cfg.retina_fg_iou_thresh
        expected += sum(not np.any(good & (owner == j)) for j in range(len(smp["boxes"])))
    n_obj = sum(len(smp["boxes"]) for smp in first20)
    print(f"  {n_obj} objects: {lost_off} without a positive when low-quality matches are off, {lost_on} with them on")
    return lost_off == expected and lost_on <= lost_off


T.exercise("12.1", _check_no_low_quality, "off: the objects whose best anchor IoU is < 0.5 (or owned by a neighbour); on: fewer")


def _check_focal_grad():
    z = np.array([-4.6, -2.0, 0.0, 1.5])
    t0 = np.zeros_like(z)
    ok = True
    for gamma in (0.0, 2.0):
        _, ref = losses.sigmoid_focal_loss(z, t0, -1, gamma, "sum")
        ok &= bool(np.allclose(focal_grad_negative(z, gamma), ref, rtol=1e-6, atol=1e-12))
    ratio = focal_grad_negative(np.array([-4.595]), 0.0)[0] / focal_grad_negative(np.array([-4.595]), 2.0)[0]
    print(f"  at p = 0.01 the gradient is {ratio:.0f}x smaller with gamma 2")
    return ok and ratio > 1000


T.exercise("12.2", _check_focal_grad, "equal to sigmoid_focal_loss's gradient; thousands of times smaller at p = 0.01 (about 1/(3p^2))")


def _check_share():
    s0, s2 = negatives_share(0.0), negatives_share(2.0)
    print(f"  share of the loss from the negatives: gamma 0 {s0:.1%}, gamma 2 {s2:.1%}")
    return 0.01 < s0 < 1 and s2 < s0 / 100


T.exercise(
    "12.3",
    _check_share,
    "gamma 0: tens of percent (the prior init already makes each negative cheap); gamma 2: "
    "over 100 times less",
)
