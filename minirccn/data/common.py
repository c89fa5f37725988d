"""What every dataset shares: the sample dict, image decoding, splits, warnings.

A dataset is a sequence of samples. Sample ``i`` is a dict:

============  ===================  ==================================================
key           value                meaning
============  ===================  ==================================================
image         ``(H, W, 3)`` uint8  RGB pixels
boxes         ``(G, 4)`` float32   ``(x1, y1, x2, y2)`` in continuous pixel
                                   coordinates: pixel ``(r, c)`` covers
                                   ``[c, c+1) x [r, r+1)``; width is ``x2 - x1``
labels        ``(G,)`` int64       class index in ``1 .. K-1`` (0 is background)
difficult     ``(G,)`` bool        VOC "difficult" / COCO "iscrowd": ignored by the
                                   evaluation (neither a hit nor a miss)
image_id      str                  stable name of the image (file stem, COCO id, ...)
============  ===================  ==================================================

Every loader checks its annotations when it is built, so a malformed file is
one :class:`~minirccn.core.errors.MinirccnError` naming the file before training
starts; images are decoded lazily in ``ds[i]``.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from minirccn.core.errors import MinirccnError
from minirccn.data.jpeg import jpeg_problem

BACKGROUND = "__background__"

#: image file extensions the CSV loader tries, in order
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")

#: the fixed seed of the 90/10 train/test partition of COCO and CSV files; it is
#: *not* the run's ``--seed``, so a training run and a later evaluation with a
#: different seed still see disjoint images
PARTITION_SEED = 0
TEST_FRACTION = 0.1


class ImageUnreadable(MinirccnError):
    """An image file is missing or cannot be decoded (the message names it)."""


class DataWarning(UserWarning):
    """A single bad annotation was skipped (the message names the file and the annotation)."""


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` (shown once per distinct message)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def check_class_names(names, where: str) -> list:
    """Refuse class names a detector cannot be trained on (and its checkpoint would not load):
    a class named ``__background__`` (label 0's name) or a name given twice. Returns ``names``.

    Raises:
        MinirccnError: naming ``where`` (the data) and the name.
    """
    names = list(names)
    seen = set()
    for name in names[1:]:
        if name == BACKGROUND:
            raise MinirccnError(
                f"{where}: a class is named {BACKGROUND!r}, the name kept for the background "
                "(label 0); rename that class"
            )
        if name in seen:
            raise MinirccnError(
                f"{where}: two classes are named {name!r}; class names must be distinct "
                "(merge or rename them)"
            )
        seen.add(name)
    return names


class DetectionDataset:
    """Base class: ``len(ds)``, ``ds[i]`` -> sample dict, ``ds.class_names``, ``ds.name``.

    Subclasses implement :meth:`__len__` and :meth:`_load` (sample for a valid
    non-negative index); this class handles negative indices and iteration.
    """

    name: str = "dataset"
    class_names: list[str]  # set by every subclass; index 0 is BACKGROUND

    @property
    def num_classes(self) -> int:
        """``K``: number of classes including the background."""
        return len(self.class_names)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} images")
        return self._load(i)

    def __iter__(self):
        for i in range(len(self)):
            yield self._load(i)

    def image_file(self, index: int) -> str | None:
        """The file image ``index`` is read from (None for generated images)."""
        return None

    def num_boxes(self) -> int | None:
        """How many boxes the annotations of the dataset hold (None: not known without
        drawing or decoding every image)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self)} images, {self.num_classes - 1} classes>"


class FileDataset(DetectionDataset):
    """A dataset read from annotation files: one record a image in ``self._records``, each a
    tuple ``(image_id, image_path, ...)`` whose field ``BOXES`` holds the image's boxes."""

    BOXES = 2  # index of the boxes in a record
    _records: list

    def __len__(self) -> int:
        return len(self._records)

    def image_file(self, index: int) -> str:
        return self._records[index][1]

    def num_boxes(self) -> int:
        return int(sum(len(r[self.BOXES]) for r in self._records))


def make_sample(image, boxes, labels, difficult, image_id) -> dict:
    """The sample dict with the documented dtypes (copies nothing that is already right)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "image": image,
        "boxes": boxes,
        "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
        "difficult": np.asarray(difficult, dtype=bool).reshape(-1),
        "image_id": str(image_id),
    }


def read_image(path: str) -> np.ndarray:
    """Decode the image file at ``path`` with Pillow as RGB, turned as its EXIF orientation
    says (as every viewer shows it).

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ImageUnreadable: the file is missing, truncated (a JPEG whose image data stops before
            its last block included: :func:`minirccn.data.jpeg.jpeg_problem`) or not an image.
    """
    if not os.path.isfile(path):
        raise ImageUnreadable(f"{path}: image file not found")
    try:
        with quiet_exif(), Image.open(path) as im:
            # a JPEG cut short and closed with an end marker decodes without an error (the
            # missing blocks grey): its structure is checked before it is decoded
            problem = jpeg_problem(path) if im.format == "JPEG" else None
            if problem is None:
                im.load()
                # EXIF orientation (phones store portraits as rotated landscapes): pixels as a
                # viewer shows them, the frame the annotation tools draw boxes in
                im = _exif_upright(im)
                if im.mode.startswith("I"):  # 16-bit (or 32-bit integer) grey: scale, never clip
                    return _scale_to_8_bits(np.asarray(im), im.mode)
                rgb = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, truncated file, decoder errors
        raise ImageUnreadable(f"{path}: cannot decode image ({exc})") from None
    if problem is not None:
        raise ImageUnreadable(f"{path}: {problem}")
    return np.asarray(rgb, dtype=np.uint8)


@contextlib.contextmanager
def quiet_exif():
    """A context in which Pillow's 'Corrupt EXIF data' warnings are not shown: they name no
    file, and an image with a malformed EXIF block has good pixels (used as stored)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
        yield


