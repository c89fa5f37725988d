# %% [markdown]
# # Tutorial 16: from pixels to detections and back
#
# Tutorials 1-15 followed the network. This one follows an image through everything
# around it, and then the whole network with the shape of every tensor:
#
# 1. **resize** to `min_size` / `max_size` (torchvision's `GeneralizedRCNNTransform`
#    rule) and the boxes mapped back to the original pixels at the end;
# 2. **flips and crops** and what they do to the boxes (the augmentations of
#    `minirccn.data.augment`);
# 3. **padding and batching** images of different sizes;
# 4. **the data flow**: one figure with the tensor shapes of Faster R-CNN, Faster R-CNN
#    with an FPN, and RetinaNet, every shape printed from a real forward pass;
# 5. **the inference end** of the pyramid detectors, stepped through against `predict`.
#
# (`shapes` images are 128 x 128 and the `tiny` preset's `min_size = max_size = 128`, so
# for them the resize is a no-op; section 1 uses a non-square crop and other sizes.)

# %%
import matplotlib

matplotlib.use("Agg")
import _common as T
import matplotlib.pyplot as plt
import numpy as np

from minirccn import ops
from minirccn.config import preset
from minirccn.data import augment, load_dataset, transforms
from minirccn.data.batching import Batch
from minirccn.detector.backbones import resnet
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.backbones.vgg import backbone_forward
from minirccn.detector.dense.head import retinanet_head_forward
from minirccn.detector.models import faster_rcnn as M
from minirccn.detector.models.retinanet import RetinaNet
from minirccn.detector.rpn.head import rpn_forward_levels
from minirccn.detector.rpn.proposal_layer import proposals_one_image

data = load_dataset("shapes", split="train", seed=0)
sample = data[3]
names = data.class_names
print(f"image {sample['image'].shape}, {len(sample['boxes'])} objects")

# %% [markdown]
# ## 1. Resize, and the boxes mapped back
#
# The scale is `min(min_size / shorter side, max_size / longer side)`: the shorter side
# becomes `min_size` unless the longer one would then pass `max_size`. The new size is
# `floor(h * scale) x floor(w * scale)`, and the boxes are multiplied by the *actual*
# per-axis ratios `new_w / w`, `new_h / h` (equal to `scale` up to the flooring), so they
# stay on the same pixels. At the end, `predict` divides the detections by `scale` and
# clips them to the original image.

# %%
crop = sample["image"][10:107, :]  # a 97 x 128 crop: not square
crop_boxes = np.clip(sample["boxes"].astype(np.float64) - [0, 10, 0, 10], 0, [128, 97, 128, 97])
min_size, max_size = 160, 200
scale = transforms.resize_scale(*crop.shape[:2], min_size, max_size)
resized, resized_boxes, scale2 = transforms.resize(crop, crop_boxes, min_size, max_size)
h, w = crop.shape[:2]
print(f"{h} x {w} with min_size {min_size}, max_size {max_size}: scale = min({min_size}/{min(h, w)}, "
      f"{max_size}/{max(h, w)}) = {scale:.5f} -> {resized.shape[0]} x {resized.shape[1]}")
ratios = np.array([resized.shape[1] / w, resized.shape[0] / h] * 2)
print(f"per-axis ratios {ratios[:2].round(5).tolist()} (the scale, floored per axis)")
T.check(
    scale == scale2 and resized.shape[:2] == (int(np.floor(h * scale)), int(np.floor(w * scale))),
    "the new size is floor(side * scale)",
)
T.check(np.allclose(resized_boxes, crop_boxes * ratios), "boxes scale by the per-axis ratios")
back_by_ratio = resized_boxes / ratios
back_by_scale = resized_boxes / scale  # what predict does with its detections
print(f"mapped back by the ratios: largest error {np.abs(back_by_ratio - crop_boxes).max():.2e} px; "
      f"by the scale (predict's rule): {np.abs(back_by_scale - crop_boxes).max():.3f} px")
T.check(np.allclose(back_by_ratio, crop_boxes), "dividing by the per-axis ratios maps boxes back exactly")
tiny = preset("tiny")
print(f"the tiny preset: min_size {tiny.min_size}, max_size {tiny.max_size}: a 128 x 128 `shapes` "
      f"image has scale {transforms.resize_scale(128, 128, tiny.min_size, tiny.max_size)}")

