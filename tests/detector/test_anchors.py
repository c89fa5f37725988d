"""Anchors against torchvision's AnchorGenerator.

The expected arrays below were computed by hand with torchvision 0.29.2's
``AnchorGenerator`` (image size / feature size giving the stride) and are
recorded here, so the suite never imports torch.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirccn.detector.anchors import anchors_inside, base_anchors, generate_anchors

VGG_SIZES, VGG_RATIOS = (128, 256, 512), (0.5, 1.0, 2.0)


def test_vgg16_224_gives_1764_anchors_like_torchvision():
    anchors = generate_anchors((14, 14), 16, VGG_SIZES, VGG_RATIOS)
    assert anchors.shape == (1764, 4) and anchors.dtype == np.float32
    # ratio-major: ratio 0.5 with sizes 128, 256, 512, then ratio 1, then ratio 2
    np.testing.assert_array_equal(
        anchors[:9],
        [
            [-91, -45, 91, 45],
            [-181, -91, 181, 91],
            [-362, -181, 362, 181],
            [-64, -64, 64, 64],
            [-128, -128, 128, 128],
            [-256, -256, 256, 256],
            [-45, -91, 45, 91],
            [-91, -181, 91, 181],
            [-181, -362, 181, 362],
        ],
    )
    # location-major: the next cell is (0, 1), 16 pixels to the right
    np.testing.assert_array_equal(anchors[9:11], [[-75, -45, 107, 45], [-165, -91, 197, 91]])
    np.testing.assert_array_equal(
        anchors[-1], [27, -154, 389, 570]
    )  # cell (13, 13), ratio 2, size 512


def test_rounding_is_half_to_even_like_torch_round():
    # sizes 1, 3, 5 at ratio 1: halves 0.5, 1.5, 2.5 round to 0, 2, 2 (not 1, 2, 3)
    anchors = generate_anchors((2, 2), 16, (1, 3, 5), (1.0,))
    np.testing.assert_array_equal(
        anchors,
        [
            [0, 0, 0, 0],
            [-2, -2, 2, 2],
            [-2, -2, 2, 2],
            [16, 0, 16, 0],
            [14, -2, 18, 2],
            [14, -2, 18, 2],
            [0, 16, 0, 16],
            [-2, 14, 2, 18],
            [-2, 14, 2, 18],
            [16, 16, 16, 16],
            [14, 14, 18, 18],
            [14, 14, 18, 18],
        ],
    )


def test_non_square_map_and_odd_ratios():
    anchors = generate_anchors((3, 4), 16, (32,), VGG_RATIOS)
    assert anchors.shape == (3 * 4 * 3, 4)
    np.testing.assert_array_equal(
        anchors[:3], [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    )
    np.testing.assert_array_equal(
        anchors[-3:], [[25, 21, 71, 43], [32, 16, 64, 48], [37, 9, 59, 55]]
    )
    np.testing.assert_array_equal(
        base_anchors((7, 10), (0.7, 1.3)),
        [[-4, -3, 4, 3], [-6, -4, 6, 4], [-3, -4, 3, 4], [-4, -6, 4, 6]],
    )
    np.testing.assert_array_equal(
        base_anchors((32, 64), VGG_RATIOS),
        [
            [-23, -11, 23, 11],
            [-45, -23, 45, 23],
            [-16, -16, 16, 16],
            [-32, -32, 32, 32],
            [-11, -23, 11, 23],
            [-23, -45, 23, 45],
        ],
    )


def test_offset_half_centres_the_anchors_on_cells():
    anchors = generate_anchors((2, 3), 16, (32,), (1.0,), offset=0.5)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_array_equal(centres, [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]])


def test_default_offset_is_torchvisions_grid():
    """``generate_anchors`` without ``offset`` puts the first anchor's centre at (0, 0)."""
    anchors = generate_anchors((2, 3), 16, (32,), (1.0,))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_array_equal(centres, [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]])


def test_detector_anchors_use_the_configs_offset():
    """The detector's default config centres anchors on cells (offset 0.5), and the model uses it."""
    from minirccn.config import FasterRCNNConfig, preset
    from minirccn.detector.models.faster_rcnn import FasterRCNN

    assert FasterRCNNConfig().anchor_offset == 0.5
    cfg = preset("tiny")
    model = FasterRCNN(cfg, ["__background__", "a"])
    anchors, _ = model.anchor_generator([(2, 3)])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    (s,) = model.backbone.strides
    np.testing.assert_array_equal(centres[0], [s * cfg.anchor_offset] * 2)


