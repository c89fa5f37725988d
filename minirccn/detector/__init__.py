"""The detector (RPN + RoI head on one backbone), built from ``minirccn.ops`` and ``minirccn.nn``.

==================================  ====================================================
module                              what
==================================  ====================================================
``anchors``                         the anchor grid
``targets``                         the one Matcher and the one balanced sampler
``anchor_targets``                  RPN training targets (label and sample anchors)
``proposals``                       RPN outputs -> proposals (decode, clip, NMS, top-n)
``proposal_targets``                RoI head training targets (label and sample RoIs)
``backbone``                        VGG-style conv stacks
``rpn``                             the region proposal network
``head``                            the Fast R-CNN box head (RoI pool -> fc -> fc)
``model``                           the whole detector: forward, backward, inference
``retinanet_head``                  RetinaNet's class and box subnets, their losses
``retinanet_targets``               RetinaNet's anchor labels (the matcher, no sampling)
``retinanet``                       the one-stage detector: forward, backward, inference
==================================  ====================================================
"""

import importlib

_SUBMODULES = {
    "anchors",
    "targets",
    "anchor_targets",
    "proposals",
    "proposal_targets",
    "backbone",
    "rpn",
    "head",
    "model",
    "retinanet_head",
    "retinanet_targets",
    "retinanet",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
