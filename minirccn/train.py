"""Training: ``minirccn train`` and the :func:`train` function behind it.

One SGD step (approximate joint training, the default)::

    images, targets = next batch (random horizontal flip)
    losses, cache, _ = detector_forward(model, images, sizes, targets, rng)
    grads = detector_backward(cache)       # the hand-written backward, model.py
    optimizer.step(grads)                  # SGD, momentum 0.9, weight decay 5e-4

with the learning rate warmed up linearly for ``warmup_iters`` steps, then
multiplied by ``gamma`` at each of ``milestones``.

``--alternating`` runs the paper's 4-step training instead (Sec. 3.2), each
step ``iters / 4`` iterations:

1. backbone + RPN, RPN losses only;
2. a *fresh* backbone + the head, head losses only, on the proposals of the
   step-1 network (held fixed);
3. the step-2 backbone frozen; the RPN layers fine-tuned;
4. the backbone still frozen; the head fine-tuned on the step-3 proposals.

Determinism: every random choice (data order, flips, anchor and RoI sampling,
dropout) comes from one ``numpy.random.Generator`` seeded by ``--seed``. The
checkpoint stores its state, so ``--resume`` continues exactly where the
saved run stopped: ``k`` steps + resume + ``k`` steps equals ``2k`` steps, bit
for bit.

Divergence guard: a NaN or infinite loss stops training with one clear
message; the last checkpoint written (from an earlier, finite step) is kept.

How the tiny preset's numbers were chosen (measurements): ``docs/presets.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from minirccn import preflight, runs
from minirccn.nn import optim
from minirccn.backend import array_module, resolve
from minirccn.checkpoint import load_checkpoint, save_checkpoint
from minirccn.config import PRESETS, default_preset, preset
from minirccn.data import augment, load_dataset, transforms
from minirccn.errors import MinirccnError
from minirccn.data.batching import batch_indices
from minirccn.detector import registry
from minirccn.detector.registry import MODELS
from minirccn.engine.loop import TrainingDiverged, make_optimizer, train_step


# ------------------------------------------------------------------------ the loop


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
        config: a :class:`~minirccn.config.FasterRCNNConfig` (default: ``preset(preset_name)``).
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
            handling are :func:`minirccn.runs.guarded_run`'s.
        reseed: with ``resume``, continue with a ``seed`` other than the saved one (without
            it that is refused; :func:`minirccn.preflight.check_resume` checks the rest).
        eval_split: split evaluated after training ("" or None: no evaluation).
        eval_images: evaluate only the first this many images of the split.
        checkpoint_every: write ``out/checkpoint.npz`` every this many steps.
        progress: show tqdm progress bars.
        outputs: write metrics.json, loss_curve.png, detections.png.
        val_limit: with ``config.eval_every > 0``, the periodic evaluations of ``test_data``
            (:mod:`minirccn.validation`) use at most this many images.
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
    preflight.check_not_empty(train_data, f"--data {data}")
    train_data = preflight.check_images(train_data, "--data")
    if test_data is not None and len(test_data):
        test_data = preflight.check_images(test_data, "--data")
    ckpt = os.path.join(out, "checkpoint.npz") if out else None

    rng = np.random.default_rng(seed)
    start, history = 0, {k: [] for k in (*loss_names, "loss")}
    if resume:
        if alternating:
            raise MinirccnError("--resume: not supported with --alternating")
        if not ckpt or not os.path.isfile(ckpt):
            raise MinirccnError(f"--resume: no checkpoint at {ckpt}")
        model, state = load_checkpoint(ckpt)
        preflight.check_resume(
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
        from minirccn.validation import Validator

        validator = Validator(test_data, config.eval_every, out, backend, val_limit)
    t0 = time.perf_counter()
    if alternating:
        model = _train_alternating(model, train_data, config, rng, seed, backend, history, progress)
    else:
        _train_joint(
            model,
            optimizer,
            train_data,
            config,
            rng,
            seed,
            backend,
            start,
            history,
            progress,
            ckpt,
            checkpoint_every,
            validator,
        )
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
        "final_losses": {k: _tail_mean(v) for k, v in history.items()},
    }
    if validator is not None:
        metrics["val_curve"] = validator.curve
        metrics["val_seconds"] = round(validator.seconds, 3)
        metrics["best"] = validator.best and {**validator.best, "checkpoint": validator.best_path}
    metrics.update(extra_metrics or {})
    if config.model != registry.DEFAULT_MODEL:  # (the default run's metrics.json keeps its keys)
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
        from minirccn.predict import evaluate_model

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
        _write_outputs(out, model, metrics, history, test_data, backend)
        if validator is not None:
            validator.plot(os.path.join(out, "val_curve.png"))
    return {"model": model, "metrics": metrics, "history": history}


def _tail_mean(values, n: int = 50):
    values = [v for v in values[-n:] if v is not None]
    return float(np.mean(values)) if values else None


def _train_joint(
    model,
    optimizer,
    data,
    config,
    rng,
    seed,
    backend,
    start,
    history,
    progress,
    ckpt,
    checkpoint_every,
    validator=None,
):
    """Approximate joint training from step ``start`` to ``config.iters``; ``validator``
    (a :class:`~minirccn.validation.Validator` or None) evaluates every ``eval_every`` steps."""
    from tqdm import tqdm

    def save(done):
        save_checkpoint(
            ckpt,
            model,
            optimizer_state=optimizer.state_dict(),
            step=done,
            rng_state=rng.bit_generator.state,
            extra={"history": history, "seed": seed},
        )

    stop = runs.current_stop()
    stop.defer = True  # a signal now stops after the current step (saved below)
    bar = tqdm(range(start, config.iters), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = batch_indices(seed, step, config.images_per_batch, len(data))
        try:
            batch = model.load_batch(data, idx, rng, backend)
        except MinirccnError as exc:  # an image went bad during the run: keep the steps done
            if isinstance(exc, TrainingDiverged):
                raise
            if ckpt and step > start:
                save(step)
            kept = f"; checkpoint at step {step} saved to {ckpt}" if ckpt and step > start else ""
            raise MinirccnError(f"{exc}{kept}") from None
        losses = train_step(model, optimizer, batch, rng, step, backend=backend)
        for k, v in losses.items():
            history[k].append(float(v))
        if progress and step % 10 == 0:
            bar.set_postfix(
                {k.replace("loss_", ""): f"{_tail_mean(history[k], 20):.3f}" for k in history},
                refresh=False,
            )
        done = step + 1
        if validator is not None and validator.due(done, config.iters):
            point = validator(model, done, seed)
            if progress:
                bar.write(f"step {done}: validation mAP@0.5 {point['map50']:.4f} mAP {point['map']:.4f}")
        if ckpt and checkpoint_every and done % checkpoint_every == 0 and done < config.iters:
            save(done)
        if stop.requested() and done < config.iters:
            bar.close()
            if ckpt:
                save(done)
            raise stop.interrupted(done, ckpt)


def _train_alternating(model, data, config, rng, seed, backend, history, progress):
    """The paper's 4-step alternating training (module docstring); returns the final model."""
    from tqdm import tqdm

    quarter = max(config.iters // 4, 1)
    # step 1: backbone + RPN
    rpn_model = model
    # step 2: a fresh backbone + head, on step-1 proposals
    det_model = type(model)(config, model.class_names, rng=rng).to(backend)
    plan = [
        (rpn_model, ("rpn",), True, None),
        (det_model, ("head",), True, rpn_model),
        (det_model, ("rpn",), False, None),
        (det_model, ("head",), False, det_model),
    ]
    step = 0
    for alt_step, (net, parts, train_backbone, proposer) in enumerate(plan, start=1):
        if alt_step == 3:  # the detector takes over the RPN layers trained in step 1
            det_model.params.update(
                {k: v.copy() for k, v in rpn_model.params.items() if k.startswith("rpn.")}
            )
        prefixes = tuple(s + "." for s in parts) + (("backbone.",) if train_backbone else ())
        opt = make_optimizer(net, prefixes)
        bar = tqdm(
            range(quarter),
            desc=f"alternating step {alt_step}/4",
            disable=not progress,
            dynamic_ncols=True,
        )
        for i in bar:
            idx = batch_indices(seed, step, config.images_per_batch, len(data))
            batch = net.load_batch(data, idx, rng, backend)
            proposals = None
            if proposer is not None:
                _, props = proposer.rpn_proposals(
                    batch.images, batch.image_sizes, training=True, backend=backend
                )
                proposals = [b for b, _ in props]
            losses = train_step(
                net,
                opt,
                batch,
                rng,
                i,
                backend=backend,
                parts=parts,
                proposals=proposals,
                train_backbone=train_backbone,
            )
            for k in history:
                history[k].append(
                    float(losses[k]) if k in parts_losses(parts) or k == "loss" else None
                )
            step += 1
    return det_model


def parts_losses(parts) -> tuple:
    """The loss names that a tuple of detector parts (``"rpn"``, ``"head"``) computes."""
    names = ()
    if "rpn" in parts:
        names += ("loss_objectness", "loss_rpn_box_reg")
    if "head" in parts:
        names += ("loss_classifier", "loss_box_reg")
    return names


def _write_outputs(out, model, metrics, history, test_data, backend):
    """metrics.json, loss_curve.png and detections.png in ``out``."""
    from minirccn import viz
    from minirccn.predict import run_model

    os.makedirs(out, exist_ok=True)
    runs.write_json(os.path.join(out, "metrics.json"), metrics, "metrics", indent=2, default=float)
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


# ------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``minirccn train``."""
    parser.add_argument(
        "--data",
        default="shapes",
        help="'shapes' (default), a VOC root folder, a COCO .json or a .csv file",
    )
    parser.add_argument("--images", default=None, help="image folder for COCO / CSV annotations")
    parser.add_argument(
        "--out",
        default=None,
        help=f"output folder (default: {DEFAULT_OUT}, or {DEFAULT_OUT}2, ... when it holds a run)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=PRESETS,
        help="network preset (default: tiny; resnet-fpn-tiny for --model retinanet)",
    )
    parser.add_argument(
        "--model",
        default=None,
        choices=MODELS,
        help="fasterrcnn (default; with --proposals: fastrcnn), retinanet (the preset's "
        "RetinaNet, docs/retinanet.md), fastrcnn (RoI head on --proposals) or rcnn (a CNN per "
        "warped proposal, slow by design; docs/lineage.md)",
    )
    parser.add_argument("--iters", type=int, default=None, help="SGD steps (default: the preset's)")
    parser.add_argument("--backend", default=None, help="numpy, numba (default) or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.npz (default OUT: the latest run folder)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run that --out holds"
    )
    parser.add_argument(
        "--reseed",
        action="store_true",
        help="with --resume: continue with a --seed other than the saved run's",
    )
    parser.add_argument(
        "--alternating",
        action="store_true",
        help="the paper's 4-step alternating training instead of joint training",
    )
    parser.add_argument(
        "--eval-split", default="test", help="split evaluated after training ('' : none)"
    )
    parser.add_argument(
        "--eval-images", type=int, default=None, help="evaluate only this many images"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget in minutes instead of --iters (steps from a fixed cost model)",
    )
    parser.add_argument(
        "--val-data", default=None, help="validation data (COCO/CSV file, VOC folder): all of it"
    )
    parser.add_argument("--val-images", default=None, help="image folder of a COCO/CSV --val-data")
    parser.add_argument(
        "--split", default=None, help="split of --data to train on ('all': every image)"
    )
    parser.add_argument(
        "--no-derive",
        action="store_true",
        help="use the preset as it is, no defaults derived from the data",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE.safetensors",
        help="ImageNet-pretrained backbone weights with torchvision's names (vgg16 preset)",
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object instead of the summary"
    )
    from minirccn import overrides

    overrides.add_arguments(parser)
    lineage = parser.add_argument_group("R-CNN and Fast R-CNN (docs/lineage.md)")
    lineage.add_argument(
        "--proposals",
        default=None,
        metavar="selective-search|FILE",
        help="external proposals (implies --model fastrcnn): selective search, or a JSON file "
        "{image_id: [[x1, y1, x2, y2], ...]}",
    )
    lineage.add_argument(
        "--max-proposals", type=int, default=None, help="proposals used per image (default 2000)"
    )
    lineage.add_argument(
        "--selective-search-mode",
        default=None,
        choices=("fast", "quality"),
        help="selective search diversification (default fast)",
    )


def chosen_model(args) -> str:
    """``--model``, else ``fastrcnn`` when ``--proposals`` is given, else ``fasterrcnn``."""
    return args.model or ("fastrcnn" if args.proposals else "fasterrcnn")


def lineage_config(config, args):
    """``config`` with ``--proposals``, ``--max-proposals`` and ``--selective-search-mode``
    applied (checked: only for R-CNN / Fast R-CNN; a proposal file's path made absolute)."""
    given = [f for f in ("proposals", "max_proposals", "selective_search_mode") if getattr(args, f) is not None]
    if given and not registry.uses_external_proposals(config):
        flag = "--" + given[0].replace("_", "-")
        raise MinirccnError(f"{flag}: only for --model fastrcnn or rcnn (external proposals)")
    changes = {}
    if args.proposals is not None:
        spec = args.proposals
        if spec != "selective-search":
            if not os.path.isfile(spec):
                raise MinirccnError(f"--proposals: {spec}: no such file (or use selective-search)")
            spec = os.path.abspath(spec)
        changes["proposals"] = spec
    if args.max_proposals is not None:
        if args.max_proposals < 1:
            raise MinirccnError(f"--max-proposals: expected a positive number, got {args.max_proposals}")
        changes["max_proposals"] = args.max_proposals
    if args.selective_search_mode is not None:
        changes["selective_search_mode"] = args.selective_search_mode
    return config.replace(**changes) if changes else config


DEFAULT_OUT = "runs/train"


def resolve_out(out: str | None, resume: bool) -> str:
    """The output folder: ``out`` as given, else the next free ``runs/train``, ``runs/train2``,
    ... (with ``--resume``: the latest of them that holds a checkpoint)."""
    if out is not None:
        if not out.strip():
            raise MinirccnError("--out: expected a folder name, got an empty string")
        return out
    if resume:
        latest = runs.latest_run_folder(DEFAULT_OUT)
        if latest is None:
            raise MinirccnError(f"--resume: no checkpoint in {DEFAULT_OUT} (give --out)")
        if latest != DEFAULT_OUT:
            runs.note(f"--resume: continuing the latest run, {latest}")
        return latest
    folder = runs.next_run_folder(DEFAULT_OUT)
    if folder != DEFAULT_OUT:
        runs.note(f"{DEFAULT_OUT} holds a run; this run writes to {folder}")
    return folder


def run(args) -> int:
    """``minirccn train``: train, evaluate, write outputs; print the summary."""
    from minirccn import summary, userdata

    if args.iters is not None and args.iters < 1:
        raise MinirccnError(f"--iters: expected a positive number, got {args.iters}")
    if args.seed < 0:
        raise MinirccnError(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.eval_images is not None and args.eval_images < 1:
        raise MinirccnError(f"--eval-images: expected a positive number, got {args.eval_images}")
    model = chosen_model(args)
    args.preset = args.preset or default_preset(model)
    base = preset(args.preset)
    if model != base.model:
        base = preset(args.preset, model=model)
    base = lineage_config(base, args)
    args.out = resolve_out(args.out, resume=args.resume)
    log = (lambda *a: None) if args.json else print
    setup = userdata.configure(args, log=log, base=base)
    config = setup["config"]
    init_params = None
    if args.weights:
        from minirccn import weights

        init_params = weights.backbone_params(args.weights, config)
        log(f"--weights {args.weights}: loaded {len(init_params)} backbone arrays")
    result = train(
        config,
        train_data=setup["train_data"],
        test_data=setup["test_data"],
        data=args.data,
        images=args.images,
        out=args.out,
        overwrite=args.overwrite,
        reseed=args.reseed,
        backend=args.backend,
        seed=args.seed,
        iters=setup["iters"],
        alternating=args.alternating,
        resume=args.resume,
        eval_split=setup["eval_split"],
        eval_images=args.eval_images,
        progress=not args.no_progress,
        val_limit=VAL_LIMIT,
        extra_metrics=setup["metrics"],
        init_params=init_params,
    )
    m = result["metrics"]
    if args.json:
        print(json.dumps(summary.summary_dict(m, args.out)))
    else:
        print(summary.format_summary(m, args.out))
    return 0


#: the periodic validation evaluates at most this many images (the final evaluation: all)
VAL_LIMIT = 50
