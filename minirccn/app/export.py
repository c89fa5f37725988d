"""``minirccn export``: a checkpoint -> a torchvision model.

::

    minirccn export --checkpoint CK.npz --to torchvision --out DIR

writes ``DIR/model.safetensors`` (torchvision's parameter names) and ``DIR/build.py``, whose
``build()`` returns the torchvision ``FasterRCNN`` of the checkpoint in eval mode with the
weights loaded; ``build.py`` needs torch and torchvision only. What is built, and what cannot
be exported: :mod:`minirccn.engine.torchvision_export`.
"""

from __future__ import annotations

import os

from minirccn.core.errors import MinirccnError
from minirccn.core.files import existing_file
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.torchvision_export import TARGETS, check_exportable, export_torchvision


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (train or convert)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the framework to export to")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def run(args) -> int:
    existing_file(args.checkpoint, "checkpoint file")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise MinirccnError(f"--out {args.out}: exists and is not a folder")
    model, _state = load_checkpoint(args.checkpoint)
    check_exportable(model)
    paths = export_torchvision(model, args.out)
    print(
        f"{args.checkpoint}: {paths['tensors']} tensors -> {paths['weights']}; "
        f"build() in {paths['build']} (needs torch and torchvision)"
    )
    return 0
