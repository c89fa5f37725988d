# %% [markdown]
# # Tutorial 13: R-CNN -> Fast R-CNN -> Faster R-CNN
#
# Faster R-CNN is the third step of a three-paper story. Each step removed the
# most expensive thing the step before it did:
#
# 1. **R-CNN** (2014): *selective search* proposes about two thousand regions
#    per image, without learning; each region is cut out of the **pixels** and
#    warped to a fixed size, and a CNN (ImageNet-trained, fine-tuned on the
#    warped regions) turns it into features. The classifier is not the CNN:
#    one linear **SVM per class** scores the fc7 features, and a separate
#    class-specific linear (ridge) **box regressor** on the pool5 features
#    refines the box. Three trainings in turn (fine-tune the CNN, fit the
#    SVMs, fit the regressors), and two thousand CNN forward passes per image.
# 2. **SPPnet** (He et al. 2014) ran the CNN **once** per image and pooled each
#    region from the **feature map** (spatial pyramid pooling), which made
#    testing 24-102x faster (its paper); its training was still R-CNN's three stages, and
#    the conv layers were not fine-tuned through the pooling.
# 3. **Fast R-CNN** (2015) kept the one pass per image with a single-level
#    pooling (RoI pooling, tutorial 4) that gradients flow through, so all
#    layers are fine-tuned, and replaced the SVMs and the separate regressors
#    by one network trained in **one stage** with a multi-task loss (softmax
#    classification + box regression together). The proposals still come
#    from selective search, which now costs more than the network.
# 4. **Faster R-CNN** (2015): let the network propose the regions too (the RPN,
#    tutorials 6-7): the proposals cost a small head on the shared feature map
#    (a 3x3 conv and two 1x1 convs) and the proposal layer.
#
# minirccn implements R-CNN, Fast R-CNN and Faster R-CNN with the same
# backbone and fc head, so that the differences are mostly the ones the papers
# made. One difference it does not make: its R-CNN trains a softmax classifier
# and the box regressor jointly (like Fast R-CNN's head) instead of per-class
# SVMs and a ridge regressor (`docs/lineage.md`; [`DEVIATIONS.md`](DEVIATIONS.md)). This tutorial builds
# selective search from its two parts (graph segmentation, hierarchical
# grouping), counts the CNN passes of R-CNN and Fast R-CNN, and then runs
# `minirccn lineage`, which trains the three detectors the same way and
# measures proposal recall, time per image and mAP.
#
# **Budget.** The detectors here train a few hundred steps, so that the
# whole script stays within three minutes (its measured time is in
# `tutorials/README.md`); the table at the end is the real measurement, the
# output of `minirccn lineage` stored in `docs/lineage.json`.

# %%
import os

# many small GEMMs (one per crop batch, per RoI batch) run best on one BLAS thread, as
# `minirccn train` and `minirccn lineage` run them; this must be set before NumPy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import shutil
import tempfile
import time
from pathlib import Path

import _common as T
import numpy as np
from PIL import Image

from minirccn.app import lineage as L
from minirccn.config import preset
from minirccn.data import ShapesConfig, load_dataset
from minirccn.detector.backbones import vgg as _bb
from minirccn.proposals import segmentation as seg
from minirccn.proposals import selective_search as ss

BACKEND = "numba"
if T.FAST:  # the test suite: keep selective search's proposal cache out of ~/.cache
    os.environ.setdefault("MINIRCCN_CACHE", str(T.out_dir() / "cache"))
ITERS = T.pick(240, 2)  # training steps of each detector in section 4
TEST_IMAGES = T.pick(40, 2)  # test images measured in section 4
RCNN_PROPOSALS = T.pick(50, 5)  # proposals per image R-CNN classifies in section 4
COUNTED = T.pick(200, 10)  # proposals given to R-CNN when counting its CNN passes (section 3)

test = load_dataset("shapes", "test")
sample = test[0]
image = sample["image"]
print(f"image {sample['image_id']}: {image.shape}, objects {sample['boxes'].tolist()}")

