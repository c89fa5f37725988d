"""RetinaNet's inference: per-level candidates, decode, class-wise NMS.

Per image (torchvision's ``RetinaNet.postprocess_detections``): per level, the
``anchor x class`` candidates with sigmoid score ``> score_thresh`` (0.05), the
``topk_candidates`` (1000) best of them, decoded (weights (1, 1, 1, 1)) and clipped; all
levels together, class-wise NMS at ``nms_thresh`` (0.5); the ``detections_per_img`` (100)
best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirccn import ops
from minirccn.core.fields import prefixed
from minirccn.core.backend import get_array_module, to_numpy
from minirccn.detector.rpn.proposal_layer import top_n


@dataclass(frozen=True)
class RetinaNetPostprocess:
    """Detections of one image from per-level scores and deltas (module docstring, "Inference").

    Args:
        score_thresh: candidates need a score ``>`` this.
        topk_candidates: candidates kept per level (best first).
        nms_thresh: class-wise NMS IoU threshold.
        detections_per_img: detections kept.
        weights: box coder weights.
    """

    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    weights: tuple = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def from_config(cls, config) -> "RetinaNetPostprocess":
        """Its ``retina_*`` fields."""
        names = ("score_thresh", "topk_candidates", "nms_thresh", "detections_per_img")
        return cls(**prefixed(config, "retina_", *names))

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
