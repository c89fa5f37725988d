"""A ResNet backbone (He et al. 2016) with a hand-written backward.

The network, as torchvision's ``resnet*`` without the classifier::

    stem:    conv kxk / stride s (no bias) -> BN -> ReLU [-> 3x3 max pool, stride 2, padding 1]
    layer1:  blocks ...                      -> C2
    layer2:  blocks, the first one strided   -> C3
    layer3:  ...                             -> C4
    layer4:  ...                             -> C5

A **basic block** (ResNet-18/34)::

    y = ReLU( BN(conv3x3(ReLU(BN(conv3x3(x, stride s))))) + shortcut(x) )

a **bottleneck block** (ResNet-50/101; torchvision's "v1.5": the stride sits on the 3x3)::

    y = ReLU( BN(conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(x))), stride s))))) + shortcut(x) )

with ``shortcut(x) = x`` when the shape is kept and ``BN(conv1x1(x, stride s))`` (the
"downsample" of torchvision) when the stride or the channel count changes. The
bottleneck's inner width is a quarter of its output (``expansion = 4``).

The backward of ``y = ReLU(f(x) + shortcut(x))`` is the lesson of this module: the
gradient after the ReLU goes *both* ways, through ``f``'s layers in reverse and through
the shortcut, and the two results are **added** at ``x``.

Convolutions have no bias (each is followed by batch norm, which would cancel it), as
in torchvision, so parameter counts match torchvision's: ResNet-50 without its fc layer
has 23,508,032. Parameter names follow torchvision's, under ``backbone.``:
``backbone.stem.conv.w``, ``backbone.stem.bn.gamma``, ``backbone.layer1.0.conv1.w``,
``backbone.layer1.0.bn1.beta``, ``backbone.layer2.0.downsample.conv.w``, ... (BN running
statistics ``.running_mean`` / ``.running_var`` get no gradient and are updated by a
forward in train mode, as in :mod:`minirccn.detector.backbones.vgg`).

Presets (:data:`PRESETS`):

* ``resnet-tiny``: stem 3x3 conv at full resolution + 2x2 pool, three stages of one
  basic block (16, 32, 64 channels), strides 2, 4, 4: a single stride-4 map for the
  ``shapes`` objects of 8-80 pixels; trains on a CPU in minutes.
* ``resnet-fpn-tiny``: the same full-resolution stem + 2x2 pool, four stages of one basic
  block (32, 64, 64, 64 channels), C2..C5 at strides 4, 8, 16, 32: the input of a feature
  pyramid (a stride-2 stem conv and 16 channels in C2 measured worse: docs/fpn.md).
* ``resnet50-c4``: ResNet-50 up to ``layer3`` (C4, 1024 channels, stride 16), the single
  map of torchvision's ``FasterRCNN`` around ``nn.Sequential(*list(resnet50().children())[:-3])``.
* ``resnet50``: torchvision's ResNet-50 (7x7 stem + max pool, bottlenecks 3-4-6-3,
  outputs 256, 512, 1024, 2048 at strides 4, 8, 16, 32). Its shapes are tested; it is far
  too slow to train on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minirccn.core.backend import get_array_module
from minirccn.nn import init as _init
from minirccn.nn import layers
from minirccn.nn.layers import conv_output_size


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet: the stem and ``len(widths)`` stages.

    Attributes:
        widths: output channels of each stage (a bottleneck's inner width is a quarter).
        blocks: blocks per stage.
        strides: stride of the first block of each stage (1 or 2).
        block: ``"basic"`` or ``"bottleneck"``.
        stem_channels, stem_kernel, stem_stride: the stem conv (padding ``kernel // 2``).
        stem_pool: ``"max3"`` (3x3 max pool, stride 2, padding 1, as torchvision),
            ``"max2"`` (2x2, stride 2) or ``""`` (none).
        in_channels: input channels (3).
    """

    widths: tuple
    blocks: tuple
    strides: tuple
    block: str = "basic"
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: str = "max3"
    in_channels: int = 3

    def __post_init__(self):
        if not len(self.widths) == len(self.blocks) == len(self.strides) >= 1:
            raise ValueError("ResNetSpec: widths, blocks and strides need the same length >= 1")
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(
                f"ResNetSpec: block must be 'basic' or 'bottleneck', got {self.block!r}"
            )
        if self.stem_pool not in ("max3", "max2", ""):
            raise ValueError(
                f"ResNetSpec: stem_pool must be 'max3', 'max2' or '', got {self.stem_pool!r}"
            )