# %% [markdown]
# ## 1. Graph segmentation (Felzenszwalb & Huttenlocher)
#
# Pixels are vertices; each pixel has an edge to its 8 neighbours, weighted by
# the colour distance of the (Gaussian-blurred) pixels. Edges are visited
# from the lightest; an edge merges its two components when its weight is at
# most each component's largest internal edge plus `k / size`:
#
#     w <= min(Int(A) + k / |A|,  Int(B) + k / |B|)
#
# Small components accept heavy edges (k / 1 is large), big ones only light
# edges: `k` sets the scale. A last pass merges components smaller than
# `min_size` pixels into a neighbour. The reference is a plain Python loop
# over the sorted edges with union-find; the Numba kernel makes the same
# decisions several times faster (the printed times; on a 128 x 128 image the
# loop's part that Numba speeds up is small next to the work both share).
# They must give the same labels.

# %%
T.section("segmentation")
hsv = ss.convert_colour(image, "hsv")
seg.felzenszwalb(hsv, k=50, backend="numba")  # compile (or load) the kernel before timing
for k in (50, 100, 300):
    t0 = time.perf_counter()
    ref = seg.felzenszwalb(hsv, k=k, min_size=10, backend="numpy")
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = seg.felzenszwalb(hsv, k=k, min_size=10, backend="numba")
    t_fast = time.perf_counter() - t0
    print(f"k={k:3d}: {ref.max() + 1:3d} segments  (reference {t_ref:.3f} s, numba {t_fast:.4f} s: "
          f"{t_ref / t_fast:.0f}x)")
    T.check((ref == fast).all(), f"numba labels == reference labels at k={k}")
labels = seg.felzenszwalb(hsv, k=50, min_size=10)

# %% [markdown]
# ## 2. Hierarchical grouping
#
# Start from the segments; repeatedly merge the two **adjacent** regions that
# are most similar; every region that ever exists is a proposal (its box).
# Similarity is a sum of up to four measures in [0, 1]: colour histogram
# intersection, texture (gradient-orientation histogram) intersection, size
# (small pairs first) and fill (pairs whose box they fill). The first merge
# must be the most similar adjacent pair; we check that against all pairs.

# %%
T.section("grouping")
regions = ss.region_features(hsv, labels)
measures = ("colour", "texture", "size", "fill")
hier = ss.hierarchical_grouping(regions, measures)
all_s = ss.similarity(
    *regions[:4], regions.pairs[:, 0], regions.pairs[:, 1], regions.image_area, measures
)
print(
    f"{len(regions.size)} regions, {len(regions.pairs)} adjacent pairs -> {len(hier.boxes)} boxes"
)
for m in range(5):
    a, b = hier.merges[m]
    print(
        f"merge {m}: regions {a:3d} + {b:3d} (similarity {hier.similarities[m]:.3f}) -> box {hier.boxes[len(regions.size) + m].tolist()}"
    )
T.check(
    np.isclose(hier.similarities[0], all_s.max()),
    "the first merge is the most similar adjacent pair",
)
T.check(hier.boxes[-1].tolist() == [0, 0, 128, 128], "the last region is the whole image")

# %% [markdown]
# ## 3. Diversification, and R-CNN's 2000 passes vs Fast R-CNN's one
#
# No single colour space, scale or similarity finds every object, so
# selective search runs several strategies and pools their boxes: the "fast"
# mode uses 2 colour spaces (HSV, Lab) x 2 scales (k = 50, 100) x 2
# similarity sums. The pooled boxes are ranked by hierarchy level times a
# seeded random number (the paper's trick: no strategy dominates the top).
#
# Then we count CNN forward passes: R-CNN warps every proposal to a crop and
# runs the backbone on each crop; Fast R-CNN runs the backbone once on the
# whole image and pools each proposal from the feature map.

# %%
T.section("selective search, fast mode")
for space, k, ms in ss.strategies("fast"):
    lab = seg.felzenszwalb(ss.convert_colour(image, space), k=k, min_size=10)
    print(
        f"{space:3s} k={k:3d} {'+'.join(m[0].upper() for m in ms):7s}: {2 * (lab.max() + 1) - 1:4d} regions"
    )
boxes = ss.selective_search(image, "fast", min_size=10)
print(f"pooled and deduplicated: {len(boxes)} proposals")

from minirccn.detector.models.fast_rcnn import FastRCNN
from minirccn.detector.models.rcnn import RCNN

