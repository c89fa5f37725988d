"""How the RoI head turns each RoI into a fixed ``(C, P, P)`` feature: RoI max pooling or RoIAlign.

* ``"roi_pool"`` (Fast R-CNN, the default): :func:`minirccn.ops.roi_pool`, the max of
  each bin after rounding the RoI and the bins to whole cells.
* ``"roi_align"`` (Mask R-CNN; torchvision's ``MultiScaleRoIAlign`` on one level):
  :func:`minirccn.ops.roi_align`, the average of ``sampling_ratio x sampling_ratio``
  bilinear samples per bin, nothing rounded.

Chosen by the config fields ``box_roi_pool``, ``box_roi_pool_sampling_ratio`` and
``box_roi_pool_aligned`` (see :mod:`minirccn.config`).

The detector sees ONE interface for one level or many (:func:`build_pooler`):
``forward(maps, rois) -> (pooled (R, C, P, P), cache)`` and ``backward(dpooled, cache) ->
[dmap per level]``: :class:`SingleLevelPooler` (a :class:`RoIPooler` at ``1 / stride`` on the
one map) or :class:`MultiScaleRoIAlign` (a pyramid).

With a feature pyramid, torchvision's ``LevelMapper`` and ``MultiScaleRoIAlign``
(:class:`LevelMapper`, :class:`MultiScaleRoIAlign`):

Each RoI is pooled from ONE level, chosen by its size (FPN paper, Eq. 1)::

    k = floor(k0 + log2(sqrt(w * h) / s0) + eps)      s0 = 224, k0 = 4, eps = 1e-6
    k = clamp(k, k_min, k_max)                        the levels present

so a 224 x 224 RoI goes to P4 (stride 16), one of half that side (112) to P3, one of
twice (448) to P5, and everything below 112 to P2 (the finest level present). The
``eps`` makes a box that sits exactly on a boundary (side 112: ``log2(1/2) = -1``) go to
the upper level even after rounding. The levels present come from the maps' strides:
``k_min = log2(finest stride)``, ``k_max = log2(coarsest stride)`` (torchvision infers them
from the map and image sizes; here the strides are known).

Pooling is :func:`minirccn.ops.roi_align` on each level's map with that level's
``spatial_scale = 1 / stride`` (torchvision's ``MultiScaleRoIAlign(..., sampling_ratio=2)``,
``aligned=False``), written back into the RoIs' original order. The backward routes each
RoI's gradient to the level it was pooled from (:func:`minirccn.ops.roi_align_backward`
on that level alone); levels no RoI chose get a zero gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.core.backend import get_array_module
from minirccn.ops.roi_align import RoIAlignCache, roi_align_layer_backward, roi_align_layer_forward
from minirccn.ops.roi_pool import roi_pool_layer_backward, roi_pool_layer_forward

METHODS = ("roi_pool", "roi_align")


@dataclass(frozen=True)
class RoIPooler:
    """The head's pooling, built once from the config, then called with data only.

    Attributes:
        method: ``"roi_pool"`` or ``"roi_align"``.
        output_size: ``P``, the pooled ``P x P`` grid.
        sampling_ratio: RoIAlign's samples per bin along each axis (<= 0: adaptive).
        aligned: RoIAlign's half-pixel shift.
    """

    method: str = "roi_pool"
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"box_roi_pool: expected one of {', '.join(METHODS)}, got {self.method!r}"
            )

    @classmethod
    def from_config(cls, config) -> RoIPooler:
        """The pooler of a :class:`~minirccn.config.FasterRCNNConfig`."""
        return cls(
            config.box_roi_pool,
            config.roi_output_size,
            config.box_roi_pool_sampling_ratio,
            config.box_roi_pool_aligned,
        )

    def forward(self, features, rois, spatial_scale, *, backend=None):
        """``(pooled (R, C, P, P), cache)`` of ``rois`` ``(R, 5)`` on ``features`` ``(N, C, H, W)``."""
        if self.method == "roi_align":
            return roi_align_layer_forward(
                features,
                rois,
                self.output_size,
                spatial_scale,
                self.sampling_ratio,
                self.aligned,
                backend=backend,
            )
        return roi_pool_layer_forward(
            features, rois, self.output_size, spatial_scale, backend=backend
        )

    @staticmethod
    def backward(dpooled, cache):
        """``dfeatures`` ``(N, C, H, W)`` from ``dpooled`` ``(R, C, P, P)`` and the forward's cache."""
        if isinstance(cache, RoIAlignCache):
            return roi_align_layer_backward(dpooled, cache)
        return roi_pool_layer_backward(dpooled, cache)