PRESETS = {
    "resnet-tiny": ResNetSpec(
        widths=(16, 32, 64),
        blocks=(1, 1, 1),
        strides=(1, 2, 1),
        stem_channels=16,
        stem_kernel=3,
        stem_stride=1,
        stem_pool="max2",
    ),
    "resnet-fpn-tiny": ResNetSpec(
        widths=(32, 64, 64, 64),
        blocks=(1, 1, 1, 1),
        strides=(2, 2, 2, 2),
        stem_channels=16,
        stem_kernel=3,
        stem_stride=1,
        stem_pool="max2",
    ),
    # torchvision's ResNet-50 cut after layer3 (C4: 1024 channels, stride 16), the one-level
    # backbone of the classic Faster R-CNN on ResNet ("resnet50 children up to layer3")
    "resnet50-c4": ResNetSpec(
        widths=(256, 512, 1024), blocks=(3, 4, 6), strides=(1, 2, 2), block="bottleneck"
    ),
    "resnet18": ResNetSpec(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), strides=(1, 2, 2, 2)),
    "resnet50": ResNetSpec(
        widths=(256, 512, 1024, 2048),
        blocks=(3, 4, 6, 3),
        strides=(1, 2, 2, 2),
        block="bottleneck",
    ),
}


def get_spec(spec) -> ResNetSpec:
    """``spec`` itself, or the preset it names."""
    if isinstance(spec, ResNetSpec):
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    raise ValueError(f"spec: expected a ResNetSpec or one of {', '.join(PRESETS)}, got {spec!r}")


def is_resnet(name) -> bool:
    """True if ``name`` is a ResNet preset name (or a :class:`ResNetSpec`)."""
    return isinstance(name, ResNetSpec) or (isinstance(name, str) and name in PRESETS)


# ------------------------------------------------------------------------ structure


def _blocks(spec: ResNetSpec):
    """Yield ``(prefix, c_in, inner, c_out, stride, downsample)`` for every block, in order."""
    c_in = spec.stem_channels
    for s, (width, n, stride) in enumerate(zip(spec.widths, spec.blocks, spec.strides), start=1):
        inner = width // 4 if spec.block == "bottleneck" else width
        for k in range(n):
            st = stride if k == 0 else 1
            yield f"backbone.layer{s}.{k}", c_in, inner, width, st, (st != 1 or c_in != width)
            c_in = width


def _block_convs(spec: ResNetSpec, c_in: int, inner: int, c_out: int, stride: int):
    """``(name, c_in, c_out, kernel, stride)`` of a block's main-path convs, in order."""
    if spec.block == "basic":
        return [("1", c_in, c_out, 3, stride), ("2", c_out, c_out, 3, 1)]
    return [("1", c_in, inner, 1, 1), ("2", inner, inner, 3, stride), ("3", inner, c_out, 1, 1)]


def stage_strides(spec) -> tuple:
    """Input pixels per cell of each stage's output (C2, C3, ... for torchvision's ResNets)."""
    spec = get_spec(spec)
    s = spec.stem_stride * (2 if spec.stem_pool else 1)
    out = []
    for st in spec.strides:
        s *= st
        out.append(s)
    return tuple(out)


