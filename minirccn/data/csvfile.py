"""CSV files in the Open Images layout: one row per box, normalised coordinates.

::

    ImageID,LabelName,XMin,XMax,YMin,YMax
    000a1249af2bc5f0,cat,0.12,0.57,0.20,0.91

* ``XMin .. XMax`` and ``YMin .. YMax`` are fractions of the image width and
  height in ``[0, 1]``; the box is ``(XMin * W, YMin * H, XMax * W, YMax * H)``
  in continuous pixel coordinates, computed when the image is read.
* Class names are the sorted distinct ``LabelName`` values; labels ``1 .. K-1``.
* An optional ``IsGroupOf`` column (1 = a group of objects) marks the box ``difficult``.
* A row with an empty ``LabelName`` and empty coordinates lists an image with
  no objects (so such images can be part of the dataset).
* The image of ``ImageID`` is ``<images>/<ImageID>.jpg`` (or ``.jpeg``, ``.png``,
  ``.bmp``); ``images`` defaults to ``images/`` next to the CSV file if that folder
  exists, else the CSV file's folder.
* A file has no split: ``train`` / ``test`` (alias ``val``) are the fixed 90/10
  partition of its image ids of :func:`minirccn.data.common.partition`, ``all`` is every image.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.data.coco import image_dir
from minirccn.data.common import (
    BACKGROUND,
    IMAGE_EXTENSIONS,
    FileDataset,
    check_box,
    clip_to_image,
    make_sample,
    parse_bool,
    partition,
    path_inside,
    read_image,
)

COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
TOLERANCE = 1e-6  # normalised coordinates may stray this far outside [0, 1] (rounding)


def _read_rows(path: str):
    """``[(line, row dict)]`` of the CSV file, header checked."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise MinirccnError(f"{path}: empty file, expected a header {','.join(COLUMNS)}")
            missing = [c for c in COLUMNS if c not in reader.fieldnames]
            if missing:
                raise MinirccnError(f"{path}: missing column(s) {', '.join(missing)} in the header")
            rows = []
            for row in reader:
                if None in row or any(row.get(c) is None for c in COLUMNS):
                    raise MinirccnError(
                        f"{path}: line {reader.line_num}: expected {len(reader.fieldnames)} fields"
                    )
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise MinirccnError(f"{path}: malformed CSV ({exc})") from None
    except UnicodeDecodeError:
        raise MinirccnError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise MinirccnError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return rows


def find_image(folder: str, image_id: str) -> str | None:
    """Path of ``<folder>/<image_id>.<ext>`` for the first extension that exists, else None."""
    for ext in IMAGE_EXTENSIONS:
        candidate = os.path.join(folder, image_id + ext)
        if os.path.isfile(candidate):
            return candidate
    return None


class CSVDataset(FileDataset):
    """An Open Images style CSV file (see the module docstring).

    Args:
        path: the ``.csv`` file.
        split: ``"train"``, ``"test"`` (or ``"val"``) or ``"all"``.
        images: folder of the image files (default: see the module docstring).
    """

    def __init__(self, path: str, split: str = "train", images: str | None = None):
        self.path = os.fspath(path)
        image_folder = image_dir(self.path, images)
        objects: dict[str, list] = {}
        for line, row in _read_rows(self.path):
            where = f"{self.path}: line {line}"
            image_id = row["ImageID"].strip()
            if not image_id:
                raise MinirccnError(f"{where}: empty ImageID")
            if image_id not in objects:
                path_inside(image_folder, image_id, where, "ImageID")
            boxes = objects.setdefault(image_id, [])
            name = row["LabelName"].strip()
            coords = [row[c].strip() for c in ("XMin", "YMin", "XMax", "YMax")]
            if not name:
                if any(coords):
                    raise MinirccnError(f"{where}: a box without a LabelName")
                continue  # an image without objects
            try:
                x1, y1, x2, y2 = (float(v) for v in coords)
            except ValueError:
                raise MinirccnError(f"{where}: coordinates are not numbers: {coords}") from None
            if not check_box(x1, y1, x2, y2, f"{where} ({name})"):
                continue
            if min(x1, y1) < -TOLERANCE or max(x2, y2) > 1 + TOLERANCE:
                raise MinirccnError(
                    f"{where} ({name}): coordinates {[x1, x2, y1, y2]} are not normalised to [0, 1]"
                )
            group = parse_bool(row.get("IsGroupOf"), where, "IsGroupOf")
            boxes.append((name, (x1, y1, x2, y2), group))
        if not objects:
            raise MinirccnError(f"{self.path}: no images (only a header)")
        self.class_names = [BACKGROUND] + sorted({o[0] for objs in objects.values() for o in objs})
        label_of = {name: k for k, name in enumerate(self.class_names)}
        self._records = []
        for image_id in partition(list(objects), split, self.path):
            image_path = find_image(image_folder, image_id)
            if image_path is None:
                raise MinirccnError(
                    f"{os.path.join(image_folder, image_id)}.jpg: image file not found "
                    f"(also tried {', '.join(IMAGE_EXTENSIONS[1:4])}; ImageID in {self.path})"
                )
            obj = objects[image_id]
            self._records.append(
                (
                    image_id,
                    image_path,
                    np.array([o[1] for o in obj], np.float64).reshape(-1, 4),
                    np.array([label_of[o[0]] for o in obj], np.int64),
                    np.array([o[2] for o in obj], bool),
                )
            )
        self.split = split
        self.name = f"csv-{os.path.splitext(os.path.basename(self.path))[0]}-{split}"

    def _load(self, index: int) -> dict:
        image_id, image_path, unit_boxes, labels, difficult = self._records[index]
        image = read_image(image_path)
        h, w = image.shape[:2]
        boxes = unit_boxes * np.array([w, h, w, h], dtype=np.float64)
        sample = make_sample(image, boxes, labels, difficult, image_id)
        return clip_to_image(sample, f"{self.path}: image {image_id}")
