"""``minirccn lineage``: R-CNN -> Fast R-CNN -> Faster R-CNN, measured on ``shapes``.

The three papers' story in one table, reproduced in miniature::

    minirccn lineage --out runs/lineage --rpn-checkpoint runs/train/checkpoint.npz

1. **Proposals.** Selective search (``fast`` mode, the config's settings) on every
   test image, timed without the cache; the RPN's proposals of a trained
   Faster R-CNN (``--rpn-checkpoint``, else the one trained in step 2) with its
   test top-n raised to ``--rpn-top-n`` so that its curve reaches as far. Recall
   at IoU 0.5 and 0.7 for the first ``N`` proposals of each, ``N`` = 1, 2, 5, ...
   -> ``recall.png``.
2. **Detectors.** R-CNN (``--rcnn-max-proposals`` proposals per image), Fast
   R-CNN (every selective search proposal, at most 2000) and Faster R-CNN, each
   trained ``--iters`` steps from the same seed with the ``tiny`` preset's
   schedule scaled to that length (warmup, LR step, batch-norm freeze, as
   tutorial 8 does), then evaluated on the test images: COCO mAP@0.5 and
   mAP@[.5:.95], and the time per image (median over the images) of the
   proposals (selective search, uncached) and of the network; a Faster R-CNN
   checkpoint given with ``--rpn-checkpoint`` is evaluated as one more row.
3. ``lineage.md`` (the table), ``lineage.json`` (every number), ``recall.png``,
   ``proposals.png`` (one image: selective search's and the RPN's first proposals,
   and each detector's detections).

Every file is written atomically; a folder that already holds ``lineage.json``
is refused unless ``--overwrite``. Proposals are cached on disk
(:mod:`minirccn.proposals.source`), so a second run skips selective search.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from minirccn import viz
from minirccn.app import flags
from minirccn.config import preset
from minirccn.core import files
from minirccn.core.backend import array_module, resolve, to_numpy
from minirccn.core.errors import MinirccnError
from minirccn.core.progress import progress_bar
from minirccn.data import load_dataset
from minirccn.detector.models.external import proposal_source
from minirccn.detector.rpn.proposal_layer import ProposalCreator
from minirccn.engine import runs
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.inference import run_model
from minirccn.engine.loop import train
from minirccn.evaluation import evaluate
from minirccn.ops import box_iou

#: proposal counts of the recall curves
COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
THRESHOLDS = (0.5, 0.7)


# ----------------------------------------------------------------------------- recall


def proposal_recall(proposals, gt_boxes, counts=COUNTS, thresholds=THRESHOLDS) -> np.ndarray:
    """Share of ground-truth boxes that one of the first ``n`` proposals of their image
    covers with ``IoU >= t``, for every ``n`` in ``counts`` and ``t`` in ``thresholds``.

    Args:
        proposals: per image, ``(P_i, 4)`` float boxes, best first.
        gt_boxes: per image, ``(G_i, 4)`` float boxes.
        counts: ``C`` proposal counts; thresholds: ``T`` IoU thresholds.

    Returns:
        ``(T, C)`` float64 recalls (0 where there is no ground truth at all).
    """
    total = sum(len(g) for g in gt_boxes)
    hits = np.zeros((len(thresholds), len(counts)))
    for props, gt in zip(proposals, gt_boxes):
        if len(gt) == 0:
            continue
        props = np.asarray(props, dtype=np.float64).reshape(-1, 4)
        iou = box_iou(
            np.asarray(gt, dtype=np.float64).reshape(-1, 4), props, backend="numpy"
        )  # (G, P)
        for c, n in enumerate(counts):
            best = iou[:, :n].max(axis=1) if min(n, props.shape[0]) > 0 else np.zeros(len(gt))
            for t, thr in enumerate(thresholds):
                hits[t, c] += int((best >= thr).sum())
    return hits / max(total, 1)


def rpn_proposals(model, image, top_n: int, backend) -> np.ndarray:
    """A Faster R-CNN's RPN proposals of one image (its test settings, top-n raised to ``top_n``),
    in the image's pixel coordinates, best first: ``(P, 4)`` float32."""
    cfg = model.config.replace(
        rpn_pre_nms_top_n_test=max(top_n, model.config.rpn_pre_nms_top_n_test),
        rpn_post_nms_top_n_test=top_n,
    )
    layer = ProposalCreator.from_config(cfg, training=False)
    x, scale = model.preprocess(image)
    _, props = model.rpn_proposals(
        array_module(backend).asarray(x[None]), [x.shape[1:]], backend=backend, layer=layer
    )
    boxes = props[0][0]
    return (to_numpy(boxes) / np.float32(scale)).astype(np.float32)