# %% [markdown]
# The last line is why `minirccn` never shows this step on `shapes`. Note the second
# number: `predict` maps detections back by `1 / scale`, not by the per-axis ratios
# (torchvision's `transform.postprocess` uses the ratios of the sizes), so on a
# non-square image whose sides floor differently a box can land a fraction of a pixel
# off; the printed error says how much here.
#
# ## 2. Flips and crops on boxes
#
# A horizontal flip sends column `c` to `W - 1 - c`; in continuous coordinates a box's
# `x1' = W - x2`, `x2' = W - x1` (its left edge comes from the old right edge). A
# vertical flip does the same to `y`; a 90-degree rotation swaps the axes. Scale
# jitter resizes by a factor and, when the image grew, crops the original size back
# out: boxes are scaled, shifted by the window's corner, clipped to the window, and
# dropped when they keep less than `crop_min_visible` of their area.

# %%
img, boxes = sample["image"], sample["boxes"].astype(np.float64)
flipped, fboxes = transforms.hflip(img, boxes)
print("boxes        ", boxes[:2].tolist())
print("hflip        ", fboxes[:2].tolist())
twice = transforms.hflip(flipped, fboxes)
T.check(np.array_equal(twice[0], img) and np.allclose(twice[1], boxes), "two flips are the identity")
j = 0
x1, y1, x2, y2 = boxes[j].astype(int)
T.check(
    np.array_equal(flipped[y1:y2, 128 - x2 : 128 - x1], img[y1:y2, x1:x2][:, ::-1]),
    "the flipped box covers the mirrored pixels of the object",
)
_, vboxes = augment.vflip(img, boxes)
rimg, rboxes = augment.rot90(img, boxes, 1)
print("vflip        ", vboxes[:2].tolist())
print("rot90 (k=1)  ", rboxes[:2].tolist())
T.check(np.allclose(augment.rot90(rimg, rboxes, 3)[1], boxes), "rot90 four times is the identity")
print(f"crop_min_visible of the tiny preset: {tiny.crop_min_visible}")
cimg, cboxes, clabels = augment.scale_crop(img, boxes, sample["labels"], 1.5, (1.0, 1.0), tiny.crop_min_visible)
print(f"scale 1.5, window at the bottom-right corner: {len(boxes)} boxes -> {len(cboxes)} kept:")
for b in cboxes:
    print("  ", np.round(b, 1).tolist())
T.check(cimg.shape == img.shape and np.all(cboxes >= 0) and np.all(cboxes <= 128), "cropped back to 128 x 128, boxes clipped")

# %% [markdown]
# ## 3. Padding and batching
#
# Images of different sizes cannot be stacked as they are. `batch_images` pads each to
# the largest height and width, both rounded up to a multiple of `size_divisible` (so
# every pooling stage halves an even size), with the image in the top-left corner: the
# boxes need no shift. The real sizes travel with the batch (`image_sizes`), because
# proposals and detections are clipped to the image, not to the padding.

# %%
a = transforms.normalize(resized)
b = transforms.normalize(img)
batch, sizes = transforms.batch_images([a, b], size_divisible=16)
print(f"images {a.shape} and {b.shape} -> batch {batch.shape}, image_sizes {sizes}")
T.check(batch.shape[2] % 16 == 0 and batch.shape[3] % 16 == 0, "padded to multiples of 16")
T.check(np.array_equal(batch[1, :, :128, :128], b) and np.all(batch[1, :, 128:, :] == 0),
        "each image sits top-left, zeros elsewhere")

# %% [markdown]
# ## 4. The data flow, with the shape of every tensor
#
# One 128 x 128 image through each detector (untrained: the shapes do not depend on
# the weights). Training-time shapes come from one training forward (its caches), the
# detections from `detect`. Letters: `N` images, `M` anchors, `R` sampled RoIs, `K`
# classes with background, `Kc` without, `F` the width of the fc layers, `D` detections.

