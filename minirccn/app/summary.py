"""The end-of-run summary of ``minirccn train``: a table for people, a dict for machines.

:func:`format_summary` prints the training speed, the evaluation (mAP@0.5, COCO
mAP, per-class AP), the best validation point, a verdict on the run and where every
output file is; :func:`summary_dict` is the same information as one JSON-ready dict
(``minirccn train --json``).

The verdict (:func:`verdict`) reads the validation curve (one point per
``eval_every`` steps: mAP@0.5, mAR@100 and the mean training loss since the last
point) and says which of three runs this was:

* ``rising``: the last evaluation beats every earlier one by at least :data:`RISING`
  mAP@0.5: the run stopped while still learning, more minutes would help
  (suggested: twice the budget, as ``--minutes`` or ``--iters``, whichever set the steps:
  :func:`budget_flag`);
* ``overfitting``: the peak came early (in the first :data:`EARLY_PEAK` of the run) and
  the evaluations after it are on average at least :data:`OVERFIT` below it, the last one
  too, while the training loss kept falling: the network memorises the training images;
  ``best.npz`` holds the peak, and a budget that ends there is suggested. (One dip after
  a late peak is what a small validation set's noise looks like, not overfitting.)
* ``flat``: neither; more of the same budget would not change much.

It also states the recall (mAR@100: the share of objects a detection matches, 100
detections per image, averaged over COCO's IoU thresholds 0.5 to 0.95, so a loosely placed
box counts at the low thresholds only) and, when it is under :data:`LOW_RECALL`, says so:
the detector misses objects or places its boxes loosely, and more minutes do not fix one
that cannot represent them (docs/real_data.md; tutorial 18 tells the two apart with the
recall at IoU 0.5 and at 0.75).
"""

from __future__ import annotations

import os

OUTPUT_FILES = (
    ("checkpoint", "checkpoint.npz", "the last step's model"),
    ("best", "best.npz", "the best validation mAP@0.5's model"),
    ("metrics", "metrics.json", "every number of this run"),
    ("loss_curve", "loss_curve.png", "training losses"),
    ("val_curve", "val_curve.png", "validation mAP during training"),
    ("detections", "detections.png", "detections (left) and ground truth (right)"),
)


RISING = 0.02  # last validation mAP@0.5 this far above every earlier one: still rising
OVERFIT = 0.03  # ... this far below the peak, with the training loss still falling: overfits
EARLY_PEAK = 2 / 3  # ... when the peak came within this share of the steps
LOW_RECALL = 0.5  # mAR@100 under this: many objects missed or loosely placed


def _num(v):
    return None if v is None or v < 0 else float(v)


def _declined(curve: list, peak: dict, iters) -> bool:
    """An early peak and a sustained fall after it (the ``overfitting`` rule)."""
    after = [p["map50"] for p in curve if p["step"] > peak["step"]]
    if not after or peak["step"] > EARLY_PEAK * max(int(iters or 0), curve[-1]["step"]):
        return False
    drop = peak["map50"] - OVERFIT
    return after[-1] <= drop and sum(after) / len(after) <= drop


def budget_flag(metrics: dict, steps: int) -> str:
    """The flag that asks for a run of ``steps`` steps, in the unit the user chose.

    ``--minutes`` when the steps came from the time budget (derived, not capped at
    ``MAX_EPOCHS`` passes: there doubling the minutes adds no step); ``--iters`` when the user
    set the steps (``--iters``, ``--set iters=``, ``--config``: ``--minutes`` and ``--iters`` do
    not combine), when the budget was capped, or without a derived budget (``shapes``).
    """
    derived = metrics.get("derived") or {}
    minutes = derived.get("minutes")
    iters = int(metrics.get("iters") or 0)
    source = (metrics.get("config_sources") or {}).get("iters", "derived")
    if minutes and iters > 0 and source == "derived" and not derived.get("capped_at_epochs"):
        return f"--minutes {max(round(minutes * steps / iters, 1), 0.1):g}"
    return f"--iters {max(int(steps), 1)}"


