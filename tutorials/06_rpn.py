# %% [markdown]
# # Tutorial 6: training the region proposal network
#
# Tutorial 2 built the anchors: `H * W * A` fixed boxes. The `tiny` preset
# (stride 4) has a 32 x 32 map on a 128 x 128 `shapes` image; this tutorial
# pins a stride-16 stack instead (an 8 x 8 map) so that every anchor can be
# drawn; both counts are printed in the first cell. The RPN predicts, for each
# anchor, two objectness scores (background, object) and four box deltas. To
# train it we must say, for every anchor, what the right answer is:
#
# * **anchor targets**: which anchors are objects (positive), which are
#   background (negative), which we do not care about (ignored);
# * **sampling**: 256 of the labelled anchors per image, at most half positive,
#   so the few positives are not drowned by hundreds of easy negatives;
# * **box encoding**: for each positive anchor, the four numbers that would
#   move it onto its object;
# * **the loss**: softmax cross-entropy on the scores, smooth L1 on the deltas.
#
# None of the first three steps is differentiable: they produce constants the
# loss compares against. We write each one as a loop, check it against
# `minirccn.detector.matching`, `minirccn.detector.rpn.targets` and
# `minirccn.detector.rpn.head`, and end with an image that has no object at all.

# %%
import math

import numpy as np
from PIL import ImageDraw

import _common as T
from minirccn.nn import gradcheck, losses
from minirccn import ops, viz
from minirccn.detector.backbones.vgg import backbone_forward
from minirccn.config import preset
from minirccn.data import ShapesConfig, load_dataset
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.models.faster_rcnn import FasterRCNN
from minirccn.detector.rpn.head import rpn_forward, rpn_losses
from minirccn.detector.matching import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS

# float64: the loss check at the end is exact. The stack is pinned to four
# conv+pool stages (stride 16, an 8 x 8 map on 128 x 128 images) so that the
# numbers below stay put whatever the `tiny` preset's current stride is.
STRIDE16 = ((16, 1, True), (32, 1, True), (64, 1, True), (128, 1, True))
cfg = preset("tiny", dtype="float64", backbone_stages=STRIDE16)
data = load_dataset("shapes", split="train", seed=0)
model = FasterRCNN(cfg, data.class_names, rng=np.random.default_rng(6))
(STRIDE,) = model.backbone.strides
A = model.anchor_generator.num_anchors  # anchors per cell
anchors, _ = model.anchor_generator([(128 // STRIDE, 128 // STRIDE)])  # (576, 4) float64
sample = data[3]
image, gt = sample["image"], sample["boxes"].astype(np.float64)
tiny_cfg = preset("tiny")
tiny_net = FasterRCNN(tiny_cfg, data.class_names, rng=np.random.default_rng(0))
(tiny_stride,) = tiny_net.backbone.strides
n_tiny = (128 // tiny_stride) ** 2 * tiny_net.anchor_generator.num_anchors
print(f"the tiny preset: stride {tiny_stride}, {n_tiny} anchors on a 128 x 128 image")
print(f"this tutorial's pinned stack: stride {STRIDE}, {len(anchors)} anchors "
      f"({128 // STRIDE} x {128 // STRIDE} cells x {A})")
print(f"{len(gt)} objects:\n{gt}")
print(f"thresholds (config): positive IoU >= {cfg.rpn_fg_iou_thresh} (rpn_fg_iou_thresh), negative "
      f"< {cfg.rpn_bg_iou_thresh} (rpn_bg_iou_thresh); {cfg.rpn_batch_size_per_image} sampled, "
      f"at most {cfg.rpn_positive_fraction:.0%} positive")

# %% [markdown]
# ## 1. Labels: positive, negative, ignored
#
# With the `(M, G)` IoU matrix between the `M` anchors and the `G` objects
# (tutorial 1's `ops.box_iou`), each anchor looks at its best object:
#
#     best_i = max_g IoU(anchor_i, gt_g)
#     label_i = 1 (positive)  if best_i >= 0.7
#               0 (negative)  if best_i <  0.3
#              -1 (ignored)   otherwise: neither clearly an object nor clearly not
#
# The 0.7 rule alone can leave an object with no positive anchor at all: a
# 10-pixel object has IoU at most `100 / 256 = 0.39` with a 16 x 16 anchor. So
# there is a second rule (paper Sec. 3.1.2): **for each object, the anchor(s)
# with its highest IoU are positive**, whatever that IoU is, and on a tie *all*
# of the tied anchors are (torchvision's `allow_low_quality_matches`). An
# object that touches no anchor at all (best IoU 0) gets none here; torchvision's
# `Matcher` has no such test, so there every anchor that misses that object too
# (all tie at IoU 0) would be promoted (listed in [`DEVIATIONS.md`](DEVIATIONS.md)).
#
# `minirccn.detector.matching.Matcher` writes this rule once (the RoI head's
# targets in tutorial 7 use it too, with other numbers). Like torchvision's, it
# returns one number per anchor: the index of its object, or
# `BELOW_LOW_THRESHOLD` (-1, negative) or `BETWEEN_THRESHOLDS` (-2, ignored).
# The model builds its `AnchorTargetCreator` (a matcher with 0.7 / 0.3 and a
# sampler, section 2) once from the config; afterwards it is called with data only.
# Every target-assignment rule of the project (this one, the RoI head's, RetinaNet's
# and the FPN's level mapping) is in one table, with its config fields:
# [`tutorials/RULES.md`](RULES.md).


# %%
def assign_loop(anchors, gt, fg=0.7, bg=0.3):
    """Label each anchor (1 / 0 / -1) and match it (object index, -1 or -2), one at a time."""
    m, g = len(anchors), len(gt)
    labels = np.full(m, -1, dtype=np.int64)
    matched = np.zeros(m, dtype=np.int64)
    if g == 0:
        labels[:] = 0  # no object: every anchor is background
        return labels, np.full(m, BELOW_LOW_THRESHOLD)
    iou = ops.box_iou(anchors, gt)  # (M, G), tutorial 1
    for i in range(m):  # rule 1: each anchor's best object
        for j in range(1, g):
            if iou[i, j] > iou[i, matched[i]]:  # strict: the first object wins a tie
                matched[i] = j
        if iou[i, matched[i]] < bg:
            labels[i] = 0
        if iou[i, matched[i]] >= fg:
            labels[i] = 1
    for j in range(g):  # rule 2: each object's best anchor(s), ties included
        best = max(iou[i, j] for i in range(m))
        for i in range(m):
            if best > 0 and iou[i, j] == best:
                labels[i] = 1
    codes = np.where(labels == 0, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS)
    return labels, np.where(labels == 1, matched, codes)


labels_loop, matched_loop = assign_loop(anchors, gt)
print(model.anchor_targets.matcher)
labels, matched = model.anchor_targets.label(anchors, gt, (128, 128))
iou = ops.box_iou(anchors, gt)
print(
    f"positive {int((labels == 1).sum())}, negative {int((labels == 0).sum())}, "
    f"ignored {int((labels == -1).sum())}"
)
for g in range(len(gt)):
    w, h = gt[g, 2:] - gt[g, :2]
    print(
        f"  object {g} ({w:.0f} x {h:.0f} px): best IoU {iou[:, g].max():.2f}, "
        f"{int(((labels == 1) & (matched == g)).sum())} positive anchor(s) matched to it"
    )
T.check(
    np.array_equal(labels_loop, labels) and np.array_equal(matched_loop, matched),
    "naive loop == the model's AnchorTargetCreator.label (labels and matches)",
)
T.check(
    all(labels[iou[:, g].argmax()] == 1 for g in range(len(gt))),
    "every object has at least one positive anchor (rule 2), even below IoU 0.7",
)

# %% [markdown]
# ### A tie, and an object no anchor touches
#
# A 32 x 32 object centred at `x = 16`, exactly between the cell centres
# `x = 8` and `x = 24`: the two square 32-pixel anchors there overlap it by
# 24 x 32 pixels each, IoU `768 / 1280 = 0.6`. Neither reaches 0.7, both are
# the object's best, so both are positive. A second "object" far outside the
# image overlaps nothing and gets no anchor.

# %%
tie_gt = np.array([[0, 24, 32, 56], [500, 500, 520, 520]], dtype=np.float64)
tie_labels, tie_matched = model.anchor_targets.label(anchors, tie_gt, (128, 128))
tie_iou = ops.box_iou(anchors, tie_gt)
winners = np.nonzero(tie_labels == 1)[0]
print("positive anchors:", winners, "boxes:\n", anchors[winners], "\nIoU:", tie_iou[winners, 0])
T.check(
    len(winners) == 2 and np.allclose(tie_iou[winners, 0], 0.6),
    "two anchors tie at IoU 0.6 with the first object: both positive",
)
T.check(
    np.array_equal(assign_loop(anchors, tie_gt)[0], tie_labels) and not np.any(tie_matched == 1),
    "the loop agrees; the off-image object has no anchor",
)

# %% [markdown]
# ## 2. Sampling 256 anchors, at most half positive
#
# An image has a handful of positive anchors and hundreds of negatives; the
# loss would be dominated by easy background. So each image contributes a
# *mini-batch* of `256` labelled anchors, drawn uniformly at random without
# replacement:
#
#     num_pos = min(#positives, 256 * 0.5)
#     num_neg = min(#negatives, 256 - num_pos)
#
# positives first, then negatives filling the rest; every other anchor
# becomes -1 (no loss). The draws come from an explicit
# `numpy.random.Generator`, so a seed fixes the sample.


# %%
def sample_loop(labels, batch_size, fraction, rng):
    """Keep a random subset: shuffle the positives, keep the first few, then the negatives."""
    out = np.full_like(labels, -1)
    pos, neg = np.nonzero(labels == 1)[0], np.nonzero(labels == 0)[0]
    num_pos = min(len(pos), int(batch_size * fraction))
    num_neg = min(len(neg), batch_size - num_pos)
    for k in rng.permutation(len(pos))[:num_pos]:
        out[pos[k]] = 1
    for k in rng.permutation(len(neg))[:num_neg]:
        out[neg[k]] = 0
    return out


print(model.anchor_targets.sampler)
sampled = model.anchor_targets.sample(labels, np.random.default_rng(0))
print(
    f"sampled: {int((sampled == 1).sum())} positive + {int((sampled == 0).sum())} negative "
    f"= {int((sampled >= 0).sum())}"
)
T.check(
    np.array_equal(sample_loop(labels, 256, 0.5, np.random.default_rng(0)), sampled),
    "naive loop == AnchorTargetCreator.sample (its BalancedPositiveNegativeSampler), same seed",
)
T.check(
    (sampled == 1).sum() == (labels == 1).sum() and (sampled >= 0).sum() == 256,
    "few positives: all of them kept, negatives fill the 256",
)

# the other extreme: 192 "objects", exactly the 16-pixel anchors -> 192 positives, capped at 128
small_anchors = anchors.reshape(64, A, 4)[:, [0, 3, 6]].reshape(-1, 4)
crowd = model.anchor_targets.label(anchors, small_anchors, (128, 128))[0]
crowd_sampled = model.anchor_targets.sample(crowd, np.random.default_rng(0))
print(
    f"crowded image: {int((crowd == 1).sum())} positives -> sampled "
    f"{int((crowd_sampled == 1).sum())} positive + {int((crowd_sampled == 0).sum())} negative"
)
T.check(
    (crowd_sampled == 1).sum() == 128 and (crowd_sampled >= 0).sum() == 256,
    "many positives: at most 256 * 0.5 = 128 of them",
)

# %% [markdown]
# ## 3. Box encoding: four deltas per positive anchor
#
# The RPN does not predict corners; it predicts how to move and stretch its
# anchor `a` onto the matched object `g` (R-CNN's parametrisation), in
# centre / size form:
#
#     dx = (gx - ax) / aw          dw = ln(gw / aw)
#     dy = (gy - ay) / ah          dh = ln(gh / ah)
#
# Dividing the shift by the anchor's size makes the targets scale-invariant:
# a 16-pixel anchor 2 pixels off and a 64-pixel anchor 8 pixels off both have
# `dx = 0.125`. The logarithm makes the size change symmetric (twice as large
# is `+0.69`, half as large `-0.69`) and decoding, `gw = aw * exp(dw)`, can never
# give a negative width. The RPN uses weights `(1, 1, 1, 1)`; the head will
# use `(10, 10, 5, 5)` (tutorial 7).


# %%
def encode_loop(gt_boxes, anchor_boxes):
    """The four deltas of each (object, anchor) pair, with Python's math."""
    out = []
    for (g1, g2, g3, g4), (a1, a2, a3, a4) in zip(gt_boxes.tolist(), anchor_boxes.tolist()):
        aw, ah, gw, gh = a3 - a1, a4 - a2, g3 - g1, g4 - g2
        ax, ay, gx, gy = a1 + 0.5 * aw, a2 + 0.5 * ah, g1 + 0.5 * gw, g2 + 0.5 * gh
        out.append([(gx - ax) / aw, (gy - ay) / ah, math.log(gw / aw), math.log(gh / ah)])
    return np.array(out)


rng = np.random.default_rng(0)
lab, targets = model.anchor_targets(anchors, gt, (128, 128), rng)
pos = np.nonzero(lab == 1)[0]
loop_targets = encode_loop(gt[matched[pos]], anchors[pos])
print("targets of the first positive anchors (dx, dy, dw, dh):\n", targets[pos[:4]].round(3))
T.check(
    np.allclose(loop_targets, targets[pos], rtol=1e-12, atol=1e-12),
    "naive loop == the AnchorTargetCreator's regression targets (ops.encode_boxes)",
)
T.check(
    np.allclose(ops.decode_boxes(targets[pos], anchors[pos]), gt[matched[pos]]),
    "decode(encode(gt)) == gt: the deltas move each positive anchor exactly onto its object",
)
T.check(np.all(targets[lab != 1] == 0), "anchors that are not sampled positives: zero targets")

# %% [markdown]
# ### Why the natural log, not log10?
#
# Decoding uses `exp`, so encoding must use `ln`: with `log10` a box twice as
# wide encodes to `log10(2) = 0.30`, and `exp(0.30) = 1.35`, not 2. That is
# the only hard rule: decode with the inverse of the encoding.
#
# Used consistently (`log10` with `10 **`), `log10` is not a different method
# at all: `log10(r) = ln(r) / ln 10`, so log10 size targets are the ln targets
# with box-coder weights `(1, 1, 1/ln 10, 1/ln 10)`. That is the same knob as
# the head's weights `(10, 10, 5, 5)` (tutorial 7), turned the other way: it
# scales the size targets (and so their spread relative to the shifts and to
# the smooth-L1 switch point `beta = 1/9`). Below the switch point the loss is
# quadratic, so a weight `w` scales the gradient with respect to the ln-width
# by `w^2`; above it, by `w`. Any gradient-size argument "for ln and against
# log10" is an argument about this weight, and the weights choose it
# explicitly. We show the equivalence with numbers: the hand-written log10
# encoding equals `ops.encode_boxes` with weights `1/ln 10`, and the gradients
# of the log10 loss equal those of the weighted loss. (One more reason to keep
# `ln`: decoding's clamp `ln(1000 / 16)` is written in natural units.)

# %%
two_x = np.array([[0.0, 0.0, 20.0, 10.0]]), np.array([[5.0, 0.0, 15.0, 10.0]])  # twice as wide
dw_ln, dw_log10 = math.log(2.0), math.log10(2.0)
decoded_wrong = ops.decode_boxes(np.array([[0.0, 0.0, dw_log10, 0.0]]), two_x[1])
print(f"2x wider: ln -> dw = {dw_ln:.3f}, log10 -> dw = {dw_log10:.3f}")
print(
    f"decoding the log10 delta with exp gives width {np.ptp(decoded_wrong[0, [0, 2]]):.2f}, not 20"
)
T.check(
    np.isclose(ops.encode_boxes(*two_x)[0, 2], dw_ln),
    "ops.encode_boxes uses the natural log: dw = ln 2",
)

# log10 targets, written by hand, are the ln targets with weights (1, 1, 1/ln 10, 1/ln 10)
LN10 = math.log(10)
w_log10 = (1.0, 1.0, 1 / LN10, 1 / LN10)
log10_targets = loop_targets * np.array([1, 1, 0, 0]) + np.c_[
    np.zeros((len(pos), 2)),
    np.log10((gt[matched[pos], 2:] - gt[matched[pos], :2]) / (anchors[pos, 2:] - anchors[pos, :2])),
]
print(
    "log10 targets of the first positive anchors:\n", log10_targets[:4].round(3),
    f"\nweights (1, 1, 1/ln 10, 1/ln 10) = {np.round(w_log10, 4)}",
)
T.check(
    np.allclose(log10_targets, ops.encode_boxes(gt[matched[pos]], anchors[pos], w_log10)),
    "log10 encoding == ops.encode_boxes with weights (1, 1, 1/ln 10, 1/ln 10)",
)

# spreads of the four targets over the positive anchors of many images, three weightings
many = []
for k in range(T.pick(60, 15)):
    s = data[k]
    if len(s["boxes"]):
        lab_k, t_k = model.anchor_targets(anchors, s["boxes"].astype(np.float64), (128, 128), rng)
        many.append(t_k[lab_k == 1])
many = np.concatenate(many)
print(f"std of (dx, dy, dw, dh) over {len(many)} positive anchors:")
for name, w in (("ln, weights 1", (1, 1, 1, 1)), ("log10 = weights 1/ln 10", w_log10),
                ("head's weights (10, 10, 5, 5)", (10, 10, 5, 5))):
    print(f"  {name:32s} {(many * np.array(w)).std(axis=0).round(3)}")

# gradient of the smooth-L1 loss w.r.t. the predicted ln-width u, prediction 0, for a box
# `factor` times wider: log10 loss = smooth_l1(u / ln 10, ln(factor) / ln 10); weighted loss
# = smooth_l1(w u, w ln(factor)) with w = 1 / ln 10: the same function of u.
print(f"{'true size':>10} {'ln (w = 1)':>11} {'log10':>8} {'w = 1/ln 10':>12} {'w = 5':>7}")
rows = []
for factor in (1.05, 1.1, 1.5, 2.0):
    t = math.log(factor)
    g_ln = losses.smooth_l1(np.zeros(1), np.array([t]))[1][0]
    g_10 = losses.smooth_l1(np.zeros(1), np.array([math.log10(factor)]))[1][0] / LN10  # chain rule
    g_w = losses.smooth_l1(np.zeros(1), np.array([t / LN10]))[1][0] / LN10
    g_5 = losses.smooth_l1(np.zeros(1), np.array([5 * t]))[1][0] * 5
    rows.append((g_ln, g_10, g_w, g_5))
    print(f"{factor:>9}x {g_ln:>11.3f} {g_10:>8.3f} {g_w:>12.3f} {g_5:>7.3f}")
rows = np.array(rows)
T.check(np.allclose(rows[:, 1], rows[:, 2]), "the log10 loss and the weight-1/ln 10 loss: same gradients")
print(
    f"ln / log10 gradient ratio: {rows[0, 0] / rows[0, 1]:.2f} for a 5% error (quadratic zone: "
    f"(ln 10)^2 = {LN10**2:.2f}), {rows[3, 0] / rows[3, 1]:.2f} for 2x (linear zone: ln 10 = {LN10:.2f})"
)
T.check(
    np.isclose(rows[0, 0] / rows[0, 1], LN10**2) and np.isclose(rows[3, 0] / rows[3, 1], LN10),
    "a weight w scales the gradient by w^2 in the quadratic zone and by w in the linear one",
)

# %% [markdown]
# ## 4. The loss
#
# Over the `S` sampled anchors of a batch (paper Eq. 1, normalised as
# torchvision does):
#
#     loss_objectness  = (1 / S) sum_{sampled i} -ln softmax(logits_i)[label_i]
#     loss_rpn_box_reg = (1 / S) sum_{positive i} sum_{j=1..4} smoothL1(delta_ij - t_ij)
#
#     smoothL1(d) = 0.5 d^2 / beta  if |d| < beta,   |d| - 0.5 beta  otherwise   (beta = 1/9)
#
# The scores are two logits per anchor and a softmax, as in the paper
# (torchvision uses one logit and a sigmoid: the same model, parametrised
# differently). Negatives contribute to the first loss only: there is no box
# to regress. We run the untrained network of this tutorial (the `tiny` preset
# with the pinned stride-16 stack: backbone + RPN head) on the image; its
# objectness weights are `N(0, 0.01^2)`, so both scores are near 0
# and the loss starts near `ln 2 = 0.693`.


# %%
def rpn_loss_loop(logits, deltas, labels, targets, beta=1.0 / 9):
    """Both RPN losses, one sampled anchor at a time."""
    cls, box, s = 0.0, 0.0, 0
    for i in range(len(labels)):
        if labels[i] < 0:
            continue
        s += 1
        l0, l1 = logits[i]
        top = max(l0, l1)
        log_sum = top + math.log(math.exp(l0 - top) + math.exp(l1 - top))  # stable log-sum-exp
        cls += log_sum - logits[i, labels[i]]
        if labels[i] == 1:
            for d in deltas[i] - targets[i]:
                box += 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta
    return cls / s, box / s


x = model.preprocess(image)[0][None]  # resize (no-op here) and normalise: (1, 3, 128, 128) float64
features, _ = backbone_forward(model.params, x, backbone_spec(cfg), train=False)
logits, deltas, _ = rpn_forward(model.params, features)  # (1, 576, 2), (1, 576, 4)
print("features", features.shape, "-> logits", logits.shape, "deltas", deltas.shape)
lab, targets = model.anchor_targets(anchors, gt, (128, 128), np.random.default_rng(1))
loss_obj, loss_box, dlogits, ddeltas = rpn_losses(
    logits, deltas, lab[None], targets[None], beta=cfg.rpn_box_beta
)
print(f"loss_objectness {loss_obj:.6f}, loss_rpn_box_reg {loss_box:.6f}")
T.check(
    np.allclose(
        rpn_loss_loop(logits[0], deltas[0], lab, targets), (loss_obj, loss_box), rtol=1e-12
    ),
    "naive loop == minirccn.detector.rpn.head.rpn_losses",
)
T.check(abs(loss_obj - math.log(2)) < 0.02, "untrained: objectness loss ~ ln 2 (a coin toss)")
err_cls = gradcheck.check_loss(
    lambda z: rpn_losses(z, deltas, lab[None], targets[None])[0::2], logits.copy()
)
err_box = gradcheck.check_loss(
    lambda z: rpn_losses(logits, z, lab[None], targets[None])[1::2], deltas.copy()
)
print(f"finite differences: objectness {err_cls:.1e}, box {err_box:.1e} (relative error)")
T.check(max(err_cls, err_box) < 1e-6, "both loss gradients match float64 finite differences")

# %% [markdown]
# ## 5. An image with no object
#
# A share of the `shapes` images is empty by design (`ShapesConfig.empty_fraction`,
# printed below with the share among the first training images), as are many real
# photographs for any one class. There is nothing to match: every anchor is negative, the
# sample is 256 negatives, the box loss is an empty sum (0, not 0/0), and the
# objectness loss is finite; the network learns from them that empty
# background is background.

# %%
n_seen = T.pick(200, 20)
n_empty = sum(len(data[i]["boxes"]) == 0 for i in range(n_seen))
print(
    f"empty images: ShapesConfig.empty_fraction {ShapesConfig().empty_fraction:.0%}; "
    f"{n_empty} of the first {n_seen} training images ({n_empty / n_seen:.0%})"
)
empty = data[7]
T.check(len(empty["boxes"]) == 0, "shapes train image 7 has no object")
lab0, t0 = model.anchor_targets(anchors, empty["boxes"], (128, 128), np.random.default_rng(2))
loss0 = rpn_losses(logits, deltas, lab0[None], t0[None])
print(
    f"no object: {int((lab0 == 0).sum())} negatives sampled, {int((lab0 == 1).sum())} positives; "
    f"losses {loss0[0]:.4f}, {loss0[1]:.4f}"
)
T.check(
    (lab0 == 0).sum() == 256 and (lab0 == 1).sum() == 0 and np.all(t0 == 0),
    "no ground truth: 256 negatives, no positive, zero targets",
)
T.check(
    np.isfinite(loss0[0]) and loss0[1] == 0 and np.all(loss0[3] == 0),
    "finite objectness loss, zero box loss and zero box gradient",
)

# %% [markdown]
# ## 6. A picture
#
# Left: the objects (red) and every positive anchor (green, before sampling).
# Middle: one sample of 256: positives (green) and one in four of the
# sampled negatives (blue; drawing all of them would hide the image).
# Right: per cell, the best IoU of its 9 anchors with any object. A cell at 0.7
# or above holds positives; a cell below 0.7 holds one only through rule 2 (an
# object's best anchor), and that can happen at any IoU, even below 0.3: the
# cell of each object's best anchor is printed below with both numbers (a cell
# can show more than its positive's IoU when another of its anchors overlaps
# another object more).

# %%
scale = T.pick(3, 2)


def outline(img, boxes, colour, width=1):
    """Draw ``boxes`` (image pixels) as outlines on ``img``, which is ``scale`` times larger."""
    draw = ImageDraw.Draw(img)
    for x1, y1, x2, y2 in np.asarray(boxes) * scale:
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)
    return img


labels_all, _ = model.anchor_targets.label(anchors, gt, (128, 128))
left = viz.draw_detections(
    image, gt, np.zeros(len(gt), int), class_names=["object"], scale=scale, width=2
)
outline(left, anchors[labels_all == 1], (40, 170, 60), 2)
lab_s, _ = model.anchor_targets(anchors, gt, (128, 128), np.random.default_rng(0))
middle = viz.draw_detections(image, np.zeros((0, 4)), np.zeros(0, int), scale=scale)
outline(middle, anchors[lab_s == 0][::4], (40, 80, 200), 1)
outline(middle, anchors[lab_s == 1], (40, 170, 60), 2)
cell_best = iou.max(axis=1).reshape(8, 8, A).max(axis=2)  # (8, 8)
for g in range(len(gt)):
    k = int(iou[:, g].argmax())
    cell = divmod(k // A, 8)
    print(
        f"object {g}: best anchor {k} (IoU {iou[k, g]:.2f}, positive: {labels_all[k] == 1}) "
        f"in cell {cell}, whose best IoU is {cell_best[cell]:.2f}"
    )
T.check(
    any(labels_all[int(iou[:, g].argmax())] == 1 and iou[:, g].max() < 0.7 for g in range(len(gt))),
    "rule 2 puts positives in cells whose IoU with their object is below 0.7",
)
right = T.heatmap(cell_best, 16 * scale, 0.0, 1.0)
d = ImageDraw.Draw(right)
for (i, j), v in np.ndenumerate(cell_best):
    d.text((j * 16 * scale + 4, i * 16 * scale + 4), f"{v:.2f}", fill=(0, 0, 0), font=T.font(11))
T.save_grid(
    [
        T.caption(
            left, f"objects (red), all {int((labels_all == 1).sum())} positive\nanchors (green)"
        ),
        T.caption(
            middle,
            f"a sample: {int((lab_s == 1).sum())} positives (green),\n"
            f"1 in 4 of {int((lab_s == 0).sum())} negatives (blue)",
        ),
        T.caption(right, "best anchor IoU per cell\n(blue 0 ... red 1)"),
    ],
    "06_rpn_targets.png",
    cols=3,
    colours=256,
)
# the same per-cell numbers as a heatmap with a colour bar (matplotlib)
viz.plot_heatmap(
    cell_best,
    T.out_dir() / "06_best_iou_per_cell.png",
    title=f"best anchor IoU per cell ({cell_best.shape[0]} x {cell_best.shape[1]} map)",
    xlabel="cell column",
    ylabel="cell row",
    colorbar_label="best IoU of the cell's anchors with an object",
    vmin=0.0,
    vmax=1.0,
)
print(f"wrote {T.out_dir() / '06_best_iou_per_cell.png'}")

# %% [markdown]
# ## Summary
#
# * Anchor labels: IoU >= `rpn_fg_iou_thresh` positive, < `rpn_bg_iou_thresh`
#   negative, in between ignored (values printed in the first cell); plus each
#   object's best anchor(s), ties included, so no object is left without a
#   positive.
# * `rpn_batch_size_per_image` anchors sampled per image, at most
#   `rpn_positive_fraction` of them positive, with an explicit random
#   generator. The same rules with RetinaNet's and the head's numbers:
#   [`RULES.md`](RULES.md).
# * Targets `(dx, dy, dw, dh) = ((gx - ax) / aw, (gy - ay) / ah, ln(gw / aw),
#   ln(gh / ah))`: the natural log because decoding uses `exp` and encode and
#   decode must be inverses; the *spread* of the targets is set by the
#   box-coder weights, not by the base of the log (log10 is ln with weights
#   `1/ln 10`, section 3).
# * Loss: mean softmax cross-entropy over the sample + smooth L1 over the
#   positives divided by the sample size; an empty image gives a sample of
#   negatives only and a finite loss.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected. (`MINIRCCN_TUTORIAL_STUDENT=1` keeps the script going if you edit
# `assign_loop` itself and a check above fails.)
#
# 1. The paper ignores anchors that cross the image border
#    (`rpn_allowed_border=0`). How many of this tutorial's anchors lie wholly
#    inside a 128 x 128 image?
# 2. Without rule 2 (each object's best anchors), which objects of the first
#    40 training images have no positive anchor at this tutorial's stride?
#    What size are they, compared with all objects?
# 3. Sample 64 anchors with at most 25% positives from section 1's labels.
#    How many positives and negatives, and what share of the objectness loss
#    terms are positives?


# %%
@T.stub
def anchors_inside_image(anchors, height, width):
    """Number of anchors with x1 >= 0, y1 >= 0, x2 <= width, y2 <= height."""
    raise NotImplementedError


@T.stub
def objects_without_rule2(images, anchors, fg=0.7):
    """(sqrt-areas of the objects with no anchor >= fg, sqrt-areas of all objects) over ``images``."""
    raise NotImplementedError


@T.stub
def sample_64(labels, rng):
    """(positives, negatives) in a sample of 64 anchors with at most 25% positive."""
    raise NotImplementedError


# %%
inside_expected = int(
    np.sum((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= 128) & (anchors[:, 3] <= 128))
)
T.exercise(
    "6.1",
    lambda: anchors_inside_image(anchors, 128, 128) == inside_expected,
    f"{inside_expected} of {len(anchors)} (the big anchors near the border all cross it)",
)
first40 = [data[i] for i in range(T.pick(40, 10))]


def _check_rule2():
    lost, every = objects_without_rule2(first40, anchors, cfg.rpn_fg_iou_thresh)
    lost, every = np.asarray(lost), np.asarray(every)
    print(f"  {len(lost)} of {len(every)} objects lose every positive; their median side "
          f"{np.median(lost):.0f} px, all objects' {np.median(every):.0f} px")
    return 0 < len(lost) < len(every) and np.median(lost) <= np.median(every)


T.exercise(
    "6.2",
    _check_rule2,
    "some objects lose every positive at this stride (anchors 16 px apart; how many is printed "
    "above); the lost ones are no larger than the median object",
)


def _check_64():
    n_pos, n_neg = sample_64(labels, np.random.default_rng(0))
    p = int((labels == 1).sum())
    print(f"  {n_pos} positives + {n_neg} negatives: positives are {n_pos / 64:.0%} of the loss terms")
    return n_pos == min(p, 16) and n_neg == 64 - n_pos


T.exercise("6.3", _check_64, "min(positives, 16) positives, the rest of the 64 negatives")
