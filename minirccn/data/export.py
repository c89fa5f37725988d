"""``minirccn data``: write a dataset (``shapes`` by default) as VOC, COCO or CSV.

::

    minirccn data export --format voc  --out shapes_voc  [--split test] [--count N] [--seed S]
    minirccn data export --format coco --out shapes_coco   # annotations.json + images/
    minirccn data export --format csv  --out shapes_csv    # annotations.csv + images/
    minirccn data preview --out preview.png                # a grid of images with their boxes

What is written, per format:

======  ==========================================================================
voc     ``Annotations/<id>.xml``, ``JPEGImages/<id>.png``, ``ImageSets/Main/<split>.txt``;
        boxes as 1-based inclusive integers ``(x1 + 1, y1 + 1, x2, y2)``, rounded to
        whole pixels (``shapes`` boxes are whole pixels already)
coco    ``annotations.json`` and ``images/<id>.png``; ``bbox = [x1, y1, x2 - x1, y2 - y1]``,
        ``iscrowd`` = difficult, category ids ``1 .. K-1`` in label order
csv     ``annotations.csv`` (``ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf``, coordinates
        divided by the image size) and ``images/<id>.png``; an image without objects is one
        row with only its ``ImageID``
======  ==========================================================================

Every format loads back with :func:`minirccn.data.load_dataset` to the same
boxes and labels (COCO and CSV files carry no split, so load them with
``split="all"`` to get every exported image).
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET

from PIL import Image
from tqdm import tqdm

from minirccn.errors import MinirccnError
from minirccn.runs import atomic_path, check_out_folder, save_image, write_json, write_text

FORMATS = ("voc", "coco", "csv")


def _prepare_dir(path: str) -> str:
    return check_out_folder(path)


def _save_image(image, path: str) -> None:
    options = {"quality": 95} if path.lower().endswith((".jpg", ".jpeg")) else {}
    save_image(Image.fromarray(image), path, **options)  # atomic: never half an image


def _samples(dataset, count, progress):
    n = len(dataset) if count is None else int(count)
    if not 0 < n <= len(dataset):
        raise MinirccnError(f"--count: expected 1..{len(dataset)} for {dataset.name}, got {count}")
    # disable=None: a bar only on a terminal
    for i in tqdm(
        range(n), desc=f"export {dataset.name}", unit="img", disable=None if progress else True
    ):
        yield dataset[i]


def _voc_xml(sample: dict, filename: str, class_names: list) -> ET.ElementTree:
    h, w = sample["image"].shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, label, difficult in zip(sample["boxes"], sample["labels"], sample["difficult"]):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(difficult)))
        bnd = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bnd, tag).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def export_voc(
    dataset,
    out: str,
    count: int | None = None,
    split: str = "test",
    image_format: str = "png",
    progress: bool = False,
) -> str:
    """Write ``dataset`` (its first ``count`` images) as a VOC folder; returns the root folder."""
    out = _prepare_dir(out)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    ids = []
    for sample in _samples(dataset, count, progress):
        image_id = sample["image_id"]
        filename = f"{image_id}.{image_format}"
        _save_image(sample["image"], os.path.join(out, "JPEGImages", filename))
        with atomic_path(os.path.join(out, "Annotations", f"{image_id}.xml"), "annotation") as tmp:
            _voc_xml(sample, filename, dataset.class_names).write(
                tmp, encoding="utf-8", xml_declaration=False
            )
        ids.append(image_id)
    write_text(os.path.join(out, "ImageSets", "Main", f"{split}.txt"), "".join(f"{i}\n" for i in ids))
    return out


def export_coco(
    dataset, out: str, count: int | None = None, image_format: str = "png", progress: bool = False
) -> str:
    """Write ``dataset`` as ``out/annotations.json`` + ``out/images/``; returns the JSON path."""
    out = _prepare_dir(out)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    images, annotations = [], []
    for k, sample in enumerate(_samples(dataset, count, progress)):
        h, w = sample["image"].shape[:2]
        filename = f"{sample['image_id']}.{image_format}"
        _save_image(sample["image"], os.path.join(out, "images", filename))
        images.append({"id": k + 1, "file_name": filename, "width": int(w), "height": int(h)})
        for box, label, difficult in zip(sample["boxes"], sample["labels"], sample["difficult"]):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": k + 1,
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(difficult)),
                }
            )
    categories = [{"id": k, "name": name} for k, name in enumerate(dataset.class_names) if k > 0]
    path = os.path.join(out, "annotations.json")
    write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    return path


def export_csv(
    dataset, out: str, count: int | None = None, image_format: str = "png", progress: bool = False
) -> str:
    """Write ``dataset`` as ``out/annotations.csv`` + ``out/images/``; returns the CSV path."""
    out = _prepare_dir(out)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    path = os.path.join(out, "annotations.csv")
    with atomic_path(path, "annotations") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"])
        for sample in _samples(dataset, count, progress):
            h, w = sample["image"].shape[:2]
            image_id = sample["image_id"]
            _save_image(sample["image"], os.path.join(out, "images", f"{image_id}.{image_format}"))
            if len(sample["boxes"]) == 0:
                writer.writerow([image_id, "", "", "", "", "", ""])
            for box, label, difficult in zip(
                sample["boxes"], sample["labels"], sample["difficult"]
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                writer.writerow(
                    [
                        image_id,
                        dataset.class_names[int(label)],
                        repr(x1 / w),
                        repr(x2 / w),
                        repr(y1 / h),
                        repr(y2 / h),
                        int(bool(difficult)),
                    ]
                )
    return path


def export_dataset(
    dataset,
    fmt: str,
    out: str,
    count: int | None = None,
    split: str = "test",
    image_format: str = "png",
    progress: bool = False,
) -> str:
    """Write ``dataset`` in format ``fmt`` (voc, coco, csv) under ``out``.

    Returns:
        What :func:`minirccn.data.load_dataset` takes to read it back: the VOC root
        folder, the COCO JSON file or the CSV file.
    """
    if fmt not in FORMATS:
        raise MinirccnError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if image_format not in ("png", "jpg"):
        raise MinirccnError(f"--image-format: expected png or jpg, got {image_format!r}")
    if fmt == "voc":
        return export_voc(
            dataset, out, count, split=split, image_format=image_format, progress=progress
        )
    if fmt == "coco":
        return export_coco(dataset, out, count, image_format=image_format, progress=progress)
    return export_csv(dataset, out, count, image_format=image_format, progress=progress)


def preview(dataset, out: str, count: int = 16, cols: int = 4, scale: int = 2) -> str:
    """Save a grid of the first ``count`` images of ``dataset`` with their boxes drawn."""
    from minirccn.viz import draw_detections, save_grid

    n = min(int(count), len(dataset))
    if n < 1:
        raise MinirccnError(f"--count: expected at least 1 image, got {count}")
    pictures = []
    for i in range(n):
        s = dataset[i]
        pictures.append(
            draw_detections(
                s["image"], s["boxes"], s["labels"], class_names=dataset.class_names, scale=scale
            )
        )
    return save_grid(pictures, out, cols=cols)


# ----------------------------------------------------------------------------- CLI
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
    ex.add_argument("--data", default="shapes", help="dataset to export (default: shapes)")
    ex.add_argument("--images", default=None, help="image folder of a COCO/CSV --data")
    ex.add_argument("--split", default="test", help="split to export (default: test)")
    ex.add_argument("--count", type=int, default=None, help="export only the first N images")
    ex.add_argument("--seed", type=int, default=0, help="seed of the shapes images (default: 0)")
    ex.add_argument(
        "--image-format", default="png", choices=("png", "jpg"), help="image files (default: png)"
    )
    pv = sub.add_parser(
        "preview",
        help="save a grid of images with their ground-truth boxes",
        description="save a grid of images with their ground-truth boxes",
    )
    pv.add_argument("--out", default="preview.png", help="output PNG (default: preview.png)")
    pv.add_argument("--data", default="shapes", help="dataset (default: shapes)")
    pv.add_argument("--images", default=None, help="image folder of a COCO/CSV --data")
    pv.add_argument("--split", default="train", help="split (default: train)")
    pv.add_argument("--count", type=int, default=16, help="number of images (default: 16)")
    pv.add_argument("--seed", type=int, default=0, help="seed of the shapes images (default: 0)")


def run(args) -> int:
    from minirccn.data import load_dataset

    if args.seed < 0:
        raise MinirccnError(f"--seed: expected a non-negative integer, got {args.seed}")
    dataset = load_dataset(args.data, split=args.split, images=args.images, seed=args.seed)
    if args.data_command == "export":
        path = export_dataset(
            dataset,
            args.format,
            args.out,
            count=args.count,
            split=args.split,
            image_format=args.image_format,
            progress=True,
        )
        n = len(dataset) if args.count is None else args.count
        print(f"wrote {n} images of {dataset.name} as {args.format}: {path}")
    else:
        path = preview(dataset, args.out, count=args.count)
        print(f"wrote {path}")
    return 0
