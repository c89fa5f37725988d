"""Small helpers shared by the tutorials: where figures go, fast mode, printing, pictures.

Nothing here computes anything minirccn computes; it only keeps the tutorials
short. Every tutorial starts with::

    import _common as T

Environment variables (all optional):

* ``MINIRCCN_TUTORIAL_OUT``: folder for the PNG figures (default:
  ``tutorials/figures`` next to this file).
* ``MINIRCCN_TUTORIAL_FAST=1``: smaller sizes so a tutorial runs in seconds
  (used by ``tests/test_tutorials.py``); every step still runs.

This module must not import Numba (or minirccn, which imports it): tutorial 3
and 9 call :func:`use_cuda_simulator_without_gpu` first, and Numba reads
``NUMBA_ENABLE_CUDASIM`` once, when it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

#: True under ``MINIRCCN_TUTORIAL_FAST=1``: smaller inputs, same steps.
FAST = os.environ.get("MINIRCCN_TUTORIAL_FAST", "0") not in ("", "0")


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


def check(condition, message: str) -> None:
    """Assert ``condition`` and print ``check passed: message`` (a tutorial is also a test)."""
    assert bool(condition), f"check failed: {message}"
    print(f"check passed: {message}")


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
