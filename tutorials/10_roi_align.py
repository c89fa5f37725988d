# %% [markdown]
# # Tutorial 10: RoIAlign, bilinear sampling instead of rounding
#
# RoI max pooling (tutorial 4) rounds twice: the RoI's corners to whole
# feature-map cells, then every bin's edges (floor / ceil). On a stride-16
# map a cell is 16 image pixels, so the pooled window can sit up to half a
# cell (8 pixels) away from the box it stands for, before the bins add their
# own error. For classification that hardly matters; for a precise box (and
# for Mask R-CNN's masks) it does.
#
# **RoIAlign** rounds nothing. Each bin holds a small grid of sample points at
# continuous positions; each sample reads the map by **bilinear
# interpolation** from its 4 neighbouring cells; the bin outputs the mean of
# its samples. This is `torchvision.ops.roi_align`, and what torchvision's
# Faster R-CNN uses (`MultiScaleRoIAlign(output_size=7, sampling_ratio=2)`).
#
# We measure the rounding error, read one sample by hand, rebuild the op with
# loops and compare with `minirccn.ops.roi_align`, look at its backward (each
# sample sends its gradient to 4 cells), see what `aligned=True` changes, and
# put RoI pooling and RoIAlign side by side on the same RoIs.

# %%
import math

import _common as T
import matplotlib.pyplot as plt  # headless: matplotlib picks its Agg backend
import numpy as np

from minirccn import ops
from minirccn.nn import gradcheck
from minirccn.ops.roi_align import (
    roi_align_layer_forward,
    roi_align_layer_backward,
    sample_tables,
)
from minirccn.ops.roi_pool import c_round, roi_bins

rng = np.random.default_rng(10)
STRIDE = 16

# %% [markdown]
# ## 1. How far does rounding move a RoI?
#
# RoI pooling maps an image coordinate `x` to cell `round(x / 16)`. The
# distance between the two is at most half a cell, 8 pixels, and for random
# boxes it is a quarter of a cell (4 pixels) on average, on every corner.
# The bins round again. The RoI below is 11 cells wide (x from 1.5 to 12.5);
# rounded, it covers columns 2 to 13 *inclusive*, and the "+1" makes that
# `roi_w = 12` cells, so each of the 7 bins is `12 / 7 = 1.71` cells wide
# instead of `11 / 7 = 1.57`. Taking `floor` of each bin's start and `ceil` of
# its end, every bin then spans 2 or 3 whole cells (printed below), and
# neighbouring bins share a column.

# %%
corners = rng.uniform(0, 1024, T.pick(100_000, 10_000))
moved = np.abs(c_round(corners / STRIDE) - corners / STRIDE) * STRIDE  # image pixels
print(f"corner moved by rounding: mean {moved.mean():.2f} px, max {moved.max():.2f} px")
T.check(
    moved.max() <= STRIDE / 2 and abs(moved.mean() - STRIDE / 4) < 0.1,
    "rounding moves a corner by at most half a cell (8 px), a quarter cell (4 px) on average",
)
roi = np.array([[0, 24, 40, 200, 100]], np.float64)  # 176 x 60 image pixels
_, hstart, hend, wstart, wend = roi_bins(roi, (7, 7), 1 / STRIDE, 64, 64)
print("true RoI in cells       : x", roi[0, 1] / STRIDE, "..", roi[0, 3] / STRIDE)
print("roi_pool's columns      :", [(int(a), int(b)) for a, b in zip(wstart[0], wend[0])])
print("true bin width in cells :", (roi[0, 3] - roi[0, 1]) / STRIDE / 7)
T.check(
    wstart[0, 0] == 2 and wend[0, -1] == 14,
    "x1 = 1.5 -> column 2, x2 = 12.5 -> column 13 inclusive: 12 cells for an 11-cell box",
)
spans = (wend[0] - wstart[0]).astype(int).tolist()
print("roi_pool's bin widths in cells:", spans)
T.check(set(spans) <= {2, 3}, "each of the 7 bins spans 2 or 3 whole cells (floor/ceil of 12/7-cell bins)")

