"""Use a trained checkpoint: ``minirccn detect`` and ``minirccn eval``.

::

    minirccn detect --checkpoint runs/shapes/checkpoint.npz a.png b.jpg --out detections
    minirccn eval   --checkpoint runs/shapes/checkpoint.npz [--data shapes] [--split test] [--json]

``detect`` writes, per image, ``<out>/<stem>.png`` (the image with its boxes and
``"name score"`` tags) and ``<out>/<stem>.json`` (two inputs of one stem: ``<stem>_1``, ``<stem>_2``, ...,
never a name another input has). It replaces nothing it was not asked to
(:func:`minirccn.core.files.check_replace`): files of those names already in ``--out`` need
``--overwrite``, an input image is never replaced, and without ``--out`` the results go to
``detections``, or ``detections2``, ... when that one holds files::

    {"image": "a.png", "height": 128, "width": 128,
     "boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...], "names": [...],
     "class_names": ["__background__", "circle", ...]}

``eval`` runs the model over a dataset and prints the VOC07 11-point AP@0.5,
the VOC all-point AP@0.5, COCO mAP@[.50:.95], mAP@0.50 and mAP@0.75 and a
per-class table (or one JSON object with ``--json``); see
:mod:`minirccn.evaluation` for the exact rules. :func:`evaluate_model` is the
same computation for Python callers (:mod:`minirccn.engine.inference`).

The model is whatever :func:`minirccn.engine.checkpoint.load_checkpoint` returns.
"""

from __future__ import annotations

import json
import os

from minirccn.app import flags
from minirccn.core.backend import resolve
from minirccn.core.errors import MinirccnError
from minirccn.core.files import (
    check_out_folder,
    check_replace,
    distinct_names,
    existing_file,
    default_output,
    save_image,
    write_json,
)
from minirccn.data import load_dataset
from minirccn.data.checks import check_images
from minirccn.data.common import ImageUnreadable, read_image, warn
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.inference import UnusableImage, evaluate_model, run_model
from minirccn.viz import draw_detections

DEFAULT_SCORE_THRESH = 0.5


def _load_model(path: str):
    """The model stored in checkpoint ``path`` (one :class:`MinirccnError` naming it if unusable)."""
    path = existing_file(path, "checkpoint file")
    model, _state = load_checkpoint(path)
    return model


def _test_flip(model, on: bool):
    """``model`` with its config's ``test_flip`` turned on when ``on`` (``--test-flip``)."""
    if on:
        model.config = model.config.replace(test_flip=True)
    return model


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
    parser.add_argument(
        "--out",
        default=None,
        help=f"output folder (default: {DEFAULT_DETECT_OUT}, or {DEFAULT_DETECT_OUT}2, ... when "
        "it holds files)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results of the same names already in --out (never an input image)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=DEFAULT_SCORE_THRESH,
        help=f"keep detections scoring at least this (default: {DEFAULT_SCORE_THRESH})",
    )
    flags.add_test_flip_argument(parser)
    flags.add_backend_argument(parser)


DEFAULT_DETECT_OUT = "detections"


def _output_stems(paths: list) -> list:
    """File stems for the outputs, one per input and all distinct: an input's own stem, or
    ``<stem>_1``, ... when two inputs share one (never a stem another input has)."""
    return distinct_names([os.path.splitext(os.path.basename(p))[0] or "image" for p in paths])


def _free_folder(path: str) -> bool:
    return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))


def _claim_outputs(args) -> None:
    """``--out`` (default: the first free ``detections``, ``detections2``, ...) and the rule of
    every writer for the files detect will write there (before the model loads)."""
    if args.out is None:
        args.out = default_output(DEFAULT_DETECT_OUT, "the results go", "holds files", _free_folder)
    check_out_folder(args.out)
    paths = [
        os.path.join(args.out, f"{stem}{ext}")
        for stem in _output_stems(args.images)
        for ext in (".png", ".json")
    ]
    check_replace(paths, overwrite=args.overwrite, inputs=args.images, where=args.out)


def run_detect(args) -> int:
    if not 0.0 <= args.score_thresh <= 1.0:
        raise MinirccnError(f"--score-thresh: expected a number in [0, 1], got {args.score_thresh}")
    for path in args.images:
        if not os.path.isfile(path):
            raise MinirccnError(f"{path}: image file not found")
    backend = resolve(args.backend) if args.backend else None
    _claim_outputs(args)  # before the model loads: an unusable --out fails at once
    model = _test_flip(_load_model(args.checkpoint), args.test_flip)
    names = list(model.class_names)
    failed = []
    for path, stem in zip(args.images, _output_stems(args.images)):
        try:
            image = read_image(path)
            det = run_model(model, image, backend, path)
        except (ImageUnreadable, UnusableImage) as exc:  # one bad image: one line, the others run
            if len(args.images) == 1:
                raise
            warn(f"{exc}; skipped")
            failed.append(path)
            continue
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
    if failed and len(failed) == len(args.images):
        raise MinirccnError(f"none of the {len(failed)} images could be read")
    return 0


# ----------------------------------------------------------------------------- eval
def add_arguments_eval(parser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file written by minirccn train"
    )
    flags.add_data_arguments(parser)
    parser.add_argument(
        "--split",
        default=None,
        help="split to evaluate (default: all of a COCO/CSV file, else test)",
    )
    flags.add_seed_argument(parser, help="seed of the shapes images (default: 0)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    flags.add_test_flip_argument(parser)
    flags.add_backend_argument(parser)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )


def run_eval(args) -> int:
    flags.check_seed(args)
    if args.limit is not None and args.limit < 1:
        raise MinirccnError(f"--limit: expected a positive number of images, got {args.limit}")
    backend = resolve(args.backend) if args.backend else None
    if args.split is None:  # a COCO/CSV file given for evaluation is evaluated whole
        args.split = "all" if str(args.data).lower().endswith((".json", ".csv")) else "test"
    dataset = load_dataset(args.data, split=args.split, images=args.images, seed=args.seed)
    if len(dataset) == 0:
        raise MinirccnError(f"{args.data}: split {args.split!r} has no images")
    dataset = check_images(dataset, "--data")  # unreadable images: skipped, each named
    model = _test_flip(_load_model(args.checkpoint), args.test_flip)
    if list(model.class_names) != list(dataset.class_names):
        raise MinirccnError(
            f"{args.data}: its classes {dataset.class_names[1:]} differ from the classes of "
            f"{args.checkpoint} {list(model.class_names)[1:]}"
        )
    result = evaluate_model(
        model,
        dataset,
        backend=backend,
        progress=not args.json,
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
