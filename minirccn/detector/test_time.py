"""Test-time augmentation: the horizontal flip.

With ``config.test_flip`` on, :meth:`~minirccn.detector.base.Detector.predict` runs
:meth:`detect` twice, on the input and on its mirror image, maps the mirror's boxes back and
merges the two lists as the postprocess merges one: class-wise NMS at the model's own
``nms_thresh``, then its ``detections_per_img`` best (the postprocess object owns both
numbers). An object the network sees better from one side is found by that side; the same
object found by both is one box after the NMS (the higher-scoring of the two), so the merge
adds recall and never doubles a detection. It costs a second inference.

The mirror of the box ``(x1, y1, x2, y2)`` in an input ``W`` pixels wide is
``(W - x2, y1, W - x1, y2)``: pixel column ``j`` (covering ``[j, j + 1)``) goes to column
``W - 1 - j`` (covering ``[W - 1 - j, W - j)``), so a box edge at ``x`` goes to ``W - x``;
mirroring twice gives the box back.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops

__all__ = ["mirror_boxes", "merge_detections"]


def mirror_boxes(boxes, width):
    """Boxes of an image in its mirror image (flipped left-right).

    Args:
        boxes: ``(N, 4)`` float ``(x1, y1, x2, y2)`` in pixels of an input ``width`` wide.
        width: the input's width ``W`` in pixels (before any padding).

    Returns:
        ``(N, 4)``, the dtype of ``boxes``: ``(W - x2, y1, W - x1, y2)``.
    """
    boxes = np.asarray(boxes)
    w = boxes.dtype.type(width) if boxes.dtype.kind == "f" else width
    return np.stack(
        [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1
    ).astype(boxes.dtype, copy=False)


def merge_detections(dets, nms_thresh, detections_per_img, backend="numpy") -> dict:
    """One image's detections from several passes merged into one list.

    Args:
        dets: list of dicts ``boxes`` ``(D_i, 4)`` float, ``scores`` ``(D_i,)`` float,
            ``labels`` ``(D_i,)`` int, all in the same pixel coordinates.
        nms_thresh: class-wise NMS IoU threshold (a box is dropped when a higher-scoring box of
            its class overlaps it by IoU > ``nms_thresh``).
        detections_per_img: at most this many are kept, the best first.
        backend: backend of the NMS.

    Returns:
        dict ``boxes`` ``(D, 4)``, ``scores`` ``(D,)`` (decreasing), ``labels`` ``(D,)``,
        ``D <= min(sum D_i, detections_per_img)``: the concatenation, then
        ``batched_nms`` (ties in score keep the earlier pass's box first), then the first
        ``detections_per_img``.
    """
    boxes = np.concatenate([np.asarray(d["boxes"]).reshape(-1, 4) for d in dets])
    scores = np.concatenate([np.asarray(d["scores"]).reshape(-1) for d in dets])
    labels = np.concatenate([np.asarray(d["labels"]).reshape(-1) for d in dets])
    keep = ops.batched_nms(boxes, scores, labels, nms_thresh, backend=backend)
    keep = np.asarray(keep)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
