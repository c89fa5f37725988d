# %% [markdown]
# # Tutorial 17: torchvision's Faster R-CNN on ResNet-50, layer by layer
#
# A classic write-up builds torchvision's `FasterRCNN` around a ResNet-50 cut after
# `layer3` and asks what each argument does:
#
# ```python
# backbone = nn.Sequential(*list(torchvision.models.resnet50().children())[:-3])
# backbone.out_channels = 1024                       # layer3's channels: C4, stride 16
# model = FasterRCNN(backbone, num_classes=K,
#     rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
#     box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2))
# ```
#
# minirccn has every piece of that model written from scratch. Here the SAME weights run
# through both, one layer at a time, torchvision's numbers printed beside minirccn's:
#
# 1. **the weights**: torchvision's `state_dict` -> minirccn's parameters (`minirccn convert`);
# 2. **the input**: normalise, bilinear resize, pad to 32;
# 3. **the backbone**: conv1, bn1 + ReLU, max pool, layer1, layer2, layer3;
# 4. **the RPN**: one logit vs two, the anchors, the proposals;
# 5. **the head**: RoIAlign, fc6, fc7, the class scores, the detections.
#
# With torch and torchvision installed the torchvision column is filled (the model is
# built exactly as above, seeded, batch norm calibrated on the image); without them the
# weights come from minirccn's own initialisation and the torchvision column says why it
# is empty.

# %%
import matplotlib

matplotlib.use("Agg")
import _common as T
import numpy as np

from minirccn import viz
from minirccn.data import load_dataset, transforms
from minirccn.detector.backbones import resnet
from minirccn.detector.registry import build_model
from minirccn.detector.roi_heads.box_head import box_head_forward
from minirccn.detector.rpn.head import rpn_forward_levels
from minirccn.engine import interop

ARCH = "fasterrcnn_resnet50_c4"
SIZE = T.pick(320, 96)  # min_size = max_size: the longer side of the input
PRE, POST = T.pick((1000, 1000), (150, 50))  # the RPN's test-time top-n before / after NMS
NAMES = interop.class_names_for(4, ["circle", "square", "triangle"])
sample = load_dataset("shapes", split="test", seed=0)[0]
image = sample["image"]  # (128, 128, 3) uint8
torch, torchvision = T.torchvision_or_note("the ResNet-50 C4 Faster R-CNN")
print(f"{ARCH}: {len(NAMES)} classes, min_size = max_size = {SIZE}, image {image.shape}")

# %% [markdown]
# ## 1. The weights
#
# torchvision's `state_dict` names every tensor by its module path. minirccn's parameters
# follow the same structure under its own words; `minirccn.engine.interop.key_table` is the
# one table between them. Two kinds of rows are more than a copy: a `Linear` weight is
# `(out, in)` in torch and `(in, out)` in minirccn (transposed), and the RPN's objectness:
# ONE logit `l` per anchor in torchvision (a sigmoid), TWO, `(l0, l1)`, in the paper's
# softmax. The converted model keeps torchvision's (`rpn_objectness="sigmoid"`: a copy);
# a two-logit model takes `(0, l)`, since `softmax(0, l)[1] = sigmoid(l)` exactly.

