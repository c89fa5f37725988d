"""Small helpers shared by the tutorials: where figures go, fast mode, printing, pictures.

Nothing here computes anything minirccn computes; it only keeps the tutorials
short. Every tutorial starts with::

    import _common as T

Environment variables (all optional):

* ``MINIRCCN_TUTORIAL_OUT``: folder for the PNG figures (default:
  ``tutorials/figures`` next to this file).
* ``MINIRCCN_TUTORIAL_FAST=1``: smaller sizes so a tutorial runs in seconds
  (used by ``tests/test_tutorials.py``); every step still runs.
* ``MINIRCCN_TUTORIAL_STUDENT=1``: student mode. A failed :func:`check` prints
  ``check FAILED`` and the script goes on (edit the code an exercise asks you
  to edit, and see everything that changes); a summary of the failed checks is
  printed at the end. Without it a failed check raises ``AssertionError``.
* ``MINIRCCN_TUTORIAL_SOLUTIONS=1``: the exercise stubs are replaced by the
  worked solutions in ``tutorials/solutions/NN_name.py`` (the test suite runs
  this way, so every exercise check is shown to pass on a right answer).
* ``MINIRCCN_TUTORIAL_CHECKPOINT``: a trained default run's ``checkpoint.npz``
  (``minirccn train --out DIR`` writes ``DIR/checkpoint.npz``) for the sections
  of tutorials 8 and 14 that show a converged detector; default
  ``tutorials/.cache/default-run/checkpoint.npz`` (see :func:`default_run`).

This module must not import Numba (or minirccn, which imports it): tutorial 3
and 9 call :func:`use_cuda_simulator_without_gpu` first, and Numba reads
``NUMBA_ENABLE_CUDASIM`` once, when it is imported.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

#: True under ``MINIRCCN_TUTORIAL_FAST=1``: smaller inputs, same steps.
FAST = os.environ.get("MINIRCCN_TUTORIAL_FAST", "0") not in ("", "0")

#: True under ``MINIRCCN_TUTORIAL_STUDENT=1``: a failed check reports and the script goes on.
STUDENT = os.environ.get("MINIRCCN_TUTORIAL_STUDENT", "0") not in ("", "0")

#: True under ``MINIRCCN_TUTORIAL_SOLUTIONS=1``: exercise stubs replaced by the worked solutions.
SOLUTIONS = os.environ.get("MINIRCCN_TUTORIAL_SOLUTIONS", "0") not in ("", "0")

#: messages of the checks that failed in student mode (printed again at exit)
FAILED: list = []
#: exercise name -> "passed" / "not done" / "not right"
EXERCISES: dict = {}


def out_dir() -> Path:
    """The folder figures are written to (created if missing)."""
    path = Path(os.environ.get("MINIRCCN_TUTORIAL_OUT") or HERE / "figures")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick(full, fast):
    """``fast`` in fast mode, else ``full`` (sizes, counts, repeats)."""
    return fast if FAST else full


def use_cuda_simulator_without_gpu() -> bool:
    """Switch Numba's CUDA simulator on unless a real GPU is usable; call before importing numba.

    Returns:
        True if a real GPU (CuPy sees a device) will run the ``cuda`` backend,
        False if the simulator will (NumPy arrays, plain Python threads: slow,
        for correctness only).
    """
    if "numba" in __import__("sys").modules:
        raise RuntimeError("use_cuda_simulator_without_gpu() must run before numba is imported")
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False  # the caller (e.g. the test suite) already chose the simulator
    try:
        import cupy

        gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - ImportError, CUDARuntimeError, ...: no usable GPU
        gpu = False
    if not gpu:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    return gpu


# ----------------------------------------------------------------------------- printing


def section(title: str) -> None:
    """Print a section header, so the script's output reads like the notebook."""
    print(f"\n=== {title} " + "=" * max(0, 66 - len(title)))


def check(condition, message: str) -> bool:
    """Assert ``condition`` and print ``check passed: message`` (a tutorial is also a test).

    In student mode (``MINIRCCN_TUTORIAL_STUDENT=1``) a failed check prints
    ``check FAILED: message`` and returns False instead of raising, so a script
    whose code you edited runs on to the end; the failures are listed again at exit.
    """
    if bool(condition):
        print(f"check passed: {message}")
        return True
    if not STUDENT:
        raise AssertionError(f"check failed: {message}")
    FAILED.append(message)
    print(f"check FAILED (student mode: going on): {message}")
    return False


