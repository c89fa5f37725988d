# %% [markdown]
# # Tutorial 3: non-maximum suppression (NMS)
#
# A detector does not fire once per object. Neighbouring anchors all see the
# same object, each regresses a slightly different box, and the output is a
# cloud of near-duplicates around every object. NMS keeps the best box of each
# cloud: it runs twice in Faster R-CNN, on the RPN's proposals
# (`rpn_nms_thresh`) and per class on the final detections (`box_nms_thresh`;
# the original Caffe code used 0.3); the first cell prints both from the `tiny` preset.
#
# We run greedy NMS step by step, see why a score threshold cannot replace it,
# run it per class (batched NMS), and then take apart the GPU algorithm: a
# matrix of 64-bit suppression masks.
#
# The `cuda` backend runs Numba-CUDA kernels; without a GPU this tutorial runs
# them in Numba's CUDA simulator. That must be switched on before Numba is
# imported, hence the first cell.

# %%
import _common as T

GPU = T.use_cuda_simulator_without_gpu()  # before anything imports numba

import numpy as np  # noqa: E402

from minirccn import ops, viz  # noqa: E402
from minirccn.core import backend
from minirccn.data import load_dataset  # noqa: E402
from minirccn.kernels import nms as nms_kernels  # noqa: E402
from minirccn.config import preset  # noqa: E402

print("cuda backend runs on:", "a real GPU" if GPU else "the Numba CUDA simulator (no GPU here)")
rng = np.random.default_rng(3)
cfg = preset("tiny")
print(f"proposal NMS: IoU > {cfg.rpn_nms_thresh} (rpn_nms_thresh); final per-class NMS: IoU > {cfg.box_nms_thresh} (box_nms_thresh)")

# %% [markdown]
# ## 1. A cloud of detections
#
# We take a `shapes` image and fake a detector's output: around each object,
# `k` jittered copies of its box, with scores that depend on the object (one
# object is "easy", scores near 0.9; one is "hard", scores near 0.35).

# %%
sample = load_dataset("shapes", split="train", seed=0)[3]
image, gt = sample["image"], sample["boxes"].astype(np.float64)
k = 5
object_score = np.array([0.35, 0.9, 0.75, 0.6])[: len(gt)]
which = np.repeat(np.arange(len(gt)), k)  # (G * k,) object of each box
size = (gt[:, 2:] - gt[:, :2])[which][:, [0, 1, 0, 1]]
boxes = np.round(gt[which] + rng.normal(0, 0.05, size=(len(which), 4)) * size, 1)
scores = np.round(np.clip(object_score[which] + rng.normal(0, 0.06, len(which)), 0.01, 0.99), 3)
print(f"{len(boxes)} boxes around {len(gt)} objects")

# %% [markdown]
# ## 2. Greedy NMS, step by step
#
# 1. Order the boxes by decreasing score (ties: lower index first).
# 2. Take the best remaining box: keep it.
# 3. Remove every remaining box whose IoU with it is **greater than** the
#    threshold.
# 4. Repeat until no box remains.
#
# The output is the kept indices in that order. It is sequential by nature:
# whether box 5 survives depends on whether box 2 (which might have suppressed
# it) was itself kept.


# %%
def nms_loop(boxes, scores, threshold, verbose=False):
    """Greedy NMS, one kept box at a time (teaching version of minirccn.ops.nms.nms_reference)."""
    remaining = list(np.argsort(-scores, kind="stable"))
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(int(best))
        iou = ops.box_iou(boxes[best : best + 1], boxes[remaining])[0]  # (len(remaining),)
        if verbose:
            print(
                f"  step {len(keep)}: keep box {best:2d} (score {scores[best]:.3f}); suppress "
                + (
                    ", ".join(f"{g} ({v:.2f})" for g, v in zip(remaining, iou) if v > threshold)
                    or "nothing"
                )
            )
        remaining = [r for r, v in zip(remaining, iou) if v <= threshold]
    return np.array(keep, dtype=np.int64)


threshold = 0.5
keep_loop = nms_loop(boxes, scores, threshold, verbose=True)
print("kept:", keep_loop, "-> objects", which[keep_loop])
keep_ref = ops.nms(boxes, scores, threshold, backend="numpy")
T.check(np.array_equal(keep_loop, keep_ref), "naive loop == minirccn.ops.nms reference")
T.check(
    np.array_equal(keep_ref, ops.nms(boxes, scores, threshold, backend="numba")),
    "Numba CPU kernel agrees",
)
T.check(sorted(which[keep_ref]) == list(range(len(gt))), "one box kept per object")
# torchvision's nms beside it, when torch is importable
torch, torchvision = T.torchvision_or_note("nms")
if torch is not None:
    tv_keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    print("torchvision.ops.nms keeps:", tv_keep)
    T.check(np.array_equal(tv_keep, keep_ref), "torchvision.ops.nms keeps the same boxes in the same order")

