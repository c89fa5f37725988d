"""The training loop, the same for every model kind: :func:`train` and the joint-training loop
behind it. One step (:func:`~minirccn.engine.step.train_step`)::

    batch = model.load_batch(dataset, indices, rng, backend)      random horizontal flip
    losses, cache = model.forward(batch, rng, backend=backend)
    grads = model.backward(cache)                                 the hand-written backward
    optimizer.step(grads)                                         SGD, momentum 0.9, decay 5e-4

with the learning rate warmed up linearly for ``warmup_iters`` steps, then multiplied by
``gamma`` at each of ``milestones``. ``alternating=True`` runs Faster R-CNN's 4-step training
instead (:mod:`minirccn.engine.alternating`).

Determinism: every random choice (data order, flips, anchor and RoI sampling, dropout) comes
from one ``numpy.random.Generator`` seeded by ``seed``. The checkpoint stores its state, so
``resume`` continues exactly where the saved run stopped: ``k`` steps + resume + ``k`` steps
equals ``2k`` steps, bit for bit.

Divergence guard: a NaN or infinite loss stops training with one clear message; the last
checkpoint written (from an earlier, finite step) is kept.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields

import numpy as np

from minirccn import viz
from minirccn.config import preset
from minirccn.core.backend import resolve
from minirccn.core.errors import MinirccnError, note
from minirccn.core.progress import progress_bar
from minirccn.core.files import write_json
from minirccn.data import load_dataset
from minirccn.data.batching import batch_indices
from minirccn.data.checks import ReplaceUnreadable, check_images, check_not_empty
from minirccn.data.common import ImageUnreadable
from minirccn.detector import registry
from minirccn.engine import runs
from minirccn.engine.alternating import train_alternating
from minirccn.engine.checkpoint import check_resume, load_checkpoint, save_checkpoint
from minirccn.engine.inference import UnusableImage, evaluate_model, run_model
from minirccn.engine.step import (  # noqa: F401 - the step's names, importable from the loop
    TrainingDiverged,
    batch_stats_at,
    lr_at,
    make_optimizer,
    train_step,
)
from minirccn.engine.validation import Validator


@runs.guarded_run
def train(
    config=None,
    *,
    train_data=None,
    test_data=None,
    data: str = "shapes",
    images=None,
    out: str | None = "runs/train",
    backend=None,
    seed: int = 0,
    iters: int | None = None,
    preset_name: str = "tiny",
    alternating: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    reseed: bool = False,
    eval_split: str = "test",
    eval_images: int | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    outputs: bool = True,
    val_limit: int | None = None,
    extra_metrics: dict | None = None,
    init_params: dict | None = None,
) -> dict:
    """Train a detector and (optionally) evaluate it and write its outputs.

    Args:
        config: a :class:`~minirccn.config.DetectorConfig` (default: ``preset(preset_name)``).
        train_data, test_data: datasets to use instead of loading ``data``.
        data, images: dataset spec for :func:`minirccn.data.load_dataset` (train and ``eval_split``).
        out: output folder (checkpoint, metrics, PNGs); None writes nothing.
        backend: ``numpy``, ``numba`` or ``cuda`` (default: ``numba``).
        seed: seeds every random choice (initialisation, data order, flips, sampling).
        iters: SGD steps (default ``config.iters``).
        alternating: the paper's 4-step alternating training instead of joint training.
        resume: continue from ``out/checkpoint.npz`` (same config and seed).
        overwrite: replace the run that ``out`` holds (without it, or ``resume``, a folder
            holding a run is refused). The folder checks, the run lock and Ctrl-C / SIGTERM
            handling are :func:`minirccn.engine.runs.guarded_run`'s.
        reseed: with ``resume``, continue with a ``seed`` other than the saved one (without
            it that is refused; :func:`minirccn.engine.checkpoint.check_resume` checks the rest).
        eval_split: split evaluated after training ("" or None: no evaluation).
        eval_images: evaluate only the first this many images of the split.
        checkpoint_every: write ``out/checkpoint.npz`` every this many steps.
        progress: show progress (a bar on a terminal, plain lines off one).
        outputs: write metrics.json, loss_curve.png, detections.png.
        val_limit: with ``config.eval_every > 0``, the periodic evaluations of ``test_data``
            (:mod:`minirccn.engine.validation`) use at most this many images.
        extra_metrics: more entries for ``metrics.json`` (the derived defaults, the data plan).
        init_params: parameters that replace freshly initialised ones (``--weights``).

    Returns:
        dict: ``model``, ``metrics`` (mAPs, seconds, final losses, ...), ``history``
        (losses per step).
    """
    backend = resolve(backend)
    config = config if config is not None else preset(preset_name)
    if iters is not None:
        config = config.replace(iters=int(iters))
    model_class = registry.model_class(config)
    loss_names = model_class.LOSS_NAMES
    if alternating and not model_class.ALTERNATING:
        raise MinirccnError(f"--alternating: only for Faster R-CNN, not --model {config.model}")
    if train_data is None:
        train_data = load_dataset(data, "train", images=images)
    if eval_split and test_data is None:
        test_data = load_dataset(data, eval_split, images=images)
    # before step 1: no empty data, and every image file readable (bad ones skipped, named)
    check_not_empty(train_data, f"--data {data}")
    train_data = ReplaceUnreadable(check_images(train_data, "--data"))  # corrupt inside: skipped
    if test_data is not None and len(test_data):
        test_data = check_images(test_data, "--data")
    ckpt = os.path.join(out, "checkpoint.npz") if out else None

    rng = np.random.default_rng(seed)
    start, history = 0, {k: [] for k in (*loss_names, "loss")}
    if resume:
        if alternating:
            raise MinirccnError("--resume: not supported with --alternating")
        if not ckpt or not os.path.isfile(ckpt):
            raise MinirccnError(f"--resume: no checkpoint at {ckpt}")
        model, state = load_checkpoint(ckpt)
        check_resume(
            ckpt,
            state,
            model,
            class_names=train_data.class_names,
            data=data,
            iters=config.iters,
            seed=seed,
            reseed=reseed,
        )
        config = resume_config(ckpt, model.config, config, (extra_metrics or {}).get("config_sources"))
        if extra_metrics and "config" in extra_metrics:  # metrics.json: the config it goes on with
            extra_metrics = {**extra_metrics, "config": json.loads(config.to_json())}
        model.to(backend)
        try:
            rng.bit_generator.state = state["rng_state"]
        except (TypeError, ValueError, KeyError) as exc:
            raise MinirccnError(f"--resume: {ckpt}: rng_state is not a PCG64 generator state ({exc})") from None
        start = state["step"]
        history = state["extra"].get("history", history)
        optimizer = make_optimizer(model)
        optimizer.load_state_dict(state["optimizer"])
    else:
        model = model_class(config, train_data.class_names, rng=rng)
        if init_params:
            fits = {k: v for k, v in init_params.items() if k in model.params and v.shape == model.params[k].shape}
            other = sorted(set(init_params) - set(fits))
            if other:  # a checkpoint of other classes: its predictor starts afresh
                note(
                    f"--weights: {len(other)} array(s) of other shapes or names start afresh "
                    f"({', '.join(other[:4])}{', ...' if len(other) > 4 else ''})"
                )
            model.params.update({k: v.astype(model.params[k].dtype) for k, v in fits.items()})
        model.to(backend)
        optimizer = make_optimizer(model)

    validator = None
    if config.eval_every > 0 and test_data is not None and len(test_data) and not alternating:
        validator = Validator(test_data, config.eval_every, out, backend, val_limit)
        if resume:  # the curve and best point so far: best.npz is replaced only by a better model
            validator.restore(state["extra"], start)
    if resume and start >= config.iters:
        note(
            f"--resume: {ckpt} has done all {config.iters} steps already; nothing to train, its "
            "outputs are written again"
        )
    t0 = time.perf_counter()
    if alternating:
        model = train_alternating(model, train_data, rng, seed, backend, history, progress)
    else:
        run = Run(
            model, optimizer, config, rng, seed, backend, history, ckpt, checkpoint_every, progress,
            validator,
        )
        _train_joint(run, train_data, start, validator)
    train_seconds = time.perf_counter() - t0
    if validator is not None:  # the periodic evaluations are not training time
        train_seconds -= validator.seconds
    steps_run = config.iters - start
    metrics = {
        "iters": config.iters,
        "backend": backend,
        "preset": config.backbone,
        "seed": seed,
        "alternating": alternating,
        "train_seconds": round(train_seconds, 3),
        "images_per_second": round(
            steps_run * config.images_per_batch / max(train_seconds, 1e-9), 3
        ),
        "final_losses": {k: tail_mean(v) for k, v in history.items()},
    }
    if validator is not None:
        metrics["val_curve"] = validator.curve
        metrics["val_seconds"] = round(validator.seconds, 3)
        metrics["best"] = validator.best and {**validator.best, "checkpoint": validator.best_path}
    metrics.update(extra_metrics or {})
    metrics.update(registry.model_record(model))
    if ckpt:
        save_checkpoint(
            ckpt,
            model,
            optimizer_state=None if alternating else optimizer.state_dict(),
            step=config.iters,
            rng_state=rng.bit_generator.state,
            extra={"history": history, "seed": seed, **(validator.state() if validator else {})},
        )
    stop = runs.current_stop()
    if stop.requested():  # a signal during the last step: the run is complete and saved
        raise stop.interrupted(config.iters, ckpt)
    stop.defer = False  # evaluation stops at once on a signal
    if eval_split and test_data is not None:
        t1 = time.perf_counter()
        result = evaluate_model(
            model, test_data, backend=backend, progress=progress, limit=eval_images
        )
        metrics["eval_seconds"] = round(time.perf_counter() - t1, 3)
        metrics.update({k: v for k, v in result.items() if k != "per_class"})
        metrics["per_class"] = result.get("per_class")
        metrics["eval_split"] = eval_split
        metrics["eval_images"] = result.get("num_images")
    if out and outputs:
        write_outputs(out, model, metrics, history, test_data, backend)
        if validator is not None:
            validator.plot(os.path.join(out, "val_curve.png"))
    return {"model": model, "metrics": metrics, "history": history}


def tail_mean(values, n: int = 50):
    values = [v for v in values[-n:] if v is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Run:
    """What joint training carries from step to step: the model and its optimiser, the one
    random generator, the losses so far, and where (and how often) checkpoints go."""

    model: object
    optimizer: object
    config: object  # this run's config (a resumed model's own may have fewer ``iters``)
    rng: np.random.Generator
    seed: int
    backend: str
    history: dict  # loss name -> its value at every step done
    checkpoint: str | None = None  # path of checkpoint.npz; None: none written
    checkpoint_every: int = 500
    progress: bool = True
    validator: object = None  # its curve and best point go into every checkpoint

    def save(self, done: int) -> None:
        """The checkpoint after ``done`` steps (model, optimiser, generator, losses, seed, the
        validation so far)."""
        extra = {"history": self.history, "seed": self.seed}
        if self.validator is not None:
            extra.update(self.validator.state())
        save_checkpoint(
            self.checkpoint,
            self.model,
            optimizer_state=self.optimizer.state_dict(),
            step=done,
            rng_state=self.rng.bit_generator.state,
            extra=extra,
        )


def _train_joint(run: Run, data, start: int, validator=None) -> None:
    """Approximate joint training from step ``start`` to ``config.iters``; ``validator``
    (a :class:`~minirccn.engine.validation.Validator` or None) evaluates every ``eval_every``
    steps."""
    model, config, history, ckpt, seed = run.model, run.config, run.history, run.checkpoint, run.seed
    stop = runs.current_stop()
    stop.defer = True  # a signal now stops after the current step (saved below)
    bar = progress_bar(
        range(start, config.iters), desc="train", unit="step", enabled=run.progress, dynamic_ncols=True
    )
    for step in bar:
        idx = batch_indices(seed, step, config.images_per_batch, len(data))
        try:
            batch = model.load_batch(data, idx, run.rng, run.backend)
        except MinirccnError as exc:  # an image went bad during the run: keep the steps done
            if isinstance(exc, TrainingDiverged):
                raise
            if ckpt and step > start:
                run.save(step)
            kept = f"; checkpoint at step {step} saved to {ckpt}" if ckpt and step > start else ""
            raise MinirccnError(f"{exc}{kept}") from None
        losses = train_step(model, run.optimizer, batch, run.rng, step, backend=run.backend)
        for k, v in losses.items():
            history[k].append(float(v))
        if run.progress and step % 10 == 0:
            bar.set_postfix(
                {k.replace("loss_", ""): f"{tail_mean(history[k], 20):.3f}" for k in history},
                refresh=False,
            )
        done = step + 1
        if validator is not None and validator.due(done, config.iters):
            recent = tail_mean(history["loss"], validator.every)
            point = validator(model, done, seed, train_loss=recent)
            if run.progress:
                bar.write(f"step {done}: validation mAP@0.5 {point['map50']:.4f} mAP {point['map']:.4f}")
        if ckpt and run.checkpoint_every and done % run.checkpoint_every == 0 and done < config.iters:
            run.save(done)
        if stop.requested() and done < config.iters:
            bar.close()
            if ckpt:
                run.save(done)
            raise stop.interrupted(done, ckpt)


def write_outputs(out, model, metrics, history, test_data, backend):
    """metrics.json, loss_curve.png and detections.png in ``out``."""
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "metrics.json"), metrics, "metrics", indent=2, default=float)
    curves = {}
    for k in history:
        pts = [(i, v) for i, v in enumerate(history[k]) if v is not None]
        if pts:
            curves[k] = ([p[0] for p in pts], [p[1] for p in pts])
    if curves:
        viz.plot_curves(
            curves,
            os.path.join(out, "loss_curve.png"),
            title="training losses (faint: per step; solid: moving average)",
            ylabel="loss",
            smoothing=0.9,
            events=viz.schedule_events(
                model.config, iters=max((len(v) for v in history.values()), default=0)
            ),
        )
    if test_data is not None and len(test_data):
        tiles = []
        for i in range(min(8, len(test_data))):
            try:  # a bad image: the evaluation has named it already
                sample = test_data[i]
                det = run_model(model, sample["image"], backend, sample["image_id"])
            except (ImageUnreadable, UnusableImage):
                continue
            keep = det["scores"] >= 0.5
            tiles.append(
                viz.draw_detections(
                    sample["image"],
                    det["boxes"][keep],
                    det["labels"][keep],
                    det["scores"][keep],
                    model.class_names,
                    scale=2,
                )
            )
            tiles.append(
                viz.draw_detections(
                    sample["image"],
                    sample["boxes"],
                    sample["labels"],
                    None,
                    model.class_names,
                    scale=2,
                )
            )
        if tiles:
            viz.save_grid(tiles, os.path.join(out, "detections.png"), cols=4)


#: the fields ``minirccn train`` derives from ``--iters`` (the schedule): a resumed run that
#: goes on to more steps keeps the checkpoint's
SCHEDULE_FIELDS = ("warmup_iters", "bn_freeze_iter", "milestones", "eval_every")


def _shown(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)


def resume_config(ckpt: str, saved, config, sources: dict | None = None):
    """The config a ``--resume`` of ``ckpt`` goes on with.

    ``config`` (this run's) must be the checkpoint's ``saved`` one, but for ``iters`` and the
    schedule derived from it (:data:`SCHEDULE_FIELDS`, unless ``--set`` / ``--config`` chose
    them): a run extended with ``--resume --iters N`` keeps the checkpoint's warmup, LR steps,
    batch-norm freeze and validation interval (said in a note). Any other difference is a
    :class:`MinirccnError` naming the fields, their two values and where this run's came from.

    Args:
        sources: ``{field: "derived" | "file" | "--set" | "--iters"}`` of this run's config
            (a field not in it is the preset's).
    """
    sources = sources or {}
    differ = [
        f.name for f in fields(config)
        if f.name != "iters" and getattr(saved, f.name) != getattr(config, f.name)
    ]
    kept = [f for f in differ if f in SCHEDULE_FIELDS and sources.get(f, "derived") == "derived"]
    other = [f for f in differ if f not in kept]
    if other:
        origin = {"derived": "derived from the data", "file": "--config", "--set": "--set"}
        detail = "; ".join(
            f"{f} {_shown(getattr(saved, f))} in the checkpoint, {_shown(getattr(config, f))} "
            f"now ({origin.get(sources.get(f), 'the preset')})"
            for f in other[:4]
        ) + (f"; and {len(other) - 4} more" if len(other) > 4 else "")
        raise MinirccnError(
            f"--resume: {ckpt} was trained with a different config: {detail} (resume with the "
            "data, --preset, --config and --set of that run, or start a new run in another --out)"
        )
    if kept:
        note(
            f"--resume: going on to {config.iters} steps with the checkpoint's schedule ("
            + ", ".join(f"{f}={_shown(getattr(saved, f))}" for f in kept)
            + f"), not the one derived for {config.iters} steps"
        )
    return saved.replace(iters=config.iters)
