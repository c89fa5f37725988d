"""Faster R-CNN: the forward pass, its ONE hand-written backward, and inference.

Read :func:`detector_forward` and :func:`detector_backward` side by side: the
backward visits the forward's steps in reverse.

Forward (training), for a batch of images ``(N, 3, H, W)``::

    backbone                      -> features (N, C, H/s, W/s)
    ├── RPN head                  -> objectness (N, M, 2), deltas (N, M, 4)   M = H/s * W/s * A
    │   ├── anchor targets        (constants: labels, regression targets)
    │   ├── RPN losses            loss_objectness, loss_rpn_box_reg
    │   └── proposal layer        (constants: boxes; no gradient flows through them)
    └── proposal targets          (constants: sampled RoIs, labels, targets)
        RoI head on the RoIs      -> class scores (R, K), deltas (R, 4K)
        head losses               loss_classifier, loss_box_reg

Backward::

    head losses -> fc layers -> RoI pool backward    -> dfeatures (head)
    RPN losses  -> 1x1 convs -> ReLU -> 3x3 conv     -> dfeatures (RPN)
    dfeatures = dfeatures (head) + dfeatures (RPN)        the map feeds both
    backbone backward                                -> backbone gradients

The proposals are treated as constants: this is the paper's "approximate joint
training" (Sec. 3.2): the gradient w.r.t. the proposal coordinates is ignored.

Words: the backbone is a stack of *stages* (``backbone_stages``); on top of it the
detector has two trainable *parts*, ``"rpn"`` and ``"head"`` (``parts=``, parameter
prefixes ``rpn.`` / ``head.``); the paper's alternating training has four *steps*,
each training one part.

Where the host is involved (``cuda`` backend): anchor and proposal target
sampling (a ``numpy.random.Generator`` draws the samples; arrays of a few
thousand rows), the sizes of NMS results, and the loss values (Python floats).
Everything else stays on the arrays' device.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.backend import array_module, get_array_module, resolve, to_numpy
from minirccn.config import FasterRCNNConfig
from minirccn.data import transforms
from minirccn.detector import backbone as _bb
from minirccn.detector.anchor_targets import AnchorTargetCreator
from minirccn.detector.anchors import generate_anchors
from minirccn.detector.head import head_backward, head_forward, head_losses, init_head
from minirccn.detector.poolers import RoIPooler
from minirccn.detector.proposal_targets import ProposalTargetCreator
from minirccn.detector.proposals import ProposalCreator
from minirccn.detector.rpn import init_rpn, rpn_backward, rpn_forward, rpn_losses

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


class FasterRCNN:
    """The detector's state: config, class names and parameters (plain dicts of arrays).

    Attributes:
        config: :class:`~minirccn.config.FasterRCNNConfig`.
        class_names: ``K`` names, ``class_names[0] == "__background__"``.
        params: dict name -> array, keys ``backbone.*``, ``rpn.*``, ``head.*`` (batch-norm
            running statistics ``*.running_mean`` / ``*.running_var`` included: they get
            no gradient and are updated in place by training forwards).
    """

    def __init__(
        self,
        config: FasterRCNNConfig,
        class_names,
        params=None,
        rng: np.random.Generator | None = None,
    ):
        self.config = config
        self.class_names = list(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "__background__":
            raise ValueError("class_names: expected ['__background__', <at least one class>, ...]")
        if params is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            params = init_params(config, len(self.class_names), rng)
        self.params = params
        self._anchors = {}
        self.backbone_spec = backbone_spec(config)
        # the non-differentiable steps, built once with the config's numbers
        self.anchor_targets = AnchorTargetCreator.from_config(config)
        self.train_proposals = ProposalCreator.from_config(config, training=True)
        self.test_proposals = ProposalCreator.from_config(config, training=False)
        self.proposal_targets = ProposalTargetCreator.from_config(config)
        self.roi_pooler = RoIPooler.from_config(config)
        self.pyramid = None  # with an FPN: levels, anchors, proposal layers, pooler
        if config.fpn_channels:
            from minirccn.detector.fpn_model import Pyramid

            self.pyramid = Pyramid(config)

    @property
    def num_classes(self) -> int:
        """``K``, including the background class 0."""
        return len(self.class_names)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell."""
        return _bb.stride(self.backbone_spec)

    def anchors(self, feature_size, xp=np):
        """``(Hf * Wf * A, 4)`` anchors of a ``feature_size = (Hf, Wf)`` map (cached), config dtype."""
        key = (tuple(int(s) for s in feature_size), xp.__name__)
        if key not in self._anchors:
            cfg = self.config
            a = generate_anchors(
                key[0], self.stride, cfg.anchor_sizes, cfg.aspect_ratios, offset=cfg.anchor_offset
            )
            self._anchors[key] = xp.asarray(np.asarray(a, dtype=cfg.dtype))
        return self._anchors[key]

    def to(self, backend: str) -> "FasterRCNN":
        """Move the parameters to ``backend``'s array module, in place; returns self."""
        xp = array_module(backend)
        self.params = {k: xp.asarray(v) for k, v in self.params.items()}
        return self

    def trainable(self, prefixes=("backbone.", "rpn.", "head.")) -> dict:
        """The parameters that get gradients (names starting with ``prefixes``; no BN statistics)."""
        prefixes = tuple(prefixes)
        return {
            k: v for k, v in self.params.items() if k.startswith(prefixes) and ".running_" not in k
        }

    def preprocess(self, image):
        """One ``(H, W, 3)`` uint8 image -> normalised ``(3, H', W')`` float and the resize scale."""
        return preprocess_image(self.config, image)

    def predict(self, image, backend=None) -> dict:
        """Detections of one image, in that image's pixel coordinates.

        Args:
            image: ``(H, W, 3)`` uint8 RGB image.
            backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None.

        Returns:
            dict ``boxes`` ``(D, 4)`` float32, ``scores`` ``(D,)`` float32 (decreasing),
            ``labels`` ``(D,)`` int64 in 1..K-1.
        """
        return predict_image(self, detect, image, backend)


