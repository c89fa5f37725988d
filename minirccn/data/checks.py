"""Image checks before step 1: every image file's header (and its end, where the format has an
end marker) is read, which is cheap; an unreadable or truncated image is skipped with one
warning naming it (:class:`SkipImages`), so a run never dies mid-way on a bad file.
"""

from __future__ import annotations

import os

from PIL import Image

from minirccn.core.errors import MinirccnError
from minirccn.data.common import ImageUnreadable, quiet_exif, read_image, warn
from minirccn.data.jpeg import jpeg_problem


def _tail(path: str, n: int = 1024) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - n))
        return fh.read()


def image_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be used, or None: its header is read (cheap) and, for
    formats with an end marker (PNG, GIF) or a stated size (BMP, WebP), its end is checked, so
    a truncated file is found without decoding it; a JPEG's structure is walked
    (:func:`minirccn.data.jpeg.jpeg_problem`: every block its header promises is in its data,
    which finds one cut short and closed with an end marker); other formats are decoded."""
    try:
        with quiet_exif(), Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if w < 1 or h < 1:
                return f"empty image ({w}x{h})"
            size = os.path.getsize(path)
            if fmt == "JPEG":  # every block the frame header promises, read from the file
                return jpeg_problem(path)
            elif fmt == "PNG":
                if b"IEND" not in _tail(path, 64):
                    return "truncated PNG (no IEND chunk)"
            elif fmt == "GIF":
                if not _tail(path, 16).rstrip(b"\x00").endswith(b";"):
                    return "truncated GIF (no trailer)"
            elif fmt == "BMP":
                with open(path, "rb") as fh:
                    head = fh.read(6)
                declared = int.from_bytes(head[2:6], "little")
                if declared > size:
                    return f"truncated BMP ({size} of {declared} bytes)"
            elif fmt == "WEBP":
                with open(path, "rb") as fh:
                    head = fh.read(8)
                if int.from_bytes(head[4:8], "little") + 8 > size:
                    return "truncated WebP"
            else:
                im.load()
    except Exception as exc:  # noqa: BLE001 - every decoder error is "cannot read it"
        reason = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
        return f"cannot read the image ({reason})"
    return None


class DatasetView:
    """A dataset seen through a wrapper: the wrapped ``dataset``'s classes and name, and every
    attribute the wrapper does not define (``split``, ``path``, ``image_file``, ...) read from
    it. Subclasses define which images it shows (``__len__``, ``__getitem__``)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.name = dataset.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getattr__(self, name):  # split, path, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SkipImages(DatasetView):
    """``dataset`` without the images at ``skipped`` indices (same classes, same name)."""

    def __init__(self, dataset, skipped):
        super().__init__(dataset)
        skipped = set(skipped)
        self.keep = [i for i in range(len(dataset)) if i not in skipped]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index):
        return self.dataset[self.keep[index]]

    def image_file(self, index: int):
        return self.dataset.image_file(self.keep[index])


class ReplaceUnreadable(DatasetView):
    """``dataset`` whose images that cannot be decoded (corrupt inside, past the preflight's
    header and end-marker checks) are replaced by the next readable image, with one warning
    naming the file: a training run goes on, and, the replacement depending on the data only,
    a resumed run takes the same images as the uninterrupted one."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self.bad = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        n = len(self.dataset)
        i = int(index) % n if n else int(index)
        for k in range(n):
            j = (i + k) % n
            if j in self.bad:
                continue
            try:
                return self.dataset[j]
            except ImageUnreadable as exc:
                self.bad.add(j)
                warn(f"{exc}; skipped for the rest of the run")
        raise MinirccnError(f"{self.name}: none of its {n} images could be read")


def check_images(dataset, what: str = "--data"):
    """Read every image file's header; skip unreadable or truncated ones with one warning each.

    Datasets whose images are not files (``shapes``) are returned unchanged, as is a dataset
    where every image is fine.

    Returns:
        ``dataset`` or a :class:`SkipImages` view of it.

    Raises:
        MinirccnError: no usable image is left (naming ``what`` and the dataset).
    """
    files = getattr(dataset, "image_file", None)
    if files is None or len(dataset) == 0:
        return dataset
    skipped = []
    for i in range(len(dataset)):
        path = dataset.image_file(i)
        if path is None:
            continue
        problem = image_problem(path)
        if problem is not None:
            if len(dataset) == 1:  # nothing to go on with: one error line naming the file
                read_image(path)  # the decoder's own words, as when the image is read
                raise MinirccnError(f"{path}: {problem}")
            warn(f"{path}: {problem}; skipped")
            skipped.append(i)
    if not skipped:
        return dataset
    if len(skipped) == len(dataset):
        source = getattr(dataset, "path", None) or getattr(dataset, "root", None) or dataset.name
        raise MinirccnError(f"{what} {source}: none of its {len(dataset)} images is readable")
    return SkipImages(dataset, skipped)


def check_not_empty(dataset, what: str) -> None:
    """Raise :class:`MinirccnError` naming ``what`` if ``dataset`` has no images."""
    if len(dataset) == 0:
        split = getattr(dataset, "split", None)
        raise MinirccnError(
            f"{what}: {dataset.name} has no images" + (f" in split {split!r}" if split else "")
        )