def verdict(metrics: dict) -> dict | None:
    """The run's verdict from its validation curve (module docstring); None without one.

    Returns:
        dict ``trend`` (``rising`` / ``overfitting`` / ``flat``), ``map50`` and ``mar_100``
        (the final evaluation's, else the last point's), ``peak`` (the best point),
        ``flag`` (the one command-line flag that would help, or None) and ``text`` (one
        sentence for people).
    """
    curve = [p for p in (metrics.get("val_curve") or []) if p.get("map50") is not None]
    if not curve:
        return None
    last = curve[-1]
    map50 = _num(metrics.get("map50")) if metrics.get("map50") is not None else _num(last["map50"])
    mar = metrics.get("mar_100", last.get("mar_100"))
    mar = _num(mar) if mar is not None else None
    peak = max(curve, key=lambda p: p["map50"])  # the first of equal maxima
    trend, flag = "flat", None
    iters = metrics.get("iters") or last.get("step")
    sized = {**metrics, "iters": iters}
    if len(curve) >= 2 and last["map50"] >= max(p["map50"] for p in curve[:-1]) + RISING:
        trend = "rising"
        flag = budget_flag(sized, 2 * int(iters))
    elif _declined(curve, peak, iters):
        lp, ll = peak.get("train_loss"), last.get("train_loss")
        if lp is None or ll is None or ll < lp:
            trend = "overfitting"
            flag = budget_flag(sized, int(peak["step"]))
    parts = []
    if map50 is not None:
        parts.append(f"validation mAP@0.5 {map50:.3f}")
    if mar is not None:
        parts.append(
            f"mAR@100 {mar:.3f} (the share of the objects a detection matches, averaged over "
            "IoU 0.5 to 0.95)"
        )
    text = ", ".join(parts) + "."
    if trend == "rising":
        prev = max(p["map50"] for p in curve[:-1])
        text += (
            f" The validation curve was still rising ({prev:.3f} -> {last['map50']:.3f} at the "
            f"last evaluation): more training would help: {flag}."
        )
    elif trend == "overfitting":
        text += (
            f" It overfits: validation mAP@0.5 peaked at {peak['map50']:.3f} (step "
            f"{peak['step']}, kept in best.npz) and fell to {last['map50']:.3f} while the "
            f"training loss kept falling: train only that long: {flag}."
        )
    else:
        text += " The validation curve had levelled off: more minutes would not change much."
    if mar is not None and mar < LOW_RECALL:
        text += (
            " Recall is low: the detector misses objects (too small at the input size, or more "
            "objects per image than it keeps) or places its boxes loosely (a box counts only at "
            "the IoU thresholds it reaches); see docs/real_data.md."
        )
    return {
        "trend": trend, "map50": map50, "mar_100": mar, "peak": peak, "flag": flag, "text": text
    }


def output_files(out) -> dict:
    """``{name: path}`` of the output files that exist in folder ``out``."""
    if not out:
        return {}
    found = {}
    for name, filename, _ in OUTPUT_FILES:
        path = os.path.join(out, filename)
        if os.path.isfile(path):
            found[name] = path
    return found


def summary_dict(metrics: dict, out) -> dict:
    """The summary's numbers and files as a dict (what ``--json`` prints)."""
    keys = (
        "map50",
        "map",
        "map75",
        "voc07_map50",
        "train_seconds",
        "eval_seconds",
        "images_per_second",
        "iters",
        "backend",
        "eval_split",
        "eval_images",
    )
    d = {k: metrics.get(k) for k in keys}
    if metrics.get("per_class") is not None:
        d["per_class"] = {
            name: {"ap50": v.get("ap50"), "ap": v.get("ap")}
            for name, v in metrics["per_class"].items()
        }
    if metrics.get("best"):
        d["best"] = metrics["best"]
    d["mar_100"] = metrics.get("mar_100")
    v = verdict(metrics)
    if v is not None:
        d["verdict"] = {k: v[k] for k in ("trend", "flag", "text")}
    d["files"] = output_files(out)
    return d


def _fmt(v) -> str:
    return "    -" if v is None or v < 0 else f"{v:.4f}"


def format_summary(metrics: dict, out) -> str:
    """The readable end-of-run report (module docstring)."""
    m = metrics
    lines = [
        f"trained {m.get('iters')} steps in {m.get('train_seconds')} s "
        f"({m.get('images_per_second')} images/s, backend {m.get('backend')})"
    ]
    if m.get("map50") is not None:
        lines.append(
            f"evaluated on {m.get('eval_images')} images ({m.get('eval_split')}) "
            f"in {m.get('eval_seconds')} s:"
        )
        lines.append(
            f"  mAP@0.5 {_fmt(m['map50'])}   mAP@[.5:.95] {_fmt(m.get('map'))}   "
            f"mAP@0.75 {_fmt(m.get('map75'))}   VOC07 mAP@0.5 {_fmt(m.get('voc07_map50'))}"
            + (f"   mAR@100 {_fmt(m['mar_100'])}" if m.get("mar_100") is not None else "")
        )
        per_class = m.get("per_class") or {}
        if per_class:
            width = max(len("class"), *(len(n) for n in per_class))
            lines.append(f"  {'class':<{width}}  AP@0.5  AP@[.5:.95]")
            for name, v in per_class.items():
                lines.append(f"  {name:<{width}}  {_fmt(v.get('ap50'))}  {_fmt(v.get('ap'))}")
    else:
        lines.append("no evaluation (no validation data)")
    best = m.get("best")
    if best:
        lines.append(
            f"best validation mAP@0.5 {_fmt(best['map50'])} at step {best['step']} "
            f"(of {len(m.get('val_curve') or [])} evaluations)"
        )
    v = verdict(m)
    if v is not None:
        lines.append("verdict: " + v["text"])
    files = output_files(out)
    if files:
        lines.append("files:")
        what = {name: text for name, _, text in OUTPUT_FILES}
        width = max(len(p) for p in files.values())
        for name, path in files.items():
            lines.append(f"  {path:<{width}}  {what[name]}")
    return "\n".join(lines)
