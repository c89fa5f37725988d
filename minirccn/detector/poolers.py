"""How the RoI head turns each RoI into a fixed ``(C, P, P)`` feature: RoI max pooling or RoIAlign.

* ``"roi_pool"`` (Fast R-CNN, the default): :func:`minirccn.ops.roi_pool`, the max of
  each bin after rounding the RoI and the bins to whole cells.
* ``"roi_align"`` (Mask R-CNN; torchvision's ``MultiScaleRoIAlign`` on one level):
  :func:`minirccn.ops.roi_align`, the average of ``sampling_ratio x sampling_ratio``
  bilinear samples per bin, nothing rounded.

Chosen by the config fields ``box_roi_pool``, ``box_roi_pool_sampling_ratio`` and
``box_roi_pool_aligned`` (see :mod:`minirccn.config`); the head calls
:meth:`RoIPooler.forward` and, in its backward, :meth:`RoIPooler.backward`.
"""

from __future__ import annotations

from dataclasses import dataclass

from minirccn.ops.roi_align import RoIAlignCache, roi_align_layer_forward, roi_align_layer_backward
from minirccn.ops.roi_pool import roi_pool_layer_forward, roi_pool_layer_backward

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