# %% [markdown]
# ## 2. One sample, read bilinearly
#
# A sample at a continuous position `(y, x)` lies between 4 cell centres:
# rows `y0 = floor(y)`, `y1 = y0 + 1` and columns `x0 = floor(x)`,
# `x1 = x0 + 1`. With the fractions `fy = y - y0`, `fx = x - x0`, each
# neighbour is weighted by the area of the rectangle *opposite* it:
#
# ```
# value = (1-fy)(1-fx) X[y0,x0] + (1-fy) fx X[y0,x1] + fy (1-fx) X[y1,x0] + fy fx X[y1,x1]
# ```
#
# The 4 weights sum to 1. At the edges torchvision's rule is:
#
# * a sample with `y < -1` or `y > H` (or `x < -1`, `x > W`) is outside: it
#   contributes 0;
# * `y <= 0` is read at `y = 0` (so `[-1, 0]` is clamped onto the first row);
# * `y0 >= H - 1` reads the last row only (`y = H - 1`, weight 1).


# %%
def neighbours(v, size):
    """[(cell, weight), (cell, weight)] of one coordinate along one axis, or None outside."""
    if v < -1 or v > size:
        return None
    v = max(v, 0.0)
    lo = int(v)
    if lo >= size - 1:
        return [(size - 1, 1.0), (size - 1, 0.0)]
    return [(lo, 1.0 - (v - lo)), (lo + 1, v - lo)]


def bilinear(plane, y, x):
    """One sample of a (H, W) map, torchvision's rule."""
    ny, nx = neighbours(y, plane.shape[0]), neighbours(x, plane.shape[1])
    if ny is None or nx is None:
        return 0.0
    return sum(wy * wx * plane[p, q] for p, wy in ny for q, wx in nx)


plane = rng.integers(0, 10, (4, 5)).astype(np.float64)
y, x = 1.3, 2.6
print(plane)
for p, wy in neighbours(y, 4):
    for q, wx in neighbours(x, 5):
        print(
            f"  cell ({p}, {q}) value {plane[p, q]:.0f}  weight {wy:.2f} * {wx:.2f} = {wy * wx:.2f}"
        )
print(f"bilinear({y}, {x}) = {bilinear(plane, y, x):.4f}")
# the same sample through the op: one bin, one sample at the centre of a 1 x 1 RoI
one = ops.roi_align(
    plane[None, None], np.array([[0, x - 0.5, y - 0.5, x + 0.5, y + 0.5]]), 1, 1.0, 1
)
T.check(abs(one[0, 0, 0, 0] - bilinear(plane, y, x)) < 1e-12, "ops.roi_align reads the same value")

print(f"{'x':>6} {'neighbours along W = 5':>30}")
for v in (-1.5, -1.0, -0.5, 0.0, 2.25, 4.0, 4.5, 5.0, 5.25):
    print(f"{v:6.2f} {neighbours(v, 5)!s:>30}")
T.check(
    neighbours(-1.0, 5) == neighbours(0.0, 5)
    and neighbours(5.0, 5) == [(4, 1.0), (4, 0.0)]
    and neighbours(5.25, 5) is None
    and neighbours(-1.5, 5) is None,
    "x = -1 reads column 0, x = W reads the last column, beyond them: nothing",
)

# %% [markdown]
# ## 3. The whole op with loops, against the reference
#
# For one RoI `(b, x1, y1, x2, y2)`, with `o = 0.5` if `aligned` else 0:
#
# 1. `start_x = x1 * s - o`, `roi_w = x2 * s - o - start_x` (clamped to >= 1
#    when not `aligned`); the same for `y`;
# 2. `bin_w = roi_w / pw`; `G_w = sampling_ratio`, or `ceil(roi_w / pw)` when
#    `sampling_ratio <= 0` (adaptive: about one sample per cell);
# 3. sample `g` of bin `j`: `x = start_x + j * bin_w + (g + 0.5) * bin_w / G_w`;
# 4. `out = mean over the G_h x G_w samples of bilinear(X[b, c], y, x)`.


# %%
def roi_align_loop(features, rois, ph, pw, s, sampling_ratio, aligned):
    """RoIAlign one sample at a time (the teaching version of roi_align_reference)."""
    out = np.zeros((len(rois), features.shape[1], ph, pw))
    o = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * s - o, y1 * s - o
        rw, rh = x2 * s - o - sx, y2 * s - o - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        for c in range(features.shape[1]):
            for i in range(ph):
                for j in range(pw):
                    total = 0.0
                    for iy in range(gh):
                        yy = sy + i * rh / ph + (iy + 0.5) * (rh / ph) / gh
                        for ix in range(gw):
                            xx = sx + j * rw / pw + (ix + 0.5) * (rw / pw) / gw
                            total += bilinear(features[int(b), c], yy, xx)
                    out[r, c, i, j] = total / max(gh * gw, 1)
    return out


