"""A backbone yields levels: one feature map (VGG, ResNet-C4) or a pyramid (ResNet + FPN).

Everything above the backbone (the RPN, the proposal layer, the RoI poolers, the RetinaNet
head) takes a LIST of maps, finest first, so a one-level detector and a pyramid share one
forward, one backward and one inference path (torchvision wraps a single map the same way,
as ``OrderedDict([("0", features)])``).

=====================  ======================  ===================================  =========
backbone               ``config``              levels (strides for 128 px input)    pooled
=====================  ======================  ===================================  =========
:class:`SingleLevel`   ``fpn_channels == 0``   the last stage's map (``tiny``: 4)   that map
:class:`Pyramid`       ``fpn_channels > 0``    P2 .. P5 and ``pool`` (4 .. 64)      P2 .. P5
=====================  ======================  ===================================  =========

A backbone object holds no parameters: it is built once from the config and is called with
the parameter dict, like the target creators.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.detector.backbones import fpn, resnet
from minirccn.detector.backbones import vgg as _vgg


def backbone_spec(config):
    """The :class:`~minirccn.detector.backbones.vgg.BackboneSpec` (or ResNet spec) of ``config``:
    the named preset, or ``config.backbone_stages`` (``(channels, convs, pool)`` triples)."""
    if not config.backbone_stages:
        return _vgg.get_spec(config.backbone)
    stages = tuple(_vgg.Stage(int(c), int(k), bool(p)) for c, k, p in config.backbone_stages)
    return _vgg.BackboneSpec(stages=stages, batch_norm=config.backbone_batch_norm)


def is_fpn(config) -> bool:
    """True for a config with a feature pyramid (``fpn_channels > 0``)."""
    return int(config.fpn_channels or 0) > 0


def pyramid_levels(config) -> tuple:
    """``(spec, strides)`` of the pyramid of ``config``: its ResNet's
    :class:`~minirccn.detector.backbones.resnet.ResNetSpec` and the input pixels per cell of
    each level, the ``pool`` level last. Checks that the backbone is a ResNet and that
    ``anchor_sizes`` holds one size per level."""
    if not resnet.is_resnet(config.backbone):
        raise ValueError(
            f"backbone: an FPN needs a ResNet backbone ({', '.join(resnet.PRESETS)}), "
            f"got {config.backbone!r}"
        )
    spec = resnet.get_spec(config.backbone)
    strides = fpn.level_strides(resnet.stage_strides(spec), extra_pool=True)
    if len(config.anchor_sizes) != len(strides):
        raise ValueError(
            f"anchor_sizes: an FPN needs one anchor size per level ({len(strides)}: "
            f"strides {strides}), got {tuple(config.anchor_sizes)}"
        )
    return spec, strides


class SingleLevel:
    """The VGG-style stack (or a ResNet cut after its last stage): ONE level.

    Attributes:
        spec: its :class:`~minirccn.detector.backbones.vgg.BackboneSpec` / ResNet spec.
        strides: ``(stride,)``; out_channels: ``C`` of the map; pooled_levels: 1.
        size_divisible: images are padded to a multiple of this (the stride).
    """

    def __init__(self, spec):
        self.spec = spec
        self.strides = (_vgg.stride(spec),)
        self.out_channels = _vgg.out_channels(spec)
        self.size_divisible = self.strides[0]
        self.pooled_levels = 1

    def init(self, rng: np.random.Generator, dtype) -> dict:
        """Fresh ``backbone.*`` parameters drawn from ``rng``."""
        return _vgg.init_backbone(self.spec, rng, dtype)

    def forward(self, params: dict, images, train: bool, backend=None):
        """``([features (N, C, H/s, W/s)], cache)``; ``train``: batch norm's batch statistics."""
        features, cache = _vgg.backbone_forward(params, images, self.spec, train=train, backend=backend)
        return [features], cache

    def backward(self, dmaps, cache) -> dict:
        """``backbone.*`` gradients from ``[dfeatures]``."""
        return _vgg.backbone_backward(dmaps[0], cache)


class PyramidCache(NamedTuple):
    """The ResNet's and the FPN's caches."""

    resnet: object
    fpn: object


class Pyramid:
    """ResNet, then FPN: ``[P2, ..., P5, pool]``, finest first (``fpn_channels`` each).

    Attributes:
        spec: the ResNet spec; strides: of every level, ``pool`` last; out_channels: the
        FPN's width; pooled_levels: the levels RoI pooling reads (all but ``pool``, as
        torchvision's ``featmap_names=['0', '1', '2', '3']``); size_divisible: the ResNet's
        stride.
    """

    def __init__(self, config):
        self.spec, self.strides = pyramid_levels(config)
        self.out_channels = int(config.fpn_channels)
        self.size_divisible = resnet.stride(self.spec)
        self.pooled_levels = len(self.strides) - 1

    def init(self, rng: np.random.Generator, dtype) -> dict:
        """Fresh ResNet (``backbone.stem/layer*``) then FPN (``backbone.fpn.*``) parameters."""
        params = resnet.init_resnet(self.spec, rng, dtype)
        params.update(fpn.init_fpn(resnet.stage_channels(self.spec), self.out_channels, rng, dtype))
        return params

    def forward(self, params: dict, images, train: bool, backend=None):
        """``([P2, ..., P5, pool], PyramidCache)``."""
        stages, r_cache = resnet.resnet_forward(params, images, self.spec, train=train, backend=backend)
        maps, f_cache = fpn.fpn_forward(params, stages, extra_pool=True, backend=backend)
        return maps, PyramidCache(r_cache, f_cache)

    def backward(self, dmaps, cache: PyramidCache) -> dict:
        """ResNet and FPN gradients from the gradient of every level (None: a level no loss used)."""
        dstages, grads = fpn.fpn_backward(dmaps, cache.fpn)
        grads.update(resnet.resnet_backward(dstages, cache.resnet))
        return grads


def build_backbone(config):
    """The backbone ``config`` describes: a :class:`Pyramid` if ``fpn_channels > 0``, else a
    :class:`SingleLevel` stack."""
    return Pyramid(config) if is_fpn(config) else SingleLevel(backbone_spec(config))