# %% [markdown]
# Corner cases are part of the contract (torchvision's): equal scores keep the
# lower index first, "greater than" means a pair at exactly the threshold
# survives, and an empty input gives an empty result.

# %%
twins = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5]], dtype=np.float64)
print("IoU of box 0 with its twin and with its top half:", ops.box_iou(twins[:1], twins[1:])[0])
T.check(
    list(ops.nms(twins, np.array([0.5, 0.5, 0.4]), 0.5)) == [0, 2],
    "tie: index 0 goes first and removes its twin; the half box (IoU exactly 0.5) survives",
)
T.check(
    list(ops.nms(twins, np.array([0.5, 0.5, 0.4]), 1.0)) == [0, 1, 2],
    "IoU 1 is not > 1.0: nothing suppressed",
)
T.check(ops.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,), "no boxes: empty int64 result")

# %% [markdown]
# ## 3. A score threshold is not NMS
#
# Why not simply keep boxes with a high score? Because scores say "there is an
# object", not "this is the only box of it". A threshold keeps every duplicate
# of an easy object and drops a hard object entirely; NMS keeps one box per
# cloud at any score level (the final `score > 0.05` filter only removes
# obvious background).

# %%
for t in (0.5, 0.8):
    kept = np.nonzero(scores > t)[0]
    counts = np.bincount(which[kept], minlength=len(gt))
    print(f"score > {t}: {len(kept)} boxes, per object {counts.tolist()}")
counts_nms = np.bincount(which[keep_ref], minlength=len(gt))
print(f"NMS @ {threshold}: {len(keep_ref)} boxes, per object {counts_nms.tolist()}")
T.check(
    np.bincount(which[scores > 0.5], minlength=len(gt)).max() > 1
    and np.bincount(which[scores > 0.5], minlength=len(gt)).min() == 0,
    "score > 0.5 keeps duplicates of one object and nothing of another",
)

# %% [markdown]
# ## 4. Batched NMS: one NMS per class
#
# At the end of the detector every class has its own boxes, and a "circle"
# box must not suppress a "square" box at the same place. `batched_nms(boxes,
# scores, idxs, threshold)` runs NMS separately for each value of `idxs` and
# returns all kept indices, again by decreasing score. For small inputs (up to
# a few thousand coordinates on the CPU) torchvision implements it with a trick
# worth knowing: shift each class's boxes by `class * (max coordinate + 1)` so
# that boxes of different classes can never overlap, then run plain NMS once;
# above that it runs plain NMS class by class (the same result).

# %%
pair = np.array([[10, 10, 50, 50], [12, 11, 52, 49]], dtype=np.float64)
pair_scores = np.array([0.9, 0.8])
print("same class:      ", ops.batched_nms(pair, pair_scores, np.array([1, 1]), 0.5))
print("different class: ", ops.batched_nms(pair, pair_scores, np.array([1, 2]), 0.5))
T.check(
    len(ops.batched_nms(pair, pair_scores, np.array([1, 2]), 0.5)) == 2,
    "different classes never suppress each other",
)

labels = rng.integers(1, 4, size=len(boxes))
offset_boxes = boxes + (labels * (boxes.max() + 1))[:, None]
trick = ops.nms(offset_boxes, scores, threshold)
for name in ("numpy", "numba", "cuda"):
    T.check(
        np.array_equal(ops.batched_nms(boxes, scores, labels, threshold, backend=name), trick),
        f"batched_nms ({name}) == plain NMS on class-shifted boxes",
    )

# %% [markdown]
# ## 5. NMS on a GPU: the 64-bit suppression mask
#
# The greedy walk is sequential, but most of its work is not: every IoU of
# every pair can be computed at once. The classic GPU algorithm (Caffe, then
# torchvision) splits NMS in two:
#
# 1. **mask kernel**, fully parallel: sort the boxes by score; for every box
#    `i`, set bit `j` of a bitmask when box `j` comes after `i` (`j > i`) and
#    `IoU(i, j) > threshold`. Bits are packed 64 to a `uint64` word, so row `i`
#    is `ceil(N / 64)` words; CUDA block `(row block, column block)` has 64
#    threads, one per row box, and loads its 64 column boxes into shared memory
#    once.
# 2. **reduce**, sequential but cheap: walk the rows in order with a running
#    `removed` bitmask; keep row `i` unless its bit is set in `removed`, and when
#    keeping it OR its row into `removed`. That is one OR of `N / 64` words per
#    kept box instead of `N` IoUs.
#
# Here is step 1 in NumPy on our boxes (one word per row, since N <= 64):
# character `j` of row `i` is bit `j`.


