"""Selective search: features against loops, the merge order on hand-built regions, whole runs
on constructed images."""

import numpy as np
import pytest

from minirccn.proposals.segmentation import gaussian_kernel
from minirccn.proposals.selective_search import (
    COLOUR_BINS,
    MODES,
    SelectiveSearch,
    adjacent_pairs,
    colour_histograms,
    convert_colour,
    hierarchical_grouping,
    oriented_gradients,
    region_boxes,
    region_features,
    selective_search,
    similarity,
    srgb_to_lab,
    strategies,
    texture_histograms,
)

# ----------------------------------------------------------------------------- a hand-built layout
#   A A B B
#   A A B B        A: 4 px, B: 4 px, C: 8 px; every pair touches
#   C C C C
#   C C C C
LABELS = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])


def layout(colours):
    img = np.zeros((4, 4, 3))
    for k, c in enumerate(colours):
        img[LABELS == k] = c
    return img


RED, BLUE = (200.0, 0.0, 0.0), (0.0, 0.0, 200.0)


def test_colour_merges_the_same_colour_first():
    regions = region_features(layout([RED, BLUE, RED]), LABELS)
    h = hierarchical_grouping(regions, ("colour",))
    # A and C share their colour (intersection 1); B shares only the empty green bin (1/3)
    assert h.merges.tolist() == [[0, 2], [1, 3]]
    np.testing.assert_allclose(h.similarities, [1.0, 1.0 / 3.0])
    assert h.boxes.tolist() == [
        [0, 0, 2, 2],
        [2, 0, 4, 2],
        [0, 2, 4, 4],
        [0, 0, 4, 4],
        [0, 0, 4, 4],
    ]


def test_size_and_fill_merge_a_and_b_first():
    regions = region_features(layout([RED, BLUE, RED]), LABELS)
    # size: 1 - (4 + 4) / 16 = 0.5 (A, B) beats 1 - 12 / 16 = 0.25 (A, C), whatever the colours
    h = hierarchical_grouping(regions, ("size",))
    assert h.merges[0].tolist() == [0, 1] and h.similarities[0] == 0.5
    # fill: A u B fills its box exactly (1.0); A u C leaves 4 of 16 pixels (0.75)
    h = hierarchical_grouping(regions, ("fill",))
    assert h.merges[0].tolist() == [0, 1] and h.similarities[0] == 1.0
    s = similarity(*regions[:4], np.array([0, 0, 1]), np.array([1, 2, 2]), 16.0, ("fill",))
    assert s.tolist() == [1.0, 0.75, 0.75]
    # summed: colour + size: (A, C) 1 + 0.25 = 1.25 beats (A, B) 1/3 + 0.5
    h = hierarchical_grouping(regions, ("colour", "size"))
    assert h.merges[0].tolist() == [0, 2]
    np.testing.assert_allclose(h.similarities[0], 1.25)


def test_equal_similarities_merge_smaller_ids_first():
    regions = region_features(layout([RED, RED, RED]), LABELS)
    h = hierarchical_grouping(regions, ("colour",))
    assert h.merges.tolist() == [[0, 1], [2, 3]]


def test_merged_histograms_are_those_of_the_union():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
    regions = region_features(img, LABELS)
    union = LABELS.copy()
    union[union == 2] = 0  # A u C as one region (id 0), B keeps id 1
    merged = region_features(img, union)
    wa, wc = regions.size[0], regions.size[2]
    np.testing.assert_allclose(
        (wa * regions.colour[0] + wc * regions.colour[2]) / (wa + wc), merged.colour[0]
    )
    np.testing.assert_allclose(
        (wa * regions.texture[0] + wc * regions.texture[2]) / (wa + wc), merged.texture[0]
    )


def test_adjacency_is_eight_neighbour():
    # regions 0 and 3 touch only at a corner
    labels = np.array([[0, 1], [2, 3]])
    assert adjacent_pairs(labels).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    labels = np.array([[0, 0, 1], [2, 2, 1]])
    assert adjacent_pairs(labels).tolist() == [[0, 1], [0, 2], [1, 2]]


def test_region_boxes_exclusive_end():
    labels = np.array([[0, 1, 1], [0, 0, 2]])
    assert region_boxes(labels, 3).tolist() == [[0, 0, 2, 2], [1, 0, 3, 1], [2, 1, 3, 2]]


# ----------------------------------------------------------------------------- features vs loops


