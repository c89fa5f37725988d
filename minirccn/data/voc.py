"""Pascal VOC folders: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

Each XML file holds one image's objects::

    <annotation>
      <filename>000005.jpg</filename>
      <object>
        <name>chair</name> <difficult>0</difficult>
        <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
      </object> ...
    </annotation>

VOC numbers pixels from 1 and its boxes include both end pixels: ``xmin=263,
xmax=324`` covers pixel columns 263..324 (1-based), i.e. 0-based columns
262..323, i.e. the continuous interval ``[262, 324)``. So a VOC box becomes
``(xmin - 1, ymin - 1, xmax, ymax)`` here, and width ``xmax - xmin + 1`` of the
devkit is ``x2 - x1`` of this project.

Class names: if every name in the split is one of the 20 VOC classes, the
standard VOC list (in its usual order) is used; otherwise the sorted names
found in all of ``Annotations/``, so train and test splits agree.
``split="all"`` reads every XML file in ``Annotations/``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.data.common import (
    BACKGROUND,
    FileDataset,
    check_box,
    clip_to_image,
    make_sample,
    parse_bool,
    path_inside,
    read_image,
)

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def _text(node, tag: str, where: str, required: bool = True):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise MinirccnError(f"{where}: missing <{tag}>")
        return None
    return child.text.strip()


def _number(node, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise MinirccnError(f"{where}: <{tag}> is not a number: {text!r}") from None


def parse_voc_xml(path: str) -> dict:
    """Read one VOC annotation file.

    Returns:
        ``dict(filename=str | None, objects=[(name, (x1, y1, x2, y2), difficult)])`` with
        boxes already in continuous coordinates ``(xmin - 1, ymin - 1, xmax, ymax)``;
        boxes of zero width or height are skipped with a warning.

    Raises:
        MinirccnError: naming ``path`` (and the object) for malformed XML, a missing
        field, a non-number, a NaN or a box with ``xmax < xmin``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MinirccnError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise MinirccnError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise MinirccnError(f"{path}: expected an <annotation> root element, got <{root.tag}>")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{path}: object {k}"
        name = _text(obj, "name", where)
        box = obj.find("bndbox")
        if box is None:
            raise MinirccnError(f"{where} ({name}): missing <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(box, t, f"{where} ({name})") for t in ("xmin", "ymin", "xmax", "ymax")
        )
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
        if not check_box(x1, y1, x2, y2, f"{where} ({name})"):
            continue
        difficult = parse_bool(_text(obj, "difficult", where, required=False), where, "<difficult>")
        parse_bool(_text(obj, "truncated", where, required=False), where, "<truncated>")
        objects.append((name, (x1, y1, x2, y2), difficult))
    return {"filename": _text(root, "filename", path, required=False), "objects": objects}


def split_files(root: str) -> list:
    """The split names ``ImageSets/Main/<name>.txt`` of VOC folder ``root`` has, sorted
    (per-class lists such as ``dog_train.txt`` left out)."""
    folder = os.path.join(os.fspath(root), "ImageSets", "Main")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    per_class = ("_train", "_val", "_trainval", "_test")
    return sorted(
        n[:-4] for n in names
        if n.endswith(".txt") and not n[:-4].endswith(per_class)
        and os.path.isfile(os.path.join(folder, n))
    )


class VOCDataset(FileDataset):
    """A Pascal VOC style folder (see the module docstring).

    Args:
        root: folder with ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``.
        split: name of a file ``ImageSets/Main/<split>.txt`` (one image id per line), or ``"all"``.
    """

    BOXES = 3  # records: (image_id, image_path, xml, boxes, labels, difficult)

    def __init__(self, root: str, split: str = "train"):
        self.root = os.fspath(root)
        ann_dir = os.path.join(self.root, "Annotations")
        img_dir = os.path.join(self.root, "JPEGImages")
        for folder in (ann_dir, img_dir):
            if not os.path.isdir(folder):
                raise MinirccnError(
                    f"{folder}: folder not found (is {self.root} a VOC root folder?)"
                )
        all_ids = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".xml"))
        if split == "all":
            ids = all_ids
        else:
            list_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(list_file):
                found = split_files(self.root)
                raise MinirccnError(
                    f"{list_file}: split file not found (split {split!r}); "
                    + (
                        f"ImageSets/Main has {', '.join(f'{n}.txt' for n in found)}"
                        if found
                        else "ImageSets/Main has no split files"
                    )
                    + " (--split all: every annotation)"
                )
            try:
                with open(list_file, encoding="utf-8-sig") as f:  # a BOM is not part of an id
                    ids = [line.split()[0] for line in f if line.strip()]
            except UnicodeDecodeError:
                raise MinirccnError(f"{list_file}: not a UTF-8 text file") from None
            except OSError as exc:
                raise MinirccnError(f"{list_file}: cannot read ({exc.strerror or exc})") from None
            if not ids:
                raise MinirccnError(f"{list_file}: no image ids (split {split!r} is empty)")
        if not ids:
            raise MinirccnError(f"{ann_dir}: no .xml annotation files")
        records = []
        for image_id in ids:
            xml = path_inside(ann_dir, f"{image_id}.xml", f"{self.root}: split {split!r}", "id")
            if not os.path.isfile(xml):
                raise MinirccnError(f"{xml}: annotation file not found (listed in split {split!r})")
            rec = parse_voc_xml(xml)
            if rec["filename"]:
                path_inside(img_dir, rec["filename"], xml, "<filename>")
            candidates = ([rec["filename"]] if rec["filename"] else []) + [
                f"{image_id}.jpg",
                f"{image_id}.png",
            ]
            image_path = next(
                (
                    os.path.join(img_dir, c)
                    for c in candidates
                    if os.path.isfile(os.path.join(img_dir, c))
                ),
                None,
            )
            if image_path is None:
                raise MinirccnError(
                    f"{os.path.join(img_dir, candidates[0])}: image file not found (for {xml})"
                )
            records.append((image_id, image_path, xml, rec["objects"]))
        names = {name for *_, objects in records for name, _, _ in objects}
        if names <= set(VOC_CLASSES):
            classes = list(VOC_CLASSES)
        else:
            classes = sorted(names | self._names_in(ann_dir, all_ids, set(ids)))
        self.class_names = [BACKGROUND] + classes
        index = {name: k for k, name in enumerate(self.class_names)}
        self._records = [
            (
                image_id,
                image_path,
                xml,
                np.array([o[1] for o in objects], np.float32).reshape(-1, 4),
                np.array([index[o[0]] for o in objects], np.int64),
                np.array([o[2] for o in objects], bool),
            )
            for image_id, image_path, xml, objects in records
        ]
        self.split = split
        self.name = f"voc-{os.path.basename(os.path.normpath(self.root))}-{split}"

    @staticmethod
    def _names_in(ann_dir: str, all_ids: list, done: set) -> set:
        """Class names used anywhere in ``Annotations/`` (files already parsed skipped)."""
        names = set()
        for image_id in all_ids:
            if image_id in done:
                continue
            path = os.path.join(ann_dir, f"{image_id}.xml")
            try:
                names.update(
                    n.text.strip()
                    for n in ET.parse(path).getroot().findall("object/name")
                    if n.text
                )
            except ET.ParseError:
                continue  # not part of this split; it will be reported when its split is read
        return names

    def _load(self, index: int) -> dict:
        image_id, image_path, xml, boxes, labels, difficult = self._records[index]
        sample = make_sample(read_image(image_path), boxes, labels, difficult, image_id)
        return clip_to_image(sample, xml)
