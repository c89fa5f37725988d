"""``minirccn data``: write a dataset (``shapes`` by default) as VOC, COCO or CSV, or preview it.

::

    minirccn data export --format voc  --out shapes_voc  [--split test] [--count N] [--seed S]
    minirccn data export --format coco --out shapes_coco   # annotations.json + images/
    minirccn data export --format csv  --out shapes_csv    # annotations.csv + images/
    minirccn data preview --out preview.png                # a grid of images with their boxes

The formats: :mod:`minirccn.data.export`. Both replace nothing they were not asked to
(:func:`minirccn.core.files.check_replace`): files already in ``--out`` need ``--overwrite``;
the source dataset's own files are never replaced; ``preview --out`` must end in ``.png``
(it writes a PNG) and without ``--out`` goes to ``preview.png``, or ``preview2.png``, ...
"""

from __future__ import annotations

import os

from minirccn.app import flags
from minirccn.core.errors import MinirccnError
from minirccn.core.files import check_replace, default_output
from minirccn.data import load_dataset
from minirccn.data.checks import check_images
from minirccn.data.common import ImageUnreadable, warn
from minirccn.data.export import FORMATS, export_dataset, source_files
from minirccn.viz import draw_detections, save_grid


def preview(dataset, out: str, count: int = 16, cols: int = 4, scale: int = 2) -> str:
    """Save a grid of the first ``count`` images of ``dataset`` with their boxes drawn."""
    n = min(int(count), len(dataset))
    if n < 1:
        raise MinirccnError(f"--count: expected at least 1 image, got {count}")
    pictures = []
    for i in range(n):
        try:
            s = dataset[i]
        except ImageUnreadable as exc:  # one image that cannot be decoded: skipped, as train does
            warn(f"{exc}; skipped")
            continue
        pictures.append(
            draw_detections(
                s["image"], s["boxes"], s["labels"], class_names=dataset.class_names, scale=scale
            )
        )
    if not pictures:
        raise MinirccnError(f"{dataset.name}: none of its first {n} images could be read")
    return save_grid(pictures, out, cols=cols)


# ----------------------------------------------------------------------------- the command
def add_arguments(parser) -> None:
    """The ``minirccn data`` subcommands: ``export`` and ``preview``."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    ex = sub.add_parser(
        "export",
        help="write a dataset (default shapes) as VOC, COCO or CSV",
        description="write a dataset (default shapes) as VOC, COCO or CSV",
    )
    ex.add_argument("--format", required=True, choices=FORMATS, help="annotation format")
    ex.add_argument("--out", required=True, help="output folder")
    flags.add_data_arguments(ex, help="dataset to export (default: shapes)")
    ex.add_argument("--split", default="test", help="split to export (default: test)")
    ex.add_argument("--count", type=int, default=None, help="export only the first N images")
    flags.add_seed_argument(ex, help="seed of the shapes images (default: 0)")
    ex.add_argument(
        "--image-format", default="png", choices=("png", "jpg"), help="image files (default: png)"
    )
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of the same names already in --out (never the source's own files)",
    )
    pv = sub.add_parser(
        "preview",
        help="save a grid of images with their ground-truth boxes",
        description="save a grid of images with their ground-truth boxes",
    )
    pv.add_argument(
        "--out",
        default=None,
        help=f"output .png file (default: {DEFAULT_PREVIEW}, or preview2.png, ... when it exists)",
    )
    pv.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    flags.add_data_arguments(pv, help="dataset (default: shapes)")
    pv.add_argument("--split", default="train", help="split (default: train)")
    pv.add_argument("--count", type=int, default=16, help="number of images (default: 16)")
    flags.add_seed_argument(pv, help="seed of the shapes images (default: 0)")


DEFAULT_PREVIEW = "preview.png"


def preview_out(out, overwrite: bool) -> str:
    """The file ``data preview`` writes: ``out`` (a ``.png`` name; an existing file needs
    ``overwrite``), else the first free of ``preview.png``, ``preview2.png``, ..."""
    if out is None:
        return default_output(DEFAULT_PREVIEW, "the preview goes")
    if not out.strip():
        raise MinirccnError("--out: expected a .png file name, got an empty string")
    if os.path.splitext(out)[1].lower() != ".png":
        raise MinirccnError(f"--out {out}: the preview is a PNG; give a file name ending in .png")
    check_replace([out], overwrite=overwrite, where=out)
    return out


def run(args) -> int:
    flags.check_seed(args)
    if args.out is not None and not args.out.strip():
        raise MinirccnError("--out: expected a file or folder name, got an empty string")
    if args.data_command == "preview":  # before the data is read: a bad --out fails at once
        args.out = preview_out(args.out, args.overwrite)
    dataset = load_dataset(args.data, split=args.split, images=args.images, seed=args.seed)
    dataset = check_images(dataset, "--data")  # truncated images: skipped, each named
    if args.data_command == "export":
        skipped = []
        path = export_dataset(
            dataset,
            args.format,
            args.out,
            count=args.count,
            split=args.split,
            image_format=args.image_format,
            progress=True,
            skipped=skipped,
            overwrite=args.overwrite,
        )
        n = (len(dataset) if args.count is None else args.count) - len(skipped)
        print(f"wrote {n} images of {dataset.name} as {args.format}: {path}")
    else:
        check_replace([args.out], overwrite=True, inputs=source_files(dataset), where=args.out)
        path = preview(dataset, args.out, count=args.count)
        print(f"wrote {path}")
    return 0
