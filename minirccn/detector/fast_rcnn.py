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

Backward: :func:`minirccn.detector.model.detector_backward` itself, whose RPN
branch is simply absent (the cache has no RPN part): head -> RoI pool backward
-> backbone. The parameters are those of Faster R-CNN without ``rpn.*``; the
head, the RoI sampler and the inference steps (softmax, per-class decode,
score threshold, per-class NMS) are the same code.
"""

from __future__ import annotations

import numpy as np

from minirccn.backend import array_module, resolve, to_numpy
from minirccn.detector import backbone as _bb
from minirccn.detector.external import ExternalProposalModel, load_batch_with_proposals
from minirccn.detector.head import head_losses, init_head
from minirccn.detector.model import (
    DetectorCache,
    Samples,
    _head,
    detector_backward,
    postprocess_detections,
    sample_rois,
)


class FastRCNN(ExternalProposalModel):
    """Backbone + RoI head on external proposals (module docstring); see
    :class:`~minirccn.detector.external.ExternalProposalModel` for the attributes."""

    @staticmethod
    def init_params(config, num_classes: int, rng) -> dict:
        """Backbone then head parameters, drawn from ``rng`` (Faster R-CNN's minus the RPN)."""
        dtype = np.dtype(config.dtype)
        from minirccn.detector.model import backbone_spec

        spec = backbone_spec(config)
        params = _bb.init_backbone(spec, rng, dtype)
        params.update(
            init_head(
                _bb.out_channels(spec),
                num_classes,
                config.representation_size,
                rng,
                config.roi_output_size,
                dtype,
            )
        )
        return params

    def detect(self, x, proposals, backend) -> dict:
        """One preprocessed image ``(3, H, W)``: backbone once, RoI head on every proposal."""
        backend = resolve(backend)
        xp = array_module(backend)
        features, _ = _bb.backbone_forward(
            self.params, xp.asarray(x[None]), self.backbone_spec, train=False, backend=backend
        )
        boxes = xp.asarray(proposals)
        rois = xp.concatenate([xp.zeros((boxes.shape[0], 1), dtype=boxes.dtype), boxes], axis=1)
        class_logits, box_deltas, _ = _head(self, features, rois, backend, training=False)
        return postprocess_detections(
            class_logits, box_deltas, boxes, x.shape[1:], self.config, backend=backend
        )

    def losses_and_grads(self, dataset, indices, rng, *, backend, batch_stats=True):
        """One training batch: losses (floats) and gradients of every trainable parameter."""
        images, _sizes, targets, proposals = load_batch_with_proposals(
            dataset, indices, self.config, rng, backend, self.source
        )
        losses, cache, _ = fast_rcnn_forward(
            self, images, targets, proposals, rng, backend=backend, batch_stats=batch_stats
        )
        return losses, detector_backward(cache)


def fast_rcnn_forward(
    model: FastRCNN,
    images,
    targets,
    proposals,
    rng,
    *,
    backend=None,
    batch_stats=True,
    samples=None,
):
    """Training forward of Fast R-CNN: the two head losses and the cache of ``detector_backward``.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` normalised images.
        targets: ``N`` dicts ``boxes`` ``(G, 4)``, ``labels`` ``(G,)`` in the images' coordinates.
        proposals: ``N`` arrays ``(P_i, 4)``, same coordinates.
        rng: draws the RoI samples (image by image) and the dropout masks.
        batch_stats: batch norm with the batch's statistics (else the running ones).
        samples: a :class:`~minirccn.detector.model.Samples` of an earlier call to reuse.

    Returns:
        ``(losses, cache, samples)``: losses ``loss_classifier`` and ``loss_box_reg`` (floats),
        a :class:`~minirccn.detector.model.DetectorCache` without an RPN part, the samples.
    """
    backend = resolve(backend, images)
    xp = array_module(backend)
    features, bb_cache = _bb.backbone_forward(
        model.params, images, model.backbone_spec, train=batch_stats, backend=backend
    )
    if samples is None:
        samples = sample_rois(
            model,
            Samples(None, None, None, None, None),
            [to_numpy(p) for p in proposals],
            targets,
            rng,
        )
    class_logits, box_deltas, head_cache = _head(model, features, samples.rois, backend, rng)
    loss_cls, loss_box, d_cls, d_box = head_losses(
        class_logits,
        box_deltas,
        xp.asarray(samples.roi_labels),
        xp.asarray(samples.roi_targets),
        beta=model.config.box_beta,
    )
    cache = DetectorCache(
        bb_cache, None, None, None, head_cache, d_cls, d_box, ("head.", "backbone.")
    )
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}, cache, samples
