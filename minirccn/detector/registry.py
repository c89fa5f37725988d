"""The model table: which class each ``config.model`` builds, resolved on first use (the
same idea as :data:`minirccn.core.dispatch.TABLE` one floor down).

Adding a model kind is one :class:`~minirccn.detector.base.Detector` subclass and one row.
"""

from __future__ import annotations

import importlib

from minirccn.detector.backbones.levels import build_backbone
from minirccn.detector.models.external import ExternalProposals
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
    build_backbone(config)


def uses_external_proposals(config) -> bool:
    """True for the models that read proposals from outside the network (selective search or
    a file): their config's ``proposals`` field is used."""
    return issubclass(model_class(config), ExternalProposals)