def _report_at_exit() -> None:
    if FAILED:
        print(f"\nstudent mode: {len(FAILED)} check(s) failed:")
        for message in FAILED:
            print(f"  - {message}")
    if EXERCISES:
        done = sum(v == "passed" for v in EXERCISES.values())
        print(f"\nexercises: {done} of {len(EXERCISES)} passed their checks")


atexit.register(_report_at_exit)


# ----------------------------------------------------------------------------- exercises


def _solutions_module():
    """``tutorials/solutions/<this script's stem>.py`` as a module (None if there is none)."""
    stem = Path(sys.argv[0]).stem
    path = HERE / "solutions" / f"{stem}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"solutions_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stub(function):
    """Mark ``function`` as an exercise stub (its body raises ``NotImplementedError``).

    Returns the stub itself, or under ``MINIRCCN_TUTORIAL_SOLUTIONS=1`` the function of
    the same name in ``tutorials/solutions/NN_name.py`` (the worked solution).
    """
    if SOLUTIONS:
        module = _solutions_module()
        if module is None or not hasattr(module, function.__name__):
            raise RuntimeError(f"no solution for {function.__name__} in tutorials/solutions/")
        return getattr(module, function.__name__)
    return function


def exercise(name: str, run_check, expected: str) -> bool:
    """Run the check of exercise ``name``: ``run_check()`` calls the student's stub.

    * The stub still raises ``NotImplementedError``: prints ``exercise NAME: not done yet``
      and the expected answer's description.
    * ``run_check()`` returns a true value: ``exercise NAME: passed``.
    * It returns a false value or raises: ``exercise NAME: not right yet`` and why.

    Never aborts the script (an exercise is the student's, not the tutorial's check).

    Args:
        name: ``"3.1"`` style (tutorial.exercise).
        run_check: no argument; returns True if the answer is right (may print details).
        expected: what the right answer is, or its order of magnitude.
    """
    try:
        ok = bool(run_check())
    except NotImplementedError:
        EXERCISES[name] = "not done"
        print(f"exercise {name}: not done yet (fill in the stub above). Expected: {expected}")
        return False
    except Exception as exc:  # noqa: BLE001 - a student's code may raise anything
        ok = False
        print(f"exercise {name}: your code raised {type(exc).__name__}: {exc}")
    if ok:
        EXERCISES[name] = "passed"
        print(f"exercise {name}: passed ({expected})")
    else:
        EXERCISES[name] = "not right"
        print(f"exercise {name}: not right yet. Expected: {expected}")
    return ok


# ----------------------------------------------------------------------------- torchvision


def torchvision_or_note(what: str):
    """``(torch, torchvision)`` if both import, else ``(None, None)`` after printing a note.

    The tutorials never need torch; where one says "exactly torchvision's", a cell runs
    torchvision's op beside minirccn's when torch is importable, and says it skipped otherwise.
    """
    try:
        import torch
        import torchvision
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
        print(f"torchvision comparison of {what} skipped: torch/torchvision not importable ({exc})")
        return None, None
    return torch, torchvision


# ----------------------------------------------------------------------------- error analysis

#: the kinds of :func:`error_breakdown`, in the order they are tested
ERROR_KINDS = ("correct", "duplicate", "localisation", "confusion", "background")


