"""The model table: which class each ``config.model`` builds, resolved on first use (the
same idea as :data:`minirccn.core.dispatch.TABLE` one floor down).

Adding a model kind is one :class:`~minirccn.detector.base.Detector` subclass and one row.
"""

from __future__ import annotations

import importlib

import numpy as np

from minirccn.detector.backbones import resnet
from minirccn.detector.backbones import vgg as _vgg
from minirccn.detector.backbones.levels import build_backbone, is_fpn
from minirccn.core.errors import MinirccnError

#: ``config.model`` -> ``"module:Class"``; the first row is the default model
MODELS = {
    "fasterrcnn": "minirccn.detector.models.faster_rcnn:FasterRCNN",  # its own RPN
    "retinanet": "minirccn.detector.models.retinanet:RetinaNet",  # one stage, dense
    "fastrcnn": "minirccn.detector.models.fast_rcnn:FastRCNN",  # external proposals
    "rcnn": "minirccn.detector.models.rcnn:RCNN",  # a CNN per warped proposal
}
DEFAULT_MODEL = next(iter(MODELS))


def model_class(config_or_name):
    """The class of ``config.model`` (or of a model name)."""
    name = getattr(config_or_name, "model", config_or_name)
    if name not in MODELS:
        raise MinirccnError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    module, _, cls = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def default_preset(name: str = DEFAULT_MODEL) -> str:
    """The preset ``minirccn train --model NAME`` uses without ``--preset``: the class's
    ``DEFAULT_PRESET`` (``tiny``; ``resnet-fpn-tiny`` for RetinaNet, a pyramid detector)."""
    return model_class(name).DEFAULT_PRESET


def build_model(config, class_names, params=None, rng=None):
    """A detector of ``config.model`` (fresh parameters from ``rng`` unless ``params`` given)."""
    return model_class(config)(config, class_names, params=params, rng=rng)


def init_model_params(config, num_classes: int, rng) -> dict:
    """Fresh parameters of ``config.model`` (what a checkpoint of that model must hold)."""
    return model_class(config).init_params(config, num_classes, rng)


def check_buildable(config) -> None:
    """Raise ``ValueError`` naming the field unless ``config.model`` is a row of the table and
    the backbone ``config`` names can be described (specs and strides, no parameters: the
    backbone preset, a ResNet under a pyramid, one anchor size per pyramid level)."""
    if config.model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {config.model!r}")
    _vgg.get_spec(config.backbone)  # a known name even when backbone_stages replaces it
    build_backbone(config)


def uses_external_proposals(config) -> bool:
    """True for the models that read proposals from outside the network (selective search or
    a file): their config's ``proposals`` field is used."""
    return model_class(config).PROPOSALS == "external"


def default_model(external_proposals: bool = False) -> str:
    """The model ``minirccn train`` builds without ``--model``: the first row of
    :data:`MODELS`, or, given external proposals (``--proposals``), the first row whose class
    reads them (``fastrcnn``)."""
    if not external_proposals:
        return DEFAULT_MODEL
    return next(name for name in MODELS if model_class(name).PROPOSALS == "external")


def model_record(model) -> dict:
    """What a run's ``metrics.json`` records about ``model`` beyond its config: its
    ``model`` name (not for the default model: that run's ``metrics.json`` keeps the keys it
    had before there were other kinds) and the model's own :meth:`run_record`."""
    kind = {} if model.config.model == DEFAULT_MODEL else {"model": model.config.model}
    return {**kind, **model.run_record()}


def work_estimate(config) -> dict:
    """What detecting ONE image costs at the largest size ``config`` allows, without building
    anything: ``pixels`` (min_size x max_size), ``anchors`` (every level), ``proposals`` (the
    boxes NMS walks: the smaller of ``rpn_pre_nms_top_n_test`` per level and the anchors) and
    ``bytes`` (the full-resolution maps of the backbone's first stage: the input, the output
    and the 3x3 im2col of its channels, about ``12 x channels`` values per pixel, plus 64
    bytes per anchor), a lower bound of the real peak."""
    pixels = int(config.min_size) * int(config.max_size)
    backbone = build_backbone(config)
    spec = backbone.spec
    if isinstance(spec, resnet.ResNetSpec):
        channels = spec.stem_channels / spec.stem_stride**2
    else:
        channels = spec.stages[0].channels if spec.stages else spec.in_channels
    per_level = len(config.anchor_sizes) * len(config.aspect_ratios)
    if is_fpn(config):
        per_level = len(config.aspect_ratios)  # one anchor size per level
    anchors = sum(int(np.ceil(pixels / s**2)) * per_level for s in backbone.strides)
    top_n = min(int(config.rpn_pre_nms_top_n_test) * len(backbone.strides), anchors)
    itemsize = np.dtype(config.dtype).itemsize
    nbytes = int(pixels * channels * 12 * itemsize + anchors * 64)
    return {"pixels": pixels, "anchors": anchors, "proposals": top_n, "bytes": nbytes}