size = T.pick(20, 10)
features = rng.standard_normal((2, 3, size, size))
xy = rng.uniform(-48, STRIDE * size, (T.pick(12, 5), 2))
wh = rng.uniform(0, 160, xy.shape)
rois = np.concatenate([rng.integers(0, 2, (len(xy), 1)), xy, xy + wh], axis=1)
rois = np.concatenate([rois, [[0, -100, -100, -40, -40], [1, 8, 8, 8, 8]]])  # off the map; a point
torch, torchvision = T.torchvision_or_note("roi_align")  # compared in the loop below if present
for ratio, aligned in [(2, False), (-1, False), (3, True)]:
    loop = roi_align_loop(features, rois, 3, 2, 1 / STRIDE, ratio, aligned)
    if torch is not None:
        tv = torchvision.ops.roi_align(
            torch.from_numpy(features), torch.from_numpy(rois), (3, 2), 1 / STRIDE, ratio, aligned
        ).numpy()
        T.check(
            np.allclose(tv, loop, rtol=0, atol=1e-12),
            f"torchvision.ops.roi_align == the loops (sampling_ratio={ratio}, aligned={aligned})",
        )
    for backend in ("numpy", "numba"):
        fast = ops.roi_align(features, rois, (3, 2), 1 / STRIDE, ratio, aligned, backend=backend)
        T.check(
            np.allclose(fast, loop, rtol=0, atol=1e-12),
            f"loops == ops.roi_align ({backend}, sampling_ratio={ratio}, aligned={aligned})",
        )

# %% [markdown]
# The reference computes the same numbers another way. Every step acts on
# one axis at a time, so each bin's samples along `y` fold into one row of
# weights over the map's rows, `A_y[r]` `(ph, H)`, and likewise `A_x[r]`
# `(pw, W)`; RoIAlign is then two small matrix products per RoI:
# `out[r, c] = A_y[r] @ X[b, c] @ A_x[r].T / (G_h G_w)`. The kernels walk the
# samples one by one, as the loop above (and torchvision) do.

# %%
tab = sample_tables(rois[:1], (3, 2), 1 / STRIDE, 2, False, size, size)
print("rows read by the 3 bins x 2 samples of RoI 0 (lo, hi):")
print(np.stack([tab.y.lo[0], tab.y.hi[0]], axis=-1).tolist())
print("their weights (w_lo, w_hi):")
print(np.round(np.stack([tab.y.w_lo[0], tab.y.w_hi[0]], axis=-1), 3).tolist())

# %% [markdown]
# ## 4. The backward: every sample sends its gradient to 4 cells
#
# RoIAlign is linear in the features, so its gradient is its transpose: a
# bin's gradient `dout` is split among its `G_h x G_w` samples (`dout / (G_h
# G_w)` each) and every sample spreads its share over its 4 neighbours with
# the same bilinear weights. Overlapping bins and RoIs add up (on a GPU with
# atomics; minirccn's CPU kernel gives each thread its own `(n, c)` plane, so
# nothing is shared between threads).

# %%
small = rng.standard_normal((1, 1, 8, 8))
box = np.array([[0, 1.7, 1.2, 6.1, 5.9]])
out, cache = roi_align_layer_forward(small, box, 2, 1.0, 2, False)
onehot = np.zeros_like(out)
onehot[0, 0, 0, 1] = 1.0  # the gradient of bin (0, 1) alone
grad = roi_align_layer_backward(onehot, cache)
cells = np.argwhere(grad[0, 0] != 0)
print(f"bin (0, 1) sends its gradient to {len(cells)} cells:")
print(np.round(grad[0, 0, 1:5, 3:8], 4))
T.check(
    abs(grad.sum() - 1.0) < 1e-12 and len(cells) <= 4 * 2 * 2,
    "the weights of a bin's samples sum to 1; at most 4 cells per sample",
)
for backend in ("numpy", "numba"):
    err = gradcheck.check_layer(
        lambda f, backend=backend: roi_align_layer_forward(
            f, box, 2, 1.0, 2, False, backend=backend
        ),
        roi_align_layer_backward,
        [small],
    )
    T.check(
        err < 1e-8, f"roi_align backward ({backend}) matches finite differences (err {err:.1e})"
    )

