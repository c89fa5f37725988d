"""A detector over images and datasets: :func:`run_model` (one image, checked NumPy arrays) and
:func:`evaluate_model` (every metric of :mod:`minirccn.evaluation` over a dataset; the trainer
uses it after training and for validation, ``minirccn eval`` prints it).

The model is any :class:`~minirccn.detector.base.Detector`: it has ``class_names`` and
``predict(image, backend=None, image_id=None) -> dict(boxes, scores, labels)``.
"""

from __future__ import annotations

import numpy as np

from minirccn.core.backend import to_numpy
from minirccn.core.errors import MinirccnError
from minirccn.core.progress import progress_bar
from minirccn.data.common import ImageUnreadable, warn
from minirccn.evaluation import evaluate


class UnusableImage(MinirccnError):
    """The model cannot run on this image (a 4000x1 strip, ...): the message names it."""


def run_model(model, image: np.ndarray, backend: str | None = None, image_id=None, name=None) -> dict:
    """``model.predict(image)`` as NumPy arrays with checked shapes.

    Args:
        image: ``(H, W, 3)`` uint8.
        image_id: passed on (models whose proposals come from a file look it up).
        name: the image in an error message (default: ``image_id``).

    Returns:
        ``dict(boxes=(D, 4) float32, scores=(D,) float32, labels=(D,) int64)``.
    """
    try:
        out = model.predict(image, backend=backend, image_id=image_id)
    except ValueError as exc:  # an op's check deep inside (a 1x4000 strip, ...): name the image
        name = image_id if name is None else name
        if name is None:
            raise
        h, w = np.shape(image)[:2]
        raise UnusableImage(f"{name}: cannot run the model on this {w}x{h} image ({exc})") from None
    boxes = np.asarray(to_numpy(out["boxes"]), dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(to_numpy(out["scores"]), dtype=np.float32).reshape(-1)
    labels = np.asarray(to_numpy(out["labels"]), dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise MinirccnError(
            f"model.predict returned {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels"
        )
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _image_name(dataset, index: int, sample: dict) -> str:
    """The image's file if the dataset has one, else its id (for messages)."""
    try:
        return dataset.image_file(index) or sample["image_id"]
    except Exception:  # noqa: BLE001 - a view without image_file: the id
        return sample["image_id"]


def evaluate_model(
    model, dataset, backend: str | None = None, progress: bool = True, limit: int | None = None
) -> dict:
    """Run ``model`` over ``dataset`` and score it with every metric.

    Args:
        model: has ``class_names`` and ``predict(image, backend=None)``.
        dataset: a dataset of :mod:`minirccn.data` whose labels mean what the model's do.
        backend: passed to ``model.predict``.
        progress: show progress (:func:`minirccn.core.progress.progress_bar`).
        limit: evaluate only the first ``limit`` images.

    Returns:
        ``{"map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100"}``
        (COCO), ``"voc07_map50"``, ``"voc_map50"``, ``"num_images"`` and ``"per_class"``:
        class name -> ``{"ap", "ap50", "voc07_ap50", "voc_ap50"}`` (None for a class
        without ground truth in the data).
    """
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    predictions, targets = [], []
    for i in progress_bar(range(n), desc=f"eval {dataset.name}", unit="img", enabled=progress):
        try:  # one bad image (corrupt inside, a 1-pixel strip): skipped with one warning
            sample = dataset[i]
            where = _image_name(dataset, i, sample)
            prediction = run_model(model, sample["image"], backend, sample["image_id"], where)
        except (ImageUnreadable, UnusableImage) as exc:
            warn(f"{exc}; skipped")
            continue
        predictions.append(prediction)
        targets.append({k: sample[k] for k in ("boxes", "labels", "difficult")})
    if n and not predictions:
        raise MinirccnError(f"{dataset.name}: none of its {n} images could be evaluated")
    n = len(predictions)
    coco = evaluate(predictions, targets, metric="coco")
    voc07 = evaluate(predictions, targets, metric="voc07")
    voc = evaluate(predictions, targets, metric="voc")
    names = list(getattr(model, "class_names", None) or dataset.class_names)
    per_class = {
        name: {
            "ap": coco["per_class"].get(k),
            "ap50": coco["per_class50"].get(k),
            "voc07_ap50": voc07["per_class"].get(k),
            "voc_ap50": voc["per_class"].get(k),
        }
        for k, name in enumerate(names)
        if k > 0
    }
    result = {
        key: coco[key]
        for key in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100")
    }
    result.update(
        voc07_map50=voc07["map50"], voc_map50=voc["map50"], num_images=n, per_class=per_class
    )
    return result
