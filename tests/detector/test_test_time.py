"""Test-time flip: the mirror of boxes, the merge (against a plain greedy loop written here),
and ``predict`` with ``test_flip`` against its steps done by hand and against mirror symmetry."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import NAMES, plain_iou, random_boxes, retina_config, small_config
from minirccn.app import cli
from minirccn.detector import registry
from minirccn.detector.test_time import merge_detections, mirror_boxes


def greedy_classwise_nms(boxes, scores, labels, thresh):
    """Indices kept: best score first (ties: lower index), a box dropped when a kept box of its
    class overlaps it by IoU > thresh. Written with Python loops, independent of minirccn.ops."""

    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        if all(labels[j] != labels[i] or plain_iou(boxes[i], boxes[j]) <= thresh for j in kept):
            kept.append(i)
    return kept


def test_mirror_boxes_values_and_involution():
    boxes = np.array([[0, 1, 4, 5], [10, 0, 16, 3], [3.5, 2, 3.5, 2]], np.float32)
    np.testing.assert_array_equal(
        mirror_boxes(boxes, 16), [[12, 1, 16, 5], [0, 0, 6, 3], [12.5, 2, 12.5, 2]]
    )
    assert mirror_boxes(boxes, 16).dtype == np.float32
    np.testing.assert_array_equal(mirror_boxes(mirror_boxes(boxes, 16), 16), boxes)
    assert mirror_boxes(np.zeros((0, 4)), 8).shape == (0, 4)


def test_mirror_boxes_matches_flipping_a_mask():
    """A box drawn as a mask, flipped with ``[:, ::-1]``, is the mirrored box."""
    mask = np.zeros((6, 10), bool)
    mask[1:4, 2:5] = True  # the box (2, 1, 5, 4)
    flipped = mask[:, ::-1]
    ys, xs = np.nonzero(flipped)
    want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert mirror_boxes(np.array([[2.0, 1, 5, 4]]), 10).tolist() == [want]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 12), st.integers(0, 12),
       st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), st.integers(1, 30))
def test_merge_matches_a_greedy_loop(seed, n1, n2, thresh, top):
    rng = np.random.default_rng(seed)
    dets = []
    for n in (n1, n2):
        dets.append({
            "boxes": random_boxes(rng, n, dtype=np.float32),
            # few distinct scores: ties across the two passes happen
            "scores": rng.choice(np.float32([0.2, 0.5, 0.9]), n),
            "labels": rng.integers(1, 3, n),
        })
    got = merge_detections(dets, thresh, top)
    boxes = np.concatenate([d["boxes"] for d in dets])
    scores = np.concatenate([d["scores"] for d in dets])
    labels = np.concatenate([d["labels"] for d in dets])
    keep = greedy_classwise_nms(boxes, scores, labels, thresh)[:top]
    np.testing.assert_array_equal(got["boxes"], boxes[keep].reshape(-1, 4))
    np.testing.assert_array_equal(got["scores"], scores[keep])
    np.testing.assert_array_equal(got["labels"], labels[keep])


def test_merge_at_the_threshold_keeps_both():
    """IoU exactly at ``nms_thresh`` does not suppress (``IoU > thresh`` does)."""
    a = {"boxes": np.array([[0, 0, 4, 4.0]]), "scores": np.array([0.9]), "labels": np.array([1])}
    b = {"boxes": np.array([[0, 0, 4, 2.0]]), "scores": np.array([0.8]), "labels": np.array([1])}
    assert len(merge_detections([a, b], 0.5, 10)["scores"]) == 2  # IoU 8 / 16 = 0.5
    assert len(merge_detections([a, b], 0.49, 10)["scores"]) == 1
    b["labels"] = np.array([2])  # another class never suppresses
    assert len(merge_detections([a, b], 0.0, 10)["scores"]) == 2


CONFIGS = {
    "fasterrcnn": lambda **kw: small_config(dtype="float32", box_score_thresh=0.0, **kw),
    "retinanet": lambda **kw: retina_config(dtype="float32", retina_score_thresh=0.0, **kw),
}


def model(kind, **fields):
    cfg = CONFIGS[kind](**fields)
    return registry.model_class(cfg.model)(cfg, NAMES, rng=np.random.default_rng(3))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_predict_with_test_flip_is_its_steps_done_by_hand(kind):
    """Two ``detect`` calls (the input, its mirror), mirror boxes mapped back, a greedy merge,
    boxes divided by the resize scale and clipped: the numbers ``predict`` gives."""
    net = model(kind, test_flip=True)
    image = np.random.default_rng(0).integers(0, 255, size=(20, 26, 3), dtype=np.uint8)
    got = net.predict(image, backend="numpy")
    x, scale = net.preprocess(image)
    h, w = x.shape[1:]

    def run(inp):
        d = net.detect(inp[None], [(h, w)], backend="numpy")[0]
        return d["boxes"], d["scores"], d["labels"]

    b1, s1, l1 = run(x)
    b2, s2, l2 = run(np.ascontiguousarray(x[:, :, ::-1]))
    b2 = np.stack([w - b2[:, 2], b2[:, 1], w - b2[:, 0], b2[:, 3]], axis=1)
    boxes, scores, labels = np.concatenate([b1, b2]), np.concatenate([s1, s2]), np.concatenate([l1, l2])
    keep = greedy_classwise_nms(boxes, scores, labels, net.postprocess.nms_thresh)
    keep = keep[: net.postprocess.detections_per_img]
    assert len(s1) > 0 and len(s2) > 0 and max(keep) >= len(s1)  # the mirror pass adds boxes
    want = np.clip(boxes[keep] / np.float32(scale), 0, [26, 20, 26, 20])
    np.testing.assert_allclose(got["boxes"], want, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got["scores"], scores[keep])
    np.testing.assert_array_equal(got["labels"], labels[keep])
    assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int64


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_predict_with_test_flip_is_mirror_symmetric(kind):
    """With the flip, an image and its mirror image give mirrored detections (without it they
    need not: the network is not symmetric)."""
    net = model(kind, test_flip=True)
    image = np.random.default_rng(1).integers(0, 255, size=(24, 30, 3), dtype=np.uint8)
    a = net.predict(image, backend="numpy")
    b = net.predict(np.ascontiguousarray(image[:, ::-1]), backend="numpy")
    assert len(a["scores"]) > 0
    np.testing.assert_array_equal(a["scores"], b["scores"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    np.testing.assert_allclose(mirror_boxes(b["boxes"], 30), a["boxes"], atol=1e-4)


def test_test_flip_off_is_one_pass_and_backends_agree():
    net = model("fasterrcnn")
    image = np.random.default_rng(2).integers(0, 255, size=(20, 26, 3), dtype=np.uint8)
    calls = []
    detect = net.detect
    net.detect = lambda *a, **k: calls.append(1) or detect(*a, **k)
    net.predict(image, backend="numpy")
    assert len(calls) == 1
    flip = model("fasterrcnn", test_flip=True)
    a = flip.predict(image, backend="numpy")
    b = flip.predict(image, backend="numba")
    np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)


def test_default_is_off():
    assert small_config().test_flip is False and retina_config().test_flip is False


def test_detect_and_eval_flag_turns_it_on(tmp_path, monkeypatch):
    """``--test-flip`` reaches the loaded model's config (detect and eval)."""
    seen = []
    from minirccn.app import predict as P

    real = P.load_checkpoint

    def spy(path):
        model, state = real(path)
        real_predict = model.predict
        model.predict = lambda *a, **k: seen.append(model.config.test_flip) or real_predict(*a, **k)
        return model, state

    monkeypatch.setattr(P, "load_checkpoint", spy)
    ckpt = tmp_path / "run"
    assert cli.main(["train", "--iters", "1", "--no-progress", "--out", str(ckpt),
                     "--set", "min_size=64", "--set", "max_size=64"]) == 0
    image = tmp_path / "im.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    for flag in ([], ["--test-flip"]):
        assert cli.main(["detect", "--checkpoint", str(ckpt / "checkpoint.npz"), str(image),
                         "--out", str(tmp_path / f"o{len(flag)}"), *flag]) == 0
        assert cli.main(["eval", "--checkpoint", str(ckpt / "checkpoint.npz"), "--limit", "1",
                         "--json", *flag]) == 0
    assert seen == [False, False, True, True]