# %% [markdown]
# ## 5. `aligned`: where is a cell's centre?
#
# Cell `q` of a stride-16 map summarises image pixels `[16 q, 16 q + 16)`; its
# centre is `16 q + 8`, i.e. continuous map coordinate `q + 0.5`. The
# bilinear read above puts cell `q`'s value at coordinate `q`, not `q + 0.5`.
# `aligned=True` subtracts that half cell from the RoI (Detectron2's
# "ROIAlignV2"); `aligned=False` keeps the original Mask R-CNN rule.
#
# Test: a map whose value is the image x-coordinate of each cell's centre.
# Averaging it over a box should give the box's centre x. The third box is
# half a cell wide: `aligned=False` also stretches it to one whole cell.

# %%
W = 32
centres = (np.arange(W) + 0.5) * STRIDE  # image x of each cell's centre
xmap = np.broadcast_to(centres, (1, 1, 8, W)).copy()
boxes = np.array([[0, 64, 16, 160, 96], [0, 100, 20, 300, 100], [0, 33, 8, 41, 90]], np.float64)
for aligned in (False, True):
    got = ops.roi_align(xmap, boxes, 1, 1 / STRIDE, 4, aligned)[:, 0, 0, 0]
    want = (boxes[:, 1] + boxes[:, 3]) / 2
    print(f"aligned={aligned!s:5}: mean x {np.round(got, 2)}, box centres {want}")
    shift = got - want
    if aligned:
        T.check(np.allclose(shift, 0), "aligned=True: exactly the box centre, even the small box")
    else:
        T.check(
            np.allclose(shift[:2], STRIDE / 2), "aligned=False: half a cell (8 px) to the right"
        )
        T.check(
            np.isclose(got[2], boxes[2, 1] + STRIDE / 2 + STRIDE / 2),
            "aligned=False, 8 px box: stretched to 16 px from x1 (centre x1 + 8), then + 8",
        )

# %% [markdown]
# ## 6. RoI pooling versus RoIAlign on the same RoIs
#
# Slide a box across a smooth feature map, a quarter cell (4 px) at a time.
# RoI pooling's output moves in steps: nothing changes until a rounded edge
# jumps to the next cell. RoIAlign's output follows the box smoothly.

# %%
yy, xx = np.mgrid[0:16, 0:24]
blob = np.exp(-((yy - 7.3) ** 2 + (xx - 11.6) ** 2) / 18.0)[None, None]
shifts = np.arange(0, T.pick(129, 65), 4.0)
slides = np.array([[0, 112 + d, 72, 112 + d + 64, 72 + 64] for d in shifts])
pooled, _ = ops.roi_pool(blob, slides, 2, 1 / STRIDE)
aligned_out = ops.roi_align(blob, slides, 2, 1 / STRIDE, 2, True)
pool_top, align_top = pooled[:, 0, 0, 0], aligned_out[:, 0, 0, 0]
steps_pool = int(np.count_nonzero(np.diff(pool_top)))
steps_align = int(np.count_nonzero(np.diff(align_top)))
print(f"{len(shifts)} positions, 4 px apart; output of the top-left bin changed")
print(f"  roi_pool : {steps_pool} times   roi_align: {steps_align} times")
T.check(
    steps_pool < steps_align == len(shifts) - 1, "roi_pool moves in steps, roi_align every time"
)

# %% [markdown]
# ## 7. Pictures
#
# Left: a RoI (green) over the cells of a map, its 2 x 2 bins (dashed), the 2 x 2
# samples of every bin (dots) and the 4 neighbours one sample reads (red
# squares); in grey, the cells roi_pool's rounded bins would cover. Middle:
# the gradient one bin sends back. Right: section 6's slide.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
ax = axes[0]
grid_w, grid_h = 9, 7
pic_roi = np.array([[0, 1.7, 1.2, 6.1, 5.9]])  # in cells (scale 1)
_, hs, he, ws, we = roi_bins(pic_roi, (2, 2), 1.0, grid_h, grid_w)
# cell (p, q)'s value sits at coordinate (p, q): grid lines are the cells' borders at +-0.5
for i in range(2):
    for j in range(2):
        ax.add_patch(
            plt.Rectangle(
                (ws[0, j] - 0.5, hs[0, i] - 0.5),
                we[0, j] - ws[0, j],
                he[0, i] - hs[0, i],
                color="0.85",
                zorder=0,
            )
        )
