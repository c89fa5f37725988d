"""Augmentations: the boxes move with the pixels (each transform), colour jitter's formulas."""

import numpy as np
import pytest

from minirccn.config import preset
from minirccn.data import augment

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def scene(h=40, w=56):
    """A grey image with three solid rectangles of distinct colours and their exact boxes."""
    image = np.full((h, w, 3), 128, np.uint8)
    boxes = np.array([[3, 5, 20, 12], [30, 2, 34, 30], [40, 25, 55, 39]], np.float32)
    for (x1, y1, x2, y2), c in zip(boxes.astype(int), COLOURS):
        image[y1:y2, x1:x2] = c
    return image, boxes, np.array([1, 2, 3], np.int64)


def pixel_box(image, colour):
    """The continuous box of the pixels of exactly ``colour`` (None if there are none)."""
    mask = np.all(image == colour, axis=2)
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def assert_boxes_on_pixels(image, boxes, labels):
    for box, label in zip(boxes, labels):
        np.testing.assert_allclose(box, pixel_box(image, COLOURS[label - 1]))


def test_vflip_boxes_follow_pixels():
    image, boxes, labels = scene()
    out, b = augment.vflip(image, boxes)
    assert out.shape == image.shape
    assert_boxes_on_pixels(out, b, labels)
    np.testing.assert_array_equal(augment.vflip(out, b)[0], image)  # an involution


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_rot90_boxes_follow_pixels(k):
    image, boxes, labels = scene()
    out, b = augment.rot90(image, boxes, k)
    assert out.shape == (np.rot90(image, k).shape)
    np.testing.assert_array_equal(out, np.rot90(image, k))
    assert_boxes_on_pixels(out, b, labels)


def test_four_quarter_turns_are_the_identity():
    image, boxes, _ = scene()
    out, b = augment.rot90(*augment.rot90(image, boxes, 3), 1)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(b, boxes)


@pytest.mark.parametrize("factor", [2.0, 3.0])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.25)])
def test_scale_crop_boxes_follow_pixels_clipped_and_dropped(factor, offset):
    image, boxes, labels = scene()
    out, b, lab = augment.scale_crop(image, boxes, labels, factor, offset, min_visible=0.3)
    assert out.shape == image.shape  # cropped back to the input size
    h, w = image.shape[:2]
    y0 = round(offset[0] * (int(h * factor) - h))
    x0 = round(offset[1] * (int(w * factor) - w))
    want = np.clip(boxes * factor - [x0, y0, x0, y0], 0, [w, h, w, h])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * factor**2
    vis = (want[:, 2] - want[:, 0]).clip(0) * (want[:, 3] - want[:, 1]).clip(0)
    kept = vis >= 0.3 * area
    np.testing.assert_array_equal(lab, labels[kept])
    np.testing.assert_allclose(b, want[kept], atol=1e-4)
    # integer factors keep solid colours inside: every kept box is on its pixels (the
    # bilinear resize blends only at the rectangle borders, which lie on whole pixels)
    for box, label in zip(b, lab):
        mask = np.all(out == COLOURS[label - 1], axis=2)
        x1, y1, x2, y2 = box.astype(int)
        assert mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].all()
        assert not mask[:, : max(x1 - 1, 0)].any() and not mask[: max(y1 - 1, 0)].any()


def test_scale_crop_drops_tiny_remnants():
    image, boxes, labels = scene()
    # factor 2 with the window at the bottom right: box 0 (x2=20*2=40 < x0) falls outside
    _, b, lab = augment.scale_crop(image, boxes, labels, 2.0, (1.0, 1.0))
    assert 1 not in lab.tolist()
    assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()


def test_scale_crop_shrinks_without_crop():
    image, boxes, labels = scene()
    out, b, lab = augment.scale_crop(image, boxes, labels, 0.5)
    assert out.shape == (20, 28, 3)
    np.testing.assert_allclose(b, boxes * 0.5)
    np.testing.assert_array_equal(lab, labels)


def test_colour_jitter_formulas_and_pixels_stay_put():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    x = image.astype(np.float64)
    np.testing.assert_array_equal(
        augment.color_jitter(image, brightness=0.5), np.floor(x * 0.5 + 0.5).clip(0, 255)
    )
    grey = x @ [0.299, 0.587, 0.114]
    want = ((x - grey.mean()) * 1.5 + grey.mean() + 0.5).clip(0, 255).astype(np.uint8)
    np.testing.assert_allclose(augment.color_jitter(image, contrast=1.5), want, atol=1)
    want = (grey[..., None] + 0.0 * (x - grey[..., None]) + 0.5).clip(0, 255).astype(np.uint8)
    np.testing.assert_allclose(augment.color_jitter(image, saturation=0.0), want, atol=1)
    # hue: a pure red pixel turned by a third of a turn becomes (nearly) pure green
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    green = augment.color_jitter(red, hue=1 / 3)
    assert green[..., 1].min() > 240 and green[..., 0].max() < 20 and green[..., 2].max() < 20
    # the objects' pixels stay where they were
    img, boxes, labels = scene()
    out = augment.color_jitter(img, 1.2, 0.8, 1.3, 0.05)
    changed = np.any(out != out[0, 0], axis=2)
    assert np.array_equal(changed, np.any(img != img[0, 0], axis=2))


def test_apply_is_a_no_op_that_draws_nothing_when_off():
    cfg = preset("tiny")
    assert not augment.enabled(cfg)
    image, boxes, labels = scene()
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    if augment.enabled(cfg):
        augment.apply(image, boxes, labels, cfg, rng)
    assert rng.bit_generator.state == state


def test_apply_all_keeps_boxes_on_pixels():
    cfg = preset("tiny").replace(vflip=True, rot90=True, scale_jitter=(2.0, 2.0))
    for seed in range(6):
        image, boxes, labels = scene()
        out, b, lab = augment.apply(image, boxes, labels, cfg, np.random.default_rng(seed))
        for box, label in zip(b, lab):
            mask = np.all(out == COLOURS[label - 1], axis=2)
            x1, y1, x2, y2 = box.astype(int)
            assert mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].all()