# %%
T.section("1. the weights: torchvision's names -> minirccn's")
config = interop.arch_config(ARCH).replace(
    min_size=SIZE, max_size=SIZE, rpn_pre_nms_top_n_test=PRE, rpn_post_nms_top_n_test=POST
)
tv = None
if torch is not None:
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(*list(torchvision.models.resnet50().children())[:-3])
    backbone.out_channels = 1024
    tv = FasterRCNN(
        backbone,
        num_classes=len(NAMES),
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        min_size=SIZE,
        max_size=SIZE,
        rpn_pre_nms_top_n_test=PRE,
        rpn_post_nms_top_n_test=POST,
    ).eval()
    x_tv = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    with torch.no_grad():  # calibrate batch norm: running statistics = this image's
        for bn in (m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        backbone(tv.transform([x_tv])[0].tensors)
        tv.eval()
        tv.roi_heads.box_predictor.cls_score.weight.mul_(30)  # spread the random class scores
    state = {k: v.numpy() for k, v in tv.state_dict().items()}
else:  # the same names, minirccn's own random weights
    own = build_model(config, NAMES, rng=np.random.default_rng(0))
    state = interop.to_torchvision(own.params, interop.key_table(own))
model = interop.convert(state, config, NAMES, "the state_dict", ARCH)
keys = interop.key_table(model)
print(
    f"{len(keys)} tensors ({sum(1 for k in state if k.endswith('num_batches_tracked'))} batch counters ignored)"
)
print(f"{'torchvision':44s} {'shape':>18s}   {'minirccn':32s} {'shape':>18s}  kind")
for k in keys[:3] + keys[5:7] + [k for k in keys if k.kind != "copy"][:4]:
    print(
        f"{k.torch:44s} {tuple(state[k.torch].shape)!s:>18s}   {k.ours:32s} "
        f"{model.params[k.ours].shape!s:>18s}  {k.kind}"
    )
T.check(len(keys) == len(model.params), "every tensor has its row")
two = interop.convert(
    state, config.replace(rpn_objectness="softmax"), NAMES, "the state_dict", ARCH
)
w1, w2 = model.params["rpn.cls.w"], two.params["rpn.cls.w"]
print(
    f"rpn.cls.w: sigmoid model {w1.shape}; softmax model {w2.shape}, background rows all 0: {not w2[0::2].any()}"
)
T.check(
    np.array_equal(w2[1::2], w1) and not w2[0::2].any(),
    "the two-logit model holds (0, l): softmax(0, l)[1] = sigmoid(l)",
)

# %% [markdown]
# ## 2. The input
#
# torchvision's detection models take float images in `[0, 1]` (the caller divides by 255,
# as the cell of section 1 does); their `GeneralizedRCNNTransform` normalises with the
# ImageNet mean and std, resizes the float image bilinearly (`align_corners=False`, no
# antialias) so the shorter side is `min_size` unless the longer passes `max_size`, and pads
# the batch with zeros to a multiple of 32. The config fields `image_resize="torchvision"` and
# `size_divisible=32` make minirccn do the same (`minirccn.data.transforms.bilinear_resize`).

# %%
T.section("2. the input")
x, _ = model.preprocess(image)
batch, sizes = transforms.batch_images([x], config.size_divisible)
print(f"minirccn: resized {x.shape}, padded batch {batch.shape}")
if tv is not None:
    with torch.no_grad():
        images_tv, _ = tv.transform([x_tv])
    d = float(np.abs(images_tv.tensors.numpy() - batch).max())
    print(
        f"torchvision: batch {tuple(images_tv.tensors.shape)}, sizes {images_tv.image_sizes}; max |difference| {d:.2e}"
    )
    T.check(
        d < 1e-5 and images_tv.image_sizes == sizes,
        "torchvision's transform = minirccn's preprocess + padding",
    )
else:
    T.check(
        batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0,
        "the batch is padded to a multiple of 32",
    )

# %% [markdown]
# ## 3. The backbone, layer by layer
#
# `children()[:-3]` keeps conv1 (7x7, stride 2), bn1, ReLU, the 3x3 max pool (stride 2) and
# the bottleneck stages layer1 (3 blocks, 256 channels), layer2 (4 blocks, 512, stride 2) and
# layer3 (6 blocks, 1024, stride 2): stride 16 in all. Batch norm at inference is
# `(x - running_mean) / sqrt(running_var + 1e-5) * weight + bias` in both.

# %%
T.section("3. the backbone")
p, spec = model.params, resnet.get_spec("resnet50-c4")
stem, _ = resnet.conv_bn_forward(
    p, "backbone.stem.conv", "backbone.stem.bn", batch, 2, True, False, "numpy"
)
pooled, _ = resnet.max_pool_padded_forward(stem, 3, 2, 1)
stages, _ = resnet.resnet_forward(p, batch, spec, train=False, backend="numpy")
ours = {
    "conv1+bn1+relu": stem,
    "maxpool": pooled,
    "layer1": stages[0],
    "layer2": stages[1],
    "layer3": stages[2],
}
theirs = {}
if tv is not None:
    with torch.no_grad():
        h = images_tv.tensors
        for i, m in enumerate(backbone):
            h = m(h)
            name = {2: "conv1+bn1+relu", 3: "maxpool", 4: "layer1", 5: "layer2", 6: "layer3"}.get(i)
            if name:
                theirs[name] = h.numpy()
print(
    f"{'layer':16s} {'shape':>20s} {'minirccn mean / std':>21s} {'torchvision: max |diff| / std':>30s}"
)
worst = 0.0
for name, a in ours.items():
    col = "(torch not installed)"
    if name in theirs:
        rel = float(np.abs(theirs[name] - a).max() / a.std())
        worst = max(worst, rel)
        col = f"{rel:.1e}"
    print(f"{name:16s} {a.shape!s:>20s} {a.mean():10.4f} / {a.std():8.4f} {col:>30s}")
T.check(
    stages[2].shape[1:] == (1024, batch.shape[2] // 16, batch.shape[3] // 16),
    "layer3: 1024 channels at stride 16",
)
if tv is not None:
    # float32 sums in another order, through 16 blocks and batch norms calibrated on one image
    T.check(worst < 1e-3, "every layer equals torchvision's to 1e-3 of its spread")

# %% [markdown]
# ## 4. The RPN
#
# A 3x3 conv + ReLU on C4, then a 1x1 conv to the objectness of the 15 anchors of each
# cell and one to their 4 deltas. torchvision's anchors sit on the corner grid (offset 0:
# cell `(i, j)` at `(j * 16, i * 16)`, the stride being the padded input's size over the
# map's) and are kept per level: the `PRE` best by objectness, decoded, clipped, small ones
# dropped, NMS at 0.7, the `POST` best.

# %%
T.section("4. the RPN")
c4 = stages[2]
logits, deltas, _ = rpn_forward_levels(p, [c4], backend="numpy")
ours_logit = logits[0, :, 0]  # one logit per anchor (rpn_objectness="sigmoid")
anchors, counts = model.anchor_generator([c4.shape[2:]], np, batch.shape[2:])
_, props = model.rpn_proposals(batch, sizes, backend="numpy")
boxes = props[0][0]
print(f"minirccn: {anchors.shape[0]} anchors, logits {logits.shape}, {len(boxes)} proposals")
if tv is not None:
    with torch.no_grad():
        feats = {"0": torch.from_numpy(theirs["layer3"])}
        obj, _ = tv.rpn.head([feats["0"]])
        tv_logit = obj[0][0].permute(1, 2, 0).reshape(-1).numpy()  # (H, W, A): the anchors' order
        tv_anchors = tv.rpn.anchor_generator(images_tv, [feats["0"]])[0].numpy()
        tv_props, _ = tv.rpn(images_tv, feats)
    tv_boxes = tv_props[0].numpy()
    print(
        f"torchvision: {tv_anchors.shape[0]} anchors, {len(tv_boxes)} proposals; "
        f"max |logit difference| {np.abs(tv_logit - ours_logit).max():.1e}"
    )
    T.check(np.array_equal(tv_anchors, anchors), "the anchors are torchvision's, bit for bit")
    n = min(10, len(boxes), len(tv_boxes))
    T.check(
        np.abs(tv_boxes[:n] - boxes[:n]).max() < 1e-2, f"the {n} best proposals are torchvision's"
    )
else:
    T.check(len(boxes) <= POST, "at most POST proposals")

# %% [markdown]
# ## 5. The head
#
# Each proposal is pooled from C4 by RoIAlign (7x7 bins, 2x2 bilinear samples each, scale
# 1/16), flattened channel-major to 1024 * 49 = 50176 numbers, through fc6 and fc7 (1024,
# ReLU) to K class scores and 4K deltas; then softmax, a box per class, score > 0.05,
# per-class NMS at 0.5 and the 100 best; boxes scaled back to the photo.

# %%
T.section("5. the head")
rois = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], 1)
pooled_rois, _ = model.pooler.forward([c4], rois, backend="numpy")
cls_logits, _, _ = box_head_forward(p, pooled_rois.reshape(len(rois), -1), backend="numpy")
print(f"minirccn: pooled {pooled_rois.shape}, class logits {cls_logits.shape}")
ours_det = model.predict(image, backend="numpy")
picture = viz.draw_detections(
    image, ours_det["boxes"][:5], ours_det["labels"][:5], ours_det["scores"][:5], NAMES, scale=3
)
pictures = [T.caption(picture, "minirccn: the 5 best")]
print(f"{'':12s} {'label':>9s} {'score':>8s}  box")
for i in range(min(5, len(ours_det["scores"]))):
    print(
        f"minirccn     {NAMES[ours_det['labels'][i]]:>9s} {ours_det['scores'][i]:8.4f}  {np.round(ours_det['boxes'][i], 2)}"
    )