def _exif_upright(im):
    """``im`` turned as its EXIF orientation says; one whose EXIF block is corrupt is used
    as stored."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - a malformed EXIF block: the stored orientation
        return im


def _scale_to_8_bits(grey: np.ndarray, mode: str) -> np.ndarray:
    """``(H, W)`` 16-bit grey values (Pillow modes ``I;16*`` and ``I``) as ``(H, W, 3)`` uint8:
    ``round(v * 255 / 65535)``, so 65535 is white and 32768 mid-grey (Pillow's own
    conversion clips everything above 255 to white)."""
    v = np.clip(grey.astype(np.float64), 0, 65535)
    out = np.rint(v * (255.0 / 65535.0)).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


FALSE_WORDS = ("0", "false", "no")
TRUE_WORDS = ("1", "true", "yes")


def parse_bool(value, where: str, field: str, default: bool = False) -> bool:
    """A boolean annotation field (VOC ``difficult``, COCO ``iscrowd``, CSV ``IsGroupOf``).

    ``None`` or an empty string is ``default``; true/false, 0/1 (numbers or text) and
    "yes"/"no" (any case) are read as such; anything else is a :class:`MinirccnError`
    naming ``where`` and ``field``.
    """
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "":
            return default
        if word in FALSE_WORDS:
            return False
        if word in TRUE_WORDS:
            return True
    raise MinirccnError(
        f"{where}: {field} must be 0/1, true/false or yes/no, got {value!r}"
    )


def path_inside(folder: str, name, where: str, what: str = "image path") -> str:
    """``folder/name`` for a relative ``name`` that stays inside ``folder``.

    Raises:
        MinirccnError: ``name`` is not a string, is absolute, or has a ``..`` part (it would
            leave the folder), naming ``where``.
    """
    if not isinstance(name, str) or not name.strip():
        raise MinirccnError(f"{where}: {what} must be a non-empty string, got {name!r}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or (
        len(name) > 1 and name[1] == ":"
    ):
        raise MinirccnError(
            f"{where}: {what} {name!r} leaves the folder {folder} (absolute or '..'); "
            "give it relative to that folder"
        )
    return os.path.join(folder, name)


def clip_to_image(sample: dict, where: str) -> dict:
    """Clip ``sample['boxes']`` to the image; drop (with a warning) boxes left with no area.

    Annotations sometimes run a pixel past the border; boxes entirely outside
    the image cannot be learned from and are dropped.
    """
    h, w = sample["image"].shape[:2]
    boxes = sample["boxes"]
    if len(boxes) == 0:
        return sample
    clipped = np.empty_like(boxes)
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for j in np.flatnonzero(~keep):
        warn(f"{where}: box {boxes[j].tolist()} lies outside the {w}x{h} image; skipped")
    sample["boxes"] = clipped[keep]
    sample["labels"] = sample["labels"][keep]
    sample["difficult"] = sample["difficult"][keep]
    return sample


def check_box(x1: float, y1: float, x2: float, y2: float, where: str) -> bool:
    """Validate one annotated box ``(x1, y1, x2, y2)``.

    Returns:
        True to keep it, False for a box with zero width or height (warned and skipped).

    Raises:
        MinirccnError: a coordinate is NaN or infinite, or ``x2 < x1`` or ``y2 < y1``.
    """
    values = (x1, y1, x2, y2)
    if not all(np.isfinite(v) for v in values):
        raise MinirccnError(f"{where}: box {list(values)} has a NaN or infinite coordinate")
    if x2 < x1 or y2 < y1:
        raise MinirccnError(f"{where}: box {list(values)} has x2 < x1 or y2 < y1")
    if x2 == x1 or y2 == y1:
        warn(f"{where}: box {list(values)} has zero width or height; skipped")
        return False
    return True


def partition(ids: list, split: str, where: str) -> list:
    """The deterministic 90/10 train/test partition of ``ids`` (files without split info).

    ``ids`` are sorted, shuffled by a Generator seeded with :data:`PARTITION_SEED`
    and the last ``ceil(10%)`` (at least one when there are two or more) form
    ``test`` (alias ``val``); the rest ``train``; ``all`` keeps every id. The
    chosen ids are returned in sorted order.
    """
    ids = sorted(ids)
    if split == "all":
        return ids
    if split not in ("train", "test", "val"):
        raise MinirccnError(
            f"{where}: unknown split {split!r}; this file has no split info, use train, test or all"
        )
    n = len(ids)
    n_test = int(np.ceil(TEST_FRACTION * n)) if n >= 2 else 0
    order = np.random.default_rng(PARTITION_SEED).permutation(n)
    chosen = order[n - n_test :] if split in ("test", "val") else order[: n - n_test]
    return [ids[i] for i in sorted(chosen.tolist())]
