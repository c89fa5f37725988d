"""The RPN over pyramid levels and the LevelMapper rule."""

import numpy as np
import pytest

from minirccn import ops
from minirccn.detector.anchors import AnchorGenerator, generate_anchors, multilevel_anchors
from minirccn.detector.roi_heads.poolers import LevelMapper, level_counts
from minirccn.detector.rpn.head import init_rpn, rpn_backward_levels, rpn_forward_levels
from minirccn.detector.rpn.proposal_layer import (
    ProposalCreator,
    level_ids,
    objectness_scores,
    proposals_one_image,
)
from minirccn.nn.gradcheck import check_layer

# ------------------------------------------------------------------------ LevelMapper

# square boxes of these sides -> level, printed by torchvision 0.29's LevelMapper(2, 5)
# for float32 and float64 boxes alike
TV_LEVELS = {
    8.0: 2,
    56.0: 2,
    111.9: 2,
    111.9999: 2,
    112.0: 3,
    112.0001: 3,
    223.99: 3,
    224.0: 4,
    447.0: 4,
    448.0: 5,
    1000.0: 5,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_level_mapper_matches_torchvision_at_the_boundaries(dtype):
    sides = list(TV_LEVELS)
    boxes = np.array([[0, 0, s, s] for s in sides], dtype)
    mapper = LevelMapper(2, 5)
    assert (mapper(boxes) + 2).tolist() == list(TV_LEVELS.values())
    # the rule itself, before clamping: sqrt(area) 112 and 224 sit exactly on k = 3 and 4
    k = mapper.target_levels(np.array([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 8, 8]], dtype))
    assert k.tolist() == [3.0, 4.0, -1.0]  # 4 + log2(8 / 224) = -0.81 -> floor -1 -> clamp 2
    # sqrt of the AREA, not the side: 56 x 224 has sqrt(area) 112 (torchvision: level 3)
    assert (mapper(np.array([[10, 20, 66, 244], [0, 0, 100, 125.44]], dtype)) + 2).tolist() == [
        3,
        3,
    ]


def test_level_mapper_from_strides_and_other_canonical_scales():
    m = LevelMapper.from_strides((4, 8, 16, 32))
    assert (m.k_min, m.k_max) == (2, 5)
    # a canonical scale of 56 (a small-image preset): 28 -> P3 (index 1), 56 -> P4 (index 2)
    m56 = LevelMapper.from_strides((4, 8, 16, 32), canonical_scale=56)
    boxes = np.array([[0, 0, s, s] for s in (8, 27.9, 28, 55.9, 56, 112, 500)], np.float32)
    assert m56(boxes).tolist() == [0, 0, 1, 1, 2, 3, 3]
    assert level_counts(m56(boxes), 4).tolist() == [2, 2, 1, 2]
    with pytest.raises(ValueError, match="strides"):
        LevelMapper.from_strides((4, 12))
    with pytest.raises(ValueError, match="k_min"):
        LevelMapper(5, 2)


# ------------------------------------------------------------------------ anchors, head


