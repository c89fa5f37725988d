"""The Feature Pyramid Network neck (Lin et al. 2017) with a hand-written backward.

torchvision's ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``, on backbone maps
``C2 .. C5`` (strides 4 .. 32, channels ``C_i``), every output with ``F`` channels::

    inner_i = conv1x1(C_i)                                     lateral    "backbone.fpn.inner{i}"
    last    = inner_top                                        (the coarsest map)
    P_top   = conv3x3(last)                                    output     "backbone.fpn.layer{top}"
    for i from top-1 down to 0:
        last = inner_i + upsample_nearest(last, size of inner_i)   top-down pathway
        P_i  = conv3x3(last)                                   output     "backbone.fpn.layer{i}"
    P_pool = max_pool(P_top, kernel 1, stride 2)               the extra level ("pool")

The upsampling is nearest-neighbour to the lateral's size, as ``F.interpolate(...,
size=..., mode="nearest")``: output cell ``o`` copies input cell ``min(floor(o * in / out),
in - 1)`` (``in / out`` in float32, as torch computes it). With a map of exactly twice the
size each input cell is copied into a 2x2 block, so the **backward is a 2x2 sum**; with an
odd lateral size (a 5-cell map over a 3-cell one) the last input cell is copied once or
twice less, and its gradient sums just the cells that copied it.

Backward, in reverse: each ``P_i``'s gradient goes through its 3x3 conv into ``last_i``;
``last_i``'s gradient goes to the lateral conv (then to ``C_i``) AND, through the
upsampling's backward (the 2x2 sum), into ``last_{i+1}``, the coarser level's sum. The
forward ran from the coarsest level down, so the backward runs from the finest level up.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirccn.core.backend import get_array_module
from minirccn.nn import layers

POOL_LEVEL = "pool"


# ------------------------------------------------------------------------ nearest upsampling


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output cell of nearest-neighbour resizing ``in_size -> out_size``.

    torch's rule (``upsample_nearest2d``): ``o >> 1`` for an exact 2x, else
    ``min(floor(o * float32(in / out)), in - 1)``.

    Returns:
        ``(out_size,)`` int64.
    """
    o = np.arange(out_size, dtype=np.int64)
    if out_size == 2 * in_size:
        return o >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(o.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


class UpsampleCache(NamedTuple):
    """What the backward needs: the row / column source indices and the input shape."""

    rows: Any  # (Ho,) int64
    cols: Any  # (Wo,) int64
    x_shape: tuple


def upsample_nearest_forward(x, size):
    """``F.interpolate(x, size=size, mode="nearest")``.

    Args:
        x: ``(N, C, H, W)`` float.
        size: ``(Ho, Wo)``.

    Returns:
        ``out (N, C, Ho, Wo)`` with ``out[..., i, j] = x[..., rows[i], cols[j]]`` (see
        :func:`nearest_indices`); cache: :class:`UpsampleCache`.
    """
    xp = get_array_module(x)
    ho, wo = int(size[0]), int(size[1])
    rows = xp.asarray(nearest_indices(x.shape[2], ho))
    cols = xp.asarray(nearest_indices(x.shape[3], wo))
    return x[:, :, rows[:, None], cols[None, :]], UpsampleCache(rows, cols, tuple(x.shape))


def upsample_nearest_backward(dout, cache: UpsampleCache):
    """Gradient of :func:`upsample_nearest_forward`: each input cell receives the SUM of the
    output cells that copied it (a 2x2 block for an exact 2x upsampling).

    Written as two small matrix products, ``dx = Rᵀ dout S`` with the one-hot matrices
    ``R (Ho, H)`` and ``S (Wo, W)`` of the forward's gather.

    Args:
        dout: ``(N, C, Ho, Wo)``.

    Returns:
        ``(N, C, H, W)``, dout's dtype.
    """
    xp = get_array_module(dout)
    _, _, h, w = cache.x_shape
    r = (cache.rows[:, None] == xp.arange(h)[None, :]).astype(dout.dtype)  # (Ho, H)
    s = (cache.cols[:, None] == xp.arange(w)[None, :]).astype(dout.dtype)  # (Wo, W)
    return xp.matmul(xp.matmul(r.T, dout), s)


# ------------------------------------------------------------------------ the neck


def init_fpn(in_channels, out_channels: int, rng: np.random.Generator, dtype=np.float32) -> dict:
    """FPN parameters, initialised as torchvision (``kaiming_uniform_(a=1)``: uniform in
    ``±sqrt(3 / fan_in)``; biases 0).

    Args:
        in_channels: channels ``C_i`` of each backbone map, finest first.
        out_channels: ``F``.

    Returns:
        ``backbone.fpn.inner{i}.w`` ``(F, C_i, 1, 1)``, ``backbone.fpn.inner{i}.b`` ``(F,)``,
        ``backbone.fpn.layer{i}.w`` ``(F, F, 3, 3)``, ``backbone.fpn.layer{i}.b`` ``(F,)`` for
        every level ``i`` (under ``backbone.`` as in torchvision's ``model.backbone.fpn``: the
        neck is trained, frozen and saved with the backbone).
    """
    params = {}

    def uniform(shape):
        bound = np.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
        return rng.uniform(-bound, bound, shape).astype(dtype)

    f = int(out_channels)
    for i, c in enumerate(in_channels):
        params[f"backbone.fpn.inner{i}.w"] = uniform((f, int(c), 1, 1))
        params[f"backbone.fpn.inner{i}.b"] = np.zeros(f, dtype)
        params[f"backbone.fpn.layer{i}.w"] = uniform((f, f, 3, 3))
        params[f"backbone.fpn.layer{i}.b"] = np.zeros(f, dtype)
    return params


def level_strides(backbone_strides, extra_pool: bool = True) -> tuple:
    """Strides of the pyramid's maps: the backbone's, then twice the last for ``pool``."""
    s = tuple(int(x) for x in backbone_strides)
    return s + ((2 * s[-1],) if extra_pool else ())


class FPNCache(NamedTuple):
    """Per level: the lateral conv, the upsampling from the level above (None at the top),
    the output conv; and the extra pool's cache (or None)."""

    inner: list
    upsample: list
    layer: list
    pool: Any


def fpn_forward(params: dict, features, extra_pool: bool = True, backend=None):
    """The pyramid of ``features`` (see the module docstring).

    Args:
        params: from :func:`init_fpn`.
        features: list of ``(N, C_i, H_i, W_i)`` maps, finest first (C2, C3, ...).
        extra_pool: add torchvision's ``LastLevelMaxPool`` level (kernel 1, stride 2).

    Returns:
        maps: list of ``(N, F, H_i, W_i)`` (then ``(N, F, ceil(H_top / 2), ceil(W_top / 2))``
        for ``pool``), finest first; cache: :class:`FPNCache`.
    """
    n_levels = len(features)
    inner, up, layer = [None] * n_levels, [None] * n_levels, [None] * n_levels
    outs = [None] * n_levels
    last = None
    for i in reversed(range(n_levels)):
        lateral, inner[i] = layers.conv2d_forward(
            features[i],
            params[f"backbone.fpn.inner{i}.w"],
            params[f"backbone.fpn.inner{i}.b"],
            backend=backend,
        )
        backend = inner[i].backend
        if last is None:
            last = lateral
        else:
            top_down, up[i] = upsample_nearest_forward(last, lateral.shape[2:])
            last = lateral + top_down
        outs[i], layer[i] = layers.conv2d_forward(
            last,
            params[f"backbone.fpn.layer{i}.w"],
            params[f"backbone.fpn.layer{i}.b"],
            1,
            1,
            backend=backend,
        )
    pool = None
    if extra_pool:
        p, pool = layers.max_pool2d_forward(outs[-1], 1, 2, backend=backend)
        outs.append(p)
    return outs, FPNCache(inner, up, layer, pool)


def fpn_backward(dmaps, cache: FPNCache):
    """Backward of :func:`fpn_forward`.

    Args:
        dmaps: the gradient of each output map (its shape; ``None`` for a map no loss used),
            in the forward's order (``pool`` last if present).

    Returns:
        dfeatures: list of the backbone maps' gradients, finest first.
        grads: ``{name: gradient}`` for every FPN parameter.
    """
    n_levels = len(cache.layer)
    dmaps = list(dmaps)
    if len(dmaps) != n_levels + (cache.pool is not None):
        raise ValueError(
            f"dmaps: expected {n_levels + (cache.pool is not None)} maps, got {len(dmaps)}"
        )
    if cache.pool is not None and dmaps[-1] is not None:
        # the extra level is a strided view of the top output: its gradient lands there
        dpool = layers.max_pool2d_backward(dmaps[-1], cache.pool)
        dmaps[n_levels - 1] = dpool if dmaps[n_levels - 1] is None else dmaps[n_levels - 1] + dpool
    grads, dfeatures = {}, [None] * n_levels
    dlast_below = None  # gradient reaching level i's `last` through level i-1's top-down sum
    for i in range(n_levels):  # finest first: `last` of level i feeds the sum of level i-1
        w = cache.layer[i].w
        xp = get_array_module(w)
        if dmaps[i] is not None:
            dlast, grads[f"backbone.fpn.layer{i}.w"], grads[f"backbone.fpn.layer{i}.b"] = (
                layers.conv2d_backward(dmaps[i], cache.layer[i])
            )
        else:  # no loss looked at this output
            dlast = xp.zeros(cache.layer[i].x_shape, w.dtype)
            grads[f"backbone.fpn.layer{i}.w"], grads[f"backbone.fpn.layer{i}.b"] = (
                xp.zeros_like(w),
                xp.zeros_like(w[:, 0, 0, 0]),
            )
        if dlast_below is not None:
            dlast = dlast + dlast_below
        # last_i = lateral_i + upsample(last_{i+1}): the same gradient reaches both terms
        dfeatures[i], grads[f"backbone.fpn.inner{i}.w"], grads[f"backbone.fpn.inner{i}.b"] = (
            layers.conv2d_backward(dlast, cache.inner[i])
        )
        up = cache.upsample[i]
        dlast_below = upsample_nearest_backward(dlast, up) if up is not None else None
    return dfeatures, grads
