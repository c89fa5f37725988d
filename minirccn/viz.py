"""Pictures with Pillow alone: detections on images, image grids, line charts.

* :func:`draw_detections` -- box outlines with ``"name 0.93"`` tags on an image.
* :func:`save_grid` -- several images tiled into one PNG.
* :func:`plot_curves` -- a line chart (axes, ticks, legend, optional smoothing),
  drawn with ``ImageDraw`` so no plotting library is needed.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from minirccn.runs import atomic_path

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


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` round tick values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


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


def plot_curves(
    curves: dict,
    path,
    title: str = "",
    xlabel: str = "iteration",
    ylabel: str = "",
    smoothing: float = 0.0,
    logy: bool = False,
    size=(800, 480),
) -> str:
    """Draw a line chart of ``curves`` and save it as a PNG at ``path``.

    Args:
        curves: name -> list of values (plotted at steps 0, 1, ...) or ``(steps, values)``.
        path: output PNG (its folder is created).
        title, xlabel, ylabel: text on the chart.
        smoothing: 0 <= a < 1; if > 0 each curve is drawn faint as recorded and solid
            after an exponential moving average with weight ``a``.
        logy: logarithmic y axis (non-positive values are dropped).
        size: ``(width, height)`` in pixels.

    Returns:
        ``path`` as a string.
    """
    if not isinstance(curves, dict):
        raise TypeError(f"curves: expected a dict name -> values, got {type(curves).__name__}")
    if not 0.0 <= float(smoothing) < 1.0:
        raise ValueError(f"smoothing: expected 0 <= smoothing < 1, got {smoothing}")
    series = _series(curves)
    if logy:
        series = [(n, s[v > 0], np.log10(v[v > 0])) for n, s, v in series]
    width, height = size
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(12)
    left, right, top, bottom = 78, 20, 40 if title else 20, 52
    x0, y0, x1, y1 = left, top, width - right, height - bottom  # plot area
    points = [(s, v) for _, s, v in series if len(v)]
    if points:
        xs = np.concatenate([s for s, _ in points])
        ys = np.concatenate([v for _, v in points])
        xlo, xhi, ylo, yhi = xs.min(), xs.max(), ys.min(), ys.max()
    else:
        xlo, xhi, ylo, yhi = 0.0, 1.0, 0.0, 1.0
    if xhi <= xlo:
        xlo, xhi = xlo - 0.5, xhi + 0.5
    if yhi <= ylo:
        pad = abs(ylo) * 0.1 or 1.0
        ylo, yhi = ylo - pad, yhi + pad
    ypad = 0.04 * (yhi - ylo)
    ylo, yhi = ylo - ypad, yhi + ypad

    def px(x):
        return x0 + (np.asarray(x) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y):
        return y1 - (np.asarray(y) - ylo) / (yhi - ylo) * (y1 - y0)

    grid_colour, axis_colour, text_colour = (230, 230, 230), (60, 60, 60), (30, 30, 30)
    for t in nice_ticks(ylo, yhi, 6):
        y = float(py(t))
        if y0 <= y <= y1:
            draw.line([(x0, y), (x1, y)], fill=grid_colour)
            label = _fmt(10.0**t) if logy else _fmt(t)
            tw, th = _text_size(draw, label, font)
            draw.text((x0 - 8 - tw, y - th / 2 - 2), label, fill=text_colour, font=font)
            draw.line([(x0 - 4, y), (x0, y)], fill=axis_colour)
    for t in nice_ticks(xlo, xhi, 8):
        x = float(px(t))
        if x0 <= x <= x1:
            draw.line([(x, y0), (x, y1)], fill=grid_colour)
            label = _fmt(t)
            tw, _ = _text_size(draw, label, font)
            draw.text((x - tw / 2, y1 + 7), label, fill=text_colour, font=font)
            draw.line([(x, y1), (x, y1 + 4)], fill=axis_colour)
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=axis_colour, width=1)

    for k, (name, steps, values) in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        if len(values) == 0:
            continue
        pts = list(zip(px(steps).tolist(), py(values).tolist()))
        if smoothing > 0:
            faint = tuple(int(c + 0.65 * (255 - c)) for c in colour)
            if len(pts) > 1:
                draw.line(pts, fill=faint, width=1)
            pts = list(zip(px(steps).tolist(), py(ema(values, smoothing)).tolist()))
        if len(pts) == 1:
            x, y = pts[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        else:
            draw.line(pts, fill=colour, width=2)

    if title:
        tw, _ = _text_size(draw, title, _font(15))
        draw.text(((width - tw) / 2, 10), title, fill=text_colour, font=_font(15))
    if xlabel:
        tw, _ = _text_size(draw, xlabel, font)
        draw.text(((x0 + x1 - tw) / 2, height - 22), xlabel, fill=text_colour, font=font)
    if ylabel or logy:
        text = (ylabel + " (log scale)").strip() if logy else ylabel
        tw, th = _text_size(draw, text, font)
        label_img = Image.new("RGB", (tw + 4, th + 6), (255, 255, 255))
        ImageDraw.Draw(label_img).text((2, 0), text, fill=text_colour, font=font)
        rotated = label_img.rotate(90, expand=True)
        img.paste(rotated, (6, int((y0 + y1 - rotated.height) / 2)))
    if series:  # legend, top right inside the plot
        rows = [(name, PALETTE[k % len(PALETTE)]) for k, (name, _, _) in enumerate(series)]
        lw = max(_text_size(draw, n, font)[0] for n, _ in rows) + 36
        lh = 18 * len(rows) + 8
        lx, ly = x1 - lw - 8, y0 + 8
        draw.rectangle([lx, ly, lx + lw, ly + lh], fill=(255, 255, 255), outline=(200, 200, 200))
        for r, (name, colour) in enumerate(rows):
            yy = ly + 6 + 18 * r + 7
            draw.line([(lx + 6, yy), (lx + 26, yy)], fill=colour, width=3)
            draw.text((lx + 31, yy - 8), name, fill=text_colour, font=font)
    path = os.fspath(path)
    with atomic_path(path, "PNG") as tmp:  # never a half-written picture
        img.save(tmp, format="PNG")
    return path
