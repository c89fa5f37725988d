"""The one table from (op, backend) to the function that runs it.

Every public op (:mod:`minirccn.ops`) and the conv / pooling layers
(:mod:`minirccn.nn.conv`, :mod:`minirccn.nn.pool`) validate their arguments,
resolve the backend (:func:`minirccn.core.backend.resolve`), then call
``kernel(op, backend)(...)``: no op chooses its implementation by hand.

* ``numpy`` maps to the reference (the specification), ``numba`` and ``cuda`` to
  the kernels of :mod:`minirccn.kernels` (see its docstring for their
  convention). All the implementations of an op take the same arguments and
  return the same things: those of the reference named in its row.
* ``cudac`` is not a backend that ops accept: it names the CUDA C twins
  (``kernels/cuda/*.cu`` as CuPy ``RawKernel`` s, real GPU only), so that
  benchmarks and the GPU tests reach them through the same table.
* Ops that are cheap elementwise work run their reference on every backend (on
  CuPy arrays for ``cuda`` on a GPU); giving one a kernel is one line here.

Targets are ``"module:function"`` strings, imported on first use, so importing
minirccn imports neither Numba nor CuPy. Adding a backend or an op touches this
table (and the new functions), nothing else.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

from minirccn.core.backend import BACKENDS

#: implementations the table may name: the backends ops accept, then the CUDA C twins
IMPLEMENTATIONS = (*BACKENDS, "cudac")

_BOXES = "minirccn.ops.boxes"
_BOX_CODER = "minirccn.ops.box_coder"
_NMS = "minirccn.ops.nms"
_ROI_POOL = "minirccn.ops.roi_pool"
_ROI_ALIGN = "minirccn.ops.roi_align"
_CONV = "minirccn.nn.conv"
_CONV_LEVELS = "minirccn.nn.conv_levels"
_POOL = "minirccn.nn.pool"
_LAYERS = "minirccn.nn.layers"


def _everywhere(target: str) -> dict[str, str]:
    """The same function (a reference) on every backend."""
    return dict.fromkeys(BACKENDS, target)


#: op -> {implementation: "module:function"}; every row's numpy entry is the reference
TABLE: dict[str, dict[str, str]] = {
    # minirccn.ops.boxes
    "box_area": _everywhere(f"{_BOXES}:box_area_reference"),
    "box_iou": {
        "numpy": f"{_BOXES}:box_iou_reference",
        "numba": "minirccn.kernels.boxes:box_iou_numba",
        "cuda": "minirccn.kernels.boxes:box_iou_cuda",
    },
    "clip_boxes": _everywhere(f"{_BOXES}:clip_boxes_reference"),
    "remove_small_boxes": _everywhere(f"{_BOXES}:remove_small_boxes_reference"),
    # minirccn.ops.box_coder
    "encode_boxes": _everywhere(f"{_BOX_CODER}:encode_boxes_reference"),
    "decode_boxes": _everywhere(f"{_BOX_CODER}:decode_boxes_reference"),
    # minirccn.ops.nms: nms and batched_nms sort by score, then run this walk
    "nms_sorted": {
        "numpy": f"{_NMS}:nms_sorted_reference",
        "numba": "minirccn.kernels.nms:nms_sorted_numba",
        "cuda": "minirccn.kernels.nms:nms_sorted_cuda",
        "cudac": "minirccn.kernels.nms:nms_sorted_cudac",
    },
    # minirccn.ops.roi_pool: the bins come from roi_bins on every backend
    "roi_pool": {
        "numpy": f"{_ROI_POOL}:roi_pool_bins_reference",
        "numba": "minirccn.kernels.roi_pool:roi_pool_numba",
        "cuda": "minirccn.kernels.roi_pool:roi_pool_cuda",
        "cudac": "minirccn.kernels.roi_pool:roi_pool_cudac",
    },
    "roi_pool_backward": {
        "numpy": f"{_ROI_POOL}:roi_pool_backward_reference",
        "numba": "minirccn.kernels.roi_pool:roi_pool_backward_numba",
        "cuda": "minirccn.kernels.roi_pool:roi_pool_backward_cuda",
        "cudac": "minirccn.kernels.roi_pool:roi_pool_backward_cudac",
    },
    # minirccn.ops.roi_align: the sample tables come from sample_tables on every backend
    "roi_align": {
        "numpy": f"{_ROI_ALIGN}:roi_align_tables_reference",
        "numba": "minirccn.kernels.roi_align:roi_align_numba",
        "cuda": "minirccn.kernels.roi_align:roi_align_cuda",
        "cudac": "minirccn.kernels.roi_align:roi_align_cudac",
    },
    "roi_align_backward": {
        "numpy": f"{_ROI_ALIGN}:roi_align_backward_tables_reference",
        "numba": "minirccn.kernels.roi_align:roi_align_backward_numba",
        "cuda": "minirccn.kernels.roi_align:roi_align_backward_cuda",
        "cudac": "minirccn.kernels.roi_align:roi_align_backward_cudac",
    },
    # minirccn.proposals.segmentation: sequential union-find, a CPU kernel on every backend
    "felzenszwalb": {
        "numpy": "minirccn.proposals.segmentation:felzenszwalb_reference",
        "numba": "minirccn.kernels.segmentation:felzenszwalb_numba",
        "cuda": "minirccn.kernels.segmentation:felzenszwalb_numba",
    },
    # minirccn.nn.conv: the reference is im2col + GEMM (forward), GEMM + col2im (backward)
    "conv2d": {
        "numpy": f"{_CONV}:conv2d_reference",
        "numba": "minirccn.kernels.conv:conv2d_numba",
        "cuda": "minirccn.kernels.conv:conv2d_cuda",
    },
    "conv2d_backward": {
        "numpy": f"{_CONV}:conv2d_backward_reference",
        "numba": "minirccn.kernels.conv:conv2d_backward_numba",
        "cuda": "minirccn.kernels.conv:conv2d_backward_cuda",
    },
    # the conv and a ReLU after it, fused (the bias pass writes max(., 0); the backward masks
    # dout by out > 0, read off the output: no mask kept)
    "conv2d_relu": {
        "numpy": f"{_CONV}:conv2d_relu_reference",
        "numba": "minirccn.kernels.conv:conv2d_relu_numba",
        "cuda": "minirccn.kernels.conv:conv2d_relu_cuda",
    },
    "conv2d_relu_backward": {
        "numpy": f"{_CONV}:conv2d_relu_backward_reference",
        "numba": "minirccn.kernels.conv:conv2d_relu_backward_numba",
        "cuda": "minirccn.kernels.conv:conv2d_relu_backward_cuda",
    },
    # minirccn.nn.conv_levels: one conv over every level of a pyramid (packed side by side)
    "conv2d_levels": {
        "numpy": f"{_CONV_LEVELS}:conv2d_levels_reference",
        "numba": "minirccn.kernels.conv_levels:conv2d_levels_numba",
        "cuda": f"{_CONV_LEVELS}:conv2d_levels_reference",
    },
    "conv2d_levels_backward": {
        "numpy": f"{_CONV_LEVELS}:conv2d_levels_backward_reference",
        "numba": "minirccn.kernels.conv_levels:conv2d_levels_backward_numba",
        "cuda": f"{_CONV_LEVELS}:conv2d_levels_backward_reference",
    },
    # minirccn.detector.matching: host NumPy work of the targets (every backend's host arrays)
    "match": {
        "numpy": "minirccn.detector.matching:match_reference",
        "numba": "minirccn.kernels.matching:match_numba",
        "cuda": "minirccn.detector.matching:match_reference",
    },
    # minirccn.nn.losses: RetinaNet's focal loss over labelled anchors in one pass
    "labeled_focal_loss": {
        "numpy": "minirccn.nn.losses:labeled_focal_loss_reference",
        "numba": "minirccn.kernels.losses:labeled_focal_loss_numba",
        "cuda": "minirccn.nn.losses:labeled_focal_loss_reference",
    },
    # minirccn.nn.layers: fused one-pass CPU kernels; CuPy runs the references on the GPU
    "relu": {
        "numpy": f"{_LAYERS}:relu_reference",
        "numba": "minirccn.kernels.layers:relu_numba",
        "cuda": f"{_LAYERS}:relu_reference",
    },
    "relu_backward": {
        "numpy": f"{_LAYERS}:relu_backward_reference",
        "numba": "minirccn.kernels.layers:relu_backward_numba",
        "cuda": f"{_LAYERS}:relu_backward_reference",
    },
    "linear": {
        "numpy": f"{_LAYERS}:linear_reference",
        "numba": "minirccn.kernels.layers:linear_numba",
        "cuda": f"{_LAYERS}:linear_reference",
    },
    "linear_backward": {
        "numpy": f"{_LAYERS}:linear_backward_reference",
        "numba": "minirccn.kernels.layers:linear_backward_numba",
        "cuda": f"{_LAYERS}:linear_backward_reference",
    },
    "batchnorm2d": {
        "numpy": f"{_LAYERS}:batchnorm2d_reference",
        "numba": "minirccn.kernels.layers:batchnorm2d_numba",
        "cuda": f"{_LAYERS}:batchnorm2d_reference",
    },
    "batchnorm2d_backward": {
        "numpy": f"{_LAYERS}:batchnorm2d_backward_reference",
        "numba": "minirccn.kernels.layers:batchnorm2d_backward_numba",
        "cuda": f"{_LAYERS}:batchnorm2d_backward_reference",
    },
    "batchnorm2d_relu": {
        "numpy": f"{_LAYERS}:batchnorm2d_relu_reference",
        "numba": "minirccn.kernels.layers:batchnorm2d_relu_numba",
        "cuda": f"{_LAYERS}:batchnorm2d_relu_reference",
    },
    "batchnorm2d_relu_backward": {
        "numpy": f"{_LAYERS}:batchnorm2d_relu_backward_reference",
        "numba": "minirccn.kernels.layers:batchnorm2d_relu_backward_numba",
        "cuda": f"{_LAYERS}:batchnorm2d_relu_backward_reference",
    },
    # minirccn.nn.pool
    "max_pool2d": {
        "numpy": f"{_POOL}:max_pool2d_reference",
        "numba": "minirccn.kernels.pool:max_pool2d_numba",
        "cuda": "minirccn.kernels.pool:max_pool2d_cuda",
    },
    "max_pool2d_backward": {
        "numpy": f"{_POOL}:max_pool2d_backward_reference",
        "numba": "minirccn.kernels.pool:max_pool2d_backward_numba",
        "cuda": "minirccn.kernels.pool:max_pool2d_backward_cuda",
    },
}

#: the same table, flat: ``(op, implementation) -> "module:function"``
KERNELS: dict[tuple[str, str], str] = {
    (op, impl): target for op, row in TABLE.items() for impl, target in row.items()
}


def kernel(op: str, backend: str) -> Callable:
    """The function that runs ``op`` on ``backend`` (imported on first use).

    Args:
        op: a key of :data:`TABLE`, e.g. ``"box_iou"``.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` (already resolved: see
            :func:`minirccn.core.backend.resolve`) or ``"cudac"``.

    Raises:
        NotImplementedError: the table has no such pair (the message lists what it has).
    """
    try:
        target = KERNELS[op, backend]
    except KeyError:
        if op not in TABLE:
            raise NotImplementedError(
                f"no op {op!r} in minirccn.core.dispatch.TABLE (ops: {', '.join(TABLE)})"
            ) from None
        raise NotImplementedError(
            f"op {op!r} has no {backend!r} implementation in minirccn.core.dispatch.TABLE "
            f"(it has: {', '.join(TABLE[op])})"
        ) from None
    return _load(target)


@functools.cache
def _load(target: str) -> Callable:
    """``"package.module:function"`` -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
