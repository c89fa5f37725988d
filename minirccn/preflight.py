"""Checks before step 1: everything a run needs is known to be usable before it trains.

* :func:`check_config`: every field of a :class:`~minirccn.config.FasterRCNNConfig` has the
  right type and a sane range (a checkpoint's config is checked before anything is built).
* :func:`inspect_checkpoint`: a checkpoint's metadata, config and the *headers* of its arrays
  (shape, dtype, size) are checked, and the shapes of its parameters are compared with the
  layers its config builds, computed without allocating them (:func:`param_shapes`), before
  any array is read: a crafted checkpoint cannot make the loader allocate terabytes.
* :func:`check_resume`: ``--resume`` against the data (same classes in the same order), the
  steps (``--iters`` not fewer than the saved step) and the seed (a different ``--seed`` only
  with ``--reseed``).
* :func:`check_images`: every image file's header (and its end, where the format has an end
  marker) is read, which is cheap; an unreadable or truncated image is skipped with one warning
  naming it (:class:`SkipImages`), so a run never dies mid-way on a bad file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile

import numpy as np

from minirccn.detector.registry import MODELS
from minirccn.errors import MinirccnError

# ----------------------------------------------------------------------------- config

#: generous upper bounds: anything larger is a typo or a crafted file, not a model for this code
MAX_SIDE = 8192  # image side (min_size, max_size)
MAX_CHANNELS = 8192  # conv channels
MAX_WIDTH = 65536  # fc width (representation_size)
MAX_POOL = 64  # RoI output size
MAX_LIST = 64  # entries of anchor_sizes, aspect_ratios, backbone_stages, milestones
MAX_COUNT = 1_000_000  # top-n, sampled boxes, detections per image
MAX_ITERS = 10**9

_UNIT = (0.0, 1.0)  # closed interval [0, 1]
RANGES = {
    # name: (low, high) inclusive; None: unbounded on that side
    "min_size": (1, MAX_SIDE),
    "max_size": (1, MAX_SIDE),
    "anchor_offset": _UNIT,
    "rpn_channels": (1, MAX_CHANNELS),
    "rpn_pre_nms_top_n_train": (1, MAX_COUNT),
    "rpn_pre_nms_top_n_test": (1, MAX_COUNT),
    "rpn_post_nms_top_n_train": (1, MAX_COUNT),
    "rpn_post_nms_top_n_test": (1, MAX_COUNT),
    "rpn_nms_thresh": _UNIT,
    "rpn_min_size": (0.0, None),
    "rpn_fg_iou_thresh": _UNIT,
    "rpn_bg_iou_thresh": _UNIT,
    "rpn_batch_size_per_image": (1, MAX_COUNT),
    "rpn_positive_fraction": _UNIT,
    "rpn_allowed_border": (-1, None),
    "rpn_box_beta": (0.0, None),
    "roi_output_size": (1, MAX_POOL),
    "box_roi_pool_sampling_ratio": (-1, MAX_POOL),  # <= 0: adaptive
    "representation_size": (1, MAX_WIDTH),
    "dropout": (0.0, 0.99),
    "box_score_thresh": _UNIT,
    "box_nms_thresh": _UNIT,
    "box_detections_per_img": (1, MAX_COUNT),
    "box_fg_iou_thresh": _UNIT,
    "box_bg_iou_thresh": _UNIT,
    "box_bg_iou_lo": _UNIT,
    "box_batch_size_per_image": (1, MAX_COUNT),
    "box_positive_fraction": _UNIT,
    "box_beta": (0.0, None),
    "lr": (1e-12, None),
    "momentum": (0.0, 1.0),
    "weight_decay": (0.0, None),
    "clip_grad_norm": (0.0, None),
    "warmup_iters": (0, MAX_ITERS),
    "warmup_factor": (0.0, None),
    "gamma": (0.0, None),
    "iters": (1, MAX_ITERS),
    "images_per_batch": (1, 1024),
    "bn_freeze_iter": (0, MAX_ITERS),
    "fpn_channels": (0, MAX_CHANNELS),
    "roi_canonical_scale": (1, MAX_SIDE * 4),
    "roi_canonical_level": (0, MAX_LIST),
    # augmentation and validation (minirccn.data.augment, minirccn.validation)
    "jitter_brightness": (0.0, 1.0),
    "jitter_contrast": (0.0, 1.0),
    "jitter_saturation": (0.0, 1.0),
    "jitter_hue": (0.0, 0.5),
    "crop_min_visible": _UNIT,
    "eval_every": (0, MAX_ITERS),
    "max_proposals": (1, MAX_COUNT),
    "selective_search_min_size": (0, MAX_SIDE * MAX_SIDE),
    "rcnn_crop_size": (1, MAX_SIDE),
    "rcnn_context_padding": (0.0, 100.0),
    "retina_channels": (1, MAX_CHANNELS),
    "retina_num_convs": (0, MAX_LIST),
    "retina_prior_probability": (1e-12, 1 - 1e-12),
    "retina_fg_iou_thresh": _UNIT,
    "retina_bg_iou_thresh": _UNIT,
    "focal_alpha": (None, 1.0),
    "focal_gamma": (0.0, None),
    "retina_score_thresh": _UNIT,
    "retina_topk_candidates": (1, MAX_COUNT),
    "retina_nms_thresh": _UNIT,
    "retina_detections_per_img": (1, MAX_COUNT),
}
#: tuple fields: (length or None, element low, element high, element type)
TUPLES = {
    "image_mean": (3, None, None, float),
    "image_std": (3, 1e-12, None, float),
    "anchor_sizes": (None, 1e-6, MAX_SIDE * 4, float),
    "aspect_ratios": (None, 1e-6, 1e6, float),
    "bbox_reg_weights": (4, 1e-12, None, float),
    "milestones": (None, 0, MAX_ITERS, int),
}
DTYPES = ("float32", "float64")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _type_name(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, str):
        return "a string"
    return "a list"


def _field_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return True  # a field type this check does not know: left to the model


def _in_range(v, lo, hi) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def _interval(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"in [{lo}, {hi}]"


def check_config(config, where: str = "config") -> None:
    """Raise :class:`MinirccnError` naming ``where`` and the field unless every field of
    ``config`` has its default's type and lies in its range (:data:`RANGES`, :data:`TUPLES`).

    Fields this check does not know (added later) are checked for their type only.
    """
    from minirccn.config import FasterRCNNConfig

    if not isinstance(config, FasterRCNNConfig):
        raise MinirccnError(f"{where}: expected a FasterRCNNConfig, got {type(config).__name__}")
    defaults = FasterRCNNConfig()
    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        default = getattr(defaults, name)
        if not _field_ok(value, default):
            raise MinirccnError(
                f"{where}: {name} must be {_type_name(default)}, got {json.dumps(value, default=repr)}"
            )
        if name in RANGES:
            lo, hi = RANGES[name]
            if not _in_range(value, lo, hi):
                raise MinirccnError(f"{where}: {name} must be {_interval(lo, hi)}, got {value!r}")
        if name in TUPLES:
            length, lo, hi, kind = TUPLES[name]
            ok_type = _is_int if kind is int else _is_number
            if (
                (length is not None and len(value) != length)
                or (length is None and not 0 < len(value) <= MAX_LIST and name != "milestones")
                or len(value) > MAX_LIST
                or not all(ok_type(v) and _in_range(v, lo, hi) for v in value)
            ):
                count = f"{length} " if length else ""
                rng = f" {_interval(lo, hi)}" if lo is not None else ""
                raise MinirccnError(
                    f"{where}: {name} must be a list of {count}{'integers' if kind is int else 'numbers'}"
                    f"{rng}, got {json.dumps(value, default=repr)}"
                )
    if config.min_size > config.max_size:
        raise MinirccnError(
            f"{where}: min_size {config.min_size} must not exceed max_size {config.max_size}"
        )
    if config.retina_hidden_init not in ("normal", "he"):
        raise MinirccnError(
            f"{where}: retina_hidden_init must be normal or he, got {config.retina_hidden_init!r}"
        )
    if config.model not in MODELS:
        models = ", ".join(MODELS)
        raise MinirccnError(f"{where}: model must be one of {models}, got {config.model!r}")
    if config.selective_search_mode not in ("fast", "quality"):
        raise MinirccnError(
            f"{where}: selective_search_mode must be fast or quality, got {config.selective_search_mode!r}"
        )
    if config.dtype not in DTYPES:
        raise MinirccnError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    from minirccn.detector.roi_heads.poolers import METHODS

    if config.box_roi_pool not in METHODS:
        raise MinirccnError(
            f"{where}: box_roi_pool must be one of {', '.join(METHODS)}, got {config.box_roi_pool!r}"
        )
    stages = config.backbone_stages
    if len(stages) > MAX_LIST or not all(
        isinstance(s, (tuple, list))
        and len(s) == 3
        and _is_int(s[0])
        and 1 <= s[0] <= MAX_CHANNELS
        and _is_int(s[1])
        and 1 <= s[1] <= MAX_LIST
        and isinstance(s[2], (bool, np.bool_))
        for s in stages
    ):
        raise MinirccnError(
            f"{where}: backbone_stages must be a list of [channels 1..{MAX_CHANNELS}, "
            f"convs 1..{MAX_LIST}, pool true/false], got {json.dumps(stages, default=repr)}"
        )
    from minirccn.detector.backbones import resnet
    from minirccn.detector.backbones.vgg import PRESETS

    if not stages and config.backbone not in PRESETS and config.backbone not in resnet.PRESETS:
        names = ", ".join((*PRESETS, *resnet.PRESETS))
        raise MinirccnError(
            f"{where}: backbone must be one of {names} (or give backbone_stages), "
            f"got {config.backbone!r}"
        )
    if config.fpn_channels:  # a feature pyramid: a ResNet, one anchor size per level
        if config.backbone not in resnet.PRESETS:
            raise MinirccnError(
                f"{where}: fpn_channels needs a ResNet backbone ({', '.join(resnet.PRESETS)}), "
                f"got {config.backbone!r}"
            )
        levels = len(resnet.PRESETS[config.backbone].widths) + 1  # + the max-pooled level
        if len(config.anchor_sizes) != levels:
            raise MinirccnError(
                f"{where}: anchor_sizes must hold one size per pyramid level ({levels}) with "
                f"fpn_channels, got {json.dumps(config.anchor_sizes)}"
            )


# ----------------------------------------------------------------------------- shapes, no memory


class _ShapeOnly(np.ndarray):
    """A zero-strided stand-in array: arithmetic and ``astype`` keep it zero-strided, so a
    ``(10**6, 10**6)`` weight costs no memory while its shape and dtype are traced."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or "out" in kwargs:
            return NotImplemented
        shape = np.broadcast_shapes(*(np.shape(x) for x in inputs))
        dtype = np.result_type(*(x.dtype if isinstance(x, np.ndarray) else x for x in inputs))
        return _lazy(shape, dtype)

    def astype(self, dtype, *args, **kwargs):
        return _lazy(self.shape, dtype)

    def copy(self, *args, **kwargs):
        return self