for q in range(grid_w + 1):
    ax.axvline(q - 0.5, color="0.6", lw=0.5)
for p in range(grid_h + 1):
    ax.axhline(p - 0.5, color="0.6", lw=0.5)
cy, cx = np.mgrid[0:grid_h, 0:grid_w]
ax.scatter(cx.ravel(), cy.ravel(), s=6, c="0.5", marker="+", zorder=1, label="cell values (+)")
_, x1, y1, x2, y2 = pic_roi[0]
ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="green", lw=2))
bw, bh = (x2 - x1) / 2, (y2 - y1) / 2
ax.plot([x1 + bw] * 2, [y1, y2], "g--", lw=1)  # the bins' inner borders
ax.plot([x1, x2], [y1 + bh] * 2, "g--", lw=1)
sx = x1 + (np.arange(2)[:, None] + (np.arange(2)[None, :] + 0.5) / 2) * bw  # (bin, sample)
sy = y1 + (np.arange(2)[:, None] + (np.arange(2)[None, :] + 0.5) / 2) * bh
tab = sample_tables(pic_roi, (2, 2), 1.0, 2, False, grid_h, grid_w)
T.check(
    np.allclose(tab.x.lo[0] + tab.x.w_hi[0], sx) and np.allclose(tab.y.lo[0] + tab.y.w_hi[0], sy),
    "the drawn sample points are the ones sample_tables computes",
)
ax.scatter(np.repeat(sx.ravel(), 4), np.tile(sy.ravel(), 4), s=18, c="k", zorder=3, label="RoIAlign samples")
px, py = sx[1, 0], sy[0, 1]
for p, _ in neighbours(py, grid_h):
    for q, _ in neighbours(px, grid_w):
        ax.add_patch(plt.Rectangle((q - 0.12, p - 0.12), 0.24, 0.24, color="red", zorder=4))
ax.scatter([px], [py], s=40, c="red", zorder=5, label="one sample and its 4 neighbours")
ax.set_xlim(-0.5, grid_w - 0.5)
ax.set_ylim(grid_h - 0.5, -0.5)
ax.set_xlabel("map x (cell q's value at x = q)")
ax.set_ylabel("map y (cell p's value at y = p)")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
ax.set_aspect("equal")
ax.set_title(
    "RoIAlign samples (dots), one sample's 4 neighbours (red)\n"
    "grey: the cells roi_pool's rounded bins cover",
    fontsize=11,
)

ax = axes[1]
im = ax.imshow(grad[0, 0], cmap="magma")
ax.set_title("gradient of bin (0, 1): 4 cells per sample\n(section 4)", fontsize=11)
ax.set_xlabel("map x")
ax.set_ylabel("map y")
fig.colorbar(im, ax=ax, fraction=0.046, label="d output / d cell")

ax = axes[2]
ax.plot(shifts, pool_top, "o-", ms=3, label="roi_pool (max, rounded)")
ax.plot(shifts, align_top, "s-", ms=3, label="roi_align (bilinear, aligned)")
ax.set_xlabel("box shift (image pixels; a cell is 16)")
ax.set_ylabel("top-left bin output")
ax.set_title("sliding a box by 4 px steps (section 6)", fontsize=11)
ax.legend(fontsize=8)
fig.tight_layout()
path = T.out_dir() / "10_roi_align.png"
fig.savefig(path, dpi=100)
print(f"wrote {path}")

