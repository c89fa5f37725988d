"""R-CNN (Girshick et al., CVPR 2014): a CNN on every warped proposal. Slow by design.

For each of ~2000 selective search proposals per image:

1. dilate the box so that, once warped, ``p`` pixels of context surround it
   (paper: ``p = 16`` of a ``227 x 227`` crop; here scaled to the crop size:
   ``p = rcnn_context_padding * S / 227``; the box grows by ``S / (S - 2p)`` about its
   centre);
2. warp that region of the image to ``S x S`` pixels, ignoring the aspect ratio
   (bilinear samples at the centres of an ``S x S`` grid over the box; outside the
   image the normalised pixel is 0, i.e. the mean colour, as the paper fills it);
3. run the CNN on the crop: the backbone, then the crop's whole feature map
   flattened into fc6 -> ReLU -> fc7 -> ReLU -> class scores ``(K)`` and
   class-specific box deltas ``(4K)``;
4. per class: softmax score, decoded box, score threshold, NMS
   (:class:`~minirccn.detector.roi_heads.postprocess.BoxPostprocess`).

Two thousand forward passes per image is what Fast R-CNN removed. Differences to
the paper, to keep one training loop for the whole family: one network trained
with softmax + smooth-L1 (the paper fine-tuned with softmax, then trained
per-class SVMs and a separate ridge box regressor on pool5 features); RoIs
sampled as Faster R-CNN's head samples them (``box_*`` config fields, ground
truth appended). The backbone and fc widths are the config's, so R-CNN,
Fast R-CNN and Faster R-CNN compare with the same network.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn.core.backend import array_module, resolve, to_numpy
from minirccn.detector.backbones.levels import SingleLevel, backbone_spec
from minirccn.detector.base import Detector, Samples
from minirccn.detector.models.external import ExternalProposals
from minirccn.detector.roi_heads.box_head import (
    BoxHeadCache,
    box_head_backward,
    box_head_forward,
    head_losses,
    init_head,
)
from minirccn.detector.roi_heads.postprocess import BoxPostprocess
from minirccn.detector.roi_heads.targets import ProposalTargetCreator, sample_rois

#: the paper's crop side, against which the context padding is given
PAPER_CROP = 227


def context_boxes(boxes: np.ndarray, crop_size: int, context_padding: float) -> np.ndarray:
    """Boxes dilated so that ``p = context_padding * crop_size / 227`` warped pixels of context
    surround the original box on each side.

    ``w' = w * S / (S - 2p)`` and ``h' = h * S / (S - 2p)`` about the same centre.

    Args:
        boxes: ``(R, 4)`` float ``(x1, y1, x2, y2)``.
        crop_size: ``S``.
        context_padding: ``p`` at the paper's 227-pixel crop.

    Returns:
        ``(R, 4)`` float64 (may extend beyond the image).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    p = context_padding * crop_size / PAPER_CROP
    if not 0 <= 2 * p < crop_size:
        raise ValueError(
            f"context_padding: {context_padding} leaves no box in a {crop_size}-pixel crop"
        )
    factor = crop_size / (crop_size - 2.0 * p)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half = (boxes[:, 2:] - boxes[:, :2]) / 2.0 * factor
    return np.concatenate([centre - half, centre + half], axis=1)


def warp_crops(image: np.ndarray, boxes: np.ndarray, crop_size: int) -> np.ndarray:
    """Each box's region of ``image`` resampled to ``S x S`` (anisotropic warp, bilinear).

    Output pixel ``(i, j)`` of box ``(x1, y1, x2, y2)`` samples the image at
    ``x = x1 + (j + 0.5) (x2 - x1) / S - 0.5``, ``y = y1 + (i + 0.5) (y2 - y1) / S - 0.5``
    (pixel ``c`` of the image has its centre at ``c + 0.5``, index ``c``), bilinearly from the
    four neighbouring pixels; pixels outside the image count as 0.

    Args:
        image: ``(C, H, W)`` float (normalised: 0 is the mean colour).
        boxes: ``(R, 4)`` float.
        crop_size: ``S``.

    Returns:
        ``(R, C, S, S)`` of the image's dtype.
    """
    _, h, w = image.shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    steps = (np.arange(crop_size) + 0.5) / crop_size
    xs = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1]) - 0.5  # (R, S)
    ys = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2]) - 0.5
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))  # a ring of zeros: index -1 and H / W

    def corners(v, size):
        v = np.clip(v, -1.0, float(size)) + 1.0  # in padded indices [0, size + 1]
        lo = np.floor(v).astype(np.int64)
        hi = np.minimum(lo + 1, size + 1)
        return lo, hi, v - lo

    x0, x1, lx = corners(xs, w)
    y0, y1, ly = corners(ys, h)
    yy0, yy1 = y0[:, :, None], y1[:, :, None]  # (R, S, 1) rows
    xx0, xx1 = x0[:, None, :], x1[:, None, :]  # (R, 1, S) columns
    wy, wx = ly[:, :, None], lx[:, None, :]
    out = (
        padded[:, yy0, xx0] * ((1 - wy) * (1 - wx))
        + padded[:, yy0, xx1] * ((1 - wy) * wx)
        + padded[:, yy1, xx0] * (wy * (1 - wx))
        + padded[:, yy1, xx1] * (wy * wx)
    )  # (C, R, S, S)
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3)).astype(image.dtype)