# ----------------------------------------------------------------------------- detectors


def scaled_config(model: str, iters: int, base=None, **changes):
    """``base`` (default: the ``tiny`` preset) for ``model``, its schedule scaled to ``iters``
    steps: warmup, milestones and the batch-norm freeze step in proportion."""
    base = base if base is not None else preset("tiny")
    f = iters / base.iters
    return base.replace(
        model=model,
        iters=iters,
        warmup_iters=max(1, round(base.warmup_iters * f)),
        milestones=tuple(max(1, round(m * f)) for m in base.milestones),
        bn_freeze_iter=max(2, round(base.bn_freeze_iter * f)) if base.bn_freeze_iter > 0 else 0,
        **changes,
    )


def evaluate_timed(model, dataset, n: int, backend, progress: bool = False) -> dict:
    """mAPs of ``model`` on the first ``n`` images and its median seconds per image (warm:
    the first image is run once before timing)."""

    first = dataset[0]
    run_model(model, first["image"], backend, first["image_id"])  # compile / warm up
    preds, targets, seconds = [], [], []
    for i in progress_bar(range(n), desc="eval", unit="img", enabled=progress, leave=False):
        s = dataset[i]
        t0 = time.perf_counter()
        preds.append(run_model(model, s["image"], backend, s["image_id"]))
        seconds.append(time.perf_counter() - t0)
        targets.append({k: s[k] for k in ("boxes", "labels", "difficult")})
    coco = evaluate(preds, targets, metric="coco")
    return {
        "map50": coco["map50"],
        "map": coco["map"],
        "seconds_per_image": float(np.median(seconds)),
    }


# ----------------------------------------------------------------------------- the command


