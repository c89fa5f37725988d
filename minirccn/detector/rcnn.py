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
   (:func:`~minirccn.detector.model.postprocess_detections`).

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

from minirccn.backend import array_module, resolve, to_numpy
from minirccn.detector import backbone as _bb
from minirccn.detector.external import ExternalProposalModel, load_batch_with_proposals
from minirccn.detector.head import (
    BoxHeadCache,
    box_head_backward,
    box_head_forward,
    head_losses,
    init_head,
)
from minirccn.detector.model import Samples, postprocess_detections, sample_rois

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
        params: ``head.*`` of :func:`minirccn.detector.head.init_head` with
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
    backbone: object
    classifier: ClassifierCache
    d_class_logits: object
    d_box_deltas: object


# ----------------------------------------------------------------------------- the model


class RCNN(ExternalProposalModel):
    """R-CNN (module docstring); attributes of
    :class:`~minirccn.detector.external.ExternalProposalModel`, plus ``crop_size`` and
    ``map_size`` (the side of a crop's feature map)."""

    #: crops per CNN batch at inference (memory bound, not a result-changing number)
    CHUNK = 256

    def __init__(self, config, class_names, params=None, rng=None, source=None):
        from minirccn.detector.model import backbone_spec

        s = _bb.stride(backbone_spec(config))
        if config.rcnn_crop_size % s:
            raise ValueError(
                f"rcnn_crop_size: {config.rcnn_crop_size} is not a multiple of the backbone stride {s}"
            )
        super().__init__(config, class_names, params=params, rng=rng, source=source)

    @property
    def crop_size(self) -> int:
        return self.config.rcnn_crop_size

    @property
    def map_size(self) -> int:
        return self.crop_size // self.stride

    @staticmethod
    def init_params(config, num_classes: int, rng) -> dict:
        """Backbone, then the fc layers on a crop's ``(C, S/s, S/s)`` map, drawn from ``rng``."""
        from minirccn.detector.model import backbone_spec

        dtype = np.dtype(config.dtype)
        spec = backbone_spec(config)
        params = _bb.init_backbone(spec, rng, dtype)
        side = config.rcnn_crop_size // _bb.stride(spec)
        params.update(
            init_head(
                _bb.out_channels(spec), num_classes, config.representation_size, rng, side, dtype
            )
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

    def detect(self, x, proposals, backend) -> dict:
        """One preprocessed image ``(3, H, W)``: one CNN pass per proposal crop (in chunks)."""
        backend = resolve(backend)
        xp = array_module(backend)
        logits, deltas = [], []
        for start in range(0, len(proposals), self.CHUNK):
            crops = xp.asarray(self.crops(x, proposals[start : start + self.CHUNK]))
            feats, _ = _bb.backbone_forward(
                self.params, crops, self.backbone_spec, train=False, backend=backend
            )
            lg, dl, _ = classifier_forward(self.params, feats, backend=backend)
            logits.append(lg)
            deltas.append(dl)
        boxes = xp.asarray(proposals)
        return postprocess_detections(
            xp.concatenate(logits),
            xp.concatenate(deltas),
            boxes,
            x.shape[1:],
            self.config,
            backend=backend,
        )

    def losses_and_grads(self, dataset, indices, rng, *, backend, batch_stats=True):
        """One training batch: losses (floats) and gradients of every trainable parameter."""
        images, sizes, targets, proposals = load_batch_with_proposals(
            dataset, indices, self.config, rng, backend, self.source
        )
        losses, cache, _ = rcnn_forward(
            self,
            to_numpy(images),
            sizes,
            targets,
            proposals,
            rng,
            backend=backend,
            batch_stats=batch_stats,
        )
        return losses, rcnn_backward(cache)


def rcnn_forward(
    model: RCNN,
    images,
    image_sizes,
    targets,
    proposals,
    rng,
    *,
    backend=None,
    batch_stats=True,
    samples=None,
):
    """Training forward of R-CNN: sample RoIs per image, warp each to a crop, classify the crops.

    Args:
        model: the detector.
        images: ``(N, 3, H, W)`` normalised images (host NumPy: the crops are cut on the host).
        image_sizes: ``N`` ``(h, w)``; targets: ``N`` dicts ``boxes``, ``labels``;
        proposals: ``N`` arrays ``(P_i, 4)``; all in the images' coordinates.
        rng: draws the RoI samples (image by image) and the dropout masks.
        batch_stats: batch norm over the batch of crops (else the running statistics).
        samples: an earlier call's :class:`~minirccn.detector.model.Samples` to reuse.

    Returns:
        ``(losses, cache, samples)``: ``loss_classifier``, ``loss_box_reg`` (floats), an
        :class:`RCNNCache` for :func:`rcnn_backward`, the samples.
    """
    backend = resolve(backend)
    xp = array_module(backend)
    images = to_numpy(images)
    if samples is None:
        samples = sample_rois(
            model,
            Samples(None, None, None, None, None),
            [to_numpy(p) for p in proposals],
            targets,
            rng,
        )
    rois = samples.rois
    if rois.shape[0] == 0:  # no ground truth and no proposal: nothing to learn from
        return {"loss_classifier": 0.0, "loss_box_reg": 0.0}, None, samples
    # crops grouped by image in sample_rois' order (image 0's RoIs first), as the labels are
    crops = np.concatenate(
        [model.crops(images[n], rois[rois[:, 0] == n, 1:]) for n in range(images.shape[0])]
    )
    feats, bb_cache = _bb.backbone_forward(
        model.params, xp.asarray(crops), model.backbone_spec, train=batch_stats, backend=backend
    )
    cfg = model.config
    logits, deltas, cl_cache = classifier_forward(
        model.params, feats, dropout=cfg.dropout, rng=rng, backend=backend
    )
    loss_cls, loss_box, d_cls, d_box = head_losses(
        logits,
        deltas,
        xp.asarray(samples.roi_labels),
        xp.asarray(samples.roi_targets),
        beta=cfg.box_beta,
    )
    cache = RCNNCache(bb_cache, cl_cache, d_cls, d_box)
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}, cache, samples


def rcnn_backward(cache: RCNNCache) -> dict:
    """Gradients of the summed losses: classifier fc layers, then the backbone (over the crops);
    ``{}`` for a batch without RoIs (``cache`` None)."""
    if cache is None:
        return {}
    dfeatures, grads = classifier_backward(
        cache.d_class_logits, cache.d_box_deltas, cache.classifier
    )
    grads.update(_bb.backbone_backward(dfeatures, cache.backbone))
    return grads