def _lazy(shape, dtype) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype), tuple(int(s) for s in shape)).view(_ShapeOnly)


class _ShapeRNG(np.random.Generator):
    """A Generator whose draws are :class:`_ShapeOnly` arrays (the shapes, not the numbers)."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return _lazy(() if size is None else np.atleast_1d(size), dtype)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return _lazy(() if size is None else np.atleast_1d(size), np.float64)

    def uniform(self, low=0.0, high=1.0, size=None):
        return _lazy(() if size is None else np.atleast_1d(size), np.float64)


def param_shapes(config, num_classes: int) -> dict:
    """``{name: (shape, dtype)}`` of the parameters ``config`` builds, without allocating them.

    Runs the model's own ``init_params`` with a Generator whose draws are zero-strided
    stand-ins, so the answer always matches the model code. ``config`` must have passed
    :func:`check_config` (that bounds the few small arrays built with ``np.zeros``).
    """
    from minirccn.detector.registry import init_model_params

    params = init_model_params(config, int(num_classes), _ShapeRNG())
    return {k: (tuple(int(s) for s in v.shape), np.dtype(v.dtype)) for k, v in params.items()}


# ----------------------------------------------------------------------------- checkpoints

MAX_META_BYTES = 256 << 20  # the JSON metadata (history of a long run included)


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _array_headers(path: str, zf: zipfile.ZipFile) -> dict:
    """``{key: (shape, dtype, nbytes)}`` from the ``.npy`` headers of the archive's members,
    reading no array data; a header that disagrees with its member's size is an error."""
    headers = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[: -len(".npy")]
        try:
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                offset = fh.tell()
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise MinirccnError(f"{path}: array {key!r} is unreadable ({exc})") from None
        if dtype.hasobject:
            raise MinirccnError(f"{path}: array {key!r} holds Python objects (refused)")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes != info.file_size - offset:
            raise MinirccnError(
                f"{path}: array {key!r} claims shape {shape} ({nbytes} bytes) but holds "
                f"{info.file_size - offset} bytes (truncated or crafted file)"
            )
        headers[key] = (tuple(shape), dtype, nbytes)
    return headers