# %%
x, _ = M.FasterRCNN(tiny, names, rng=np.random.default_rng(0)).preprocess(img)
batch1 = x[None]
targets = [{"boxes": img_boxes, "labels": sample["labels"]} for img_boxes in [boxes.astype(np.float32)]]
flows = {}

frcnn = M.FasterRCNN(tiny, names, rng=np.random.default_rng(0))
feat, _ = backbone_forward(frcnn.params, batch1, backbone_spec(tiny), train=False)
_, cache = frcnn.forward(Batch(batch1, [(128, 128)], targets), np.random.default_rng(0), backend="numpy")
samples = cache.samples
det = frcnn.detect(batch1, [(128, 128)], backend="numpy")[0]
flows["Faster R-CNN (tiny)"] = [
    ("image (N, 3, H, W)", batch1.shape),
    (f"backbone, stride {frcnn.backbone.strides[0]}", feat.shape),
    ("RPN objectness (N, M, 2)", cache.d_objectness.shape),
    ("RPN deltas (N, M, 4)", cache.d_rpn_deltas.shape),
    ("sampled RoIs (R, 5): batch index + box", samples.rois.shape),
    ("RoI pool (R, C, 7, 7)", cache.pooled_shape),
    ("fc6, fc7 (R, F)", cache.head.relu6.mask.shape),
    ("class scores (R, K)", cache.d_class_logits.shape),
    ("box deltas (R, 4K)", cache.d_box_deltas.shape),
    ("detections (D, 4)", det["boxes"].shape),
]

fcfg = preset("resnet-fpn-tiny")
fpnm = M.FasterRCNN(fcfg, names, rng=np.random.default_rng(0))
pyr = fpnm.backbone  # ResNet + FPN
stages, _ = resnet.resnet_forward(fpnm.params, batch1, pyr.spec, train=False, backend="numpy")
maps, _ = pyr.forward(fpnm.params, batch1, False, "numpy")
_, fcache = fpnm.forward(Batch(batch1, [(128, 128)], targets), np.random.default_rng(0), backend="numpy")
fsamples = fcache.samples
fdet = fpnm.detect(batch1, [(128, 128)], backend="numpy")[0]
flows["Faster R-CNN + FPN (resnet-fpn-tiny)"] = (
    [("image (N, 3, H, W)", batch1.shape)]
    + [("ResNet stages C2 .. C5", [s.shape for s in stages])]
    + [("FPN levels P2 .. P5, pool (max-pooled P5)", [m_.shape for m_ in maps])]
    + [
        ("RPN objectness, all levels (N, M, 2)", fcache.d_objectness.shape),
        ("sampled RoIs (R, 5): batch index + box", fsamples.rois.shape),
        ("RoIAlign from each RoI's level, flat (R, C*7*7)", fcache.head.fc6.x.shape),
        ("fc6, fc7 (R, F)", fcache.head.relu6.mask.shape),
        ("class scores (R, K)", fcache.d_class_logits.shape),
        ("box deltas (R, 4K)", fcache.d_box_deltas.shape),
        ("detections (D, 4)", fdet["boxes"].shape),
    ]
)

rcfg = preset("resnet-fpn-tiny", model="retinanet")
retina = RetinaNet(rcfg, names, rng=np.random.default_rng(0))
rlevels, _ = retina.backbone.forward(retina.params, batch1, False, "numpy")
rlogits, rdeltas, _ = retinanet_head_forward(retina.params, rlevels, backend="numpy")
all_anchors, rcounts = retina.anchor_generator([lv.shape[2:] for lv in rlevels])
ranchors = np.split(all_anchors, np.cumsum(rcounts)[:-1])  # each level's anchors
rdet = retina.detect(batch1, [(128, 128)], backend="numpy")[0]
flows["RetinaNet (resnet-fpn-tiny)"] = (
    [("image (N, 3, H, W)", batch1.shape)]
    + [(f"levels, strides {retina.strides}", [lv.shape for lv in rlevels])]
    + [
        ("anchors, all levels (M, 4)", (sum(len(a_) for a_ in ranchors), 4)),
        ("class subnet, anchor order (N, M, Kc)", rlogits.shape),
        ("box subnet, anchor order (N, M, 4)", rdeltas.shape),
        ("detections (D, 4)", rdet["boxes"].shape),
    ]
)
def shape_text(shape):
    """One shape as '(1, 64, 32, 32)', or a list of shapes one per line."""
    if isinstance(shape, list):
        return "\n".join(shape_text(v) for v in shape)
    return str(tuple(int(v) for v in shape))


