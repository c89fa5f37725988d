"""Transforms keep boxes on the same pixels: flip, resize, normalise, batch."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    batch_images,
    hflip,
    normalize,
    random_hflip,
    resize,
    resize_scale,
)


def _image_with_rect(h, w, box):
    """A black image with a white rectangle exactly covering ``box`` (integer continuous coords)."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return img


def _tight(img, thresh=127):
    mask = (img > thresh).any(axis=2)
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


@st.composite
def image_and_boxes(draw, dtype=None):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    n = draw(st.integers(0, 5))
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(dtype)
    if n and draw(st.booleans()):
        boxes[0] = [0, 0, w, h]  # the whole image
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, boxes


@given(image_and_boxes(), st.booleans())
def test_flip_twice_is_identity(case, on_grid):
    image, boxes = case
    if on_grid:  # coordinates on a 1/16 pixel grid: W - (W - x) is exact
        boxes = np.round(boxes * 16) / 16
    img2, boxes2 = hflip(*hflip(image, boxes))
    assert np.array_equal(img2, image) and boxes2.dtype == boxes.dtype
    if on_grid:
        assert np.array_equal(boxes2, boxes)
    else:  # otherwise up to one rounding of W - x in the boxes' dtype
        np.testing.assert_allclose(
            boxes2, boxes, rtol=0, atol=2 * np.finfo(boxes.dtype).eps * image.shape[1]
        )


@given(image_and_boxes())
def test_flip_keeps_boxes_inside_and_ordered(case):
    image, boxes = case
    flipped_img, flipped = hflip(image, boxes)
    w = image.shape[1]
    assert flipped_img.shape == image.shape
    assert np.all(flipped[:, 0] >= 0) and np.all(flipped[:, 2] <= w)
    assert np.all(flipped[:, 2] >= flipped[:, 0])
    assert np.array_equal(flipped[:, [1, 3]], boxes[:, [1, 3]])
    # widths are preserved exactly enough
    np.testing.assert_allclose(flipped[:, 2] - flipped[:, 0], boxes[:, 2] - boxes[:, 0], atol=1e-4)


@pytest.mark.parametrize("box", [(0, 0, 1, 1), (3, 2, 9, 7), (10, 0, 17, 12), (16, 11, 17, 12)])
def test_flip_moves_box_with_pixels(box):
    img = _image_with_rect(12, 17, box)
    flipped_img, flipped = hflip(img, np.array([box], np.float32))
    assert flipped[0].tolist() == _tight(flipped_img)


def test_random_hflip_uses_the_generator():
    img, boxes = _image_with_rect(8, 8, (0, 0, 2, 2)), np.array([[0, 0, 2, 2]], np.float32)
    flips = [random_hflip(img, boxes, np.random.default_rng(s))[2] for s in range(40)]
    assert 5 < sum(flips) < 35
    assert flips == [random_hflip(img, boxes, np.random.default_rng(s))[2] for s in range(40)]
    _out_img, out_boxes, flipped = random_hflip(img, boxes, np.random.default_rng(0), p=1.0)
    assert flipped and out_boxes[0].tolist() == [6, 0, 8, 2]


@pytest.mark.parametrize(
    "hw, min_size, max_size, want_hw, want_scale",
    [
        ((375, 500), 600, 1000, (600, 800), 1.6),
        ((100, 1000), 600, 1000, (100, 1000), 1.0),  # capped by the longer side
        ((128, 128), 256, 512, (256, 256), 2.0),
        ((200, 100), 50, 1000, (100, 50), 0.5),  # shrinking
        ((7, 3), 5, 8, (8, 3), 8 / 7),  # floor of h * scale
    ],
)
def test_resize_size_rule(hw, min_size, max_size, want_hw, want_scale):
    image = np.zeros(hw + (3,), np.uint8)
    out, boxes, scale = resize(image, np.zeros((0, 4), np.float32), min_size, max_size)
    assert out.shape[:2] == want_hw and out.dtype == np.uint8
    assert scale == pytest.approx(want_scale) and scale == resize_scale(*hw, min_size, max_size)
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32


@pytest.mark.parametrize(
    "box, min_size", [((8, 8, 24, 16), 64), ((0, 0, 32, 20), 80), ((10, 4, 31, 19), 16)]
)
def test_resize_scales_boxes_with_the_pixels(box, min_size):
    img = _image_with_rect(20, 32, box)
    out, boxes, _scale = resize(img, np.array([box], np.float64), min_size, 1000)
    assert boxes.dtype == np.float64
    np.testing.assert_allclose(
        boxes[0], np.array(box) * np.array([out.shape[1] / 32, out.shape[0] / 20] * 2)
    )
    # bilinear edges are half-bright: the box sits on the rectangle within a pixel
    np.testing.assert_allclose(boxes[0], _tight(out), atol=1.0)


def test_resize_same_size_returns_copies():
    img = np.ones((16, 20, 3), np.uint8)
    boxes = np.array([[1, 2, 3, 4]], np.float32)
    out, out_boxes, scale = resize(img, boxes, 16, 100)
    assert scale == 1.0 and np.array_equal(out, img) and out is not img and out_boxes is not boxes