def inspect_checkpoint(path: str) -> dict:
    """Check checkpoint ``path`` without reading its arrays; return its metadata.

    Checked, in this order: it is a zip archive with a ``meta`` entry of sane size; the
    metadata is a minirccn checkpoint of a supported version; ``class_names``, ``step`` and
    ``config`` have the right types and ranges (:func:`check_config`); every array's header
    agrees with its stored size; the parameters are exactly the ones the config builds, shape
    for shape (:func:`param_shapes`, no allocation), and fit in memory.

    Returns:
        ``{"meta": dict, "config": FasterRCNNConfig, "headers": {key: (shape, dtype, nbytes)}}``.

    Raises:
        MinirccnError: naming ``path`` and what is wrong.
    """
    from minirccn.checkpoint import FORMAT, VERSION
    from minirccn.config import FasterRCNNConfig

    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("meta.npy")
            except KeyError:
                raise MinirccnError(f"{path}: not a minirccn checkpoint (no metadata)") from None
            if info.file_size > MAX_META_BYTES:
                raise MinirccnError(
                    f"{path}: metadata of {info.file_size} bytes is too large (crafted file?)"
                )
            headers = _array_headers(path, zf)
            with zf.open(info) as fh:
                meta_array = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        meta = json.loads(str(meta_array))
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint (metadata: {exc.__class__.__name__})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MinirccnError(f"{path}: not a minirccn checkpoint")
    if meta.get("version") != VERSION:
        raise MinirccnError(
            f"{path}: checkpoint format version {meta.get('version')} is not supported "
            f"(this minirccn reads version {VERSION})"
        )
    names = meta.get("class_names")
    if (
        not isinstance(names, list)
        or not 2 <= len(names) <= MAX_COUNT
        or not all(isinstance(n, str) for n in names)
        or names[0] != "__background__"
        or len(set(names)) != len(names)
    ):
        raise MinirccnError(
            f"{path}: class_names must be a list of distinct strings starting with "
            f"'__background__' and at least one class"
        )
    step = meta.get("step", 0)
    if not _is_int(step) or step < 0:
        raise MinirccnError(f"{path}: step must be a non-negative integer, got {step!r}")
    for key in ("extra",):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise MinirccnError(f"{path}: {key} must be a JSON object")
    if not isinstance(meta.get("config"), dict):
        raise MinirccnError(f"{path}: config must be a JSON object")
    try:
        config = FasterRCNNConfig.from_json(json.dumps(meta["config"]))
    except (TypeError, ValueError) as exc:
        raise MinirccnError(f"{path}: {exc}") from None
    check_config(config, f"{path}: config")
    try:
        want = param_shapes(config, len(names))
    except (ValueError, TypeError) as exc:
        raise MinirccnError(f"{path}: config builds no model ({exc})") from None
    total = sum(int(np.prod(s, dtype=object)) * d.itemsize for s, d in want.values())
    if total > _memory_bytes():
        raise MinirccnError(
            f"{path}: its config builds {total / 2**30:.1f} GiB of parameters, more than this "
            "machine's memory (crafted file?)"
        )
    have = {k[len("param/") :]: v for k, v in headers.items() if k.startswith("param/")}
    missing = sorted(set(want) - set(have))
    unknown = sorted(set(have) - set(want))
    bad = sorted(k for k in set(want) & set(have) if have[k][0] != want[k][0])
    if missing or unknown or bad:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unknown[:3]}" if unknown else "",
                ", ".join(
                    f"{k} has shape {have[k][0]}, the config builds {want[k][0]}" for k in bad[:3]
                ),
            )
            if part
        )
        raise MinirccnError(
            f"{path}: incompatible checkpoint: its parameters do not match its config ({detail})"
        )
    stored = sum(h[2] for h in headers.values())
    if stored > 4 * total + MAX_META_BYTES:  # parameters, momentum, metadata
        raise MinirccnError(
            f"{path}: holds {stored} bytes of arrays for a model of {total} bytes (crafted file?)"
        )
    return {"meta": meta, "config": config, "headers": headers}