def preprocess_image(config, image):
    """One ``(H, W, 3)`` uint8 image -> normalised ``(3, H', W')`` float of ``config.dtype`` and
    the resize scale (``min_size`` / ``max_size`` rule, ``image_mean`` / ``image_std``)."""
    resized, _, scale = transforms.resize(
        image, np.zeros((0, 4), np.float32), config.min_size, config.max_size
    )
    x = transforms.normalize(resized, config.image_mean, config.image_std).astype(config.dtype)
    return x, scale


def predict_image(model, detect_fn, image, backend=None) -> dict:
    """Detections of one ``(H, W, 3)`` uint8 image by ``detect_fn(model, images, sizes, backend)``,
    mapped back to the image's pixels: dict ``boxes (D, 4)`` float32, ``scores (D,)`` float32
    (decreasing), ``labels (D,)`` int64. Shared by every model's ``predict``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
        )
    backend = resolve(backend)
    xp = array_module(backend)
    x, scale = model.preprocess(image)
    h, w = x.shape[1:]
    det = detect_fn(model, xp.asarray(x[None]), [(h, w)], backend=backend)[0]
    boxes = det["boxes"] / np.float32(scale)
    boxes = ops.clip_boxes(boxes, image.shape[:2], backend="numpy").astype(np.float32)
    return {
        "boxes": boxes,
        "scores": det["scores"].astype(np.float32),
        "labels": det["labels"].astype(np.int64),
    }


def backbone_spec(config: FasterRCNNConfig):
    """The :class:`~minirccn.detector.backbone.BackboneSpec` of ``config``: the named preset, or
    ``config.backbone_stages`` (``(channels, convs, pool)`` triples) if given."""
    if not config.backbone_stages:
        return _bb.get_spec(config.backbone)
    stages = tuple(_bb.Stage(int(c), int(k), bool(p)) for c, k, p in config.backbone_stages)
    return _bb.BackboneSpec(stages=stages, batch_norm=config.backbone_batch_norm)


def init_params(config: FasterRCNNConfig, num_classes: int, rng: np.random.Generator) -> dict:
    """Fresh parameters of backbone, RPN and head, all drawn from ``rng``."""
    if config.fpn_channels:  # ResNet + FPN: minirccn.detector.fpn_model
        from minirccn.detector import fpn_model

        return fpn_model.init_params(config, num_classes, rng)
    dtype = np.dtype(config.dtype)
    spec = backbone_spec(config)
    params = _bb.init_backbone(spec, rng, dtype)
    c = _bb.out_channels(spec)
    params.update(init_rpn(c, config.rpn_channels, config.num_anchors, rng, dtype))
    params.update(
        init_head(c, num_classes, config.representation_size, rng, config.roi_output_size, dtype)
    )
    return params


# ------------------------------------------------------------------------ ground truth


def clean_targets(boxes, labels, where: str = "target"):
    """Drop ground-truth boxes with zero (or negative) width or height, with a warning.

    Args:
        boxes: ``(G, 4)`` float; labels: ``(G,)`` int.

    Returns:
        ``(boxes (G', 4), labels (G',))`` with only boxes of positive width and height.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not ok.all():
        warnings.warn(
            f"{where}: dropped {int((~ok).sum())} ground-truth box(es) of zero width or height",
            stacklevel=2,
        )
    return boxes[ok], labels[ok]


