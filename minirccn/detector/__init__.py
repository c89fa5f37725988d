"""The detectors, built from ``minirccn.ops`` and ``minirccn.nn``: every kind implements the
:class:`~minirccn.detector.base.Detector` protocol and is one row of
:data:`~minirccn.detector.registry.MODELS`.

=====================================  ===========================================================
module                                 what
=====================================  ===========================================================
``base``                               the Detector protocol; what every model shares (``predict``,
                                       ``load_batch``, ``to``, ``trainable``); ``Samples``
``registry``                           the model table: ``config.model`` -> class, built lazily
``anchors``                            the anchor grid of a map, of many levels (``AnchorGenerator``)
``matching``                           the one Matcher and the one balanced sampler
``test_time``                          test-time flip: mirror boxes, merge two passes (``predict``)
``backbones/vgg``, ``resnet``, ``fpn``  the VGG-style stack, the ResNets, the FPN neck
``backbones/levels``                   a backbone yields levels: one map (``SingleLevel``) or a
                                       pyramid (``Pyramid``)
``rpn/head``                           the RPN head (one level and shared over levels), its losses
``rpn/proposal_layer``                 RPN outputs -> proposals (top-n and NMS per level, top-n)
``rpn/targets``                        RPN training targets (label and sample anchors)
``roi_heads/poolers``                  RoI max pool / RoIAlign on one level, ``MultiScaleRoIAlign``
``roi_heads/box_head``                 the box head (fc6, fc7, class scores, per-class deltas)
``roi_heads/targets``                  the head's training targets (label and sample RoIs)
``roi_heads/postprocess``              the head's outputs -> detections (``BoxPostprocess``)
``dense/head``, ``targets``,           RetinaNet's class and box subnets and focal loss, its anchor
``postprocess``                        labels (no sampling), its inference
``models/faster_rcnn``                 Faster R-CNN: one forward, one backward, one detect, for one
                                       level or a pyramid
``models/retinanet``                   the one-stage detector
``models/fast_rcnn``, ``rcnn``,        the lineage on external proposals (selective search or a
``external``                           file): Fast R-CNN is Faster R-CNN without its RPN
=====================================  ===========================================================

Import direction inside: base, matching, anchors, test_time, backbones <- rpn, roi_heads, dense <- models
<- registry.
"""
