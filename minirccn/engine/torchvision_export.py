"""A minirccn checkpoint as a torchvision model: ``DIR/model.safetensors`` and ``DIR/build.py``.

::

    minirccn export --checkpoint CK.npz --to torchvision --out DIR

    # then, where torch is installed:
    import sys; sys.path.insert(0, "DIR")
    import build
    model = build.build()                          # torchvision FasterRCNN, eval mode, weights loaded
    out = model([image])[0]                        # image: (3, H, W) float tensor in [0, 1]

``build.py`` needs torch and torchvision only (and what torchvision itself brings: NumPy and
Pillow; it reads the safetensors file itself: a JSON header and raw little-endian arrays). It holds the model's numbers as a JSON dict (``SPEC``) and builds, from torchvision's
own parts:

* the backbone with the parameter names of :func:`minirccn.engine.interop.key_table`: a
  VGG-style stack as ``nn.Sequential(conv, [FrozenBatchNorm2d], ReLU, [MaxPool2d], ...)``, a
  one-level ResNet as the Sequential of its children (``conv1, bn1, relu, maxpool, layer1,
  ...``: torchvision's ``BasicBlock`` / ``Bottleneck``, any width), a pyramid as
  ``BackboneWithFPN`` with ``LastLevelMaxPool``; batch norm as ``FrozenBatchNorm2d`` (eps 1e-5);
* ``AnchorGenerator`` (subclassed when the anchors sit at cell centres, ``anchor_offset=0.5``,
  or on the backbone's nominal strides, ``anchor_grid="stride"``);
* ``RPNHead`` (a one-logit model's objectness copied; the paper's two-way softmax as its
  one logit, the exact difference ``l1 - l0``);
* RoI pooling: a small ``RoIPool`` module around ``torchvision.ops.roi_pool`` (or ``roi_align``)
  for one level, with minirccn's ``1 / stride`` scale; ``MultiScaleRoIAlign`` for a pyramid;
* ``TwoMLPHead`` and ``FastRCNNPredictor`` of the checkpoint's widths;
* ``GeneralizedRCNNTransform`` with the checkpoint's sizes, mean, std and padding
  (``size_divisible``; 1 when minirccn does not pad); a checkpoint that resizes with Pillow
  (``image_resize="pillow"``, minirccn's default) gets a transform that resizes the uint8
  pixels with Pillow and scales boxes back by the one scale, as minirccn's ``predict``.

What torchvision's ``FasterRCNN`` cannot express is refused, one line each
(:func:`check_exportable`): another model kind (RetinaNet, Fast R-CNN, R-CNN), an RPN whose 3x3
conv is not as wide as the features (``RPNHead`` keeps the width), an aligned RoIAlign over a
pyramid (``MultiScaleRoIAlign`` has no ``aligned``).
"""

from __future__ import annotations

import json
import os

from minirccn.core.errors import MinirccnError
from minirccn.core.files import write_text
from minirccn.engine.interop import key_table, to_torchvision, vgg_layout, write_state_dict

TARGETS = ("torchvision",)


def check_exportable(model) -> None:
    """Raise one :class:`MinirccnError` unless torchvision's ``FasterRCNN`` can hold ``model``."""
    cfg = model.config
    if model.TORCHVISION != "FasterRCNN":
        raise MinirccnError(
            f"export: a {cfg.model} checkpoint cannot be exported to torchvision (only Faster R-CNN "
            f"checkpoints: torchvision's FasterRCNN)"
        )
    c = int(model.backbone.out_channels)
    if int(cfg.rpn_channels) != c:
        raise MinirccnError(
            f"export: rpn_channels {cfg.rpn_channels} differs from the backbone's {c} channels; "
            f"torchvision's RPNHead keeps the width (train with --set rpn_channels={c})"
        )
    if cfg.image_norm != "fixed":
        raise MinirccnError(
            f"export: image_norm={cfg.image_norm} cannot be exported (torchvision's "
            "GeneralizedRCNNTransform normalises by a fixed image_mean and image_std)"
        )
    if len(model.backbone.strides) > 1 and cfg.box_roi_pool_aligned:
        raise MinirccnError(
            "export: box_roi_pool_aligned on a pyramid cannot be exported (torchvision's "
            "MultiScaleRoIAlign has no aligned option)"
        )


