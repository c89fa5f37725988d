"""Field-level checks of a :class:`~minirccn.config.presets.DetectorConfig`: every field has
its default's type and a sane range, before anything is built (a checkpoint's config included).

Whether the fields describe a model the detector can build (a known ``model``, a backbone
preset, one anchor size per pyramid level) is checked one layer up, by
:func:`minirccn.engine.checks.check_config`, which asks the detector itself.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from minirccn.config.presets import DetectorConfig
from minirccn.core.errors import MinirccnError

#: generous upper bounds: anything larger is a typo or a crafted file, not a model for this code
MAX_SIDE = 8192  # image side (min_size, max_size)
MAX_CHANNELS = 8192  # conv channels
MAX_WIDTH = 65536  # fc width (representation_size)
MAX_POOL = 64  # RoI output size
MAX_LIST = 64  # entries of anchor_sizes, aspect_ratios, backbone_stages, milestones
MAX_COUNT = 1_000_000  # top-n, sampled boxes, detections per image
MAX_ITERS = 10**9

_UNIT = (0.0, 1.0)  # closed interval [0, 1]
RANGES = {
    # name: (low, high) inclusive; None: unbounded on that side
    "min_size": (1, MAX_SIDE),
    "max_size": (1, MAX_SIDE),
    "anchor_offset": _UNIT,
    "rpn_channels": (1, MAX_CHANNELS),
    "rpn_pre_nms_top_n_train": (1, MAX_COUNT),
    "rpn_pre_nms_top_n_test": (1, MAX_COUNT),
    "rpn_post_nms_top_n_train": (1, MAX_COUNT),
    "rpn_post_nms_top_n_test": (1, MAX_COUNT),
    "rpn_nms_thresh": _UNIT,
    "rpn_min_size": (0.0, None),
    "rpn_score_thresh": _UNIT,
    "size_divisible": (0, 1024),
    "rpn_fg_iou_thresh": _UNIT,
    "rpn_bg_iou_thresh": _UNIT,
    "rpn_batch_size_per_image": (1, MAX_COUNT),
    "rpn_positive_fraction": _UNIT,
    "rpn_allowed_border": (-1, None),
    "rpn_box_beta": (0.0, None),
    "roi_output_size": (1, MAX_POOL),
    "box_roi_pool_sampling_ratio": (-1, MAX_POOL),  # <= 0: adaptive
    "representation_size": (1, MAX_WIDTH),
    "dropout": (0.0, 0.99),
    "box_score_thresh": _UNIT,
    "box_nms_thresh": _UNIT,
    "box_detections_per_img": (1, MAX_COUNT),
    "box_fg_iou_thresh": _UNIT,
    "box_bg_iou_thresh": _UNIT,
    "box_bg_iou_lo": _UNIT,
    "box_batch_size_per_image": (1, MAX_COUNT),
    "box_positive_fraction": _UNIT,
    "box_beta": (0.0, None),
    "lr": (1e-12, None),
    "momentum": (0.0, 1.0),
    "weight_decay": (0.0, None),
    "clip_grad_norm": (0.0, None),
    "warmup_iters": (0, MAX_ITERS),
    "warmup_factor": (0.0, None),
    "gamma": (0.0, None),
    "iters": (1, MAX_ITERS),
    "images_per_batch": (1, 1024),
    "bn_freeze_iter": (0, MAX_ITERS),
    "fpn_channels": (0, MAX_CHANNELS),
    "roi_canonical_scale": (1, MAX_SIDE * 4),
    "roi_canonical_level": (0, MAX_LIST),
    # augmentation and validation (minirccn.data.augment, minirccn.engine.validation)
    "jitter_brightness": (0.0, 1.0),
    "jitter_contrast": (0.0, 1.0),
    "jitter_saturation": (0.0, 1.0),
    "jitter_hue": (0.0, 0.5),
    "crop_min_visible": _UNIT,
    "eval_every": (0, MAX_ITERS),
    "max_proposals": (1, MAX_COUNT),
    "selective_search_min_size": (0, MAX_SIDE * MAX_SIDE),
    "rcnn_crop_size": (1, MAX_SIDE),
    "rcnn_context_padding": (0.0, 100.0),
    "retina_channels": (1, MAX_CHANNELS),
    "retina_num_convs": (0, MAX_LIST),
    "retina_prior_probability": (1e-12, 1 - 1e-12),
    "retina_fg_iou_thresh": _UNIT,
    "retina_bg_iou_thresh": _UNIT,
    "focal_alpha": (None, 1.0),
    "focal_gamma": (0.0, None),
    "retina_score_thresh": _UNIT,
    "retina_topk_candidates": (1, MAX_COUNT),
    "retina_nms_thresh": _UNIT,
    "retina_detections_per_img": (1, MAX_COUNT),
}
#: tuple fields: (length or None, element low, element high, element type)
TUPLES = {
    "image_mean": (3, None, None, float),
    "image_std": (3, 1e-12, None, float),
    "anchor_sizes": (None, 1e-6, MAX_SIDE * 4, float),
    "aspect_ratios": (None, 1e-6, 1e6, float),
    "bbox_reg_weights": (4, 1e-12, None, float),
    "milestones": (None, 0, MAX_ITERS, int),
}
#: (low, high) field pairs: low <= high (the matchers' thresholds)
ORDERED = (
    ("rpn_bg_iou_thresh", "rpn_fg_iou_thresh"),
    ("box_bg_iou_thresh", "box_fg_iou_thresh"),
    ("box_bg_iou_lo", "box_bg_iou_thresh"),
    ("retina_bg_iou_thresh", "retina_fg_iou_thresh"),
)
#: string fields and the values they may take (config vocabulary the detector implements)
CHOICES = {
    "retina_hidden_init": ("normal", "he"),
    "selective_search_mode": ("fast", "quality"),
    "dtype": ("float32", "float64"),
    "box_roi_pool": ("roi_pool", "roi_align"),
    "image_resize": ("pillow", "torchvision"),
    "image_norm": ("fixed", "per_image"),
    "anchor_grid": ("stride", "image"),
    "rpn_objectness": ("softmax", "sigmoid"),
}
DTYPES = CHOICES["dtype"]


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v) -> bool:
    return (is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _type_name(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, str):
        return "a string"
    return "a list"


def _field_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, int):
        return is_int(value)
    if isinstance(default, float):
        return is_number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return True  # a field type this check does not know: left to the model


def _in_range(v, lo, hi) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def _interval(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"in [{lo}, {hi}]"


def check_fields(config, where: str = "config") -> None:
    """Raise :class:`MinirccnError` naming ``where`` and the field unless every field of
    ``config`` has its default's type and lies in its range (:data:`RANGES`, :data:`TUPLES`,
    :data:`CHOICES`).

    Field by field only: whether the model, backbone and pyramid the fields name can be built
    is the detector's to say (:func:`minirccn.engine.checks.check_config` asks it). Fields this
    check does not know (added later) are checked for their type only.
    """
    if not isinstance(config, DetectorConfig):
        raise MinirccnError(f"{where}: expected a DetectorConfig, got {type(config).__name__}")
    defaults = DetectorConfig()
    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        default = getattr(defaults, name)
        if not _field_ok(value, default):
            raise MinirccnError(
                f"{where}: {name} must be {_type_name(default)}, got {json.dumps(value, default=repr)}"
            )
        if name in RANGES:
            lo, hi = RANGES[name]
            if not _in_range(value, lo, hi):
                raise MinirccnError(f"{where}: {name} must be {_interval(lo, hi)}, got {value!r}")
        if name in TUPLES:
            length, lo, hi, kind = TUPLES[name]
            ok_type = is_int if kind is int else is_number
            if (
                (length is not None and len(value) != length)
                or (length is None and not 0 < len(value) <= MAX_LIST and name != "milestones")
                or len(value) > MAX_LIST
                or not all(ok_type(v) and _in_range(v, lo, hi) for v in value)
            ):
                count = f"{length} " if length else ""
                rng = f" {_interval(lo, hi)}" if lo is not None else ""
                raise MinirccnError(
                    f"{where}: {name} must be a list of {count}{'integers' if kind is int else 'numbers'}"
                    f"{rng}, got {json.dumps(value, default=repr)}"
                )
    if config.min_size > config.max_size:
        raise MinirccnError(
            f"{where}: min_size {config.min_size} must not exceed max_size {config.max_size}"
        )
    for low, high in ORDERED:
        if getattr(config, low) > getattr(config, high):
            raise MinirccnError(
                f"{where}: {low} {getattr(config, low)} must not exceed {high} "
                f"{getattr(config, high)}"
            )
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise MinirccnError(
                f"{where}: {name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}"
            )
    stages = config.backbone_stages
    if len(stages) > MAX_LIST or not all(
        isinstance(s, (tuple, list))
        and len(s) == 3
        and is_int(s[0])
        and 1 <= s[0] <= MAX_CHANNELS
        and is_int(s[1])
        and 1 <= s[1] <= MAX_LIST
        and isinstance(s[2], (bool, np.bool_))
        for s in stages
    ):
        raise MinirccnError(
            f"{where}: backbone_stages must be a list of [channels 1..{MAX_CHANNELS}, "
            f"convs 1..{MAX_LIST}, pool true/false], got {json.dumps(stages, default=repr)}"
        )