names = test.class_names
calls = []
real_forward = _bb.backbone_forward


def counting_forward(params, x, spec, train=True, backend=None):
    calls.append(x.shape[0])  # images (or crops) in this forward pass
    return real_forward(params, x, spec, train=train, backend=backend)


_bb.backbone_forward = counting_forward
for cls, name in ((RCNN, "rcnn"), (FastRCNN, "fastrcnn")):
    model = cls(preset("tiny", model=name, max_proposals=COUNTED), names)
    model.source.cache = None  # recompute: we time it
    calls.clear()
    t0 = time.perf_counter()
    model.predict(image, backend=BACKEND)
    print(
        f"{cls.__name__:8s}: backbone on {sum(calls):4d} inputs in {len(calls)} call(s), {time.perf_counter() - t0:.2f} s"
    )
    if cls is RCNN:
        T.check(sum(calls) == min(COUNTED, len(boxes)), "R-CNN runs the CNN once per proposal")
    else:
        T.check(calls == [1], "Fast R-CNN runs the CNN once per image")
_bb.backbone_forward = real_forward

tiles = [
    L.draw_boxes(image, [], caption="image"),
    L.captioned(  # the same strip of caption as the other panels
        Image.fromarray(
            (np.random.default_rng(0).integers(40, 256, (labels.max() + 1, 3))[labels]).astype(np.uint8)
        ).resize((256, 256), Image.NEAREST),
        f"segmentation (HSV, k = 50): {labels.max() + 1} segments",
    ),
    L.draw_boxes(image, boxes[:20], caption="first 20 proposals"),
    L.draw_boxes(image, boxes, caption=f"all {len(boxes)}"),
]
T.save_grid(tiles, "13_selective_search.png", cols=4)

# %% [markdown]
# ## 4. The lineage, measured (short runs)
#
# `minirccn lineage` trains R-CNN, Fast R-CNN and Faster R-CNN from the same
# seed with the same schedule, computes the recall of selective search and of
# the RPN against the number of proposals, and times inference. Here with a
# few hundred steps and a few test images (in fast mode: a toy network on
# 64-pixel images).

# %%
T.section("minirccn lineage (short)")
out = Path(tempfile.mkdtemp(prefix="minirccn-lineage-"))  # the run's checkpoints: not kept
if T.FAST:
    small = ShapesConfig(
        image_size=64, min_object_size=8, max_object_size=40, train_size=6, val_size=2, test_size=3
    )
    data = (
        load_dataset("shapes", "train", shapes_config=small),
        load_dataset("shapes", "test", shapes_config=small),
    )
    base = preset(
        "tiny",
        backbone_stages=((4, 1, True), (8, 1, True), (8, 1, False)),
        min_size=64,
        max_size=64,
        representation_size=16,
        rpn_channels=8,
        box_batch_size_per_image=16,
        rcnn_crop_size=16,
    )
else:
    data, base = None, None
report = L.run_lineage(
    str(out),
    iters=ITERS,
    test_images=TEST_IMAGES,
    rcnn_max_proposals=RCNN_PROPOSALS,
    backend=BACKEND,
    progress=False,
    data=data,
    base_config=base,
)
print(L.format_table(report))
for curve in report["recall"]["selective_search"] + report["recall"]["rpn"]:
    T.check((np.diff(curve) >= 0).all(), "recall never drops when proposals are added")
shutil.copy(out / "recall.png", T.out_dir() / "13_recall.png")
# the picture's panels name the detector only: say what its boxes are (an empty panel is a
# short-trained detector with no detection that confident)
T.save(
    T.caption(
        Image.open(out / "proposals.png").convert("RGB"),
        "test image 0: the first 20 proposals of selective search and of the RPN;\n"
        f"then each detector's detections scoring >= 0.5 ({ITERS} training steps)",
    ),
    "13_proposals.png",
)
print(f"wrote {T.out_dir() / '13_recall.png'}")
shutil.rmtree(out)

# %% [markdown]
# ## 5. The full measurement
#
# `docs/lineage.json` is the output of the command in `docs/lineage.md`
# (longer training, all 200 test images, and the default run's Faster R-CNN
# checkpoint for the RPN curve). Its table, and under it how its checkpoint
# row compares with today's default run (`docs/metrics.json`: the lineage was
# measured with the checkpoint of its time):

