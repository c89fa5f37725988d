"""``minirccn config show``: the config ``minirccn train`` would use, and where each field came
from; the ``--config FILE`` / ``--set KEY=VALUE`` flags every command that builds a config
shares (the parsing itself: :mod:`minirccn.config.overrides`)."""

from __future__ import annotations

import argparse
import json

from minirccn.app import flags
from minirccn.app.userdata import configure
from minirccn.config import PRESETS, DetectorConfig, preset
from minirccn.config.overrides import field_names
from minirccn.detector import registry
from minirccn.detector.registry import MODELS


def add_override_arguments(parser) -> None:
    """``--config FILE`` and repeatable ``--set key=value``."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON file {field: value} of config fields (overrides the preset and derived values)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one config field (repeatable; highest precedence), e.g. --set anchor_sizes=24,48,96",
    )


def format_config(config: DetectorConfig, sources: dict | None = None) -> str:
    """One line per field: ``name = value`` and, where a layer set it, ``# source``."""
    sources = sources or {}
    width = max(len(n) for n in field_names())
    lines = []
    for name in field_names():
        value = getattr(config, name)
        text = json.dumps(value) if not isinstance(value, tuple) else json.dumps(list(value))
        tag = f"  # {sources[name]}" if name in sources else ""
        lines.append(f"{name:<{width}} = {text}{tag}")
    return "\n".join(lines)


# ------------------------------------------------------------------ minirccn config show


def add_arguments(parser) -> None:
    """``minirccn config show [--preset P] [--data D] [--images DIR] [--config F] [--set K=V]``."""
    parser.add_argument("action", choices=("show",), help="show: print the resolved config")
    parser.add_argument(
        "--preset",
        default=None,
        choices=PRESETS,
        help="network preset (default: tiny; resnet-fpn-tiny for --model retinanet)",
    )
    parser.add_argument("--model", default="fasterrcnn", choices=MODELS, help="as minirccn train's --model")
    flags.add_data_arguments(parser, help="derive defaults from this data")
    parser.add_argument("--val-data", default=None, help="as minirccn train's --val-data")
    parser.add_argument("--val-images", default=None, help="as minirccn train's --val-images")
    parser.add_argument("--split", default=None, help="as minirccn train's --split")
    parser.add_argument("--eval-split", default="test", help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=None, help="as minirccn train's --iters")
    parser.add_argument("--minutes", type=float, default=None, help="as minirccn train's --minutes")
    parser.add_argument("--lr", type=float, default=None, help="as minirccn train's --lr")
    parser.add_argument("--no-derive", action="store_true", help="no defaults from the data")
    parser.add_argument("--json", action="store_true", help="print the config as JSON")
    add_override_arguments(parser)


def run(args) -> int:
    """Print the config ``minirccn train`` would use with the same flags."""
    args.preset = args.preset or registry.default_preset(args.model)
    base = preset(args.preset, model=args.model)
    setup = configure(args, log=(lambda *a: None) if args.json else print, base=base)
    if args.json:
        print(setup["config"].to_json())
    else:
        print(format_config(setup["config"], setup["metrics"].get("config_sources")))
    return 0
