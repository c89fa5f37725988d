"""RetinaNet: the one-stage detector. Forward, its hand-written backward, and inference.

Forward (training), for a batch of images ``(N, 3, H, W)``::

    backbone                        -> features: one map per pyramid level
    RetinaNet head (shared weights) -> logits (N, M, Kc), deltas (N, M, 4)   M anchors, all levels
    anchor targets (constants)      -> labels (N, M): class / 0 / -1, box targets (N, M, 4)
    losses                          classification (focal), bbox_regression (L1)

Backward::

    losses -> head (class and box subnets, every level) -> dfeatures -> backbone

Compared with Faster R-CNN there is no proposal stage and no RoI pooling: every anchor
is classified directly into ``Kc = K - 1`` object classes (a sigmoid each) and
regressed, and *every* anchor that is not ignored trains the classifier (no sampling):
the focal loss down-weights the easy background anchors instead.

Inference (torchvision's ``RetinaNet.postprocess_detections``), per image:
per level, the ``anchor x class`` candidates with sigmoid score ``> score_thresh``
(0.05), the ``topk_candidates`` (1000) best of them, decoded (weights (1, 1, 1, 1))
and clipped; all levels together, class-wise NMS at ``nms_thresh`` (0.5); the
``detections_per_img`` (100) best.

The levels: with ``fpn_channels > 0`` the backbone is a ResNet + FPN
(:func:`minirccn.detector.fpn_model.pyramid_forward`: P2 .. P5 and the max-pooled level,
strides 4 .. 64) and level ``l`` gets anchors of ``anchor_sizes[l]`` times each of
``retina_anchor_scales`` (torchvision: sizes 32 .. 512 on P3 .. P7, scales 1, 2^(1/3),
2^(2/3)); the head runs on every level with the same weights and the levels' anchors are
concatenated, finest first. Without an FPN the backbone's last map is the single level and
carries every anchor size. The backward sums each level's gradient from both subnets
and hands all levels to the FPN's backward.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.backend import array_module, get_array_module, resolve, to_numpy
from minirccn.config import FasterRCNNConfig
from minirccn.detector import backbone as _bb
from minirccn.detector.anchors import generate_anchors
from minirccn.detector.fpn_model import (
    PyramidCache,
    init_pyramid,
    is_fpn,
    pyramid_backward,
    pyramid_forward,
    pyramid_levels,
)
from minirccn.detector.model import backbone_spec, predict_image, preprocess_image
from minirccn.detector.proposals import top_n
from minirccn.detector.retinanet_head import (
    LOSS_NAMES,
    init_retinanet_head,
    retinanet_head_backward,
    retinanet_head_forward,
    retinanet_losses,
)
from minirccn.detector.retinanet_targets import RetinaNetTargets
from minirccn.nn.losses import sigmoid

__all__ = [
    "LOSS_NAMES",
    "RetinaNet",
    "RetinaNetPostprocess",
    "detect",
    "init_params",
    "retinanet_backward",
    "retinanet_forward",
]


def init_params(config: FasterRCNNConfig, num_classes: int, rng: np.random.Generator) -> dict:
    """Fresh backbone and head parameters, drawn from ``rng`` (backbone first).

    Args:
        config: the config (``retina_channels``, ``retina_num_convs``, anchors, ...).
        num_classes: ``K`` including the background; the head predicts ``K - 1``.
    """
    dtype = np.dtype(config.dtype)
    if is_fpn(config):  # ResNet, then the FPN (its 3x3 outputs have fpn_channels)
        params = init_pyramid(config, rng, dtype)
        in_channels = int(config.fpn_channels)
    else:
        spec = backbone_spec(config)
        params = _bb.init_backbone(spec, rng, dtype)
        in_channels = _bb.out_channels(spec)
    params.update(
        init_retinanet_head(
            in_channels,
            config.retina_channels,
            config.num_anchors,
            num_classes - 1,
            rng,
            num_convs=config.retina_num_convs,
            prior_probability=config.retina_prior_probability,
            hidden_init=config.retina_hidden_init,
            dtype=dtype,
        )
    )
    return params


def level_anchor_sizes(config: FasterRCNNConfig) -> list:
    """The anchor sizes of each level: ``int(size * scale)`` for each ``retina_anchor_scales``
    (torchvision's ``int(x * 2 ** (1 / 3))``), size-major.

    With an FPN, level ``l`` has ``anchor_sizes[l]`` (one per level) times the scales; without,
    the single level has every size times every scale. With the default scales ``(1.0,)``
    the sizes are the config's ``anchor_sizes``. Example: size 16 and scales
    ``(1, 2 ** (1 / 3), 2 ** (2 / 3))`` give ``(16, 20, 25)``.
    """
    scales = tuple(float(k) for k in config.retina_anchor_scales)
    sizes = [int(s * k) for s in config.anchor_sizes for k in scales]
    if not is_fpn(config):
        return [tuple(sizes)]
    n = len(scales)
    return [tuple(sizes[i * n : (i + 1) * n]) for i in range(len(config.anchor_sizes))]


class RetinaNetPostprocess:
    """Detections of one image from per-level scores and deltas (module docstring, "Inference").

    Args:
        score_thresh: candidates need a score ``>`` this.
        topk_candidates: candidates kept per level (best first).
        nms_thresh: class-wise NMS IoU threshold.
        detections_per_img: detections kept.
        weights: box coder weights.
    """

    def __init__(
        self,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        weights=(1.0, 1.0, 1.0, 1.0),
    ):
        self.score_thresh = float(score_thresh)
        self.topk_candidates = int(topk_candidates)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.weights = tuple(float(w) for w in weights)

    @classmethod
    def from_config(cls, config: FasterRCNNConfig) -> "RetinaNetPostprocess":
        return cls(
            config.retina_score_thresh,
            config.retina_topk_candidates,
            config.retina_nms_thresh,
            config.retina_detections_per_img,
        )

    def candidates(self, scores):
        """The kept ``(anchor, class)`` pairs of one level.

        Args:
            scores: ``(M_l, Kc)`` float probabilities of one level.

        Returns:
            anchor_idx ``(P,)`` int64, class_idx ``(P,)`` int64 (0-based column), their
            scores ``(P,)``: the ``topk_candidates`` highest of the flattened scores
            ``> score_thresh``, best first (ties by lower flat index ``anchor * Kc + class``).
        """
        xp = get_array_module(scores)
        kc = scores.shape[1]
        flat = scores.reshape(-1)
        idx = xp.nonzero(flat > self.score_thresh)[0]
        idx = idx[top_n(flat[idx], self.topk_candidates)]
        return idx // kc, idx % kc, flat[idx]

    def __call__(self, scores, deltas, anchors, image_size, backend=None) -> dict:
        """Final detections of one image.

        Args:
            scores: list of ``L`` levels ``(M_l, Kc)`` sigmoid scores.
            deltas: list of ``L`` levels ``(M_l, 4)`` box deltas.
            anchors: list of ``L`` levels ``(M_l, 4)`` anchors.
            image_size: ``(height, width)`` to clip to.

        Returns:
            dict ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int64 in ``1..Kc`` (host
            NumPy), best first, ``D <= detections_per_img``.
        """
        xp = get_array_module(scores[0])
        all_boxes, all_scores, all_labels = [], [], []
        for s, d, a in zip(scores, deltas, anchors):
            ai, ci, sc = self.candidates(s)
            boxes = ops.decode_boxes(d[ai], a[ai], self.weights, backend=backend)
            all_boxes.append(ops.clip_boxes(boxes, image_size, backend=backend))
            all_scores.append(sc)
            all_labels.append(ci + 1)
        boxes = xp.concatenate(all_boxes)
        sc = xp.concatenate(all_scores)
        labels = xp.concatenate(all_labels).astype(xp.int64)
        keep = ops.batched_nms(boxes, sc, labels, self.nms_thresh, backend=backend)
        keep = keep[: self.detections_per_img]
        return {
            "boxes": to_numpy(boxes[keep]),
            "scores": to_numpy(sc[keep]),
            "labels": to_numpy(labels[keep]).astype(np.int64),
        }


class RetinaNet:
    """The one-stage detector's state: config, class names, parameters.

    Same interface as :class:`~minirccn.detector.model.FasterRCNN` (``predict``,
    ``trainable``, ``to``, ``preprocess``), so training, checkpoints, ``detect`` and
    ``eval`` treat the two alike.

    Attributes:
        config: :class:`~minirccn.config.FasterRCNNConfig` with ``model == "retinanet"``.
        class_names: ``K`` names, ``class_names[0] == "__background__"``.
        params: dict name -> array, keys ``backbone.*`` and ``head.{cls,box}.*``.
        strides: input pixels per cell of each level, finest first.
        targets: the :class:`RetinaNetTargets` built from the config.
        postprocess: the :class:`RetinaNetPostprocess` built from the config.
    """

    def __init__(self, config: FasterRCNNConfig, class_names, params=None, rng=None):
        self.config = config
        self.class_names = list(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "__background__":
            raise ValueError("class_names: expected ['__background__', <at least one class>, ...]")
        if params is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            params = init_params(config, len(self.class_names), rng)
        self.params = params
        # input pixels per cell of each level, finest first (checks an FPN's anchor sizes)
        if is_fpn(config):
            self.strides = pyramid_levels(config)[1]
        else:
            self.strides = (_bb.stride(backbone_spec(config)),)
        self.targets = RetinaNetTargets.from_config(config)
        self.postprocess = RetinaNetPostprocess.from_config(config)
        self._anchors = {}

    @property
    def num_classes(self) -> int:
        """``K``, including the background class 0 (the head predicts ``K - 1``)."""
        return len(self.class_names)

    def features(self, images, train: bool, backend=None):
        """The levels of a batch: ``([(N, C, H_l, W_l), ...], backbone cache)``, finest first."""
        spec = backbone_spec(self.config)
        if is_fpn(self.config):
            return pyramid_forward(self.params, images, spec, train, backend)
        features, cache = _bb.backbone_forward(self.params, images, spec, train=train, backend=backend)
        return [features], cache

    def level_anchors(self, levels, xp=np) -> list:
        """Anchors of each level ``(H_l * W_l * A, 4)`` (cached), config dtype: level ``l``
        has the sizes :func:`level_anchor_sizes` gives it."""
        cfg = self.config
        key = (tuple(tuple(int(s) for s in f.shape[2:]) for f in levels), xp.__name__)
        if key not in self._anchors:
            self._anchors[key] = [
                xp.asarray(
                    np.asarray(
                        generate_anchors(hw, s, sizes, cfg.aspect_ratios, cfg.anchor_offset),
                        dtype=cfg.dtype,
                    )
                )
                for hw, s, sizes in zip(key[0], self.strides, level_anchor_sizes(cfg))
            ]
        return self._anchors[key]

    def to(self, backend: str) -> "RetinaNet":
        """Move the parameters to ``backend``'s array module, in place; returns self."""
        xp = array_module(backend)
        self.params = {k: xp.asarray(v) for k, v in self.params.items()}
        return self

    def trainable(self, prefixes=("backbone.", "head.")) -> dict:
        """The parameters that get gradients (names starting with ``prefixes``; no BN stats)."""
        prefixes = tuple(prefixes)
        return {
            k: v for k, v in self.params.items() if k.startswith(prefixes) and ".running_" not in k
        }

    def preprocess(self, image):
        """One ``(H, W, 3)`` uint8 image -> normalised ``(3, H', W')`` float and the scale."""
        return preprocess_image(self.config, image)

    def predict(self, image, backend=None) -> dict:
        """Detections of one ``(H, W, 3)`` uint8 image, in its pixel coordinates: dict
        ``boxes (D, 4)`` float32, ``scores (D,)`` float32 (decreasing), ``labels (D,)`` int64."""
        return predict_image(self, detect, image, backend)


# ------------------------------------------------------------------------ training


class RetinaNetSamples(NamedTuple):
    """The anchor targets of one training forward (host NumPy); pass back to repeat it."""

    labels: np.ndarray  # (N, M) int64: class >= 1 / 0 background / -1 ignored
    box_targets: np.ndarray  # (N, M, 4) encoded targets of the positives


class RetinaNetCache(NamedTuple):
    """What :func:`retinanet_backward` needs."""

    backbone: object  # backbone cache
    head: object  # RetinaNetHeadCache
    d_logits: object  # (N, M, Kc)
    d_deltas: object  # (N, M, 4)
    train_backbone: bool


def retinanet_forward(
    model: RetinaNet,
    images,
    image_sizes,
    targets,
    rng=None,
    *,
    backend=None,
    samples: RetinaNetSamples | None = None,
    train_backbone: bool = True,
    batch_stats: bool | None = None,
    **_two_stage_only,
):
    """Training forward: the two losses and the cache of :func:`retinanet_backward`.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` normalised images; image_sizes: ``N`` ``(h, w)`` (unused by
            the targets: every anchor takes part, as torchvision).
        targets: ``N`` dicts ``boxes (G, 4)``, ``labels (G,)`` (1..K-1), image coordinates.
        rng: unused (nothing is sampled); accepted for the same call as Faster R-CNN's.
        samples: optional :class:`RetinaNetSamples` to reuse.
        train_backbone: False: no backbone gradients.
        batch_stats: batch norm with the batch's statistics (default ``train_backbone``).
        _two_stage_only: Faster R-CNN's ``parts`` / ``proposals`` (ignored).

    Returns:
        losses: dict ``classification``, ``bbox_regression`` (floats).
        cache: :class:`RetinaNetCache`.
        samples: the :class:`RetinaNetSamples` used.
    """
    backend = resolve(backend, images)
    xp = array_module(backend)
    cfg = model.config
    if batch_stats is None:
        batch_stats = train_backbone
    # 1. backbone (and neck): the pyramid levels
    levels, bb_cache = model.features(images, batch_stats, backend)
    # 2. head on every level (shared weights)
    logits, deltas, head_cache = retinanet_head_forward(model.params, levels, backend=backend)
    # 3. anchor targets (constants, host): every anchor labelled, nothing sampled
    if samples is None:
        anchors = np.concatenate(model.level_anchors(levels, np))
        labels, box_targets = [], []
        for t in targets:
            lab, reg, _ = model.targets(anchors, t["boxes"], t["labels"])
            labels.append(lab)
            box_targets.append(reg)
        samples = RetinaNetSamples(np.stack(labels), np.stack(box_targets))
    # 4. losses, normalised by each image's number of positive anchors
    cls, box, d_logits, d_deltas = retinanet_losses(
        logits,
        deltas,
        xp.asarray(samples.labels),
        xp.asarray(samples.box_targets),
        alpha=cfg.focal_alpha,
        gamma=cfg.focal_gamma,
    )
    losses = {"classification": cls, "bbox_regression": box}
    return losses, RetinaNetCache(bb_cache, head_cache, d_logits, d_deltas, train_backbone), samples


def retinanet_backward(cache: RetinaNetCache) -> dict:
    """Gradients of the summed losses w.r.t. every trainable parameter.

    Returns:
        dict name -> gradient (``head.*``, and ``backbone.*`` unless frozen).
    """
    # both subnets, every level, in reverse; the weights' gradients summed over the levels
    dlevels, grads = retinanet_head_backward(cache.d_logits, cache.d_deltas, cache.head)
    # then the FPN (every level) and the ResNet, or the single-level backbone
    if cache.train_backbone:
        if isinstance(cache.backbone, PyramidCache):
            grads.update(pyramid_backward(dlevels, cache.backbone))
        else:
            grads.update(_bb.backbone_backward(dlevels[0], cache.backbone))
    return grads


# ------------------------------------------------------------------------ inference


def detect(model: RetinaNet, images, image_sizes, backend=None) -> list:
    """Inference on a batch of preprocessed images.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` normalised images; image_sizes: ``N`` ``(h, w)``.

    Returns:
        ``N`` dicts of :class:`RetinaNetPostprocess`, in the coordinates of ``images``.
    """
    backend = resolve(backend, images)
    xp = array_module(backend)
    levels, _ = model.features(images, False, backend)
    logits, deltas, _ = retinanet_head_forward(model.params, levels, backend=backend)
    anchors = model.level_anchors(levels, xp)
    bounds = np.cumsum([0] + [a.shape[0] for a in anchors])
    spans = list(zip(bounds[:-1], bounds[1:]))  # each level's rows
    out = []
    for i in range(images.shape[0]):
        scores = sigmoid(logits[i])
        out.append(
            model.postprocess(
                [scores[s:e] for s, e in spans],
                [deltas[i, s:e] for s, e in spans],
                anchors,
                image_sizes[i],
                backend=backend,
            )
        )
    return out
