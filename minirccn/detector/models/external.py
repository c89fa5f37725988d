"""What R-CNN and Fast R-CNN share: proposals from outside the network.

Both older detectors take their regions from selective search (or any list of boxes)
instead of an RPN. :class:`ExternalProposals` is the part of their state and protocol that
this adds to a :class:`~minirccn.detector.base.Detector`:

* the :class:`~minirccn.proposals.source.ProposalSource` of the config (``proposals``,
  ``max_proposals``, ``selective_search_*`` fields);
* ``load_batch``: the ordinary batch (:func:`minirccn.data.batching.load_batch`), each image's
  proposals going through the same resize, flip and augmentation as its ground truth;
* inference: proposals of the original image -> scaled to the network's input ->
  ``detect`` -> scaled back (the base class's ``predict``).

Proposals are computed on the *original* image (that is what the cache is keyed by), then
scaled by the same per-axis ratios as the image and clipped to it.
"""

from __future__ import annotations

import numpy as np

from minirccn import ops
from minirccn.data import batching
from minirccn.proposals.source import ProposalSource


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


class ExternalProposals:
    """Mixin for a :class:`~minirccn.detector.base.Detector` whose proposals come from outside.

    Attributes:
        source: the :class:`~minirccn.proposals.source.ProposalSource` (built from the config
            unless given to the constructor).
    """

    PROPOSALS = "external"

    def __init__(self, config, class_names, params=None, rng=None, source=None):
        self.source = source if source is not None else proposal_source(config)
        super().__init__(config, class_names, params=params, rng=rng)

    def load_batch(self, dataset, indices, rng, backend: str):
        """The ordinary training batch plus each image's proposals (``batch.proposals``)."""
        return batching.load_batch(
            dataset,
            indices,
            self.config,
            rng,
            backend,
            self.size_divisible,
            proposals_of=lambda sample: self.source(sample["image"], sample["image_id"]),
        )

    def image_proposals(self, image, image_id, size):
        """The source's proposals of the original ``image`` scaled to an input of ``size``."""
        props = self.source(image, image_id).astype(self.config.dtype)
        return scale_proposals(props, image.shape[:2], size)

    def run_record(self) -> dict:
        """The proposal source's settings (``metrics.json`` records them)."""
        return {"proposals": self.source.record()}
