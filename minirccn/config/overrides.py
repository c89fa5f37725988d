"""Every config field without code: ``--set key=value`` and ``--config file.json`` (the
flags themselves and ``config show``: :mod:`minirccn.app.config_show`).

A value given on the command line is a string; it is parsed by the *type of the
field's default* in :class:`~minirccn.config.presets.DetectorConfig`:

==========  ====================================  ===================================
default     accepted text                         example
==========  ====================================  ===================================
bool        true/false, yes/no, on/off, 1/0       ``--set flip=false``
int         an integer (``1e3`` is refused)       ``--set iters=2000``
float       any float                             ``--set lr=0.002``
str         the text itself                       ``--set dtype=float64``
tuple       comma-separated items, or JSON        ``--set anchor_sizes=24,48,96``
            (nested tuples: JSON lists)           ``--set milestones=[]``
==========  ====================================  ===================================

The items of a tuple take the type of the default's items (``anchor_sizes``:
ints, ``aspect_ratios``: floats); an empty tuple default accepts numbers.

Where a value comes from, lowest to highest precedence::

    preset  <  derived from the data (minirccn.config.autoconfig)  <  --config FILE  <  --set

:func:`resolve_config` applies them in that order and returns, with the config,
the source of every field that differs from the preset (``config show`` prints it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os

from minirccn.config.presets import DetectorConfig
from minirccn.core.errors import MinirccnError
from minirccn.core.files import existing_file

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def field_names() -> list:
    """The names of every config field, in declaration order."""
    return [f.name for f in dataclasses.fields(DetectorConfig)]


def _default(name: str):
    return getattr(DetectorConfig(), name)


def unknown_field_error(name: str, where: str) -> MinirccnError:
    """The error for an unknown field ``name``, suggesting the nearest names (difflib)."""
    near = difflib.get_close_matches(name, field_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else "; see `minirccn config show`"
    return MinirccnError(f"{where}: unknown config field {name!r}{hint}")


def _parse_scalar(text: str, like, where: str):
    """``text`` as the type of ``like`` (bool, int, float or str)."""
    t = text.strip()
    if isinstance(like, bool):
        if t.lower() in _TRUE:
            return True
        if t.lower() in _FALSE:
            return False
        raise MinirccnError(f"{where}: expected true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(t)
        except ValueError:
            raise MinirccnError(f"{where}: expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(t)
        except ValueError:
            raise MinirccnError(f"{where}: expected a number, got {text!r}") from None
    return text


def _number(text: str, where: str):
    """An int if ``text`` is one, else a float (items of a tuple whose default is empty)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise MinirccnError(f"{where}: expected a number, got {text!r}") from None


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _coerce(value, like, where: str):
    """A JSON-decoded ``value`` checked against (and converted to) the type of ``like``."""
    if isinstance(like, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = like[0] if like else None
        if item is None or isinstance(item, tuple):
            return _as_tuple(value)
        return tuple(_coerce(v, item, where) for v in value)
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _parse_scalar(value, like, where)
        raise MinirccnError(f"{where}: expected true or false, got {value!r}")
    if isinstance(like, int):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            if isinstance(value, str):
                return _parse_scalar(value, like, where)
            raise MinirccnError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                return _parse_scalar(value, like, where)
            raise MinirccnError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise MinirccnError(f"{where}: expected a string, got {value!r}")
    return value


def parse_value(name: str, text: str):
    """The value of field ``name`` written as ``text`` on the command line (module docstring)."""
    if name not in field_names():
        raise unknown_field_error(name, f"--set {name}")
    like = _default(name)
    where = f"--set {name}={text}"
    if isinstance(like, tuple):
        t = text.strip()
        if t.startswith("["):
            try:
                value = json.loads(t)
            except json.JSONDecodeError:
                raise MinirccnError(f"{where}: malformed JSON list") from None
            return _coerce(value, like, where)
        if t in ("", "()"):
            return ()
        items = [s for s in t.strip("()").split(",") if s.strip()]
        item = like[0] if like else None
        if item is None:
            return tuple(_number(s.strip(), where) for s in items)
        if isinstance(item, tuple):
            raise MinirccnError(f"{where}: a tuple of tuples is written as JSON, e.g. [[1, 2]]")
        return tuple(_parse_scalar(s, item, where) for s in items)
    return _parse_scalar(text, like, where)


def parse_sets(items) -> dict:
    """``["key=value", ...]`` (repeatable ``--set``) -> ``{key: parsed value}``; later wins."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise MinirccnError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        out[key] = parse_value(key, text)
    return out


def read_config_file(path) -> dict:
    """The fields set in JSON file ``path`` (an object ``{field: value}``), checked and typed."""
    path = existing_file(path, "config file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MinirccnError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise MinirccnError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # a 5000-digit number, ...
        raise MinirccnError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MinirccnError(f"{path}: expected a JSON object {{field: value}}")
    out = {}
    for key, value in data.items():
        if key not in field_names():
            raise unknown_field_error(key, path)
        out[key] = _coerce(value, _default(key), f"{path}: {key}")
    return out


def apply(config: DetectorConfig, changes: dict, where: str) -> DetectorConfig:
    """``config`` with ``changes``; an invalid combination is one error naming ``where``."""
    if not changes:
        return config
    try:
        return config.replace(**changes)
    except (TypeError, ValueError) as exc:
        raise MinirccnError(f"{where}: {exc}") from None


def resolve_config(base: DetectorConfig, derived=None, file=None, sets=None):
    """Apply the layers in precedence order (module docstring).

    Args:
        base: the preset's config.
        derived: dict of fields derived from the data (or None).
        file: path of a ``--config`` JSON file (or None).
        sets: list of ``--set key=value`` strings (or None).

    Returns:
        ``(config, sources)``: the resolved config and ``{field: "derived"|"file"|"--set"}``
        for every field a layer set.
    """
    sources = {}
    cfg = base
    layers = (
        ("derived", dict(derived or {})),
        ("file", read_config_file(file) if file else {}),
        ("--set", parse_sets(sets)),
    )
    for name, changes in layers:
        cfg = apply(cfg, changes, os.fspath(file) if name == "file" and file else name)
        sources.update(dict.fromkeys(changes, name))
    return cfg, sources
