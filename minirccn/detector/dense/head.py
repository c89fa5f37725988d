"""The RetinaNet head: a class subnet and a box subnet, shared over the pyramid levels.

RetinaNet (Lin et al. 2017, Sec. 4) puts two small fully convolutional networks on
every feature map ("level") of the pyramid; the *same* weights run on every level::

    level l: features (N, C, H_l, W_l)
      class subnet:  4 x (3x3 conv -> Ch, ReLU)  ->  3x3 conv -> A * Kc   "head.cls.*"
      box subnet:    4 x (3x3 conv -> Ch, ReLU)  ->  3x3 conv -> A * 4    "head.box.*"

``A`` anchors per location, ``Kc = K - 1`` object classes (the paper's ``K``: a
sigmoid per class, no background column; background is "every class says no").
Channel ``a * Kc + c`` of the class output is the logit "anchor ``a`` holds an
object of class ``c + 1``"; channel ``4a + j`` of the box output is delta ``j``
(dx, dy, dw, dh) of anchor ``a``. Both are reordered to the anchors' order
(location-major, then anchor, as :func:`minirccn.detector.anchors.generate_anchors`)
and the levels are concatenated: ``(N, M, Kc)`` and ``(N, M, 4)`` with
``M = sum_l H_l * W_l * A``.

Initialisation (paper Sec. 4.1, torchvision): every conv weight ~ N(0, 0.01^2), biases 0,
except the last class conv's bias ``b = -log((1 - pi) / pi)`` with ``pi = 0.01``, so
that at the start every anchor scores ``sigmoid(b) = pi`` for every class: the ~100,000
background anchors then add only a small focal loss instead of swamping the first steps.

Losses (torchvision's ``RetinaNetHead.compute_loss``), per image, then averaged over the
``N`` images, with ``P`` the image's number of positive anchors:

* ``classification`` = ``sigmoid_focal_loss(logits[valid], onehot[valid], "sum") / max(1, P)``
  over every anchor that is not ignored (no sampling); ``onehot`` is all zeros for a
  negative anchor and has a single 1 at its ground truth's class for a positive one;
* ``bbox_regression`` = ``L1(deltas[pos], targets[pos], "sum") / max(1, P)`` (torchvision's
  default ``_loss_type = "l1"``; box coder weights (1, 1, 1, 1)).

The backward runs the same layers in reverse for every level and *sums* the weight
gradients over the levels (the weights are shared).

Two ways to run the levels, the same arithmetic:

* ``batched=True`` (the default): the levels travel packed side by side, ``(N, C, P)`` with
  ``P = sum_l H_l W_l`` (:mod:`minirccn.nn.conv_levels`), and every conv is ONE call over all
  the levels (one im2col pass, one GEMM; the ReLU in the same call): 10 conv calls a
  forward instead of ``10 L`` conv and ``8 L`` ReLU calls. The packed pixels are level after level, row-major within a level, so
  the anchor order of every level concatenated is one transpose of the packed output.
  The weight gradients are then one sum over all the levels' pixels instead of a sum of
  per-level sums: the same numbers up to the order of the additions (last bits; float32
  relative ~1e-6). With one level both paths compute the same products.
* ``batched=False``: level after level (:func:`_subnet_forward`), each conv on one map, the
  weight gradients added level by level: the specification the tests compare with.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minirccn.core.backend import get_array_module
from minirccn.nn import layers, losses
from minirccn.nn.conv_levels import (
    Packed,
    conv2d_levels_backward,
    conv2d_levels_forward,
    pack_levels,
    unpack_levels,
)

LOSS_NAMES = ("classification", "bbox_regression")
SUBNETS = ("cls", "box")
HIDDEN_INITS = ("normal", "he")


def prior_bias(prior_probability: float = 0.01) -> float:
    """The class conv's bias ``b = -log((1 - pi) / pi)``: ``sigmoid(b) = pi`` (-4.595 for 0.01)."""
    pi = float(prior_probability)
    if not 0 < pi < 1:
        raise ValueError(f"prior_probability: expected a number in (0, 1), got {pi!r}")
    return -math.log((1 - pi) / pi)