def build_spec(model) -> dict:
    """The numbers ``build.py`` builds the torchvision model from (JSON-serialisable)."""
    cfg, bb = model.config, model.backbone
    spec = bb.spec
    if hasattr(spec, "widths"):
        backbone = {
            "kind": "resnet-fpn" if len(bb.strides) > 1 else "resnet",
            "block": spec.block,
            "widths": list(spec.widths),
            "blocks": list(spec.blocks),
            "strides": list(spec.strides),
            "stem_channels": spec.stem_channels,
            "stem_kernel": spec.stem_kernel,
            "stem_stride": spec.stem_stride,
            "stem_pool": spec.stem_pool,
            "fpn_channels": int(cfg.fpn_channels),
        }
    else:
        backbone = {
            "kind": "vgg",
            "layers": [
                {"in": ci, "out": co, "bn": bn, "pool": pool}
                for (name, _i, bn, pool), ci, co in _vgg_channels(spec)
            ],
        }
    fpn = len(bb.strides) > 1
    return {
        "backbone": backbone,
        "out_channels": int(bb.out_channels),
        "strides": [int(s) for s in bb.strides],
        "pooled_levels": int(bb.pooled_levels),
        "num_classes": int(model.num_classes),
        "class_names": list(model.class_names),
        "anchor_sizes": [[int(s)] for s in cfg.anchor_sizes]
        if fpn
        else [[int(s) for s in cfg.anchor_sizes]],
        "aspect_ratios": [float(r) for r in cfg.aspect_ratios],
        "anchor_offset": float(cfg.anchor_offset),
        "anchor_grid": cfg.anchor_grid,
        "min_size": int(cfg.min_size),
        "max_size": int(cfg.max_size),
        "image_mean": [float(v) for v in cfg.image_mean],
        "image_std": [float(v) for v in cfg.image_std],
        "image_resize": cfg.image_resize,
        "size_divisible": int(cfg.size_divisible) or 1,
        "rpn": {
            "pre_nms_top_n_train": int(cfg.rpn_pre_nms_top_n_train),
            "pre_nms_top_n_test": int(cfg.rpn_pre_nms_top_n_test),
            "post_nms_top_n_train": int(cfg.rpn_post_nms_top_n_train),
            "post_nms_top_n_test": int(cfg.rpn_post_nms_top_n_test),
            "nms_thresh": float(cfg.rpn_nms_thresh),
            "fg_iou_thresh": float(cfg.rpn_fg_iou_thresh),
            "bg_iou_thresh": float(cfg.rpn_bg_iou_thresh),
            "batch_size_per_image": int(cfg.rpn_batch_size_per_image),
            "positive_fraction": float(cfg.rpn_positive_fraction),
            "score_thresh": float(cfg.rpn_score_thresh),
            "min_size": float(cfg.rpn_min_size),
        },
        "roi": {
            "pool": cfg.box_roi_pool if not fpn else "roi_align",
            "output_size": int(cfg.roi_output_size),
            "sampling_ratio": int(cfg.box_roi_pool_sampling_ratio),
            "aligned": bool(cfg.box_roi_pool_aligned),
            "canonical_scale": int(cfg.roi_canonical_scale),
            "canonical_level": int(cfg.roi_canonical_level),
        },
        "representation_size": int(cfg.representation_size),
        "box": {
            "score_thresh": float(cfg.box_score_thresh),
            "nms_thresh": float(cfg.box_nms_thresh),
            "detections_per_img": int(cfg.box_detections_per_img),
            "fg_iou_thresh": float(cfg.box_fg_iou_thresh),
            "bg_iou_thresh": float(cfg.box_bg_iou_thresh),
            "batch_size_per_image": int(cfg.box_batch_size_per_image),
            "positive_fraction": float(cfg.box_positive_fraction),
            "bbox_reg_weights": [float(v) for v in cfg.bbox_reg_weights],
        },
    }


def _vgg_channels(spec):
    """``(vgg_layout row, in channels, out channels)`` of every conv of a VGG-style stack."""
    c_in, out = spec.in_channels, []
    rows = iter(vgg_layout(spec))
    for stage in spec.stages:
        for _ in range(stage.convs):
            out.append((next(rows), c_in, stage.channels))
            c_in = stage.channels
    return out


def export_torchvision(model, out: str) -> dict:
    """Write ``out/model.safetensors`` and ``out/build.py`` for ``model``; returns their paths."""
    check_exportable(model)
    keys = key_table(model)
    tensors = to_torchvision(model.params, keys)
    os.makedirs(out, exist_ok=True)
    weights = write_state_dict(os.path.join(out, "model.safetensors"), tensors)
    text = BUILD_PY.replace("SPEC_JSON", json.dumps(build_spec(model), indent=1))
    build = write_text(os.path.join(out, "build.py"), text, "build.py")
    return {"weights": weights, "build": build, "tensors": len(tensors)}


