"""Worked solutions of tutorial 9's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numba
import numpy as np

from minirccn import ops
from minirccn.app import bench


@numba.njit(parallel=True)
def _scatter_rows(idx, values, n_cells, n_threads):
    private = np.zeros((n_threads, n_cells), dtype=values.dtype)
    for k in numba.prange(idx.shape[0]):
        private[numba.get_thread_id(), idx[k]] += values[k]  # each thread writes its own row
    return private.sum(axis=0)


def scatter_private(idx, values, out):
    out[:] = _scatter_rows(idx, values, out.shape[0], numba.get_num_threads())


def time_box_iou(n, backend):
    rng = np.random.default_rng(n)
    b1, b2 = bench.random_boxes(rng, n), bench.random_boxes(rng, n)
    ops.box_iou(b1, b2, backend=backend)  # warm-up (compiles on first use)
    return bench.time_call(lambda: ops.box_iou(b1, b2, backend=backend), min_time=0.05)["median"]


def chain_example():
    # A-B and B-C overlap by IoU 7/13 = 0.54 > 0.5, A-C by 0.25: greedy drops B (kept A
    # suppresses it) and then keeps C; the parallel rule also drops C (B scores higher)
    boxes = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], dtype=np.float64)
    return boxes, np.array([0.9, 0.8, 0.7])