def init_retinanet_head(
    in_channels: int,
    channels: int,
    num_anchors: int,
    num_classes: int,
    rng: np.random.Generator,
    *,
    num_convs: int = 4,
    prior_probability: float = 0.01,
    hidden_init: str = "normal",
    dtype="float32",
) -> dict:
    """Parameters of both subnets.

    Args:
        in_channels: ``C``, channels of every pyramid level.
        channels: ``Ch``, width of the subnets' convs (torchvision: ``C``).
        num_anchors: ``A``.
        num_classes: ``Kc``, object classes (no background).
        rng: ``numpy.random.Generator``; weights ~ N(0, 0.01^2).
        num_convs: 3x3 conv + ReLU layers per subnet before the output conv (paper: 4).
        prior_probability: ``pi`` of the class bias (see :func:`prior_bias`).
        hidden_init: ``"normal"``: the hidden convs' weights ~ N(0, 0.01^2) (paper,
            torchvision); ``"he"``: ~ N(0, 2 / fan_in), which keeps the activations' scale
            through the ReLUs. With 0.01 each hidden layer scales its input by about
            ``0.01 * sqrt(fan_in / 2)``: 0.12 at 32 channels, so four layers shrink the
            features ~10^4-fold and the image barely reaches the output convs at first.
            The output convs keep N(0, 0.01^2) either way (so the prior init holds).
        dtype: parameter dtype.

    Returns:
        dict name -> array: ``head.{cls,box}.conv{i}.w`` ``(Ch, C or Ch, 3, 3)`` and ``.b``
        ``(Ch,)`` for ``i`` in ``0..num_convs-1``; ``head.cls.out.w`` ``(A*Kc, Ch, 3, 3)``,
        ``head.cls.out.b`` ``(A*Kc,)`` = :func:`prior_bias`; ``head.box.out.w`` ``(4A, Ch, 3, 3)``,
        ``head.box.out.b`` ``(4A,)`` = 0. Drawn in this order: class subnet, then box subnet.
    """
    if num_convs < 0:
        raise ValueError(f"num_convs: expected >= 0, got {num_convs}")
    if hidden_init not in HIDDEN_INITS:
        raise ValueError(
            f"hidden_init: expected one of {', '.join(HIDDEN_INITS)}, got {hidden_init!r}"
        )

    def normal(*shape, std=0.01):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def hidden(*shape):
        fan_in = shape[1] * shape[2] * shape[3]
        return normal(*shape, std=math.sqrt(2.0 / fan_in) if hidden_init == "he" else 0.01)

    params = {}
    for name, outputs, bias in (
        ("cls", num_anchors * num_classes, prior_bias(prior_probability)),
        ("box", num_anchors * 4, 0.0),
    ):
        c = in_channels
        for i in range(num_convs):
            params[f"head.{name}.conv{i}.w"] = hidden(channels, c, 3, 3)
            params[f"head.{name}.conv{i}.b"] = np.zeros(channels, dtype)
            c = channels
        params[f"head.{name}.out.w"] = normal(outputs, c, 3, 3)
        params[f"head.{name}.out.b"] = np.full(outputs, bias, dtype)
    return params


def num_convs_of(params: dict) -> int:
    """How many 3x3 conv + ReLU layers the subnets of ``params`` have."""
    n = 0
    while f"head.cls.conv{n}.w" in params:
        n += 1
    return n


def to_anchor_order(x, k: int):
    """``(N, A*k, H, W)`` conv output -> ``(N, H*W*A, k)``: location-major, then anchor."""
    n, ak, h, w = x.shape
    a = ak // k
    return x.reshape(n, a, k, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, k)


def from_anchor_order(g, k: int, h: int, w: int):
    """Inverse of :func:`to_anchor_order`: ``(N, H*W*A, k)`` -> ``(N, A*k, H, W)`` (contiguous)."""
    xp = get_array_module(g)
    n, m, _ = g.shape
    a = m // (h * w)
    g = g.reshape(n, h, w, a, k).transpose(0, 3, 4, 1, 2).reshape(n, a * k, h, w)
    return xp.ascontiguousarray(g)


class SubnetCache(NamedTuple):
    """One subnet on one level (or on all, packed): the conv caches in forward order (each
    hidden layer's ReLU fused into its conv), and the map size."""

    convs: tuple  # the hidden layers' conv caches (conv + ReLU, fused), forward order
    out: object  # conv cache of the output conv
    size: tuple  # (H, W) of the level; batched: ((H_0, W_0), ...) of every level


class RetinaNetHeadCache(NamedTuple):
    """What :func:`retinanet_head_backward` needs."""

    cls: tuple  # SubnetCache per level (batched: one SubnetCache for all the levels)
    box: tuple  # SubnetCache per level (batched: one)
    num_classes: int  # Kc
    batched: bool = False