# ----------------------------------------------------------------------------- resume


def check_resume(
    ckpt: str,
    state: dict,
    model,
    *,
    class_names,
    data: str,
    iters: int,
    seed: int,
    reseed: bool = False,
) -> None:
    """``--resume`` from ``ckpt`` is consistent with this run, else :class:`MinirccnError`.

    Args:
        state: the state :func:`~minirccn.checkpoint.load_checkpoint` returned.
        model: the checkpoint's model.
        class_names: the training data's class names; must equal the model's, in order.
        data: what ``--data`` named (for the message).
        iters: ``--iters`` of this run; not fewer than the saved step.
        seed: ``--seed`` of this run; must be the saved one unless ``reseed``.
    """
    if state.get("optimizer") is None or state.get("rng_state") is None:
        raise MinirccnError(
            f"--resume: {ckpt} holds no optimiser state (written by --alternating training or "
            "by hand) and cannot be continued"
        )
    if list(model.class_names) != list(class_names):
        raise MinirccnError(
            f"--resume: {ckpt} was trained on classes {list(model.class_names)[1:]}, but "
            f"--data {data} has {list(class_names)[1:]}"
        )
    step = int(state["step"])
    if iters < step:
        raise MinirccnError(
            f"--iters {iters}: fewer than the {step} steps {ckpt} has done already "
            f"(give --iters {step} or more)"
        )
    saved = state.get("extra", {}).get("seed")
    if saved is not None and saved != seed and not reseed:
        raise MinirccnError(
            f"--seed {seed}: {ckpt} was trained with --seed {saved}; give --seed {saved}, or "
            f"add --reseed to continue with seed {seed} (the data order changes from step {step})"
        )


