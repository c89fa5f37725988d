"""What R-CNN and Fast R-CNN share: proposals from outside the network.

Both older detectors take their regions from selective search (or any list of
boxes) instead of an RPN. This module holds the common parts:

* :func:`proposal_source`: the :class:`~minirccn.proposals.source.ProposalSource` of a
  config (``proposals``, ``max_proposals``, ``selective_search_*`` fields);
* :func:`load_batch_with_proposals`: :func:`minirccn.train.load_batch`'s batch with
  each image's proposals resized and flipped along with it (the same random draws,
  one per image for the flip);
* :class:`ExternalProposalModel`: the state both models keep (config, class names,
  parameters, the proposal source, the RoI sampler) and their inference frame:
  proposals of the original image -> scaled to the network's input -> detections
  -> scaled back.

Proposals are computed on the *original* image (that is what the cache is keyed
by), then scaled by the same per-axis ratios as the image and clipped to it.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.backend import array_module, resolve
from minirccn.data import transforms
from minirccn.detector import backbone as _bb
from minirccn.detector.proposal_targets import ProposalTargetCreator
from minirccn.detector.model import preprocess_image
from minirccn.detector.poolers import RoIPooler
from minirccn.proposals.source import ProposalSource

from minirccn.detector.registry import EXTERNAL_MODELS  # noqa: F401  (re-exported)


def proposal_source(config, cache_dir: str | None = None) -> ProposalSource:
    """The proposal source a config describes (selective search settings or a JSON file)."""
    return ProposalSource(
        config.proposals,
        mode=config.selective_search_mode,
        min_size=config.selective_search_min_size,
        max_proposals=config.max_proposals,
        cache_dir=cache_dir,
    )


def scale_proposals(boxes: np.ndarray, from_size, to_size) -> np.ndarray:
    """Boxes of an ``from_size = (h, w)`` image on the same image resized to ``to_size``.

    Multiplies x by ``w' / w`` and y by ``h' / h`` (as :func:`minirccn.data.transforms.resize`
    does with ground truth), then clips to ``to_size``.

    Args:
        boxes: ``(P, 4)`` float.

    Returns:
        ``(P, 4)`` float of the same dtype.
    """
    (h, w), (h2, w2) = from_size, to_size
    ratios = np.array([w2 / w, h2 / h, w2 / w, h2 / h], dtype=boxes.dtype)
    return ops.clip_boxes(boxes * ratios, (h2, w2), backend="numpy").astype(boxes.dtype)


def load_batch_with_proposals(dataset, indices, config, rng, backend: str, source):
    """A training batch with proposals: :func:`minirccn.train.load_batch` plus boxes.

    Args:
        dataset, indices, config, rng, backend: as :func:`minirccn.train.load_batch` (the same
            resize, flip draws and normalisation).
        source: a :class:`~minirccn.proposals.source.ProposalSource`.

    Returns:
        ``(images (N, 3, H, W), sizes [(h, w)], targets [dict(boxes, labels)],
        proposals [(P_i, 4)])``, every box in the coordinates of ``images``.
    """
    from minirccn.detector.model import clean_targets

    xs, targets, proposals = [], [], []
    for i in indices:
        sample = dataset[i]
        boxes, labels = clean_targets(
            sample["boxes"], sample["labels"], where=str(sample["image_id"])
        )
        props = source(sample["image"], sample["image_id"]).astype(config.dtype)
        joint = np.concatenate([boxes.astype(config.dtype), props])  # one resize, one flip
        image, joint, _ = transforms.resize(
            sample["image"], joint, config.min_size, config.max_size
        )
        if config.flip and rng is not None and rng.random() < 0.5:
            image, joint = transforms.hflip(image, joint)
        g = len(boxes)
        xs.append(
            transforms.normalize(image, config.image_mean, config.image_std).astype(config.dtype)
        )
        targets.append({"boxes": joint[:g], "labels": labels})
        proposals.append(
            ops.clip_boxes(joint[g:], image.shape[:2], backend="numpy").astype(config.dtype)
        )
    batch, sizes = transforms.batch_images(xs, size_divisible=_bb.stride(_spec(config)))
    return array_module(backend).asarray(batch), sizes, targets, proposals


def _spec(config):
    from minirccn.detector.model import backbone_spec

    return backbone_spec(config)


def empty_detections() -> dict:
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros(0, np.float32),
        "labels": np.zeros(0, np.int64),
    }


class ExternalProposalModel:
    """State and inference frame shared by :class:`~minirccn.detector.fast_rcnn.FastRCNN` and
    :class:`~minirccn.detector.rcnn.RCNN`.

    Attributes:
        config: the config (``model`` says which).
        class_names: ``K`` names, ``class_names[0] == "__background__"``.
        params: dict name -> array, ``backbone.*`` and ``head.*`` (no RPN).
        source: the :class:`~minirccn.proposals.source.ProposalSource` (built from the config
            unless given).
        proposal_targets: the RoI sampler (:class:`ProposalTargetCreator`, the config's
            ``box_*`` numbers), as Faster R-CNN's head uses it.
    """

    def __init__(self, config, class_names, params=None, rng=None, source=None):
        self.config = config
        self.class_names = list(class_names)
        if len(self.class_names) < 2 or self.class_names[0] != "__background__":
            raise ValueError("class_names: expected ['__background__', <at least one class>, ...]")
        self.backbone_spec = _spec(config)
        if params is None:
            rng = rng if rng is not None else np.random.default_rng(0)
            params = self.init_params(config, len(self.class_names), rng)
        self.params = params
        self.source = source if source is not None else proposal_source(config)
        self.proposal_targets = ProposalTargetCreator.from_config(config)
        self.roi_pooler = RoIPooler.from_config(config)  # the RoI head's pooling (Fast R-CNN)

    @staticmethod
    def init_params(config, num_classes: int, rng) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def stride(self) -> int:
        return _bb.stride(self.backbone_spec)

    @property
    def needs_image_id(self) -> bool:
        """True when proposals come from a file (looked up by image id)."""
        return self.source.kind == "file"

    def to(self, backend: str):
        """Move the parameters to ``backend``'s array module, in place; returns self."""
        xp = array_module(backend)
        self.params = {k: xp.asarray(v) for k, v in self.params.items()}
        return self

    def trainable(self, prefixes=("backbone.", "head.")) -> dict:
        """The parameters that get gradients (names starting with ``prefixes``; no BN statistics)."""
        prefixes = tuple(prefixes)
        return {
            k: v for k, v in self.params.items() if k.startswith(prefixes) and ".running_" not in k
        }

    def preprocess(self, image):
        """``(H, W, 3)`` uint8 -> normalised ``(3, H', W')`` and the resize scale."""
        return preprocess_image(self.config, image)

    def predict(self, image, backend=None, image_id=None) -> dict:
        """Detections of one image in its pixel coordinates (``image_id``: for file proposals).

        Returns:
            dict ``boxes`` ``(D, 4)`` float32, ``scores`` ``(D,)`` float32 (decreasing),
            ``labels`` ``(D,)`` int64 in 1..K-1.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
            )
        backend = resolve(backend)
        x, scale = self.preprocess(image)
        props = self.source(image, image_id).astype(self.config.dtype)
        props = scale_proposals(props, image.shape[:2], x.shape[1:])
        if props.shape[0] == 0:
            return empty_detections()
        det = self.detect(x, props, backend)
        boxes = det["boxes"] / np.float32(scale)
        boxes = ops.clip_boxes(boxes, image.shape[:2], backend="numpy").astype(np.float32)
        return {
            "boxes": boxes,
            "scores": det["scores"].astype(np.float32),
            "labels": det["labels"].astype(np.int64),
        }

    def detect(self, x, proposals, backend) -> dict:  # pragma: no cover - abstract
        """Detections of one preprocessed image ``x`` ``(3, H, W)`` from ``proposals`` ``(P, 4)``."""
        raise NotImplementedError
