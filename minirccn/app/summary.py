"""The end-of-run summary of ``minirccn train``: a table for people, a dict for machines.

:func:`format_summary` prints the training speed, the evaluation (mAP@0.5, COCO
mAP, per-class AP), the best validation point and where every output file is;
:func:`summary_dict` is the same information as one JSON-ready dict
(``minirccn train --json``).
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
    files = output_files(out)
    if files:
        lines.append("files:")
        what = {name: text for name, _, text in OUTPUT_FILES}
        width = max(len(p) for p in files.values())
        for name, path in files.items():
            lines.append(f"  {path:<{width}}  {what[name]}")
    return "\n".join(lines)
