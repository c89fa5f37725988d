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
(:class:`minirccn.detector.backbones.levels.Pyramid`: P2 .. P5 and the max-pooled level,
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

from minirccn.core.backend import array_module, host_backend, resolve
from minirccn.detector.backbones.levels import build_backbone, is_fpn
from minirccn.detector.base import Detector
from minirccn.detector.dense.head import (
    LOSS_NAMES,
    init_retinanet_head,
    retinanet_head_backward,
    retinanet_head_forward,
    retinanet_losses,
)
from minirccn.detector.dense.postprocess import RetinaNetPostprocess
from minirccn.detector.dense.targets import RetinaNetTargets
from minirccn.nn.losses import sigmoid

__all__ = ["LOSS_NAMES", "RetinaNet", "RetinaNetPostprocess", "level_anchor_sizes"]


def level_anchor_sizes(config) -> list:
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


class RetinaNetSamples(NamedTuple):
    """The anchor targets of one training forward (host NumPy); pass back to repeat it."""

    labels: np.ndarray  # (N, M) int64: class >= 1 / 0 background / -1 ignored
    box_targets: np.ndarray  # (N, M, 4) encoded targets of the positives


class RetinaNetCache(NamedTuple):
    """What :meth:`RetinaNet.backward` needs."""

    backbone: object  # backbone cache
    head: object  # RetinaNetHeadCache
    d_logits: object  # (N, M, Kc)
    d_deltas: object  # (N, M, 4)
    train_backbone: bool
    samples: RetinaNetSamples


class RetinaNet(Detector):
    """The one-stage detector (module docstring).

    Attributes:
        backbone: one level, or the ResNet + FPN pyramid.
        anchor_generator: the :class:`~minirccn.detector.anchors.AnchorGenerator` of its levels
            (:func:`level_anchor_sizes`).
        targets: the :class:`~minirccn.detector.dense.targets.RetinaNetTargets` built from the config.
        postprocess: the :class:`~minirccn.detector.dense.postprocess.RetinaNetPostprocess`.
    """

    LOSS_NAMES = LOSS_NAMES
    PARAM_PREFIXES = ("backbone.", "head.")
    DEFAULT_PRESET = "resnet-fpn-tiny"  # a pyramid detector (docs/retinanet.md)

    def build(self) -> None:
        cfg = self.config
        self.build_levels(level_anchor_sizes(cfg))
        self.targets = RetinaNetTargets.from_config(cfg)
        self.postprocess = RetinaNetPostprocess.from_config(cfg)

    @property
    def strides(self) -> tuple:
        """Input pixels per cell of each level, finest first."""
        return self.backbone.strides

    @classmethod
    def init_params(cls, config, num_classes: int, rng: np.random.Generator) -> dict:
        """Fresh backbone and head parameters, drawn from ``rng`` (backbone first); the head
        predicts ``K - 1`` classes (no background column)."""
        dtype = np.dtype(config.dtype)
        backbone = build_backbone(config)
        params = backbone.init(rng, dtype)
        a = len(level_anchor_sizes(config)[0]) * len(config.aspect_ratios)
        params.update(
            init_retinanet_head(
                backbone.out_channels,
                config.retina_channels,
                a,
                num_classes - 1,
                rng,
                num_convs=config.retina_num_convs,
                prior_probability=config.retina_prior_probability,
                hidden_init=config.retina_hidden_init,
                dtype=dtype,
            )
        )
        return params

    def forward(
        self,
        batch,
        rng=None,
        *,
        backend=None,
        batch_stats: bool | None = None,
        samples: RetinaNetSamples | None = None,
        train_backbone: bool = True,
    ):
        """Training forward: the two losses and the cache of :meth:`backward`.

        Args:
            batch: a :class:`~minirccn.data.batching.Batch` (``image_sizes`` unused by the
                targets: every anchor takes part, as torchvision).
            rng: unused (nothing is sampled); the protocol's argument.
            samples: optional :class:`RetinaNetSamples` to reuse.
            batch_stats: batch norm with the batch's statistics (default ``train_backbone``).
            train_backbone: False: no backbone gradients.

        Returns:
            losses: dict ``classification``, ``bbox_regression`` (floats);
            cache: :class:`RetinaNetCache` (``cache.samples``: the targets used).
        """
        images, targets = batch.images, batch.targets
        backend = resolve(backend, images)
        xp = array_module(backend)
        cfg = self.config
        if batch_stats is None:
            batch_stats = train_backbone
        # 1. backbone (and neck): the levels
        levels, bb_cache = self.backbone.forward(self.params, images, batch_stats, backend)
        # 2. head on every level (shared weights)
        logits, deltas, head_cache = retinanet_head_forward(self.params, levels, backend=backend)
        # 3. anchor targets (constants, host): every anchor labelled, nothing sampled
        if samples is None:
            anchors, _ = self.anchor_generator([f.shape[2:] for f in levels], np, images.shape[2:])
            labels, box_targets = [], []
            for t in targets:
                lab, reg, _ = self.targets(anchors, t["boxes"], t["labels"], host_backend(backend))
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
            backend=backend,
        )
        losses = {"classification": cls, "bbox_regression": box}
        cache = RetinaNetCache(bb_cache, head_cache, d_logits, d_deltas, train_backbone, samples)
        return losses, cache

    def backward(self, cache: RetinaNetCache) -> dict:
        """Gradients of the summed losses w.r.t. every trainable parameter: ``head.*``, and
        ``backbone.*`` unless frozen."""
        # both subnets, every level, in reverse; the weights' gradients summed over the levels
        dlevels, grads = retinanet_head_backward(cache.d_logits, cache.d_deltas, cache.head)
        # then the FPN (every level) and the ResNet, or the one-level backbone
        if cache.train_backbone:
            grads.update(self.backbone.backward(dlevels, cache.backbone))
        return grads

    def detect(self, images, image_sizes, backend=None, proposals=None) -> list:
        """Inference on a batch of preprocessed images ``(N, 3, H, W)`` with unpadded sizes
        ``image_sizes``: ``N`` dicts of :class:`RetinaNetPostprocess`, in the coordinates of
        ``images``."""
        backend = resolve(backend, images)
        levels, anchors, counts = self.inference_levels(images, backend)
        logits, deltas, _ = retinanet_head_forward(self.params, levels, backend=backend)
        bounds = np.cumsum([0] + list(counts))
        spans = list(zip(bounds[:-1], bounds[1:]))  # each level's rows
        level_anchors = [anchors[s:e] for s, e in spans]
        out = []
        for i in range(images.shape[0]):
            scores = sigmoid(logits[i])
            out.append(
                self.postprocess(
                    [scores[s:e] for s, e in spans],
                    [deltas[i, s:e] for s, e in spans],
                    level_anchors,
                    image_sizes[i],
                    backend=backend,
                )
            )
        return out
