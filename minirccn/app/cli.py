"""The ``minirccn`` command line.

Each subcommand is a module of :mod:`minirccn.app` (argparse lives there and nowhere else)
with two functions, ``add_arguments(parser)`` and ``run(args) -> int`` (``detect`` and ``eval``
share a module: ``add_arguments_detect`` / ``run_detect``, ...):

=========  ================================  =====================================
command    module                            what it does
=========  ================================  =====================================
train      :mod:`minirccn.app.train`         train a detector, write checkpoint,
                                             metrics, loss curve, detection PNGs
detect     :mod:`minirccn.app.predict`       draw detections on images (PNG+JSON)
eval       :mod:`minirccn.app.predict`       VOC07 / VOC / COCO mAP of a checkpoint
bench      :mod:`minirccn.app.bench`         time every op per backend side by side
data       :mod:`minirccn.app.data_export`   export ``shapes`` as VOC / COCO / CSV
config     :mod:`minirccn.app.config_show`   print the resolved config (``config show``)
lineage    :mod:`minirccn.app.lineage`       R-CNN, Fast R-CNN, Faster R-CNN measured
                                             side by side (docs/lineage.md)
convert    :mod:`minirccn.app.convert`       torchvision weights (safetensors) -> a
                                             minirccn checkpoint
export     :mod:`minirccn.app.export`        a checkpoint -> torchvision (safetensors
                                             and a build.py)
=========  ================================  =====================================

The command modules are imported when the parser is built (a string table, as
:data:`minirccn.core.dispatch.TABLE`): setting ``OPENBLAS_NUM_THREADS`` must come before
NumPy is imported.

Errors a user can cause are printed as one line ``minirccn: error: ...`` with
exit status 2; set ``MINIRCCN_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from minirccn import __version__
from minirccn.core.errors import MinirccnError
from minirccn.core.files import describe_os_error
from minirccn.engine.runs import Interrupted, early_signals, pending_signal, resume_command

#: command -> (module, help); the module's hooks are ``add_arguments`` and ``run``
COMMANDS = {
    "train": ("minirccn.app.train", "train Faster R-CNN (default: the built-in shapes dataset)"),
    "detect": ("minirccn.app.predict", "run a trained checkpoint on images; write PNG and JSON"),
    "eval": ("minirccn.app.predict", "evaluate a checkpoint (VOC07, VOC all-point, COCO mAP)"),
    "bench": ("minirccn.app.bench", "time every op per backend, side by side"),
    "data": ("minirccn.app.data_export", "export the shapes dataset as VOC, COCO or CSV"),
    "config": ("minirccn.app.config_show", "show the resolved config (preset, data, --config, --set)"),
    "lineage": ("minirccn.app.lineage", "R-CNN vs Fast R-CNN vs Faster R-CNN on shapes: recall, time, mAP"),
    "convert": ("minirccn.app.convert", "convert a torchvision detector's weights (safetensors) to a checkpoint"),
    "export": ("minirccn.app.export", "export a checkpoint to torchvision: model.safetensors and build.py"),
}
#: the commands that share a module name their hooks ``add_arguments_<command>``, ``run_<command>``
SHARED_MODULE = ("detect", "eval")


def _hooks(command: str):
    """(add_arguments, run) for ``command`` from its module."""
    module = importlib.import_module(COMMANDS[command][0])
    suffix = f"_{command}" if command in SHARED_MODULE else ""
    return getattr(module, f"add_arguments{suffix}"), getattr(module, f"run{suffix}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minirccn",
        description="Faster R-CNN from scratch: NumPy reference, Numba and CUDA kernels.",
    )
    parser.add_argument("--version", action="version", version=f"minirccn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        add_arguments, _run = _hooks(name)
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


# Commands whose many small GEMMs run best on one OpenBLAS thread on a busy machine (measured:
# docs/threads.md); `bench` keeps the default so that its large GEMMs are timed as a user runs them.
ONE_BLAS_THREAD = ("train", "detect", "eval", "lineage")


def _choose_blas_threads(argv: list[str]) -> None:
    """Set ``OPENBLAS_NUM_THREADS=1`` for :data:`ONE_BLAS_THREAD` commands unless the user
    chose; OpenBLAS reads it when NumPy is first imported, so this runs before that."""
    if argv and argv[0] in ONE_BLAS_THREAD and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``minirccn`` and ``python -m minirccn``; returns the exit status."""
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable  # an exception in a finaliser: one line, not a traceback
    try:
        with early_signals() as pending:
            status = _main(argv)
            if status == 0 and pending["signum"] is not None:  # a signal a library swallowed
                print("minirccn: interrupted", file=sys.stderr)
                return 128 + pending["signum"]
            return status
    finally:
        sys.unraisablehook = previous_hook


def _unraisable(unraisable) -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands in a finaliser is already recorded (the run
    stops after its step); anything else is one warning line."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt):
        return
    print(f"minirccn: warning: ignored {type(exc).__name__}: {exc}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _choose_blas_threads(argv)
    try:
        parser = build_parser()  # imports every command's module
    except KeyboardInterrupt:
        print("minirccn: interrupted", file=sys.stderr)
        return 128 + (pending_signal() or 2)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _add, run = _hooks(args.command)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line per warning, no source excerpt
            return int(run(args) or 0)
    except Interrupted as exc:  # SIGINT / SIGTERM during a run: saved, say how to go on
        print(f"minirccn: {exc}", file=sys.stderr)
        if exc.checkpoint and args.command == "train":
            print(f"minirccn: resume with: {resume_command(argv, args.out)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("minirccn: interrupted", file=sys.stderr)
        return 128 + (pending_signal() or 2)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        if os.environ.get("MINIRCCN_DEBUG"):
            raise
        print(f"minirccn: error: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, USER_ERRORS) else 1


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"minirccn: warning: {message}", file=file or sys.stderr, flush=True)


#: exceptions a user can cause (exit status 2); anything else is a bug (exit status 1)
USER_ERRORS = (MinirccnError, ValueError, TypeError, OSError, RecursionError, MemoryError)


def error_line(exc: BaseException) -> str:
    """The one line shown for ``exc``: MinirccnError's message; an OSError with its file; any
    other exception with its type, marked as a bug when it is not a user error."""
    if isinstance(exc, MinirccnError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, RecursionError):
        return "input nested too deeply (RecursionError)"
    if isinstance(exc, MemoryError):
        return "out of memory (a size in the input or config is too large?)"
    if isinstance(exc, (ValueError, TypeError)) and str(exc):
        return str(exc)  # the ops' and the config's errors name their argument
    text = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    if isinstance(exc, USER_ERRORS):
        return text
    return f"internal error, please report it ({text}; MINIRCCN_DEBUG=1 shows the traceback)"
