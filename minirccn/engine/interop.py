"""minirccn <-> torchvision: one table of parameter names, read both ways.

A torchvision detector is a ``state_dict`` (name -> tensor); a minirccn detector is a config
and a flat dict of NumPy arrays. This module maps one onto the other, name by name, and
checks every name and shape before a number is copied. torch is never imported: the weights
travel as ``.safetensors`` files, read and written with ``safetensors.numpy``.

The architectures torchvision has and minirccn can build (:data:`ARCHS`, ``--arch``):

* ``fasterrcnn_resnet50_c4``: ``FasterRCNN`` around ``nn.Sequential(*list(resnet50().children())
  [:-3])`` (ResNet-50 up to ``layer3``: 1024 channels, stride 16), one level, anchors
  ``(32, 64, 128, 256, 512) x (0.5, 1.0, 2.0)``, ``MultiScaleRoIAlign(['0'], 7, sampling_ratio=2)``,
  ``TwoMLPHead(1024 * 7 * 7, 1024)`` and ``FastRCNNPredictor(1024, K)``;
* ``fasterrcnn_resnet50_fpn``: torchvision's ``fasterrcnn_resnet50_fpn`` (v1): ResNet-50, FPN
  256 on ``layer1 .. layer4`` plus the max-pooled level, one anchor size per level.

Both with torchvision's numbers (800 / 1333 pixels, 1000 proposals at test time, ...), read
by :func:`arch_config`; the config fields that make minirccn compute what torchvision computes
are set there: ``rpn_objectness="sigmoid"``, ``image_resize="torchvision"`` (bilinear on the normalised float image),
``size_divisible=32``, ``anchor_offset=0.0`` and ``anchor_grid="image"`` (torchvision's
anchor grid), RoIAlign with 2x2 samples per bin. Batch norm is "frozen" in both (the running
statistics, ``eps = 1e-5``: torchvision's ``FrozenBatchNorm2d`` and minirccn's inference mode
compute ``(x - mean) / sqrt(var + 1e-5) * weight + bias``).

The name table (:func:`key_table`), for a model's parameters:

===============================================  ======================================  =========
torchvision                                      minirccn                                kind
===============================================  ======================================  =========
``backbone.0.weight`` / ``backbone.body.conv1``  ``backbone.stem.conv.w``                copy
``backbone.1.*`` / ``backbone.body.bn1.*``       ``backbone.stem.bn.*``                  copy
``backbone.{3+s}.{k}.conv{j}.weight``            ``backbone.layer{s}.{k}.conv{j}.w``     copy
``...downsample.0.weight`` / ``.1.*``            ``...downsample.conv.w`` / ``.bn.*``    copy
``backbone.fpn.inner_blocks.{i}.0.*``            ``backbone.fpn.inner{i}.w / .b``        copy
``backbone.fpn.layer_blocks.{i}.0.*``            ``backbone.fpn.layer{i}.w / .b``        copy
``backbone.{i}.weight`` (VGG-style stack)        ``backbone.conv{s}_{k}.w`` (and BN)     copy
``rpn.head.conv.0.0.*``                          ``rpn.conv.w / .b``                     copy
``rpn.head.cls_logits.*``  ``(A, C, 1, 1)``      ``rpn.cls.w / .b``  ``(2A, C, 1, 1)``   objectness
(``rpn_objectness="sigmoid"``: ``(A, C, 1, 1)``)                                              copy
``rpn.head.bbox_pred.*``                         ``rpn.bbox.w / .b``                     copy
``roi_heads.box_head.fc6/fc7.weight`` (out, in)  ``head.fc6/fc7.w`` (in, out)            linear
``roi_heads.box_predictor.cls_score.*``          ``head.cls.w / .b``                     linear
``roi_heads.box_predictor.bbox_pred.*``          ``head.bbox.w / .b``                    linear
===============================================  ======================================  =========

batch norm: torchvision's ``weight``, ``bias``, ``running_mean``, ``running_var`` are minirccn's
``gamma``, ``beta``, ``running_mean``, ``running_var``; an ``nn.BatchNorm2d``'s
``num_batches_tracked`` is accepted and ignored (``FrozenBatchNorm2d`` has none).

**Objectness.** torchvision's RPN scores an anchor with ONE logit ``l`` and a sigmoid; the
paper's with TWO, ``(l0, l1)``, and a softmax. The converted architectures use torchvision's
(``rpn_objectness="sigmoid"``: the weights are copied, fine-tuning uses its binary
cross-entropy). The two are the same function of ``l1 - l0``: ``softmax(l0, l1)[1] =
1 / (1 + exp(l0 - l1)) = sigmoid(l1 - l0)``. So a two-logit model (``--set
rpn_objectness=softmax``, every minirccn preset) imports torchvision's weights in the object
rows ``2a + 1`` and zeros in the background rows ``2a`` (``l0 = 0``, ``l1 = l``: exactly
torchvision's score), and exports the difference of the two rows, ``w[2a + 1] - w[2a]`` and
``b[2a + 1] - b[2a]`` (the same logit ``l1 - l0``, up to the rounding of one subtraction).

**Linear layers.** torch stores ``(out, in)`` and computes ``x @ W.T``; minirccn stores ``(in,
out)`` and computes ``x @ W``: the weight is transposed, the flattening order of the pooled
``(C, 7, 7)`` RoI is the same (channel-major) in both.
"""