def stage_channels(spec) -> tuple:
    """Output channels of each stage."""
    return tuple(get_spec(spec).widths)


def out_channels(spec) -> int:
    """Channels of the last stage (the single feature map of a non-FPN detector)."""
    return get_spec(spec).widths[-1]


def stride(spec) -> int:
    """Stride of the last stage."""
    return stage_strides(spec)[-1]


def feature_shapes(spec, height: int, width: int) -> list:
    """``(channels, H, W)`` of each stage's output for an input of ``height x width``,
    computed from the layer arithmetic alone (nothing is allocated)."""
    spec = get_spec(spec)
    pad = spec.stem_kernel // 2
    h = conv_output_size(height, spec.stem_kernel, spec.stem_stride, pad)
    w = conv_output_size(width, spec.stem_kernel, spec.stem_stride, pad)
    if spec.stem_pool == "max3":
        h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
    elif spec.stem_pool == "max2":
        h, w = conv_output_size(h, 2, 2, 0), conv_output_size(w, 2, 2, 0)
    shapes = []
    for c, st in zip(spec.widths, spec.strides):
        h, w = conv_output_size(h, 3, st, 1), conv_output_size(w, 3, st, 1)
        shapes.append((c, h, w))
    return shapes


# ------------------------------------------------------------------------ parameters


def _bn_params(prefix: str, c: int, dtype) -> dict:
    return {
        f"{prefix}.gamma": np.ones(c, dtype),
        f"{prefix}.beta": np.zeros(c, dtype),
        f"{prefix}.running_mean": np.zeros(c, dtype),
        f"{prefix}.running_var": np.ones(c, dtype),
    }


def init_resnet(spec, rng: np.random.Generator, dtype=np.float32) -> dict:
    """Parameters of ``spec``: He-normal conv weights (no biases), BN gamma 1 / beta 0,
    running mean 0 / var 1. Returns ``{name: array}`` in forward order."""
    spec = get_spec(spec)
    k = spec.stem_kernel
    params = {
        "backbone.stem.conv.w": _init.he_normal(
            (spec.stem_channels, spec.in_channels, k, k), rng, dtype
        )
    }
    params.update(_bn_params("backbone.stem.bn", spec.stem_channels, dtype))
    for prefix, c_in, inner, c_out, st, down in _blocks(spec):
        for name, ci, co, kk, _ in _block_convs(spec, c_in, inner, c_out, st):
            params[f"{prefix}.conv{name}.w"] = _init.he_normal((co, ci, kk, kk), rng, dtype)
            params.update(_bn_params(f"{prefix}.bn{name}", co, dtype))
        if down:
            params[f"{prefix}.downsample.conv.w"] = _init.he_normal((c_out, c_in, 1, 1), rng, dtype)
            params.update(_bn_params(f"{prefix}.downsample.bn", c_out, dtype))
    return params


# ------------------------------------------------------------------------ layers


class ConvBNCache(NamedTuple):
    """One ``conv -> BN [-> ReLU]`` unit: the layer caches (a ReLU is fused into batch norm:
    its mask is in the BN cache)."""

    conv: Any
    bn: Any


def bn_forward(params, bn: str, x, train: bool, backend, relu: bool = False):
    """Batch norm with the parameters ``{bn}.gamma``, ``.beta``, ``.running_mean``,
    ``.running_var`` (batch statistics if ``train``), a ReLU fused on its output if ``relu``:
    ``(out, cache)``."""
    return layers.batchnorm2d_forward(
        x,
        params[f"{bn}.gamma"],
        params[f"{bn}.beta"],
        params[f"{bn}.running_mean"],
        params[f"{bn}.running_var"],
        train=train,
        relu=relu,
        backend=backend,
    )