# ----------------------------------------------------------------------------- images


def _tail(path: str, n: int = 1024) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - n))
        return fh.read()


def image_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be used, or None: its header is read (cheap) and, for
    formats with an end marker (JPEG, PNG, GIF) or a stated size (BMP, WebP), its end is
    checked, so a truncated file is found without decoding it; other formats are decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if w < 1 or h < 1:
                return f"empty image ({w}x{h})"
            size = os.path.getsize(path)
            if fmt == "JPEG":
                if b"\xff\xd9" not in _tail(path):
                    return "truncated JPEG (no end-of-image marker)"
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


class SkipImages:
    """``dataset`` without the images at ``skipped`` indices (same classes, same name)."""

    def __init__(self, dataset, skipped):
        self.dataset = dataset
        skipped = set(skipped)
        self.keep = [i for i in range(len(dataset)) if i not in skipped]
        self.class_names = dataset.class_names
        self.name = dataset.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index):
        return self.dataset[self.keep[index]]

    def __iter__(self):
        for i in self.keep:
            yield self.dataset[i]

    def __getattr__(self, name):  # split, path, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def check_images(dataset, what: str = "--data"):
    """Read every image file's header; skip unreadable or truncated ones with one warning each.

    Datasets whose images are not files (``shapes``) are returned unchanged, as is a dataset
    where every image is fine.

    Returns:
        ``dataset`` or a :class:`SkipImages` view of it.

    Raises:
        MinirccnError: no usable image is left (naming ``what`` and the dataset).
    """
    from minirccn.data.common import warn

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