from __future__ import annotations

import os
import zipfile
from typing import NamedTuple

import numpy as np

from minirccn.config.presets import DetectorConfig
from minirccn.core.errors import MinirccnError
from minirccn.core.files import atomic_path, existing_file
from minirccn.detector.registry import build_model
from minirccn.engine.checkpoint import param_shapes
from minirccn.engine.checks import check_config

#: the torchvision architectures ``minirccn convert --arch`` reads, each with the fields that
#: set it apart from :data:`TORCHVISION_DEFAULTS` (C4: RPN and head on ResNet-50's stride-16
#: map, 1024 channels; FPN: five levels of 256 channels)
ARCH_FIELDS = {
    "fasterrcnn_resnet50_c4": dict(backbone="resnet50-c4", fpn_channels=0, rpn_channels=1024),
    "fasterrcnn_resnet50_fpn": dict(backbone="resnet50", fpn_channels=256, rpn_channels=256),
}
ARCHS = tuple(ARCH_FIELDS)

#: torchvision's ``FasterRCNN`` defaults (its keyword names are minirccn's config fields)
TORCHVISION_DEFAULTS = dict(
    min_size=800,
    max_size=1333,
    image_mean=(0.485, 0.456, 0.406),
    image_std=(0.229, 0.224, 0.225),
    image_resize="torchvision",
    size_divisible=32,
    aspect_ratios=(0.5, 1.0, 2.0),
    anchor_offset=0.0,
    anchor_grid="image",
    rpn_objectness="sigmoid",
    rpn_pre_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=2000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    rpn_min_size=1e-3,
    rpn_score_thresh=0.0,
    rpn_fg_iou_thresh=0.7,
    rpn_bg_iou_thresh=0.3,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.5,
    box_roi_pool="roi_align",
    box_roi_pool_sampling_ratio=2,
    box_roi_pool_aligned=False,
    roi_output_size=7,
    representation_size=1024,
    dropout=0.0,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
    box_fg_iou_thresh=0.5,
    box_bg_iou_thresh=0.5,
    box_batch_size_per_image=512,
    box_positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    # fine-tuning (torchvision's reference recipe: lr 0.02 for 16 images, frozen batch norm)
    lr=0.0025,
    warmup_iters=100,
    iters=1000,
    milestones=(),
    flip=True,
    bn_freeze_iter=1,  # batch norm on its running statistics from the second step (0: never)
)


