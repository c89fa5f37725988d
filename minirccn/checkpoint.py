"""Save and load a detector (weights, optimiser state, config, RNG state) as one ``.npz``.

Layout of the archive (plain ``numpy.savez``, readable with ``numpy.load``):

================  ==============================================================
key               content
================  ==============================================================
``meta``          JSON string: format version, config, class names, step, RNG
                  state, optimiser scalars, anything in ``extra``
``param/<name>``  each model parameter
``optim/<path>``  each array of the optimiser's ``state_dict()`` (nested keys
                  joined with ``/``)
================  ==============================================================

Writes are atomic (:func:`minirccn.runs.atomic_path`): the archive goes to a temporary file in
the same folder, is ``fsync``-ed, given the permissions of the other outputs, then
``os.replace``-d over the target. A crash leaves either the old checkpoint or the new one,
never half of one; a failed save (disk full) names the file and keeps the previous one.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from minirccn.backend import to_numpy
from minirccn.config import FasterRCNNConfig
from minirccn.errors import MinirccnError
from minirccn.runs import atomic_path

FORMAT = "minirccn-checkpoint"
VERSION = 1


def _flatten(tree, prefix: str, arrays: dict) -> object:
    """Move the arrays of a nested dict/list into ``arrays`` (keyed by path); return a JSON skeleton."""
    if isinstance(tree, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray) or hasattr(tree, "__cuda_array_interface__"):
        arrays[prefix] = to_numpy(tree)
        return {"__array__": prefix}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _unflatten(skeleton, arrays):
    """Inverse of :func:`_flatten`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return np.array(arrays[skeleton["__array__"]])
        return {k: _unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, arrays) for v in skeleton]
    return skeleton


def save_checkpoint(
    path, model, *, optimizer_state=None, step: int = 0, rng_state=None, extra: dict | None = None
) -> str:
    """Write ``model`` and training state to ``path`` atomically.

    Args:
        path: target ``.npz`` file (its folder is created if missing).
        model: a :class:`~minirccn.detector.models.faster_rcnn.FasterRCNN`.
        optimizer_state: the optimiser's ``state_dict()`` (nested dicts of arrays
            and JSON scalars), or None.
        step: SGD steps done.
        rng_state: ``Generator.bit_generator.state`` of the training RNG, or None.
        extra: more JSON-serialisable information (losses so far, ...).

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    arrays = {f"param/{k}": to_numpy(v) for k, v in model.params.items()}
    optim_skeleton = (
        _flatten(optimizer_state, "optim", arrays) if optimizer_state is not None else None
    )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.loads(model.config.to_json()),
        "class_names": list(model.class_names),
        "step": int(step),
        "rng_state": rng_state,
        "optimizer": optim_skeleton,
        "extra": extra or {},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path, f"checkpoint (step {int(step)})") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(model, state)``: a :class:`~minirccn.detector.models.faster_rcnn.FasterRCNN` with host (NumPy)
        arrays, and a dict with ``step``, ``optimizer`` (state dict or None),
        ``rng_state`` (or None), ``extra``.

    Raises:
        MinirccnError: naming ``path`` if it is missing, corrupt, or not a
            compatible minirccn checkpoint.
    """
    from minirccn.detector.registry import build_model
    from minirccn.preflight import inspect_checkpoint

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinirccnError(f"{path}: checkpoint not found")
    # metadata, config (types, ranges) and every array's header, checked before any array is
    # read: the parameters' shapes must be the ones the config builds (computed without memory)
    checked = inspect_checkpoint(path)
    meta, config = checked["meta"], checked["config"]
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        class_names = list(meta["class_names"])
        params = {k[len("param/") :]: v for k, v in files.items() if k.startswith("param/")}
        model = build_model(config, class_names, params=params)
        optimizer = None
        if meta.get("optimizer") is not None:
            optimizer = _unflatten(meta["optimizer"], files)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise MinirccnError(f"{path}: incompatible checkpoint ({exc.__class__.__name__}: {exc})") from None
    state = {
        "step": int(meta.get("step", 0)),
        "optimizer": optimizer,
        "rng_state": meta.get("rng_state"),
        "extra": meta.get("extra") or {},
    }
    return model, state
