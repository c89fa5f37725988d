"""Can the detector be built from this config? Asked before anything is built or read.

:func:`check_config` runs the field checks of :mod:`minirccn.config.checks` (types, ranges,
choices), then asks the detector itself: the model table knows the model kinds
(:data:`minirccn.detector.registry.MODELS`) and building the backbone's description (no
parameters: specs and strides only) checks the backbone preset, the ResNet under a pyramid and
one anchor size per pyramid level, with the detector's own words.
"""

from __future__ import annotations

import os

from minirccn.config.checks import check_fields
from minirccn.core.errors import MinirccnError
from minirccn.detector import registry

#: the largest resized image (pixels) a config may ask for: min_size x max_size bounds it
#: (the shorter side is at most min_size, the longer at most max_size); 4096 x 4096 is 16
#: times a 1333 x 800 COCO image, far beyond what this CPU code trains on
MAX_IMAGE_PIXELS = 4096 * 4096
#: the most anchors one image may have (all levels); NMS and the box decoding scale with them
MAX_ANCHORS = 4_000_000
#: the most boxes one image's NMS may walk (``rpn_pre_nms_top_n_test`` per level, at most the
#: anchors): greedy NMS costs up to their square
MAX_NMS_BOXES = 200_000


def check_buildable(config, where: str = "config") -> None:
    """Raise :class:`MinirccnError` naming ``where`` unless ``config.model`` is in the model
    table and the detector can describe the backbone ``config`` names (a field-checked config)."""
    try:
        registry.check_buildable(config)
    except ValueError as exc:  # the backbone's own message names the field
        text = str(exc)
        if text.startswith("spec: "):  # a backbone preset name the detector does not know
            text = "backbone must be one of" + text.split("one of", 1)[-1]
        raise MinirccnError(f"{where}: {text}") from None


def check_config(config, where: str = "config") -> None:
    """Every field of ``config`` (:func:`minirccn.config.checks.check_fields`), then
    :func:`check_buildable` and :func:`check_work`; raises :class:`MinirccnError` naming
    ``where`` and the field."""
    check_fields(config, where)
    check_buildable(config, where)
    check_work(config, where)


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_work(config, where: str = "config") -> None:
    """Bound the work ``config`` can ask for (a checkpoint's config is data from anywhere):
    the resized image (:data:`MAX_IMAGE_PIXELS`), its anchors (:data:`MAX_ANCHORS`) and the
    memory of one detection (:func:`minirccn.detector.registry.work_estimate`, at most half of this machine's memory).
    Raises :class:`MinirccnError` naming ``where`` and the fields."""
    w = registry.work_estimate(config)
    sizes = f"min_size x max_size = {config.min_size} x {config.max_size}"
    if w["pixels"] > MAX_IMAGE_PIXELS:
        raise MinirccnError(
            f"{where}: {sizes} lets one image grow to {w['pixels'] / 1e6:.1f} M pixels, more "
            f"than the {MAX_IMAGE_PIXELS / 1e6:.1f} M this code allows (lower min_size / max_size)"
        )
    if w["anchors"] > MAX_ANCHORS:
        raise MinirccnError(
            f"{where}: {sizes} with {len(config.anchor_sizes)} anchor_sizes x "
            f"{len(config.aspect_ratios)} aspect_ratios gives {w['anchors']} anchors per image, "
            f"more than {MAX_ANCHORS} (lower min_size / max_size or the anchors)"
        )
    if w["proposals"] > MAX_NMS_BOXES:
        raise MinirccnError(
            f"{where}: rpn_pre_nms_top_n_test {config.rpn_pre_nms_top_n_test} lets NMS walk "
            f"{w['proposals']} boxes per image, more than {MAX_NMS_BOXES} (lower it)"
        )
    memory = _memory_bytes()
    if w["bytes"] > memory // 2:
        raise MinirccnError(
            f"{where}: {sizes}: detecting one image needs at least {w['bytes'] / 2**30:.1f} GiB, "
            f"more than half of this machine's {memory / 2**30:.1f} GiB (lower min_size / max_size)"
        )