def arch_config(arch: str) -> DetectorConfig:
    """The config of torchvision architecture ``arch`` (one of :data:`ARCHS`) with
    torchvision's default numbers (module docstring)."""
    if arch not in ARCH_FIELDS:
        raise MinirccnError(f"--arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    # both builders' anchors: one size per level on the pyramid, all five on the C4 map
    return DetectorConfig(
        anchor_sizes=(32, 64, 128, 256, 512), **ARCH_FIELDS[arch], **TORCHVISION_DEFAULTS
    )


# ----------------------------------------------------------------------------- the name table


class Key(NamedTuple):
    """One row of the table: a torchvision name, the minirccn parameter, how it converts."""

    torch: str  # torchvision's state_dict name
    ours: str  # minirccn's parameter name
    kind: str  # "copy", "linear" (transposed) or "objectness" (one logit <-> two)


_BN = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "running_mean"),
    ("running_var", "running_var"),
)


def _bn_keys(torch_prefix: str, ours_prefix: str) -> list:
    return [Key(f"{torch_prefix}.{t}", f"{ours_prefix}.{o}", "copy") for t, o in _BN]


def _resnet_keys(spec, names: set, body: str, layer_prefix) -> list:
    """The ResNet's rows: stem (``body + "conv1"`` / ``"bn1"``, or the Sequential children 0 and
    1) and every block's convs, batch norms and downsample, read from the parameter ``names``."""
    keys = [Key(f"{body[0]}.weight", "backbone.stem.conv.w", "copy")]
    keys += _bn_keys(body[1], "backbone.stem.bn")
    for s in range(1, len(spec.widths) + 1):
        k = 0
        while f"backbone.layer{s}.{k}.conv1.w" in names:
            ours, theirs = f"backbone.layer{s}.{k}", f"{layer_prefix(s)}.{k}"
            j = 1
            while f"{ours}.conv{j}.w" in names:
                keys.append(Key(f"{theirs}.conv{j}.weight", f"{ours}.conv{j}.w", "copy"))
                keys += _bn_keys(f"{theirs}.bn{j}", f"{ours}.bn{j}")
                j += 1
            if f"{ours}.downsample.conv.w" in names:
                keys.append(
                    Key(f"{theirs}.downsample.0.weight", f"{ours}.downsample.conv.w", "copy")
                )
                keys += _bn_keys(f"{theirs}.downsample.1", f"{ours}.downsample.bn")
            k += 1
    return keys


def vgg_layout(spec) -> list:
    """``(conv name, Sequential index of the conv, has batch norm, pool after)`` of a VGG-style
    stack laid out as ``nn.Sequential(conv, [BatchNorm2d], ReLU, [MaxPool2d], ...)``."""
    out, i = [], 0
    for s, stage in enumerate(spec.stages, start=1):
        for k in range(1, stage.convs + 1):
            pool = stage.pool and k == stage.convs
            out.append((f"backbone.conv{s}_{k}", i, bool(spec.batch_norm), pool))
            i += 1 + int(bool(spec.batch_norm)) + 1 + int(pool)  # conv, [bn], relu, [pool]
    return out