def test_multilevel_anchors_are_the_levels_concatenated():
    anchors, counts = multilevel_anchors(
        [(4, 4), (2, 2), (1, 1)], (4, 8, 16), ((8,), (16,), (32,)), (0.5, 1.0, 2.0), offset=0.5
    )
    assert counts == [48, 12, 3] and anchors.shape == (63, 4) and anchors.dtype == np.float32
    np.testing.assert_array_equal(
        anchors[48:60], generate_anchors((2, 2), 8, (16,), (0.5, 1.0, 2.0), offset=0.5)
    )
    # level 2's single cell at (8, 8): ratio 1 gives a 32 x 32 square
    np.testing.assert_array_equal(anchors[61], [-8, -8, 24, 24])
    assert level_ids(counts).tolist() == [0] * 48 + [1] * 12 + [2] * 3
    with pytest.raises(ValueError, match="anchor sizes for each of the 2 levels"):
        multilevel_anchors([(4, 4), (2, 2)], (4, 8), ((8,), (16,), (32,)), (1.0,))
    # the generator: the same anchors, cached per map size, in its dtype
    gen = AnchorGenerator((4, 8, 16), ((8,), (16,), (32,)), (0.5, 1.0, 2.0), 0.5, "float64")
    got, got_counts = gen([(4, 4), (2, 2), (1, 1)])
    assert got.dtype == np.float64 and got_counts == counts and gen.num_anchors == 3
    np.testing.assert_array_equal(got, anchors)
    assert gen([(4, 4), (2, 2), (1, 1)])[0] is got
    # one level with every size: generate_anchors itself
    one = AnchorGenerator((4,), ((8, 16),), (0.5, 1.0))
    np.testing.assert_array_equal(
        one([(3, 5)])[0], generate_anchors((3, 5), 4, (8, 16), (0.5, 1.0))
    )
    assert one.num_anchors == 4


@pytest.mark.parametrize("batched", [True, False])
def test_shared_rpn_head_gradcheck_sums_over_levels(batched):
    rng = np.random.default_rng(0)
    params = {k: v * 30 for k, v in init_rpn(3, 4, 2, rng, dtype=np.float64).items()}
    maps = [rng.standard_normal((2, 3, h, w)) for h, w in ((4, 5), (2, 3), (1, 2))]
    names = list(params)

    def fwd(*arrays):
        p = dict(zip(names, arrays[: len(names)]))
        maps = list(arrays[len(names) :])
        lg, dl, cache = rpn_forward_levels(p, maps, backend="numpy", batched=batched)
        return np.concatenate([lg, dl], axis=2), cache

    def bwd(d, cache):
        dmaps, grads = rpn_backward_levels(d[..., :2], d[..., 2:], cache)
        return tuple(grads[k] for k in names) + tuple(dmaps)

    assert check_layer(fwd, bwd, [params[k] for k in names] + maps, max_full=300) < 1e-7


