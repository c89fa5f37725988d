"""Image transforms of Faster R-CNN training and inference, boxes kept in step.

Boxes are ``(G, 4)`` float ``(x1, y1, x2, y2)`` in continuous pixel coordinates
(pixel column ``c`` covers ``[c, c+1)``), so a flip is ``x' = W - x`` and a
resize multiplies by the size ratio, with no "+1" or "-1" anywhere.

The pipeline, as torchvision's ``GeneralizedRCNNTransform`` runs it::

    image, boxes, scale = resize(image, boxes, min_size, max_size)
    image, boxes = hflip(image, boxes)           # training only, half of the time
    x = normalize(image, mean, std)              # (3, H, W) float32
    batch, sizes = batch_images([x, ...])        # zero-padded to a multiple of 16

Two ways to resample (the config field ``image_resize``): Pillow's bilinear filter on the
uint8 pixels (``"pillow"``, the default; it antialiases when shrinking), or torchvision's
(``"torchvision"``: :func:`torchvision_size` and :func:`bilinear_resize`, torch's
``interpolate(mode="bilinear", align_corners=False)`` of the normalised float image, as
``GeneralizedRCNNTransform`` does after normalising).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_image(image, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: image is empty, shape {image.shape}")
    return image


def _check_boxes(boxes, name: str = "boxes") -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected dtype float32 or float64, got {boxes.dtype}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (G, 4), got {boxes.shape}")
    return boxes


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """The scale of torchvision's rule: shorter side to ``min_size`` unless the longer passes ``max_size``.

    ``scale = min(min_size / min(h, w), max_size / max(h, w))``.
    """
    return min(min_size / min(height, width), max_size / max(height, width))


def torchvision_size(height: int, width: int, min_size: float, max_size: float) -> tuple:
    """The output size of torchvision's resize, computed in its precisions.

    ``scale = min(min_size / min(h, w), max_size / max(h, w))`` in float32, each quotient as
    torch computes a Python number over a float32 tensor: ``min_size * (1 / side)``, both
    products rounded to float32; then ``interpolate`` floors ``side * scale`` in float64:
    ``(floor(h * scale), floor(w * scale))``. (``320 * (1 / 100)`` is 3.1999998 in float32, so
    a 100-pixel side becomes 319 pixels, not 320.)

    Returns:
        ``(new_height, new_width)`` ints >= 1.
    """
    one = np.float32(1)
    lo, hi = np.float32(min(height, width)), np.float32(max(height, width))
    scale = float(min(np.float32(min_size) * (one / lo), np.float32(max_size) * (one / hi)))
    return max(math.floor(float(height) * scale), 1), max(math.floor(float(width) * scale), 1)


def bilinear_source(in_size: int, out_size: int):
    """Source cells and weights of torch's bilinear resampling along one axis (float32).

    ``align_corners=False`` with the scale recomputed from the sizes: output cell ``o`` reads
    the continuous source position ``s = max((in / out) * (o + 0.5) - 0.5, 0)`` (``in / out``
    in float32, the multiply-add rounded once to float32),
    cells ``i0 = floor(s)`` and ``i1 = min(i0 + 1, in - 1)``, with weights ``1 - l`` and
    ``l = s - i0``. Equal sizes copy (``i0 = i1 = o``, ``l = 0``). No antialiasing.

    Returns:
        ``i0 (out,)`` int64, ``i1 (out,)`` int64, ``l0 (out,)`` float32, ``l1 (out,)`` float32.
    """
    o = np.arange(out_size)
    if in_size == out_size:
        zeros = np.zeros(out_size, np.float32)
        return o, o.copy(), zeros + np.float32(1), zeros
    scale = np.float32(in_size) / np.float32(out_size)
    # one rounding to float32 after the multiply-add, as torch's compiled kernel (a fused
    # multiply-add) computes it
    src = (np.float64(scale) * (o + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)  # truncation = floor (src >= 0)
    i1 = i0 + (i0 < in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0, i1, (np.float32(1) - l1).astype(np.float32), l1


def bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's ``interpolate(x, size=(height, width), mode="bilinear", align_corners=False)``.

    ``out[c, y, x] = ly0 * (lx0 * in[c, y0, x0] + lx1 * in[c, y0, x1])
                   + ly1 * (lx0 * in[c, y1, x0] + lx1 * in[c, y1, x1])``
    with the cells and weights of :func:`bilinear_source` per axis, in float32 (torch's
    order of operations; its vectorised loops may round the last bit differently).

    Args:
        x: ``(C, H, W)`` float32.
        height, width: output size.

    Returns:
        ``(C, height, width)`` float32.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (C, H, W), got {x.shape}")
    y0, y1, ly0, ly1 = bilinear_source(x.shape[1], int(height))
    x0, x1, lx0, lx1 = bilinear_source(x.shape[2], int(width))
    rows0, rows1 = x[:, y0], x[:, y1]  # (C, height, W)
    top = lx0 * rows0[:, :, x0] + lx1 * rows0[:, :, x1]
    bottom = lx0 * rows1[:, :, x0] + lx1 * rows1[:, :, x1]
    return np.ascontiguousarray(ly0[:, None] * top + ly1[:, None] * bottom, dtype=np.float32)


def resize(
    image: np.ndarray, boxes: np.ndarray, min_size: float, max_size: float, method: str = "pillow"
):
    """Resize so the shorter side is ``min_size`` (longer side at most ``max_size``), bilinear.

    The output size is ``(floor(h * scale), floor(w * scale))`` as torchvision's
    ``interpolate(scale_factor=scale, recompute_scale_factor=True)`` gives, and
    boxes are multiplied by the actual per-axis ratios ``new_w / w`` and
    ``new_h / h`` (equal to ``scale`` up to the flooring), so they stay on the
    same pixels. Pixels are resampled with Pillow's bilinear filter (which,
    unlike torchvision's, antialiases when shrinking). ``method="torchvision"``: the size of
    :func:`torchvision_size` and the pixels of :func:`bilinear_resize`, rounded back to uint8
    (training batches; inference resizes the float image, :func:`minirccn.detector.base.preprocess_image`).

    Args:
        image: ``(H, W, 3)`` uint8.
        boxes: ``(G, 4)`` float32 or float64.
        min_size, max_size: target sizes in pixels, > 0.
        method: ``"pillow"`` or ``"torchvision"``.

    Returns:
        ``(image, boxes, scale)``: ``(H', W', 3)`` uint8, ``(G, 4)`` same dtype as
        ``boxes``, and ``scale`` a float.
    """
    image = _check_image(image)
    boxes = _check_boxes(boxes)
    if not (min_size > 0 and max_size > 0):
        raise ValueError(f"min_size, max_size: expected positive sizes, got {min_size}, {max_size}")
    if method not in ("pillow", "torchvision"):
        raise ValueError(f"method: expected 'pillow' or 'torchvision', got {method!r}")
    h, w = image.shape[:2]
    scale = resize_scale(h, w, min_size, max_size)
    if method == "torchvision":
        new_h, new_w = torchvision_size(h, w, min_size, max_size)
    else:
        new_h, new_w = max(math.floor(h * scale), 1), max(math.floor(w * scale), 1)
    if (new_h, new_w) == (h, w):
        return image.copy(), boxes.copy(), scale
    if method == "torchvision":
        chw = bilinear_resize(image.transpose(2, 0, 1).astype(np.float32), new_h, new_w)
        resized = np.clip(np.rint(chw), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        resized = np.ascontiguousarray(resized)
    else:
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    ratios = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=boxes.dtype)
    return resized, boxes * ratios, scale


def hflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror left-right: column ``c`` goes to ``W - 1 - c``, a box ``x1' = W - x2``, ``x2' = W - x1``.

    Args:
        image: ``(H, W, 3)`` uint8.
        boxes: ``(G, 4)`` float32 or float64.

    Returns:
        ``(image, boxes)`` of the same shapes and dtypes (new arrays).
    """
    image = _check_image(image)
    boxes = _check_boxes(boxes)
    w = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def random_hflip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    """:func:`hflip` with probability ``p`` (one draw from ``rng``).

    Returns:
        ``(image, boxes, flipped)`` with ``flipped`` a bool.
    """
    if rng.random() < p:
        image, boxes = hflip(image, boxes)
        return image, boxes, True
    return image, boxes, False


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Pixels to network input: ``x[c] = (image[..., c] / 255 - mean[c]) / std[c]``, channels first.

    Args:
        image: ``(H, W, 3)`` uint8.
        mean, std: 3 numbers each, on the 0..1 scale (torchvision's convention).

    Returns:
        ``(3, H, W)`` float32.
    """
    image = _check_image(image)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"mean, std: expected 3 values each, got shapes {mean.shape}, {std.shape}")
    if not np.all(std > 0):
        raise ValueError(f"std: expected positive values, got {std.tolist()}")
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def image_statistics(image: np.ndarray) -> tuple:
    """``(mean, std)``, ``(3,)`` float32 each: the per-channel mean and standard deviation of
    ``image / 255`` (``(H, W, 3)`` uint8) over its pixels, the std at least ``1 / 255`` (a flat
    channel is not blown up)."""
    x = _check_image(image).astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1))
    std = np.maximum(x.std(axis=(0, 1)), 1.0 / 255.0)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize_per_image(image: np.ndarray) -> np.ndarray:
    """:func:`normalize` with the image's own statistics: ``x[c] = (image[..., c] / 255 - m[c])
    / s[c]``, ``(m, s) = image_statistics(image)``; ``(3, H, W)`` float32, each channel of mean
    0 and std 1 (unless flat). Unchanged (up to rounding) by ``a * image + b`` per channel."""
    return normalize(image, *image_statistics(image))


def input_normalize(image: np.ndarray, config) -> np.ndarray:
    """The network input of ``image`` by ``config.image_norm``: :func:`normalize` with
    ``config.image_mean`` / ``config.image_std`` (``"fixed"``) or :func:`normalize_per_image`."""
    if config.image_norm == "per_image":
        return normalize_per_image(image)
    return normalize(image, config.image_mean, config.image_std)


def batch_images(images: list, size_divisible: int = 16):
    """Stack images of different sizes into one zero-padded batch.

    The batch is ``Hmax x Wmax`` with both rounded up to a multiple of
    ``size_divisible``; image ``n`` sits in the top-left corner
    ``batch[n, :, :h, :w]`` (boxes need no shift) and the rest is 0.

    Args:
        images: list of ``N >= 1`` arrays ``(C, h, w)``, one float dtype.
        size_divisible: int >= 1.

    Returns:
        ``(batch, sizes)``: ``(N, C, Hmax, Wmax)`` of the images' dtype, and the
        list of the ``N`` original ``(h, w)``.
    """
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("images: expected a non-empty list of (C, H, W) arrays")
    if int(size_divisible) < 1:
        raise ValueError(f"size_divisible: expected an integer >= 1, got {size_divisible}")
    arrays = [np.asarray(x) for x in images]
    for i, x in enumerate(arrays):
        if x.ndim != 3:
            raise ValueError(f"images[{i}]: expected shape (C, H, W), got {x.shape}")
        if x.shape[0] != arrays[0].shape[0] or x.dtype != arrays[0].dtype:
            raise ValueError(
                f"images[{i}]: channels/dtype {x.shape[0]}/{x.dtype} differ from images[0]'s "
                f"{arrays[0].shape[0]}/{arrays[0].dtype}"
            )
    d = int(size_divisible)
    h_max = -(-max(x.shape[1] for x in arrays) // d) * d
    w_max = -(-max(x.shape[2] for x in arrays) // d) * d
    batch = np.zeros((len(arrays), arrays[0].shape[0], h_max, w_max), dtype=arrays[0].dtype)
    for n, x in enumerate(arrays):
        batch[n, :, : x.shape[1], : x.shape[2]] = x
    return batch, [(int(x.shape[1]), int(x.shape[2])) for x in arrays]