def key_table(model) -> list:
    """Every parameter of ``model`` (a two-stage :class:`~minirccn.detector.base.Detector` with
    an RPN) as a :class:`Key` (module docstring), in minirccn's order.

    The backbone's torchvision layout: a pyramid is ``backbone.body`` + ``backbone.fpn``
    (``BackboneWithFPN``); a one-level ResNet is the Sequential of ``resnet.children()``
    (``backbone.0`` conv1, ``.1`` bn1, ``.2`` relu, ``.3`` maxpool, ``.4`` layer1, ...); a
    VGG-style stack is a Sequential of its layers (:func:`vgg_layout`).

    Raises:
        MinirccnError: a model torchvision's ``FasterRCNN`` cannot hold (no RPN, ...).
    """
    names = set(model.params)
    config, spec = model.config, model.backbone.spec
    keys = []
    if hasattr(spec, "widths"):  # a ResNet
        if int(config.fpn_channels) > 0:
            keys += _resnet_keys(
                spec,
                names,
                ("backbone.body.conv1", "backbone.body.bn1"),
                lambda s: f"backbone.body.layer{s}",
            )
            i = 0
            while f"backbone.fpn.inner{i}.w" in names:
                for ours, theirs in (
                    (f"inner{i}", f"inner_blocks.{i}"),
                    (f"layer{i}", f"layer_blocks.{i}"),
                ):
                    keys.append(
                        Key(f"backbone.fpn.{theirs}.0.weight", f"backbone.fpn.{ours}.w", "copy")
                    )
                    keys.append(
                        Key(f"backbone.fpn.{theirs}.0.bias", f"backbone.fpn.{ours}.b", "copy")
                    )
                i += 1
        else:
            keys += _resnet_keys(
                spec, names, ("backbone.0", "backbone.1"), lambda s: f"backbone.{3 + s}"
            )
    else:  # a VGG-style stack
        for name, i, bn, _pool in vgg_layout(spec):
            keys.append(Key(f"backbone.{i}.weight", f"{name}.w", "copy"))
            keys.append(Key(f"backbone.{i}.bias", f"{name}.b", "copy"))
            if bn:
                keys += _bn_keys(f"backbone.{i + 1}", f"{name}.bn")
    for part in ("w", "b"):
        t = "weight" if part == "w" else "bias"
        keys.append(Key(f"rpn.head.conv.0.0.{t}", f"rpn.conv.{part}", "copy"))
        kind = "copy" if config.rpn_objectness == "sigmoid" else "objectness"
        keys.append(Key(f"rpn.head.cls_logits.{t}", f"rpn.cls.{part}", kind))
        keys.append(Key(f"rpn.head.bbox_pred.{t}", f"rpn.bbox.{part}", "copy"))
    for ours, theirs in (
        ("fc6", "box_head.fc6"),
        ("fc7", "box_head.fc7"),
        ("cls", "box_predictor.cls_score"),
        ("bbox", "box_predictor.bbox_pred"),
    ):
        keys.append(Key(f"roi_heads.{theirs}.weight", f"head.{ours}.w", "linear"))
        keys.append(Key(f"roi_heads.{theirs}.bias", f"head.{ours}.b", "linear"))
    missing = sorted(names - {k.ours for k in keys})
    if missing:
        raise MinirccnError(
            f"torchvision's FasterRCNN has no place for {len(missing)} parameter(s) of this model "
            f"({', '.join(missing[:3])})"
        )
    return keys


