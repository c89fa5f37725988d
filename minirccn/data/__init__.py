"""Datasets, loaders and transforms.

One entry point, :func:`load_dataset`, turns what a user types after ``--data``
into a dataset: ``len(ds)``, ``ds[i]`` (a sample dict, see
:mod:`minirccn.data.common`), ``ds.class_names`` (index 0 is
``"__background__"``) and ``ds.name``.

=======================  ===================================  ======================
spec                     loader                               splits
=======================  ===================================  ======================
``shapes``               :mod:`minirccn.data.shapes`          train, val, test
VOC root folder          :mod:`minirccn.data.voc`             ``ImageSets/Main/<split>.txt``, all
COCO ``.json`` file      :mod:`minirccn.data.coco`            train, test (= val), all
``.csv`` file            :mod:`minirccn.data.csvfile`         train, test (= val), all
=======================  ===================================  ======================

COCO and CSV files carry no split: ``train`` and ``test`` are a fixed,
deterministic 90/10 partition of their image ids (see
:func:`minirccn.data.common.partition`) and ``all`` is every image.
"""

from __future__ import annotations

import os

from minirccn.core.errors import MinirccnError
from minirccn.core.files import existing_file
from minirccn.data.coco import COCODataset
from minirccn.data.common import BACKGROUND, DataWarning, DetectionDataset, check_class_names
from minirccn.data.csvfile import CSVDataset
from minirccn.data.shapes import ShapesConfig, ShapesDataset
from minirccn.data.voc import VOCDataset

__all__ = [
    "BACKGROUND",
    "DataWarning",
    "DetectionDataset",
    "ShapesConfig",
    "ShapesDataset",
    "load_dataset",
]


def load_dataset(
    spec="shapes",
    split: str = "train",
    images=None,
    seed: int = 0,
    shapes_config: ShapesConfig | None = None,
) -> DetectionDataset:
    """The dataset named by ``spec``.

    Args:
        spec: ``"shapes"``, a VOC root folder (``Annotations/``, ``JPEGImages/``,
            ``ImageSets/Main/<split>.txt``), a COCO ``.json`` file or a ``.csv`` file
            (``ImageID,LabelName,XMin,XMax,YMin,YMax``, normalised coordinates).
        split: which part; see the module docstring for each format's choices.
        images: image folder for COCO and CSV (default: ``images/`` next to the
            annotation file if it exists, else the file's own folder).
        seed: seeds ``shapes`` images; unused by files on disk.
        shapes_config: optional :class:`ShapesConfig` for ``shapes``.

    Raises:
        MinirccnError: naming ``spec`` (unknown, missing) or the bad file inside it; also for
            class names no detector can be trained on (:func:`~minirccn.data.common.check_class_names`),
            before any training.
    """
    dataset = _load_dataset(spec, split, images, seed, shapes_config)
    check_class_names(dataset.class_names, os.fspath(spec))
    return dataset


def _load_dataset(spec, split, images, seed, shapes_config) -> DetectionDataset:
    spec = os.fspath(spec)
    if spec == "shapes":
        return ShapesDataset(split=split, seed=seed, config=shapes_config)
    if os.path.isdir(spec):
        return VOCDataset(spec, split=split)
    lower = spec.lower()
    if lower.endswith((".json", ".csv")):
        existing_file(spec, "annotation file")
        if lower.endswith(".json"):
            return COCODataset(spec, split=split, images=images)
        return CSVDataset(spec, split=split, images=images)
    if not os.path.exists(spec):
        raise MinirccnError(
            f"{spec}: no such dataset, file or folder (expected 'shapes', a VOC root folder, "
            "a COCO .json file or a .csv file)"
        )
    raise MinirccnError(
        f"{spec}: unknown dataset format (expected 'shapes', a VOC root folder, a COCO .json file "
        "or a .csv file)"
    )