if tv is not None:
    with torch.no_grad():
        tv_pooled = tv.roi_heads.box_roi_pool(
            feats, [torch.from_numpy(boxes)], images_tv.image_sizes
        ).numpy()
        tv_det = {k: v.numpy() for k, v in tv([x_tv])[0].items()}
    print(f"torchvision: pooled max |difference| {np.abs(tv_pooled - pooled_rois).max():.1e}")
    for i in range(min(5, len(tv_det["scores"]))):
        print(
            f"torchvision  {NAMES[tv_det['labels'][i]]:>9s} {tv_det['scores'][i]:8.4f}  {np.round(tv_det['boxes'][i], 2)}"
        )
    top = min(20, len(tv_det["scores"]))
    found = sum(
        bool(
            np.any(
                (ours_det["labels"] == tv_det["labels"][i])
                & (np.abs(ours_det["scores"] - tv_det["scores"][i]) <= 1e-3)
                & (np.abs(ours_det["boxes"] - tv_det["boxes"][i]).max(1) < 0.05)
            )
        )
        for i in range(top)
    )
    print(f"torchvision's {top} best detections found in minirccn's: {found}")
    T.check(found >= 0.95 * top, "minirccn reproduces torchvision's detections")
    picture = viz.draw_detections(
        image, tv_det["boxes"][:5], tv_det["labels"][:5], tv_det["scores"][:5], NAMES, scale=3
    )
    pictures.append(T.caption(picture, "torchvision: the 5 best"))