# %% [markdown]
# ## Summary
#
# * RoI pooling rounds corners and bin edges to whole cells: up to half a
#   cell (8 px at stride 16) per corner.
# * RoIAlign samples each bin at `G x G` continuous points (`sampling_ratio`,
#   or adaptive `ceil(roi_size / bins)`), reads each by bilinear interpolation
#   from 4 cells, and averages. Samples beyond `[-1, H] x [-1, W]` give 0.
# * It is linear in the features; the backward sends each sample's share of
#   the bin gradient to its 4 neighbours with the same weights.
# * `aligned=True` shifts by half a cell so that cell centres sit where they
#   belong; `aligned=False` (the default, and torchvision's Faster R-CNN) is
#   half a cell off.
# * Choose it for the detector's head with the config field
#   `box_roi_pool="roi_align"` (`minirccn train --preset tiny-align`).
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected. (To edit `roi_align_loop` itself instead, run with
# `MINIRCCN_TUTORIAL_STUDENT=1`: the checks of section 3 then report and the
# script goes on.)
#
# 1. With `sampling_ratio=1` each bin has one sample, at its centre. For the
#    RoI `(0, 0, 0, 14, 14)` at scale 1 (14 cells wide, `aligned=False`) pooled
#    7 x 7, which columns `0..13` get no weight at all? (Each sample lands on
#    an integer position, where bilinear reads one cell only.)
# 2. Suppose `aligned=True` also clamped the RoI size to 1 cell (as
#    `aligned=False` does). Which RoIs of section 3 (`rois`, scale 1/16) would
#    give other numbers? Those whose shifted width or height is under 1 cell.
# 3. Write RoIAlign with *max* instead of mean over the samples, and its
#    backward (the winning sample's 4 neighbours get the bin's gradient, with
#    their bilinear weights); the check compares it with finite differences.


# %%
@T.stub
def columns_never_read():
    """Sorted columns in 0..13 that a 7 x 7, sampling_ratio=1 RoIAlign of (0, 0, 0, 14, 14) never reads."""
    raise NotImplementedError


@T.stub
def rois_changed_by_aligned_clamp(rois, spatial_scale):
    """Sorted row indices of the RoIs whose width or height * scale is under 1 cell."""
    raise NotImplementedError


@T.stub
def roi_align_max(features, rois, ph, pw, s, sampling_ratio):
    """(R, C, ph, pw): the largest bilinear sample of each bin (aligned=False; empty: 0)."""
    raise NotImplementedError


@T.stub
def roi_align_max_backward(dout, features, rois, ph, pw, s, sampling_ratio):
    """(N, C, H, W) gradient of roi_align_max: each bin's dout to its winning sample's neighbours."""
    raise NotImplementedError


# %%
def _check_never_read():
    grad = ops.roi_align_backward(
        np.ones((1, 1, 7, 7)), np.array([[0, 0.0, 0, 14, 14]]), (1, 1, 16, 16), 7, 1.0, 1, False
    )
    expected = [c for c in range(14) if grad[0, 0, :14, c].sum() == 0]
    got = sorted(columns_never_read())
    print(f"  never read: {got} (from the backward's zero columns: {expected})")
    return got == expected


T.exercise("10.1", _check_never_read, "the 7 even columns 0, 2, ..., 12: the samples sit on columns 1, 3, ..., 13")


def _check_clamp():
    w_c, h_c = (rois[:, 3] - rois[:, 1]) / STRIDE, (rois[:, 4] - rois[:, 2]) / STRIDE
    expected = np.flatnonzero((w_c < 1) | (h_c < 1)).tolist()
    got = list(rois_changed_by_aligned_clamp(rois, 1 / STRIDE))
    print(f"  changed RoIs: {got}; the last row is the point RoI {rois[-1, 1:].tolist()}")
    return got == expected and len(rois) - 1 in got


T.exercise("10.2", _check_clamp, "the RoIs under 16 px on a side, the point RoI (last row) among them")


def _check_max():
    x = rng.standard_normal((1, 2, 8, 8))
    r = np.array([[0, 1.3, 0.7, 6.2, 5.1], [0, 2.0, 2.5, 7.5, 7.0]])
    out = roi_align_max(x, r, 2, 2, 1.0, 2)
    mean = ops.roi_align(x, r, 2, 1.0, 2, False)
    g = rng.standard_normal(out.shape)
    analytic = roi_align_max_backward(g, x, r, 2, 2, 1.0, 2)
    numeric = gradcheck.numerical_grad(lambda: float(np.sum(roi_align_max(x, r, 2, 2, 1.0, 2) * g)), x)
    err = gradcheck.rel_error(analytic, numeric)
    print(f"  max >= mean in every bin: {bool(np.all(out >= mean - 1e-12))}; backward relative error {err:.1e}")
    return np.all(out >= mean - 1e-12) and err < 1e-6


T.exercise("10.3", _check_max, "every bin's max >= its mean; backward relative error < 1e-6 (about 1e-10)")
