# %% [markdown]
# # Tutorial 4: RoI max pooling and its backward pass
#
# The RPN hands the RoI head a few hundred proposals of every size and
# shape. The head is made of fully connected layers, which need a fixed-size
# input. **RoI max pooling** bridges the two: project each region of interest
# (RoI) onto the feature map, cut it into a fixed `ph x pw` grid of bins, and
# keep the largest value of each bin, per channel. A 30 x 80 region and a
# 200 x 200 region both become `C x 7 x 7`.
#
# The exact rule is Caffe's (and torchvision's), down to how coordinates are
# rounded. We rebuild it by hand, compare with `minirccn.ops.roi_pool`, follow
# gradients through the argmax, and check them by finite differences.

# %%
import math

import numpy as np
from PIL import Image, ImageDraw

import _common as T
from minirccn.nn import gradcheck
from minirccn import ops, viz
from minirccn.ops.roi_pool import (
    LOWEST,
    c_round,
    roi_bins,
    roi_pool_layer_backward,
    roi_pool_layer_forward,
)

rng = np.random.default_rng(4)

# %% [markdown]
# ## 1. The bins
#
# `rois` is `(R, 5)`: `(batch_index, x1, y1, x2, y2)` in **image** pixels.
# With `spatial_scale s` (1/16 for a stride-16 backbone), in the features'
# dtype:
#
# 1. `x1' = round(x1 * s)`, ... with C's `round` (half away from zero);
# 2. `roi_w = max(x2' - x1' + 1, 1)`, `roi_h = max(y2' - y1' + 1, 1)` (the
#    rounded corners are *inclusive* cell indices: the Caffe "+1");
# 3. `bin_w = roi_w / pw`, `bin_h = roi_h / ph`; bin `(i, j)` covers rows
#    `y1' + [floor(i * bin_h), ceil((i + 1) * bin_h))` and columns
#    `x1' + [floor(j * bin_w), ceil((j + 1) * bin_w))`, clipped to the map.
#
# `floor` for the start and `ceil` for the end means neighbouring bins can
# share a row or a column; every cell of the RoI is in at least one bin.

# %%
rois = np.array([[0, 40, 24, 200, 130]], dtype=np.float64)
batch, hstart, hend, wstart, wend = roi_bins(rois, (3, 3), 1 / 16, 16, 16)
print("corners * s          :", rois[0, 1:] / 16)
print("rounded (C round)    :", c_round(rois[0, 1:] / 16))
print("rows of the 3 bins   :", [(int(a), int(b)) for a, b in zip(hstart[0], hend[0])])
print("columns of the 3 bins:", [(int(a), int(b)) for a, b in zip(wstart[0], wend[0])])
T.check(
    list(wstart[0]) == [3, 6, 10] and list(wend[0]) == [7, 11, 14],
    "roi_w = 13 - 3 + 1 = 11 cells, bin_w = 11/3: columns [3,7), [6,11), [10,14)",
)

# %% [markdown]
# ## 2. C round is not NumPy's round
#
# NumPy (and Python 3, and Numba's `round()`) round halves to the nearest
# *even* integer; C's `round` rounds them away from zero. With `s = 1/16`
# every image coordinate that is an odd multiple of 8 lands exactly on a
# half, and on every other one of them (8, 40, 72, ...: the halves whose
# neighbour away from zero is odd) the two rules disagree (the table below):
# with integer boxes that happens all the time.

# %%
xs = np.array([8.0, 24.0, 40.0, -8.0, 56.0])
print(f"{'x':>6} {'x/16':>6} {'C round':>8} {'np.round':>9}")
for x, c, e in zip(xs, c_round(xs / 16), np.round(xs / 16)):
    print(f"{x:6.0f} {x / 16:6.2f} {c:8.0f} {e:9.0f}")
T.check(
    np.array_equal(c_round(xs / 16), [1, 2, 3, -1, 4])
    and np.array_equal(np.round(xs / 16), [0, 2, 2, -0.0, 4]),
    "8/16 = 0.5 -> 1 (C) but 0 (NumPy); 40/16 = 2.5 -> 3 vs 2",
)