# ------------------------------------------------------------------------ forward

#: the two trainable parts on top of the backbone, named by their parameter prefixes
PARTS = ("rpn", "head")


class Samples(NamedTuple):
    """The non-differentiable choices of one training forward (all host NumPy arrays).

    Pass them back to :func:`detector_forward` (``samples=``) to repeat a forward
    with the same choices, e.g. for a finite-difference gradient check.
    """

    rpn_labels: np.ndarray  # (N, M) int64: 1 / 0 / -1 (not sampled)
    rpn_targets: np.ndarray  # (N, M, 4) encoded anchor targets
    rois: np.ndarray  # (R, 5) (batch_index, x1, y1, x2, y2) sampled RoIs
    roi_labels: np.ndarray  # (R,) int64 classes, 0 background
    roi_targets: np.ndarray  # (R, 4) encoded targets, weights (10, 10, 5, 5)


class DetectorCache(NamedTuple):
    """What :func:`detector_backward` needs: layer caches and the losses' gradients."""

    backbone: object  # backbone cache
    rpn: object  # RPNCache, or None when the RPN losses are off
    d_objectness: object  # (N, M, 2) dloss/dlogits
    d_rpn_deltas: object  # (N, M, 4)
    head: object  # HeadCache, or None when the head losses are off
    d_class_logits: object  # (R, K)
    d_box_deltas: object  # (R, 4K)
    trainable: tuple  # parameter-name prefixes that get gradients


