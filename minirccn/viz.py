"""Pictures: detections on images and image grids (Pillow), charts (matplotlib, Agg).

* :func:`draw_detections` -- box outlines with ``"name 0.93"`` tags on an image.
* :func:`save_grid` -- several images tiled into one PNG.
* :func:`plot_curves` -- loss curves (optional smoothing), schedule events
  (:func:`schedule_events`: warm-up end, batch-norm freeze, LR drops) as vertical lines.
* :func:`plot_heatmap` -- a 2-D array with a colour bar.
* :func:`plot_pr_curves` -- precision-recall curves.
* :func:`plot_sweep` -- timings (or any y) against a size, log-log.
* :func:`plot_bars` -- grouped bars.

Charts are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no
``pyplot``, no global backend switch, no display needed); each ``*_figure``
function returns the figure, each ``plot_*`` function saves it as a PNG.
"""

from __future__ import annotations

import math
import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from minirccn.core.files import atomic_path

#: distinct, saturated colours (RGB); label ``k`` gets ``PALETTE[k % len(PALETTE)]``
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
    (0, 128, 128),
    (170, 110, 40),
    (255, 225, 25),
    (128, 0, 0),
    (0, 0, 128),
    (128, 128, 0),
]


def _font(size: int = 11):
    """Pillow's built-in font (scalable where FreeType is available)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _ink_for(colour) -> tuple:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(
    image,
    boxes,
    labels,
    scores=None,
    class_names=None,
    color_by_label=True,
    scale: int = 1,
    width: int | None = None,
) -> Image.Image:
    """Draw boxes with ``"name score"`` tags on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 (or a PIL image).
        boxes: ``(D, 4)`` float ``(x1, y1, x2, y2)`` pixel coordinates of ``image``.
        labels: ``(D,)`` int class indices.
        scores: optional ``(D,)`` float; shown with two decimals.
        class_names: optional list, ``class_names[label]`` is shown instead of the number.
        color_by_label: one colour per class (else one per detection).
        scale: integer upscale (nearest neighbour) before drawing, so tags stay
            readable on small images; boxes are scaled with it.
        width: outline width in pixels of the output (default: 1 per 128 px, at least 2).

    Returns:
        An RGB ``PIL.Image`` of size ``(W * scale, H * scale)``.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
        )
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"labels: expected {len(boxes)} labels (one per box), got {len(labels)}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(
                f"scores: expected {len(boxes)} scores (one per box), got {len(scores)}"
            )
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale: expected an integer >= 1, got {scale}")
    pil = Image.fromarray(image)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    line = width or max(2, round(min(pil.width, pil.height) / 128))
    font = _font(max(10, min(16, pil.height // 20)))
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(boxes))
    for i in order[::-1]:  # highest score drawn last, on top
        label = int(labels[i])
        colour = PALETTE[(label if color_by_label else int(i)) % len(PALETTE)]
        x1, y1, x2, y2 = (boxes[i] * scale).tolist()
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=colour, width=line)
        name = (
            class_names[label]
            if class_names is not None and 0 <= label < len(class_names)
            else str(label)
        )
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        tw, th = _text_size(draw, text, font)
        tx = min(max(x1, 0), max(pil.width - tw - 4, 0))
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else max(y1, 0)
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=colour)
        draw.text((tx + 2, ty + 1), text, fill=_ink_for(colour), font=font)
    return pil