def _subnet_forward(params, name, x, backend):
    """Hidden convs + ReLUs (each pair one fused layer), then the output conv, of subnet
    ``name`` on one level."""
    caches = []
    t = x
    for i in range(num_convs_of(params)):
        t, cc = layers.conv2d_forward(
            t,
            params[f"head.{name}.conv{i}.w"],
            params[f"head.{name}.conv{i}.b"],
            1,
            1,
            relu=True,
            backend=backend,
        )
        caches.append(cc)
    out, oc = layers.conv2d_forward(
        t, params[f"head.{name}.out.w"], params[f"head.{name}.out.b"], 1, 1, backend=backend
    )
    return out, SubnetCache(tuple(caches), oc, tuple(x.shape[2:]))


def _subnet_backward(name, dout, cache: SubnetCache, grads: dict):
    """Backward of :func:`_subnet_forward`; adds the weight gradients into ``grads``."""

    def add(key, g):
        grads[key] = grads[key] + g if key in grads else g

    dt, dw, db = layers.conv2d_backward(dout, cache.out)
    add(f"head.{name}.out.w", dw)
    add(f"head.{name}.out.b", db)
    for i in reversed(range(len(cache.convs))):
        dt, dw, db = layers.conv2d_backward(dt, cache.convs[i])  # its ReLU, then its conv
        add(f"head.{name}.conv{i}.w", dw)
        add(f"head.{name}.conv{i}.b", db)
    return dt


def _subnet_forward_levels(params, name, x: Packed, backend):
    """:func:`_subnet_forward` on every level at once: ``x`` packed ``(N, C, P)``; each conv
    and its ReLU are one call over all the levels. Returns the packed output and its cache
    (``convs``: the hidden layers' conv caches, each holding its ReLU's output)."""
    caches = []
    t = x
    for i in range(num_convs_of(params)):
        t, cc = conv2d_levels_forward(
            t,
            params[f"head.{name}.conv{i}.w"],
            params[f"head.{name}.conv{i}.b"],
            1,
            1,
            relu=True,
            backend=backend,
        )
        caches.append(cc)
    out, oc = conv2d_levels_forward(
        t, params[f"head.{name}.out.w"], params[f"head.{name}.out.b"], 1, 1, backend=backend
    )
    return out.data, SubnetCache(tuple(caches), oc, x.sizes)


def _subnet_backward_levels(name, dout, cache: SubnetCache, grads: dict):
    """Backward of :func:`_subnet_forward_levels` (``dout`` packed ``(N, F, P)``); sets the
    weight gradients (already summed over the levels) in ``grads``; returns ``dx`` packed."""
    dt, grads[f"head.{name}.out.w"], grads[f"head.{name}.out.b"] = conv2d_levels_backward(
        Packed(dout, cache.size), cache.out
    )
    for i in reversed(range(len(cache.convs))):  # each through its ReLU, then its conv
        dt, grads[f"head.{name}.conv{i}.w"], grads[f"head.{name}.conv{i}.b"] = (
            conv2d_levels_backward(dt, cache.convs[i])
        )
    return dt.data


def packed_to_anchor_order(x, k: int):
    """``(N, A*k, P)`` packed conv output -> ``(N, P*A, k)``: :func:`to_anchor_order` of every
    level, concatenated (the packed pixels are level after level, row-major: one transpose)."""
    n, ak, p = x.shape
    a = ak // k
    return x.reshape(n, a, k, p).transpose(0, 3, 1, 2).reshape(n, p * a, k)


def packed_from_anchor_order(g, k: int, p: int):
    """Inverse of :func:`packed_to_anchor_order`: ``(N, P*A, k)`` -> ``(N, A*k, P)``
    (contiguous)."""
    xp = get_array_module(g)
    n, m, _ = g.shape
    a = m // p
    return xp.ascontiguousarray(g.reshape(n, p, a, k).transpose(0, 2, 3, 1).reshape(n, a * k, p))


def retinanet_head_forward(params: dict, features, backend=None, *, batched: bool = True):
    """Class logits and box deltas of every anchor of every level.

    Args:
        params: from :func:`init_retinanet_head`.
        features: a list of ``L`` levels ``(N, C, H_l, W_l)`` (or one array: a single level).
        backend: backend of the convolutions.
        batched: every conv one call over all the levels (see the module docstring), or
            level by level (the specification).

    Returns:
        logits: ``(N, M, Kc)``, ``M = sum_l H_l W_l A``, levels in order, anchor order within.
        deltas: ``(N, M, 4)``.
        cache: :class:`RetinaNetHeadCache`.
    """
    if not isinstance(features, (list, tuple)):
        features = [features]
    xp = get_array_module(features[0])
    kc = params["head.cls.out.w"].shape[0] // (params["head.box.out.w"].shape[0] // 4)
    if batched:
        x = pack_levels(features)
        c, cc = _subnet_forward_levels(params, "cls", x, backend)
        b, bc = _subnet_forward_levels(params, "box", x, backend)
        return (
            packed_to_anchor_order(c, kc),
            packed_to_anchor_order(b, 4),
            RetinaNetHeadCache(cc, bc, kc, batched=True),
        )
    logits, deltas, cls_caches, box_caches = [], [], [], []
    for x in features:
        c, cc = _subnet_forward(params, "cls", x, backend)
        b, bc = _subnet_forward(params, "box", x, backend)
        logits.append(to_anchor_order(c, kc))
        deltas.append(to_anchor_order(b, 4))
        cls_caches.append(cc)
        box_caches.append(bc)
    return (
        xp.concatenate(logits, axis=1),
        xp.concatenate(deltas, axis=1),
        RetinaNetHeadCache(tuple(cls_caches), tuple(box_caches), kc),
    )


