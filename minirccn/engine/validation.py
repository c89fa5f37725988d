"""Periodic evaluation during training and the best checkpoint.

Every ``config.eval_every`` steps the trainer calls a :class:`Validator`: it runs
the model over the validation data (batch norm with its running statistics, as
at inference), appends ``{"step", "map50", "map", "mar_100", "train_loss"}`` to its curve
(``train_loss``: the mean total training loss over the steps since the last evaluation, given
by the trainer; the end-of-run verdict compares it with the validation mAP), and when mAP@0.5
beats every earlier evaluation writes ``OUT/best.npz`` (a normal checkpoint:
``minirccn detect/eval --checkpoint OUT/best.npz``). The curve goes into
``metrics.json`` (``val_curve``) and ``OUT/val_curve.png``.

A resumed run goes on with the validation it had: every checkpoint carries the curve so far and
the best point (:meth:`Validator.state`, in the checkpoint's ``extra``), and
:meth:`Validator.restore` takes them back, so a worse model never replaces ``best.npz`` and
``metrics.json`` keeps the whole curve. (A checkpoint written before this was kept: the best
point is read from ``best.npz`` itself.)
"""

from __future__ import annotations

import os
import time

import math

from minirccn import viz
from minirccn.core.errors import MinirccnError, note
from minirccn.engine.checkpoint import inspect_checkpoint, save_checkpoint
from minirccn.engine.inference import evaluate_model


def _point(p) -> dict | None:
    """``p`` as a curve point ``{"step", "map50", "map"}`` (with ``mar_100`` and ``train_loss``
    when ``p`` has them), or None if it is not one."""
    if not isinstance(p, dict):
        return None
    step, map50, map_ = p.get("step"), p.get("map50"), p.get("map")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (map50, map_)):
        return None
    if not all(math.isfinite(v) for v in (map50, map_)):
        return None
    point = {"step": step, "map50": float(map50), "map": float(map_)}
    for key in _OPTIONAL:  # kept when they are numbers (older checkpoints lack them)
        v = p.get(key)
        if key in p and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))):
            point[key] = None if v is None else float(v)
    return point


#: the curve point's fields beyond step, map50 and map (written by :meth:`Validator.evaluate`)
_OPTIONAL = ("mar_100", "train_loss")


class Validator:
    """Owns the validation data, the period and the best score so far (module docstring).

    Args:
        data: the validation dataset.
        every: evaluate after every this many steps (> 0).
        out: output folder of ``best.npz`` (None: keep no checkpoint).
        backend: backend of the predictions.
        limit: evaluate at most this many images each time (None: all).
    """

    def __init__(self, data, every: int, out=None, backend=None, limit: int | None = None):
        self.data = data
        self.every = int(every)
        self.best_path = os.path.join(out, "best.npz") if out else None
        self.backend = backend
        self.limit = limit
        self.curve = []
        self.best = None  # the curve point of best.npz
        self.seconds = 0.0  # time spent evaluating (not training)

    def due(self, done: int, total: int) -> bool:
        """True after step ``done`` if it is a multiple of ``every`` or the last step."""
        return self.every > 0 and (done % self.every == 0 or done == total)

    def __call__(self, model, done: int, seed: int, train_loss: float | None = None) -> dict:
        """Evaluate ``model`` after ``done`` steps; keep ``best.npz`` if it is the best so far.

        ``train_loss`` (optional): the recent mean training loss, recorded with the point."""
        t0 = time.perf_counter()
        result = evaluate_model(
            model, self.data, backend=self.backend, progress=False, limit=self.limit
        )
        point = {
            "step": int(done),
            "map50": float(result["map50"]),
            "map": float(result["map"]),
            "mar_100": float(result["mar_100"]),
            "train_loss": None if train_loss is None else round(float(train_loss), 5),
        }
        self.curve.append(point)
        self.seconds += time.perf_counter() - t0
        if self.best is None or point["map50"] > self.best["map50"]:
            self.best = point
            if self.best_path:
                save_checkpoint(
                    self.best_path,
                    model,
                    step=done,
                    extra={"seed": seed, "val_map50": point["map50"], "val_map": point["map"]},
                )
        return point

    def state(self) -> dict:
        """What a checkpoint keeps of the validation (its ``extra``): the curve and the best."""
        return {"val_curve": [dict(p) for p in self.curve], "val_best": self.best}

    def restore(self, extra: dict, step: int) -> None:
        """Go on with the validation of a run resumed at ``step`` from its checkpoint's
        ``extra`` (:meth:`state`): the curve up to ``step`` and the best point. Without them
        (a checkpoint of an older version) the best point is ``best.npz``'s own record."""
        curve = extra.get("val_curve") if isinstance(extra, dict) else None
        if isinstance(curve, list):
            points = [_point(p) for p in curve]
            self.curve = [p for p in points if p is not None and p["step"] <= step]
            best = _point(extra.get("val_best"))
            self.best = best if best is not None and best["step"] <= step else None
            return
        self.best = self._best_of_file(step)

    def _best_of_file(self, step: int) -> dict | None:
        if not self.best_path or not os.path.isfile(self.best_path):
            return None
        try:
            meta = inspect_checkpoint(self.best_path)["meta"]
        except MinirccnError as exc:
            note(f"--resume: {exc}; the next evaluation writes a new best.npz")
            return None
        extra = meta.get("extra") or {}
        best = _point(
            {"step": meta.get("step"), "map50": extra.get("val_map50"), "map": extra.get("val_map")}
        )
        return best if best is not None and best["step"] <= step else None

    def plot(self, path: str) -> None:
        """The validation curve (mAP@0.5 and mAP against the step) as a PNG."""
        if not self.curve:
            return
        steps = [p["step"] for p in self.curve]
        viz.plot_curves(
            {
                "val mAP@0.5": (steps, [p["map50"] for p in self.curve]),
                "val mAP@[.5:.95]": (steps, [p["map"] for p in self.curve]),
            },
            path,
            title="validation",
            smoothing=0.0,
        )
