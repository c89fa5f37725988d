"""Can the detector be built from this config? Asked before anything is built or read.

:func:`check_config` runs the field checks of :mod:`minirccn.config.checks` (types, ranges,
choices), then asks the detector itself: the model table knows the model kinds
(:data:`minirccn.detector.registry.MODELS`) and building the backbone's description (no
parameters: specs and strides only) checks the backbone preset, the ResNet under a pyramid and
one anchor size per pyramid level, with the detector's own words.
"""

from __future__ import annotations

from minirccn.config.checks import check_fields
from minirccn.core.errors import MinirccnError
from minirccn.detector import registry


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
    :func:`check_buildable`; raises :class:`MinirccnError` naming ``where`` and the field."""
    check_fields(config, where)
    check_buildable(config, where)