def detector_forward(
    model: FasterRCNN,
    images,
    image_sizes,
    targets,
    rng: np.random.Generator,
    *,
    backend=None,
    parts=PARTS,
    proposals=None,
    samples=None,
    train_backbone: bool = True,
    batch_stats: bool | None = None,
):
    """Training forward: the four losses and the cache of :func:`detector_backward`.

    Args:
        model: the detector (its config's numbers live in its target and proposal creators).
        images: ``(N, 3, H, W)`` float normalised images (padded to a common size).
        image_sizes: ``N`` pairs ``(height, width)`` of the unpadded images.
        targets: ``N`` dicts with ``boxes`` ``(G, 4)`` float and ``labels`` ``(G,)`` int64
            (1..K-1), in the coordinates of ``images``.
        rng: the source of every random choice (anchor and RoI sampling, dropout).
        backend: backend of every op.
        parts: which losses to compute: ``"rpn"`` and/or ``"head"`` (the alternating
            training trains one part at a time).
        proposals: optional ``N`` arrays ``(P, 4)``: use these instead of this
            model's RPN proposals (alternating training step 2; gradient checks).
        samples: optional :class:`Samples` from an earlier call: reuse its choices.
        train_backbone: False freezes the backbone (no backbone gradients; batch norm
            in inference mode), as steps 3-4 of the alternating training do.
        batch_stats: batch norm normalises with the batch's statistics (and updates the
            running ones) if True, with the running statistics if False ("frozen" batch
            norm, still trained through gamma and beta). Default: ``train_backbone``.

    Returns:
        losses: dict of the four losses (floats; 0.0 for a part that is off).
        cache: :class:`DetectorCache`.
        samples: the :class:`Samples` used.

    Random draws, in this order: the anchor samples of every image, then (``"head"``
    on) the RoI samples of every image, then the head's dropout.
    """
    backend = resolve(backend, images)
    xp = array_module(backend)
    if model.pyramid is not None:  # a feature pyramid: minirccn.detector.fpn_model
        from minirccn.detector import fpn_model

        return fpn_model.fpn_detector_forward(
            model,
            images,
            image_sizes,
            targets,
            rng,
            backend=backend,
            parts=parts,
            proposals=proposals,
            samples=samples,
            train_backbone=train_backbone,
            batch_stats=batch_stats,
        )
    batch_stats = train_backbone if batch_stats is None else batch_stats
    features, bb_cache = _bb.backbone_forward(
        model.params, images, model.backbone_spec, train=batch_stats, backend=backend
    )
    feature_size = features.shape[2:]
    logits, deltas, rpn_cache = rpn_forward(model.params, features, backend=backend)
    if samples is None:
        samples = sample_anchors(model, feature_size, image_sizes, targets, rng)
    losses = dict.fromkeys(LOSS_NAMES, 0.0)
    d_obj = d_rpn = head_cache = d_cls = d_box = None
    if "rpn" in parts:
        (losses["loss_objectness"], losses["loss_rpn_box_reg"], d_obj, d_rpn) = rpn_losses(
            logits,
            deltas,
            xp.asarray(samples.rpn_labels),
            xp.asarray(samples.rpn_targets),
            beta=model.config.rpn_box_beta,
        )
    if "head" in parts:
        if samples.rois is None:
            if proposals is None:
                props = rpn_proposals(
                    model, logits, deltas, feature_size, image_sizes, backend, True
                )
                proposals = [to_numpy(boxes) for boxes, _ in props]
            samples = sample_rois(model, samples, proposals, targets, rng)
        class_logits, box_deltas, head_cache = _head(model, features, samples.rois, backend, rng)
        (losses["loss_classifier"], losses["loss_box_reg"], d_cls, d_box) = head_losses(
            class_logits,
            box_deltas,
            xp.asarray(samples.roi_labels),
            xp.asarray(samples.roi_targets),
            beta=model.config.box_beta,
        )
    elif samples.rois is None:
        samples = samples._replace(**_no_rois(model.config.dtype))
    rpn_cache = rpn_cache if "rpn" in parts else None
    trainable = tuple(s + "." for s in parts) + (("backbone.",) if train_backbone else ())
    cache = DetectorCache(bb_cache, rpn_cache, d_obj, d_rpn, head_cache, d_cls, d_box, trainable)
    return losses, cache, samples


def sample_anchors(model: FasterRCNN, feature_size, image_sizes, targets, rng) -> Samples:
    """The RPN's training samples of a batch (host; draws from ``rng`` image by image).

    Args:
        model: the detector (its ``anchor_targets`` creator).
        feature_size: ``(Hf, Wf)`` of the feature map.
        image_sizes: ``N`` pairs ``(height, width)``; targets: ``N`` dicts with ``boxes``.

    Returns:
        :class:`Samples` with ``rpn_labels`` ``(N, M)``, ``rpn_targets`` ``(N, M, 4)`` and
        ``None`` RoI fields (filled by :func:`sample_rois`).
    """
    anchors = model.anchors(feature_size, np)
    per_image = [
        model.anchor_targets(anchors, t["boxes"], size, rng)
        for t, size in zip(targets, image_sizes)
    ]
    labels, regression = zip(*per_image)
    return Samples(np.stack(labels), np.stack(regression), None, None, None)


def rpn_proposals(model: FasterRCNN, logits, deltas, feature_size, image_sizes, backend, training):
    """The proposal layer on the RPN's outputs, with the training or the inference numbers.

    Args:
        logits: ``(N, M, 2)``; deltas: ``(N, M, 4)``: the RPN's outputs.
        feature_size: ``(Hf, Wf)`` of the feature map; image_sizes: ``N`` pairs.
        training: use ``model.train_proposals`` (else ``model.test_proposals``).

    Returns:
        list of ``N`` pairs ``(boxes (P_i, 4), scores (P_i,))``, arrays of the backend.
    """
    anchors = model.anchors(feature_size, array_module(backend))
    layer = model.train_proposals if training else model.test_proposals
    return layer(logits, deltas, anchors, image_sizes, backend=backend)


