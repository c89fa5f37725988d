# %% [markdown]
# # Tutorial 7: proposals and the detection head
#
# Tutorial 6 trained the RPN to score anchors and move them. This tutorial
# follows its output into the RoI head:
#
# 1. the **proposal layer** turns thousands of scored anchors (the `tiny`
#    preset's count is printed below) into at most a few hundred boxes: top-n
#    by score, decode, clip, drop tiny boxes, NMS, top-n;
# 2. **proposal targets** pick the RoIs the head trains on (ground truth
#    appended, a capped share of foreground) with class labels and normalised box targets;
# 3. **RoI pooling into the head**: every RoI becomes a `C x 7 x 7` block, two
#    fully connected layers, then `K` class scores and `4K` deltas;
# 4. **inference post-processing**: a box per class, a score threshold,
#    NMS per class, the best `box_detections_per_img`.
#
# Every number of these steps is a config field; the first cell prints them.
# The target-assignment rules side by side with the RPN's and RetinaNet's:
# [`RULES.md`](RULES.md).
#
# The network here is untrained, so its scores mean nothing. To watch the
# steps do something sensible we also build a **stand-in** for a trained
# network: scores and deltas computed from the ground truth plus noise (and a
# few deliberately bad ones). Tutorial 8 trains the real thing; every step
# below is the same code either way.

# %%
import numpy as np
from PIL import ImageDraw

import _common as T
from minirccn.nn import losses
from minirccn import ops, viz
from minirccn.detector.backbones.vgg import backbone_forward
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.detector.roi_heads.box_head import head_forward, head_losses
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.models.faster_rcnn import FasterRCNN
from minirccn.detector.roi_heads.postprocess import BoxPostprocess
from minirccn.detector.rpn.proposal_layer import objectness_scores

cfg = preset("tiny", dtype="float64")  # float64 throughout: the loops below agree exactly
data = load_dataset("shapes", split="train", seed=0)
model = FasterRCNN(cfg, data.class_names, rng=np.random.default_rng(7))
sample = data[T.pick(12, 12)]
image, gt, gt_labels = sample["image"], sample["boxes"].astype(np.float64), sample["labels"]
x = model.preprocess(image)[0][None]  # (1, 3, 128, 128)
features, _ = backbone_forward(model.params, x, backbone_spec(cfg), train=False)
anchors, counts = model.anchor_generator([features.shape[2:]])  # (H * W * 9, 4), [H * W * 9]
(STRIDE,) = model.backbone.strides
print(f"features {features.shape}, {len(anchors)} anchors, {len(gt)} objects:")
for b, lab in zip(gt, gt_labels):
    print(f"  {data.class_names[lab]:9s} {b}")
print(
    f"proposal layer (inference): pre_nms_top_n {cfg.rpn_pre_nms_top_n_test}, NMS IoU > "
    f"{cfg.rpn_nms_thresh}, post_nms_top_n {cfg.rpn_post_nms_top_n_test}, min_size {cfg.rpn_min_size}"
    f"\n                (training): pre {cfg.rpn_pre_nms_top_n_train}, post {cfg.rpn_post_nms_top_n_train}"
    f"\nproposal targets: foreground IoU >= {cfg.box_fg_iou_thresh}, background "
    f"[{cfg.box_bg_iou_lo}, {cfg.box_bg_iou_thresh}), {cfg.box_batch_size_per_image} RoIs per image, at "
    f"most {cfg.box_positive_fraction:.0%} foreground, weights {cfg.bbox_reg_weights}"
    f"\nhead: RoI pooling {cfg.roi_output_size} x {cfg.roi_output_size} at spatial_scale 1/{model.backbone.strides[0]}"
    f"\ninference: score > {cfg.box_score_thresh}, per-class NMS IoU > {cfg.box_nms_thresh}, "
    f"at most {cfg.box_detections_per_img} detections"
)

# %% [markdown]
# ### A stand-in for a trained RPN
#
# Each anchor's object logit grows with its best IoU with an object, plus
# noise; its deltas are the true encoding of that object (tutorial 6) plus
# noise. Three adversarial anchors: anchor 0 with a huge score and a width
# delta of -12 (it decodes to a box `w * e^-12`, about 1e-4 pixels wide,
# printed below), and two with high scores whose boxes hang over the image
# border: the middle anchor (ratio 1, size 32) of the bottom-right cell,
# pushed further out, and the one of the top row's middle cell, pushed up.
# Clipping cuts them to their part inside the image; they stay (they are
# wider than `min_size`) and, with the logits 9 and 8 we gave them, they are
# among the first proposals: a clipped box is a real proposal like any other.

