"""Fast kernels for the hot ops, installed as ``minirccn.kernels``.

One module per reference module, with the same stem::

    kernels/boxes.py     <->  minirccn/ops/boxes.py       box_iou
    kernels/nms.py       <->  minirccn/ops/nms.py         nms_sorted (nms, batched_nms)
    kernels/roi_pool.py  <->  minirccn/ops/roi_pool.py    roi_pool, roi_pool_backward
    kernels/roi_align.py <->  minirccn/ops/roi_align.py   roi_align, roi_align_backward
    kernels/conv.py      <->  minirccn/nn/conv.py         conv2d, conv2d_backward (im2col, col2im)
    kernels/pool.py      <->  minirccn/nn/pool.py         max_pool2d, max_pool2d_backward
    kernels/layers.py    <->  minirccn/nn/layers.py       relu, linear, batchnorm2d (and backwards)
    kernels/segmentation.py <-> minirccn/proposals/segmentation.py   felzenszwalb
    kernels/cuda/<stem>.cu                                the CUDA C twins (nms, roi_pool, roi_align)
    kernels/_launch.py                                    what every module shares

The convention every module follows
-----------------------------------

* **Names.** The public entry points of op ``<op>`` are ``<op>_numba`` (Numba on
  the CPU), ``<op>_cuda`` (Numba-CUDA: CuPy arrays on a GPU, NumPy arrays in the
  simulator) and, where a CUDA C twin exists in ``cuda/<stem>.cu``,
  ``<op>_cudac`` (that file's kernel loaded as a CuPy ``RawKernel``; real GPU
  only). The jitted bodies they launch are private (``_<name>``, decorated
  ``@numba.njit`` or ``@cuda.jit``).
* **Signatures.** Every entry point of an op takes the arguments of that op's
  NumPy reference (named in the table of :mod:`minirccn.core.dispatch`) and returns
  what it returns, so the reference and the kernels are interchangeable.
* **Outputs.** Entry points take only inputs; they ALLOCATE AND RETURN their
  outputs, with the array module of their inputs
  (:func:`~minirccn.kernels._launch.array_module`), and make their inputs
  contiguous themselves.
* **Launches.** One thread per output item, :data:`~minirccn.kernels._launch.THREADS`
  threads per block, ``blocks(n)`` blocks
  (:func:`~minirccn.kernels._launch.blocks`), the flat index split with
  :func:`~minirccn.kernels._launch.unravel4`. Kernels whose thread layout *is*
  the algorithm say so and keep their own block shape (the 64-box tiles of
  the NMS mask, the 16x16 tiles of pairwise IoU).
* **CUDA C** is loaded only through :func:`~minirccn.kernels._launch.raw_kernel`
  (``raw_kernel("nms", "nms_mask", dtype)`` is ``nms_mask_f32`` or
  ``nms_mask_f64`` of ``cuda/nms.cu``), compiled once per file with
  :data:`~minirccn.kernels._launch.CUDA_OPTIONS`; the tests compile every ``.cu``
  file with ``nvcc -ptx`` and the same options.
* **Which runs.** Ops never import this package directly: they look the
  implementation up in the one table :data:`minirccn.core.dispatch.KERNELS`
  (``kernel(op, backend)``), which is resolved lazily so that importing
  minirccn does not import Numba.

Kernels never import the model nor the ops they speed up (only
:mod:`minirccn.core.backend`): they take plain arrays and return plain arrays, and
contain no logic that the NumPy reference lacks.
"""
