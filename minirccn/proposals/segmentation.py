"""Felzenszwalb-Huttenlocher graph segmentation: the first step of selective search.

Felzenszwalb & Huttenlocher, "Efficient Graph-Based Image Segmentation", IJCV 2004.
Every pixel is a vertex; edges join each pixel to its 8 neighbours, weighted by
how different the two (Gaussian-smoothed) colours are. The edges are visited
from the lightest up; an edge joins its two components ``A`` and ``B`` when it
is no heavier than both components' internal difference plus a size term::

    w(a, b) <= min(Int(A) + k / |A|,  Int(B) + k / |B|)

``Int(C)`` is the heaviest edge of ``C``'s minimum spanning tree; since the
edges come sorted, that is the weight of the edge that made ``C``. ``k`` sets
the scale: a large ``k`` prefers large components (``k / |C|`` lets a small
component swallow heavy edges). Afterwards every component smaller than
``min_size`` pixels is merged, edge by edge in the same order, into its
neighbour.

The steps, each a function below:

1. :func:`gaussian_smooth`: a separable Gaussian blur (``sigma``; ``sigma=0``:
   none), edges replicated.
2. :func:`grid_graph`: the 8-neighbour grid graph. Edge order (it decides the
   order of equal weights): pixels in raster order, each with its forward edges
   right, down, down-right, down-left; weight = Euclidean distance of the
   smoothed colours, ``sqrt(sum_c (I_c(a) - I_c(b))^2)`` in float64, summed over
   the channels in order.
3. :func:`segment_graph_reference`: a stable sort of the weights, then
   union-find (union by rank, path halving) with the threshold rule, then the
   ``min_size`` pass. Written as a plain Python loop: it is inherently
   sequential and this is the specification.
4. :func:`relabel`: component ids renumbered ``0..n-1`` in the raster order of
   their first pixel, so the labels do not depend on which pixel union-find
   chose as a root (the Numba kernel and the reference give the same labels).

:func:`felzenszwalb` runs them; ``backend="numba"`` runs steps 2-4 in one
compiled kernel (:mod:`minirccn.kernels.segmentation`, looked up in
:mod:`minirccn.core.dispatch`), which is tested equal to the reference label for label.
"""

from __future__ import annotations

import numpy as np

from minirccn.core.backend import BACKENDS
from minirccn.core.dispatch import kernel

#: forward neighbours of a pixel, (dy, dx), in the order their edges are listed
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))``, ``x = -r..r``, ``r = ceil(4 sigma)``.

    Returns:
        ``(2r + 1,)`` float64 summing to 1 (``[1.0]`` for ``sigma <= 0``).
    """
    if sigma <= 0:
        return np.ones(1)
    r = int(np.ceil(4.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def convolve_separable(image: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """Correlate every channel with ``ky`` along rows then ``kx`` along columns, edges replicated.

    Args:
        image: ``(H, W, C)`` float64.
        ky, kx: odd-length 1-D float64 kernels (centre in the middle).

    Returns:
        ``(H, W, C)`` float64: ``out[y, x] = sum_i sum_j ky[i] kx[j] image[y + i - ry, x + j - rx]``.
    """
    ry, rx = len(ky) // 2, len(kx) // 2
    h, w = image.shape[:2]
    padded = np.pad(image, ((ry, ry), (0, 0), (0, 0)), mode="edge")
    rows = sum(ky[i] * padded[i : i + h] for i in range(len(ky)))
    padded = np.pad(rows, ((0, 0), (rx, rx), (0, 0)), mode="edge")
    return sum(kx[j] * padded[:, j : j + w] for j in range(len(kx)))


def gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` blurred by a Gaussian of ``sigma`` pixels (separable, edges replicated).

    Args:
        image: ``(H, W, C)`` any real dtype.

    Returns:
        ``(H, W, C)`` float64.
    """
    image = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return image.copy()
    g = gaussian_kernel(sigma)
    return convolve_separable(image, g, g)