def torch_shape(key: Key, shape: tuple) -> tuple:
    """The torchvision shape of a minirccn parameter of ``shape`` under ``key``."""
    shape = tuple(int(v) for v in shape)
    if key.kind == "linear":
        return shape[::-1]
    if key.kind == "objectness":
        return (shape[0] // 2, *shape[1:])
    return shape


def to_torchvision(params: dict, keys: list) -> dict:
    """``{torchvision name: float32 array}`` of minirccn ``params`` (the export direction).

    ``objectness``: row ``a`` is ``w[2a + 1] - w[2a]`` (the one logit ``l1 - l0``); ``linear``:
    transposed; the rest copied. Every array C-contiguous float32 (what ``safetensors`` stores).
    """
    out = {}
    for key in keys:
        a = np.asarray(params[key.ours], dtype=np.float32)
        if key.kind == "linear":
            a = a.T
        elif key.kind == "objectness":
            a = a[1::2] - a[0::2]
        out[key.torch] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def from_torchvision(tensors: dict, keys: list, dtype) -> dict:
    """``{minirccn name: array of dtype}`` of checked torchvision ``tensors`` (the import
    direction; :func:`check_state_dict` first). ``objectness``: torchvision's logit in the
    object rows ``2a + 1``, zeros in the background rows ``2a``."""
    out = {}
    for key in keys:
        a = np.asarray(tensors[key.torch]).astype(dtype)
        if key.kind == "linear":
            a = a.T
        elif key.kind == "objectness":
            two = np.zeros((2 * a.shape[0], *a.shape[1:]), dtype)
            two[1::2] = a
            a = two
        out[key.ours] = np.ascontiguousarray(a, dtype=dtype)
    return out


# ----------------------------------------------------------------------------- checks


def _names(items, n: int = 3) -> str:
    items = sorted(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def ignorable(name: str) -> bool:
    """True for the state_dict entries that hold no weight (batch norm's batch counter)."""
    return name.endswith(".num_batches_tracked")


def check_state_dict(tensors: dict, keys: list, shapes: dict, where: str, arch: str = "") -> None:
    """Raise ONE :class:`MinirccnError` naming ``where`` unless ``tensors`` has exactly the
    names of ``keys`` (``num_batches_tracked`` aside) with the shapes the minirccn ``shapes``
    ask for.

    The line names the missing keys, the unexpected keys and the mis-shaped keys (first three
    of each, with counts), and, when the keys are those of another architecture of
    :data:`ARCHS`, which one.
    """
    want = {k.torch: torch_shape(k, shapes[k.ours]) for k in keys}
    have = {
        name: tuple(int(v) for v in np.shape(a))
        for name, a in tensors.items()
        if not ignorable(name)
    }
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    bad = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    if not (missing or extra or bad):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
    if extra:
        parts.append(f"{len(extra)} unexpected key(s): {_names(extra)}")
    if bad:
        shown = [f"{n} is {have[n]}, expected {want[n]}" for n in bad[:3]]
        more = f", ... ({len(bad)} in all)" if len(bad) > 3 else ""
        parts.append(f"{len(bad)} mis-shaped key(s): {'; '.join(shown)}{more}")
    hint = ""
    if missing or extra:
        guess = guess_arch(have)
        if guess and guess != arch:
            hint = f" (the keys are those of {guess}: try --arch {guess})"
    what = f"not a {arch} state_dict" if arch else "does not match the model"
    raise MinirccnError(f"{where}: {what}: {'; '.join(parts)}{hint}")


def guess_arch(names) -> str:
    """The architecture of :data:`ARCHS` whose backbone keys ``names`` has, or ``""``."""
    names = set(names)
    if "backbone.body.conv1.weight" in names and "backbone.fpn.inner_blocks.0.0.weight" in names:
        return "fasterrcnn_resnet50_fpn"
    if (
        "backbone.0.weight" in names
        and "backbone.6.0.conv1.weight" in names
        and "backbone.7.0.conv1.weight" not in names
    ):
        return "fasterrcnn_resnet50_c4"
    return ""


# ----------------------------------------------------------------------------- files

PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".ckpt", ".tar")
SAVE_HINT = (
    "save it as safetensors first, where torch is installed: "
    "from safetensors.torch import save_file; save_file(model.state_dict(), 'model.safetensors')"
)


def _safetensors_numpy():
    try:
        import safetensors.numpy as st  # optional dependency: the weights extra
    except ImportError:
        raise MinirccnError(
            "the safetensors package is needed to read and write torchvision weights "
            "(pip install safetensors)"
        ) from None
    return st


def read_state_dict(path) -> dict:
    """``{name: NumPy array}`` of a ``.safetensors`` state_dict (local file only).

    A pickled torch file (``.pth`` and kin, or a zip archive whatever its name) is refused
    with how to convert it: minirccn never unpickles (arbitrary code) and never imports torch.
    """
    path = existing_file(path)
    if path.lower().endswith(PICKLE_SUFFIXES) or zipfile.is_zipfile(path):
        raise MinirccnError(
            f"{path}: a pickled torch file is not read (it can run code); {SAVE_HINT}"
        )
    st = _safetensors_numpy()
    try:
        return dict(st.load_file(path))
    except Exception as exc:  # noqa: BLE001 - the library raises its own error types
        raise MinirccnError(
            f"{path}: not a readable safetensors file ({exc}); {SAVE_HINT}"
        ) from None


def write_state_dict(path, tensors: dict) -> str:
    """Write ``tensors`` to ``path`` as safetensors, atomically (a crash leaves no half file)."""
    st = _safetensors_numpy()
    path = os.fspath(path)
    with atomic_path(path, "safetensors file") as tmp:
        st.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
    return path


# ----------------------------------------------------------------------------- convert


#: torchvision's COCO category names (``weights.meta["categories"]`` of its COCO detectors):
#: 91 entries, index 0 the background, with 11 unused ids (named ``N/A-<id>`` here so names stay
#: unique)
COCO_CATEGORIES = [
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic_light",
    "fire_hydrant",
    "N/A-12",
    "stop_sign",
    "parking_meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A-26",
    "backpack",
    "umbrella",
    "N/A-29",
    "N/A-30",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports_ball",
    "kite",
    "baseball_bat",
    "baseball_glove",
    "skateboard",
    "surfboard",
    "tennis_racket",
    "bottle",
    "N/A-45",
    "wine_glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot_dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "N/A-66",
    "dining_table",
    "N/A-68",
    "N/A-69",
    "toilet",
    "N/A-71",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell_phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A-83",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy_bear",
    "hair_drier",
    "toothbrush",
]


def class_names_for(num_classes: int, names=None) -> list:
    """``["__background__", ...]`` for ``num_classes`` classes: ``names`` (without the
    background) if given, COCO's for 91, else ``class1 .. class{K-1}``."""
    if names:
        names = [n.strip() for n in names]
        if (
            len(names) != num_classes - 1
            or any(not n for n in names)
            or len(set(names)) != len(names)
        ):
            raise MinirccnError(
                f"--class-names: expected {num_classes - 1} distinct non-empty names (--num-classes "
                f"{num_classes} counts the background), got {len(names)}"
            )
        return ["__background__", *names]
    if num_classes == len(COCO_CATEGORIES):
        return list(COCO_CATEGORIES)
    return ["__background__", *(f"class{i}" for i in range(1, num_classes))]


def check_num_classes(tensors: dict, num_classes: int, where: str) -> None:
    """One error line unless the box predictor of ``tensors`` has ``num_classes`` rows."""
    w = tensors.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None and np.ndim(w) == 2 and int(np.shape(w)[0]) != num_classes:
        k = int(np.shape(w)[0])
        raise MinirccnError(
            f"{where}: --num-classes {num_classes} disagrees with the file's box predictor "
            f"(roi_heads.box_predictor.cls_score.weight has {k} rows: {k} classes, background "
            f"included); use --num-classes {k}"
        )


def convert(tensors: dict, config: DetectorConfig, class_names: list, where: str, arch: str = ""):
    """The minirccn detector of torchvision ``tensors`` (checked: names, shapes, classes).

    Args:
        tensors: ``{torchvision name: array}`` (:func:`read_state_dict`).
        config: the model's config (:func:`arch_config` with any ``--set``).
        class_names: ``K`` names, the background first.
        where: what to name in an error (the file).

    Returns:
        the :class:`~minirccn.detector.base.Detector`, parameters in ``config.dtype``.
    """
    check_config(config, where)
    check_num_classes(tensors, len(class_names), where)
    shell = build_model(config, class_names, params={})  # the layout only, no arrays
    shapes = {
        name: shape for name, (shape, _dtype) in param_shapes(config, len(class_names)).items()
    }
    shell.params = shapes
    keys = key_table(shell)
    check_state_dict(tensors, keys, shapes, where, arch)
    params = from_torchvision(tensors, keys, np.dtype(config.dtype))
    return build_model(config, class_names, params=params)
