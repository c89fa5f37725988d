"""Which images ``minirccn train`` trains on and which it validates on, as users expect.

==================================  ===================================  ===========================
``--data``                          trained on                           validated on
==================================  ===================================  ===========================
``shapes``                          split ``train``                      ``--eval-split`` (test)
COCO / CSV file + ``--val-data V``  every image of the file              every image of ``V``
COCO / CSV file alone               the fixed 90 % of the file           the fixed held-out 10 %
                                                                         (said in the output)
VOC folder + ``--val-data V``       ``trainval`` (else ``train``)        every image of ``V``
VOC folder alone                    ``trainval`` if ``test`` exists,     ``test``, else ``val``
                                    else ``train``; the one of the two   (never a list inside
                                    that exists; neither: every          the training one;
                                    annotation (said in the output)      said in the output)
``--split all``                     every image of ``--data``            ``--val-data`` if given
==================================  ===================================  ===========================

The held-out part of a COCO/CSV file is :func:`minirccn.data.common.partition`'s
fixed 10 % (seeded by a constant, not by ``--seed``), so every run holds out the
same images.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from minirccn.config import autoconfig, overrides, preset
from minirccn.core.errors import MinirccnError
from minirccn.data import load_dataset
from minirccn.data.voc import split_files as voc_split_files
from minirccn.detector.backbones.levels import build_backbone
from minirccn.engine.checks import check_config


@dataclass
class DataPlan:
    """The training and validation datasets and a sentence saying where they come from."""

    train: object
    val: object
    train_split: str
    val_split: str | None
    note: str


def _voc_has(root: str, split: str) -> bool:
    return os.path.isfile(os.path.join(root, "ImageSets", "Main", f"{split}.txt"))


def voc_train_split(root: str, val_data=None) -> str:
    """The list a VOC folder trains on: ``trainval`` when a ``test`` list (or ``--val-data``)
    is there to validate on, else ``train``; a folder with only one of them trains on that
    one (many exports write only ``trainval.txt``); a folder without split files, on every
    annotation (``all``). Other split files alone (``val.txt``, ``test.txt``): an error
    listing them (training on every annotation would train on those images)."""
    has_train, has_trainval = _voc_has(root, "train"), _voc_has(root, "trainval")
    if has_trainval and (val_data or _voc_has(root, "test") or not has_train):
        return "trainval"
    if has_train:
        return "train"
    found = voc_split_files(root)
    if found:
        raise MinirccnError(
            f"{root}: ImageSets/Main has no train.txt or trainval.txt, only "
            f"{', '.join(f'{n}.txt' for n in found)}; give --split NAME to train on one of them, "
            "or --split all to train on every annotation"
        )
    return "all"


def plan(data, images=None, val_data=None, val_images=None, split=None, eval_split="test"):
    """The :class:`DataPlan` of a non-``shapes`` ``--data`` (module docstring's table).

    Args:
        data, images: ``--data`` and ``--images``.
        val_data, val_images: ``--val-data`` and ``--val-images`` (None: none given).
        split: ``--split`` (None: the table's choice; ``"all"``: every image).
        eval_split: ``--eval-split``: for a COCO/CSV file without ``--val-data``, ``test``
            (the default) is the held-out part, ``""`` no evaluation, any other split that
            split (``all``: every image, the training images included); for a VOC folder,
            the list used when it has no ``test``/``val`` list.
    """
    data = os.fspath(data)
    is_voc = os.path.isdir(data)
    chosen = split is None  # the table's choice, not --split
    if split is None:
        if is_voc:
            split = voc_train_split(data, val_data)
        else:
            split = "all" if val_data else "train"
    train = load_dataset(data, split, images=images)
    if len(train) == 0:
        raise MinirccnError(f"{data}: split {split!r} has no images")
    if getattr(train, "num_boxes", lambda: None)() == 0:
        raise MinirccnError(
            f"{data}: its {len(train)} training images (split {split!r}) hold no boxes at all: "
            "nothing to learn from (an empty 'annotations' list? the wrong file?)"
        )
    if val_data:
        val = load_dataset(val_data, "all", images=val_images)
        if list(val.class_names) != list(train.class_names):
            raise MinirccnError(
                f"--val-data {val_data}: its classes {val.class_names[1:]} differ from the "
                f"training data's {train.class_names[1:]}"
            )
        note = (
            f"training on all {len(train)} images of {data} (split {split!r}); "
            f"validating on all {len(val)} images of {val_data}"
        )
        return DataPlan(train, val, split, "all", note)
    if split == "all":
        why = (
            f" (ImageSets/Main has no train.txt or trainval.txt; found: "
            f"{', '.join(voc_split_files(data)) or 'no split files'})"
            if is_voc and chosen
            else ""
        )
        note = (
            f"training on all {len(train)} images of {data}{why}; no validation data "
            "(give --val-data FILE to validate during and after training)"
        )
        return DataPlan(train, None, split, None, note)
    if is_voc:
        # never a list inside the training one: val is part of trainval
        inside = {"trainval": ("train", "val")}.get(split, ())
        vsplit = next((s for s in ("test", "val") if _voc_has(data, s) and s not in inside), None)
        vsplit = vsplit if vsplit != split else None
        if vsplit is None and eval_split and _voc_has(data, eval_split) and eval_split != split:
            vsplit = eval_split
        val = load_dataset(data, vsplit) if vsplit else None
        note = f"training on {len(train)} images of {data} (ImageSets/Main/{split}.txt); " + (
            f"validating on its {vsplit!r} list ({len(val)} images)"
            if val is not None
            else "no validation list found (give --val-data)"
        )
        return DataPlan(train, val, split, vsplit, note)
    if not eval_split:
        note = f"training on {len(train)} images of {data} (split {split!r}); no evaluation"
        return DataPlan(train, None, split, None, note)
    if eval_split not in ("test", "val"):
        val = load_dataset(data, eval_split, images=images)
        note = (
            f"training on {len(train)} images of {data} (split {split!r}); evaluating on "
            f"its split {eval_split!r} ({len(val)} images)"
        )
        return DataPlan(train, val, split, eval_split, note)
    val = load_dataset(data, "test", images=images)
    note = (
        f"no --val-data given: holding out a fixed {len(val)} of the "
        f"{len(train) + len(val)} images of {data} for validation and training on the other "
        f"{len(train)} (give --val-data FILE to train on every image)"
    )
    return DataPlan(train, val, split, "held-out 10%", note)


# ------------------------------------------------------------------ minirccn train's setup


def configure(args, log=print, base=None) -> dict:
    """Everything ``minirccn train`` decides before training, from its parsed ``args``.

    Layers the config (preset < derived from the data < ``--config`` < ``--set``; the
    ``--lr`` and ``--iters`` flags count as ``--set``), loads the data of the plan, and
    prints the plan and the derived defaults with ``log``.

    Returns:
        dict ``config``, ``train_data``, ``test_data`` (None: ``train`` loads them, as for
        ``shapes``), ``eval_split``, ``iters`` (for ``train(iters=...)``), ``metrics``
        (extra entries of ``metrics.json``).
        base: the preset's config (default ``preset(args.preset)``).
    """
    base = base if base is not None else preset(args.preset)
    sets = list(getattr(args, "set", None) or [])
    if args.lr is not None:
        if not (args.lr > 0 and math.isfinite(args.lr)):
            raise MinirccnError(f"--lr: expected a positive number, got {args.lr}")
        sets.insert(0, f"lr={args.lr!r}")
    minutes = getattr(args, "minutes", None)
    if minutes is not None and args.iters is not None:
        raise MinirccnError("--minutes and --iters: give one of them, not both")
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise MinirccnError(f"--minutes: expected a positive finite number, got {minutes}")
    set_fields = overrides.parse_sets(sets)  # checked early: a typo fails before any loading
    file_fields = overrides.read_config_file(args.config) if args.config else {}
    user = {**file_fields, **set_fields}
    iters = args.iters if args.iters is not None else user.get("iters")
    batch = int(user.get("images_per_batch", base.images_per_batch))

    out = {
        "train_data": None,
        "test_data": None,
        "eval_split": args.eval_split,
        "iters": args.iters,
        "metrics": {},
    }
    derived = {}
    spec = os.fspath(args.data)
    if spec != "shapes" or getattr(args, "val_data", None) or getattr(args, "split", None):
        if spec == "shapes":
            split = getattr(args, "split", None) or "train"
            out["train_data"] = load_dataset(spec, split)
            val_data = getattr(args, "val_data", None)
            out["test_data"] = (
                load_dataset(val_data, "all", images=getattr(args, "val_images", None))
                if val_data
                else (load_dataset(spec, args.eval_split) if args.eval_split else None)
            )
            note = f"training on {len(out['train_data'])} shapes images (split {split!r})"
        else:
            p = plan(
                spec,
                images=args.images,
                val_data=getattr(args, "val_data", None),
                val_images=getattr(args, "val_images", None),
                split=getattr(args, "split", None),
                eval_split=args.eval_split,
            )
            out["train_data"], out["test_data"] = p.train, p.val
            out["eval_split"] = p.val_split or ""
            note = p.note
        log(note)
        out["metrics"]["data_plan"] = note
    if spec != "shapes" and not getattr(args, "no_derive", False):
        derived, report = autoconfig.derive(
            out["train_data"], minutes=minutes, images_per_batch=batch, iters=iters
        )
        if base.backbone != "tiny" or base.backbone_stages != preset("tiny").backbone_stages:
            # the stride rule and the cost model are the tiny stack's: other presets keep
            # their network and steps, and take only the image size and the anchors
            keep = ("min_size", "max_size", "anchor_sizes", "aspect_ratios")
            if base.fpn_channels:  # a pyramid has one anchor size per level: the preset's
                keep = ("min_size", "max_size", "aspect_ratios")
            derived = {k: v for k, v in derived.items() if k in keep}
            report["fields"] = {k: v for k, v in report["fields"].items() if k in keep}
            log(f"derived from the data for preset {args.preset}: "
                + ", ".join(f"{k}={derived[k]}" for k in keep))
        else:
            log(autoconfig.format_report(report))
        out["metrics"]["derived"] = report
    elif minutes is not None:
        data = out["train_data"]
        n = len(data) if data is not None else len(load_dataset(spec, "train"))
        steps = autoconfig.steps_for_budget(
            minutes, base.min_size, base.max_size, _stride(base), batch, n
        )
        derived = autoconfig.schedule(steps)
        per_step = autoconfig.step_seconds(base.min_size, base.max_size, _stride(base), batch)
        capped = (
            f" (capped at {autoconfig.MAX_EPOCHS} passes over the {n} images: about "
            f"{steps * per_step / 60:.2g} min, not {minutes:g})"
            if int(minutes * 60.0 / per_step) > steps
            else ""
        )
        log(f"--minutes {minutes:g}: {steps} steps at a modelled {per_step} s/step{capped}")
    if minutes is not None:
        out["iters"] = None
    config, sources = overrides.resolve_config(base, derived, args.config, sets)
    if args.iters is not None:
        config = config.replace(iters=int(args.iters))
        sources["iters"] = "--iters"
    replaced = overridden(config, sources, derived)
    if replaced and "derived" in out["metrics"]:
        # the derived block above shows what the data gave; say what the run uses instead
        log("  overridden      " + "; ".join(
            f"{k}={_shown(v['value'])} ({v['source']}; derived {_shown(v['derived'])})"
            for k, v in replaced.items()
        ))
        out["metrics"]["derived"]["overridden"] = replaced
    check_config(config, "config (preset, derived, --config, --set)")
    sj = config.scale_jitter
    if sj and not (len(sj) == 2 and 0 < float(sj[0]) <= float(sj[1]) <= 10):
        raise MinirccnError(f"scale_jitter: expected (lo, hi) with 0 < lo <= hi <= 10, got {sj}")
    if sj and float(sj[0]) * config.min_size < 2 * _stride(config):
        lowest = 2 * _stride(config) / config.min_size
        raise MinirccnError(
            f"scale_jitter: {float(sj[0]):g} x min_size {config.min_size} leaves "
            f"{float(sj[0]) * config.min_size:g} px, less than two cells of the backbone's stride "
            f"{_stride(config)} (its last maps would be one value per channel); use a lower bound "
            f">= {lowest:.3g}"
        )
    out["config"] = config
    out["metrics"]["config_sources"] = sources
    out["metrics"]["config"] = json.loads(config.to_json())
    return out


def _plain(value):
    """A config value as JSON would hold it (tuples as lists), for comparing."""
    return json.loads(json.dumps(value))


def _shown(value) -> str:
    return json.dumps(value).replace(" ", "")


def overridden(config, sources: dict, derived: dict) -> dict:
    """``{field: {"value", "derived", "source"}}``: the derived fields that ``--config``,
    ``--set`` or ``--iters`` replaced with another value (the run uses ``value``)."""
    out = {}
    for name, value in derived.items():
        now = _plain(getattr(config, name))
        if sources.get(name, "derived") != "derived" and now != _plain(value):
            out[name] = {"value": now, "derived": _plain(value), "source": sources[name]}
    return out


def _stride(config) -> int:
    return build_backbone(config).size_divisible