def test_stride_pair_and_int_feature_size():
    anchors = generate_anchors(2, (8, 32), (16,), (1.0,))
    np.testing.assert_array_equal(
        anchors, [[-8, -8, 8, 8], [24, -8, 40, 8], [-8, 0, 8, 16], [24, 0, 40, 16]]
    )


def test_empty_map():
    anchors = generate_anchors((0, 5), 16, VGG_SIZES, VGG_RATIOS)
    assert anchors.shape == (0, 4) and anchors.dtype == np.float32


@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    stride=st.integers(1, 32),
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=3),
    ratios=st.lists(st.sampled_from([0.25, 0.5, 0.7, 1.0, 1.3, 2.0, 3.0]), min_size=1, max_size=3),
    offset=st.sampled_from([0.0, 0.5]),
)
def test_layout_matches_the_rule(h, w, stride, sizes, ratios, offset):
    anchors = generate_anchors((h, w), stride, sizes, ratios, offset)
    a = len(sizes) * len(ratios)
    assert anchors.shape == (h * w * a, 4) and anchors.dtype == np.float32
    grid = anchors.reshape(h, w, a, 4)
    base = base_anchors(sizes, ratios)
    for i, j in [(0, 0), (h - 1, w - 1), (h // 2, w - 1)]:
        shift = np.float32([(offset + j) * stride, (offset + i) * stride] * 2)
        np.testing.assert_array_equal(grid[i, j], base + shift)
    # base anchors: width/height ratio follows the aspect ratio, centred on 0
    np.testing.assert_array_equal(base[:, :2], -base[:, 2:])
    w_half = np.sqrt(1 / np.float32(ratios))[:, None] * np.float32(sizes)[None, :] / 2
    assert np.all(np.abs(base[:, 2] - w_half.reshape(-1)) <= 0.5)


def test_anchors_inside():
    anchors = np.array(
        [[0, 0, 64, 48], [-1, 0, 10, 10], [0, 0, 65, 10], [0, 0, 10, 49], [-3, -3, 66, 50]],
        np.float32,
    )
    np.testing.assert_array_equal(
        anchors_inside(anchors, (48, 64)), [True, False, False, False, False]
    )
    np.testing.assert_array_equal(anchors_inside(anchors, (48, 64), allowed_border=3), [True] * 5)
    assert anchors_inside(np.zeros((0, 4), np.float32), (48, 64)).shape == (0,)


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (
            lambda: generate_anchors((14, 14, 2), 16, VGG_SIZES, VGG_RATIOS),
            ValueError,
            "feature_size",
        ),
        (
            lambda: generate_anchors((14.5, 14), 16, VGG_SIZES, VGG_RATIOS),
            TypeError,
            "feature_size",
        ),
        (lambda: generate_anchors(-1, 16, VGG_SIZES, VGG_RATIOS), ValueError, "feature_size"),
        (lambda: generate_anchors(14, 0, VGG_SIZES, VGG_RATIOS), ValueError, "stride"),
        (lambda: generate_anchors(14, 16, (), VGG_RATIOS), ValueError, "sizes"),
        (lambda: generate_anchors(14, 16, (128, -1), VGG_RATIOS), ValueError, "sizes"),
        (lambda: generate_anchors(14, 16, VGG_SIZES, (0.0,)), ValueError, "aspect_ratios"),
        (lambda: generate_anchors(14, 16, VGG_SIZES, ("a",)), TypeError, "aspect_ratios"),
        (lambda: generate_anchors(14, 16, VGG_SIZES, VGG_RATIOS, offset="x"), TypeError, "offset"),
        (lambda: anchors_inside(np.zeros((2, 3), np.float32), (10, 10)), ValueError, "anchors"),
        (
            lambda: anchors_inside(np.zeros((2, 4), np.float32), (10, 10, 3)),
            ValueError,
            "image_size",
        ),
        (
            lambda: anchors_inside(np.zeros((2, 4), np.float32), (10, 10), -1),
            ValueError,
            "allowed_border",
        ),
    ],
)
def test_bad_arguments_are_named(call, exc, name):
    with pytest.raises(exc, match=name):
        call()
