"""``minirccn convert``: a torchvision detector's weights -> a minirccn checkpoint.

::

    minirccn convert model.safetensors --arch fasterrcnn_resnet50_fpn --num-classes 91 \\
        --out coco.npz [--class-names a,b,...] [--set min_size=320 --set max_size=320 ...]

``model.safetensors`` is a torchvision ``state_dict`` saved where torch is installed with
``safetensors.torch.save_file(model.state_dict(), "model.safetensors")``; a ``.pth`` file is
refused (with that line), nothing is downloaded. ``--set`` takes the config fields of
``minirccn train`` (torchvision's argument names: ``min_size``, ``max_size``,
``box_score_thresh``, ``rpn_pre_nms_top_n_test``, ...), so the model is built as torchvision's
was. The checkpoint works with ``detect``, ``eval``, ``train --weights`` and ``export`` like any
other. The names, shapes and conversions: :mod:`minirccn.engine.interop`.
"""

from __future__ import annotations

import os

from minirccn.config.overrides import apply, parse_sets
from minirccn.core.errors import MinirccnError
from minirccn.engine import interop
from minirccn.engine.checkpoint import save_checkpoint


def add_arguments(parser) -> None:
    parser.add_argument("weights", metavar="FILE.safetensors", help="a torchvision state_dict")
    parser.add_argument(
        "--arch", required=True, choices=interop.ARCHS, help="torchvision architecture"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        required=True,
        help="classes of the box predictor, background included",
    )
    parser.add_argument("--out", required=True, metavar="CK.npz", help="the checkpoint to write")
    parser.add_argument(
        "--class-names",
        default=None,
        help="comma-separated names of classes 1..K-1 (default: COCO's for 91, else class1, ...)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config field, e.g. --set min_size=320 (repeatable)",
    )


def run(args) -> int:
    if args.num_classes < 2:
        raise MinirccnError(
            f"--num-classes: expected at least 2 (background included), got {args.num_classes}"
        )
    if not args.out.strip() or os.path.isdir(args.out):
        raise MinirccnError(f"--out {args.out}: expected a checkpoint file name (CK.npz)")
    names = interop.class_names_for(
        args.num_classes, args.class_names.split(",") if args.class_names is not None else None
    )
    config = apply(interop.arch_config(args.arch), parse_sets(args.sets), "--set")
    tensors = interop.read_state_dict(args.weights)
    model = interop.convert(tensors, config, names, args.weights, args.arch)
    path = save_checkpoint(
        args.out, model, extra={"converted_from": {"file": args.weights, "arch": args.arch}}
    )
    n = sum(int(v.size) for k, v in model.params.items() if ".running_" not in k)
    print(
        f"{args.weights}: {args.arch}, {len(model.params)} arrays ({n:,} weights), {args.num_classes} classes -> {path}"
    )
    return 0