def test_normalize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalize(img, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (3, 5, 7) and x.dtype == np.float32 and x.flags.c_contiguous
    for c in range(3):
        np.testing.assert_allclose(
            x[c], (img[:, :, c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(
        normalize(img, (0, 0, 0), (1, 1, 1))[1], np.float32(img[:, :, 1]) / np.float32(255)
    )


def test_batch_images_pads_with_zeros():
    a = np.ones((3, 20, 33), np.float32)
    b = np.full((3, 35, 10), 2.0, np.float32)
    batch, sizes = batch_images([a, b], size_divisible=16)
    assert batch.shape == (2, 3, 48, 48) and batch.dtype == np.float32
    assert sizes == [(20, 33), (35, 10)]
    assert (batch[0, :, :20, :33] == 1).all() and batch[0].sum() == a.sum()
    assert (batch[1, :, :35, :10] == 2).all() and batch[1].sum() == b.sum()
    batch1, _ = batch_images([a], size_divisible=1)
    assert batch1.shape == (1, 3, 20, 33)
    batch64, _ = batch_images([a.astype(np.float64)], size_divisible=32)
    assert batch64.shape == (1, 3, 32, 64) and batch64.dtype == np.float64


def test_bad_inputs_name_the_argument():
    img = np.zeros((4, 4, 3), np.uint8)
    boxes = np.zeros((0, 4), np.float32)
    with pytest.raises(TypeError, match="image"):
        hflip(img.astype(np.float32), boxes)
    with pytest.raises(ValueError, match="image"):
        hflip(np.zeros((4, 4), np.uint8), boxes)
    with pytest.raises(ValueError, match="image"):
        resize(np.zeros((0, 4, 3), np.uint8), boxes, 8, 8)
    with pytest.raises(TypeError, match="boxes"):
        hflip(img, np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="boxes"):
        hflip(img, np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="min_size"):
        resize(img, boxes, 0, 8)
    with pytest.raises(ValueError, match="std"):
        normalize(img, (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="mean"):
        normalize(img, (0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="images"):
        batch_images([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        batch_images([np.zeros((3, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32)])
    with pytest.raises(ValueError, match="size_divisible"):
        batch_images([np.zeros((3, 2, 2), np.float32)], size_divisible=0)


def _per_image_by_hand(image):
    """The per-image normalisation in plain Python loops over channels (float64)."""
    out = np.empty((3,) + image.shape[:2])
    for c in range(3):
        v = image[..., c].astype(np.float64) / 255.0
        m = sum(v.ravel()) / v.size
        s = max((sum((v.ravel() - m) ** 2) / v.size) ** 0.5, 1.0 / 255.0)
        out[c] = (v - m) / s
    return out


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_normalize_per_image_matches_the_formula(h, w, seed):
    from minirccn.data.transforms import normalize_per_image

    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    x = normalize_per_image(image)
    assert x.shape == (3, h, w) and x.dtype == np.float32
    np.testing.assert_allclose(x, _per_image_by_hand(image), rtol=1e-5, atol=1e-5)


def test_normalize_per_image_flat_and_affine():
    from minirccn.data.transforms import image_statistics, normalize_per_image

    # a flat channel: the std floor (1/255) keeps it at 0, no inf or nan
    flat = np.full((4, 5, 3), 77, np.uint8)
    assert np.all(normalize_per_image(flat) == 0)
    assert np.allclose(image_statistics(flat)[1], 1 / 255)
    # exactly at the floor: values 0 and 2 alternate -> std 1/255, used as is
    two = np.zeros((2, 2, 3), np.uint8)
    two[0, :] = 2
    assert np.allclose(image_statistics(two)[1], 1 / 255)
    np.testing.assert_allclose(normalize_per_image(two)[:, 0], 1.0, rtol=1e-6)
    # another site's brightness and contrast (a x + b per channel, no clipping): the same input
    rng = np.random.default_rng(3)
    image = rng.integers(20, 100, (16, 12, 3)).astype(np.uint8)
    brighter = (image.astype(np.int64) * 2 + np.array([10, 30, 50])).astype(np.uint8)
    np.testing.assert_allclose(normalize_per_image(brighter), normalize_per_image(image), atol=1e-5)


def test_input_normalize_follows_the_config():
    from minirccn.config import preset
    from minirccn.data.transforms import input_normalize, normalize, normalize_per_image

    image = np.random.default_rng(1).integers(0, 256, (6, 7, 3)).astype(np.uint8)
    cfg = preset("tiny")
    assert cfg.image_norm == "fixed"  # the default: torchvision's fixed mean and std
    np.testing.assert_array_equal(input_normalize(image, cfg), normalize(image, cfg.image_mean, cfg.image_std))
    per = cfg.replace(image_norm="per_image")
    np.testing.assert_array_equal(input_normalize(image, per), normalize_per_image(image))


def test_training_batch_and_inference_use_the_per_image_normalisation():
    from minirccn.config import preset
    from minirccn.data import load_dataset
    from minirccn.data.batching import load_batch
    from minirccn.data.transforms import normalize_per_image, resize
    from minirccn.detector.base import preprocess_image

    cfg = preset("tiny", image_norm="per_image", min_size=96, max_size=96)
    ds = load_dataset("shapes", "train")
    batch = load_batch(ds, [0], cfg, None, "numpy", 16)
    x = np.asarray(batch.images)[0]
    image = ds[0]["image"]
    resized = resize(image, np.zeros((0, 4), np.float32), 96, 96)[0]
    want = normalize_per_image(resized)
    np.testing.assert_array_equal(x[:, : want.shape[1], : want.shape[2]], want)
    got, _ = preprocess_image(cfg, image)
    np.testing.assert_array_equal(got, want)
