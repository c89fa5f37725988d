"""Faster R-CNN with a ResNet + FPN backbone: torchvision's ``fasterrcnn_resnet50_fpn``
layout, from scratch, with its ONE hand-written backward.

Forward (training), for images ``(N, 3, H, W)``::

    ResNet                      -> C2, C3, C4, C5            (strides 4, 8, 16, 32)
    FPN                         -> P2, P3, P4, P5, pool      (F channels; pool: stride 64)
    ├── RPN head, shared        -> objectness, deltas of every level's anchors (concatenated)
    │   ├── anchor targets      (constants) over all levels' anchors at once
    │   ├── RPN losses          loss_objectness, loss_rpn_box_reg
    │   └── proposals           (constants) top-n per level, NMS per level, top-n
    └── proposal targets        (constants) sampled RoIs
        MultiScaleRoIAlign      each RoI from ONE of P2..P5 (LevelMapper) -> (R, F, 7, 7)
        box head (fc6, fc7)     -> class scores, per-class deltas
        head losses             loss_classifier, loss_box_reg

Backward, in reverse::

    head losses -> fc layers -> RoIAlign backward, per level  -> dP2..dP5 (head)
    RPN losses  -> shared head backward, per level            -> dP2..dP5, dpool (RPN)
    dP_l = dP_l (head) + dP_l (RPN)                              each level feeds both
    FPN backward (pool -> P5; top-down sums, 2x2)             -> dC2..dC5
    ResNet backward (each stage adds its dC)                  -> backbone gradients

A model is a plain :class:`~minirccn.detector.model.FasterRCNN` whose config has
``fpn_channels > 0``; :mod:`minirccn.detector.model` hands such a model to the functions
here (:func:`fpn_detector_forward`, :func:`fpn_detector_backward`, :func:`fpn_detect`).
Its fixed parts (level strides, anchors, proposal layers, the multi-scale pooler) live in
one :class:`Pyramid` built from the config.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.backend import array_module, resolve, to_numpy
from minirccn.detector import fpn, resnet
from minirccn.detector.fpn_rpn import (
    LevelsProposalCreator,
    multilevel_anchors,
    rpn_backward_levels,
    rpn_forward_levels,
)
from minirccn.detector.head import box_head_backward, box_head_forward, head_losses, init_head
from minirccn.detector.poolers import MultiScaleRoIAlign
from minirccn.detector.rpn import init_rpn, rpn_losses


def is_fpn(config) -> bool:
    """True for a config with a feature pyramid (``fpn_channels > 0``)."""
    return int(getattr(config, "fpn_channels", 0) or 0) > 0


class Pyramid:
    """The fixed parts of an FPN detector, built once from its config.

    Attributes:
        spec: the :class:`~minirccn.detector.resnet.ResNetSpec` (``config.backbone``).
        strides: input pixels per cell of each pyramid level, the ``pool`` level last.
        train_proposals, test_proposals: :class:`~minirccn.detector.fpn_rpn.LevelsProposalCreator`.
        roi_pool: :class:`~minirccn.detector.poolers.MultiScaleRoIAlign` over every level but
            ``pool`` (as torchvision's ``featmap_names=['0', '1', '2', '3']``).
    """

    def __init__(self, config):
        self.config = config
        self.spec, self.strides = pyramid_levels(config)
        self.train_proposals = LevelsProposalCreator.from_config(config, training=True)
        self.test_proposals = LevelsProposalCreator.from_config(config, training=False)
        sampling_ratio, aligned = pooling_options(config)
        self.roi_pool = MultiScaleRoIAlign(
            self.strides[:-1],
            config.roi_output_size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            canonical_scale=config.roi_canonical_scale,
            canonical_level=config.roi_canonical_level,
        )
        self._anchors = {}

    def anchors(self, map_sizes, xp=np):
        """``(anchors (M, 4), counts per level)`` of maps of these sizes (cached), config dtype."""
        key = (tuple(tuple(int(v) for v in s) for s in map_sizes), xp.__name__)
        if key not in self._anchors:
            cfg = self.config
            a, counts = multilevel_anchors(
                key[0], self.strides, cfg.anchor_sizes, cfg.aspect_ratios, offset=cfg.anchor_offset
            )
            self._anchors[key] = (xp.asarray(a.astype(cfg.dtype)), counts)
        return self._anchors[key]


def pyramid_levels(config) -> tuple:
    """``(spec, strides)`` of the pyramid of ``config``: its ResNet's
    :class:`~minirccn.detector.resnet.ResNetSpec` and the input pixels per cell of each level,
    the ``pool`` level last. Checks that the backbone is a ResNet and that ``anchor_sizes``
    holds one size per level (the Faster R-CNN and RetinaNet pyramids share this)."""
    if not resnet.is_resnet(config.backbone):
        raise ValueError(
            f"backbone: an FPN needs a ResNet backbone ({', '.join(resnet.PRESETS)}), "
            f"got {config.backbone!r}"
        )
    spec = resnet.get_spec(config.backbone)
    strides = fpn.level_strides(resnet.stage_strides(spec), extra_pool=True)
    if len(config.anchor_sizes) != len(strides):
        raise ValueError(
            f"anchor_sizes: an FPN needs one anchor size per level ({len(strides)}: "
            f"strides {strides}), got {tuple(config.anchor_sizes)}"
        )
    return spec, strides


def pooling_options(config) -> tuple:
    """``(sampling_ratio, aligned)`` of the head's multi-scale RoIAlign: the config's
    ``box_roi_pool_sampling_ratio`` and ``box_roi_pool_aligned`` (torchvision's detector: 2,
    False). A pyramid always pools with RoIAlign, as torchvision's ``MultiScaleRoIAlign``."""
    return config.box_roi_pool_sampling_ratio, config.box_roi_pool_aligned


def pyramid_of(model) -> Pyramid:
    """The model's :class:`Pyramid` (``model.pyramid``, built with the model)."""
    if model.pyramid is None:
        raise ValueError("model: its config has no feature pyramid (fpn_channels is 0)")
    return model.pyramid


# ------------------------------------------------------------------------ parameters


def init_pyramid(config, rng: np.random.Generator, dtype) -> dict:
    """Fresh ResNet (``backbone.stem/layer*``) and FPN (``backbone.fpn.*``, ``fpn_channels``
    wide) parameters, drawn from ``rng`` in that order."""
    spec, _ = pyramid_levels(config)
    params = resnet.init_resnet(spec, rng, dtype)
    params.update(fpn.init_fpn(resnet.stage_channels(spec), int(config.fpn_channels), rng, dtype))
    return params


def init_params(config, num_classes: int, rng: np.random.Generator) -> dict:
    """Fresh parameters: ResNet (``backbone.stem/layer*``), FPN (``backbone.fpn.*``), the
    shared RPN head (``rpn.*``, ``A = len(aspect_ratios)``), the box head (``head.*``)."""
    dtype = np.dtype(config.dtype)
    f = int(config.fpn_channels)
    params = init_pyramid(config, rng, dtype)
    params.update(init_rpn(f, config.rpn_channels, len(config.aspect_ratios), rng, dtype))
    params.update(
        init_head(f, num_classes, config.representation_size, rng, config.roi_output_size, dtype)
    )
    return params


# ------------------------------------------------------------------------ the pyramid


class PyramidCache(NamedTuple):
    """The ResNet's and the FPN's caches."""

    resnet: object
    fpn: object


def pyramid_forward(params: dict, images, spec, train: bool, backend=None):
    """ResNet then FPN: ``[P2, ..., P5, pool]`` (finest first) and a :class:`PyramidCache`."""
    stages, r_cache = resnet.resnet_forward(params, images, spec, train=train, backend=backend)
    maps, f_cache = fpn.fpn_forward(params, stages, extra_pool=True, backend=backend)
    return maps, PyramidCache(r_cache, f_cache)


def pyramid_backward(dmaps, cache: PyramidCache) -> dict:
    """Gradients of the ResNet and FPN parameters from the gradient of every level."""
    dstages, grads = fpn.fpn_backward(dmaps, cache.fpn)
    grads.update(resnet.resnet_backward(dstages, cache.resnet))
    return grads


# ------------------------------------------------------------------------ training forward


class FPNDetectorCache(NamedTuple):
    """What :func:`fpn_detector_backward` needs."""

    pyramid: PyramidCache
    num_maps: int
    rpn: object  # LevelsRPNCache, or None when the RPN losses are off
    d_objectness: object  # (N, M, 2)
    d_rpn_deltas: object  # (N, M, 4)
    pool: object  # MultiScaleCache, or None when the head losses are off
    pooler: object  # the MultiScaleRoIAlign that pooled
    head: object  # BoxHeadCache
    d_class_logits: object  # (R, K)
    d_box_deltas: object  # (R, 4K)
    trainable: tuple  # parameter-name prefixes that get gradients
    backend: str


def _sample_anchors(model, anchors, image_sizes, targets, rng):
    """RPN training samples of a batch (host, the model's ``anchor_targets`` creator): labels
    ``(N, M)`` and targets ``(N, M, 4)`` over every level's anchors at once."""
    per_image = [
        model.anchor_targets(anchors, t["boxes"], size, rng)
        for t, size in zip(targets, image_sizes)
    ]
    labels, regression = zip(*per_image)
    return np.stack(labels), np.stack(regression)


def fpn_detector_forward(
    model,
    images,
    image_sizes,
    targets,
    rng,
    *,
    backend=None,
    parts=("rpn", "head"),
    proposals=None,
    samples=None,
    train_backbone: bool = True,
    batch_stats=None,
):
    """Training forward of an FPN detector: the four losses and the backward's cache.

    Same arguments and results as :func:`minirccn.detector.model.detector_forward` (which
    calls this for a config with ``fpn_channels > 0``); ``parts`` names the losses computed.

    Returns:
        losses (dict of floats), cache (:class:`FPNDetectorCache`), samples
        (:class:`~minirccn.detector.model.Samples`).
    """
    from minirccn.detector.model import LOSS_NAMES, Samples, _no_rois, sample_rois

    backend = resolve(backend, images)
    xp = array_module(backend)
    cfg, p, pyr = model.config, model.params, pyramid_of(model)
    batch_stats = train_backbone if batch_stats is None else batch_stats

    # 1. ResNet + FPN: one map per level
    maps, pyr_cache = pyramid_forward(p, images, pyr.spec, batch_stats, backend)
    sizes = [m.shape[2:] for m in maps]

    # 2. the shared RPN head on every level; anchor targets over all levels' anchors
    logits, deltas, rpn_cache = rpn_forward_levels(p, maps, backend=backend)
    if samples is None:
        anchors_host, _ = pyr.anchors(sizes, np)
        samples = Samples(
            *_sample_anchors(model, anchors_host, image_sizes, targets, rng), None, None, None
        )
    losses = dict.fromkeys(LOSS_NAMES, 0.0)
    d_obj = d_rpn = pool_cache = head_cache = d_cls = d_box = None
    if "rpn" in parts:
        (losses["loss_objectness"], losses["loss_rpn_box_reg"], d_obj, d_rpn) = rpn_losses(
            logits,
            deltas,
            xp.asarray(samples.rpn_labels),
            xp.asarray(samples.rpn_targets),
            beta=cfg.rpn_box_beta,
        )

    # 3. proposals per level (constants), sampled RoIs, each pooled from its level
    if "head" in parts:
        if samples.rois is None:
            if proposals is None:
                anchors, counts = pyr.anchors(sizes, xp)
                props = pyr.train_proposals(logits, deltas, anchors, counts, image_sizes, backend)
                proposals = [to_numpy(b) for b, _, _ in props]
            samples = sample_rois(model, samples, proposals, targets, rng)
        pooled, pool_cache = pyr.roi_pool.forward(
            maps[:-1], xp.asarray(samples.rois), backend=backend
        )
        r = pooled.shape[0]
        class_logits, box_deltas, head_cache = box_head_forward(
            p,
            pooled.reshape(r, int(np.prod(pooled.shape[1:]))),
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
        samples = samples._replace(**_no_rois(cfg.dtype))
    trainable = tuple(s + "." for s in parts) + (("backbone.",) if train_backbone else ())
    cache = FPNDetectorCache(
        pyr_cache,
        len(maps),
        rpn_cache if "rpn" in parts else None,
        d_obj,
        d_rpn,
        pool_cache,
        pyr.roi_pool,
        head_cache,
        d_cls,
        d_box,
        trainable,
        backend,
    )
    return losses, cache, samples


# ------------------------------------------------------------------------ backward


def fpn_detector_backward(cache: FPNDetectorCache) -> dict:
    """Gradients of the summed losses w.r.t. every trainable parameter (module docstring).

    Returns:
        dict name -> gradient for the parameters named by ``cache.trainable``.
    """
    grads = {}
    dmaps = [None] * cache.num_maps

    def add(level, d):
        dmaps[level] = d if dmaps[level] is None else dmaps[level] + d

    # the RoI head, in reverse: losses -> fc layers -> RoIAlign backward, each RoI's
    # gradient to the one level it was pooled from
    if cache.head is not None:
        dx, head_grads = box_head_backward(cache.d_class_logits, cache.d_box_deltas, cache.head)
        grads.update(head_grads)
        r = dx.shape[0]
        shape = (r, cache.pool.shapes[0][1], cache.pooler.output_size, cache.pooler.output_size)
        for level, d in enumerate(
            cache.pooler.backward(dx.reshape(shape), cache.pool, cache.backend)
        ):
            add(level, d)

    # the RPN, in reverse: one shared head, so its gradients are summed over the levels
    if cache.rpn is not None:
        dlevels, rpn_grads = rpn_backward_levels(cache.d_objectness, cache.d_rpn_deltas, cache.rpn)
        grads.update(rpn_grads)
        for level, d in enumerate(dlevels):
            add(level, d)

    # every level feeds both parts: its gradient is the sum; then FPN and ResNet in reverse
    if "backbone." in cache.trainable:
        grads.update(pyramid_backward(dmaps, cache.pyramid))
    return {k: v for k, v in grads.items() if k.startswith(cache.trainable)}


# ------------------------------------------------------------------------ inference


def fpn_proposals(model, images, image_sizes, train: bool, backend):
    """``(maps, [(boxes, scores, levels)] per image)`` with batch norm in inference mode."""
    xp = array_module(backend)
    pyr = pyramid_of(model)
    maps, _ = pyramid_forward(model.params, images, pyr.spec, False, backend)
    logits, deltas, _ = rpn_forward_levels(model.params, maps, backend=backend)
    anchors, counts = pyr.anchors([m.shape[2:] for m in maps], xp)
    layer = pyr.train_proposals if train else pyr.test_proposals
    return maps, layer(logits, deltas, anchors, counts, image_sizes, backend)


def fpn_detect(model, images, image_sizes, backend=None) -> list:
    """Inference on a batch of preprocessed images (as :func:`minirccn.detector.model.detect`)."""
    from minirccn.detector.model import postprocess_detections

    backend = resolve(backend, images)
    xp = array_module(backend)
    pyr = pyramid_of(model)
    maps, props = fpn_proposals(model, images, image_sizes, False, backend)
    out = []
    for i, (boxes, _, _) in enumerate(props):
        if boxes.shape[0] == 0:
            out.append(
                {
                    "boxes": np.zeros((0, 4), np.float32),
                    "scores": np.zeros(0, np.float32),
                    "labels": np.zeros(0, np.int64),
                }
            )
            continue
        rois = xp.concatenate([xp.full((boxes.shape[0], 1), i, dtype=boxes.dtype), boxes], axis=1)
        pooled, _ = pyr.roi_pool.forward(maps[:-1], rois, backend=backend)
        class_logits, box_deltas, _ = box_head_forward(
            model.params,
            pooled.reshape(len(pooled), int(np.prod(pooled.shape[1:]))),
            backend=backend,
        )
        out.append(
            postprocess_detections(
                class_logits, box_deltas, boxes, image_sizes[i], model.config, backend=backend
            )
        )
    return out
