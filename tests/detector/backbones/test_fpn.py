"""The FPN neck: nearest upsampling (torch's indices, 2x2-sum backward), the top-down
pathway against an independent calculation, float64 gradient checks."""

import numpy as np
import pytest

from minirccn.detector.backbones import fpn
from minirccn.nn import layers
from minirccn.nn.gradcheck import check_layer

# F.interpolate(mode="nearest") source indices, printed by torch 2.14 (in, out) -> indices
TORCH_NEAREST = {
    (3, 5): [0, 0, 1, 1, 2],
    (2, 3): [0, 0, 1],
    (4, 7): [0, 0, 1, 1, 2, 2, 3],
    (1, 3): [0, 0, 0],
    (7, 13): [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6],
    (3, 6): [0, 0, 1, 1, 2, 2],
    (6, 4): [0, 1, 3, 4],
}


@pytest.mark.parametrize("sizes", list(TORCH_NEAREST))
def test_nearest_indices_match_torch(sizes):
    assert fpn.nearest_indices(*sizes).tolist() == TORCH_NEAREST[sizes]


def test_exact_2x_upsampling_copies_2x2_blocks_and_backward_sums_them():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    out, cache = fpn.upsample_nearest_forward(x, (8, 10))
    np.testing.assert_array_equal(out, x.repeat(2, axis=2).repeat(2, axis=3))
    d = np.random.default_rng(1).standard_normal(out.shape)
    dx = fpn.upsample_nearest_backward(d, cache)
    np.testing.assert_allclose(dx, d.reshape(2, 3, 4, 2, 5, 2).sum(axis=(3, 5)), rtol=1e-12)


def test_odd_size_upsampling_backward_counts_each_copy():
    """A 3x2 map to 5x3 (torch: rows 0,0,1,1,2; cols 0,0,1): a gradient of ones gives each
    input cell the number of output cells that copied it."""
    x = np.zeros((1, 1, 3, 2))
    _, cache = fpn.upsample_nearest_forward(x, (5, 3))
    dx = fpn.upsample_nearest_backward(np.ones((1, 1, 5, 3)), cache)
    np.testing.assert_array_equal(dx[0, 0], [[4, 2], [4, 2], [2, 1]])


@pytest.mark.parametrize("size", [(8, 10), (5, 3), (7, 9)])
def test_upsample_gradcheck(size):
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 5))
    err = check_layer(
        lambda a: fpn.upsample_nearest_forward(a, size), fpn.upsample_nearest_backward, [x]
    )
    assert err < 1e-9


def _pyramid_by_hand(params, feats):
    """The top-down pathway written out level by level (exact 2x sizes: np.repeat)."""

    def conv(x, name, pad):
        return layers.conv2d_forward(
            x, params[f"{name}.w"], params[f"{name}.b"], 1, pad, backend="numpy"
        )[0]

    l3 = conv(feats[2], "backbone.fpn.inner2", 0)
    l2 = conv(feats[1], "backbone.fpn.inner1", 0) + l3.repeat(2, 2).repeat(2, 3)
    l1 = conv(feats[0], "backbone.fpn.inner0", 0) + l2.repeat(2, 2).repeat(2, 3)
    p = [
        conv(l1, "backbone.fpn.layer0", 1),
        conv(l2, "backbone.fpn.layer1", 1),
        conv(l3, "backbone.fpn.layer2", 1),
    ]
    return p + [p[2][:, :, ::2, ::2]]  # LastLevelMaxPool: kernel 1, stride 2


def _feats(rng, shapes, n=2):
    return [rng.standard_normal((n, c, h, w)) for c, h, w in shapes]