# A map with one strong value in column 0; RoI x1 = 8 image pixels = 0.5 cells.
fmap = np.zeros((1, 1, 4, 4))
fmap[0, 0, :, 0] = 5.0
roi = np.array([[0, 8, 0, 40, 48]], dtype=np.float64)
even = roi.copy()
even[:, 1:] = np.round(roi[:, 1:] / 16) * 16  # the same RoI as half-to-even rounding would see it
out_c, _ = ops.roi_pool(fmap, roi, 1, 1 / 16)
out_even, _ = ops.roi_pool(fmap, even, 1, 1 / 16)
print("pooled with C round:", out_c.ravel(), "  with half-to-even:", out_even.ravel())
T.check(
    out_c.ravel()[0] == 0 and out_even.ravel()[0] == 5,
    "one rounding rule starts at column 1, the other at column 0",
)

# %% [markdown]
# ## 3. A naive loop, then the reference
#
# Inside a bin, scan rows then columns from `best = -FLT_MAX` and take a value
# only if it is strictly greater: the first maximum wins ties, a NaN is never
# taken, and an empty bin (a RoI off the map) outputs 0 with argmax -1. The
# argmax is the flat index `h * W + w` into the map: the backward needs it.


# %%
def c_round_scalar(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def roi_pool_loop(features, rois, ph, pw, s):
    """RoI max pooling one bin at a time (teaching version of roi_pool_reference)."""
    _, c, height, width = features.shape
    out = np.zeros((len(rois), c, ph, pw), dtype=features.dtype)
    argmax = np.full((len(rois), c, ph, pw), -1, dtype=np.int64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (c_round_scalar(v * s) for v in (x1, y1, x2, y2))
        bin_w, bin_h = max(x2 - x1 + 1, 1) / pw, max(y2 - y1 + 1, 1) / ph
        for i in range(ph):
            h0 = min(max(math.floor(i * bin_h) + y1, 0), height)
            h1 = min(max(math.ceil((i + 1) * bin_h) + y1, 0), height)
            for j in range(pw):
                w0 = min(max(math.floor(j * bin_w) + x1, 0), width)
                w1 = min(max(math.ceil((j + 1) * bin_w) + x1, 0), width)
                if h1 <= h0 or w1 <= w0:
                    continue  # empty bin: 0, argmax -1
                for ch in range(c):
                    best, best_at = LOWEST, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if features[int(b), ch, h, w] > best:
                                best, best_at = features[int(b), ch, h, w], h * width + w
                    out[r, ch, i, j], argmax[r, ch, i, j] = best, best_at
    return out, argmax


size = T.pick(24, 12)
features = rng.standard_normal((2, 3, size, size))
features[0, 0, :4, :4] = 1.0  # a plateau: ties, the first one wins
boxes = rng.uniform(-64, 16 * size + 32, size=(T.pick(12, 6), 2, 2)).reshape(-1, 4)
boxes = np.concatenate(
    [np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1
)
special = np.array(
    [
        [0, 0, 0, 63, 63],  # over the plateau
        [1, 8, 8, 8, 8],  # a single point: a 1x1 RoI
        [0, 24, 40, 24 + 160, 40 + 48],  # halves everywhere (24/16 = 1.5, 40/16 = 2.5)
        [1, -200, -200, -100, -100],  # entirely off the map: empty bins
        [0, 16 * size - 8, 0, 16 * size + 300, 90],  # hanging over the right edge
    ],
    dtype=np.float64,
)
rois = np.concatenate(
    [special, np.concatenate([rng.integers(0, 2, (len(boxes), 1)), boxes], axis=1)]
)
out_loop, arg_loop = roi_pool_loop(features, rois, 3, 2, 1 / 16)
out_ref, arg_ref = ops.roi_pool(features, rois, (3, 2), 1 / 16, backend="numpy")
out_nb, arg_nb = ops.roi_pool(features, rois, (3, 2), 1 / 16, backend="numba")
T.check(
    np.array_equal(out_loop, out_ref) and np.array_equal(arg_loop, arg_ref),
    f"naive loop == reference on {len(rois)} RoIs (values and argmax)",
)
T.check(
    np.array_equal(out_nb, out_ref) and np.array_equal(arg_nb, arg_ref),
    "Numba kernel == reference, exactly",
)
T.check(
    np.all(arg_ref[3] == -1) and np.all(out_ref[3] == 0),
    "the off-map RoI: every bin empty, 0 and argmax -1",
)
T.check(arg_ref[0, 0, 0, 0] == 0, "plateau of equal values: the first cell (index 0) wins the tie")
out32, arg32 = ops.roi_pool(features.astype(np.float32), rois.astype(np.float32), (3, 2), 1 / 16)
# torchvision's roi_pool beside it, when torch is importable (C rounding, +1, floor/ceil bins)
torch, torchvision = T.torchvision_or_note("roi_pool")
if torch is not None:
    tv_out = torchvision.ops.roi_pool(
        torch.from_numpy(features.astype(np.float32)), torch.from_numpy(rois.astype(np.float32)), (3, 2), 1 / 16
    ).numpy()
    T.check(np.array_equal(tv_out, out32), f"torchvision.ops.roi_pool == minirccn's on all {len(rois)} RoIs, exactly")
T.check(
    np.array_equal(arg32, arg_ref) and np.array_equal(out32, out_ref.astype(np.float32)),
    "float32: same argmax, same values rounded to float32",
)

# %% [markdown]
# ## 4. The backward pass: gradients follow the argmax
#
# Once the argmax is fixed, each output is a copy of one input cell:
# `out[r, c, i, j] = x[b_r, c].flat[argmax[r, c, i, j]]`. So the gradient of
# the loss with respect to the features is zero everywhere except at argmax
# cells, which receive the output gradient, **summed** when several bins (of
# one RoI, through shared rows, or of overlapping RoIs) picked the same cell:
#
#     dx[b_r, c].flat[argmax[r, c, i, j]] += dout[r, c, i, j]      (argmax >= 0)
#
# That sum is why the backward is a *scatter-add*, and why parallel versions
# need care (tutorial 9).

# %%
small = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)  # increasing: the max is bottom-right
two = np.array([[0, 0, 0, 5, 5], [0, 2, 2, 5, 5]], dtype=np.float64)  # overlapping RoIs, scale 1
out, argmax = ops.roi_pool(small, two, 2, 1.0)
grad = ops.roi_pool_backward(np.ones_like(out), two, argmax, small.shape)
print("argmax of RoI 0:", argmax[0, 0].tolist(), " of RoI 1:", argmax[1, 0].tolist())
print("gradient of sum(out) w.r.t. the map:\n", grad[0, 0].astype(int))
T.check(
    grad[0, 0, 5, 5] == 2 and grad.sum() == out.size,
    "cell (5, 5) is the max of a bin of both RoIs: gradient 2; total = number of bins",
)

dout = rng.standard_normal(out_ref.shape)
dx = ops.roi_pool_backward(dout, rois, arg_ref, features.shape, backend="numpy")
taken = arg_ref >= 0
T.check(
    np.isclose((dx * features).sum(), (dout * out_ref)[taken].sum()),
    "adjoint: <dx, x> == <dout, out> over the bins that took a cell",
)
T.check(
    np.array_equal(ops.roi_pool_backward(dout, rois, arg_ref, features.shape, backend="numba"), dx),
    "Numba backward == reference, bit for bit (each thread owns one (n, c) map)",
)

# %% [markdown]
# ## 5. A float64 gradient check
#
# Finite differences (`minirccn.nn.gradcheck`) do not trust our reasoning: they
# nudge every input by `+-1e-6` and watch `L = sum(out * R)` change. Max
# pooling is piecewise linear, so with distinct random inputs (no ties within
# 1e-6) the check is exact up to rounding.

# %%
x = rng.standard_normal((1, 2, 8, 8))
grad_rois = np.array([[0, 0, 0, 31, 31], [0, 10, 6, 30, 28], [0, -20, 3, 12, 20]], dtype=np.float64)
for name in ("numpy", "numba"):
    err = gradcheck.check_layer(
        lambda f, be=name: roi_pool_layer_forward(f, grad_rois, (3, 3), 1 / 4, backend=be),
        roi_pool_layer_backward,
        [x],
    )
    print(f"{name}: max relative error {err:.2e}")
    T.check(err < 1e-7, f"roi_pool backward ({name}) matches finite differences")

# %% [markdown]
# ## 6. Why not just resize the crop?
#
# Cropping the RoI and resizing it to `ph x pw` also gives a fixed size, but
# it is a different operation. We resize with Pillow's `Image.BILINEAR`
# filter, and the name misleads: when Pillow *shrinks* an image it widens the
# bilinear (triangle) filter by the shrink factor, an antialiased resize, so
# each output value is a weighted **average** of a whole neighbourhood (here
# 8 -> 2: a triangle 4 cells wide each side of the output's centre), not a
# bilinear sample of the 4 nearest cells. We rebuild Pillow's weights below
# and check them against its output. An average dilutes a strong, small
# activation, and it moves with every one-cell shift of the activation. Max
# pooling keeps the strongest response of each bin, exactly, and does not
# care where in the bin it sits. (RoIAlign, in Mask R-CNN, keeps true
# bilinear *point samples* but avoids the rounding; it samples a few points
# per bin and then takes their mean or max.)


# %%
def resize_crop(fmap, x1, y1, x2, y2, out):
    """Crop rows y1:y2, columns x1:x2 of a 2-D map, resize it with Pillow's BILINEAR filter
    (antialiased when shrinking) to out x out."""
    crop = Image.fromarray(fmap[y1:y2, x1:x2].astype(np.float32), mode="F")
    return np.asarray(crop.resize((out, out), Image.BILINEAR))


def pillow_shrink_weights(n_in, n_out):
    """(n_out, n_in) weights of Pillow's BILINEAR resize: a triangle of half-width
    max(1, n_in / n_out) around each output centre, normalised to sum 1."""
    scale = n_in / n_out
    support = max(1.0, scale)
    centres = (np.arange(n_out) + 0.5) * scale  # in input coordinates, pixel i covers [i, i+1)
    dist = np.abs((np.arange(n_in) + 0.5)[None, :] - centres[:, None]) / support
    w = np.clip(1 - dist, 0, None)
    return w / w.sum(axis=1, keepdims=True)


W8to2 = pillow_shrink_weights(8, 2)
print("Pillow's BILINEAR weights for output 0 when shrinking 8 -> 2:", W8to2[0].round(3))
print(f"input cells that contribute to one output: {int((W8to2[0] > 0).sum())} per axis (a bilinear"
      " point sample would read 2)")
pooled_tl, resized_tl = [], []
for col in (0, 1):
    spike = np.zeros((1, 1, 8, 8))
    spike[0, 0, 2, col] = 10.0
    pooled, _ = ops.roi_pool(spike, np.array([[0, 0, 0, 7, 7]], dtype=np.float64), 2, 1.0)
    resized = resize_crop(spike[0, 0], 0, 0, 8, 8, 2)
    pooled_tl.append(pooled[0, 0, 0, 0])
    resized_tl.append(resized[0, 0])
    print(
        f"spike at column {col}: roi_pool top-left bin {pooled[0, 0, 0, 0]:.2f}, "
        f"resized crop top-left {resized[0, 0]:.2f}"
    )
for col, value in enumerate(resized_tl):
    spike = np.zeros((8, 8))
    spike[2, col] = 10.0
    T.check(
        np.isclose(value, (W8to2 @ spike @ W8to2.T)[0, 0], rtol=1e-5),
        f"spike at column {col}: Pillow's resize == the triangle-weighted average ({value:.3f})",
    )
T.check(
    pooled_tl == [10.0, 10.0] and max(resized_tl) < 10.0,
    "max pooling keeps the 10, resizing dilutes it",
)
T.check(
    resized_tl[0] != resized_tl[1],
    "moving the spike by one cell inside the bin changes the resized value, not the pooled one",
)

# %% [markdown]
# ## 7. A picture
#
# Left: a 16 x 16 feature map, one RoI (projected and rounded) and its 3 x 3
# bins, each bin's argmax marked with a dot; overlapping bins share a row or
# column. Middle: the pooled 3 x 3 output. Right: the gradient of
# `sum(out)`: one unit per bin at its argmax cell, two where two bins picked
# the same cell.

# %%
yy, xx = np.mgrid[0:16, 0:16]
smooth = sum(
    np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w**2)) * a
    for cx, cy, w, a in rng.uniform([0, 0, 1.5, -1], [16, 16, 3.5, 1], size=(10, 4))
)
fmap = smooth[None, None]
roi = np.array([[0, 40, 24, 200, 130]], dtype=np.float64)
out, argmax = ops.roi_pool(fmap, roi, 3, 1 / 16)
grad = ops.roi_pool_backward(np.ones_like(out), roi, argmax, fmap.shape)
_, hs, he, ws, we = roi_bins(roi, (3, 3), 1 / 16, 16, 16)
cell = 24
lo, hi = smooth.min(), smooth.max()
left = T.heatmap(smooth, cell, lo, hi)
draw = ImageDraw.Draw(left, "RGBA")
for i in range(3):
    for j in range(
        3
    ):  # every bin lightly shaded: where bins share a row or column the shade doubles
        draw.rectangle(
            [ws[0, j] * cell, hs[0, i] * cell, we[0, j] * cell - 1, he[0, i] * cell - 1],
            fill=(0, 0, 0, 45),
            outline=(60, 60, 60, 255),
        )
        h, w = divmod(int(argmax[0, 0, i, j]), 16)
        draw.ellipse(
            [w * cell + 7, h * cell + 7, w * cell + 17, h * cell + 17],
            fill=(255, 210, 0),
            outline=(0, 0, 0),
        )