# %%
T.section("docs/lineage.json")
stored = Path(__file__).resolve().parent.parent / "docs" / "lineage.json"
if stored.is_file():
    lineage = json.loads(stored.read_text())
    print(L.format_table(lineage))
    ckpt = lineage["rows"].get("fasterrcnn_checkpoint")
    today = json.loads(T.METRICS.read_text())
    if ckpt is not None:
        print(
            f"the checkpoint row: mAP@0.5 {ckpt['map50']:.3f}, COCO mAP {ckpt['map']:.3f}; today's default "
            f"run (docs/metrics.json, the same {today['iters']} steps): {today['map50']:.3f}, {today['map']:.3f}"
        )
else:
    print(f"{stored} not found: run the command in docs/lineage.md")

# %% [markdown]
# ## Summary
#
# * Selective search = graph segmentation (union-find with the `k / |C|`
#   threshold) + greedy merging of the most similar neighbours, diversified
#   over colour spaces, scales and similarities. No learning; its recall is
#   high but its boxes are not ranked by "objectness".
# * R-CNN runs the CNN once per proposal: its time grows with the number of
#   proposals. Fast R-CNN runs it once per image: the network becomes cheap and
#   selective search becomes the bottleneck. Faster R-CNN learns the
#   proposals: a few hundred ranked boxes, in the same forward pass.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected.
#
# 1. Run `ss.selective_search(image, "quality", min_size=10)` beside the
#    "fast" mode: how many boxes each, and the recall at IoU 0.7 of this
#    image's objects (the share of objects with a box at IoU >= 0.7)?
# 2. Set `min_size=None` (the paper's `min_size = k`): which objects of the
#    test image have no proposal at IoU >= 0.5 any more, and why (hint: with
#    `min_size = k`, 50 or 100 pixels, a segment of a small object, a few
#    pixels across, is merged into a neighbour before grouping starts)?
# 3. Give R-CNN `n` proposals (`preset("tiny", model="rcnn", max_proposals=n)`,
#    or `minirccn lineage --rcnn-max-proposals`): count its backbone inputs for
#    a few `n`. Its time per image grows the same way.


# %%
@T.stub
def fast_vs_quality(image, gt):
    """(boxes fast, boxes quality, recall@0.7 fast, recall@0.7 quality) of selective search, min_size 10."""
    raise NotImplementedError


@T.stub
def objects_lost_with_paper_min_size(image, gt):
    """Sorted indices of the objects with a proposal at IoU >= 0.5 at min_size=10 but not at None."""
    raise NotImplementedError


@T.stub
def rcnn_backbone_inputs(n):
    """Crops R-CNN's backbone sees in one predict of ``image`` with max_proposals=n."""
    raise NotImplementedError


# %%
gt_boxes = sample["boxes"].astype(np.float64)


def _check_quality():
    n_f, n_q, r_f, r_q = fast_vs_quality(image, gt_boxes)
    print(f"  fast {n_f} boxes, recall@0.7 {r_f:.2f}; quality {n_q} boxes, recall@0.7 {r_q:.2f}")
    return n_f == len(boxes) and n_q > n_f and 0 <= r_f <= r_q <= 1


T.exercise("13.1", _check_quality, f"fast: section 3's {len(boxes)} boxes; quality: more boxes, recall no lower")


def _check_min_size():
    lost = list(objects_lost_with_paper_min_size(image, gt_boxes))
    sides = [round(float(min(gt_boxes[j, 2:] - gt_boxes[j, :2]))) for j in lost]
    print(f"  lost objects {lost}, shorter sides {sides} px")
    return all(0 <= j < len(gt_boxes) for j in lost) and all(v < 16 for v in sides)


T.exercise("13.2", _check_min_size, "only small objects (shorter side under 16 px), if any")


def _check_rcnn():
    counts = {n_p: rcnn_backbone_inputs(n_p) for n_p in T.pick((5, 20, 50), (2, 5))}
    print(f"  backbone inputs per max_proposals: {counts}")
    return all(v == min(n_p, len(boxes)) for n_p, v in counts.items())


T.exercise("13.3", _check_rcnn, "one crop per proposal: min(n, the proposals selective search found)")
