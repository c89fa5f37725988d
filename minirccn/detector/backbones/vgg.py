"""The convolutional backbone: a configurable VGG-style stack with a hand-written backward.

A backbone is a list of stages; each stage is ``convs`` times
``3x3 conv (padding 1) [+ batch norm] + ReLU``, optionally followed by a 2x2
max pool with stride 2 (which halves the map, floor mode). Parameters live in
one flat dict with names like ``backbone.conv1_1.w``, ``backbone.conv1_1.b``
(and ``backbone.conv1_1.bn.gamma``, ``.bn.beta``, ``.bn.running_mean``,
``.bn.running_var`` with batch norm; the running statistics get no gradient and
are updated by the forward in train mode).

Presets:

* ``tiny``: 4 stages of one 3x3 conv + BN + ReLU + pool, 16-32-64-128 channels,
  stride 16: trains on a laptop CPU in minutes.
* ``vgg16``: the paper's conv1_1 ... conv5_3 (64, 128, 256, 512, 512 channels,
  2-2-3-3-3 convs), pools after the first four stages, no BN:
  224x224x3 -> 14x14x512, stride 16, 14,714,688 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minirccn.detector.backbones import resnet as _resnet
from minirccn.nn import init as _init
from minirccn.nn import layers


@dataclass(frozen=True)
class Stage:
    """One stage: ``convs`` 3x3 convs with ``channels`` outputs, then a 2x2 pool if ``pool``."""

    channels: int
    convs: int = 1
    pool: bool = True


@dataclass(frozen=True)
class BackboneSpec:
    """The whole stack: ``stages`` in order, on ``in_channels`` input channels."""

    stages: tuple[Stage, ...]
    batch_norm: bool = False
    in_channels: int = 3
    kernel_size: int = 3


PRESETS = {
    "tiny": BackboneSpec(stages=(Stage(16), Stage(32), Stage(64), Stage(128)), batch_norm=True),
    "vgg16": BackboneSpec(
        stages=(
            Stage(64, 2),
            Stage(128, 2),
            Stage(256, 3),
            Stage(512, 3),
            Stage(512, 3, pool=False),
        ),
        batch_norm=False,
    ),
}


def get_spec(spec):
    """``spec`` itself, or the preset it names (``"tiny"``, ``"vgg16"``, or a ResNet preset of
    :mod:`minirccn.detector.backbones.resnet`, whose last stage is then the feature map)."""
    if isinstance(spec, BackboneSpec):
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    if _resnet.is_resnet(spec):
        return _resnet.get_spec(spec)
    names = ", ".join((*PRESETS, *_resnet.PRESETS))
    raise ValueError(f"spec: expected a BackboneSpec or one of {names}, got {spec!r}")


def _convs(spec: BackboneSpec):
    """Yield ``(name, in_channels, out_channels, pool_after)`` for every conv, in order."""
    c_in = spec.in_channels
    for s, stage in enumerate(spec.stages, start=1):
        for k in range(1, stage.convs + 1):
            yield f"backbone.conv{s}_{k}", c_in, stage.channels, stage.pool and k == stage.convs
            c_in = stage.channels


def out_channels(spec) -> int:
    """Channels of the feature map (the last stage's)."""
    spec = get_spec(spec)
    if isinstance(spec, _resnet.ResNetSpec):
        return _resnet.out_channels(spec)
    return spec.stages[-1].channels if spec.stages else spec.in_channels


def stride(spec) -> int:
    """Input pixels per feature-map cell: ``2 ** (number of pools)``."""
    if isinstance(get_spec(spec), _resnet.ResNetSpec):
        return _resnet.stride(spec)
    return 2 ** sum(1 for st in get_spec(spec).stages if st.pool)


def init_backbone(spec, rng: np.random.Generator, dtype=np.float32) -> dict:
    """Parameters of ``spec``: He-normal conv weights, zero biases, BN gamma 1 / beta 0,
    running mean 0 / var 1. Returns ``{name: array}`` in forward order."""
    spec = get_spec(spec)
    if isinstance(spec, _resnet.ResNetSpec):
        return _resnet.init_resnet(spec, rng, dtype)
    params = {}
    for name, c_in, c_out, _pool in _convs(spec):
        w, b = _init.conv_params(c_in, c_out, spec.kernel_size, rng, dtype=dtype)
        params[f"{name}.w"], params[f"{name}.b"] = w, b
        if spec.batch_norm:
            params[f"{name}.bn.gamma"] = np.ones(c_out, dtype=dtype)
            params[f"{name}.bn.beta"] = np.zeros(c_out, dtype=dtype)
            params[f"{name}.bn.running_mean"] = np.zeros(c_out, dtype=dtype)
            params[f"{name}.bn.running_var"] = np.ones(c_out, dtype=dtype)
    return params


def count_params(params: dict, trainable_only: bool = True) -> int:
    """Number of scalars in ``params`` (without BN running statistics if ``trainable_only``)."""
    return sum(
        int(np.prod(p.shape))
        for k, p in params.items()
        if not (trainable_only and ".running_" in k)
    )


class BackboneCache(NamedTuple):
    """The backward's to-do list: ``(name, kind, layer cache)`` per layer, forward order."""

    steps: list
    backend: str


def backbone_forward(
    params: dict, x, spec, train: bool = True, backend=None
) -> tuple[Any, BackboneCache]:
    """Run the stack.

    Args:
        params: from :func:`init_backbone` (BN running statistics are updated in place
            when ``train``).
        x: ``(N, C_in, H, W)`` float32/float64 images.
        train: batch statistics (True) or running statistics (False) in batch norm.

    Returns:
        features: ``(N, out_channels(spec), H', W')`` with ``H' = floor(H / stride)`` for
            even halvings; cache: :class:`BackboneCache`.
    """
    spec = get_spec(spec)
    if isinstance(spec, _resnet.ResNetSpec):  # a ResNet: its last stage is the feature map
        stages, cache = _resnet.resnet_forward(params, x, spec, train=train, backend=backend)
        return stages[-1], cache
    pad = spec.kernel_size // 2
    steps = []
    for name, _c_in, _c_out, pool in _convs(spec):
        w, b = params[f"{name}.w"], params[f"{name}.b"]
        # without batch norm the ReLU is fused into the conv (conv2d_relu: one layer's passes)
        relu = not spec.batch_norm
        x, cache = layers.conv2d_forward(x, w, b, 1, pad, relu=relu, backend=backend)
        backend = cache.backend
        steps.append((name, "conv+relu" if relu else "conv", cache))
        if spec.batch_norm:  # batch norm with the ReLU fused into it (one layer's passes)
            bn = f"{name}.bn"
            x, cache = _resnet.bn_forward(params, bn, x, train, backend, relu=True)
            steps.append((bn, "bn", cache))
        if pool:
            x, cache = layers.max_pool2d_forward(x, 2, 2, backend=backend)
            steps.append((name, "pool", cache))
    return x, BackboneCache(steps, backend)


def backbone_backward(dfeatures, cache: BackboneCache) -> dict:
    """Gradients of every trainable parameter, walking the forward's layers in reverse.

    Args:
        dfeatures: the features' shape and dtype.

    Returns:
        ``{name: gradient}`` for every ``.w``, ``.b`` (and ``.bn.gamma``, ``.bn.beta``).
        The gradient of the input images is dropped (nothing upstream needs it).
    """
    if isinstance(cache, _resnet.ResNetCache):
        return _resnet.resnet_backward([None] * (len(cache.stages) - 1) + [dfeatures], cache)
    grads = {}
    d = dfeatures
    for name, kind, c in reversed(cache.steps):
        if kind == "pool":
            d = layers.max_pool2d_backward(d, c)
        elif kind == "bn":
            d, grads[f"{name}.gamma"], grads[f"{name}.beta"] = layers.batchnorm2d_backward(d, c)
        else:
            d, grads[f"{name}.w"], grads[f"{name}.b"] = layers.conv2d_backward(d, c)
    return grads