def grid_graph(smoothed: np.ndarray):
    """The 8-neighbour grid graph of an image (see the module docstring for the edge order).

    Args:
        smoothed: ``(H, W, C)`` float64.

    Returns:
        ``(a, b, w)``: ``(E,)`` int64 flat pixel indices ``y * W + x`` of each edge's two
        ends and ``(E,)`` float64 weights; ``E = 4HW - 3H - 3W + 2`` for ``H, W >= 1``.
    """
    h, w = smoothed.shape[:2]
    idx = np.arange(h * w, dtype=np.int64).reshape(h, w)
    ends_a, ends_b, weights, valid = [], [], [], []
    for dy, dx in NEIGHBOURS:
        # neighbour (y + dy, x + dx) of every pixel; edge-replicated where it falls outside
        ys = np.minimum(np.arange(h) + dy, h - 1)
        xs = np.clip(np.arange(w) + dx, 0, w - 1)
        ok = (
            ((np.arange(h) + dy < h)[:, None])
            & ((np.arange(w) + dx >= 0) & (np.arange(w) + dx < w))[None, :]
        )
        other = smoothed[ys][:, xs]
        acc = np.zeros((h, w))
        for c in range(smoothed.shape[2]):
            d = smoothed[:, :, c] - other[:, :, c]
            acc = acc + d * d
        ends_a.append(idx)
        ends_b.append(idx[ys][:, xs])
        weights.append(np.sqrt(acc))
        valid.append(ok)
    # (H, W, 4): raster order of the pixels, then the order of NEIGHBOURS
    a, b = np.stack(ends_a, -1), np.stack(ends_b, -1)
    wt, ok = np.stack(weights, -1), np.stack(valid, -1)
    return a[ok], b[ok], wt[ok]


def _find(parent: list, x: int) -> int:
    """Root of ``x`` (path halving: every visited node points to its grandparent)."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def segment_graph_reference(
    num_vertices: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, k: float, min_size: int
) -> np.ndarray:
    """Felzenszwalb-Huttenlocher on a graph: the specification (a plain Python loop).

    Args:
        num_vertices: ``V``.
        a, b: ``(E,)`` int64 edge ends in ``0..V-1``.
        w: ``(E,)`` float64 weights.
        k: scale (``k / |C|`` is added to a component's internal difference).
        min_size: components smaller than this are merged into a neighbour afterwards.

    Returns:
        ``(V,)`` int64: the root of every vertex's component (see :func:`relabel`).
    """
    order = np.argsort(w, kind="stable").tolist()  # lightest first; equal weights in edge order
    a, b, w = a.tolist(), b.tolist(), w.tolist()
    parent = list(range(num_vertices))
    rank = [0] * num_vertices
    size = [1] * num_vertices
    thresh = [float(k)] * num_vertices  # Int(C) + k / |C|, with Int = 0 and |C| = 1

    def union(ra: int, rb: int) -> int:
        if rank[ra] < rank[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        if rank[ra] == rank[rb]:
            rank[ra] += 1
        return ra

    for e in order:
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra != rb and w[e] <= thresh[ra] and w[e] <= thresh[rb]:
            r = union(ra, rb)
            thresh[r] = w[e] + k / size[r]  # Int(A u B) = w: the heaviest MST edge so far
    for e in order:  # small components join the neighbour across their lightest edge
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            union(ra, rb)
    return np.array([_find(parent, v) for v in range(num_vertices)], dtype=np.int64)


def relabel(roots: np.ndarray) -> np.ndarray:
    """Component ids -> ``0..n-1`` in the order of each component's first vertex.

    Args:
        roots: ``(V,)`` int, any id per component.

    Returns:
        ``(V,)`` int64; ``out[0] == 0`` and a new id is always the next one.
    """
    roots = np.asarray(roots).reshape(-1)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def felzenszwalb_reference(smoothed: np.ndarray, k: float, min_size: int) -> np.ndarray:
    """Segment an already smoothed image with the reference: graph, union-find, relabel.

    Args:
        smoothed: ``(H, W, C)`` float64.
        k: scale; min_size: smallest component in pixels.

    Returns:
        ``(H, W)`` int64 labels ``0..n-1`` (raster order of first pixels).
    """
    h, w = smoothed.shape[:2]
    a, b, wt = grid_graph(smoothed)
    roots = segment_graph_reference(h * w, a, b, wt, k, min_size)
    return relabel(roots).reshape(h, w)


def felzenszwalb(
    image, k: float = 100.0, sigma: float = 0.8, min_size: int | None = None, *, backend=None
):
    """Felzenszwalb-Huttenlocher segmentation of an image.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array (any real dtype; weights are in its units).
        k: scale of the threshold ``k / |C|``.
        sigma: Gaussian blur before building the graph (0: none).
        min_size: components smaller than this many pixels are merged away (default ``k``, as
            selective search uses it).
        backend: ``"numpy"`` (the reference) or ``"numba"`` (the kernel); ``None`` or ``"cuda"``
            mean ``"numba"``: segmentation runs on the CPU.

    Returns:
        ``(H, W)`` int64 labels ``0..n-1``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected an (H, W) or (H, W, C) array, got shape {image.shape}")
    if not k >= 0:
        raise ValueError(f"k: expected a number >= 0, got {k}")
    min_size = int(k) if min_size is None else int(min_size)
    smoothed = gaussian_smooth(image, sigma)
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend: unknown backend {backend!r}; choose numpy or numba")
    # segmentation runs on the CPU: None means the Numba kernel, "cuda" runs it too (the table)
    return kernel("felzenszwalb", backend or "numba")(smoothed, float(k), min_size)