# ----------------------------------------------------------------------------- the crop classifier


class ClassifierCache(NamedTuple):
    """What :func:`classifier_backward` needs."""

    map_shape: tuple  # (R, C, h, w) of the crops' feature maps
    box: BoxHeadCache  # the fc layers' caches


def classifier_forward(params, features, *, dropout=0.0, rng=None, backend=None):
    """The crops' feature maps -> class scores and per-class deltas (the RoI head's fc layers
    applied to a crop's *whole* map, where Fast R-CNN applies them to a RoI pooled from a map).

    Args:
        params: ``head.*`` of :func:`minirccn.detector.roi_heads.box_head.init_head` with
            ``roi_output_size`` = the crops' map side.
        features: ``(R, C, h, w)``.

    Returns:
        ``(class_logits (R, K), box_deltas (R, 4K), ClassifierCache)``.
    """
    x = features.reshape(features.shape[0], -1)
    logits, deltas, box = box_head_forward(params, x, dropout=dropout, rng=rng, backend=backend)
    return logits, deltas, ClassifierCache(features.shape, box)


def classifier_backward(dlogits, ddeltas, cache: ClassifierCache):
    """Backward of :func:`classifier_forward`: ``(dfeatures (R, C, h, w), grads of head.*)``."""
    dx, grads = box_head_backward(dlogits, ddeltas, cache.box)
    return dx.reshape(cache.map_shape), grads


class RCNNCache(NamedTuple):
    """What :meth:`RCNN.backward` needs (None fields: a batch without RoIs)."""

    backbone: object
    classifier: ClassifierCache | None
    d_class_logits: object
    d_box_deltas: object
    samples: Samples


# ----------------------------------------------------------------------------- the model