def conv_bn_forward(params, conv: str, bn: str, x, stride: int, relu: bool, train: bool, backend):
    """``[ReLU](BN(conv(x)))``, the conv unbiased with padding ``kernel // 2``.

    Args:
        params: holds ``{conv}.w`` ``(F, C, k, k)`` and ``{bn}.gamma/.beta/.running_*`` ``(F,)``.
        x: ``(N, C, H, W)``.

    Returns:
        ``(N, F, H', W')`` and a :class:`ConvBNCache`.
    """
    w = params[f"{conv}.w"]
    xp = get_array_module(w)
    zero = xp.zeros(w.shape[0], dtype=w.dtype)  # no bias (batch norm follows)
    x, c_conv = layers.conv2d_forward(x, w, zero, stride, w.shape[2] // 2, backend=backend)
    x, c_bn = bn_forward(params, bn, x, train, c_conv.backend, relu=relu)  # the ReLU fused
    return x, ConvBNCache(c_conv, c_bn)


def conv_bn_backward(dout, cache: ConvBNCache, conv: str, bn: str, grads: dict):
    """Backward of :func:`conv_bn_forward`; writes ``{conv}.w``, ``{bn}.gamma``, ``{bn}.beta``
    into ``grads`` and returns the input's gradient."""
    dout, grads[f"{bn}.gamma"], grads[f"{bn}.beta"] = layers.batchnorm2d_backward(dout, cache.bn)
    dx, grads[f"{conv}.w"], _db = layers.conv2d_backward(dout, cache.conv)
    return dx


class StemPoolCache(NamedTuple):
    """A max pool with ``-inf`` padding: the pool's cache and the padding to crop."""

    pool: Any
    padding: int


def max_pool_padded_forward(x, kernel: int, stride: int, padding: int, backend=None):
    """torch's ``max_pool2d(x, kernel, stride, padding)``: the map padded with ``-inf``
    (padding never wins the max), then :func:`minirccn.nn.layers.max_pool2d_forward`."""
    xp = get_array_module(x)
    if padding:
        p = padding
        x = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    out, cache = layers.max_pool2d_forward(x, kernel, stride, backend=backend)
    return out, StemPoolCache(cache, padding)


def max_pool_padded_backward(dout, cache: StemPoolCache):
    """Backward of :func:`max_pool_padded_forward`: the pool's backward, padding cropped."""
    dx = layers.max_pool2d_backward(dout, cache.pool)
    p = cache.padding
    return dx[:, :, p : dx.shape[2] - p, p : dx.shape[3] - p] if p else dx


# ------------------------------------------------------------------------ forward / backward


class BlockCache(NamedTuple):
    """One residual block: its main-path units, the shortcut unit (or None) and the final ReLU."""

    prefix: str
    units: list  # [(name, ConvBNCache)], forward order
    shortcut: ConvBNCache | None
    relu: Any


class ResNetCache(NamedTuple):
    """The backward's to-do list: the stem's caches and each stage's block caches."""

    stem: ConvBNCache
    stem_pool: Any  # StemPoolCache, MaxPool2dCache or None
    stages: list  # [[BlockCache, ...] per stage]
    backend: str


def block_forward(params, spec: ResNetSpec, x, block, train: bool, backend):
    """One residual block ``y = ReLU(f(x) + shortcut(x))``; returns ``(y, BlockCache)``."""
    prefix, c_in, inner, c_out, st, down = block
    convs = _block_convs(spec, c_in, inner, c_out, st)
    units, h = [], x
    for i, (name, _ci, _co, _k, s) in enumerate(convs):
        last = i == len(convs) - 1  # the last unit's ReLU comes after the sum
        h, c = conv_bn_forward(
            params, f"{prefix}.conv{name}", f"{prefix}.bn{name}", h, s, not last, train, backend
        )
        units.append((name, c))
    shortcut = None
    if down:
        sc, shortcut = conv_bn_forward(
            params,
            f"{prefix}.downsample.conv",
            f"{prefix}.downsample.bn",
            x,
            st,
            False,
            train,
            backend,
        )
    else:
        sc = x
    y, relu = layers.relu_forward(h + sc, backend=backend)
    return y, BlockCache(prefix, units, shortcut, relu)


def block_backward(dy, cache: BlockCache, grads: dict):
    """Backward of :func:`block_forward`: the gradient after the ReLU goes through the main
    path (units in reverse) and through the shortcut; the two are added at the input."""
    d = layers.relu_backward(dy, cache.relu)
    dx_main = d
    for name, c in reversed(cache.units):
        dx_main = conv_bn_backward(
            dx_main, c, f"{cache.prefix}.conv{name}", f"{cache.prefix}.bn{name}", grads
        )
    if cache.shortcut is None:
        dx_short = d  # identity shortcut
    else:
        dx_short = conv_bn_backward(
            d,
            cache.shortcut,
            f"{cache.prefix}.downsample.conv",
            f"{cache.prefix}.downsample.bn",
            grads,
        )
    return dx_main + dx_short


def resnet_forward(params: dict, x, spec, train: bool = True, backend=None):
    """Run the ResNet and return every stage's output.

    Args:
        params: from :func:`init_resnet` (BN running statistics updated in place when ``train``).
        x: ``(N, C_in, H, W)`` float32/float64 images.
        spec: a :class:`ResNetSpec` or a preset name.
        train: batch statistics (True) or running statistics (False) in batch norm.

    Returns:
        stages: list of ``(N, widths[s], H_s, W_s)`` maps, one per stage (C2, C3, ... for
            torchvision's ResNets; shapes as :func:`feature_shapes`); cache: :class:`ResNetCache`.
    """
    spec = get_spec(spec)
    x, stem = conv_bn_forward(
        params, "backbone.stem.conv", "backbone.stem.bn", x, spec.stem_stride, True, train, backend
    )
    backend = stem.conv.backend
    pool = None
    if spec.stem_pool == "max3":
        x, pool = max_pool_padded_forward(x, 3, 2, 1, backend=backend)
    elif spec.stem_pool == "max2":
        x, pool = layers.max_pool2d_forward(x, 2, 2, backend=backend)
    outs, caches = [], []
    blocks = list(_blocks(spec))
    for s in range(1, len(spec.widths) + 1):
        stage = []
        for block in blocks:
            if block[0].startswith(f"backbone.layer{s}."):
                x, c = block_forward(params, spec, x, block, train, backend)
                stage.append(c)
        outs.append(x)
        caches.append(stage)
    return outs, ResNetCache(stem, pool, caches, backend)


def resnet_backward(dstages, cache: ResNetCache) -> dict:
    """Gradients of every trainable parameter from the gradients of the stage outputs.

    Args:
        dstages: one entry per stage, the gradient of that stage's output (its shape) or
            None where nothing downstream used it (a single-map detector passes gradients
            for the last stage only; an FPN for all of them).

    Returns:
        ``{name: gradient}`` for every ``.w``, ``.gamma`` and ``.beta``. The input images'
        gradient is dropped.
    """
    if len(dstages) != len(cache.stages):
        raise ValueError(f"dstages: expected {len(cache.stages)} entries, got {len(dstages)}")
    grads = {}
    d = None
    for s in reversed(range(len(cache.stages))):
        if dstages[s] is not None:  # this stage's output also feeds the neck / heads
            d = dstages[s] if d is None else d + dstages[s]
        if d is None:
            continue  # nothing above this stage needs a gradient yet
        for block in reversed(cache.stages[s]):
            d = block_backward(d, block, grads)
    if d is None:
        return grads
    if isinstance(cache.stem_pool, StemPoolCache):
        d = max_pool_padded_backward(d, cache.stem_pool)
    elif cache.stem_pool is not None:
        d = layers.max_pool2d_backward(d, cache.stem_pool)
    conv_bn_backward(d, cache.stem, "backbone.stem.conv", "backbone.stem.bn", grads)
    return grads