def save_grid(images: list, path, cols: int = 4, pad: int = 4, background=(255, 255, 255)) -> str:
    """Tile ``images`` row by row, ``cols`` per row, into one PNG at ``path``.

    Args:
        images: list of PIL images or ``(H, W, 3)`` uint8 arrays (sizes may differ:
            each cell is as big as the largest image).
        path: output file (its folder is created).
        cols: images per row, >= 1.

    Returns:
        ``path`` as a string.
    """
    if not images:
        raise ValueError("images: expected at least one image")
    if int(cols) < 1:
        raise ValueError(f"cols: expected an integer >= 1, got {cols}")
    pils = [
        im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))
        for im in images
    ]
    cols = min(int(cols), len(pils))
    rows = -(-len(pils) // cols)
    cw = max(im.width for im in pils)
    ch = max(im.height for im in pils)
    grid = Image.new(
        "RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), background
    )
    for k, im in enumerate(pils):
        r, c = divmod(k, cols)
        grid.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    path = os.fspath(path)
    with atomic_path(path, "PNG") as tmp:  # never a half-written picture
        grid.save(tmp, format="PNG")
    return path


def ema(values, smoothing: float) -> np.ndarray:
    """Exponential moving average, debiased as TensorBoard does: ``s_t = a s_{t-1} + (1-a) v_t``."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for t, v in enumerate(values):
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out[t] = acc / weight
    return out



def _series(curves: dict):
    """``[(name, steps, values)]`` with non-finite points dropped."""
    out = []
    for name, data in curves.items():
        if isinstance(data, tuple) and len(data) == 2:
            steps, values = (np.asarray(d, dtype=np.float64).reshape(-1) for d in data)
        else:
            values = np.asarray(data, dtype=np.float64).reshape(-1)
            steps = np.arange(len(values), dtype=np.float64)
        if len(steps) != len(values):
            raise ValueError(f"curves[{name!r}]: {len(steps)} steps but {len(values)} values")
        ok = np.isfinite(steps) & np.isfinite(values)
        out.append((str(name), steps[ok], values[ok]))
    return out


def _rgb(k: int) -> tuple:
    """``PALETTE[k]`` as matplotlib's 0..1 floats."""
    return tuple(c / 255 for c in PALETTE[k % len(PALETTE)])


def _figure(size):
    """A matplotlib Figure of ``size = (width, height)`` pixels (dpi 100) on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> str:
    """Save a matplotlib figure as a PNG at ``path`` (folder created, written atomically)."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with atomic_path(path, "PNG") as tmp:  # never a half-written picture
        fig.savefig(tmp, format="png", dpi=100)
    return path


def schedule_events(config, iters: int | None = None) -> list[tuple[int, str]]:
    """The training schedule's turning points as ``[(step, label)]``, for :func:`plot_curves`.

    Args:
        config: a :class:`~minirccn.config.FasterRCNNConfig` (reads ``warmup_iters``,
            ``bn_freeze_iter``, ``milestones``, ``gamma``, ``iters``).
        iters: keep only events before this step (default ``config.iters``).

    Returns:
        ``(step, label)`` pairs sorted by step: the end of the LR warm-up, the step
        batch norm freezes (running statistics from then on), each LR drop.
    """
    iters = config.iters if iters is None else iters
    events = []
    if config.warmup_iters > 0:
        events.append((int(config.warmup_iters), "warm-up ends"))
    if getattr(config, "bn_freeze_iter", 0) > 0:
        events.append((int(config.bn_freeze_iter), "batch norm frozen"))
    for m in config.milestones:
        events.append((int(m), f"LR x{config.gamma:g}"))
    return sorted(e for e in events if e[0] < iters)


def curves_figure(
    curves: dict,
    title: str = "",
    xlabel: str = "iteration",
    ylabel: str = "",
    smoothing: float = 0.0,
    logy: bool = False,
    size=(800, 480),
    events=(),
):
    """The figure :func:`plot_curves` saves (arguments as there)."""
    if not isinstance(curves, dict):
        raise TypeError(f"curves: expected a dict name -> values, got {type(curves).__name__}")
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing: expected 0 <= smoothing < 1, got {smoothing}")
    series = _series(curves)
    if logy:
        series = [(n, s[v > 0], v[v > 0]) for n, s, v in series]
    fig = _figure(size)
    ax = fig.add_subplot()
    for k, (name, steps, values) in enumerate(series):
        colour = _rgb(k)
        if len(values) == 0:
            continue
        if len(values) == 1:
            ax.plot(steps, values, "o", color=colour, label=name)
            continue
        if smoothing > 0:
            ax.plot(steps, values, color=colour, alpha=0.3, linewidth=1)
            values = ema(values, smoothing)
        ax.plot(steps, values, color=colour, linewidth=2, label=name)
    for step, label in events:
        ax.axvline(step, color="0.35", linestyle="--", linewidth=1)
        ax.text(
            step, 1.0, f" {label}", transform=ax.get_xaxis_transform(), rotation=90,
            va="top", ha="right", fontsize=8, color="0.25",
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel((ylabel + " (log scale)").strip() if logy else ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, color="0.9")
    if any(len(v) for _, _, v in series):  # outside the plot: never over a curve or an event
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict, path, *args, **kwargs) -> str:
    """Draw a line chart of ``curves`` and save it as a PNG at ``path``; the other arguments
    are :func:`curves_figure`'s, in its order.

    Args:
        curves: name -> list of values (plotted at steps 0, 1, ...) or ``(steps, values)``;
            non-finite points are dropped.
        path: output PNG (its folder is created).
        title, xlabel, ylabel: text on the chart.
        smoothing: 0 <= a < 1; if > 0 each curve is drawn faint as recorded and solid
            after an exponential moving average with weight ``a``.
        logy: logarithmic y axis (non-positive values are dropped).
        size: ``(width, height)`` in pixels.
        events: ``[(step, label)]`` drawn as labelled dashed vertical lines (e.g.
            :func:`schedule_events`).

    Returns:
        ``path`` as a string.
    """
    return save_figure(curves_figure(curves, *args, **kwargs), path)


def heatmap_figure(
    values, title="", xlabel="", ylabel="", colorbar_label="", cmap="viridis",
    vmin=None, vmax=None, size=(480, 400), ax_title=None,
):
    """A 2-D array as an image with a colour bar (row 0 at the top); returns the figure.

    Args:
        values: ``(H, W)`` float, or a list of them (side by side, one colour scale).
        cmap: a matplotlib colour map name (``"RdBu_r"`` for signed values).
        vmin, vmax: the colour range (default: the min and max over all arrays).
        ax_title: one title per array when ``values`` is a list.
    """
    from matplotlib.ticker import MaxNLocator

    arrays = values if isinstance(values, (list, tuple)) else [values]
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if any(a.ndim != 2 for a in arrays):
        raise ValueError("heatmap: expected 2-D arrays")
    lo = min(np.nanmin(a) for a in arrays) if vmin is None else vmin
    hi = max(np.nanmax(a) for a in arrays) if vmax is None else vmax
    fig = _figure(size)
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    for k, (ax, a) in enumerate(zip(axes, arrays)):
        im = ax.imshow(a, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rows and columns are integers
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        if k == 0:
            ax.set_ylabel(ylabel)
        if ax_title:
            ax.set_title(ax_title[k], fontsize=10)
    fig.colorbar(im, ax=list(axes), label=colorbar_label, shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig


def plot_heatmap(values, path, **kwargs) -> str:
    """Save :func:`heatmap_figure` ``(values, **kwargs)`` as a PNG at ``path``."""
    return save_figure(heatmap_figure(values, **kwargs), path)


def pr_figure(curves: dict, title="", size=(520, 440)):
    """Precision-recall curves, ``{name: (recall, precision)}``; returns the figure."""
    fig = _figure(size)
    ax = fig.add_subplot()
    for k, (name, (recall, precision)) in enumerate(curves.items()):
        ax.plot(recall, precision, "o-", color=_rgb(k), linewidth=2, markersize=4, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(True, color="0.9")
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    return fig


def plot_pr_curves(curves: dict, path, title="", size=(520, 440)) -> str:
    """Save :func:`pr_figure` as a PNG at ``path``."""
    return save_figure(pr_figure(curves, title, size), path)


def sweep_figure(
    sizes, series: dict, title="", xlabel="size", ylabel="milliseconds", logx=True, logy=True,
    size=(640, 440),
):
    """Lines of ``series`` (name -> values, one per entry of ``sizes``) against ``sizes``."""
    fig = _figure(size)
    ax = fig.add_subplot()
    for k, (name, values) in enumerate(series.items()):
        ax.plot(sizes, values, "o-", color=_rgb(k), linewidth=2, label=name)
    if logx:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(list(sizes), [f"{v:g}" for v in sizes])
    ax.set_xlabel(xlabel + (" (log scale)" if logx else ""))
    ax.grid(True, which="both", color="0.9")
    return _finish(fig, ax, title, ylabel, logy, legend=bool(series))


def plot_sweep(sizes, series: dict, path, **kwargs) -> str:
    """Save :func:`sweep_figure` ``(sizes, series, **kwargs)`` as a PNG at ``path``."""
    return save_figure(sweep_figure(sizes, series, **kwargs), path)


def bars_figure(values: dict, title="", ylabel="", size=(640, 420), logy=False):
    """Grouped bars: ``{group: {bar name: value}}``, one colour per bar name, values written
    on the bars (``logy``: logarithmic y axis, labelled so); returns the figure."""
    names: list[str] = []
    for bars in values.values():
        names += [n for n in bars if n not in names]
    fig = _figure(size)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        xs = [g + (k - (len(names) - 1) / 2) * width for g, bars in enumerate(values.values())
              if name in bars]
        ys = [bars[name] for bars in values.values() if name in bars]
        rects = ax.bar(xs, ys, width, color=_rgb(k), label=name)
        ax.bar_label(rects, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(values)), [textwrap.fill(str(g), 22) for g in values], fontsize=9)
    return _finish(fig, ax, title, ylabel, logy, legend=bool(names))


def _finish(fig, ax, title, ylabel, logy, legend):
    """The shared ending of the one-axes charts: y scale and label (``(log scale)`` when
    ``logy``), title, legend; returns ``fig`` laid out."""
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel((ylabel + " (log scale)").strip() if logy else ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_bars(values: dict, path, **kwargs) -> str:
    """Save :func:`bars_figure` ``(values, **kwargs)`` as a PNG at ``path``."""
    return save_figure(bars_figure(values, **kwargs), path)
