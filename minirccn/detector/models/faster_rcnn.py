"""Faster R-CNN: the forward pass, its ONE hand-written backward, and inference, for one
feature map or a pyramid of them.

Read :meth:`FasterRCNN.forward` and :meth:`FasterRCNN.backward` side by side: the
backward visits the forward's steps in reverse.

Forward (training), for a batch of images ``(N, 3, H, W)``; ``L`` levels (1 for VGG or
ResNet-C4, 5 for ResNet + FPN: P2..P5 and ``pool``)::

    backbone                      -> maps [(N, C, H_l, W_l)]       one per level, finest first
    ├── RPN head (shared weights) -> objectness (N, M, 2), deltas (N, M, 4)   M anchors, all levels
    │   ├── anchor targets        (constants: labels, regression targets)
    │   ├── RPN losses            loss_objectness, loss_rpn_box_reg
    │   └── proposal layer        (constants: top-n per level, NMS per level, top-n)
    └── proposal targets          (constants: sampled RoIs, labels, targets)
        RoI pooling               each RoI from its level (one level: the map) -> (R, C, P, P)
        box head (fc6, fc7)       -> class scores (R, K), deltas (R, 4K)
        head losses               loss_classifier, loss_box_reg

Backward::

    head losses -> fc layers -> RoI pooling backward      -> dmaps (head), per level
    RPN losses  -> shared head backward, per level        -> dmaps (RPN)
    dmap_l = dmap_l (head) + dmap_l (RPN)                    each level feeds both parts
    backbone backward (FPN then ResNet, or the VGG stack) -> backbone gradients

The proposals are treated as constants: this is the paper's "approximate joint
training" (Sec. 3.2): the gradient w.r.t. the proposal coordinates is ignored.

Words: the backbone is a stack of *stages*; on top of it the detector has two trainable
*parts*, ``"rpn"`` and ``"head"`` (``parts=``, parameter prefixes ``rpn.`` / ``head.``);
the paper's alternating training (:mod:`minirccn.engine.alternating`) has four *steps*,
each training one part.

Where the host is involved (``cuda`` backend): anchor and proposal target sampling (a
``numpy.random.Generator`` draws the samples; arrays of a few thousand rows), the sizes of
NMS results, and the loss values (Python floats). Everything else stays on the device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.core.backend import array_module, host_backend, resolve, to_numpy
from minirccn.detector.backbones.levels import build_backbone, is_fpn
from minirccn.detector.base import Detector, Samples, empty_detections
from minirccn.detector.roi_heads.box_head import (
    box_head_backward,
    box_head_forward,
    head_losses,
    init_head,
)
from minirccn.detector.roi_heads.poolers import build_pooler
from minirccn.detector.roi_heads.postprocess import BoxPostprocess
from minirccn.detector.roi_heads.targets import ProposalTargetCreator, sample_rois
from minirccn.detector.rpn.head import init_rpn, rpn_backward_levels, rpn_forward_levels, rpn_losses
from minirccn.detector.rpn.proposal_layer import ProposalCreator
from minirccn.detector.rpn.targets import AnchorTargetCreator

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")

#: the two trainable parts on top of the backbone, named by their parameter prefixes
PARTS = ("rpn", "head")


def level_anchor_sizes(config) -> list:
    """The anchor sizes of each level: all of ``anchor_sizes`` on a one-level backbone, one
    size per level on a pyramid (torchvision's ``((32,), (64,), ...)``)."""
    if is_fpn(config):
        return [(s,) for s in config.anchor_sizes]
    return [tuple(config.anchor_sizes)]


class DetectorCache(NamedTuple):
    """What :meth:`FasterRCNN.backward` needs: layer caches and the losses' gradients."""

    backbone: object  # the backbone's cache
    num_maps: int  # L, the levels the backbone gave
    rpn: object  # LevelsRPNCache, or None when the RPN losses are off
    d_objectness: object  # (N, M, 2) dloss/dlogits
    d_rpn_deltas: object  # (N, M, 4)
    pool: object  # the pooler's cache, or None when the head losses are off
    pooled_shape: tuple  # (R, C, P, P)
    head: object  # BoxHeadCache
    d_class_logits: object  # (R, K)
    d_box_deltas: object  # (R, 4K)
    trainable: tuple  # parameter-name prefixes that get gradients
    backend: str
    samples: Samples  # the choices made (pass back as ``samples=`` to repeat them)


class FasterRCNN(Detector):
    """Backbone (one level or a pyramid) + RPN + RoI head (module docstring).

    Attributes (built once from the config; the numbers live here, not in the config):
        backbone: :class:`~minirccn.detector.backbones.levels.SingleLevel` or ``Pyramid``.
        anchor_generator: the :class:`~minirccn.detector.anchors.AnchorGenerator` of its levels.
        anchor_targets, proposal_targets: the RPN's and the head's target creators.
        train_proposals, test_proposals: the proposal layer with its training / test top-n.
        pooler: ``SingleLevelPooler`` or ``MultiScaleRoIAlign`` (one interface).
        postprocess: the :class:`~minirccn.detector.roi_heads.postprocess.BoxPostprocess`.
    """

    LOSS_NAMES = LOSS_NAMES
    PARAM_PREFIXES = ("backbone.", "rpn.", "head.")
    #: the parts this model trains (Fast R-CNN: the head only)
    PARTS = PARTS
    ALTERNATING = True
    PROPOSALS = "rpn"
    TORCHVISION = "FasterRCNN"

    def build(self) -> None:
        cfg = self.config
        self.build_levels(level_anchor_sizes(cfg))
        self.anchor_targets = AnchorTargetCreator.from_config(cfg)
        self.train_proposals = ProposalCreator.from_config(cfg, training=True)
        self.test_proposals = ProposalCreator.from_config(cfg, training=False)
        self.proposal_targets = ProposalTargetCreator.from_config(cfg)
        self.pooler = build_pooler(cfg, self.backbone.strides[: self.backbone.pooled_levels])
        self.postprocess = BoxPostprocess.from_config(cfg)

    @classmethod
    def init_params(cls, config, num_classes: int, rng: np.random.Generator) -> dict:
        """Fresh parameters of backbone, RPN (``A`` anchors per cell) and head, drawn from
        ``rng`` in that order."""
        dtype = np.dtype(config.dtype)
        backbone = build_backbone(config)
        params = backbone.init(rng, dtype)
        c = backbone.out_channels
        a = len(level_anchor_sizes(config)[0]) * len(config.aspect_ratios)
        k = 1 if config.rpn_objectness == "sigmoid" else 2  # logits per anchor
        params.update(init_rpn(c, config.rpn_channels, a, rng, dtype, k))
        params.update(
            init_head(c, num_classes, config.representation_size, rng, config.roi_output_size, dtype)
        )
        return params

    # ------------------------------------------------------------------------ forward

    def forward(
        self,
        batch,
        rng: np.random.Generator,
        *,
        backend=None,
        batch_stats: bool | None = None,
        parts=None,
        proposals=None,
        samples: Samples | None = None,
        train_backbone: bool = True,
    ):
        """Training forward: the losses and the cache of :meth:`backward`.

        Args:
            batch: a :class:`~minirccn.data.batching.Batch`: ``images (N, 3, H, W)`` float
                normalised (padded), ``image_sizes`` (unpadded), ``targets`` (``boxes (G, 4)``,
                ``labels (G,)`` int64 1..K-1, in the coordinates of ``images``).
            rng: the source of every random choice (anchor and RoI sampling, dropout).
            backend: backend of every op.
            batch_stats: batch norm normalises with the batch's statistics (and updates the
                running ones) if True, with the running statistics if False ("frozen" batch
                norm, still trained through gamma and beta). Default: ``train_backbone``.
            parts: which losses to compute, ``"rpn"`` and/or ``"head"`` (default
                :attr:`PARTS`; the alternating training trains one part at a time).
            proposals: optional ``N`` arrays ``(P, 4)`` to use instead of this model's RPN
                proposals (alternating training step 2; default: ``batch.proposals``).
            samples: optional :class:`~minirccn.detector.base.Samples` of an earlier call.
            train_backbone: False freezes the backbone (no backbone gradients; batch norm in
                inference mode unless ``batch_stats``), as steps 3-4 of the alternating
                training do.

        Returns:
            losses: dict of :attr:`LOSS_NAMES` (floats; 0.0 for a part that is off).
            cache: :class:`DetectorCache` (``cache.samples``: the choices made).

        Random draws, in this order: the anchor samples of every image, then (``"head"``
        on) the RoI samples of every image, then the head's dropout.
        """
        images, image_sizes, targets = batch.images, batch.image_sizes, batch.targets
        proposals = batch.proposals if proposals is None else proposals
        parts = self.PARTS if parts is None else parts
        backend = resolve(backend, images)
        xp = array_module(backend)
        cfg, p = self.config, self.params
        batch_stats = train_backbone if batch_stats is None else batch_stats

        # 1. the backbone: one map per level
        maps, bb_cache = self.backbone.forward(p, images, batch_stats, backend)
        sizes = [m.shape[2:] for m in maps]
        losses = dict.fromkeys(self.LOSS_NAMES, 0.0)
        logits = deltas = rpn_cache = d_obj = d_rpn = None
        pool_cache = head_cache = d_cls = d_box = pooled_shape = None

        # 2. the RPN head on every level (shared weights); anchor targets over all anchors
        if "rpn." in self.PARAM_PREFIXES:
            logits, deltas, rpn_cache = rpn_forward_levels(p, maps, backend=backend)
            if samples is None:
                anchors, _ = self.anchor_generator(sizes, np, images.shape[2:])
                samples = Samples(
                    *self.sample_anchors(anchors, image_sizes, targets, rng, host_backend(backend)),
                    None,
                    None,
                    None,
                )
            if "rpn" in parts:
                (losses["loss_objectness"], losses["loss_rpn_box_reg"], d_obj, d_rpn) = rpn_losses(
                    logits,
                    deltas,
                    xp.asarray(samples.rpn_labels),
                    xp.asarray(samples.rpn_targets),
                    beta=cfg.rpn_box_beta,
                )
        samples = samples if samples is not None else Samples(None, None, None, None, None)

        # 3. proposals (constants), sampled RoIs, each pooled from its level, the box head
        if "head" in parts:
            if samples.rois is None:
                if proposals is None:
                    anchors, counts = self.anchor_generator(sizes, xp, images.shape[2:])
                    props = self.train_proposals(logits, deltas, anchors, counts, image_sizes, backend)
                    proposals = [to_numpy(b) for b, _ in props]
                rois, labels, regression = sample_rois(
                    self.proposal_targets, [to_numpy(b) for b in proposals], targets, rng, cfg.dtype
                )
                samples = samples._replace(rois=rois, roi_labels=labels, roi_targets=regression)
            pooled, pool_cache = self.pooler.forward(
                maps[: self.pooler.num_levels], xp.asarray(samples.rois), backend=backend
            )
            r, pooled_shape = pooled.shape[0], pooled.shape
            class_logits, box_deltas, head_cache = box_head_forward(
                p,
                pooled.reshape(r, int(np.prod(pooled.shape[1:]))),  # explicit: R may be 0
                dropout=cfg.dropout,
                rng=rng,
                backend=backend,
            )
            (losses["loss_classifier"], losses["loss_box_reg"], d_cls, d_box) = head_losses(
                class_logits,
                box_deltas,
                xp.asarray(samples.roi_labels),
                xp.asarray(samples.roi_targets),
                beta=cfg.box_beta,
            )
        elif samples.rois is None:
            samples = samples._replace(
                rois=np.zeros((0, 5), cfg.dtype),
                roi_labels=np.zeros(0, np.int64),
                roi_targets=np.zeros((0, 4), cfg.dtype),
            )
        trainable = tuple(s + "." for s in parts) + (("backbone.",) if train_backbone else ())
        cache = DetectorCache(
            bb_cache,
            len(maps),
            rpn_cache if "rpn" in parts else None,
            d_obj,
            d_rpn,
            pool_cache,
            pooled_shape,
            head_cache,
            d_cls,
            d_box,
            trainable,
            backend,
            samples,
        )
        return losses, cache

    def sample_anchors(self, anchors, image_sizes, targets, rng, backend: str = "numpy"):
        """The RPN's training samples of a batch (host; draws from ``rng`` image by image):
        ``labels (N, M)`` int64 and regression targets ``(N, M, 4)`` over all levels' anchors
        ``(M, 4)``; ``backend`` of the IoU and the matcher (the same numbers on each)."""
        per_image = [
            self.anchor_targets(anchors, t["boxes"], size, rng, backend)
            for t, size in zip(targets, image_sizes)
        ]
        labels, regression = zip(*per_image)
        return np.stack(labels), np.stack(regression)

    # ------------------------------------------------------------------------ backward

    def backward(self, cache: DetectorCache) -> dict:
        """Gradients of the summed losses w.r.t. every trainable parameter: THE backward pass.

        Returns:
            dict name -> gradient, same shapes and dtypes as the parameters (only the
            trainable ones: see ``cache.trainable``).
        """
        grads = {}
        dmaps = [None] * cache.num_maps

        def add(level, d):
            dmaps[level] = d if dmaps[level] is None else dmaps[level] + d

        # the RoI head, in reverse: losses -> cls/bbox fc -> fc7 -> fc6 -> RoI pooling
        # backward, each RoI's gradient to the level (the cells) it was pooled from
        if cache.head is not None:
            dx, head_grads = box_head_backward(cache.d_class_logits, cache.d_box_deltas, cache.head)
            grads.update(head_grads)
            dpooled = dx.reshape(cache.pooled_shape)
            for level, d in enumerate(self.pooler.backward(dpooled, cache.pool, cache.backend)):
                add(level, d)

        # the RPN, in reverse: losses -> 1x1 cls / bbox convs -> ReLU -> 3x3 conv, on every
        # level; one shared head, so its gradients are summed over the levels
        if cache.rpn is not None:
            dlevels, rpn_grads = rpn_backward_levels(cache.d_objectness, cache.d_rpn_deltas, cache.rpn)
            grads.update(rpn_grads)
            for level, d in enumerate(dlevels):
                add(level, d)

        # every level feeds both parts, so its gradient is the SUM of the two; then the
        # backbone, layer by layer in reverse
        if "backbone." in cache.trainable:
            grads.update(self.backbone.backward(dmaps, cache.backbone))
        return {k: v for k, v in grads.items() if k.startswith(cache.trainable)}

    # ------------------------------------------------------------------------ inference

    def rpn_proposals(self, images, image_sizes, *, training: bool = False, backend=None, layer=None):
        """``(maps, [(boxes (P_i, 4), scores (P_i,))])`` of a batch, the backbone in inference
        mode; ``layer``: a :class:`~minirccn.detector.rpn.proposal_layer.ProposalCreator` to use
        instead of :attr:`train_proposals` / :attr:`test_proposals`."""
        backend = resolve(backend, images)
        maps, anchors, counts = self.inference_levels(images, backend)
        logits, deltas, _ = rpn_forward_levels(self.params, maps, backend=backend)
        if layer is None:
            layer = self.train_proposals if training else self.test_proposals
        return maps, layer(logits, deltas, anchors, counts, image_sizes, backend)

    def detect(self, images, image_sizes, backend=None, proposals=None) -> list:
        """Inference on a batch of preprocessed images.

        Args:
            images: ``(N, 3, H, W)`` float normalised images.
            image_sizes: ``N`` pairs ``(height, width)`` of the unpadded images.
            proposals: optional ``N`` arrays ``(P_i, 4)`` (default: the RPN's).

        Returns:
            ``N`` dicts of :class:`~minirccn.detector.roi_heads.postprocess.BoxPostprocess`, in
            the coordinates of ``images``.
        """
        backend = resolve(backend, images)
        xp = array_module(backend)
        if proposals is None:
            maps, props = self.rpn_proposals(images, image_sizes, backend=backend)
            proposals = [b for b, _ in props]
        else:
            maps, _ = self.backbone.forward(self.params, images, False, backend)
        out = []
        for i, boxes in enumerate(proposals):
            if boxes.shape[0] == 0:
                out.append(empty_detections())
                continue
            boxes = xp.asarray(boxes)
            rois = xp.concatenate([xp.full((boxes.shape[0], 1), i, dtype=boxes.dtype), boxes], axis=1)
            pooled, _ = self.pooler.forward(maps[: self.pooler.num_levels], rois, backend=backend)
            class_logits, box_deltas, _ = box_head_forward(
                self.params,
                pooled.reshape(len(pooled), int(np.prod(pooled.shape[1:]))),
                backend=backend,
            )
            out.append(self.postprocess(class_logits, box_deltas, boxes, image_sizes[i], backend=backend))
        return out