def test_colour_histograms_against_a_loop():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(5, 6, 3))
    img[0, 0] = 255.0  # the top value lands in the last bin
    labels = rng.integers(0, 3, size=(5, 6))
    got = colour_histograms(img, labels, 3)
    expected = np.zeros((3, 3 * COLOUR_BINS))
    for y in range(5):
        for x in range(6):
            for c in range(3):
                expected[labels[y, x], c * COLOUR_BINS + int(img[y, x, c] * 25 // 256)] += 1
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected)
    assert (255 * 25 // 256) == 24


def test_oriented_gradients_of_a_ramp():
    sigma = 1.0
    g = gaussian_kernel(sigma)
    r = len(g) // 2
    slope = float((np.arange(-r, r + 1) ** 2 * g).sum() / sigma**2)  # discrete derivative gain
    img = np.tile(3.0 * np.arange(20.0), (12, 1))[:, :, None]  # I = 3 x
    resp = oriented_gradients(img, sigma)[4:8, 6:14, 0]  # away from the edges
    np.testing.assert_allclose(resp[..., 0], 3 * slope)  # along +x
    np.testing.assert_allclose(resp[..., 1], 3 * slope * np.cos(np.pi / 4))
    np.testing.assert_allclose(resp[..., 2], 0, atol=1e-12)  # along +y: nothing
    np.testing.assert_allclose(resp[..., 4], 0, atol=1e-12)  # along -x: rectified away


def test_texture_histograms_against_a_loop():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, size=(6, 7, 3))
    labels = rng.integers(0, 4, size=(6, 7))
    resp = oriented_gradients(img)
    got = texture_histograms(img, labels, 4)
    expected = np.zeros((4, 240))
    for c in range(3):
        top = resp[:, :, c, :].max()
        for y in range(6):
            for x in range(7):
                for o in range(8):
                    b = min(int(resp[y, x, c, o] / top * 10), 9)
                    expected[labels[y, x], (c * 8 + o) * 10 + b] += 1
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected)
    flat = texture_histograms(np.full((3, 3, 1), 9.0), np.zeros((3, 3), np.int64), 1)
    assert flat.shape == (1, 80) and flat[0, ::10].tolist() == [1 / 8] * 8  # all in bin 0


def test_colour_spaces():
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8)
    lab = srgb_to_lab(px)
    np.testing.assert_allclose(lab[0, 0], [255, 128, 128], atol=0.02)
    np.testing.assert_allclose(lab[0, 1], [0, 128, 128], atol=1e-9)
    np.testing.assert_allclose(lab[0, 2], [53.24 * 2.55, 128 + 80.09, 128 + 67.20], atol=0.05)
    hsv = convert_colour(px, "hsv")
    assert hsv[0, 2].tolist() == [0, 255, 255]
    rgi = convert_colour(px, "rgi")
    np.testing.assert_allclose(rgi[0], [[85, 85, 255], [85, 85, 0], [255, 0, 85]])
    assert convert_colour(px, "i").shape == (1, 3, 1) and convert_colour(px, "h").shape == (1, 3, 1)
    for space in ("rgb", "hsv", "lab", "rgi", "h", "i"):
        v = convert_colour(
            np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8), space
        )
        assert v.min() >= 0 and v.max() <= 255
    with pytest.raises(ValueError, match="colour space"):
        convert_colour(px, "xyz")


# ----------------------------------------------------------------------------- whole runs


def two_regions(h=16, w=24, split=12):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :split] = (230, 50, 50)  # red, intensity 110
    img[:, split:] = (20, 40, 160)  # blue, intensity 73: apart in every colour space
    return img


@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_two_flat_regions_give_their_boxes_and_the_image(mode):
    boxes = selective_search(two_regions(), mode)
    assert boxes.dtype == np.float32
    assert sorted(boxes.tolist()) == [[0, 0, 12, 16], [0, 0, 24, 16], [12, 0, 24, 16]]


def test_level_ranking_puts_the_whole_image_first_and_is_deterministic():
    img = two_regions()
    img[2:6, 3:9] = (250, 250, 250)  # a white patch inside the red half (24 px)
    boxes = selective_search(img, "fast", ranking="level", min_size=10)
    assert boxes[0].tolist() == [0, 0, 24, 16]
    assert [3, 2, 9, 6] in boxes.tolist()
    a, va = selective_search(img, "fast", min_size=10, return_levels=True)
    b = selective_search(img, "fast", min_size=10)
    assert (a == b).all() and (np.diff(va) >= 0).all()
    assert len(np.unique(a, axis=0)) == len(a)  # deduplicated
    assert (selective_search(img, "fast", min_size=10, max_proposals=2) == a[:2]).all()
    c = selective_search(img, "fast", min_size=10, seed=1)
    assert sorted(c.tolist()) == sorted(a.tolist())  # another seed: same boxes, maybe reordered


def test_selective_search_object_and_modes():
    ss = SelectiveSearch("fast", min_size=10, max_proposals=5)
    img = two_regions()
    assert (ss(img) == selective_search(img, "fast", min_size=10, max_proposals=5)).all()
    assert ss.params()["mode"] == "fast" and ss.params()["min_size"] == 10
    assert len(strategies("fast")) == 8 and len(strategies("quality")) == 80
    assert MODES["fast"]["ks"] == (50, 100)
    with pytest.raises(ValueError, match="mode"):
        SelectiveSearch("slow")
    with pytest.raises(ValueError, match="image"):
        selective_search(np.zeros((4, 4)), "fast")
    with pytest.raises(ValueError, match="measures"):
        hierarchical_grouping(region_features(layout([RED, BLUE, RED]), LABELS), ("shape",))


def test_numpy_backend_gives_the_same_boxes():
    img = two_regions()
    img[9:14, 15:20] = (240, 240, 40)
    a = selective_search(img, "fast", min_size=10, backend="numpy")
    b = selective_search(img, "fast", min_size=10, backend="numba")
    assert (a == b).all()
