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

import os
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from minirccn import viz
from minirccn.config import preset
from minirccn.core.backend import resolve
from minirccn.core.errors import MinirccnError
from minirccn.core.files import write_json
from minirccn.data import load_dataset
from minirccn.data.batching import batch_indices
from minirccn.data.checks import check_images, check_not_empty
from minirccn.detector import registry
from minirccn.engine import runs
from minirccn.engine.alternating import train_alternating
from minirccn.engine.checkpoint import check_resume, load_checkpoint, save_checkpoint
from minirccn.engine.inference import evaluate_model, run_model
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
        progress: show tqdm progress bars.
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
    train_data = check_images(train_data, "--data")
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
        if model.config.replace(iters=config.iters) != config:
            raise MinirccnError(f"--resume: {ckpt} was trained with a different config")
        model.to(backend)
        rng.bit_generator.state = state["rng_state"]
        start = state["step"]
        history = state["extra"].get("history", history)
        optimizer = make_optimizer(model)
        optimizer.load_state_dict(state["optimizer"])
    else:
        model = model_class(config, train_data.class_names, rng=rng)
        if init_params:
            model.params.update({k: v.astype(model.params[k].dtype) for k, v in init_params.items()})
        model.to(backend)
        optimizer = make_optimizer(model)

    validator = None
    if config.eval_every > 0 and test_data is not None and len(test_data) and not alternating:
        validator = Validator(test_data, config.eval_every, out, backend, val_limit)
    t0 = time.perf_counter()
    if alternating:
        model = train_alternating(model, train_data, rng, seed, backend, history, progress)
    else:
        run = Run(
            model, optimizer, config, rng, seed, backend, history, ckpt, checkpoint_every, progress
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
    if config.model != registry.DEFAULT_MODEL:  # the default run's metrics.json: no "model" key
        metrics["model"] = config.model
    metrics.update(model.run_record())
    if ckpt:
        save_checkpoint(
            ckpt,
            model,
            optimizer_state=None if alternating else optimizer.state_dict(),
            step=config.iters,
            rng_state=rng.bit_generator.state,
            extra={"history": history, "seed": seed},
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

    def save(self, done: int) -> None:
        """The checkpoint after ``done`` steps (model, optimiser, generator, losses, seed)."""
        save_checkpoint(
            self.checkpoint,
            self.model,
            optimizer_state=self.optimizer.state_dict(),
            step=done,
            rng_state=self.rng.bit_generator.state,
            extra={"history": self.history, "seed": self.seed},
        )


def _train_joint(run: Run, data, start: int, validator=None) -> None:
    """Approximate joint training from step ``start`` to ``config.iters``; ``validator``
    (a :class:`~minirccn.engine.validation.Validator` or None) evaluates every ``eval_every``
    steps."""
    model, config, history, ckpt, seed = run.model, run.config, run.history, run.checkpoint, run.seed
    stop = runs.current_stop()
    stop.defer = True  # a signal now stops after the current step (saved below)
    bar = tqdm(range(start, config.iters), desc="train", disable=not run.progress, dynamic_ncols=True)
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
            sample = test_data[i]
            det = run_model(model, sample["image"], backend, sample["image_id"])
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
        viz.save_grid(tiles, os.path.join(out, "detections.png"), cols=4)