# ------------------------------------------------------------------------ pyramid levels


class LevelMapper:
    """Assign RoIs to pyramid levels (torchvision's ``LevelMapper``), thresholds owned.

    Args:
        k_min, k_max: the finest and coarsest level present (``log2`` of their strides).
        canonical_scale: ``s0`` (224, an ImageNet-sized box).
        canonical_level: ``k0`` (4: a 224-pixel box is pooled from the stride-16 map).
        eps: added before the floor (1e-6).
    """

    def __init__(self, k_min: int, k_max: int, canonical_scale=224, canonical_level=4, eps=1e-6):
        if not k_min <= k_max:
            raise ValueError(f"k_min: expected k_min <= k_max, got {k_min} > {k_max}")
        if not canonical_scale > 0:
            raise ValueError(f"canonical_scale: expected a positive number, got {canonical_scale}")
        self.k_min, self.k_max = int(k_min), int(k_max)
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    @classmethod
    def from_strides(cls, strides, canonical_scale=224, canonical_level=4, eps=1e-6):
        """The mapper of maps with these strides (powers of two), finest first."""
        levels = [math.log2(s) for s in strides]
        if any(lv != round(lv) for lv in levels):
            raise ValueError(f"strides: expected powers of two, got {tuple(strides)}")
        return cls(round(levels[0]), round(levels[-1]), canonical_scale, canonical_level, eps)

    def target_levels(self, boxes):
        """``k`` of each box before clamping (float, boxes' dtype): ``floor(k0 + log2(sqrt(area)
        / s0) + eps)``.

        Args:
            boxes: ``(R, 4)`` float ``(x1, y1, x2, y2)`` in input pixels.
        """
        xp = get_array_module(boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        s = xp.sqrt(area)
        eps = xp.asarray(self.eps, dtype=s.dtype)
        return xp.floor(self.lvl0 + xp.log2(s / self.s0) + eps)

    def __call__(self, boxes):
        """Index of each box's level among the levels present (0 = finest).

        Args:
            boxes: ``(R, 4)`` float.

        Returns:
            ``(R,)`` int64 in ``[0, k_max - k_min]``.
        """
        xp = get_array_module(boxes)
        k = xp.clip(self.target_levels(boxes), self.k_min, self.k_max)
        return k.astype(xp.int64) - self.k_min


class MultiScaleCache(NamedTuple):
    """What the backward needs: the RoIs, each RoI's level, the maps' shapes."""

    rois: object  # (R, 5)
    levels: object  # (R,) int64
    shapes: list  # (N, C, H_l, W_l) per level
    dtype: object


class MultiScaleRoIAlign:
    """RoIAlign from the level each RoI is assigned to (see the module docstring).

    Args:
        strides: input pixels per cell of each map used for pooling, finest first
            (torchvision pools from P2..P5, not from the extra ``pool`` level).
        output_size: pooled ``P`` (``(P, P)`` bins per RoI).
        sampling_ratio: samples per bin side (torchvision's detector: 2).
        aligned: the half-pixel shift of :func:`minirccn.ops.roi_align`.
        canonical_scale, canonical_level: see :class:`LevelMapper`.
    """

    def __init__(
        self,
        strides,
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_scale=224,
        canonical_level=4,
    ):
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(1.0 / s for s in self.strides)
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.mapper = LevelMapper.from_strides(self.strides, canonical_scale, canonical_level)
        self.num_levels = len(self.strides)

    def forward(self, maps, rois, backend=None):
        """Pool every RoI from its level.

        Args:
            maps: list of ``(N, C, H_l, W_l)`` float maps, one per stride.
            rois: ``(R, 5)`` float rows ``(batch_index, x1, y1, x2, y2)`` in input pixels.

        Returns:
            pooled ``(R, C, P, P)`` in the order of ``rois``; cache: :class:`MultiScaleCache`.
        """
        if len(maps) != len(self.strides):
            raise ValueError(f"maps: expected {len(self.strides)} levels, got {len(maps)}")
        xp = get_array_module(maps[0])
        r, c, p = rois.shape[0], maps[0].shape[1], self.output_size
        levels = self.mapper(rois[:, 1:])
        out = xp.zeros((r, c, p, p), dtype=maps[0].dtype)
        for lv, (m, scale) in enumerate(zip(maps, self.scales)):
            idx = xp.nonzero(levels == lv)[0]
            if idx.size == 0:
                continue
            out[idx] = ops.roi_align(
                m,
                rois[idx],
                p,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
                backend=backend,
            )
        return out, MultiScaleCache(rois, levels, [tuple(m.shape) for m in maps], maps[0].dtype)

    def backward(self, dpooled, cache: MultiScaleCache, backend=None):
        """Gradient of each map: every RoI's ``(C, P, P)`` gradient goes to its own level.

        Args:
            dpooled: ``(R, C, P, P)``.

        Returns:
            list of ``(N, C, H_l, W_l)``, one per level (zeros where no RoI was pooled).
        """
        xp = get_array_module(dpooled)
        dmaps = []
        for lv, (shape, scale) in enumerate(zip(cache.shapes, self.scales)):
            idx = xp.nonzero(cache.levels == lv)[0]
            if idx.size == 0:
                dmaps.append(xp.zeros(shape, dtype=dpooled.dtype))
                continue
            dmaps.append(
                ops.roi_align_backward(
                    xp.ascontiguousarray(dpooled[idx]),
                    cache.rois[idx],
                    shape,
                    self.output_size,
                    spatial_scale=scale,
                    sampling_ratio=self.sampling_ratio,
                    aligned=self.aligned,
                    backend=backend,
                )
            )
        return dmaps


def level_counts(levels, num_levels: int) -> np.ndarray:
    """How many RoIs each level received: ``(num_levels,)`` int64 (for printing)."""
    return np.bincount(np.asarray(levels, dtype=np.int64), minlength=num_levels)


class SingleLevelPooler:
    """A :class:`RoIPooler` on a one-level backbone, behind the levels interface of
    :class:`MultiScaleRoIAlign`.

    Args:
        pooler: the :class:`RoIPooler`; stride: input pixels per cell of the one map.
    """

    def __init__(self, pooler: RoIPooler, stride: int):
        self.pooler = pooler
        self.stride = int(stride)
        self.output_size = pooler.output_size
        self.num_levels = 1

    def forward(self, maps, rois, backend=None):
        """``(pooled (R, C, P, P), cache)`` of ``rois`` ``(R, 5)`` on ``maps[0]`` at ``1 / stride``."""
        return self.pooler.forward(maps[0], rois, 1.0 / self.stride, backend=backend)

    def backward(self, dpooled, cache, backend=None):
        """``[dfeatures (N, C, H, W)]``."""
        return [RoIPooler.backward(dpooled, cache)]


def build_pooler(config, strides):
    """The head's pooler over levels of ``strides`` (the levels RoIs are pooled from): a
    :class:`SingleLevelPooler` of the config's ``box_roi_pool`` for one level, else a
    :class:`MultiScaleRoIAlign` (a pyramid always pools with RoIAlign, as torchvision's)."""
    if len(strides) == 1:
        return SingleLevelPooler(RoIPooler.from_config(config), strides[0])
    return MultiScaleRoIAlign(
        strides,
        config.roi_output_size,
        sampling_ratio=config.box_roi_pool_sampling_ratio,
        aligned=config.box_roi_pool_aligned,
        canonical_scale=config.roi_canonical_scale,
        canonical_level=config.roi_canonical_level,
    )
