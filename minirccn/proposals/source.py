"""External region proposals for the Fast R-CNN and R-CNN modes: selective search or a file.

A :class:`ProposalSource` is built once from a spec and its settings, then
called with an image (and its id) to get that image's boxes::

    source = ProposalSource("selective-search", mode="fast", min_size=10, max_proposals=2000)
    boxes = source(image, image_id="test/000017")          # (P, 4) float32, best first

* ``"selective-search"``: :class:`~minirccn.proposals.selective_search.SelectiveSearch`
  on the image. Results are cached on disk (:class:`ProposalCache`), one
  ``.npy`` per image, keyed by a SHA-256 of the image's pixels and of every
  setting that changes the boxes, so each image is searched once however many
  epochs, evaluations and runs use it. Files are written atomically (a
  temporary file, then ``os.replace``): two processes sharing a cache can
  only ever read a whole file.
* a path to a JSON file: ``{"<image id>": [[x1, y1, x2, y2], ...], ...}`` in the
  image's pixel coordinates (``x2`` exclusive, as everywhere in minirccn). The ids
  are the datasets' ``image_id`` (``minirccn detect`` looks an image up by its file
  name, then by its stem). The first ``max_proposals`` boxes of each list are used.

:meth:`ProposalSource.record` is what a checkpoint stores, and
:meth:`ProposalSource.from_record` rebuilds the same source, so ``minirccn detect``
and ``eval`` on a Fast R-CNN / R-CNN checkpoint use the proposals it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.core.files import existing_file
from minirccn.proposals.selective_search import MODES, SelectiveSearch

SELECTIVE_SEARCH = "selective-search"

#: bump when selective search's output changes for the same settings (invalidates caches)
ALGORITHM_VERSION = 1


def default_cache_dir() -> str:
    """``$MINIRCCN_CACHE/proposals`` if set, else ``~/.cache/minirccn/proposals``."""
    root = os.environ.get("MINIRCCN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "minirccn"
    )
    return os.path.join(root, "proposals")


def image_digest(image: np.ndarray) -> str:
    """SHA-256 (hex) of an image's shape, dtype and pixels."""
    image = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class ProposalCache:
    """One ``.npy`` of boxes per key in a folder; atomic writes.

    Args:
        folder: where the files live (created on the first write).
    """

    def __init__(self, folder: str):
        self.folder = os.fspath(folder)

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], f"{key}.npy")

    def get(self, key: str):
        """The boxes stored under ``key`` (``(P, 4)`` float32), or None."""
        path = self.path(key)
        try:
            boxes = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # missing, or unreadable: recompute and overwrite
            return None
        return boxes if boxes.ndim == 2 and boxes.shape[1] == 4 else None

    def put(self, key: str, boxes: np.ndarray) -> None:
        """Store ``boxes`` under ``key``: temporary file in the same folder, then rename."""
        path = self.path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".proposals-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.asarray(boxes, dtype=np.float32))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def load_proposal_file(path: str) -> dict:
    """Read a proposal JSON file: image id -> ``(P, 4)`` float32 boxes.

    Raises:
        MinirccnError: naming ``path`` (and the image id) if the file is missing, not JSON,
            or holds anything but lists of finite ``[x1, y1, x2, y2]`` with ``x2 >= x1``,
            ``y2 >= y1``.
    """
    existing_file(path, "proposal file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except RecursionError:
        raise MinirccnError(f"{path}: not a readable JSON proposal file (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError too
        raise MinirccnError(f"{path}: not a readable JSON proposal file ({exc})") from None
    if not isinstance(data, dict):
        raise MinirccnError(f"{path}: expected a JSON object {{image id: [[x1, y1, x2, y2], ...]}}")
    out = {}
    for image_id, boxes in data.items():
        where = f"{path}: image {image_id!r}"
        try:
            arr = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise MinirccnError(f"{where}: expected a list of [x1, y1, x2, y2] boxes") from None
        if arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise MinirccnError(
                f"{where}: expected a list of [x1, y1, x2, y2] boxes, got shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise MinirccnError(f"{where}: a box has a NaN or infinite coordinate")
        if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
            raise MinirccnError(f"{where}: a box has x2 < x1 or y2 < y1")
        out[str(image_id)] = arr.astype(np.float32)
    return out


class ProposalSource:
    """Where a Fast R-CNN / R-CNN model gets its proposals (module docstring).

    Args:
        spec: ``"selective-search"`` or the path of a JSON proposal file.
        mode, min_size, sigma, seed: selective search settings (min_size None: ``k``).
        max_proposals: at most this many boxes per image (None: all).
        cache_dir: the selective search cache folder (None: :func:`default_cache_dir`;
            ``""``: no cache).
    """

    def __init__(
        self,
        spec: str,
        *,
        mode: str = "fast",
        min_size: int | None = None,
        sigma: float = 0.8,
        seed: int = 0,
        max_proposals: int | None = None,
        cache_dir: str | None = None,
    ):
        if not spec:
            raise MinirccnError("--proposals: expected 'selective-search' or a JSON file")
        if max_proposals is not None and max_proposals < 1:
            raise MinirccnError(f"--max-proposals: expected a positive number, got {max_proposals}")
        self.spec = spec
        self.max_proposals = max_proposals
        self.search = None
        self.boxes_by_id = None
        if spec == SELECTIVE_SEARCH:
            if mode not in MODES:
                raise MinirccnError(
                    f"--selective-search-mode: expected fast or quality, got {mode!r}"
                )
            # the cache holds every box; max_proposals cuts after reading
            self.search = SelectiveSearch(mode=mode, sigma=sigma, min_size=min_size, seed=seed)
            folder = default_cache_dir() if cache_dir is None else cache_dir
            self.cache = ProposalCache(folder) if folder else None
        else:
            self.boxes_by_id = load_proposal_file(spec)
            self.cache = None

    @property
    def kind(self) -> str:
        """``"selective-search"`` or ``"file"``."""
        return SELECTIVE_SEARCH if self.search is not None else "file"

    def record(self) -> dict:
        """What a checkpoint stores to rebuild this source (:meth:`from_record`)."""
        if self.search is None:
            return {"source": os.path.abspath(self.spec), "max_proposals": self.max_proposals}
        p = self.search.params()
        return {
            "source": SELECTIVE_SEARCH,
            "mode": p["mode"],
            "min_size": p["min_size"],
            "sigma": p["sigma"],
            "seed": p["seed"],
            "max_proposals": self.max_proposals,
        }

    @classmethod
    def from_record(cls, record: dict, cache_dir: str | None = None) -> ProposalSource:
        """The source that :meth:`record` described."""
        record = dict(record)
        spec = record.pop("source")
        if spec != SELECTIVE_SEARCH:
            return cls(spec, max_proposals=record.get("max_proposals"))
        return cls(spec, cache_dir=cache_dir, **record)

    def cache_key(self, image: np.ndarray) -> str:
        """The cache key of ``image``: SHA-256 of its digest and the search settings."""
        settings = json.dumps(
            {**self.search.params(), "version": ALGORITHM_VERSION}, sort_keys=True
        )
        return hashlib.sha256(f"{image_digest(image)}|{settings}".encode()).hexdigest()

    def __call__(self, image: np.ndarray, image_id=None) -> np.ndarray:
        """Proposals of ``image`` (``(H, W, 3)`` uint8) in its pixel coordinates.

        Returns:
            ``(P, 4)`` float32, best first, at most ``max_proposals``.
        """
        if self.search is None:
            boxes = self._lookup(image_id)
        else:
            key = self.cache_key(image) if self.cache is not None else None
            boxes = self.cache.get(key) if key is not None else None
            if boxes is None:
                boxes = self.search(image)
                if key is not None:
                    self.cache.put(key, boxes)
        return np.asarray(boxes[: self.max_proposals], dtype=np.float32)

    def _lookup(self, image_id) -> np.ndarray:
        candidates = [] if image_id is None else [str(image_id)]
        if image_id is not None:
            base = os.path.basename(str(image_id))
            candidates += [base, os.path.splitext(base)[0]]
        for c in candidates:
            if c in self.boxes_by_id:
                return self.boxes_by_id[c]
        raise MinirccnError(f"{self.spec}: no proposals for image {image_id!r}")
