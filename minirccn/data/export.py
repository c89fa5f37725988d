"""Write a dataset (``shapes`` by default) as VOC, COCO or CSV (the command:
:mod:`minirccn.app.data_export`, ``minirccn data export``).

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

``<id>`` is the image's own name (its file's stem); two images of one stem (``a/x.png`` and
``b/x.png``) get distinct ones (``x``, ``x_1``: :func:`minirccn.core.files.distinct_names`).
Every file is planned before the first is written and the rule of every writer holds
(:func:`minirccn.core.files.check_replace`): a file of the same name already in ``out`` needs
``overwrite``, and a file of the source dataset (its annotation file, its images) is never
replaced.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET

from PIL import Image

from minirccn.core.errors import MinirccnError
from minirccn.core.files import (
    atomic_path,
    check_out_folder,
    check_replace,
    distinct_names,
    save_image,
    write_json,
    write_text,
)
from minirccn.core.progress import progress_bar
from minirccn.data.common import ImageUnreadable, warn

FORMATS = ("voc", "coco", "csv")


def _prepare_dir(path: str) -> str:
    return check_out_folder(path)


def source_files(dataset) -> list:
    """The files ``dataset`` is read from (annotation files and images): never replaced."""
    found = []
    for attr in ("path", "root"):
        value = getattr(dataset, attr, None)
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            found.append(os.fspath(value))
    image_file = getattr(dataset, "image_file", None)
    if image_file is not None:
        for i in range(len(dataset)):
            path = image_file(i)
            if path:
                found.append(path)
    for record in getattr(dataset, "_records", ()):  # VOC: the XML files
        for item in record:
            if isinstance(item, str) and item.endswith(".xml"):
                found.append(item)
    return found


def export_names(dataset, count) -> list:
    """The distinct file stems of the first ``count`` images (their files' stems; ``shapes``:
    ``shapes_<split>_<index>``), read without decoding an image where the data has files."""
    n = len(dataset) if count is None else int(count)
    if not 0 < n <= len(dataset):
        raise MinirccnError(f"--count: expected 1..{len(dataset)} for {dataset.name}, got {count}")
    image_file = getattr(dataset, "image_file", None)
    stems = []
    for i in range(n):
        path = image_file(i) if image_file is not None else None
        stems.append(os.path.splitext(os.path.basename(path))[0] if path else dataset[i]["image_id"])
    return distinct_names(stems)


def _claim(dataset, out, paths, overwrite) -> None:
    check_replace(paths, overwrite=overwrite, inputs=source_files(dataset), where=out)


def _save_image(image, path: str) -> None:
    options = {"quality": 95} if path.lower().endswith((".jpg", ".jpeg")) else {}
    save_image(Image.fromarray(image), path, **options)  # atomic: never half an image


def _samples(dataset, count, progress, skipped=None):
    """``(index, sample)`` of the first ``count`` samples; an image that cannot be decoded is
    skipped with one warning naming it (and its index appended to ``skipped``), as ``train``
    does."""
    n = len(dataset) if count is None else int(count)
    if not 0 < n <= len(dataset):
        raise MinirccnError(f"--count: expected 1..{len(dataset)} for {dataset.name}, got {count}")
    bad = []
    for i in progress_bar(range(n), desc=f"export {dataset.name}", unit="img", enabled=progress):
        try:
            sample = dataset[i]
        except ImageUnreadable as exc:
            warn(f"{exc}; skipped")
            bad.append(i)
            continue
        yield i, sample
    if skipped is not None:
        skipped.extend(bad)
    if len(bad) == n:
        raise MinirccnError(f"{dataset.name}: none of its {n} images could be read")


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
    overwrite: bool = False,
    skipped: list | None = None,
) -> str:
    """Write ``dataset`` (its first ``count`` images) as a VOC folder; returns the root folder."""
    out = _prepare_dir(out)
    names = export_names(dataset, count)
    split_file = os.path.join(out, "ImageSets", "Main", f"{split}.txt")
    paths = [split_file]
    for name in names:
        paths.append(os.path.join(out, "Annotations", f"{name}.xml"))
        paths.append(os.path.join(out, "JPEGImages", f"{name}.{image_format}"))
    _claim(dataset, out, paths, overwrite)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    ids = []
    for i, sample in _samples(dataset, count, progress, skipped):
        image_id = names[i]
        filename = f"{image_id}.{image_format}"
        _save_image(sample["image"], os.path.join(out, "JPEGImages", filename))
        with atomic_path(os.path.join(out, "Annotations", f"{image_id}.xml"), "annotation") as tmp:
            _voc_xml(sample, filename, dataset.class_names).write(
                tmp, encoding="utf-8", xml_declaration=False
            )
        ids.append(image_id)
    write_text(split_file, "".join(f"{i}\n" for i in ids))
    return out


def export_coco(
    dataset,
    out: str,
    count: int | None = None,
    image_format: str = "png",
    progress: bool = False,
    overwrite: bool = False,
    skipped: list | None = None,
) -> str:
    """Write ``dataset`` as ``out/annotations.json`` + ``out/images/``; returns the JSON path."""
    out = _prepare_dir(out)
    names = export_names(dataset, count)
    path = os.path.join(out, "annotations.json")
    _claim(
        dataset,
        out,
        [path, *(os.path.join(out, "images", f"{n}.{image_format}") for n in names)],
        overwrite,
    )
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    images, annotations = [], []
    for k, (i, sample) in enumerate(_samples(dataset, count, progress, skipped)):
        name = names[i]
        h, w = sample["image"].shape[:2]
        filename = f"{name}.{image_format}"
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
    write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    return path


def export_csv(
    dataset,
    out: str,
    count: int | None = None,
    image_format: str = "png",
    progress: bool = False,
    overwrite: bool = False,
    skipped: list | None = None,
) -> str:
    """Write ``dataset`` as ``out/annotations.csv`` + ``out/images/``; returns the CSV path."""
    out = _prepare_dir(out)
    names = export_names(dataset, count)
    path = os.path.join(out, "annotations.csv")
    _claim(
        dataset,
        out,
        [path, *(os.path.join(out, "images", f"{n}.{image_format}") for n in names)],
        overwrite,
    )
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    with atomic_path(path, "annotations") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf"])
        for i, sample in _samples(dataset, count, progress, skipped):
            image_id = names[i]
            h, w = sample["image"].shape[:2]
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
    overwrite: bool = False,
    skipped: list | None = None,
) -> str:
    """Write ``dataset`` in format ``fmt`` (voc, coco, csv) under ``out`` (files of the same
    names already there: replaced only with ``overwrite``; the source's files: never); the
    indices of images that could not be decoded (skipped with a warning) are appended to
    ``skipped``.

    Returns:
        What :func:`minirccn.data.load_dataset` takes to read it back: the VOC root
        folder, the COCO JSON file or the CSV file.
    """
    if fmt not in FORMATS:
        raise MinirccnError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if image_format not in ("png", "jpg"):
        raise MinirccnError(f"--image-format: expected png or jpg, got {image_format!r}")
    options = dict(image_format=image_format, progress=progress, overwrite=overwrite, skipped=skipped)
    if fmt == "voc":
        return export_voc(dataset, out, count, split=split, **options)
    if fmt == "coco":
        return export_coco(dataset, out, count, **options)
    return export_csv(dataset, out, count, **options)