def run_lineage(
    out: str,
    *,
    iters: int = 1500,
    test_images: int = 200,
    rcnn_max_proposals: int = 100,
    rpn_checkpoint: str | None = None,
    rpn_top_n: int = 2000,
    backend=None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    data=None,
    base_config=None,
) -> dict:
    """Everything the module docstring lists; returns the ``lineage.json`` content.

    Args:
        out: output folder.
        iters: training steps of each detector.
        test_images: the first this many test images are measured.
        rcnn_max_proposals: proposals per image R-CNN classifies.
        rpn_checkpoint: a trained Faster R-CNN for the RPN recall curve and an extra row.
        rpn_top_n: RPN proposals kept (after NMS) for the recall curve.
        data: ``(train, test)`` datasets instead of ``shapes`` (tests, tutorials).
        base_config: the config whose schedule is scaled (default: the ``tiny`` preset).
    """

    backend = resolve(backend)
    files.check_out_folder(out)
    # the rule of every writer: any file an earlier (or killed) lineage run wrote needs
    # --overwrite; --rpn-checkpoint is never replaced
    written = [os.path.join(out, f) for f in LINEAGE_FILES] + [
        os.path.join(out, kind, f) for kind in LINEAGE_KINDS for f in runs.RUN_OUTPUTS
    ]
    files.check_replace(
        written, overwrite=overwrite, inputs=[rpn_checkpoint] if rpn_checkpoint else [], where=out
    )
    train_data, test_data = (
        data
        if data is not None
        else (load_dataset("shapes", "train"), load_dataset("shapes", "test"))
    )
    n = min(int(test_images), len(test_data))
    if n < 1 or iters < 1 or rcnn_max_proposals < 1:
        raise MinirccnError(
            "lineage: --iters, --test-images and --rcnn-max-proposals must be positive"
        )
    configs = {
        "rcnn": scaled_config("rcnn", iters, base_config, max_proposals=rcnn_max_proposals),
        "fastrcnn": scaled_config("fastrcnn", iters, base_config),
        "fasterrcnn": scaled_config("fasterrcnn", iters, base_config),
    }
    report = {
        "settings": {
            "iters": iters,
            "test_images": n,
            "rcnn_max_proposals": rcnn_max_proposals,
            "rpn_checkpoint": rpn_checkpoint,
            "rpn_top_n": rpn_top_n,
            "backend": backend,
            "seed": seed,
            "selective_search": proposal_source(configs["fastrcnn"], cache_dir="").record(),
        }
    }

    # 1. selective search on the test images, timed without the cache (then cached)
    source = proposal_source(configs["fastrcnn"])
    ss_boxes, ss_seconds, gts = [], [], []
    for i in progress_bar(range(n), desc="selective search", unit="img", enabled=progress, leave=False):
        s = test_data[i]
        t0 = time.perf_counter()
        boxes = source.search(s["image"])
        ss_seconds.append(time.perf_counter() - t0)
        if source.cache is not None:
            source.cache.put(source.cache_key(s["image"]), boxes)
        ss_boxes.append(boxes[: configs["fastrcnn"].max_proposals])
        gts.append(s["boxes"])

    # 2. the three detectors, trained the same way
    models, rows = {}, {}
    for name, cfg in configs.items():
        result = train(
            cfg,
            train_data=train_data,
            test_data=None,
            out=os.path.join(out, name),
            backend=backend,
            seed=seed,
            eval_split="",
            overwrite=True,
            progress=progress,
            outputs=False,
        )
        models[name] = result["model"]
        rows[name] = {"train_seconds": result["metrics"]["train_seconds"], "iters": iters}
    if rpn_checkpoint:
        rpn_model, state = load_checkpoint(rpn_checkpoint)
        if rpn_model.PROPOSALS != "rpn":
            raise MinirccnError(f"--rpn-checkpoint {rpn_checkpoint}: not a Faster R-CNN checkpoint")
        rpn_model.to(backend)
        models["fasterrcnn_checkpoint"] = rpn_model
        rows["fasterrcnn_checkpoint"] = {"train_seconds": None, "iters": state["step"]}
    else:
        rpn_model = models["fasterrcnn"]

    # 3. RPN proposals and recall curves
    rpn_boxes = [
        rpn_proposals(rpn_model, test_data[i]["image"], rpn_top_n, backend) for i in range(n)
    ]
    recall = {
        "counts": list(COUNTS),
        "thresholds": list(THRESHOLDS),
        "selective_search": proposal_recall(ss_boxes, gts).tolist(),
        "rpn": proposal_recall(rpn_boxes, gts).tolist(),
    }

    # 4. detection quality and time per image
    ss_time = float(np.median(ss_seconds))
    for name, model in models.items():
        ev = evaluate_timed(model, test_data, n, backend, progress)
        row = rows[name]
        row.update(ev)
        if model.PROPOSALS == "external":
            cap = model.config.max_proposals
            props = [b[:cap] for b in ss_boxes]
            row.update(proposal_seconds=ss_time, proposals="selective search")
        else:
            top = model.config.rpn_post_nms_top_n_test  # the model's own test settings
            props = [rpn_proposals(model, test_data[i]["image"], top, backend) for i in range(n)]
            row.update(proposal_seconds=0.0, proposals="RPN (in the network)")
        rec = proposal_recall(props, gts, counts=(10**9,))
        row.update(
            proposals_per_image=float(np.mean([len(p) for p in props])),
            recall50=float(rec[0, 0]),
            recall70=float(rec[1, 0]),
            network_seconds=row["seconds_per_image"],
            total_seconds=row["seconds_per_image"] + row["proposal_seconds"],
        )
    report["rows"] = rows
    report["recall"] = recall
    files.write_json(os.path.join(out, "lineage.json"), report, "lineage.json", indent=2)
    files.write_text(os.path.join(out, "lineage.md"), format_table(report), "lineage.md")
    plot_recall(recall, os.path.join(out, "recall.png"))
    proposals_picture(
        test_data[0], ss_boxes[0], rpn_boxes[0], models, backend, os.path.join(out, "proposals.png")
    )
    return report


LABELS = {
    "rcnn": "R-CNN",
    "fastrcnn": "Fast R-CNN",
    "fasterrcnn": "Faster R-CNN",
    "fasterrcnn_checkpoint": "Faster R-CNN (checkpoint)",
}