roi_box = [ws[0, 0] * cell, hs[0, 0] * cell, we[0, -1] * cell - 1, he[0, -1] * cell - 1]
draw.rectangle(roi_box, outline=(0, 0, 0), width=3)
right = T.grey(grad[0, 0], cell)
ImageDraw.Draw(right).rectangle(roi_box, outline=(230, 25, 75), width=2)
panels = [
    T.caption(
        left,
        "feature map, the RoI's 3 x 3 bins (shaded;\nshared rows/columns darker), argmax dots\n"
        f"colour scale: blue {lo:.2f} .. white .. red {hi:.2f}",
    ),
    T.caption(
        T.heatmap(out[0, 0], 3 * cell, lo, hi),
        f"pooled 3 x 3 (same colour scale:\nblue {lo:.2f} .. red {hi:.2f})",
    ),
    T.caption(
        right, "gradient of sum(out): 1 (grey) per argmax,\n2 (white) where two bins took one cell"
    ),
]
T.save_grid(panels, "04_roi_pool.png", cols=3)
# the feature map and the pooled output on one colour scale, with a colour bar (matplotlib)
viz.plot_heatmap(
    [smooth, out[0, 0]],
    T.out_dir() / "04_roi_pool_values.png",
    ax_title=["feature map (16 x 16)", "pooled output (3 x 3)"],
    xlabel="column",
    ylabel="row",
    colorbar_label="activation (one colour scale)",
    cmap="RdBu_r",
    size=(720, 360),
)
print(f"wrote {T.out_dir() / '04_roi_pool_values.png'}")