def error_breakdown(preds, targets, score_thresh=0.5, fg_iou=0.5, bg_iou=0.1):
    """What each detection scoring above ``score_thresh`` is (Hoiem et al.'s error classes).

    Per image, best score first, a detection is

    * ``correct``: IoU >= ``fg_iou`` with a not yet matched object of its class (it takes it);
    * ``duplicate``: IoU >= ``fg_iou`` with an object of its class that is already taken;
    * ``localisation``: its class, ``bg_iou <= IoU < fg_iou``;
    * ``confusion``: IoU >= ``bg_iou`` with an object of another class (and none of the above);
    * ``background``: IoU < ``bg_iou`` with every object.

    Tutorial 14 writes the same rules as a loop and checks it against this function.

    Returns:
        ``(counts, missed, total)``: ``counts`` kind -> number of detections, ``missed`` the
        objects no ``correct`` detection took, ``total`` the number of objects.
    """
    from minirccn import ops  # noqa: PLC0415 - numba must load after T

    counts = dict.fromkeys(ERROR_KINDS, 0)
    missed = total = 0
    for p, t in zip(preds, targets):
        keep = np.flatnonzero(np.asarray(p["scores"]) > score_thresh)
        keep = keep[np.argsort(-np.asarray(p["scores"])[keep], kind="stable")]
        gt, gl = np.asarray(t["boxes"], np.float64).reshape(-1, 4), np.asarray(t["labels"])
        taken = np.zeros(len(gt), bool)
        iou = ops.box_iou(np.asarray(p["boxes"], np.float64)[keep].reshape(-1, 4), gt)
        for row, k in enumerate(keep):
            same = gl == p["labels"][k]
            v = iou[row] if len(gt) else np.zeros(0)
            free = same & ~taken & (v >= fg_iou)
            if free.any():
                j = np.flatnonzero(free)[np.argmax(v[free])]
                taken[j] = True
                kind = "correct"
            elif (same & (v >= fg_iou)).any():
                kind = "duplicate"
            elif (same & (v >= bg_iou)).any():
                kind = "localisation"
            elif (~same & (v >= bg_iou)).any():
                kind = "confusion"
            else:
                kind = "background"
            counts[kind] += 1
        missed += int((~taken).sum())
        total += len(gt)
    return counts, missed, total


# ----------------------------------------------------------------------------- the default run

#: where :func:`default_run` looks when ``MINIRCCN_TUTORIAL_CHECKPOINT`` is not set
CACHE_CHECKPOINT = HERE / ".cache" / "default-run" / "checkpoint.npz"

#: full mode without a cached checkpoint: the default schedule shortened to this many steps
#: (2/5 of the default run's time, see :func:`default_run_minutes`), saved to
#: :data:`CACHE_CHECKPOINT` for the next runs
FALLBACK_STEPS = 2000

#: the default run's published measurement (``minirccn train`` on two cores)
METRICS = HERE.parent / "docs" / "metrics.json"


def default_run_minutes() -> int:
    """What the default run makes its user wait (training and evaluation) in whole minutes,
    rounded, read from ``docs/metrics.json`` (the minutes ``tests/test_docs.py`` accepts)."""
    metrics = json.loads(METRICS.read_text())
    return max(1, round((metrics["train_seconds"] + metrics["eval_seconds"]) / 60))


def default_run(train_if_missing: bool = True):
    """The trained default run (``minirccn train``) as ``(model, where, note)``, or Nones.

    Looks for ``$MINIRCCN_TUTORIAL_CHECKPOINT``, then :data:`CACHE_CHECKPOINT`. Without
    either: in fast mode returns ``(None, None, note)`` (fast mode stays fast); in full mode
    trains the ``tiny`` preset's schedule shortened to :data:`FALLBACK_STEPS` steps (milestones,
    warm-up and the batch-norm freeze scaled alike), saves it to :data:`CACHE_CHECKPOINT` and
    says so: a shortened run is not the converged one, and the note says that too.
    """
    from minirccn.engine.checkpoint import load_checkpoint  # noqa: PLC0415 - numba must load after T

    from minirccn.config import preset  # noqa: PLC0415

    full_iters = preset("tiny").iters
    env = os.environ.get("MINIRCCN_TUTORIAL_CHECKPOINT")
    for path, origin in ((env, "$MINIRCCN_TUTORIAL_CHECKPOINT"), (CACHE_CHECKPOINT, "the cache")):
        if path and Path(path).is_file():
            model, state = load_checkpoint(path)
            if int(state["step"]) < full_iters:  # e.g. the cached shortening trained below
                note = (
                    f"a {state['step']}-step shortening of the default schedule, from {origin} "
                    f"({path}) (the default run, `minirccn train`, trains {full_iters})"
                )
            else:
                note = f"the default run's checkpoint from {origin} ({path}), step {state['step']}"
            return model, Path(path), note
    if FAST or not train_if_missing:
        return None, None, (
            "no trained checkpoint (set MINIRCCN_TUTORIAL_CHECKPOINT=DIR/checkpoint.npz after "
            f"`minirccn train --out DIR`, about {default_run_minutes()} minutes on two cores)"
        )
    from minirccn.engine.loop import train  # noqa: PLC0415

    cfg = preset("tiny")
    k = FALLBACK_STEPS / cfg.iters
    cfg = cfg.replace(
        iters=FALLBACK_STEPS,
        milestones=tuple(int(m * k) for m in cfg.milestones),
        warmup_iters=max(1, int(cfg.warmup_iters * k)),
        bn_freeze_iter=int(cfg.bn_freeze_iter * k),
    )
    print(f"no cached checkpoint: training the default schedule shortened to {cfg.iters} steps")
    CACHE_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    train(cfg, out=str(CACHE_CHECKPOINT.parent), overwrite=True, progress=False, eval_split="")
    model, state = load_checkpoint(CACHE_CHECKPOINT)
    note = (
        f"a {cfg.iters}-step shortening of the default schedule, trained now and cached in "
        f"{CACHE_CHECKPOINT} (the default run, `minirccn train`, trains {full_iters})"
    )
    return model, CACHE_CHECKPOINT, note


