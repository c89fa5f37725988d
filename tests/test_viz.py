"""Pictures drawn with Pillow: detections, grids, line charts."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from minirccn.viz import PALETTE, draw_detections, ema, nice_ticks, plot_curves, save_grid


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
    path = plot_curves(curves, tmp_path / "c.png", title="losses", smoothing=0.9)
    img = np.asarray(Image.open(path))
    assert img.shape == (480, 800, 3)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert PALETTE[0] in colours and PALETTE[1] in colours  # both curves were drawn
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


@given(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6), st.integers(2, 10))
def test_nice_ticks(lo, span, target):
    hi = lo + span
    ticks = nice_ticks(lo, hi, target)
    assert len(ticks) >= 1 and all(lo - 1e-9 * span <= t <= hi + 1e-9 * span for t in ticks)
    if len(ticks) > 1:
        steps = np.diff(ticks)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
        assert len(ticks) <= 2 * target + 1


def test_ema():
    assert np.allclose(ema([3.0] * 10, 0.9), 3.0)  # debiased: no warm-up from zero
    assert ema([0.0, 1.0], 0.0).tolist() == [0.0, 1.0]
    assert 0.0 < ema([0.0, 1.0], 0.5)[1] < 1.0
