"""Use a trained checkpoint: ``minirccn detect`` and ``minirccn eval``.

::

    minirccn detect --checkpoint runs/shapes/checkpoint.npz a.png b.jpg --out detections
    minirccn eval   --checkpoint runs/shapes/checkpoint.npz [--data shapes] [--split test] [--json]

``detect`` writes, per image, ``<out>/<stem>.png`` (the image with its boxes and
``"name score"`` tags) and ``<out>/<stem>.json``::

    {"image": "a.png", "height": 128, "width": 128,
     "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...], "names": [...],
     "class_names": ["__background__", "circle", ...]}

``eval`` runs the model over a dataset and prints the VOC07 11-point AP@0.5,
the VOC all-point AP@0.5, COCO mAP@[.50:.95], mAP@0.50 and mAP@0.75 and a
per-class table (or one JSON object with ``--json``); see
:mod:`minirccn.evaluation` for the exact rules. :func:`evaluate_model` is the
same computation for Python callers (the trainer uses it after training).

The model is whatever :func:`minirccn.checkpoint.load_checkpoint` returns: it has
``class_names`` and ``predict(image, backend=None) -> dict(boxes, scores, labels)``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from tqdm import tqdm

from minirccn.backend import BACKENDS, resolve, to_numpy
from minirccn.errors import MinirccnError
from minirccn.evaluation import evaluate
from minirccn.runs import check_out_folder, save_image, write_json

DEFAULT_SCORE_THRESH = 0.5


def _load_model(path: str):
    """The model stored in checkpoint ``path`` (one :class:`MinirccnError` naming it if unusable)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinirccnError(f"{path}: checkpoint file not found")
    try:
        from minirccn.checkpoint import load_checkpoint
    except ImportError as exc:  # the detector package is not installed in this tree
        raise MinirccnError(f"{path}: cannot load checkpoints here ({exc})") from None
    model, _state = load_checkpoint(path)
    return model


