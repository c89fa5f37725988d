"""Training batches: which images each SGD step sees, and how they become one array.

A step's images are ``images_per_batch`` consecutive entries of a shuffled epoch order
(:func:`batch_indices`); each image is resized (``min_size`` / ``max_size``), maybe
flipped, augmented (:mod:`minirccn.data.augment`), normalised, and the batch padded to a
multiple of ``size_divisible`` (handed in by the model: its backbone's stride).

Models whose proposals come from outside the network (R-CNN, Fast R-CNN) hand in
``proposals_of``: each image's proposals then go through the same resize, flip and
augmentation as its ground truth (one draw each), so the two stay aligned.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.core.backend import array_module
from minirccn.data import augment, transforms

#: the label that marks a proposal among the ground-truth boxes while both are transformed
_PROPOSAL = -1


class Batch(NamedTuple):
    """One training batch, every box in the coordinates of ``images``."""

    images: object  # (N, 3, H, W) float, normalised, padded; an array of the backend
    image_sizes: list  # N pairs (height, width) of the unpadded images
    targets: list  # N dicts: boxes (G, 4) float, labels (G,) int64 (1..K-1)
    proposals: list | None = None  # N arrays (P_i, 4) float: external proposals, or None


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order images are visited in during ``epoch``: a permutation seeded by ``(seed, epoch)``.

    Kept for the next calls (read-only): every step of an epoch asks for the same one."""
    order = np.random.default_rng([int(seed), int(epoch), 7]).permutation(size)
    order.setflags(write=False)
    return order


def batch_indices(seed: int, step: int, batch: int, size: int) -> list:
    """Dataset indices of the images of SGD step ``step`` (epochs of shuffled images)."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        out.append(int(epoch_order(seed, k // size, size)[k % size]))
    return out


def clean_targets(boxes, labels, where: str = "target"):
    """Drop ground-truth boxes with zero (or negative) width or height, with a warning.

    Args:
        boxes: ``(G, 4)`` float; labels: ``(G,)`` int.

    Returns:
        ``(boxes (G', 4), labels (G',))`` with only boxes of positive width and height.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not ok.all():
        warnings.warn(
            f"{where}: dropped {int((~ok).sum())} ground-truth box(es) of zero width or height",
            stacklevel=2,
        )
    return boxes[ok], labels[ok]


def load_batch(
    dataset, indices, config, rng, backend: str, size_divisible: int, proposals_of=None
) -> Batch:
    """Images and targets of ``indices``, resized, maybe flipped and augmented, normalised, batched.

    Args:
        dataset: a dataset (``ds[i]`` gives ``image``, ``boxes``, ``labels``, ``image_id``).
        indices: which images.
        config: ``min_size``, ``max_size``, ``image_norm``, ``image_mean``, ``image_std``, ``flip``,
            ``dtype``
            and the fields of :func:`minirccn.data.augment.apply`.
        rng: flips each image with probability 1/2 if ``config.flip`` and draws the
            augmentations; None: neither.
        backend: where the image batch goes.
        size_divisible: pad the batch to a multiple of this (the model's stride).
        proposals_of: optional ``f(sample) -> (P, 4)`` proposals in the sample's pixels.

    Returns:
        a :class:`Batch` (``proposals`` None unless ``proposals_of`` is given).
    """
    dtype = config.dtype
    xs, targets, proposals = [], [], []
    for i in indices:
        sample = dataset[i]
        boxes, labels = clean_targets(
            sample["boxes"], sample["labels"], where=str(sample["image_id"])
        )
        boxes = boxes.astype(dtype)
        if proposals_of is not None:  # one box list, one resize, one flip, one augmentation
            props = proposals_of(sample).astype(dtype)
            boxes = np.concatenate([boxes, props])
            labels = np.concatenate([labels, np.full(len(props), _PROPOSAL, np.int64)])
        image, boxes, _ = transforms.resize(
            sample["image"], boxes, config.min_size, config.max_size, config.image_resize
        )
        if config.flip and rng is not None and rng.random() < 0.5:
            image, boxes = transforms.hflip(image, boxes)
        if rng is not None and augment.enabled(config):
            image, boxes, labels = augment.apply(image, boxes, labels, config, rng)
        xs.append(transforms.input_normalize(image, config).astype(dtype))
        gt = labels != _PROPOSAL
        targets.append({"boxes": boxes[gt].astype(dtype), "labels": labels[gt]})
        if proposals_of is not None:
            props = ops.clip_boxes(boxes[~gt], image.shape[:2], backend="numpy")
            proposals.append(props.astype(dtype))
    batch, sizes = transforms.batch_images(xs, size_divisible=size_divisible)
    images = array_module(backend).asarray(batch)
    return Batch(images, sizes, targets, proposals if proposals_of is not None else None)
