"""Felzenszwalb-Huttenlocher: the rule on hand-made graphs, and the Numba kernel == the reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from minirccn.kernels.segmentation import felzenszwalb_numba

from minirccn.proposals.segmentation import (
    felzenszwalb,
    felzenszwalb_reference,
    gaussian_kernel,
    gaussian_smooth,
    grid_graph,
    relabel,
    segment_graph_reference,
)

BACKENDS = ["numpy", "numba"]


def test_grid_graph_order_and_weights_2x2():
    img = np.array([[[0.0], [3.0]], [[4.0], [0.0]]])  # (2, 2, 1)
    a, b, w = grid_graph(img)
    # pixel 0: right (1), down (2), down-right (3); pixel 1: down (3), down-left (2); pixel 2: right (3)
    assert a.tolist() == [0, 0, 0, 1, 1, 2]
    assert b.tolist() == [1, 2, 3, 3, 2, 3]
    assert w.tolist() == [3.0, 4.0, 0.0, 3.0, 1.0, 4.0]


def test_grid_graph_edge_count_and_colour_distance():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 5), (5, 1), (3, 4)]:
        a, _, _ = grid_graph(rng.random((h, w, 3)))
        assert len(a) == 4 * h * w - 3 * h - 3 * w + 2
    img = np.zeros((1, 2, 3))
    img[0, 1] = (1.0, 2.0, 2.0)
    assert grid_graph(img)[2].tolist() == [3.0]  # sqrt(1 + 4 + 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_rule_at_the_boundary(backend):
    # 1x2 image [0, 20]: one edge of weight 20 against k / |C| = k (both components size 1)
    img = np.array([[0.0, 20.0]])
    assert felzenszwalb(img, k=20.0, sigma=0, min_size=0, backend=backend).tolist() == [[0, 0]]
    assert felzenszwalb(img, k=19.999, sigma=0, min_size=0, backend=backend).tolist() == [[0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_internal_difference_grows_with_the_merged_edge(backend):
    # 1x3 [0, 10, 100]: edge 0-1 (w=10) merges (10 <= 20); the merged threshold is
    # Int + k/|C| = 10 + 20/2 = 20 < 90, so pixel 2 stays apart; k=160: 10 + 160/2 = 90 exactly
    img = np.array([[0.0, 10.0, 100.0]])
    assert felzenszwalb(img, k=20, sigma=0, min_size=0, backend=backend).tolist() == [[0, 0, 1]]
    assert felzenszwalb(img, k=160, sigma=0, min_size=0, backend=backend).tolist() == [[0, 0, 0]]
    assert felzenszwalb(img, k=159.9, sigma=0, min_size=0, backend=backend).tolist() == [[0, 0, 1]]
    # min_size 2: the single pixel joins its neighbour; min_size 1: it may stay alone
    assert felzenszwalb(img, k=20, sigma=0, min_size=2, backend=backend).tolist() == [[0, 0, 0]]
    assert felzenszwalb(img, k=20, sigma=0, min_size=1, backend=backend).tolist() == [[0, 0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_flat_halves_and_a_constant_image(backend):
    img = np.zeros((10, 14, 3))
    img[:, 7:] = (200.0, 30.0, 90.0)
    for sigma in (0.0, 0.8):
        labels = felzenszwalb(img, k=50, sigma=sigma, backend=backend)
        expected = np.zeros((10, 14), np.int64)
        expected[:, 7:] = 1
        assert (labels == expected).all(), sigma
    assert (felzenszwalb(np.full((6, 5, 3), 7.0), k=1, backend=backend) == 0).all()


def test_default_min_size_is_k():
    img = np.array([[0.0, 10.0, 100.0]])
    assert felzenszwalb(img, k=2, sigma=0, backend="numpy").tolist() == [[0, 0, 0]]  # min size 2


def test_relabel_first_appearance():
    assert relabel(np.array([7, 7, 3, 9, 3, 7])).tolist() == [0, 0, 1, 2, 1, 0]


def test_gaussian_kernel_and_smoothing():
    g = gaussian_kernel(0.8)
    assert len(g) == 2 * 4 + 1 and abs(g.sum() - 1) < 1e-12 and (g == g[::-1]).all()
    assert gaussian_kernel(0).tolist() == [1.0]
    const = np.full((5, 6, 2), 3.25)
    np.testing.assert_allclose(gaussian_smooth(const, 0.8), const, rtol=0, atol=1e-12)
    # one bright pixel spreads as the outer product of the kernel (away from the edges)
    img = np.zeros((11, 11, 1))
    img[5, 5] = 1.0
    np.testing.assert_allclose(gaussian_smooth(img, 0.8)[1:10, 1:10, 0], np.outer(g, g), atol=1e-15)


def test_reference_union_find_on_a_hand_graph():
    # a path 0-1-2-3 with weights 1, 5, 1; k=2: {0,1} (1 <= 2), {2,3}; edge 5 > 1 + 2/2
    roots = segment_graph_reference(
        4, np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([1.0, 5.0, 1.0]), 2.0, 0
    )
    assert relabel(roots).tolist() == [0, 0, 1, 1]


@st.composite
def images(draw):
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    c = draw(st.sampled_from([1, 3]))
    levels = draw(st.sampled_from([2, 4, 256]))  # few levels: many equal weights (ties)
    seed = draw(st.integers(0, 2**31 - 1))
    img = np.random.default_rng(seed).integers(0, levels, size=(h, w, c)).astype(np.float64)
    return img * (255.0 / max(levels - 1, 1))


@settings(max_examples=40)
@given(
    img=images(),
    k=st.sampled_from([0.0, 1.0, 10.0, 50.0, 300.0]),
    min_size=st.sampled_from([0, 1, 3, 10]),
    sigma=st.sampled_from([0.0, 0.5, 0.8]),
)
def test_numba_equals_reference(img, k, min_size, sigma):
    smoothed = gaussian_smooth(img, sigma)
    expected = felzenszwalb_reference(smoothed, k, min_size)
    got = felzenszwalb_numba(smoothed, k, min_size)
    assert got.dtype == np.int64 and got.shape == img.shape[:2]
    assert (got == expected).all()


def test_numba_equals_reference_on_a_shapes_image():
    from minirccn.data import load_dataset

    img = load_dataset("shapes", "test")[0]["image"][:64, :64]
    for k in (50, 100):
        assert (
            felzenszwalb(img, k, backend="numba") == felzenszwalb(img, k, backend="numpy")
        ).all()


def test_bad_input():
    with pytest.raises(ValueError, match="image"):
        felzenszwalb(np.zeros(5))
    with pytest.raises(ValueError, match="k"):
        felzenszwalb(np.zeros((2, 2)), k=-1)
    with pytest.raises(ValueError, match="backend"):
        felzenszwalb(np.zeros((2, 2)), backend="torch")