@pytest.mark.parametrize("logits_per_anchor", [2, 1])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_rpn_head_matches_the_per_level_head(backend, dtype, logits_per_anchor):
    """All the levels in one call per layer (minirccn/nn/conv_levels.py) against the head run
    level by level: the weight gradients are one sum over every level's pixels instead of a
    sum of per-level sums, so equal to rounding (relative 1e-5 float32, 1e-12 float64); one
    level always runs the per-level path (the tiny preset keeps its bits)."""
    from minirccn.detector.rpn.head import LevelsRPNCache, PackedRPNCache
    from minirccn.nn.gradcheck import rel_error

    rng = np.random.default_rng(1)
    init = init_rpn(8, 6, 3, rng, dtype=dtype, logits_per_anchor=logits_per_anchor)
    p = {k: (v * 30).astype(dtype) for k, v in init.items()}  # k = 1: the sigmoid objectness
    sizes = ((16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (3, 5))
    maps = [rng.standard_normal((2, 8, h, w)).astype(dtype) for h, w in sizes]
    lg0, dl0, c0 = rpn_forward_levels(p, maps, backend="numpy", batched=False)
    lg, dl, c = rpn_forward_levels(p, maps, backend=backend)
    assert isinstance(c, PackedRPNCache) and isinstance(c0, LevelsRPNCache)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert lg.shape[-1] == logits_per_anchor
    assert lg.dtype == dtype and rel_error(lg, lg0) < tol and rel_error(dl, dl0) < tol
    d_lg, d_dl = rng.standard_normal(lg.shape).astype(dtype), rng.standard_normal(dl.shape)
    dm0, g0 = rpn_backward_levels(d_lg, d_dl.astype(dtype), c0)
    dm, g = rpn_backward_levels(d_lg, d_dl.astype(dtype), c)
    for m, d, d0 in zip(maps, dm, dm0):
        assert d.shape == m.shape and d.dtype == dtype and rel_error(d, d0) < tol
    assert set(g) == set(g0) == set(p)
    for k in p:
        assert g[k].dtype == dtype and rel_error(g[k], g0[k]) < tol, k
    _, _, one = rpn_forward_levels(p, maps[:1], backend=backend)
    assert isinstance(one, LevelsRPNCache)


# ------------------------------------------------------------------------ proposals


def _by_hand(logits, deltas, anchors, counts, size, pre, post, thresh, min_size):
    """Per level: top-n, decode, clip, min size, NMS; then all levels by score, top post."""
    scores = objectness_scores(logits)
    out, start = [], 0
    for lv, m in enumerate(counts):
        s, d, a = scores[start : start + m], deltas[start : start + m], anchors[start : start + m]
        start += m
        order = np.argsort(-s, kind="stable")[:pre]
        b = ops.clip_boxes(ops.decode_boxes(d[order], a[order], backend="numpy"), size)
        sc = s[order]
        keep = ops.remove_small_boxes(b, min_size, backend="numpy")
        b, sc = b[keep], sc[keep]
        keep = ops.nms(b, sc, thresh, backend="numpy")
        out += [(float(sc[k]), lv, tuple(b[k])) for k in keep]
    out.sort(key=lambda t: -t[0])  # Python's sort is stable: equal scores keep level order
    return out[:post]


@pytest.mark.parametrize("pre,post", [(5, 7), (100, 100), (3, 4)])
def test_proposals_per_level_against_a_loop(pre, post):
    rng = np.random.default_rng(pre)
    anchors, counts = multilevel_anchors(
        [(6, 6), (3, 3), (2, 2)], (4, 8, 16), ((8,), (16,), (32,)), (0.5, 1.0, 2.0)
    )
    m = anchors.shape[0]
    logits = rng.standard_normal((m, 2)).astype(np.float32)
    deltas = (rng.standard_normal((m, 4)) * 0.3).astype(np.float32)
    for backend in ("numpy", "numba"):
        boxes, scores, levels = proposals_one_image(
            logits,
            deltas,
            anchors,
            counts,
            (24, 24),
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_thresh=0.5,
            min_size=1.0,
            backend=backend,
        )
        ref = _by_hand(logits, deltas, anchors, counts, (24, 24), pre, post, 0.5, 1.0)
        assert len(ref) == len(boxes) <= post
        np.testing.assert_allclose(scores, [r[0] for r in ref], rtol=1e-6)
        assert levels.tolist() == [r[1] for r in ref]
        np.testing.assert_allclose(boxes, [r[2] for r in ref], rtol=1e-5, atol=1e-4)
        assert set(levels.tolist()) <= {0, 1, 2} and np.all(np.diff(scores) <= 0)


def test_levels_never_suppress_each_other():
    """Two identical boxes from different levels both survive NMS; on one level they do not."""
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    logits = np.array([[0, 3], [0, 2], [0, 1]], np.float32)
    deltas = np.zeros((3, 4), np.float32)
    boxes, scores, levels = proposals_one_image(
        logits, deltas, anchors, [2, 1], (20, 20), pre_nms_top_n=10, post_nms_top_n=10
    )
    assert levels.tolist() == [0, 1] and len(boxes) == 2
    np.testing.assert_allclose(scores, 1 / (1 + np.exp([-3.0, -1.0])), rtol=1e-6)
    layer = ProposalCreator(pre_nms_top_n=10, post_nms_top_n=1)
    batch = layer(
        np.stack([logits, logits[::-1]]),
        np.stack([deltas, deltas]),
        anchors,
        [2, 1],
        [(20, 20)] * 2,
    )
    # post top-n is over all levels: each image keeps only its best box (level 0, then level 1)
    best = 1 / (1 + np.exp(-3.0))
    assert [len(b) for b, _ in batch] == [1, 1]
    np.testing.assert_allclose([s[0] for _, s in batch], [best, best], rtol=1e-6)