class RCNN(ExternalProposals, Detector):
    """R-CNN (module docstring): a one-level backbone and the fc classifier on each warped
    proposal crop, proposals from outside (``source``).

    Attributes:
        backbone: the crops' :class:`~minirccn.detector.backbones.levels.SingleLevel` CNN.
        proposal_targets: the RoI sampler (the config's ``box_*`` numbers, as Faster R-CNN's
            head samples).
        postprocess: the :class:`~minirccn.detector.roi_heads.postprocess.BoxPostprocess`.
        crop_size, map_size: the side of a crop and of its feature map.
    """

    LOSS_NAMES = ("loss_classifier", "loss_box_reg")
    PARAM_PREFIXES = ("backbone.", "head.")
    #: crops per CNN batch at inference (memory bound, not a result-changing number)
    CHUNK = 256

    def build(self) -> None:
        cfg = self.config
        self.backbone = SingleLevel(backbone_spec(cfg))
        s = self.backbone.strides[0]
        if cfg.rcnn_crop_size % s:
            raise ValueError(
                f"rcnn_crop_size: {cfg.rcnn_crop_size} is not a multiple of the backbone stride {s}"
            )
        self.proposal_targets = ProposalTargetCreator.from_config(cfg)
        self.postprocess = BoxPostprocess.from_config(cfg)

    @property
    def crop_size(self) -> int:
        return self.config.rcnn_crop_size

    @property
    def map_size(self) -> int:
        return self.crop_size // self.backbone.strides[0]

    @classmethod
    def init_params(cls, config, num_classes: int, rng) -> dict:
        """Backbone, then the fc layers on a crop's ``(C, S/s, S/s)`` map, drawn from ``rng``."""
        dtype = np.dtype(config.dtype)
        backbone = SingleLevel(backbone_spec(config))
        params = backbone.init(rng, dtype)
        side = config.rcnn_crop_size // backbone.strides[0]
        params.update(
            init_head(backbone.out_channels, num_classes, config.representation_size, rng, side, dtype)
        )
        return params

    def crops(self, x, boxes) -> np.ndarray:
        """``(R, 3, S, S)`` warped crops (with context) of boxes ``(R, 4)`` of image ``x (3, H, W)``."""
        cfg = self.config
        return warp_crops(
            x,
            context_boxes(boxes, cfg.rcnn_crop_size, cfg.rcnn_context_padding),
            cfg.rcnn_crop_size,
        )

    def _features(self, crops, train: bool, backend):
        maps, cache = self.backbone.forward(self.params, crops, train, backend)
        return maps[0], cache

    def detect(self, images, image_sizes, backend=None, proposals=None) -> list:
        """Each image ``(3, H, W)`` of the batch: one CNN pass per proposal crop (in chunks)."""
        backend = resolve(backend, images)
        xp = array_module(backend)
        out = []
        for i, props in enumerate(proposals):
            x = to_numpy(images[i])
            props = to_numpy(props)
            logits, deltas = [], []
            for start in range(0, len(props), self.CHUNK):
                crops = xp.asarray(self.crops(x, props[start : start + self.CHUNK]))
                feats, _ = self._features(crops, False, backend)
                lg, dl, _ = classifier_forward(self.params, feats, backend=backend)
                logits.append(lg)
                deltas.append(dl)
            out.append(
                self.postprocess(
                    xp.concatenate(logits),
                    xp.concatenate(deltas),
                    xp.asarray(props),
                    image_sizes[i],
                    backend=backend,
                )
            )
        return out

    def forward(self, batch, rng, *, backend=None, batch_stats: bool = True, samples=None):
        """Training forward: sample RoIs per image, warp each to a crop, classify the crops.

        Args:
            batch: a :class:`~minirccn.data.batching.Batch` with ``proposals`` (``N`` arrays
                ``(P_i, 4)``); the images are cut on the host.
            rng: draws the RoI samples (image by image) and the dropout masks.
            batch_stats: batch norm over the batch of crops (else the running statistics).
            samples: an earlier call's :class:`~minirccn.detector.base.Samples` to reuse.

        Returns:
            ``(losses, cache)``: ``loss_classifier``, ``loss_box_reg`` (floats), an
            :class:`RCNNCache` for :meth:`backward` (``cache.samples``: the choices made).
        """
        backend = resolve(backend)
        xp = array_module(backend)
        images = to_numpy(batch.images)
        if samples is None:
            rois, labels, regression = sample_rois(
                self.proposal_targets,
                [to_numpy(p) for p in batch.proposals],
                batch.targets,
                rng,
                self.config.dtype,
            )
            samples = Samples(None, None, rois, labels, regression)
        rois = samples.rois
        if rois.shape[0] == 0:  # no ground truth and no proposal: nothing to learn from
            return {"loss_classifier": 0.0, "loss_box_reg": 0.0}, RCNNCache(None, None, None, None, samples)
        # crops grouped by image in sample_rois' order (image 0's RoIs first), as the labels are
        crops = np.concatenate(
            [self.crops(images[n], rois[rois[:, 0] == n, 1:]) for n in range(images.shape[0])]
        )
        feats, bb_cache = self._features(xp.asarray(crops), batch_stats, backend)
        cfg = self.config
        logits, deltas, cl_cache = classifier_forward(
            self.params, feats, dropout=cfg.dropout, rng=rng, backend=backend
        )
        loss_cls, loss_box, d_cls, d_box = head_losses(
            logits,
            deltas,
            xp.asarray(samples.roi_labels),
            xp.asarray(samples.roi_targets),
            beta=cfg.box_beta,
        )
        cache = RCNNCache(bb_cache, cl_cache, d_cls, d_box, samples)
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}, cache

    def backward(self, cache: RCNNCache) -> dict:
        """Gradients of the summed losses: classifier fc layers, then the backbone (over the
        crops); ``{}`` for a batch without RoIs."""
        if cache.classifier is None:
            return {}
        dfeatures, grads = classifier_backward(
            cache.d_class_logits, cache.d_box_deltas, cache.classifier
        )
        grads.update(self.backbone.backward([dfeatures], cache.backbone))
        return grads
