"""One convolution over every level of a pyramid: the levels' pixels side by side, one GEMM.

A head with weights shared over the pyramid (RetinaNet's subnets, the FPN's RPN) runs the
same conv on every level. Called level by level (:func:`minirccn.nn.conv.conv2d_forward`
once per level) it makes ``L`` small GEMMs and pays every call's fixed cost (argument checks,
dispatch, buffers, threads) ``L`` times; on RetinaNet's maps (32x32 down to 2x2 for a 128 px
image) that fixed cost is most of the time. Here the levels travel *packed*::

    levels   x_l  (N, C, H_l, W_l)      l = 0 .. L-1
    packed   x    (N, C, P)             P = sum_l H_l * W_l; level l is the pixel range
                                        [o_l, o_l + H_l*W_l), o_l = sum_{k<l} H_k*W_k, row-major

and one call unfolds every level (im2col, each level with its own zero padding: a patch never
reads a neighbouring level), puts the column blocks side by side along the pixel axis and
multiplies them all with the shared weight at once::

    cols  (N, C*kh*kw, Po) = [im2col(x_0) | im2col(x_1) | ... ]      Po = sum_l Ho_l * Wo_l
    out   (N, F, Po)       = W (F, C*kh*kw) @ cols[n] + b            one GEMM per image

The backward is the same three products as one level's, over all the levels at once::

    db      = dout summed over n and every pixel of every level
    dW      = sum_n dout[n] (F, Po) @ cols[n]^T (Po, C*kh*kw)         one GEMM per image
    dcols   = W^T @ dout[n]                                            one GEMM per image
    dx_l    = col2im(dcols[..., level l's columns])                    level by level

Numbers: the forward computes every output pixel as the same dot product as one level's conv
(equal to it up to how BLAS splits a GEMM: in practice the same bits for one level and the same
to rounding for several). ``dW`` and ``db`` are now ONE sum over the pixels of all levels
instead of a sum of per-level sums: the same number up to the order of the additions, so the
gradients of a shared head differ from the per-level path's in the last bits (relative
``~1e-6`` in float32, ``~1e-15`` in float64; tests/nn/test_conv_levels.py). ``dx`` of each level
is the per-level path's ``col2im`` of the same columns.

:func:`conv2d_levels_reference` / :func:`conv2d_levels_backward_reference` are the NumPy
reference; ``kernels/conv_levels.py`` has the CPU kernel (one Numba pass unfolds all the levels
into one reused buffer) and :mod:`minirccn.core.dispatch` says which runs where.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirccn.core import backend as _backend
from minirccn.core.checks import check_shape
from minirccn.core.dispatch import kernel
from minirccn.nn._common import check_grad, conv_output_size, pair, prepare
from minirccn.nn.conv import col2im, im2col

# ----------------------------------------------------------------------------- packing


class Packed(NamedTuple):
    """``L`` maps of one batch and one channel count, their pixels side by side.

    ``data`` ``(N, C, P)``, ``P = sum_l H_l W_l``; ``sizes`` ``((H_0, W_0), ...)``: level ``l``
    is ``data[:, :, o_l : o_l + H_l W_l]`` seen as ``(N, C, H_l, W_l)``.
    """

    data: Any
    sizes: tuple


def offsets(sizes) -> list[int]:
    """``[o_0, ..., o_L]``: where each level starts in the packed pixel axis (``o_L = P``)."""
    out = [0]
    for h, w in sizes:
        out.append(out[-1] + h * w)
    return out


def pack_levels(maps) -> Packed:
    """``[(N, C, H_l, W_l), ...]`` -> :class:`Packed` (a new ``(N, C, P)`` array)."""
    maps = list(maps)
    if not maps:
        raise ValueError("maps: expected at least one level")
    xp = _backend.get_array_module(maps[0])
    n, c = maps[0].shape[:2]
    for i, m in enumerate(maps):
        check_shape(m, f"maps[{i}]", (n, c, None, None))
    data = xp.concatenate([m.reshape(n, c, m.shape[2] * m.shape[3]) for m in maps], axis=2)
    return Packed(data, tuple((int(m.shape[2]), int(m.shape[3])) for m in maps))


def unpack_levels(packed: Packed) -> list:
    """:class:`Packed` -> ``[(N, C, H_l, W_l), ...]`` (views of ``packed.data``)."""
    data, sizes = packed
    n, c = data.shape[:2]
    o = offsets(sizes)
    return [data[:, :, o[i] : o[i + 1]].reshape(n, c, h, w) for i, (h, w) in enumerate(sizes)]


def _out_sizes(sizes, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return tuple(
        (conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)) for h, w in sizes
    )


# ----------------------------------------------------------------------------- reference


def conv2d_levels_reference(x, sizes, w, b, stride, padding, relu):
    """The convolution of every level at once (the NumPy reference).

    Args:
        x: ``(N, C, P)`` packed levels (checked by the caller); sizes: ``((H_l, W_l), ...)``.
        w: ``(F, C, kh, kw)``; b: ``(F,)``; stride, padding: ``(sh, sw)``, ``(ph, pw)``.
        relu: apply ``max(., 0)`` to the output (a ReLU after the conv, in the same call).

    Returns:
        out: ``(N, F, Po)`` packed outputs (level ``l``: ``Ho_l x Wo_l`` pixels) =
            ``W (F, C*kh*kw) @ cols[n] + b`` with ``cols`` the levels' ``im2col`` side by side
            (then ``max(out, 0)`` if ``relu``, as :func:`minirccn.nn.layers.relu_reference`);
        saved: ``(cols (N, C*kh*kw, Po), out)``: with ``relu`` the output itself (the ReLU's
            mask is ``out > 0``: no mask is kept), None without.
    """
    xp = _backend.get_array_module(x)
    f, c, kh, kw = w.shape
    levels = unpack_levels(Packed(x, sizes))
    cols = xp.concatenate([im2col(m, (kh, kw), stride, padding) for m in levels], axis=2)
    out = xp.matmul(w.reshape(f, c * kh * kw), cols)  # (N, F, Po): one GEMM per image
    out += b[None, :, None]
    if not relu:
        return out, (cols, None)
    out = xp.where(out > 0, out, xp.zeros((), dtype=out.dtype))
    return out, (cols, out)


def conv2d_levels_backward_reference(dout, saved, w, sizes, x_shape, stride, padding):
    """Gradients of :func:`conv2d_levels_reference` (the NumPy reference).

    Args:
        dout: ``(N, F, Po)`` (checked by the caller); saved: the forward's ``(cols, out)``;
        w: ``(F, C, kh, kw)``; sizes: the input levels' ``((H_l, W_l), ...)``;
        x_shape: ``(N, C, P)``; stride, padding: pairs.

    Returns:
        dx: ``(N, C, P)`` packed: level ``l`` is ``col2im`` of its columns of ``W^T @ dout[n]``;
        dw: ``(F, C, kh, kw)`` = ``sum_n dout[n] @ cols[n]^T`` (all levels' pixels in one sum);
        db: ``(F,)`` = ``dout`` summed over ``n`` and every pixel of every level;
        where ``dout`` is first zeroed where the ReLU's output ``out`` is not positive (if there
        was a ReLU: its mask is ``out > 0``).
    """
    cols, out = saved
    xp = _backend.get_array_module(cols)
    if out is not None:  # through the ReLU first
        dout = xp.where(out > 0, dout, xp.zeros((), dtype=dout.dtype))
    f, c, kh, kw = w.shape
    n = x_shape[0]
    db = dout.sum(axis=(0, 2))
    dw = xp.zeros((f, c * kh * kw), dtype=w.dtype)
    for i in range(n):  # one GEMM per image over every level's pixels
        dw += dout[i] @ cols[i].T
    dcols = xp.matmul(w.reshape(f, c * kh * kw).T, dout)  # (N, C*kh*kw, Po)
    o_in = offsets(sizes)
    o_out = offsets(_out_sizes(sizes, (kh, kw), stride, padding))
    dx = xp.empty(tuple(x_shape), dtype=dout.dtype)
    for i, (h, wd) in enumerate(sizes):
        d = col2im(dcols[:, :, o_out[i] : o_out[i + 1]], (n, c, h, wd), (kh, kw), stride, padding)
        dx[:, :, o_in[i] : o_in[i + 1]] = d.reshape(n, c, h * wd)
    return dx, dw.reshape(w.shape), db


# ----------------------------------------------------------------------------- layer


class Conv2dLevelsCache(NamedTuple):
    """What :func:`conv2d_levels_backward` needs."""

    saved: Any  # (the backend's choice: the columns for numpy and cuda, the packed input for
    # numba; the ReLU's output (N, F, Po), whose > 0 is its mask, or None without a ReLU)
    w: Any  # (F, C, kh, kw)
    sizes: tuple  # the input levels' ((H_l, W_l), ...)
    x_shape: tuple  # (N, C, P)
    stride: tuple
    padding: tuple
    listed: bool  # the forward was given a list of maps (the backward returns one)
    backend: str


def conv2d_levels_forward(x, w, b, stride=1, padding=0, *, relu=False, backend=None):
    """The same 2-D convolution on every level of a pyramid, in one call (and its ReLU).

    Args:
        x: the levels: a list of ``(N, C, H_l, W_l)`` maps (same ``N``, ``C``, dtype), or a
            :class:`Packed` ``(N, C, P)``.
        w: ``(F, C, kh, kw)`` the shared weights; b: ``(F,)``.
        stride, padding: an int or a pair, as :func:`minirccn.nn.conv.conv2d_forward`.
        relu: follow the conv by a ReLU in the same call (``max(out, 0)``; the backward then
            zeroes the gradient where the output was not positive, as
            :func:`minirccn.nn.layers.relu_backward`, reading the mask off the output the cache
            keeps: no mask stored; the output must not be modified in place before the
            backward): one pass over the output fewer each way.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None.

    Returns:
        out: what ``conv2d_forward(x_l, w, b, stride, padding)`` gives for every level ``l``
            (see the module docstring for the rounding), as a list of ``(N, F, Ho_l, Wo_l)``
            maps if ``x`` was a list, else a :class:`Packed` ``(N, F, Po)``;
        cache: :class:`Conv2dLevelsCache`.
    """
    listed = not isinstance(x, Packed)
    packed = pack_levels(x) if listed else x
    backend, _, (data, w, b) = prepare(backend, {"x": packed.data, "w": w, "b": b})
    check_shape(data, "x", (None, None, None))
    n, c, p = data.shape
    sizes = tuple((int(h), int(wd)) for h, wd in packed.sizes)
    if offsets(sizes)[-1] != p:
        raise ValueError(f"x: {p} pixels, but the sizes {sizes} add up to {offsets(sizes)[-1]}")
    check_shape(w, "w", (None, c, None, None))
    f, _, kh, kw = w.shape
    check_shape(b, "b", (f,))
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    if min(stride) < 1 or min(padding) < 0 or kh < 1 or kw < 1:
        raise ValueError(
            f"expected stride >= 1, padding >= 0, a kernel of at least 1x1; got stride "
            f"{stride}, padding {padding}, kernel {kh}x{kw}"
        )
    out_sizes = _out_sizes(sizes, (kh, kw), stride, padding)
    for (h, wd), (ho, wo) in zip(sizes, out_sizes):
        if ho < 1 or wo < 1:
            raise ValueError(
                f"x: a level of {h}x{wd} is smaller than the {kh}x{kw} kernel with padding "
                f"{padding}"
            )
    out, saved = kernel("conv2d_levels", backend)(data, sizes, w, b, stride, padding, bool(relu))
    cache = Conv2dLevelsCache(saved, w, sizes, (n, c, p), stride, padding, listed, backend)
    out = Packed(out, out_sizes)
    return (unpack_levels(out) if listed else out), cache


def conv2d_levels_backward(dout, cache: Conv2dLevelsCache):
    """Gradients of :func:`conv2d_levels_forward`.

    Args:
        dout: the gradient of the output, as the forward returned it (a list of
            ``(N, F, Ho_l, Wo_l)`` or a :class:`Packed` ``(N, F, Po)``).
        cache: from the forward.

    Returns:
        dx: the input's gradient, as the forward was given it (a list or a :class:`Packed`);
        dw: ``(F, C, kh, kw)``: the sum over all levels' pixels (one GEMM, see the module
            docstring for the rounding); db: ``(F,)``.
    """
    saved, w, sizes, x_shape, stride, padding, listed, backend = cache
    xp = _backend.get_array_module(w)
    f, _, kh, kw = w.shape
    out_sizes = _out_sizes(sizes, (kh, kw), stride, padding)
    if listed:
        dout = Packed(
            xp.concatenate(
                [
                    check_grad(d, f"dout[{i}]", (x_shape[0], f, *s), w.dtype, xp).reshape(
                        x_shape[0], f, s[0] * s[1]
                    )
                    for i, (d, s) in enumerate(zip(dout, out_sizes, strict=True))
                ],
                axis=2,
            ),
            out_sizes,
        )
    elif tuple(dout.sizes) != out_sizes:
        raise ValueError(f"dout: levels {tuple(dout.sizes)}, expected {out_sizes}")
    d = check_grad(dout.data, "dout", (x_shape[0], f, offsets(out_sizes)[-1]), w.dtype, xp)
    dx, dw, db = kernel("conv2d_levels_backward", backend)(
        xp.ascontiguousarray(d), saved, w, sizes, x_shape, stride, padding
    )
    dx = Packed(dx, sizes)
    return (unpack_levels(dx) if listed else dx), dw, db
