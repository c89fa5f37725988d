"""Pictures: detections and grids (Pillow), charts (matplotlib)."""

import numpy as np
import pytest
from PIL import Image

from minirccn.config import preset
from minirccn.viz import (
    PALETTE,
    curves_figure,
    draw_detections,
    ema,
    heatmap_figure,
    plot_bars,
    plot_curves,
    plot_heatmap,
    plot_pr_curves,
    plot_sweep,
    save_grid,
    schedule_events,
)


def test_draw_detections_outlines_in_the_label_colour():
    img = np.zeros((64, 80, 3), np.uint8)
    out = draw_detections(
        img,
        np.array([[10, 30, 50, 60]]),
        np.array([2]),
        np.array([0.93]),
        class_names=["__background__", "a", "b"],
        width=2,
    )
    assert isinstance(out, Image.Image) and out.size == (80, 64) and out.mode == "RGB"
    px = np.asarray(out)
    assert (
        tuple(px[45, 10]) == PALETTE[2] and tuple(px[45, 49]) == PALETTE[2]
    )  # left and right edges
    assert tuple(px[59, 30]) == PALETTE[2]  # bottom edge (last pixel row inside the box)
    assert tuple(px[45, 30]) == (0, 0, 0)  # inside stays untouched
    assert (px[:30] != 0).any()  # the tag sits above the box
    assert img.sum() == 0  # the input array is not drawn on


def test_draw_detections_scale_and_colours():
    img = np.full((16, 16, 3), 255, np.uint8)
    boxes = np.array([[2, 2, 8, 8], [9, 9, 15, 15]], np.float32)
    out = draw_detections(img, boxes, [1, 1], scale=4, color_by_label=False, width=1)
    assert out.size == (64, 64)
    px = np.asarray(out)
    assert tuple(px[20, 8]) == PALETTE[0] and tuple(px[50, 36]) == PALETTE[1]
    assert draw_detections(img, np.zeros((0, 4)), []).size == (16, 16)


def test_draw_detections_bad_input():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        draw_detections(img[:, :, 0], np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="labels"):
        draw_detections(img, np.zeros((2, 4)), [1])
    with pytest.raises(ValueError, match="scores"):
        draw_detections(img, np.zeros((1, 4)), [1], scores=[0.1, 0.2])
    with pytest.raises(ValueError, match="scale"):
        draw_detections(img, np.zeros((0, 4)), [], scale=0)


def test_save_grid(tmp_path):
    ims = [np.full((10, 12, 3), k * 40, np.uint8) for k in range(5)] + [
        Image.new("RGB", (6, 20), (1, 2, 3))
    ]
    path = save_grid(ims, tmp_path / "sub" / "g.png", cols=4, pad=2)
    grid = Image.open(path)
    assert grid.size == (4 * 12 + 5 * 2, 2 * 20 + 3 * 2)
    assert grid.getpixel((2 + 12 + 2 + 1, 3)) == (40, 40, 40)
    with pytest.raises(ValueError, match="images"):
        save_grid([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="cols"):
        save_grid(ims, tmp_path / "x.png", cols=0)


def test_plot_curves(tmp_path):
    rng = np.random.default_rng(0)
    curves = {
        "loss": list(np.exp(-np.arange(200) / 50) + 0.05 * rng.random(200)),
        "val": (np.arange(0, 200, 20), np.linspace(1, 0.2, 10)),
        "nan": [float("nan"), 1.0, float("inf")],
        "empty": [],
    }
    path = plot_curves(curves, tmp_path / "sub" / "c.png", title="losses", smoothing=0.9)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (480, 800, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert PALETTE[0] in colours and PALETTE[1] in colours  # both curves were drawn, solid
    assert Image.open(
        plot_curves({"one": [3.0]}, tmp_path / "one.png", logy=True, size=(300, 200))
    ).size == (300, 200)
    plot_curves({}, tmp_path / "none.png")
    plot_curves({"flat": [2.0] * 5}, tmp_path / "flat.png", ylabel="loss")
    with pytest.raises(ValueError, match="smoothing"):
        plot_curves(curves, tmp_path / "x.png", smoothing=1.0)
    with pytest.raises(ValueError, match="curves\\['bad'\\]"):
        plot_curves({"bad": ([1, 2], [1.0])}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="curves"):
        plot_curves([1, 2], tmp_path / "x.png")


def test_curves_figure_axes_smoothing_and_events():
    values = [4.0, 2.0, 3.0, 1.0]
    fig = curves_figure(
        {"loss": values, "nan": [float("nan"), 1.0]},
        xlabel="step",
        ylabel="loss",
        smoothing=0.5,
        events=[(1, "warm-up ends"), (3, "LR x0.1")],
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    faint, smooth, single = ax.lines[:3]
    assert faint.get_ydata().tolist() == values and faint.get_alpha() == 0.3
    np.testing.assert_allclose(smooth.get_ydata(), ema(values, 0.5))
    assert single.get_xdata().tolist() == [1.0] and single.get_ydata().tolist() == [1.0]
    vlines = ax.lines[3:]
    assert [ln.get_xdata()[0] for ln in vlines] == [1, 3]
    assert [t.get_text().strip() for t in ax.texts] == ["warm-up ends", "LR x0.1"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "nan"]
    assert curves_figure({"a": [1.0, 2.0]}, ylabel="loss", logy=True).axes[0].get_yscale() == "log"


def test_schedule_events_from_the_config():
    cfg = preset("tiny")
    events = schedule_events(cfg)
    expected = sorted(
        [(cfg.warmup_iters, "warm-up ends"), (cfg.bn_freeze_iter, "batch norm frozen")]
        + [(m, f"LR x{cfg.gamma:g}") for m in cfg.milestones]
    )
    assert events == expected and len(events) == 2 + len(cfg.milestones)
    assert schedule_events(cfg, iters=cfg.warmup_iters + 1) == [(cfg.warmup_iters, "warm-up ends")]
    none = cfg.replace(warmup_iters=0, bn_freeze_iter=0, milestones=())
    assert schedule_events(none) == []


def test_heatmap_has_a_colour_bar_and_one_scale(tmp_path):
    a, b = np.arange(6.0).reshape(2, 3), -np.ones((2, 3))
    fig = heatmap_figure([a, b], colorbar_label="IoU", ax_title=["a", "b"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(im.get_clim() == (-1.0, 5.0) for im in images)
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "IoU"  # the colour bar
    assert Image.open(plot_heatmap(a, tmp_path / "h.png", vmin=0, vmax=1)).size == (480, 400)
    with pytest.raises(ValueError, match="2-D"):
        heatmap_figure(np.zeros(3))


def test_pr_sweep_and_bar_charts_write_pngs(tmp_path):
    pr = plot_pr_curves({"cls": ([0.0, 0.5, 1.0], [1.0, 1.0, 0.5])}, tmp_path / "pr.png")
    sweep = plot_sweep([10, 100], {"numpy": [1.0, 30.0]}, tmp_path / "s.png")
    bars = plot_bars({"g": {"a": 1.0, "b": 2.0}}, tmp_path / "b.png", ylabel="ms")
    for path in (pr, sweep, bars):
        assert Image.open(path).format == "PNG"


def test_ema():
    assert np.allclose(ema([3.0] * 10, 0.9), 3.0)  # debiased: no warm-up from zero
    assert ema([0.0, 1.0], 0.0).tolist() == [0.0, 1.0]
    assert 0.0 < ema([0.0, 1.0], 0.5)[1] < 1.0