def sample_rois(model: FasterRCNN, samples: Samples, proposals, targets, rng) -> Samples:
    """``samples`` with the RoI head's training samples of a batch filled in (host; draws
    from ``rng`` image by image).

    Args:
        model: the detector (its ``proposal_targets`` creator).
        samples: from :func:`sample_anchors`.
        proposals: ``N`` arrays ``(P_i, 4)``; targets: ``N`` dicts with ``boxes``, ``labels``.

    Returns:
        :class:`Samples` with ``rois`` ``(R, 5)`` (batch index first), ``roi_labels`` ``(R,)``,
        ``roi_targets`` ``(R, 4)``.
    """
    dtype = model.config.dtype
    rois, labels, regression = [], [], []
    for i, (boxes, t) in enumerate(zip(proposals, targets)):
        boxes = np.asarray(boxes, dtype=dtype).reshape(-1, 4)
        r, lab, reg = model.proposal_targets(boxes, t["boxes"], t["labels"], rng)
        rois.append(np.concatenate([np.full((r.shape[0], 1), i, dtype=r.dtype), r], axis=1))
        labels.append(lab)
        regression.append(reg)
    return samples._replace(
        rois=np.concatenate(rois),
        roi_labels=np.concatenate(labels),
        roi_targets=np.concatenate(regression),
    )


def _head(model: FasterRCNN, features, rois, backend, rng=None, training=True):
    """The RoI head with the model's pooling size; dropout (from ``rng``) only in training."""
    xp = array_module(backend)
    return head_forward(
        model.params,
        features,
        xp.asarray(rois),
        1.0 / model.stride,
        output_size=model.config.roi_output_size,
        dropout=model.config.dropout if training else 0.0,
        rng=rng,
        backend=backend,
        pooler=model.roi_pooler,
    )


def _no_rois(dtype) -> dict:
    return {
        "rois": np.zeros((0, 5), dtype),
        "roi_labels": np.zeros(0, np.int64),
        "roi_targets": np.zeros((0, 4), dtype),
    }


# ------------------------------------------------------------------------ backward


def detector_backward(cache: DetectorCache) -> dict:
    """Gradients of the summed losses w.r.t. every trainable parameter: THE backward pass.

    Args:
        cache: from :func:`detector_forward`.

    Returns:
        dict name -> gradient, same shapes and dtypes as the parameters (only the
        trainable ones: see ``cache.trainable``).
    """
    if not isinstance(cache, DetectorCache):  # a feature pyramid's cache
        from minirccn.detector import fpn_model

        return fpn_model.fpn_detector_backward(cache)
    grads = {}
    dfeatures = 0

    # the RoI head, in reverse: head losses -> cls/bbox fc -> fc7 -> fc6 -> RoI max pool
    # backward, which scatters each pooled gradient to the feature cell that won the max
    if cache.head is not None:
        dfeatures_head, head_grads = head_backward(
            cache.d_class_logits, cache.d_box_deltas, cache.head
        )
        grads.update(head_grads)
        dfeatures = dfeatures + dfeatures_head

    # the RPN, in reverse: RPN losses -> 1x1 cls / bbox convs -> ReLU -> 3x3 conv
    if cache.rpn is not None:
        dfeatures_rpn, rpn_grads = rpn_backward(cache.d_objectness, cache.d_rpn_deltas, cache.rpn)
        grads.update(rpn_grads)
        dfeatures = dfeatures + dfeatures_rpn

    # the feature map feeds both parts, so its gradient is the SUM of the two;
    # then the backbone, layer by layer in reverse
    if "backbone." in cache.trainable:
        grads.update(_bb.backbone_backward(dfeatures, cache.backbone))
    return {k: v for k, v in grads.items() if k.startswith(cache.trainable)}


# ------------------------------------------------------------------------ inference


