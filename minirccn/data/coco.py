"""COCO JSON files (object detection, boxes only).

The file holds three lists::

    images:      {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}
    categories:  {"id": 18, "name": "dog"}
    annotations: {"id": 7, "image_id": 1, "category_id": 18, "bbox": [x, y, w, h], "iscrowd": 0}

* ``bbox = [x, y, w, h]`` in continuous pixel coordinates becomes ``(x, y, x + w, y + h)``.
* Category ids, sorted, map to labels ``1 .. K-1`` (COCO's 80 ids run 1..90 with gaps).
* ``iscrowd: 1`` (or ``ignore: 1``) marks the box ``difficult``: the evaluation
  ignores it, as pycocotools does with crowds.
* A file has no split: ``train`` / ``test`` (alias ``val``) are the fixed 90/10
  partition of its image ids of :func:`minirccn.data.common.partition`, ``all`` is every image.
* Images are looked up as ``<images>/<file_name>``; by default ``images`` is
  ``images/`` next to the JSON file if that folder exists, else the JSON file's folder.
"""

from __future__ import annotations

import json
import os

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.data.common import (
    BACKGROUND,
    FileDataset,
    check_box,
    clip_to_image,
    make_sample,
    parse_bool,
    partition,
    path_inside,
    read_image,
    warn,
)


def image_dir(annotation_file: str, images: str | None) -> str:
    """The image folder of ``annotation_file``: ``images`` if given, else ``images/`` beside
    the file if it exists, else the file's own folder; ``MinirccnError`` if it is missing."""
    if images is not None:
        folder = os.fspath(images)
        if not folder.strip():
            raise MinirccnError("--images: expected a folder name, got an empty string")
    else:
        here = os.path.dirname(os.path.abspath(annotation_file))
        sub = os.path.join(here, "images")
        folder = sub if os.path.isdir(sub) else here
    if not os.path.isdir(folder):
        raise MinirccnError(f"{folder}: image folder not found")
    return folder


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise MinirccnError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise MinirccnError(f"{path}: JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise MinirccnError(f"{path}: not a UTF-8 text file") from None
    except ValueError as exc:  # a number of more than 4300 digits, ...
        raise MinirccnError(f"{path}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise MinirccnError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise MinirccnError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise MinirccnError(f"{path}: missing list {key!r}")
    return data


def _field(entry, key: str, where: str):
    if not isinstance(entry, dict) or key not in entry:
        raise MinirccnError(f"{where}: missing {key!r}")
    return entry[key]


def _id(entry, key: str, where: str):
    """An id field: a number or a string (anything else cannot name an image or category)."""
    value = _field(entry, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MinirccnError(f"{where}: {key} must be an integer or a string, got {value!r}")
    return value


class COCODataset(FileDataset):
    """A COCO detection JSON file (see the module docstring).

    Args:
        path: the ``.json`` file.
        split: ``"train"``, ``"test"`` (or ``"val"``) or ``"all"``.
        images: folder of the image files (default: see the module docstring).
    """

    def __init__(self, path: str, split: str = "train", images: str | None = None):
        self.path = os.fspath(path)
        data = _load_json(self.path)
        image_folder = image_dir(self.path, images)

        categories = {}
        for k, cat in enumerate(data["categories"]):
            where = f"{self.path}: categories[{k}]"
            cid, name = _id(cat, "id", where), _field(cat, "name", where)
            if not isinstance(name, str):
                raise MinirccnError(f"{where}: name must be a string, got {name!r}")
            if cid in categories:
                raise MinirccnError(f"{where}: duplicate category id {cid!r}")
            categories[cid] = str(name)
        try:
            cat_ids = sorted(categories)
        except TypeError:
            raise MinirccnError(
                f"{self.path}: category ids must all be numbers (or all strings)"
            ) from None
        self.class_names = [BACKGROUND] + [categories[c] for c in cat_ids]
        label_of = {c: k + 1 for k, c in enumerate(cat_ids)}

        files, declared = {}, {}
        for k, img in enumerate(data["images"]):
            where = f"{self.path}: images[{k}]"
            iid, name = _id(img, "id", where), _field(img, "file_name", where)
            if iid in files:
                raise MinirccnError(f"{where}: duplicate image id {iid!r}")
            path_inside(image_folder, name, where, "file_name")
            files[iid] = name
            w, h = img.get("width"), img.get("height")
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (w, h)):
                declared[iid] = (w, h)
        if not files:
            raise MinirccnError(f"{self.path}: no images (its 'images' list is empty)")

        objects = {iid: [] for iid in files}
        for k, ann in enumerate(data["annotations"]):
            where = f"{self.path}: annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            iid, cid = _id(ann, "image_id", where), _id(ann, "category_id", where)
            bbox = _field(ann, "bbox", where)
            if iid not in files:
                raise MinirccnError(f"{where}: unknown image_id {iid!r}")
            if cid not in categories:
                raise MinirccnError(f"{where}: unknown category_id {cid!r}")
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
            ):
                raise MinirccnError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            box = (x, y, x + w, y + h)
            if not check_box(*box, f"{where} (bbox {bbox})"):
                continue
            crowd = parse_bool(ann.get("iscrowd"), where, "iscrowd") or parse_bool(
                ann.get("ignore"), where, "ignore"
            )
            objects[iid].append((box, label_of[cid], crowd))

        if not categories:
            raise MinirccnError(
                f"{self.path}: no categories (its 'categories' list is empty): no class to learn"
            )
        try:
            ids = partition(list(files), split, self.path)
        except TypeError:
            raise MinirccnError(
                f"{self.path}: image ids must all be numbers (or all strings)"
            ) from None
        self._records = []
        for iid in ids:
            image_path = path_inside(image_folder, files[iid], self.path, "file_name")
            if not os.path.isfile(image_path):
                raise MinirccnError(
                    f"{image_path}: image file not found (image id {iid!r} in {self.path})"
                )
            obj = objects[iid]
            self._records.append(
                (
                    os.path.splitext(os.path.basename(files[iid]))[0],
                    image_path,
                    np.array([o[0] for o in obj], np.float32).reshape(-1, 4),
                    np.array([o[1] for o in obj], np.int64),
                    np.array([o[2] for o in obj], bool),
                    declared.get(iid),
                )
            )
        self.split = split
        self.name = f"coco-{os.path.splitext(os.path.basename(self.path))[0]}-{split}"

    def _load(self, index: int) -> dict:
        image_id, image_path, boxes, labels, difficult, size = self._records[index]
        image = read_image(image_path)
        h, w = image.shape[:2]
        if size is not None and (float(size[0]), float(size[1])) != (w, h):
            warn(
                f"{self.path}: image {image_id}: width {size[0]} height {size[1]} in the file, "
                f"but {image_path} is {w}x{h} (after its EXIF orientation); its boxes are taken "
                "in the image's pixels"
            )
        sample = make_sample(image, boxes, labels, difficult, image_id)
        return clip_to_image(sample, f"{self.path}: image {image_id}")
