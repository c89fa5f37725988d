"""The Detector protocol: what every model kind implements, and what they all share.

The training loop (:mod:`minirccn.engine.loop`), ``bench``, ``lineage``, ``detect`` and
``eval`` hold a :class:`Detector` and never ask which kind it is::

    batch = model.load_batch(dataset, indices, rng, backend)      # images, sizes, targets
    losses, cache = model.forward(batch, rng, backend=backend)    # the training forward
    grads = model.backward(cache)                                 # the hand-written backward
    detections = model.detect(images, image_sizes, backend)       # batch inference
    detections = model.predict(image)                             # one photo, its own pixels

A model kind is one subclass and one row of :data:`minirccn.detector.registry.MODELS`.

``Samples`` (the non-differentiable choices of a two-stage training forward) lives here
because R-CNN, Fast R-CNN and Faster R-CNN all make them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirccn import ops
from minirccn.core.backend import array_module, resolve
from minirccn.data import batching, transforms
from minirccn.data.batching import Batch
from minirccn.detector.anchors import AnchorGenerator
from minirccn.detector.backbones.levels import build_backbone
from minirccn.detector.test_time import merge_detections, mirror_boxes

__all__ = ["Batch", "Detector", "Samples", "empty_detections", "preprocess_image"]


class Samples(NamedTuple):
    """The non-differentiable choices of one two-stage training forward (host NumPy arrays).

    Pass them back to ``forward(..., samples=)`` to repeat a forward with the same
    choices, e.g. for a finite-difference gradient check.
    """

    rpn_labels: np.ndarray | None  # (N, M) int64: 1 / 0 / -1 (not sampled); None: no RPN
    rpn_targets: np.ndarray | None  # (N, M, 4) encoded anchor targets
    rois: np.ndarray | None  # (R, 5) (batch_index, x1, y1, x2, y2) sampled RoIs
    roi_labels: np.ndarray | None  # (R,) int64 classes, 0 background
    roi_targets: np.ndarray | None  # (R, 4) encoded targets, weights (10, 10, 5, 5)


def empty_detections() -> dict:
    """No detection: ``boxes (0, 4)`` float32, ``scores (0,)`` float32, ``labels (0,)`` int64."""
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
    }


def preprocess_image(config, image):
    """One ``(H, W, 3)`` uint8 image -> normalised ``(3, H', W')`` float of ``config.dtype`` and
    the resize scale (``min_size`` / ``max_size`` rule, ``image_mean`` / ``image_std``).

    ``config.image_resize == "torchvision"``: normalised first, then resized as float32
    (:func:`~minirccn.data.transforms.bilinear_resize`), as torchvision's
    ``GeneralizedRCNNTransform`` does; else resized as uint8 by Pillow, then normalised."""
    if config.image_resize == "torchvision":
        h, w = image.shape[:2]
        new_h, new_w = transforms.torchvision_size(h, w, config.min_size, config.max_size)
        x = transforms.input_normalize(image, config)
        x = transforms.bilinear_resize(x, new_h, new_w).astype(config.dtype)
        return x, transforms.resize_scale(h, w, config.min_size, config.max_size)
    resized, _, scale = transforms.resize(
        image, np.zeros((0, 4), np.float32), config.min_size, config.max_size
    )
    x = transforms.input_normalize(resized, config).astype(config.dtype)
    return x, scale


def check_image(image) -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 array, or one ValueError naming what it is."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
        )
    return image


class Detector:
    """A detector's state (config, class names, parameters in one flat dict) and the protocol.

    Subclasses set :attr:`LOSS_NAMES` and :attr:`PARAM_PREFIXES`, build their fixed parts
    (backbone, creators, poolers: objects with numbers, no parameters) in :meth:`build`,
    and implement :meth:`init_params`, :meth:`forward`, :meth:`backward`, :meth:`detect`.

    Attributes:
        config: the :class:`~minirccn.config.DetectorConfig`.
        class_names: ``K`` names, ``class_names[0] == "__background__"``.
        params: dict name -> array (batch-norm running statistics included: they get no
            gradient and are updated in place by training forwards).
    """

    #: the losses :meth:`forward` returns, in order
    LOSS_NAMES: tuple = ()
    #: parameter-name prefixes of the trainable parts
    PARAM_PREFIXES: tuple = ("backbone.", "head.")
    #: whether the paper's 4-step alternating training applies (an RPN and a head)
    ALTERNATING: bool = False
    #: the preset ``minirccn train --model KIND`` uses without ``--preset``
    DEFAULT_PRESET: str = "tiny"
    #: where the regions it classifies come from: ``"rpn"`` (its own RPN, ``rpn_proposals``),
    #: ``"external"`` (selective search or a file, ``image_proposals``) or ``""`` (none: a
    #: dense one-stage model classifies every anchor)
    PROPOSALS: str = ""
    #: the torchvision class a checkpoint of this model exports to (``minirccn export``);
    #: ``""``: none
    TORCHVISION: str = ""

    def __init__(self, config, class_names, params=None, rng: np.random.Generator | None = None):
        self.config = config
        self.class_names = list(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "__background__":
            raise ValueError("class_names: expected ['__background__', <at least one class>, ...]")
        if len(set(self.class_names)) != len(self.class_names):  # a checkpoint would not load
            raise ValueError(f"class_names: expected distinct names, got {self.class_names}")
        self.build()
        if params is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            params = self.init_params(config, len(self.class_names), rng)
        self.params = params

    # ---------------------------------------------------------------- to implement

    def build(self) -> None:
        """Build the fixed parts from ``self.config`` (called before the parameters exist)."""
        raise NotImplementedError

    @classmethod
    def init_params(cls, config, num_classes: int, rng: np.random.Generator) -> dict:
        """Fresh parameters drawn from ``rng``: what a checkpoint of this model must hold."""
        raise NotImplementedError

    def forward(self, batch: Batch, rng, *, backend=None, batch_stats: bool = True):
        """The training forward: ``(losses (dict of floats, LOSS_NAMES), cache)``.
        ``batch_stats``: batch norm normalises with the batch's statistics (else the running
        ones, "frozen")."""
        raise NotImplementedError

    def backward(self, cache) -> dict:
        """Gradients of the summed losses w.r.t. every trainable parameter: name -> array."""
        raise NotImplementedError

    def detect(self, images, image_sizes, backend=None, proposals=None) -> list:
        """Inference on a batch of preprocessed images ``(N, 3, H, W)`` with unpadded sizes
        ``image_sizes``: ``N`` dicts ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int64, in
        the coordinates of ``images``. ``proposals``: external proposals (R-CNN, Fast R-CNN)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared

    def build_levels(self, level_sizes) -> None:
        """``self.backbone`` (one level or a pyramid, :func:`build_backbone`) and
        ``self.anchor_generator`` with the anchor sizes ``level_sizes`` of each of its levels."""
        cfg = self.config
        self.backbone = build_backbone(cfg)
        self.anchor_generator = AnchorGenerator(
            self.backbone.strides,
            level_sizes,
            cfg.aspect_ratios,
            cfg.anchor_offset,
            cfg.dtype,
            cfg.anchor_grid,
        )

    def inference_levels(self, images, backend: str):
        """The backbone's levels of a batch ``images`` ``(N, 3, H, W)`` in inference mode (batch
        norm on its running statistics) and the anchors of every level:
        ``(levels, anchors (M, 4), counts)``, ``counts[l]`` anchors on level ``l``, finest first."""
        levels, _ = self.backbone.forward(self.params, images, False, backend)
        anchors, counts = self.anchor_generator(
            [f.shape[2:] for f in levels], array_module(backend), images.shape[2:]
        )
        return levels, anchors, counts

    @property
    def num_classes(self) -> int:
        """``K``, including the background class 0."""
        return len(self.class_names)

    @property
    def size_divisible(self) -> int:
        """Training batches are padded to a multiple of this: ``config.size_divisible`` if
        set (> 0), else the backbone's stride."""
        return int(self.config.size_divisible) or self.backbone.size_divisible

    def to(self, backend: str):
        """Move the parameters to ``backend``'s array module, in place; returns self."""
        xp = array_module(backend)
        self.params = {k: xp.asarray(v) for k, v in self.params.items()}
        return self

    def trainable(self, prefixes=None) -> dict:
        """The parameters that get gradients: names starting with ``prefixes`` (default:
        :attr:`PARAM_PREFIXES`), batch-norm running statistics excluded."""
        prefixes = tuple(self.PARAM_PREFIXES if prefixes is None else prefixes)
        return {
            k: v for k, v in self.params.items() if k.startswith(prefixes) and ".running_" not in k
        }

    def load_batch(self, dataset, indices, rng, backend: str) -> Batch:
        """A training batch of ``dataset[indices]`` (:func:`minirccn.data.batching.load_batch`
        padded to :attr:`size_divisible`)."""
        return batching.load_batch(
            dataset, indices, self.config, rng, backend, self.size_divisible
        )

    def preprocess(self, image):
        """One ``(H, W, 3)`` uint8 image -> normalised ``(3, H', W')`` float and the resize scale."""
        return preprocess_image(self.config, image)

    def image_proposals(self, image, image_id, size):
        """External proposals of one original ``image`` for an input of ``size`` (None: the
        model makes its own)."""
        return None

    def run_record(self) -> dict:
        """What a run's ``metrics.json`` should record about this model beyond its config."""
        return {}

    def _detect_one(self, x, proposals, backend) -> dict:
        """:meth:`detect` of one preprocessed ``(3, H', W')`` input (padded to
        ``config.size_divisible`` when that is > 0), ``proposals`` ``(P, 4)`` or None."""
        batch = x[None]
        if self.config.size_divisible:
            batch, _ = transforms.batch_images([x], self.config.size_divisible)
        return self.detect(
            array_module(backend).asarray(batch),
            [tuple(x.shape[1:])],
            backend=backend,
            proposals=None if proposals is None else [proposals],
        )[0]

    def predict(self, image, backend=None, image_id=None) -> dict:
        """Detections of one image, in that image's pixel coordinates.

        Args:
            image: ``(H, W, 3)`` uint8 RGB image.
            backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None.
            image_id: the image's id (models whose proposals come from a file look it up).

        Returns:
            dict ``boxes`` ``(D, 4)`` float32, ``scores`` ``(D,)`` float32 (decreasing),
            ``labels`` ``(D,)`` int64 in 1..K-1.

        Steps: preprocess (resize, normalise; zero-padded to a multiple of
        ``config.size_divisible`` when that is > 0) -> :meth:`detect` (``config.test_flip``: on
        the input and its mirror image, merged by :mod:`minirccn.detector.test_time`) -> boxes
        divided by the
        resize scale (``image_resize == "torchvision"``: multiplied by the per-axis ratios
        ``float32(original) / float32(resized)``, as torchvision's ``postprocess``) and clipped
        to the image.
        """
        image = check_image(image)
        backend = resolve(backend)
        x, scale = self.preprocess(image)
        size = tuple(x.shape[1:])
        proposals = self.image_proposals(image, image_id, size)
        if proposals is not None and proposals.shape[0] == 0:
            return empty_detections()
        det = self._detect_one(x, proposals, backend)
        if self.config.test_flip:  # test-time augmentation (minirccn.detector.test_time)
            mirrored = self._detect_one(
                np.ascontiguousarray(x[:, :, ::-1]),
                None if proposals is None else mirror_boxes(proposals, size[1]),
                backend,
            )
            mirrored = {**mirrored, "boxes": mirror_boxes(mirrored["boxes"], size[1])}
            det = merge_detections(
                [det, mirrored],
                self.postprocess.nms_thresh,
                self.postprocess.detections_per_img,
                backend="numba" if backend == "cuda" else backend,
            )
        if self.config.image_resize == "torchvision":
            rh = np.float32(image.shape[0]) / np.float32(size[0])
            rw = np.float32(image.shape[1]) / np.float32(size[1])
            boxes = det["boxes"] * np.array([rw, rh, rw, rh], np.float32)
        else:
            boxes = det["boxes"] / np.float32(scale)
        boxes = ops.clip_boxes(boxes, image.shape[:2], backend="numpy").astype(np.float32)
        return {
            "boxes": boxes,
            "scores": det["scores"].astype(np.float32),
            "labels": det["labels"].astype(np.int64),
        }