for name, steps in flows.items():
    print(f"\n{name}")
    for what, shape in steps:
        print(f"  {what:48s} " + shape_text(shape).replace("\n", "\n" + " " * 51))
T.check(
    flows["Faster R-CNN (tiny)"][2][1][1] == feat.shape[2] * feat.shape[3] * frcnn.anchor_generator.num_anchors,
    "RPN rows M = H * W * A of the feature map",
)
T.check(
    rlogits.shape[1] == sum(len(a_) for a_ in ranchors) and rlogits.shape[2] == len(names) - 1,
    "RetinaNet: one row per anchor of every level, Kc = K - 1 columns",
)

fig, axes = plt.subplots(1, 3, figsize=(16, 10))
colours = {"input": "#dddddd", "backbone": "#a6cee3", "rpn": "#b2df8a", "head": "#fdbf6f", "out": "#cab2d6"}


def kind(what):
    if what.startswith("image"):
        return "input"
    if what.startswith(("backbone", "ResNet", "FPN", "levels")):
        return "backbone"
    if what.startswith(("RPN", "anchors", "class subnet", "box subnet", "sampled")):
        return "rpn"
    if what.startswith("detections"):
        return "out"
    return "head"


for ax, (name, steps) in zip(axes, flows.items()):
    heights = [1 + shape_text(shape).count("\n") + 1.2 for _, shape in steps]  # text lines + gap
    unit = 1 / sum(heights)
    top = 1.0
    for k, ((what, shape), hk) in enumerate(zip(steps, heights)):
        y = top - hk * unit / 2
        ax.text(0.5, y, f"{what}\n{shape_text(shape)}", ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc=colours[kind(what)], ec="#555555"))
        if k:
            ax.annotate("", xy=(0.5, top - 0.35 * unit), xytext=(0.5, top + 0.35 * unit),
                        arrowprops=dict(arrowstyle="->", color="#555555"))
        top -= hk * unit
    ax.set_title(name, fontsize=11)
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, fc=c, ec="#555555") for c in colours.values()]
    ax.legend(handles, ["input", "backbone / pyramid", "RPN / dense head", "RoI head", "output"],
              loc="lower center", bbox_to_anchor=(0.5, -0.08), ncol=3, fontsize=8, frameon=False)
fig.suptitle("tensor shapes of one 128 x 128 image, printed from a forward pass of each detector", fontsize=12)
fig.tight_layout(rect=(0, 0.02, 1, 0.95))
fig.savefig(T.out_dir() / "16_data_flow.png", dpi=90)
plt.close(fig)
print(f"wrote {T.out_dir() / '16_data_flow.png'}")

# %% [markdown]
# ## 5. The inference end of a pyramid detector, against `predict`
#
# `predict` is: preprocess (resize, normalise), `detect` on a batch of one, divide the
# boxes by the scale, clip to the original image. For Faster R-CNN with an FPN,
# `detect` first runs the proposal layer per level (each level keeps its own best
# `rpn_pre_nms_top_n_test`, NMS per level, then the best over all levels: tutorial 11
# section 4), pools each proposal from the level `LevelMapper` picks, and runs tutorial
# 7's post-processing (a box per class, score threshold, per-class NMS, top-k).
# RetinaNet's end (per-level top-k over a threshold, decode, class-wise NMS) is stepped
# through in tutorial 12 section 7. Here the outer steps by hand against `predict`, on
# the resized crop of section 1 (a real resize).

