"""The two-stage detectors' last step: the head's scores and deltas -> final detections.

Per image (torchvision's ``RoIHeads.postprocess_detections``): ``softmax`` over classes;
each RoI's box decoded once per class (weights ``bbox_reg_weights``) and clipped; the
background column dropped; keep ``score > score_thresh`` and boxes at least 0.01 px wide;
NMS per class (``batched_nms``); the ``detections_per_img`` best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.core.backend import get_array_module, to_numpy


@dataclass(frozen=True)
class BoxPostprocess:
    """The inference numbers of the box head, built once (:meth:`from_config`), called with data.

    Args:
        score_thresh: detections need a class probability ``>`` this.
        nms_thresh: per-class NMS IoU threshold.
        detections_per_img: detections kept per image.
        weights: box coder weights ``(wx, wy, ww, wh)``.
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    weights: tuple = (10.0, 10.0, 5.0, 5.0)

    @classmethod
    def from_config(cls, config) -> "BoxPostprocess":
        """``box_score_thresh``, ``box_nms_thresh``, ``box_detections_per_img``, ``bbox_reg_weights``."""
        fields = prefixed(config, "box_", "score_thresh", "nms_thresh", "detections_per_img")
        return cls(**fields, weights=tuple(config.bbox_reg_weights))

    def __call__(self, class_logits, box_deltas, proposals, image_size, backend=None) -> dict:
        """Final detections of one image (module docstring).

        Args:
            class_logits: ``(R, K)`` float; box_deltas: ``(R, 4K)`` float.
            proposals: ``(R, 4)`` float boxes the head looked at.
            image_size: ``(height, width)`` to clip to.

        Returns:
            dict ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int64 (host NumPy arrays).
        """
        xp = get_array_module(class_logits)
        r, k = class_logits.shape
        z = class_logits - class_logits.max(axis=1, keepdims=True)
        e = xp.exp(z)
        scores = e / e.sum(axis=1, keepdims=True)  # (R, K)
        boxes = ops.decode_boxes(
            box_deltas.reshape(r * k, 4),
            xp.repeat(proposals, k, axis=0),
            self.weights,
            backend=backend,
        )
        boxes = ops.clip_boxes(boxes, image_size, backend=backend).reshape(r, k, 4)
        labels = xp.broadcast_to(xp.arange(k, dtype=xp.int64)[None, :], (r, k))
        boxes, scores, labels = (
            boxes[:, 1:].reshape(-1, 4),
            scores[:, 1:].reshape(-1),
            labels[:, 1:].reshape(-1),
        )
        keep = xp.nonzero(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.remove_small_boxes(boxes, 1e-2, backend=backend)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh, backend=backend)
        keep = keep[: self.detections_per_img]
        return {
            "boxes": to_numpy(boxes[keep]),
            "scores": to_numpy(scores[keep]),
            "labels": to_numpy(labels[keep]).astype(np.int64),
        }