def bits(word: int, n: int) -> str:
    """The lowest ``n`` bits of ``word``, bit 0 first (so bit ``k`` is character ``k``)."""
    return "".join("1" if (int(word) >> k) & 1 else "." for k in range(n))


# ----------------------------------------------------------------------------- pictures


def font(size: int = 12):
    """Pillow's built-in font (scalable where FreeType is available)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def save(image: Image.Image, name: str, colours: int | None = None) -> Path:
    """Save ``image`` as ``<out_dir>/<name>`` (PNG) and print the path.

    Args:
        image: a PIL image.
        name: file name ending in ``.png``.
        colours: if given, quantise to this many colours first (much smaller
            files for photos of noisy images; line drawings need not).
    """
    image = image.convert("RGB")
    if colours:
        image = image.quantize(
            colors=colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
    path = out_dir() / name
    image.save(path, format="PNG", optimize=True)
    print(f"wrote {path}")
    return path


def save_grid(images: list, name: str, cols: int = 2, colours: int | None = None) -> Path:
    """Tile ``images`` with :func:`minirccn.viz.save_grid` into ``<out_dir>/<name>``, then
    re-save it through :func:`save` (quantised to ``colours`` if given: smaller files)."""
    from minirccn import viz

    path = out_dir() / name
    viz.save_grid(images, path, cols=cols)
    with Image.open(path) as tiled:
        tiled.load()
    return save(tiled, name, colours)


def heatmap(values, scale: int = 1, lo=None, hi=None) -> Image.Image:
    """A 2-D array as a blue-white-red picture (``lo`` blue, ``hi`` red), upscaled ``scale`` times.

    Args:
        values: ``(H, W)`` float.
        scale: integer upscale, nearest neighbour (each cell a ``scale`` x ``scale`` square).
        lo, hi: the value range (default: the array's min and max).
    """
    v = np.asarray(values, dtype=np.float64)
    lo = np.nanmin(v) if lo is None else lo
    hi = np.nanmax(v) if hi is None else hi
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)[..., None]  # (H, W, 1) in [0, 1]
    blue, white, red = (
        np.array([40, 80, 200.0]),
        np.array([250, 250, 250.0]),
        np.array([210, 40, 40.0]),
    )
    rgb = np.where(t < 0.5, blue + (white - blue) * (2 * t), white + (red - white) * (2 * t - 1))
    image = Image.fromarray(rgb.astype(np.uint8))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def grey(values, scale: int = 1) -> Image.Image:
    """A 2-D array as a grey picture (min black, max white), upscaled ``scale`` times."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    g = ((v - v.min()) / (span if span > 0 else 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(g).convert("RGB")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def caption(image: Image.Image, text: str, size: int = 13) -> Image.Image:
    """``image`` with ``text`` written on a white strip above it."""
    f = font(size)
    lines = text.split("\n")
    strip = 6 + (size + 4) * len(lines)
    out = Image.new("RGB", (image.width, image.height + strip), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, strip))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((4, 3 + (size + 4) * k), line, fill=(20, 20, 20), font=f)
    return out