BUILD_PY = r'''"""The torchvision model of a minirccn checkpoint (written by ``minirccn export``).

    import build
    model = build.build()                # FasterRCNN in eval mode, model.safetensors loaded
    detections = model([image])[0]       # image: (3, H, W) float tensor in [0, 1], RGB

Needs torch and torchvision only (and the NumPy and Pillow torchvision installs; the
safetensors file is read by ``load_file`` below). ``SPEC`` holds the checkpoint's numbers; the parameter names
are torchvision's (``backbone.*``, ``rpn.head.*``, ``roi_heads.*``).
"""

import json
import math
import os

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

SPEC = json.loads(r"""SPEC_JSON""")
HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "I64": torch.int64}


def load_file(path):
    """{name: tensor} of a .safetensors file: 8 bytes little-endian header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the raw little-endian data."""
    with open(path, "rb") as fh:
        data = fh.read()
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype, shape = DTYPES[info["dtype"]], info["shape"]
        if end == begin:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype).reshape(shape)
    return out


def vgg_backbone(spec):
    """conv 3x3 (bias) [+ FrozenBatchNorm2d] + ReLU [+ 2x2 max pool] per conv, as one Sequential."""
    layers = []
    for layer in spec["layers"]:
        layers.append(nn.Conv2d(layer["in"], layer["out"], 3, padding=1))
        if layer["bn"]:
            layers.append(FrozenBatchNorm2d(layer["out"]))
        layers.append(nn.ReLU(inplace=True))
        if layer["pool"]:
            layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def resnet_children(spec):
    """[conv1, bn1, relu, maxpool, layer1, ...] of a ResNet (torchvision's blocks, any width)."""
    k, c = spec["stem_kernel"], spec["stem_channels"]
    pool = {"max3": nn.MaxPool2d(3, 2, 1), "max2": nn.MaxPool2d(2, 2), "": nn.Identity()}[spec["stem_pool"]]
    children = [
        ("conv1", nn.Conv2d(3, c, k, spec["stem_stride"], k // 2, bias=False)),
        ("bn1", FrozenBatchNorm2d(c)),
        ("relu", nn.ReLU(inplace=True)),
        ("maxpool", pool),
    ]
    block = Bottleneck if spec["block"] == "bottleneck" else BasicBlock
    c_in = c
    for s, (width, n, stride) in enumerate(zip(spec["widths"], spec["blocks"], spec["strides"]), start=1):
        planes = width // block.expansion
        blocks = []
        for i in range(n):
            st = stride if i == 0 else 1
            down = None
            if st != 1 or c_in != width:
                down = nn.Sequential(nn.Conv2d(c_in, width, 1, st, bias=False), FrozenBatchNorm2d(width))
            blocks.append(block(c_in, planes, st, down, norm_layer=FrozenBatchNorm2d))
            c_in = width
        children.append((f"layer{s}", nn.Sequential(*blocks)))
    return children


class Body(nn.Module):
    """The ResNet's children as named modules (what BackboneWithFPN reads layer by layer)."""

    def __init__(self, children):
        super().__init__()
        for name, module in children:
            self.add_module(name, module)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x


def backbone(spec):
    b = spec["backbone"]
    if b["kind"] == "vgg":
        net = vgg_backbone(b)
    elif b["kind"] == "resnet":
        net = nn.Sequential(*[m for _, m in resnet_children(b)])
    else:
        n = len(b["widths"])
        net = BackboneWithFPN(
            Body(resnet_children(b)),
            {f"layer{i}": str(i - 1) for i in range(1, n + 1)},
            list(b["widths"]),
            b["fpn_channels"],
            extra_blocks=LastLevelMaxPool(),
        )
    net.out_channels = spec["out_channels"]
    return net


class Anchors(AnchorGenerator):
    """torchvision's anchors moved by ``offset`` cells (minirccn's 0.5: cell centres), on the
    backbone's nominal strides when ``grid == "stride"``."""

    def __init__(self, sizes, aspect_ratios, strides, offset, grid):
        super().__init__(sizes, aspect_ratios)
        self.fixed_strides, self.offset, self.grid = strides, offset, grid

    def grid_anchors(self, grid_sizes, strides):
        if self.grid == "stride":
            strides = [[torch.tensor(s, dtype=torch.int64)] * 2 for s in self.fixed_strides]
        anchors = super().grid_anchors(grid_sizes, strides)
        out = []
        for a, (sh, sw) in zip(anchors, strides):
            shift = torch.stack([sw, sh, sw, sh]).to(a.dtype) * self.offset
            out.append(a + shift)
        return out


class OneLevelRoIPool(nn.Module):
    """RoI pooling of the one feature map: torchvision.ops.roi_pool (max) or roi_align, with
    minirccn's scale 1 / stride."""

    def __init__(self, roi, stride):
        super().__init__()
        self.roi, self.scale = roi, 1.0 / stride

    def forward(self, features, proposals, image_shapes):
        x, r = features["0"], self.roi
        size = (r["output_size"], r["output_size"])
        if r["pool"] == "roi_pool":
            return roi_pool(x, proposals, size, self.scale)
        return roi_align(x, proposals, size, self.scale, r["sampling_ratio"], r["aligned"])


class PillowTransform(GeneralizedRCNNTransform):
    """minirccn's ``image_resize="pillow"``: the uint8 pixels resized by Pillow's bilinear
    filter (``floor(side * scale)``), boxes divided by that one scale and clipped (inference)."""

    def _mean_std(self, image):
        mean = torch.tensor(self.image_mean, dtype=image.dtype, device=image.device)[:, None, None]
        std = torch.tensor(self.image_std, dtype=image.dtype, device=image.device)[:, None, None]
        return mean, std

    def _scale(self, h, w):
        return min(float(self.min_size[-1]) / min(h, w), float(self.max_size) / max(h, w))

    def resize(self, image, target=None):
        h, w = image.shape[-2:]
        s = self._scale(h, w)
        nh, nw = max(math.floor(h * s), 1), max(math.floor(w * s), 1)
        if (nh, nw) == (h, w):
            return image, target
        mean, std = self._mean_std(image)
        pixels = ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        resized = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).resize((nw, nh), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).to(image.dtype) / 255
        return ((x.to(image.device) - mean) / std), target

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training:
            return result
        for r, (h, w) in zip(result, original_image_sizes):
            boxes = r["boxes"] / torch.tensor(self._scale(h, w), dtype=torch.float32)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            r["boxes"] = boxes
        return result


def build(weights=os.path.join(HERE, "model.safetensors"), spec=SPEC):
    """The torchvision ``FasterRCNN`` of ``spec``, ``weights`` loaded (strict), eval mode."""
    rpn, roi, box = spec["rpn"], spec["roi"], spec["box"]
    ratios = tuple(spec["aspect_ratios"])
    sizes = tuple(tuple(s) for s in spec["anchor_sizes"])
    if spec["anchor_offset"] == 0.0 and spec["anchor_grid"] == "image":
        anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))
    else:
        anchors = Anchors(sizes, (ratios,) * len(sizes), spec["strides"], spec["anchor_offset"], spec["anchor_grid"])
    pooler = MultiScaleRoIAlign(
        [str(i) for i in range(spec["pooled_levels"])],
        roi["output_size"],
        roi["sampling_ratio"],
        canonical_scale=roi["canonical_scale"],
        canonical_level=roi["canonical_level"],
    )
    c, p, d = spec["out_channels"], roi["output_size"], spec["representation_size"]
    model = FasterRCNN(
        backbone(spec),
        num_classes=None,
        min_size=spec["min_size"],
        max_size=spec["max_size"],
        image_mean=spec["image_mean"],
        image_std=spec["image_std"],
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(c, len(sizes[0]) * len(ratios)),
        # SPEC's "rpn" and "box" keys are FasterRCNN's rpn_* and box_* arguments, prefix dropped
        **{f"rpn_{k}": v for k, v in rpn.items() if k != "min_size"},  # min_size: set below
        box_roi_pool=pooler,
        box_head=TwoMLPHead(c * p * p, d),
        box_predictor=FastRCNNPredictor(d, spec["num_classes"]),
        **{f"box_{k}": v for k, v in box.items() if k != "bbox_reg_weights"},
        bbox_reg_weights=tuple(box["bbox_reg_weights"]),
        size_divisible=spec["size_divisible"],
    )
    model.rpn.min_size = rpn["min_size"]
    if len(spec["strides"]) == 1:  # FasterRCNN type-checks its argument: swapped in after
        model.roi_heads.box_roi_pool = OneLevelRoIPool(roi, spec["strides"][0])
    if spec["image_resize"] == "pillow":
        model.transform = PillowTransform(
            spec["min_size"], spec["max_size"], spec["image_mean"], spec["image_std"],
            size_divisible=spec["size_divisible"],
        )
    if weights is not None:
        model.load_state_dict(load_file(weights), strict=True)
    return model.eval()


if __name__ == "__main__":
    n = sum(p.numel() for p in build().parameters())
    print("FasterRCNN:", n, "parameters,", SPEC["num_classes"], "classes")
'''