def test_forward_matches_the_pathway_by_hand():
    rng = np.random.default_rng(3)
    params = fpn.init_fpn((3, 4, 5), 6, rng, dtype=np.float64)
    for k in params:
        if k.endswith(".b"):
            params[k] += rng.standard_normal(params[k].shape)
    feats = _feats(rng, [(3, 8, 12), (4, 4, 6), (5, 2, 3)])
    outs, _ = fpn.fpn_forward(params, feats, backend="numpy")
    ref = _pyramid_by_hand(params, feats)
    assert [o.shape for o in outs] == [(2, 6, 8, 12), (2, 6, 4, 6), (2, 6, 2, 3), (2, 6, 1, 2)]
    for a, b in zip(outs, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert fpn.level_strides((4, 8, 16)) == (4, 8, 16, 32)
    # torchvision's init: uniform in +-sqrt(3 / fan_in)
    w = fpn.init_fpn((64,), 256, np.random.default_rng(0))["backbone.fpn.layer0.w"]
    assert np.abs(w).max() <= np.sqrt(3 / (256 * 9)) and w.std() == pytest.approx(
        np.sqrt(1 / (256 * 9)), rel=0.02
    )


def _check_fpn(params, feats, extra_pool=True, backend="numpy"):
    names = list(params)
    k = len(names)

    def fwd(*arrays):
        p = dict(zip(names, arrays[:k]))
        outs, cache = fpn.fpn_forward(p, list(arrays[k:]), extra_pool, backend=backend)
        return np.concatenate([o.reshape(-1) for o in outs]), (cache, [o.shape for o in outs])

    def bwd(dout, cache):
        cache, shapes = cache
        d, i = [], 0
        for s in shapes:
            d.append(dout[i : i + int(np.prod(s))].reshape(s))
            i += int(np.prod(s))
        dfeats, grads = fpn.fpn_backward(d, cache)
        return tuple(grads[n] for n in names) + tuple(dfeats)

    return check_layer(fwd, bwd, [params[n] for n in names] + feats, max_full=400, n_dirs=4)


@pytest.mark.parametrize(
    "shapes",
    [
        [(3, 8, 8), (4, 4, 4), (2, 2, 2)],  # exact halvings
        [(3, 9, 7), (4, 5, 4), (2, 3, 2)],  # odd sizes: ceil halvings, as a stride-2 conv gives
    ],
    ids=["even", "odd"],
)
def test_fpn_gradcheck_float64(shapes):
    rng = np.random.default_rng(4)
    params = fpn.init_fpn([c for c, _, _ in shapes], 3, rng, dtype=np.float64)
    assert _check_fpn(params, _feats(rng, shapes)) < 1e-7


def test_fpn_backward_without_the_pool_level_and_with_unused_maps():
    rng = np.random.default_rng(5)
    shapes = [(2, 6, 6), (3, 3, 3)]
    params = fpn.init_fpn((2, 3), 3, rng, dtype=np.float64)
    assert _check_fpn(params, _feats(rng, shapes), extra_pool=False) < 1e-7
    outs, cache = fpn.fpn_forward(params, _feats(rng, shapes), backend="numpy")
    # only the pool level used: its gradient goes to the top map, then down the pyramid
    dfeats, grads = fpn.fpn_backward([None, None, np.ones_like(outs[2])], cache)
    assert set(grads) == set(params)
    assert not grads["backbone.fpn.layer0.w"].any() and grads["backbone.fpn.layer1.w"].any()
    assert not dfeats[0].any() and dfeats[1].any()
    with pytest.raises(ValueError, match="dmaps"):
        fpn.fpn_backward([None], cache)


def test_fpn_backends_agree():
    rng = np.random.default_rng(6)
    shapes = [(3, 9, 7), (4, 5, 4), (2, 3, 2)]
    params = fpn.init_fpn((3, 4, 2), 5, rng, dtype=np.float64)
    feats = _feats(rng, shapes)
    res = []
    for be in ("numpy", "numba"):
        outs, cache = fpn.fpn_forward(params, feats, backend=be)
        res.append((outs, fpn.fpn_backward([np.ones_like(o) for o in outs], cache)))
    for a, b in zip(res[0][0], res[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(res[0][1][0], res[1][1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