def format_table(report: dict) -> str:
    """The markdown table of a :func:`run_lineage` report."""
    s = report["settings"]
    lines = [
        (
            f"shapes test split, first {s['test_images']} images; each detector trained "
            f"{s['iters']} steps (tiny preset, schedule scaled), seed {s['seed']}, backend "
            f"{s['backend']}; selective search {s['selective_search']['mode']} mode, min segment "
            f"{s['selective_search']['min_size']} px; R-CNN on the first "
            f"{s['rcnn_max_proposals']} proposals. Times: median seconds per image."
        ),
        "",
        (
            "| method | proposals | per image | recall@0.5 | recall@0.7 | proposals s "
            "| network s | total s | mAP@0.5 | mAP@[.5:.95] | steps |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["rows"].items():
        lines.append(
            f"| {LABELS[name]} | {r['proposals']} | {r['proposals_per_image']:.0f} | "
            f"{r['recall50']:.3f} | {r['recall70']:.3f} | {r['proposal_seconds']:.3f} | "
            f"{r['network_seconds']:.3f} | {r['total_seconds']:.3f} | {r['map50']:.3f} | "
            f"{r['map']:.3f} | {r['iters']} |"
        )
    return "\n".join(lines) + "\n"


def plot_recall(recall: dict, path: str) -> None:
    """Recall vs number of proposals (log x), one panel per IoU threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = recall["counts"]
    fig, axes = plt.subplots(1, len(recall["thresholds"]), figsize=(9, 3.6), sharey=True)
    for ax, t, ss, rpn in zip(
        axes, recall["thresholds"], recall["selective_search"], recall["rpn"]
    ):
        ax.plot(counts, ss, "o-", label="selective search")
        ax.plot(counts, rpn, "s-", label="RPN")
        ax.set_xscale("log")
        ax.set_xlabel("proposals per image")
        ax.set_title(f"recall at IoU {t}")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("recall")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    with files.atomic_path(path, "recall.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def draw_boxes(image, boxes, scale: int = 2, caption: str = ""):
    """``image`` upscaled ``scale`` times with ``boxes`` outlined (no tags) and a caption on top."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(np.asarray(image)).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(pil)
    colours = [
        (255, 60, 60),
        (60, 200, 60),
        (60, 120, 255),
        (255, 200, 0),
        (255, 0, 255),
        (0, 220, 220),
    ]
    for k, (x1, y1, x2, y2) in enumerate(
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    ):
        draw.rectangle(
            [x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=colours[k % len(colours)], width=1
        )
    return captioned(pil, caption)


def captioned(pil, caption: str):
    """A white strip with ``caption`` above ``pil``."""
    from PIL import Image, ImageDraw

    if not caption:
        return pil
    out = Image.new("RGB", (pil.width, pil.height + 18), (255, 255, 255))
    out.paste(pil, (0, 18))
    ImageDraw.Draw(out).text((3, 3), caption, fill=(0, 0, 0))
    return out


def proposals_picture(
    sample, ss_boxes, rpn_boxes, models, backend, path: str, top: int = 20
) -> str:
    """One image: the first ``top`` selective search and RPN proposals, each model's
    detections scoring >= 0.5; written to ``path``."""
    img = sample["image"]
    tiles = [
        draw_boxes(img, ss_boxes[:top], caption=f"selective search: first {top}"),
        draw_boxes(img, rpn_boxes[:top], caption=f"RPN: first {top}"),
    ]
    for name in ("rcnn", "fastrcnn", "fasterrcnn"):
        model = models[name]
        det = run_model(model, img, backend, sample["image_id"])
        keep = det["scores"] >= 0.5
        pil = viz.draw_detections(
            img,
            det["boxes"][keep],
            det["labels"][keep],
            det["scores"][keep],
            model.class_names,
            scale=2,
        )
        tiles.append(captioned(pil, LABELS[name]))
    return viz.save_grid(tiles, path, cols=len(tiles))


#: what a lineage run writes in --out, beside one run folder per kind (LINEAGE_KINDS)
LINEAGE_FILES = ("lineage.json", "lineage.md", "recall.png", "proposals.png")
LINEAGE_KINDS = ("rcnn", "fastrcnn", "fasterrcnn")


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="runs/lineage", help="output folder (default runs/lineage)"
    )
    parser.add_argument(
        "--iters", type=int, default=1500, help="training steps of each detector (default 1500)"
    )
    parser.add_argument(
        "--test-images", type=int, default=200, help="test images measured (default: all 200)"
    )
    parser.add_argument(
        "--rcnn-max-proposals",
        type=int,
        default=100,
        help="proposals per image R-CNN classifies (default 100)",
    )
    parser.add_argument(
        "--rpn-checkpoint",
        default=None,
        help="a trained Faster R-CNN: RPN recall curve and one more row",
    )
    parser.add_argument(
        "--rpn-top-n", type=int, default=2000, help="RPN proposals for the recall curve"
    )
    flags.add_backend_argument(parser)
    flags.add_seed_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace the lineage run in --out")
    flags.add_progress_argument(parser)


def run(args) -> int:
    flags.check_seed(args)
    for flag in ("iters", "test_images", "rcnn_max_proposals", "rpn_top_n"):
        value = getattr(args, flag)
        if value < 1:
            raise MinirccnError(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
    if args.rpn_checkpoint:
        files.existing_file(args.rpn_checkpoint, flag="--rpn-checkpoint")
    report = run_lineage(
        args.out,
        iters=args.iters,
        test_images=args.test_images,
        rcnn_max_proposals=args.rcnn_max_proposals,
        rpn_checkpoint=args.rpn_checkpoint,
        rpn_top_n=args.rpn_top_n,
        backend=args.backend,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(format_table(report))
    print(f"wrote {args.out}/lineage.md, lineage.json, recall.png, proposals.png")
    return 0