def postprocess_detections(
    class_logits, box_deltas, proposals, image_size, config: FasterRCNNConfig, backend=None
) -> dict:
    """Final detections of one image from the head's outputs.

    Args:
        class_logits: ``(R, K)`` float; box_deltas: ``(R, 4K)`` float.
        proposals: ``(R, 4)`` float boxes the head looked at.
        image_size: ``(height, width)`` to clip to.
        config: thresholds ``box_score_thresh``, ``box_nms_thresh``, ``box_detections_per_img``.

    Returns:
        dict ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int64 (host NumPy arrays).

    Steps: ``softmax`` over classes; each RoI's box decoded once per class
    (weights ``bbox_reg_weights``) and clipped; the background column dropped; keep
    ``score > box_score_thresh`` and boxes at least 0.01 px wide; NMS per class
    (``batched_nms``); the ``box_detections_per_img`` best.
    """
    xp = get_array_module(class_logits)
    r, k = class_logits.shape
    z = class_logits - class_logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    scores = e / e.sum(axis=1, keepdims=True)  # (R, K)
    boxes = ops.decode_boxes(
        box_deltas.reshape(r * k, 4),
        xp.repeat(proposals, k, axis=0),
        config.bbox_reg_weights,
        backend=backend,
    )
    boxes = ops.clip_boxes(boxes, image_size, backend=backend).reshape(r, k, 4)
    labels = xp.broadcast_to(xp.arange(k, dtype=xp.int64)[None, :], (r, k))
    boxes, scores, labels = (
        boxes[:, 1:].reshape(-1, 4),
        scores[:, 1:].reshape(-1),
        labels[:, 1:].reshape(-1),
    )
    keep = xp.nonzero(scores > config.box_score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = ops.remove_small_boxes(boxes, 1e-2, backend=backend)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = ops.batched_nms(boxes, scores, labels, config.box_nms_thresh, backend=backend)
    keep = keep[: config.box_detections_per_img]
    return {
        "boxes": to_numpy(boxes[keep]),
        "scores": to_numpy(scores[keep]),
        "labels": to_numpy(labels[keep]).astype(np.int64),
    }


def detect_proposals(model: FasterRCNN, images, image_sizes, *, train: bool = False, backend=None):
    """The RPN's proposals of a batch (no gradients): backbone -> RPN -> proposal layer.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` float normalised images.
        image_sizes: ``N`` pairs ``(height, width)``.
        train: use the training top-n numbers (``rpn_*_train``) instead of the test ones.

    Returns:
        list of ``N`` ``(P_i, 4)`` boxes (arrays of the backend), best first.
    """
    return [b for b, _ in _proposals(model, images, image_sizes, train, backend)[1]]


def _proposals(model, images, image_sizes, train, backend):
    """``(features, [(boxes, scores)])`` of a batch with the backbone in inference mode."""
    if model.pyramid is not None:  # (maps, [(boxes, scores)]): fpn_model
        from minirccn.detector import fpn_model

        maps, props = fpn_model.fpn_proposals(model, images, image_sizes, train, backend)
        return maps, [(b, sc) for b, sc, _ in props]
    features, _ = _bb.backbone_forward(
        model.params, images, model.backbone_spec, train=False, backend=backend
    )
    logits, deltas, _ = rpn_forward(model.params, features, backend=backend)
    feature_size = features.shape[2:]
    props = rpn_proposals(model, logits, deltas, feature_size, image_sizes, backend, train)
    return features, props


def detect(model: FasterRCNN, images, image_sizes, backend=None) -> list:
    """Inference on a batch of preprocessed images.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` float normalised images.
        image_sizes: ``N`` pairs ``(height, width)`` of the unpadded images.

    Returns:
        ``N`` dicts of :func:`postprocess_detections`, in the coordinates of ``images``.
    """
    if model.pyramid is not None:
        from minirccn.detector import fpn_model

        return fpn_model.fpn_detect(model, images, image_sizes, backend=backend)
    backend = resolve(backend, images)
    xp = array_module(backend)
    cfg = model.config
    features, props = _proposals(model, images, image_sizes, False, backend)
    out = []
    for i, (boxes, _) in enumerate(props):
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
        class_logits, box_deltas, _ = _head(model, features, rois, backend, training=False)
        out.append(
            postprocess_detections(
                class_logits, box_deltas, boxes, image_sizes[i], cfg, backend=backend
            )
        )
    return out