else:
    T.check(ours_det["boxes"].shape[1] == 4, "detections in the photo's pixels")
T.save_grid(pictures, "17_torchvision.png", cols=2)

# %% [markdown]
# ## Summary
#
# * The write-up's model is minirccn's `fasterrcnn_resnet50_c4`: the same layers, the same
#   numbers, read from the same `state_dict` through one name table.
# * The only non-copies: transposed `Linear` weights, and the objectness of a two-logit
#   (softmax) model: one logit `l` as `(0, l)` (`softmax(0, l)[1] = sigmoid(l)`); `minirccn
#   export` writes the difference `l1 - l0` back.
# * torchvision's input and anchor conventions (bilinear resize of the float image, padding
#   to 32, anchors on the corner grid) are config fields: `image_resize`, `size_divisible`,
#   `anchor_offset`, `anchor_grid`.
#
# ## Exercises
#
# 1. **The backbone's size.** How many trainable numbers does `children()[:-3]` keep (conv
#    weights, batch-norm weights and biases; no running statistics)? Count them from
#    `model.params`.
# 2. **One logit into two.** Write torchvision's `rpn.head.cls_logits.weight` `(A, C, 1, 1)`
#    as minirccn's `rpn.cls.w` `(2A, C, 1, 1)`.
# 3. **torchvision's size.** To what size does torchvision resize a 427 x 640 photo at
#    `min_size = max_size = 320`, and a 100 x 37 one? The formula of section 2 in exact
#    arithmetic is not quite it: torch computes the scale in float32, and
#    `320 * (1 / 100)` is 3.1999998 there, so `100 * scale` floors to 319, not 320.
#    (`minirccn.data.transforms.torchvision_size` writes torch's steps out.)


# %%
@T.stub
def backbone_numbers(params):
    """Trainable numbers of the backbone in ``params``."""
    raise NotImplementedError


@T.stub
def two_logits(weight):
    """``(A, C, 1, 1)`` -> ``(2A, C, 1, 1)`` with the same softmax object probability."""
    raise NotImplementedError


@T.stub
def torchvision_sizes():
    """``[(h, w) of 427 x 640, (h, w) of 100 x 37]`` at min_size = max_size = 320."""
    raise NotImplementedError


# %%
T.exercise("17.1", lambda: backbone_numbers(model.params) == 8_543_296, "8,543,296")
w = np.random.default_rng(1).normal(size=(15, 8, 1, 1)).astype(np.float32)
T.exercise(
    "17.2",
    lambda: np.array_equal(
        two_logits(w),
        interop.from_torchvision(
            {"k": w}, [interop.Key("k", "rpn.cls.w", "objectness")], np.float32
        )["rpn.cls.w"],
    ),
    "rows 2a zero, rows 2a + 1 the weight",
)
scale_f32 = np.float32(320) * (np.float32(1) / np.float32(100))  # torch's float32 scale of 100 x 37
T.exercise(
    "17.3",
    lambda: list(torchvision_sizes()) == [(213, 320), (319, 118)],
    f"[(213, 320), (319, 118)]: in float32 320 * (1 / 100) = {scale_f32:.7f}, and 100 * that floors to "
    f"{int(np.floor(100 * np.float64(scale_f32)))}",
)