# %% [markdown]
# ## Summary
#
# * RoI max pooling: project, C-round, split into `ph x pw` bins
#   (floor/ceil, clipped), max per bin and channel; empty bins give 0.
# * C `round` (half away from zero) is not NumPy's `round` (half to even):
#   with stride 16 it moves RoIs by a whole cell.
# * Backward: scatter-add `dout` to the argmax cells; a float64 finite
#   difference check agrees to ~1e-10.
# * Resizing a crop is not the same: it averages instead of selecting.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected. To experiment with the code above instead (say, put Python's
# `round` into `roi_pool_loop`), run the script with
# `MINIRCCN_TUTORIAL_STUDENT=1`: the check of section 3 then prints
# `check FAILED` and the script goes on to the end.
#
# 1. Which RoIs of section 3 (`rois`, scale 1/16) move when their projected
#    coordinates are rounded half-to-even (Python's `round`, NumPy's
#    `np.round`) instead of with C's `round`? Return their row indices.
# 2. What does RoI pooling output for a RoI that is a single point `(x, y, x,
#    y)`? (`roi_w = max(x2 - x1 + 1, 1)` makes it one cell wide, so every bin
#    reads the same cell.) Return the `(C, 2, 2)` output for a point RoI on
#    `features[0]`.
# 3. Write RoI *average* pooling and its backward (every cell of a bin gets
#    `dout / (cells in the bin)`), with the same bins as `roi_pool_loop`; the
#    check compares the backward with finite differences.


