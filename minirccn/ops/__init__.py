"""The public op API: torchvision.ops semantics on three backends.

Each op validates its arguments, picks a backend (see :mod:`minirccn.core.backend`)
and runs either the NumPy reference (the specification, in the module named
below) or a fast kernel from :mod:`minirccn.kernels` that is tested against it.

=====================  =========================
op                     reference lives in
=====================  =========================
box_area, box_iou,     :mod:`minirccn.ops.boxes`
clip_boxes,
remove_small_boxes
encode_boxes,          :mod:`minirccn.ops.box_coder`
decode_boxes
nms, batched_nms       :mod:`minirccn.ops.nms`
roi_pool,              :mod:`minirccn.ops.roi_pool`
roi_pool_backward
roi_align,             :mod:`minirccn.ops.roi_align`
roi_align_backward
=====================  =========================
"""

from minirccn.ops.box_coder import decode_boxes, encode_boxes
from minirccn.ops.boxes import box_area, box_iou, clip_boxes, remove_small_boxes
from minirccn.ops.nms import batched_nms, nms
from minirccn.ops.roi_align import roi_align, roi_align_backward
from minirccn.ops.roi_pool import roi_pool, roi_pool_backward

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes",
    "remove_small_boxes",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "roi_pool",
    "roi_pool_backward",
    "roi_align",
    "roi_align_backward",
]
