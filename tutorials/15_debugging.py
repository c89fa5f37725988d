# %% [markdown]
# # Tutorial 15: debugging a detector that does not learn
#
# A detector has many parts, and most bugs do not crash: the loss just stays
# high, or falls and the mAP stays at zero. This tutorial is a checklist, in
# the order worth trying, with each failure **reproduced on the page and
# fixed**:
#
# 1. overfit **one image** first;
# 2. the **encode / decode round trip** of the box targets;
# 3. can the anchors reach the objects? **best-anchor IoU by object size**;
# 4. **look** at the targets and the proposals;
# 5. **batch norm with one image per batch**;
# 6. the **NaN guard**;
# 7. **learning-rate symptoms**: too small, right, too large.

# %%
import numpy as np

import _common as T
from minirccn import ops, viz
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.detector.backbones import vgg as bb
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.models import faster_rcnn as M
from minirccn.engine.loop import TrainingDiverged, train_step
from minirccn.nn import optim

BACKEND = "numba"
STEPS = T.pick(120, 6)  # SGD steps of each one-image run
data = load_dataset("shapes", split="train", seed=0)
IMAGE = 3
sample = data[IMAGE]
base = preset("tiny")
# one image, no flip, a short warm-up, no LR drop, batch norm in training mode throughout
one = base.replace(
    flip=False, iters=STEPS, warmup_iters=max(1, STEPS // 10), milestones=(), bn_freeze_iter=0
)
print(f"image {IMAGE}: {len(sample['boxes'])} objects; {STEPS} steps per run, lr {one.lr}")


def overfit(cfg, steps=STEPS, seed=0):
    """Train a fresh model on image IMAGE alone; returns (model, per-step total losses, error)."""
    rng = np.random.default_rng(seed)
    model = M.FasterRCNN(cfg, data.class_names, rng=rng).to(BACKEND)
    opt = optim.SGD(model.trainable(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = []
    for step in range(steps):
        batch = model.load_batch(data, [IMAGE], rng, BACKEND)
        try:
            history.append(train_step(model, opt, batch, rng, step, backend=BACKEND)["loss"])
        except TrainingDiverged as err:  # the NaN guard (section 6)
            return model, history, str(err)
    return model, history, None


# %% [markdown]
# ## 1. Overfit one image
#
# If the network cannot memorise a single image, nothing else matters yet:
# the bug is in the losses, the targets, the backward or the update, not in
# the data or the schedule. A working detector drives the loss on one image
# far down in a hundred steps and then finds that image's objects.

# %%
model, history, err = overfit(one)
q = max(1, len(history) // 4)
first, last = np.mean(history[:q]), np.mean(history[-q:])
print(f"total loss: first quarter {first:.3f}, last quarter {last:.3f}")
det = model.predict(sample["image"], backend=BACKEND)
iou = ops.box_iou(sample["boxes"].astype(np.float32), det["boxes"][:10].astype(np.float32))
best = iou.max(axis=1) if iou.size else np.zeros(len(sample["boxes"]))
print("best IoU of each object with the 10 top detections:", best.round(2))
T.check(err is None and np.isfinite(history).all(), "one-image training ran without diverging")
if not T.FAST:  # a handful of steps (fast mode) promise nothing
    T.check(last < 0.5 * first, "the loss on one image halved: the model can learn")
    T.check(best.min() > 0.5, "every object of the memorised image is found at IoU > 0.5")

# %% [markdown]
# ## 2. The encode / decode round trip
#
# The regression targets are `encode(gt, anchor) * weights`; at inference
# the predicted deltas are decoded with the *same* weights. A mismatch does
# not crash and the loss still falls: the network learns the weighted
# targets perfectly, and every box at test time is off. The bug, reproduced:
# the head's targets use `bbox_reg_weights = (10, 10, 5, 5)`, decoded here
# with the default weights 1.

# %%
jitter = np.random.default_rng(1).normal(0, 3, (len(sample["boxes"]), 4))
proposals = sample["boxes"].astype(np.float64) + jitter  # RoIs near each object
targets = ops.encode_boxes(sample["boxes"].astype(np.float64), proposals, one.bbox_reg_weights)
good = ops.decode_boxes(targets, proposals, one.bbox_reg_weights)
bug = ops.decode_boxes(targets, proposals)  # forgot the weights
iou_good = np.diag(ops.box_iou(good, sample["boxes"].astype(np.float64)))
iou_bug = np.diag(ops.box_iou(bug, sample["boxes"].astype(np.float64)))
print(f"weights {one.bbox_reg_weights}: decoded == gt, IoU {iou_good.round(3)}")
print(f"decoded with weights 1 (the bug): IoU {iou_bug.round(3)}")
T.check(np.allclose(good, sample["boxes"]), "decode(encode(gt)) == gt with the same weights")
T.check(iou_bug.mean() < iou_good.mean(), "decoding with other weights moves every box off")

# %% [markdown]
# ## 3. Can the anchors reach the objects?
#
# An object is a positive RPN example only if some anchor overlaps it by
# `rpn_fg_iou_thresh` (printed below), or as its best anchor ("low-quality
# match"). If the anchors are much larger than the objects, small objects
# only ever get low-quality matches and the RPN barely learns them. The bug,
# reproduced: the paper's anchor sizes (128, 256, 512), made for ~600-pixel
# images, on 128-pixel `shapes` images. The fix: sizes that match the
# objects (the preset's).

# %%
x0 = model.preprocess(sample["image"])[0][None]
feat_hw = tuple(bb.backbone_forward(model.params, x0, backbone_spec(one), train=False)[0].shape[2:])
boxes = np.concatenate([data[i]["boxes"] for i in range(T.pick(200, 30))]).astype(np.float64)
side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # sqrt(area), px
bins = [(0, 16), (16, 32), (32, 64), (64, 1e9)]
print(f"rpn_fg_iou_thresh {one.rpn_fg_iou_thresh}; {len(boxes)} objects; map {feat_hw}")
print(f"{'anchor sizes':18s} " + " ".join(f"{f'{lo}-{hi if hi < 1e9 else 999:g} px':>14s}" for lo, hi in bins))
share = {}
for sizes in ((128, 256, 512), base.anchor_sizes):
    m = M.FasterRCNN(one.replace(anchor_sizes=sizes), data.class_names, rng=np.random.default_rng(0))
    best_iou = ops.box_iou(m.anchor_generator([feat_hw])[0], boxes).max(axis=0)
    cells = []
    for lo, hi in bins:
        inside = (side >= lo) & (side < hi)
        cells.append(f"{best_iou[inside].mean():.2f} ({np.mean(best_iou[inside] >= one.rpn_fg_iou_thresh):4.0%})" if inside.any() else "-")
    share[sizes] = np.mean(best_iou >= one.rpn_fg_iou_thresh)
    print(f"{str(sizes):18s} " + " ".join(f"{c:>14s}" for c in cells))
print("(mean best-anchor IoU per object size, and the share of objects above the threshold)")
T.check(
    share[base.anchor_sizes] > share[(128, 256, 512)],
    f"the preset's sizes reach more objects ({share[base.anchor_sizes]:.0%} vs "
    f"{share[(128, 256, 512)]:.0%} above the threshold)",
)

# %% [markdown]
# ## 4. Look at the targets and the proposals
#
# Numbers hide what a picture shows at once: positive anchors far from any
# object (a coordinate-order bug: `(y, x)` for `(x, y)`), RoIs all in one
# corner (a stride bug), no foreground RoI at all. One training forward
# returns its `Samples`: the sampled anchors with labels and the sampled
# RoIs with classes. Left: the objects and the positive anchors. Right: the
# foreground RoIs of the model trained in section 1.

# %%
rng = np.random.default_rng(0)
batch = model.load_batch(data, [IMAGE], rng, BACKEND)
_, cache = model.forward(batch, rng, backend=BACKEND)
samples = cache.samples  # the forward's random choices: sampled anchors and RoIs
anchors, _ = model.anchor_generator([feat_hw])
positive = anchors[samples.rpn_labels[0] == 1]
fg_rois = samples.rois[samples.roi_labels > 0, 1:]
print(f"{len(positive)} positive anchors, {len(fg_rois)} foreground RoIs of {len(samples.rois)}")
iou_pos = ops.box_iou(positive, sample["boxes"].astype(np.float64)).max(axis=1)
T.check(len(positive) > 0 and iou_pos.min() > 0, "every positive anchor overlaps an object")
scale = T.pick(3, 2)
gt_panel = viz.draw_detections(sample["image"], sample["boxes"], sample["labels"], None, data.class_names, scale=scale)
# one colour per box, none of them red, pink or magenta: the shapes' backgrounds often are
no_red = [k for k in range(len(viz.PALETTE)) if k not in (0, 6, 8, 12)]


def colour_labels(n):
    return np.array([no_red[k % len(no_red)] for k in range(n)], dtype=int)


blank = [""] * len(viz.PALETTE)
left = viz.draw_detections(gt_panel, positive * scale, colour_labels(len(positive)), class_names=blank, width=1)
right = viz.draw_detections(gt_panel, fg_rois * scale, colour_labels(len(fg_rois)), class_names=blank, width=1)
T.save_grid(
    [
        T.caption(left, f"objects and the {len(positive)} positive anchors"),
        T.caption(right, f"{len(fg_rois)} foreground RoIs (trained {STEPS} steps)"),
    ],
    "15_debugging.png",
    cols=2,
    colours=256,
)

# %% [markdown]
# ## 5. Batch norm with one image per batch
#
# In training mode batch norm normalises each channel by the batch's mean
# and spread. With one image per batch that is the image's *own* statistics:
# any per-channel scale and shift of the first conv's output disappears.
# Doubling the image's contrast is such a change (`2 W x + b = 2 (W x + b) -
# b`), so in training mode the network literally cannot see it. At test
# time (running statistics) it can, and it sees numbers it never trained on.
# The preset's fix: freeze batch norm (running statistics) for the last part
# of training, `bn_freeze_iter` (tutorial 8 tells the story).

# %%
spec = backbone_spec(one)
x2 = 2 * x0  # the same image, twice the contrast (after normalisation)
params = {k: v.copy() for k, v in model.params.items()}  # train mode updates running stats
f_train = bb.backbone_forward(params, x0, spec, train=True)[0]
f_train2 = bb.backbone_forward(params, x2, spec, train=True)[0]
f_eval = bb.backbone_forward(model.params, x0, spec, train=False)[0]
f_eval2 = bb.backbone_forward(model.params, x2, spec, train=False)[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


print(f"image vs 2 x image: training mode (own statistics) {rel(f_train, f_train2):.1e}, "
      f"test mode (running statistics) {rel(f_eval, f_eval2):.2f}")
print(f"same image, training mode vs test mode: {rel(f_eval, f_train):.2f}")
T.check(rel(f_train, f_train2) < 1e-2 < rel(f_eval, f_eval2), "train-mode BN with one image hides contrast")

# %% [markdown]
# ## 6. The NaN guard
#
# One NaN in one parameter spreads through every later forward, and a NaN
# loss makes a NaN gradient: every parameter is NaN one step later, and the
# run continues silently. `minirccn.engine.loop.train_step` checks the losses
# before the backward and raises `TrainingDiverged`, naming the step and the
# loss; `minirccn train` turns it into one clear line and a non-zero exit,
# and the last checkpoint is still good. Reproduced: a NaN written into one
# weight of the RPN's classifier.

# %%
broken = M.FasterRCNN(one, data.class_names, rng=np.random.default_rng(0)).to(BACKEND)
broken.params["rpn.cls.w"].flat[0] = np.nan
opt = optim.SGD(broken.trainable(), lr=one.lr, momentum=one.momentum)
before = {k: v.copy() for k, v in broken.params.items()}
try:
    train_step(broken, opt, broken.load_batch(data, [IMAGE], rng, BACKEND), rng, 0, backend=BACKEND)
    message = None
except TrainingDiverged as e:
    message = str(e)
print("TrainingDiverged:", message)
T.check(message is not None and "loss_objectness" in message, "the guard names the NaN loss")
T.check(
    all(np.array_equal(before[k], broken.params[k], equal_nan=True) for k in broken.trainable()),
    "no trainable parameter was updated by the diverged step (the batch-norm running "
    "statistics were: the forward ran)",
)

# %% [markdown]
# ## 7. Learning-rate symptoms
#
# The same one-image run at three learning rates: far too small (the loss
# creeps; it looks like a bug in the gradient), the preset's, and far too
# large (the loss jumps, then stalls high or becomes NaN, which the guard
# stops). A learning rate that is merely a little too large is subtler: the
# loss falls, but many ReLUs die (`docs/presets.md`: at lr 0.02 most of fc6's
# units stop firing), so the network gives up capacity without a sign in the
# loss. Check the share of active units when a run plateaus early.
#
# Where to read it: `model.forward` returns a cache; its `head` field holds
# the box head's layer caches (tutorial 7's fc layers), and
# `cache.head.relu6.mask` is the `(R, D)` boolean mask of fc6's ReLU: True
# where a unit fired for a RoI. Its mean is the share of active fc6 units.


# %%
def active_fc6(m, cfg):
    """Share of fc6's ReLU units > 0 over the sampled RoIs of one training forward on IMAGE."""
    batch = m.load_batch(data, [IMAGE], None, BACKEND)  # no rng: no flip
    _, cache = m.forward(batch, np.random.default_rng(0), backend=BACKEND)
    mask = cache.head.relu6.mask
    return float(np.asarray(mask).mean())


curves, finals = {}, {}
for name, lr in (("lr / 100", one.lr / 100), ("preset lr", one.lr), ("lr x 40", one.lr * 40)):
    m_lr, hist, err = overfit(one.replace(lr=lr))
    curves[f"{name} = {lr:g}" + (" (diverged)" if err else "")] = hist
    finals[name] = (np.mean(hist[-q:]) if hist else float("nan"), err)
    active = f", fc6 units active {active_fc6(m_lr, one):.0%}" if not err else ""
    tail = f"diverged: {err}" if err else f"last-quarter loss {finals[name][0]:.3f}{active}"
    print(f"  {name:10s} lr {lr:<8g} {len(hist)} steps, {tail}")
viz.plot_curves(
    curves,
    T.out_dir() / "15_learning_rates.png",
    title=f"one image, {STEPS} steps, three learning rates",
    xlabel="SGD step",
    ylabel="total loss",
    logy=True,
    smoothing=0.6,
)
print(f"wrote {T.out_dir() / '15_learning_rates.png'}")
T.check(len(curves) == 3, "three runs plotted")
if not T.FAST:
    T.check(
        finals["preset lr"][0] < finals["lr / 100"][0],
        "the preset's learning rate beats one a hundred times smaller",
    )

# %% [markdown]
# ## Summary
#
# * Overfit one image first; if that fails, the bug is in the model.
# * Round-trip the box coder with the *same* weights on both sides.
# * Check that some anchor reaches every object size.
# * Draw positive anchors and foreground RoIs over the image.
# * With one image per batch, batch norm in training mode sees each image
#   through its own statistics: freeze it for the end of training.
# * Stop on the first NaN loss; tune the learning rate by its symptoms.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it expected.
#
# 1. Swap `x` and `y` in the ground truth (a classic loader bug): write the swap, then
#    the cell counts the positive anchors of section 4's image with the true and the
#    swapped boxes. Both get positives and a loss that falls: would the loss have told
#    you? (No: only a picture, section 4, shows it.)
# 2. Train section 1's one-image run with `bn_freeze_iter = STEPS // 2`: return the
#    best IoU of each object with the 10 top detections (as section 1 prints), and
#    compare with section 1's.
# 3. For a few learning-rate factors, train section 7's run and return, per factor,
#    the last-quarter loss and the share of active fc6 units (`active_fc6`), or None
#    for a run that diverged. Which is the largest factor that still overfits?


# %%
@T.stub
def swap_xy(boxes):
    """(G, 4) xyxy boxes with x and y exchanged: (y1, x1, y2, x2)."""
    raise NotImplementedError


@T.stub
def best_iou_after_overfit(cfg):
    """Best IoU of each object of IMAGE with the 10 top detections after overfit(cfg)."""
    raise NotImplementedError


@T.stub
def lr_factor_sweep(factors):
    """{factor: (last-quarter loss, active fc6 share) or None if it diverged} for one.lr * factor."""
    raise NotImplementedError


# %%
def _check_swap():
    gt4 = sample["boxes"].astype(np.float64)
    swapped = np.asarray(swap_xy(gt4))
    true_pos = int((model.anchor_targets.label(model.anchor_generator([feat_hw])[0], gt4, (128, 128))[0] == 1).sum())
    swap_pos = int((model.anchor_targets.label(model.anchor_generator([feat_hw])[0], swapped, (128, 128))[0] == 1).sum())
    print(f"  positive anchors: {true_pos} with the true boxes, {swap_pos} with x and y swapped")
    return np.array_equal(swapped, gt4[:, [1, 0, 3, 2]]) and swap_pos > 0


T.exercise("15.1", _check_swap, "(y1, x1, y2, x2); the swapped boxes still get positive anchors")


def _check_freeze():
    again = np.asarray(best_iou_after_overfit(one))
    frozen = np.asarray(best_iou_after_overfit(one.replace(bn_freeze_iter=max(1, STEPS // 2))))
    print(f"  best IoUs: section 1 {best.round(2)}, again {again.round(2)}, BN frozen half way {frozen.round(2)}")
    return np.allclose(again, best) and len(frozen) == len(best) and np.all((frozen >= 0) & (frozen <= 1))


T.exercise("15.2", _check_freeze, "overfit(one) reproduces section 1 exactly; the frozen run gives one IoU per object")


def _check_sweep():
    factors = T.pick((1, 4, 10, 40), (1, 40))
    out = lr_factor_sweep(factors)
    for f_, v in out.items():
        print(f"  lr x {f_:<3}: " + ("diverged" if v is None else f"last-quarter loss {v[0]:.3f}, fc6 active {v[1]:.0%}"))
    ok = sorted(out) == sorted(factors) and out[1] is not None
    return ok and np.isclose(out[1][0], finals["preset lr"][0]) and all(v is None or 0 <= v[1] <= 1 for v in out.values())


T.exercise(
    "15.3",
    _check_sweep,
    "factor 1 reproduces section 7's preset run; larger factors: fewer active fc6 units, and from "
    "some factor on a loss that stalls high (or a diverged run: None)",
)
