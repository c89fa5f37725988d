"""What the test files share: backend and dtype lists, the reference comparison, random boxes.

``from helpers import ...`` works in every test file (pyproject puts ``tests/`` on the path);
the same lists also come as fixtures (``backend``, ``fast_backend``, ``dtype``) from
``conftest.py``.
"""

import numpy as np

from minirccn.config import preset
from minirccn.data import ShapesConfig
from minirccn.data.batching import Batch
from minirccn.nn.gradcheck import directional_grad_check, numerical_grad, rel_error

FLOATS = (np.float32, np.float64)

#: a shapes dataset of a few 64x64 images, for tests that train or evaluate end to end
SHAPES = ShapesConfig(
    image_size=64, min_object_size=8, max_object_size=40, train_size=6, val_size=2, test_size=3
)
#: the tiny preset shrunk to train a few steps on SHAPES in well under a second per step
TINY = dict(
    backbone_stages=((4, 1, True), (8, 1, True), (8, 1, True)),
    min_size=64,
    max_size=64,
    anchor_sizes=(8, 16, 32),
    rpn_channels=8,
    representation_size=16,
    roi_output_size=3,
    box_batch_size_per_image=16,
    rpn_pre_nms_top_n_train=50,
    rpn_post_nms_top_n_train=20,
    rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_test=20,
    warmup_iters=2,
    milestones=(3,),
    lr=0.01,
)
#: a ResNet small enough for finite differences through an FPN: on 32x32 inputs (stem stride
#: 2) its stages give maps of 16, 8, 4, 2 and the pool level 1; batch norm sees >= 8 values
TINY_RESNET_SPEC = dict(
    widths=(3, 4, 4, 4),
    blocks=(1, 1, 1, 1),
    strides=(1, 2, 2, 2),
    stem_channels=3,
    stem_kernel=3,
    stem_stride=2,
    stem_pool="",
)
#: a 16x16-input two-stage detector small enough for finite differences (float64)
SMALL = dict(
    backbone_stages=((4, 1, True), (6, 1, True)),
    min_size=16,
    max_size=16,
    anchor_sizes=(4, 8),
    aspect_ratios=(1.0,),
    rpn_channels=5,
    representation_size=7,
    roi_output_size=2,
    rpn_batch_size_per_image=16,
    box_batch_size_per_image=8,
    rpn_pre_nms_top_n_train=20,
    rpn_post_nms_top_n_train=10,
    rpn_pre_nms_top_n_test=20,
    rpn_post_nms_top_n_test=10,
    rcnn_crop_size=8,
    dtype="float64",
)
#: a 16x16-input one-level RetinaNet small enough for finite differences (float64)
RETINA_SMALL = dict(
    model="retinanet",
    backbone_stages=((4, 1, True), (6, 1, False)),
    min_size=16,
    max_size=16,
    anchor_sizes=(8, 12),
    aspect_ratios=(1.0, 2.0),
    retina_channels=5,
    retina_num_convs=2,
    retina_hidden_init="normal",  # the 0.01 init; tests scale the weights themselves
    dtype="float64",
)
#: a 32x32-input ResNet + FPN small enough for finite differences: with TINY_RESNET_SPEC
#: (registered as "resnet-fpn-test" by :func:`pyramid_config`) the levels are 16, 8, 4, 2
#: and pool 1; per model kind, the fields that differ
PYRAMID_SMALL = dict(
    backbone="resnet-fpn-test",
    fpn_channels=3,
    min_size=32,
    max_size=32,
    anchor_sizes=(4, 8, 16, 32, 64),
    aspect_ratios=(0.5, 1.0),
    dtype="float64",
)
PYRAMID_KINDS = {
    "fasterrcnn": dict(
        rpn_channels=3,
        representation_size=5,
        roi_output_size=2,
        roi_canonical_scale=32,  # 4..32-pixel RoIs spread over all four pooled levels
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=12,
        rpn_pre_nms_top_n_train=20,
        rpn_post_nms_top_n_train=20,
        rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_test=10,
    ),
    "retinanet": dict(retina_anchor_scales=(1.0, 1.5), retina_channels=4, retina_num_convs=2),
}
#: the class names of :func:`small_batch`
NAMES = ["__background__", "a", "b"]
FAST = ("numba", "cuda")  # "cuda" runs in Numba's simulator without a GPU (tiny inputs only)
BACKENDS = ("numpy", *FAST)


def tiny_config(**overrides):
    """The ``tiny`` preset with :data:`TINY` and then ``overrides`` applied."""
    return preset("tiny", **{**TINY, **overrides})


def small_config(**overrides):
    """The ``tiny`` preset with :data:`SMALL` and then ``overrides`` applied."""
    return preset("tiny", **{**SMALL, **overrides})


def retina_config(**overrides):
    """The ``tiny`` preset's RetinaNet with :data:`RETINA_SMALL` and ``overrides`` applied."""
    return preset("tiny", **{**RETINA_SMALL, **overrides})