# %%
@T.stub
def rois_moved_by_half_to_even(rois, spatial_scale):
    """Sorted list of the row indices r whose rounded coordinates differ between the rules."""
    raise NotImplementedError


@T.stub
def pool_point(features, x, y, spatial_scale):
    """(C, 2, 2) RoI max pooling of the point RoI (0, x, y, x, y) with ops.roi_pool."""
    raise NotImplementedError


@T.stub
def roi_avg_pool(features, rois, ph, pw, s):
    """(R, C, ph, pw) mean of each bin (empty bins 0), bins exactly as in roi_pool_loop."""
    raise NotImplementedError


@T.stub
def roi_avg_pool_backward(dout, rois, input_shape, ph, pw, s):
    """(N, C, H, W) gradient: each bin's dout / (cells in the bin), added to every cell of the bin."""
    raise NotImplementedError


# %%
def _check_moved():
    moved = rois_moved_by_half_to_even(rois, 1 / 16)
    coords = rois[:, 1:] / 16
    expected = sorted(np.flatnonzero(np.any(c_round(coords) != np.round(coords), axis=1)).tolist())
    print(f"  moved RoIs: {moved} (expected {expected}: row 2 is the 'halves everywhere' RoI)")
    return list(moved) == expected and 2 in moved


T.exercise(
    "4.1",
    _check_moved,
    "the rows with a coordinate / 16 exactly halfway between two integers whose neighbour away from "
    "zero is odd (0.5: 1 vs 0, 2.5: 3 vs 2, -12.5: -13 vs -12), row 2 among them",
)