# %%
rng = np.random.default_rng(7)
iou_a = ops.box_iou(anchors, gt)  # (M, G): every anchor of the map against every object
best, matched = iou_a.max(axis=1), iou_a.argmax(axis=1)
logits = np.stack([np.zeros(len(anchors)), 12 * (best - 0.4) + rng.normal(0, 1.0, len(anchors))], 1)
deltas = ops.encode_boxes(gt[matched], anchors) + rng.normal(0, 0.15, (len(anchors), 4))
map_h, map_w = features.shape[2:]
corner = len(anchors) - 9 + 4  # last cell, anchor 4 = ratio 1, size 32 (ratio-major order)
top = (map_w // 2) * 9 + 4  # first row, middle cell, anchor 4
logits[0, 1], deltas[0] = 20.0, [0, 0, -12, 0]  # a tiny box: the min-size filter drops it
logits[corner, 1], deltas[corner] = 9.0, [0.3, 0.3, 0.5, 0.5]  # over the bottom-right corner
logits[top, 1], deltas[top] = 8.0, [0.2, -0.3, 0.3, 0.0]  # over the top edge
for name, k in (("tiny", 0), ("corner", corner), ("top edge", top)):
    box = ops.decode_boxes(deltas[k : k + 1], anchors[k : k + 1])[0]
    print(
        f"{name:8s} anchor {k:5d} {anchors[k]} decodes to {box.round(4)}, "
        f"clipped {np.clip(box, 0, 128).round(2)}"
    )

# %% [markdown]
# ## 1. The proposal layer
#
# Per image (the numbers of `minirccn train`'s inference, `rpn_*_test`,
# printed in the first cell):
#
# 1. `score = softmax(logits)[:, 1]` for every anchor;
# 2. keep the `rpn_pre_nms_top_n_test` best (ties: lower anchor index first);
# 3. decode their deltas (weights 1, tutorial 6) and clip the boxes to the image;
# 4. drop boxes narrower or lower than `rpn_min_size` pixels;
# 5. NMS with IoU threshold `rpn_nms_thresh` (tutorial 3): neighbouring
#    anchors that regressed onto the same object collapse to one proposal;
# 6. keep the `rpn_post_nms_top_n_test` best.
#
# Training uses larger numbers (`rpn_pre_nms_top_n_train`,
# `rpn_post_nms_top_n_train`): more, more varied RoIs to learn from. Step 2 exists for speed (NMS is
# quadratic); step 4 protects the head from degenerate boxes.


# %%
def greedy_nms_loop(boxes, scores, threshold):
    """Tutorial 3's greedy NMS: best first, drop everything overlapping it by more than threshold."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # stable: ties by index
    iou = ops.box_iou(boxes, boxes)
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        removed.update(j for j in order if iou[i, j] > threshold)
    return keep


def proposals_loop(logits, deltas, anchors, image_size, pre, post, nms_thresh, min_size):
    """The proposal layer step by step, printing how many boxes survive each step."""
    height, width = image_size
    scores = objectness_scores(logits)  # softmax(logits)[:, 1] = 1 / (1 + exp(l0 - l1))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:pre]
    boxes = ops.decode_boxes(deltas[order], anchors[order])
    boxes = np.array(
        [[min(max(v, 0), lim) for v, lim in zip(b, (width, height) * 2)] for b in boxes]
    )
    scores = scores[order]
    big = [
        i for i, (x1, y1, x2, y2) in enumerate(boxes) if x2 - x1 >= min_size and y2 - y1 >= min_size
    ]
    keep = greedy_nms_loop(boxes[big], scores[big], nms_thresh)[:post]
    print(
        f"{len(logits)} anchors -> top {len(order)} -> {len(big)} after min size "
        f"-> {len(keep)} after NMS {nms_thresh} and top {post}"
    )
    return boxes[big][keep], scores[big][keep]


pre, post = cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test
loop_boxes, loop_scores = proposals_loop(
    logits, deltas, anchors, (128, 128), pre, post, cfg.rpn_nms_thresh, cfg.rpn_min_size
)
# the model's proposal layer for inference: a ProposalCreator built once from the config's
# rpn_*_test numbers, then called with data only (a batch of one image here)
print(model.test_proposals)
((proposals, prop_scores),) = model.test_proposals(logits[None], deltas[None], anchors, counts, [(128, 128)])
print("best 5 proposals:\n", np.c_[proposals[:5].round(1), prop_scores[:5].round(3)])
T.check(
    np.array_equal(loop_boxes, proposals) and np.array_equal(loop_scores, prop_scores),
    f"naive loop == the model's ProposalCreator ({len(proposals)} boxes, exactly)",
)
T.check(
    proposals.min() >= 0 and proposals[:, 0::2].max() <= 128 and proposals[:, 1::2].max() <= 128,
    "every proposal is clipped to the 128 x 128 image",
)
T.check(
    not np.any(np.all(np.isclose(proposals, ops.decode_boxes(deltas[:1], anchors[:1])), axis=1)),
    "the top-scoring 1e-4-pixel box was dropped by the min-size filter",
)
T.check(
    ops.box_iou(proposals, proposals)[np.triu_indices(len(proposals), 1)].max()
    <= cfg.rpn_nms_thresh,
    f"after NMS no two proposals overlap by more than IoU {cfg.rpn_nms_thresh}",
)

# %% [markdown]
# ## 2. Proposal targets: what the head trains on
#
# Like the anchors in tutorial 6, the proposals get labels, now with a class
# (Fast R-CNN Sec. 2.3):
#
# 1. append the ground-truth boxes to the proposals, so the head always has
#    perfect foreground to learn from, even while the RPN is still random;
# 2. each RoI's best object by IoU: `>= box_fg_iou_thresh` foreground,
#    labelled with that object's class; in `[box_bg_iou_lo, box_bg_iou_thresh)`
#    background, label 0;
# 3. sample `box_batch_size_per_image` RoIs per image (Fast R-CNN: 128 per
#    mini-batch of 2 images, so 64 from each), at most a share `box_positive_fraction` of them
#    foreground (the paper: 25%; the tiny preset's values are printed in the
#    first cell and below with the sampler);
# 4. regression targets `encode(gt, roi) * bbox_reg_weights` (10, 10, 5, 5).
#
# The weights divide the deltas by their typical spread: foreground RoIs
# overlap their object by at least 0.5, so their `dx, dy` spread about 0.1 and
# `dw, dh` about 0.2 (this image's spreads are printed below). Fast R-CNN
# normalised its targets by the mean and spread it measured on its training
# set; the Faster R-CNN code fixed the spread at `(0.1, 0.1, 0.2, 0.2)`, whose
# inverses are these weights. Scaled to about 1, the box loss weighs as much
# as the classification loss, and the smooth L1's switch point `beta = 1/9`
# means about a tenth of that spread.


# %%
def proposal_targets_loop(proposals, gt, gt_labels, rng, batch_size, fraction, weights):
    """Label, sample and encode the RoIs of one image, one RoI at a time."""
    boxes = np.concatenate([proposals, gt])
    iou = ops.box_iou(boxes, gt)  # (P + G, G)
    labels, matched = np.full(len(boxes), -1), np.zeros(len(boxes), dtype=np.int64)
    for i in range(len(boxes)):
        matched[i] = int(np.argmax(iou[i]))  # first best object on a tie
        if iou[i, matched[i]] >= cfg.box_fg_iou_thresh:
            labels[i] = gt_labels[matched[i]]
        elif cfg.box_bg_iou_lo <= iou[i, matched[i]] < cfg.box_bg_iou_thresh:
            labels[i] = 0
    fg, bg = np.nonzero(labels >= 1)[0], np.nonzero(labels == 0)[0]
    num_fg = min(len(fg), int(batch_size * fraction))
    num_bg = min(len(bg), batch_size - num_fg)
    keep = [fg[k] for k in rng.permutation(len(fg))[:num_fg]]
    keep += [bg[k] for k in rng.permutation(len(bg))[:num_bg]]
    rois, labels, matched = boxes[keep], labels[keep], matched[keep]
    targets = np.zeros_like(rois)
    for r in range(len(rois)):
        if labels[r] >= 1:
            targets[r] = ops.encode_boxes(gt[matched[r]][None], rois[r][None])[0] * weights
    return rois, labels, targets


w = np.array(cfg.bbox_reg_weights)
# the model's ProposalTargetCreator: its Matcher (fg >= box_fg_iou_thresh, bg below
# box_bg_iou_thresh) and its sampler were built once from the config
print(model.proposal_targets.matcher, model.proposal_targets.sampler, sep="\n")
rois, roi_labels, roi_targets = model.proposal_targets(
    proposals, gt, gt_labels, np.random.default_rng(0)
)
loop = proposal_targets_loop(
    proposals,
    gt,
    gt_labels,
    np.random.default_rng(0),
    cfg.box_batch_size_per_image,
    cfg.box_positive_fraction,
    w,
)
fg = roi_labels >= 1
print(
    f"{len(proposals)} proposals + {len(gt)} ground truth -> {len(rois)} RoIs: "
    f"{int(fg.sum())} foreground, {int((~fg).sum())} background"
)
print(
    "spread of the foreground targets before the weights:",
    (roi_targets[fg] / w).std(axis=0).round(3),
)
print(
    "                                  after (10, 10, 5, 5):", roi_targets[fg].std(axis=0).round(3)
)
T.check(
    np.array_equal(loop[0], rois)
    and np.array_equal(loop[1], roi_labels)
    and np.allclose(loop[2], roi_targets, rtol=1e-12, atol=1e-12),
    "naive loop == the model's ProposalTargetCreator (same seed)",
)
T.check(
    fg.sum() <= int(cfg.box_batch_size_per_image * cfg.box_positive_fraction)
    and len(rois) <= cfg.box_batch_size_per_image,
    f"at most {cfg.box_batch_size_per_image} RoIs, "
    f"at most {cfg.box_positive_fraction:.0%} of them foreground",
)
T.check(
    np.allclose(
        ops.encode_boxes(
            gt[ops.box_iou(rois[fg], gt).argmax(axis=1)], rois[fg], cfg.bbox_reg_weights
        ),
        roi_targets[fg],
    ),
    "weighted targets == encode_boxes(..., weights=(10, 10, 5, 5))",
)

# an image without objects: every proposal is background, no box target
r0, l0, t0 = model.proposal_targets(
    proposals, np.zeros((0, 4)), np.zeros(0, np.int64), np.random.default_rng(0)
)
T.check(np.all(l0 == 0) and np.all(t0 == 0) and len(r0) > 0, "no objects: only background RoIs")

# %% [markdown]
# ## 3. RoI pooling into the head
#
# Each RoI becomes a row `(batch index, x1, y1, x2, y2)`; RoI max pooling
# (tutorial 4, `spatial_scale = 1 / stride`: 1/4 for this stride-4
# preset, printed in the first cell; the paper's VGG16 pools at 1/16) cuts its
# part of the feature map into `roi_output_size` x `roi_output_size` bins
# (7 x 7), so every RoI, whatever its size, gives `C x 7 x 7` numbers. Then, as in Fast R-CNN:
#
#     flatten (R, C*49) -> fc6 + ReLU (R, D) -> fc7 + ReLU (R, D) -> cls (R, K)
#                                                                -> bbox (R, 4K)
#
# `K = 4` classes with background; `4K` deltas: one box *per class*, so the
# head can refine a box differently depending on what it thinks it is.
# Losses (torchvision's normalisation): cross-entropy averaged over the RoIs,
# and smooth L1 on the four deltas **of the RoI's own class** only,
# foreground RoIs only, divided by the number of RoIs.

# %%
roi_rows = np.c_[np.zeros(len(rois)), rois]  # (R, 5): all from image 0
class_logits, box_deltas, cache = head_forward(
    model.params,
    features,
    roi_rows,
    1 / STRIDE,
    output_size=cfg.roi_output_size,
    backend="numpy",
)
pooled, _ = ops.roi_pool(features, roi_rows, cfg.roi_output_size, 1 / STRIDE)
p = model.params
h6 = np.maximum(pooled.reshape(len(rois), -1) @ p["head.fc6.w"] + p["head.fc6.b"], 0)
h7 = np.maximum(h6 @ p["head.fc7.w"] + p["head.fc7.b"], 0)
print(
    f"rois {roi_rows.shape} -> pooled {pooled.shape} -> flatten {pooled.reshape(len(rois), -1).shape}"
    f" -> fc6 {h6.shape} -> fc7 {h7.shape} -> cls {class_logits.shape}, bbox {box_deltas.shape}"
)
T.check(
    np.allclose(h7 @ p["head.cls.w"] + p["head.cls.b"], class_logits)
    and np.allclose(h7 @ p["head.bbox.w"] + p["head.bbox.b"], box_deltas),
    "roi_pool + two fc layers by hand == minirccn.detector.roi_heads.box_head.head_forward",
)

loss_cls, loss_box, _, ddeltas = head_losses(class_logits, box_deltas, roi_labels, roi_targets)
own = np.stack([box_deltas[r, 4 * c : 4 * c + 4] for r, c in enumerate(roi_labels)])
cls_by_hand = -np.mean([losses.log_softmax(class_logits[r])[c] for r, c in enumerate(roi_labels)])
box_by_hand = losses.smooth_l1(own[fg], roi_targets[fg], beta=cfg.box_beta)[0] / len(rois)
print(
    f"loss_classifier {loss_cls:.4f} (untrained: ~ln 4 = {np.log(4):.4f}), loss_box_reg {loss_box:.4f}"
)
T.check(
    np.isclose(cls_by_hand, loss_cls) and np.isclose(box_by_hand, loss_box),
    "head losses by hand (own-class deltas, foreground only) == head_losses",
)
cols = ddeltas.reshape(len(rois), -1, 4).any(axis=2)  # (R, K): which class's deltas got gradient
T.check(
    np.array_equal(cols.argmax(axis=1)[cols.any(axis=1)], roi_labels[fg])
    and cols.sum() == fg.sum(),
    "only the foreground RoIs' own-class deltas receive a gradient",
)

# %% [markdown]
# ## 4. Inference: from 4K numbers per RoI to final detections
#
# At test time the head runs on the proposals themselves (no sampling). For
# each RoI and each class `k >= 1`:
#
# 1. `score_k = softmax(class scores)[k]`;
# 2. `box_k = decode(deltas[4k : 4k + 4], roi, weights (10, 10, 5, 5))`,
#    clipped to the image;
# 3. keep `score_k > box_score_thresh` and boxes at least 0.01 px wide and high;
# 4. NMS **per class** at IoU `box_nms_thresh`: a circle does not suppress an
#    overlapping square (tutorial 3's batched NMS);
# 5. the `box_detections_per_img` best over all classes.
#
# The untrained head would give near-uniform scores (`1/4` each). Our
# stand-in head: each proposal's logit for its best object's class grows with
# their IoU and its background logit shrinks with it, plus noise; that class's
# deltas are the true correction plus noise, every other class's deltas are
# random.

# %%
rng = np.random.default_rng(8)
k = len(data.class_names)
iou_p = ops.box_iou(proposals, gt)  # (P, G)
obj = iou_p.argmax(axis=1)
head_logits = rng.normal(0, 0.5, (len(proposals), k))
head_logits[np.arange(len(proposals)), gt_labels[obj]] += 10 * (iou_p.max(axis=1) - 0.3)
head_logits[:, 0] += 10 * (0.5 - iou_p.max(axis=1))  # background: strong where nothing overlaps
head_deltas = rng.normal(0, 1.0, (len(proposals), 4 * k))
true = ops.encode_boxes(gt[obj], proposals, cfg.bbox_reg_weights) + rng.normal(
    0, 0.3, (len(proposals), 4)
)
for r, c in enumerate(gt_labels[obj]):
    head_deltas[r, 4 * c : 4 * c + 4] = true[r]


def postprocess_loop(class_logits, box_deltas, rois, image_size, thresh, nms_thresh, top):
    """Per class: decode, clip, threshold, NMS; then the ``top`` best of all classes."""
    height, width = image_size
    scores = losses.softmax(class_logits)  # (R, K)
    found = []  # (score, label, box)
    for c in range(1, class_logits.shape[1]):  # class 0 is background
        cand = []
        for r in range(len(rois)):
            box = ops.decode_boxes(
                box_deltas[r : r + 1, 4 * c : 4 * c + 4], rois[r : r + 1], cfg.bbox_reg_weights
            )[0]
            box = np.array([min(max(v, 0), lim) for v, lim in zip(box, (width, height) * 2)])
            if scores[r, c] > thresh and box[2] - box[0] >= 1e-2 and box[3] - box[1] >= 1e-2:
                cand.append((scores[r, c], box))
        if cand:
            keep = greedy_nms_loop(
                np.array([b for _, b in cand]), np.array([s for s, _ in cand]), nms_thresh
            )
            found += [(cand[i][0], c, cand[i][1]) for i in keep]
    found.sort(key=lambda f: -f[0])
    found = found[:top]
    return (
        np.array([f[2] for f in found]).reshape(-1, 4),
        np.array([f[0] for f in found]),
        np.array([f[1] for f in found], dtype=np.int64),
    )


loop_det = postprocess_loop(
    head_logits,
    head_deltas,
    proposals,
    (128, 128),
    cfg.box_score_thresh,
    cfg.box_nms_thresh,
    cfg.box_detections_per_img,
)
det = BoxPostprocess.from_config(cfg)(head_logits, head_deltas, proposals, (128, 128), backend="numpy")
print(f"{len(proposals)} proposals x {k - 1} classes -> {len(det['boxes'])} detections; the best:")
for b, s, lab in list(zip(det["boxes"], det["scores"], det["labels"]))[:6]:
    print(f"  {data.class_names[lab]:9s} {s:.3f} {b.round(1)}")
T.check(
    np.allclose(loop_det[0], det["boxes"])
    and np.allclose(loop_det[1], det["scores"])
    and np.array_equal(loop_det[2], det["labels"]),
    "naive per-class loop == minirccn.detector.roi_heads.postprocess.BoxPostprocess",
)
T.check(
    det["scores"].min() > cfg.box_score_thresh and len(det["boxes"]) <= cfg.box_detections_per_img,
    f"every detection scores above {cfg.box_score_thresh}; at most {cfg.box_detections_per_img}",
)
best_iou = ops.box_iou(gt, det["boxes"]).max(axis=1)
T.check(
    np.all(best_iou > 0.5),
    f"each object has a detection with IoU > 0.5 (best IoUs {best_iou.round(2)})",
)
few = BoxPostprocess.from_config(cfg.replace(box_detections_per_img=3))(
    head_logits, head_deltas, proposals, (128, 128), backend="numpy"
)
T.check(
    np.array_equal(few["scores"], det["scores"][:3]), "box_detections_per_img keeps the best ones"
)

# %% [markdown]
# ## 5. A picture
#
# Left: the 12 best proposals of the stand-in RPN (tag: objectness). Middle:
# the sampled RoIs the head would train on, foreground (green) and one in two
# background (blue). Right: final detections above 0.5 (tag: class and
# score), with the ground truth in grey.

# %%
scale = T.pick(3, 2)


def outline(img, boxes, colour, width=1):
    draw = ImageDraw.Draw(img)
    for x1, y1, x2, y2 in np.asarray(boxes) * scale:
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)
    return img


# one colour per proposal, none of them red, pink or magenta: shapes' backgrounds often are
no_red = [k for k in range(len(viz.PALETTE)) if k not in (0, 6, 8, 12)]
left = viz.draw_detections(
    image,
    proposals[:12],
    np.array([no_red[k % len(no_red)] for k in range(12)]),
    prop_scores[:12],
    class_names=[""] * len(viz.PALETTE),
    scale=scale,
)
middle = viz.draw_detections(image, np.zeros((0, 4)), np.zeros(0, int), scale=scale)
outline(middle, rois[~fg][::2], (40, 80, 200), 1)
outline(middle, rois[fg], (40, 170, 60), 2)
right = viz.draw_detections(image, np.zeros((0, 4)), np.zeros(0, int), scale=scale)
outline(right, gt, (160, 160, 160), 3)
strong = det["scores"] > 0.5
right = viz.draw_detections(
    np.asarray(right),
    det["boxes"][strong] * scale,
    det["labels"][strong],
    det["scores"][strong],
    data.class_names,
)
T.save_grid(
    [
        T.caption(left, "the 12 best proposals\n(tag = objectness)"),
        T.caption(
            middle,
            f"sampled RoIs: {int(fg.sum())} foreground (green),\n"
            f"1 in 2 of {int((~fg).sum())} background (blue)",
        ),
        T.caption(right, f"{int(strong.sum())} detections scoring > 0.5\n(ground truth in grey)"),
    ],
    "07_proposals_and_head.png",
    cols=3,
    colours=256,
)

# %% [markdown]
# ## Summary
#
# * Proposal layer: softmax score, top-n, decode, clip, drop boxes under
#   `rpn_min_size`, NMS at `rpn_nms_thresh`, top-n; no gradient flows through it.
# * Proposal targets: ground truth appended, IoU >= `box_fg_iou_thresh`
#   foreground with its class, `[box_bg_iou_lo, box_bg_iou_thresh)`
#   background, `box_batch_size_per_image` RoIs with at most a share
#   `box_positive_fraction` foreground, targets scaled by `bbox_reg_weights`
#   to about unit spread (all printed in the first cell; [`RULES.md`](RULES.md)).
# * Head: RoI max pool to `C x 7 x 7` at `1 / stride`, fc6, fc7, `K` scores
#   and `4K` deltas; the box loss only sees each foreground RoI's own class.
# * Inference: a box per class, score > `box_score_thresh`, NMS per class at
#   `box_nms_thresh`, at most `box_detections_per_img` detections.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected.
#
# 1. Run the model's proposal layer (section 1's `logits`, `deltas`) with NMS
#    thresholds 0.5 and 0.9 (`cfg.replace(rpn_nms_thresh=...)`, then
#    `ProposalCreator.from_config`-style, or `proposals_loop`). How many
#    proposals survive each? (0.5 removes more near-duplicates, so objects
#    next to each other can lose their second box; 0.9 lets through clouds
#    of near-copies that fill the `post_nms_top_n`.)
# 2. Skip step 1 of the proposal targets (no ground truth appended): with
#    section 1's proposals, how many RoIs reach IoU >= `box_fg_iou_thresh`
#    (foreground candidates) with and without the ground truth?
# 3. Replace the per-class NMS by one NMS over all classes: a circle box and a
#    square box with IoU about 0.6 (printed), scores 0.9 and 0.8. Which survive per-class
#    NMS at `box_nms_thresh`, and which class-agnostic NMS?


# %%
@T.stub
def proposals_with_nms(threshold):
    """Number of proposals section 1's proposal layer returns at NMS IoU ``threshold``."""
    raise NotImplementedError


@T.stub
def foreground_candidates(proposals, gt, append_gt):
    """How many of the RoIs (proposals, plus gt if append_gt) have IoU >= box_fg_iou_thresh."""
    raise NotImplementedError


@T.stub
def kept_labels(boxes, scores, labels, per_class):
    """Labels of the boxes that survive NMS at box_nms_thresh, per class or over all classes."""
    raise NotImplementedError


# %%
def _check_nms_thresholds():
    counts = {t: proposals_with_nms(t) for t in (0.5, cfg.rpn_nms_thresh, 0.9)}
    print(f"  proposals per NMS threshold: {counts}")
    return counts[cfg.rpn_nms_thresh] == len(proposals) and counts[0.5] <= counts[cfg.rpn_nms_thresh] <= counts[0.9]


T.exercise(
    "7.1",
    _check_nms_thresholds,
    f"the default threshold gives section 1's {len(proposals)}; 0.5 fewer or as many, 0.9 more "
    f"(capped at {cfg.rpn_post_nms_top_n_test})",
)


def _check_append():
    with_gt = foreground_candidates(proposals, gt, True)
    without = foreground_candidates(proposals, gt, False)
    print(f"  foreground candidates: {with_gt} with the ground truth appended, {without} without")
    return with_gt == without + len(gt)


T.exercise("7.2", _check_append, "exactly len(gt) more with the ground truth (each gt box has IoU 1)")
pair = np.array([[10.0, 10, 60, 60], [22.0, 10, 72, 60]])  # shifted by 12 of 50: IoU 38 / 62
pair_iou = ops.box_iou(pair[:1], pair[1:])[0, 0]


def _check_agnostic():
    labs = np.array([1, 2])
    per = sorted(kept_labels(pair, np.array([0.9, 0.8]), labs, True))
    agn = sorted(kept_labels(pair, np.array([0.9, 0.8]), labs, False))
    print(f"  IoU {pair_iou:.3f}: per-class NMS keeps labels {per}, class-agnostic keeps {agn}")
    return per == [1, 2] and agn == [1]


T.exercise(
    "7.3",
    _check_agnostic,
    f"IoU {pair_iou:.2f} > {cfg.box_nms_thresh}: per class both survive, class-agnostic "
    "NMS drops the weaker square",
)