# %%
fpn_big = M.FasterRCNN(fcfg.replace(min_size=min_size, max_size=max_size), names, params=fpnm.params)
xb, sb = fpn_big.preprocess(crop)
# the proposal layer by hand, to see each proposal's level (tutorial 11 section 4)
big_maps, _ = fpn_big.backbone.forward(fpn_big.params, xb[None], False, "numpy")
b_logits, b_deltas, _ = rpn_forward_levels(fpn_big.params, big_maps, backend="numpy")
b_anchors, b_counts = fpn_big.anchor_generator([m_.shape[2:] for m_ in big_maps])
layer = fpn_big.test_proposals
p_boxes, p_scores, p_levels = proposals_one_image(
    b_logits[0],
    b_deltas[0],
    b_anchors,
    b_counts,
    xb.shape[1:],
    pre_nms_top_n=layer.pre_nms_top_n,
    post_nms_top_n=layer.post_nms_top_n,
    nms_thresh=layer.nms_thresh,
    min_size=layer.min_size,
    backend="numpy",
)
print(f"crop {crop.shape[:2]} -> network input {xb.shape[1:]} (scale {sb:.4f}); "
      f"proposals per level {np.bincount(p_levels, minlength=len(maps)).tolist()}")
raw = fpn_big.detect(xb[None], [xb.shape[1:]], backend="numpy")[0]
by_hand = ops.clip_boxes(raw["boxes"] / np.float32(sb), crop.shape[:2])
pred = fpn_big.predict(crop, backend="numpy")
T.check(np.allclose(by_hand, pred["boxes"]) and np.array_equal(raw["labels"], pred["labels"]),
        "preprocess -> detect -> / scale -> clip == predict")
T.check(pred["boxes"][:, 2].max(initial=0) <= crop.shape[1] and pred["boxes"][:, 3].max(initial=0) <= crop.shape[0],
        "detections are in the original image's pixels")

# %% [markdown]
# ## Summary
#
# * Resize: `scale = min(min_size / short, max_size / long)`, sizes floored, boxes by the
#   per-axis ratios; detections come back divided by the scale and clipped.
# * Flips mirror the box edges (`x1' = W - x2`); crops scale, shift, clip and drop boxes.
# * Batches pad to multiples of `size_divisible`, top-left; the real sizes go along.
# * The figure `16_data_flow.png`: every tensor of the three detectors with its shape.
# * The target rules of all of them are in [`RULES.md`](RULES.md); where minirccn differs
#   from the papers and torchvision, in [`DEVIATIONS.md`](DEVIATIONS.md).
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it expected.
#
# 1. The network input size of an `h x w` image for given `min_size`, `max_size`.
# 2. Horizontal flip of boxes on an image `width` pixels wide, without the image.
# 3. The padded batch shape `(Hmax, Wmax)` of images of the given sizes.


# %%
@T.stub
def network_size(h, w, min_size, max_size):
    """(new_h, new_w) of transforms.resize's rule."""
    raise NotImplementedError


@T.stub
def hflip_boxes(boxes, width):
    """(G, 4) boxes mirrored left-right on an image ``width`` pixels wide."""
    raise NotImplementedError


@T.stub
def padded_shape(sizes, size_divisible):
    """(Hmax, Wmax) of transforms.batch_images for images of ``sizes`` [(h, w), ...]."""
    raise NotImplementedError


# %%
cases = [(97, 128, 160, 200), (600, 1000, 800, 1333), (480, 640, 128, 128), (333, 500, 600, 1000)]


def _check_size():
    got = [network_size(*c) for c in cases]
    want = [transforms.resize(np.zeros((c[0], c[1], 3), np.uint8), np.zeros((0, 4)), c[2], c[3])[0].shape[:2] for c in cases]
    print(f"  {got}")
    return [tuple(g) for g in got] == [tuple(v) for v in want]


T.exercise("16.1", _check_size, "floor(h * scale), floor(w * scale) with scale = min(min / short, max / long)")
T.exercise(
    "16.2",
    lambda: np.allclose(hflip_boxes(boxes, 128), transforms.hflip(img, boxes)[1]),
    "x1' = W - x2, x2' = W - x1, y unchanged",
)


def _check_pad():
    sizes_ = [(97, 128), (150, 199), (64, 300)]
    want = transforms.batch_images([np.zeros((1, h_, w_), np.float32) for h_, w_ in sizes_], 32)[0].shape[2:]
    got = tuple(padded_shape(sizes_, 32))
    print(f"  padded to {got}")
    return got == tuple(want)


T.exercise("16.3", _check_pad, "the largest height and width, each rounded up to a multiple of size_divisible")
