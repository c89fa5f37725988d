"""Fast R-CNN (Girshick, ICCV 2015): one CNN pass per image, proposals from outside.

R-CNN ran the CNN once per proposal (two thousand times per image). Fast R-CNN
runs it once per image and cuts each proposal out of the *feature map* instead
of the pixels: RoI max pooling turns any box into a fixed ``7 x 7`` grid, and
one network is trained end to end with a multi-task loss (softmax
classification + smooth-L1 box regression). The proposals still come from
selective search (or a file): Faster R-CNN's only change is to learn them.

Forward (training)::

    backbone                    -> features (N, C, H/s, W/s)
    proposal targets            (constants: sampled RoIs, labels, targets; ground truth appended)
    RoI head on the RoIs        -> class scores (R, K), deltas (R, 4K)
    head losses                 loss_classifier, loss_box_reg

Fast R-CNN *is* Faster R-CNN without its RPN, and the code says so: :class:`FastRCNN`
is :class:`~minirccn.detector.models.faster_rcnn.FasterRCNN` with no ``rpn.*``
parameters, one trainable part (``"head"``) and proposals from outside
(:class:`~minirccn.detector.models.external.ExternalProposals`). Its forward, its backward
(head -> RoI pool backward -> backbone; the RPN branch simply absent) and its inference
(softmax, per-class decode, score threshold, per-class NMS) are Faster R-CNN's code.
"""

from __future__ import annotations

import numpy as np

from minirccn.detector.backbones.levels import build_backbone
from minirccn.detector.models.external import ExternalProposals
from minirccn.detector.models.faster_rcnn import FasterRCNN
from minirccn.detector.roi_heads.box_head import init_head


class FastRCNN(ExternalProposals, FasterRCNN):
    """Backbone + RoI head on external proposals (module docstring); the attributes of
    :class:`~minirccn.detector.models.faster_rcnn.FasterRCNN` and ``source``."""

    LOSS_NAMES = ("loss_classifier", "loss_box_reg")
    PARAM_PREFIXES = ("backbone.", "head.")
    PARTS = ("head",)
    ALTERNATING = False
    TORCHVISION = ""  # torchvision's FasterRCNN has an RPN

    @classmethod
    def init_params(cls, config, num_classes: int, rng) -> dict:
        """Backbone then head parameters, drawn from ``rng`` (Faster R-CNN's minus the RPN)."""
        dtype = np.dtype(config.dtype)
        backbone = build_backbone(config)
        params = backbone.init(rng, dtype)
        params.update(
            init_head(
                backbone.out_channels,
                num_classes,
                config.representation_size,
                rng,
                config.roi_output_size,
                dtype,
            )
        )
        return params