def _check_point():
    got = np.asarray(pool_point(features, 40.0, 24.0, 1 / 16))
    cell = features[0, :, 2, 3]  # c_round(24 / 16) = 2 (row), c_round(40 / 16) = 3 (column)
    return got.shape == (features.shape[1], 2, 2) and np.allclose(got, cell[:, None, None])


T.exercise("4.2", _check_point, "every bin = the one cell (row 2, column 3): C round of 1.5 and 2.5")


def _check_avg():
    x = rng.standard_normal((1, 2, 6, 6))
    r = np.array([[0, 5.0, 3.0, 70.0, 90.0], [0, 20.0, 20.0, 40.0, 40.0]])
    out = roi_avg_pool(x, r, 2, 2, 1 / 16)
    g = rng.standard_normal(out.shape)
    analytic = roi_avg_pool_backward(g, r, x.shape, 2, 2, 1 / 16)
    numeric = gradcheck.numerical_grad(lambda: float(np.sum(roi_avg_pool(x, r, 2, 2, 1 / 16) * g)), x)
    err = gradcheck.rel_error(analytic, numeric)
    flat = roi_avg_pool(np.ones((1, 1, 6, 6)), r, 2, 2, 1 / 16)
    print(f"  average pooling: relative error of the backward {err:.1e}; a constant map pools to {flat.ravel()}")
    return err < 1e-7 and np.allclose(flat, 1.0)


T.exercise("4.3", _check_avg, "relative error < 1e-7 (about 1e-10), a map of ones pools to ones")