# %%
def suppression_mask(sorted_boxes, threshold):
    """(N, ceil(N/64)) uint64 masks: bit k of word b of row i is set
    iff box j = 64 b + k comes after i (j > i) and IoU(i, j) > threshold."""
    n = len(sorted_boxes)
    blocks = (n + 63) // 64
    iou = ops.box_iou(sorted_boxes, sorted_boxes, backend="numpy")
    later = np.arange(n)[None, :] > np.arange(n)[:, None]
    hit = np.zeros((n, blocks * 64), dtype=np.uint64)
    hit[:, :n] = later & (iou.astype(np.float64) > threshold)
    shifted = hit.reshape(n, blocks, 64) << np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(shifted, axis=2)


order = np.argsort(-scores, kind="stable")
sorted_boxes = np.ascontiguousarray(boxes[order])
mask = suppression_mask(sorted_boxes, threshold)
n = len(sorted_boxes)
print("row (score order) | bits: boxes it suppresses | kept?")
removed = np.zeros(mask.shape[1], dtype=np.uint64)
kept_positions = []
for i in range(n):
    is_removed = bool((int(removed[i // 64]) >> (i % 64)) & 1)
    if not is_removed:
        kept_positions.append(i)
        removed |= mask[i]
    print(
        f"  {i:3d} (box {order[i]:2d}) | {T.bits(mask[i, 0], n)} | "
        + ("removed" if is_removed else "KEEP")
    )
T.check(np.array_equal(order[kept_positions], keep_ref), "mask + sequential reduce == greedy NMS")

# %% [markdown]
# The rows of removed boxes were computed (in parallel, that costs nothing)
# but are never read: a removed box suppresses nothing.
#
# Now minirccn's kernel (`minirccn.kernels.nms`): `nms_mask_cuda` runs the
# Numba-CUDA mask kernel (on the GPU, or in the simulator) and must produce the
# same words bit for bit; `reduce_mask` is the host walk. The same code runs
# on a real GPU with CuPy arrays.

# %%
xp = backend.array_module("cuda")  # cupy on a GPU, numpy in the simulator
dev_boxes = xp.asarray(sorted_boxes)
dev_mask = nms_kernels.nms_mask_cuda(dev_boxes, None, threshold)  # labels None: one category
T.check(
    np.array_equal(backend.to_numpy(dev_mask), mask),
    "Numba-CUDA mask kernel == NumPy mask, every bit",
)
T.check(
    np.array_equal(nms_kernels.reduce_mask(backend.to_numpy(dev_mask)), kept_positions),
    "reduce_mask == our walk",
)
T.check(
    np.array_equal(ops.nms(boxes, scores, threshold, backend="cuda"), keep_ref),
    "ops.nms(backend='cuda') == reference",
)

# more than 64 boxes: two words per row, a 2 x 2 grid of CUDA blocks (kept small for the simulator)
m = T.pick(120, 80)
centres = rng.uniform(0, 200, size=(m // 8, 2))
many = np.concatenate([centres, centres + 40], axis=1)[rng.integers(0, m // 8, m)] + rng.normal(
    0, 4, (m, 4)
)
many_scores = rng.random(m)
many_sorted = np.ascontiguousarray(many[np.argsort(-many_scores, kind="stable")])
big_mask = suppression_mask(many_sorted, 0.5)
dev = xp.asarray(many_sorted)
big_kernel = nms_kernels.nms_mask_cuda(dev, None, 0.5)
T.check(
    big_mask.shape == (m, 2) and np.array_equal(backend.to_numpy(big_kernel), big_mask),
    f"{m} boxes: ({m}, 2) words, kernel == NumPy",
)
T.check(
    np.array_equal(
        ops.nms(many, many_scores, 0.5, backend="cuda"),
        ops.nms(many, many_scores, 0.5, backend="numpy"),
    ),
    f"{m} boxes: cuda backend == reference",
)
if GPU:
    raw = nms_kernels.nms_sorted_cudac(dev, None, 0.5)  # the CUDA C twin of the walk
    T.check(
        np.array_equal(backend.to_numpy(raw), nms_kernels.reduce_mask(big_mask)),
        "the CUDA C RawKernel (kernels/cuda/nms.cu) agrees",
    )
else:
    print("no GPU: the CUDA C RawKernel (kernels/cuda/nms.cu, nms_sorted_cudac) needs one; skipped")

# %% [markdown]
# ## 6. Before and after

# %%
scale = T.pick(3, 2)
names = [f"obj{g}" for g in range(len(gt))]
before = T.caption(
    viz.draw_detections(image, boxes, which, class_names=names, scale=scale, width=2),
    f"before: {len(boxes)} boxes",
)
after = T.caption(
    viz.draw_detections(
        image,
        boxes[keep_ref],
        which[keep_ref],
        scores[keep_ref],
        class_names=names,
        scale=scale,
        width=2,
    ),
    f"after NMS @ {threshold}: {len(keep_ref)} boxes",
)
T.save_grid([before, after], "03_nms.png", colours=256)

# %% [markdown]
# ## Summary
#
# * Greedy NMS: best box first, drop later boxes with IoU > threshold, repeat.
#   Ties by lower index; exactly-threshold pairs survive.
# * A score threshold is not a substitute: it keeps duplicates and loses weak
#   objects.
# * `batched_nms` = NMS per class (or plain NMS on class-shifted boxes).
# * On a GPU: a parallel kernel builds a `(N, N/64)` matrix of 64-bit
#   suppression masks, then a short sequential walk ORs kept rows together.
#
# ## Exercises
#
# Fill in each stub and re-run; the check cell prints `passed` or what it
# expected.
#
# 1. Soft-NMS (Bodla et al. 2017) decays scores instead of deleting boxes:
#    after keeping the best remaining box `b`, every remaining box's score is
#    multiplied by `exp(-IoU(b, box)^2 / sigma)`. Decay alone never deletes
#    anything, so two more steps make a kept set: **re-sort** the remaining
#    boxes by their decayed scores before each pick, and drop a box once its
#    score falls below a final threshold (the authors' code: 0.001). Write it,
#    returning the kept indices in pick order and their decayed scores.
#    (At 0.001 every box of section 1 survives, its duplicates with decayed
#    scores below the first box of every object (the check prints both): the
#    evaluation's ranking does the rest. The check also runs it at `score_thresh=0.3`: then the
#    kept set is NMS's, one box per object.)
# 2. How many `uint64` words does the suppression mask of 6000 proposals (the
#    original Caffe code's pre-NMS top-n at test time) take, and how many bytes travel from
#    the GPU to the host for the reduce?
# 3. The mask kernel skips blocks below the diagonal (`col_block <
#    row_block`): a box can only suppress boxes that come *after* it in score
#    order. How many of the `(row block, column block)` pairs does it compute
#    for 6000 boxes?


# %%
@T.stub
def soft_nms(boxes, scores, sigma=0.5, score_thresh=0.001):
    """Gaussian Soft-NMS: (keep (K,) int64 in pick order, their decayed scores (K,))."""
    raise NotImplementedError


@T.stub
def mask_words_and_bytes(n):
    """(words, bytes) of the (n, ceil(n / 64)) uint64 suppression mask."""
    raise NotImplementedError


@T.stub
def blocks_computed(n):
    """Number of (row block, column block) pairs with col_block >= row_block, blocks of 64."""
    raise NotImplementedError


# %%
def _check_soft():
    twins = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float64)
    keep, decayed = soft_nms(twins, np.array([0.9, 0.8, 0.5]))
    print(f"  twins + a far box: keep {[int(k) for k in keep]}, decayed scores {np.round(decayed, 4)}")
    ok = list(keep) == [0, 2, 1] and np.allclose(decayed, [0.9, 0.5, 0.8 * np.exp(-1 / 0.5)])
    keep_soft, decayed_soft = soft_nms(boxes, scores)
    keep_03, _ = soft_nms(boxes, scores, score_thresh=0.3)
    print(
        f"  section 1's boxes: Soft-NMS keeps {len(keep_soft)} of {len(boxes)} at score_thresh 0.001, "
        f"{len(keep_03)} at 0.3 (objects {sorted(which[keep_03].tolist())}); NMS keeps {len(keep_ref)}"
    )
    g = len(gt)
    if len(keep_soft) > g:
        print(
            f"  its first {g} picks are one box per object: {sorted(which[keep_soft[:g]].tolist()) == list(range(g))}; "
            f"the best duplicate's decayed score {decayed_soft[g]:.3f}, the weakest first box's {decayed_soft[g - 1]:.3f}"
        )
    return (
        ok
        and keep_soft[0] == keep_ref[0]
        and len(keep_ref) <= len(keep_soft) <= len(boxes)
        and sorted(keep_03.tolist()) == sorted(keep_ref.tolist())
    )


T.exercise(
    "3.1",
    _check_soft,
    "identical twins: the second is kept last with score 0.8 * exp(-1 / 0.5) = 0.108; "
    "on section 1 Soft-NMS keeps at least as many boxes as NMS at 0.001, and NMS's boxes at 0.3",
)
T.exercise(
    "3.2",
    lambda: mask_words_and_bytes(6000) == (6000 * 94, 6000 * 94 * 8),
    "6000 rows x 94 words = 564000 words = 4512000 bytes (about 4.5 MB)",
)
T.exercise("3.3", lambda: blocks_computed(6000) == 94 * 95 // 2, "94 * 95 / 2 = 4465 of 94^2 = 8836")