def pyramid_config(monkeypatch, model="fasterrcnn", **overrides):
    """The ``resnet-fpn-tiny`` preset of ``model`` on :data:`TINY_RESNET_SPEC` (registered for
    the test through ``monkeypatch``) with :data:`PYRAMID_SMALL`, the kind's fields and
    ``overrides``."""
    from minirccn.detector.backbones import resnet

    monkeypatch.setitem(resnet.PRESETS, "resnet-fpn-test", resnet.ResNetSpec(**TINY_RESNET_SPEC))
    fields = {**PYRAMID_SMALL, **PYRAMID_KINDS[model], **overrides}
    return preset("resnet-fpn-tiny", model=model).replace(**fields)


def small_batch(dtype=np.float64, seed=0, empty=False, proposals=False, size=16) -> Batch:
    """Two ``size x size`` random images with three objects of classes 1 and 2 (none if
    ``empty``), and (``proposals``) a few proposals per image."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 3, size, size)).astype(dtype)
    targets = [
        {"boxes": np.array([[1, 2, 9, 8], [6, 6, 15, 14]], dtype), "labels": np.array([1, 2])},
        {"boxes": np.array([[3, 3, 12, 11]], dtype), "labels": np.array([2])},
    ]
    if empty:
        targets = [{"boxes": np.zeros((0, 4), dtype), "labels": np.zeros(0, np.int64)}] * 2
    props = None
    if proposals:
        props = [
            np.array([[0, 0, 10, 9], [5, 5, 16, 15], [2, 1, 8, 9]], dtype),
            np.array([[2, 2, 13, 12], [0, 0, 16, 16]], dtype),
        ]
    return Batch(images, [(size, size)] * 2, targets, props)


def train_forward(net, images, sizes, targets, rng, **options):
    """``net.forward`` on a batch of these arrays: ``(losses, cache, cache.samples)``."""
    losses, cache = net.forward(Batch(images, sizes, targets), rng, **options)
    return losses, cache, cache.samples


def check_detector_gradients(net, batch, full=(), rng=1, tol=1e-5, directions=2, **options):
    """The model's hand-written backward against finite differences of its summed losses
    (float64, numpy backend), with the forward's random choices held fixed (``cache.samples``):
    every tensor of ``full`` entry by entry, every other one along ``directions`` random
    directions. A conv bias followed by batch norm cancels out: its gradient must be 0.

    Returns:
        ``(losses, grads)`` of the first forward.
    """
    losses, cache = net.forward(batch, np.random.default_rng(rng), backend="numpy", **options)
    grads = net.backward(cache)
    fixed = batch._replace(proposals=None)

    def total():
        out, _ = net.forward(fixed, None, backend="numpy", samples=cache.samples, **options)
        return sum(out.values())

    for name in full:
        assert rel_error(grads[name], numerical_grad(total, net.params[name])) < tol, name
    draws = np.random.default_rng(2)
    for name, g in grads.items():
        if name.startswith("backbone.") and name.endswith(".b") and f"{name[:-2]}.bn.gamma" in net.params:
            assert np.abs(g).max() < 1e-12, name
            continue
        err = directional_grad_check(total, net.params[name], g, draws, n_dirs=directions)
        assert err < tol, name
    return losses, grads


def as_np(x):
    """A host NumPy array of ``x`` (CuPy arrays are copied back)."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


def assert_same_bits(got, want):
    """Equal dtype, shape and values (NaN equals NaN), and equal signs of zero."""
    got, want = as_np(got), as_np(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def assert_matches_reference(op, reference, *args, backend, rtol=None, atol=0.0, **kwargs):
    """``op(*args, backend=backend, **kwargs)`` against ``reference(*args, **kwargs)``.

    Every output (each element of a tuple) must have the reference's dtype and shape and
    its values: bit for bit (signs of zero included) when ``rtol`` is None, else to
    ``rtol`` / ``atol``. Returns the op's outputs as host arrays.
    """
    got, want = op(*args, backend=backend, **kwargs), reference(*args, **kwargs)
    pairs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
    out = []
    for g, w in pairs:
        g = as_np(g)
        if rtol is None:
            assert_same_bits(g, w)
        else:
            assert g.dtype == np.asarray(w).dtype and g.shape == np.shape(w)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        out.append(g)
    return tuple(out) if isinstance(want, tuple) else out[0]


def random_boxes(rng, n, size=64.0, lo=2.0, hi=40.0, margin=0.0, dtype=np.float64):
    """``(n, 4)`` boxes with sides uniform in ``[lo, hi)`` and top-left corners uniform in
    ``[-margin, size - side / 2)``: some reach over the image's edges."""
    wh = rng.uniform(lo, hi, size=(n, 2))
    xy = rng.uniform(-margin, size - wh / 2, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def assert_cli_fails(capsys, argv, *names):
    """Run the CLI: exit status 2 and one stderr line, no traceback, naming every one of
    ``names`` (the file, flag or field at fault). Returns that line."""
    from minirccn.app import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minirccn: error: ") and "\n" not in err and "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    return err


def plain_iou(a, b) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes with Python floats (0 when the union is empty):
    the independent calculation the brute-force rules of the tests are written with."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