def retinanet_head_backward(dlogits, ddeltas, cache: RetinaNetHeadCache):
    """Backward of :func:`retinanet_head_forward`.

    Args:
        dlogits: ``(N, M, Kc)``; ddeltas: ``(N, M, 4)``.
        cache: from the forward.

    Returns:
        dfeatures: list of ``L`` gradients ``(N, C, H_l, W_l)``, one per level (each level
            feeds both subnets, so its gradient is the sum of the two).
        grads: dict with the head's parameter names; each the sum over the levels.
    """
    grads: dict = {}
    if cache.batched:
        sizes = cache.cls.size
        p = sum(h * w for h, w in sizes)
        dc = packed_from_anchor_order(dlogits, cache.num_classes, p)
        db = packed_from_anchor_order(ddeltas, 4, p)
        dx = _subnet_backward_levels("cls", dc, cache.cls, grads)
        dx = dx + _subnet_backward_levels("box", db, cache.box, grads)
        xp = get_array_module(dx)
        return [xp.ascontiguousarray(d) for d in unpack_levels(Packed(dx, sizes))], grads
    dfeatures = []
    start = 0
    for cc, bc in zip(cache.cls, cache.box):
        h, w = cc.size
        a = cache.cls[0].out.w.shape[0] // cache.num_classes
        m = h * w * a
        dc = from_anchor_order(dlogits[:, start : start + m], cache.num_classes, h, w)
        db = from_anchor_order(ddeltas[:, start : start + m], 4, h, w)
        start += m
        dx = _subnet_backward("cls", dc, cc, grads) + _subnet_backward("box", db, bc, grads)
        dfeatures.append(dx)
    return dfeatures, grads


def retinanet_losses(
    logits, deltas, labels, box_targets, *, alpha=0.25, gamma=2.0, backend=None
):
    """The two RetinaNet losses of a batch and their gradients (torchvision's normalisation).

    Args:
        logits: ``(N, M, Kc)`` class logits.
        deltas: ``(N, M, 4)`` box deltas.
        labels: ``(N, M)`` int64 per anchor: ``c >= 1`` positive of class ``c``, ``0``
            negative (background), ``-1`` ignored.
        box_targets: ``(N, M, 4)`` encoded targets (used where ``labels >= 1``).
        alpha, gamma: of :func:`minirccn.nn.losses.sigmoid_focal_loss`.
        backend: of the focal loss (the ``labeled_focal_loss`` op: the reference, or one
            Numba pass over each image's anchors with the same numbers); None:
            inferred from ``logits``.

    Returns:
        classification, bbox_regression: Python floats (see the module docstring);
        dlogits ``(N, M, Kc)``, ddeltas ``(N, M, 4)``: their gradients.

    For image ``i`` with ``P_i`` positives: the focal loss summed over the non-ignored
    anchors' ``Kc`` outputs (target 1 only at column ``label - 1`` of a positive) and the
    L1 loss summed over the positives' 4 deltas, both divided by ``max(1, P_i)``; the
    batch loss is the mean of the images' losses.
    """
    xp = get_array_module(logits)
    n = logits.shape[0]
    labels = xp.asarray(labels)
    box_targets = xp.asarray(box_targets)
    dlogits = xp.empty_like(logits)
    ddeltas = xp.zeros_like(deltas)
    total_cls = total_box = 0.0
    for i in range(n):
        lab = labels[i]
        pos = xp.nonzero(lab >= 1)[0]
        norm = max(1, int(pos.size))
        loss, d = losses.labeled_focal_loss(logits[i], lab, alpha, gamma, backend=backend)
        total_cls += loss / norm
        dlogits[i] = d / (norm * n)
        if pos.size:
            loss, d = losses.smooth_l1(deltas[i][pos], box_targets[i][pos], beta=0.0)
            total_box += loss / norm
            ddeltas[i][pos] = d / (norm * n)
    return total_cls / n, total_box / n, dlogits, ddeltas
