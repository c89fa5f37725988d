"""``minirccn train``: the flags, the output folder, the config (preset, the data's defaults,
``--config``, ``--set``, the lineage flags), then :func:`minirccn.engine.loop.train` and the
summary.

How the tiny preset's numbers were chosen (measurements): ``docs/presets.md``.
"""

from __future__ import annotations

import argparse
import json
import os

from minirccn.app import flags, summary, userdata, weights
from minirccn.app.config_show import add_override_arguments
from minirccn.config import PRESETS, preset
from minirccn.core.errors import MinirccnError, note
from minirccn.core.files import check_out_folder
from minirccn.detector import registry
from minirccn.detector.registry import MODELS
from minirccn.engine import runs
from minirccn.engine.loop import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``minirccn train``."""
    flags.add_data_arguments(parser)
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
    flags.add_backend_argument(parser)
    flags.add_seed_argument(parser)
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
    flags.add_progress_argument(parser)
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
        metavar="FILE.safetensors|CK.npz",
        help="ImageNet-pretrained backbone weights with torchvision's names (vgg16 preset), or a "
        "checkpoint to fine-tune (minirccn convert's or train's: its network, its weights)",
    )
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object instead of the summary"
    )
    add_override_arguments(parser)
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
    """``--model``, else ``fastrcnn`` when ``--proposals`` is given, else ``fasterrcnn``
    (:func:`minirccn.detector.registry.default_model`)."""
    return args.model or registry.default_model(external_proposals=bool(args.proposals))


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
            note(f"--resume: continuing the latest run, {latest}")
        return latest
    folder = runs.next_run_folder(DEFAULT_OUT)
    if folder != DEFAULT_OUT:
        note(f"{DEFAULT_OUT} holds a run; this run writes to {folder}")
    return folder


def check_out_early(args) -> None:
    """The checks of :func:`minirccn.engine.runs.guarded_run` that need no data, made before the
    data is read (a 100 MB COCO file takes seconds): ``--resume`` needs a checkpoint,
    ``--out`` must be a writable folder, a folder holding a run needs ``--resume`` or
    ``--overwrite``. ``train`` repeats them under the run lock."""
    if args.resume and args.overwrite:
        raise MinirccnError("--resume and --overwrite: choose one")
    ckpt = os.path.join(args.out, runs.CHECKPOINT)
    if args.resume and not os.path.isfile(ckpt):
        raise MinirccnError(f"--resume: no checkpoint at {ckpt}")
    check_out_folder(args.out)
    if not args.overwrite:
        runs.guard_existing_run(args.out, resume=args.resume, overwrite=False)


def run(args) -> int:
    """``minirccn train``: train, evaluate, write outputs; print the summary."""
    if args.iters is not None and args.iters < 1:
        raise MinirccnError(f"--iters: expected a positive number, got {args.iters}")
    flags.check_seed(args)
    if args.eval_images is not None and args.eval_images < 1:
        raise MinirccnError(f"--eval-images: expected a positive number, got {args.eval_images}")
    model = chosen_model(args)
    args.preset = args.preset or registry.default_preset(model)
    base = preset(args.preset)
    if model != base.model:
        base = preset(args.preset, model=model)
    base = lineage_config(base, args)
    finetune = None
    if args.weights and args.weights.endswith(".npz"):  # fine-tune a checkpoint: its network
        base, finetune = weights.checkpoint_weights(args.weights)
        args.no_derive = True  # the architecture is the checkpoint's, not derived from the data
        note(f"--weights {args.weights}: fine-tuning its {base.backbone} network (--preset ignored)")
    args.out = resolve_out(args.out, resume=args.resume)
    check_out_early(args)  # in milliseconds, before any data is read
    log = (lambda *a: None) if args.json else print
    setup = userdata.configure(args, log=log, base=base)
    config = setup["config"]
    init_params = finetune
    if args.weights and finetune is None:
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