def run_model(model, image: np.ndarray, backend: str | None = None, image_id=None) -> dict:
    """``model.predict(image)`` as NumPy arrays with checked shapes.

    Args:
        image: ``(H, W, 3)`` uint8.
        image_id: passed on (models whose proposals come from a file look it up).

    Returns:
        ``dict(boxes=(D, 4) float32, scores=(D,) float32, labels=(D,) int64)``.
    """
    out = model.predict(image, backend=backend, image_id=image_id)
    boxes = np.asarray(to_numpy(out["boxes"]), dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(to_numpy(out["scores"]), dtype=np.float32).reshape(-1)
    labels = np.asarray(to_numpy(out["labels"]), dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise MinirccnError(
            f"model.predict returned {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
        )
    return {"boxes": boxes, "scores": scores, "labels": labels}


def evaluate_model(
    model, dataset, backend: str | None = None, progress: bool = True, limit: int | None = None
) -> dict:
    """Run ``model`` over ``dataset`` and score it with every metric.

    Args:
        model: has ``class_names`` and ``predict(image, backend=None)``.
        dataset: a dataset of :mod:`minirccn.data` whose labels mean what the model's do.
        backend: passed to ``model.predict``.
        progress: show a tqdm bar.
        limit: evaluate only the first ``limit`` images.

    Returns:
        ``{"map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100"}``
        (COCO), ``"voc07_map50"``, ``"voc_map50"``, ``"num_images"`` and ``"per_class"``:
        class name -> ``{"ap", "ap50", "voc07_ap50", "voc_ap50"}`` (None for a class
        without ground truth in the data).
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    predictions, targets = [], []
    for i in tqdm(
        range(n), desc=f"eval {dataset.name}", unit="img", disable=not progress, leave=False
    ):
        sample = dataset[i]
        predictions.append(run_model(model, sample["image"], backend, sample["image_id"]))
        targets.append({k: sample[k] for k in ("boxes", "labels", "difficult")})
    coco = evaluate(predictions, targets, metric="coco")
    voc07 = evaluate(predictions, targets, metric="voc07")
    voc = evaluate(predictions, targets, metric="voc")
    names = list(getattr(model, "class_names", None) or dataset.class_names)
    per_class = {
        name: {
            "ap": coco["per_class"].get(k),
            "ap50": coco["per_class50"].get(k),
            "voc07_ap50": voc07["per_class"].get(k),
            "voc_ap50": voc["per_class"].get(k),
        }
        for k, name in enumerate(names)
        if k > 0
    }
    result = {
        key: coco[key]
        for key in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100")
    }
    result.update(
        voc07_map50=voc07["map50"], voc_map50=voc["map50"], num_images=n, per_class=per_class
    )
    return result


def format_table(result: dict, title: str = "") -> str:
    """The text report of :func:`evaluate_model`'s result: overall metrics, then per class."""

    def fmt(v):
        return "    -" if v is None or v < 0 else f"{v:.4f}"

    lines = [title] if title else []
    rows = [
        ("VOC07 11-point AP@0.5", fmt(result["voc07_map50"])),
        ("VOC all-point AP@0.5", fmt(result["voc_map50"])),
        ("COCO mAP@[.50:.95]", fmt(result["map"])),
        ("COCO mAP@0.50", fmt(result["map50"])),
        ("COCO mAP@0.75", fmt(result["map75"])),
        (
            "COCO mAP small/medium/large",
            " / ".join(fmt(result[k]).strip() for k in ("map_small", "map_medium", "map_large")),
        ),
    ]
    lines += [f"{name:<28} {value}" for name, value in rows]
    lines.append("")
    width = max([len("class")] + [len(n) for n in result["per_class"]])
    lines.append(f"{'class':<{width}}  VOC07 AP50  VOC AP50  COCO AP  COCO AP50")
    for name, ap in result["per_class"].items():
        lines.append(
            f"{name:<{width}}  {fmt(ap['voc07_ap50']):>10}  {fmt(ap['voc_ap50']):>8}  "
            f"{fmt(ap['ap']):>7}  {fmt(ap['ap50']):>9}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- detect
def add_arguments_detect(parser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file written by minirccn train"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--out", default="detections", help="output folder (default: detections)")
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=DEFAULT_SCORE_THRESH,
        help=f"keep detections scoring at least this (default: {DEFAULT_SCORE_THRESH})",
    )
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="numpy, numba or cuda")


def _output_stems(paths: list) -> list:
    """File stems for the outputs, made unique (``a``, ``a_1``, ...) when two inputs share one."""
    seen, stems = {}, []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "image"
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        stems.append(stem if k == 0 else f"{stem}_{k}")
    return stems


def run_detect(args) -> int:
    from minirccn.data.common import read_image
    from minirccn.viz import draw_detections

    if not 0.0 <= args.score_thresh <= 1.0:
        raise MinirccnError(f"--score-thresh: expected a number in [0, 1], got {args.score_thresh}")
    for path in args.images:
        if not os.path.isfile(path):
            raise MinirccnError(f"{path}: image file not found")
    backend = resolve(args.backend) if args.backend else None
    check_out_folder(args.out)  # before the model loads: an unusable --out fails at once
    model = _load_model(args.checkpoint)
    names = list(model.class_names)
    for path, stem in zip(args.images, _output_stems(args.images)):
        image = read_image(path)
        det = run_model(model, image, backend, path)
        keep = det["scores"] >= args.score_thresh
        boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
        scale = 2 if max(image.shape[:2]) < 256 else 1
        save_image(
            draw_detections(image, boxes, labels, scores, class_names=names, scale=scale),
            os.path.join(args.out, f"{stem}.png"),
        )
        record = {
            "image": path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "boxes": [[round(float(v), 3) for v in b] for b in boxes],
            "scores": [round(float(s), 5) for s in scores],
            "labels": [int(k) for k in labels],
            "names": [names[k] if 0 <= k < len(names) else str(k) for k in labels.tolist()],
            "class_names": names,
        }
        write_json(os.path.join(args.out, f"{stem}.json"), record, "detections", indent=1)
        print(f"{path}: {len(boxes)} detections -> {os.path.join(args.out, stem)}.png/.json")
    return 0


# ----------------------------------------------------------------------------- eval
def add_arguments_eval(parser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file written by minirccn train"
    )
    parser.add_argument(
        "--data",
        default="shapes",
        help="shapes (default), a VOC root folder, a COCO .json or a .csv file",
    )
    parser.add_argument("--images", default=None, help="image folder of a COCO/CSV --data")
    parser.add_argument(
        "--split",
        default=None,
        help="split to evaluate (default: all of a COCO/CSV file, else test)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the shapes images (default: 0)"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="numpy, numba or cuda")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )


def run_eval(args) -> int:
    from minirccn.data import load_dataset

    if args.seed < 0:
        raise MinirccnError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.limit is not None and args.limit < 1:
        raise MinirccnError(f"--limit: expected a positive number of images, got {args.limit}")
    backend = resolve(args.backend) if args.backend else None
    if args.split is None:  # a COCO/CSV file given for evaluation is evaluated whole
        args.split = "all" if str(args.data).lower().endswith((".json", ".csv")) else "test"
    dataset = load_dataset(args.data, split=args.split, images=args.images, seed=args.seed)
    if len(dataset) == 0:
        raise MinirccnError(f"{args.data}: split {args.split!r} has no images")
    from minirccn.preflight import check_images

    dataset = check_images(dataset, "--data")  # unreadable images: skipped, each named
    model = _load_model(args.checkpoint)
    if list(model.class_names) != list(dataset.class_names):
        raise MinirccnError(
            f"{args.data}: its classes {dataset.class_names[1:]} differ from the classes of "
            f"{args.checkpoint} {list(model.class_names)[1:]}"
        )
    result = evaluate_model(
        model,
        dataset,
        backend=backend,
        progress=not args.json and sys.stderr.isatty(),
        limit=args.limit,
    )
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "data": dataset.name, **result}))
    else:
        print(
            format_table(
                result,
                f"{dataset.name}: {result['num_images']} images, checkpoint {args.checkpoint}",
            )
        )
    return 0
