"""``--weights FILE.safetensors``: ImageNet-pretrained backbone weights, torchvision's names;
``--weights CK.npz``: every array of a checkpoint (one ``minirccn convert`` wrote from a
torchvision detector, or one ``minirccn train`` wrote) to fine-tune from (:func:`checkpoint_weights`).

Nothing can be downloaded here, but a user who has torchvision's VGG16 weights
can save them (``safetensors.torch.save_file(vgg16().state_dict(), "vgg16.safetensors")``)
and start from them. The file is read into NumPy with ``safetensors.numpy`` (no
torch needed). Each torchvision name maps to one parameter of the ``vgg16`` preset:

=============================  ==========================  =============================
torchvision (``vgg16``)        minirccn                    layout
=============================  ==========================  =============================
``features.{i}.weight``        ``backbone.conv{s}_{k}.w``  ``(F, C, 3, 3)`` both
``features.{i}.bias``          ``backbone.conv{s}_{k}.b``  ``(F,)``
``classifier.0.weight``        ``head.fc6.w``              ``(4096, 25088)`` -> transposed
``classifier.3.weight``        ``head.fc7.w``              ``(4096, 4096)`` -> transposed
``classifier.{0,3}.bias``      ``head.fc{6,7}.b``          ``(4096,)``
=============================  ==========================  =============================

``i`` counts torchvision's ``features`` modules (conv, ReLU, and a pool after each
stage), so the 13 convs are ``features.0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28``.
``classifier.6`` (the 1000 ImageNet classes) has no counterpart and is skipped; any
other name, a missing conv, or a wrong shape is an error naming it. The fc layers are
loaded when the file has them and the head's shapes agree (``representation_size``
4096, 7x7 RoI pooling on 512 channels), as the paper's VGG16 detector does.
"""

from __future__ import annotations

import os

import numpy as np

from minirccn.core.errors import MinirccnError
from minirccn.core.files import existing_file
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.backbones.vgg import get_spec
from minirccn.detector.models.faster_rcnn import FasterRCNN

SKIPPED = ("classifier.6.weight", "classifier.6.bias")


def torchvision_names(config) -> dict:
    """``{torchvision name: (minirccn name, transpose)}`` for ``config``'s backbone and head."""
    spec = get_spec(backbone_spec(config))
    if spec.batch_norm:
        raise MinirccnError(
            "--weights: only a backbone without batch norm (the vgg16 preset) has torchvision "
            "weights to load"
        )
    names, i = {}, 0
    for s, stage in enumerate(spec.stages, start=1):
        for k in range(1, stage.convs + 1):
            names[f"features.{i}.weight"] = (f"backbone.conv{s}_{k}.w", False)
            names[f"features.{i}.bias"] = (f"backbone.conv{s}_{k}.b", False)
            i += 2  # conv, ReLU
        i += 1  # the stage's max pool (torchvision's VGG pools after every stage)
    names["classifier.0.weight"] = ("head.fc6.w", True)
    names["classifier.0.bias"] = ("head.fc6.b", False)
    names["classifier.3.weight"] = ("head.fc7.w", True)
    names["classifier.3.bias"] = ("head.fc7.b", False)
    return names


def read_safetensors(path) -> dict:
    """``{name: NumPy array}`` of a ``.safetensors`` file (one clear error if unreadable)."""
    path = existing_file(path, flag="--weights")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise MinirccnError(
            "--weights: the safetensors package is needed (pip install safetensors)"
        ) from None
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - the library raises its own error types
        raise MinirccnError(f"--weights {path}: not a readable safetensors file ({exc})") from None


def map_weights(tensors: dict, config, where: str = "--weights") -> dict:
    """The minirccn parameters of torchvision-named ``tensors``, checked name by name.

    Args:
        tensors: ``{torchvision name: array}``.
        config: the model's config (its backbone and head shapes).

    Returns:
        ``{minirccn name: array}`` in the config's dtype.

    Raises:
        MinirccnError: an unknown name, a missing backbone conv, or a shape mismatch.
    """
    names = torchvision_names(config)
    want = FasterRCNN.init_params(config, 2, np.random.default_rng(0))
    unknown = sorted(k for k in tensors if k not in names and k not in SKIPPED)
    if unknown:
        raise MinirccnError(
            f"{where}: {len(unknown)} name(s) not in the {config.backbone} preset: "
            f"{', '.join(unknown[:5])}"
        )
    missing = sorted(k for k, (ours, _) in names.items() if k not in tensors and "backbone" in ours)
    if missing:
        raise MinirccnError(f"{where}: missing backbone weights {', '.join(missing[:5])}")
    out = {}
    for theirs, (ours, transpose) in names.items():
        if theirs not in tensors:
            continue
        array = np.asarray(tensors[theirs])
        array = array.T if transpose else array
        if array.shape != want[ours].shape:
            raise MinirccnError(
                f"{where}: {theirs} has shape {tuple(tensors[theirs].shape)}, but {ours} of "
                f"this config needs {tuple(want[ours].shape[::-1] if transpose else want[ours].shape)}"
            )
        out[ours] = np.ascontiguousarray(array, dtype=config.dtype)
    return out


def backbone_params(path, config) -> dict:
    """Read ``path`` and map it (:func:`map_weights`): what ``--weights`` loads."""
    return map_weights(read_safetensors(path), config, where=f"--weights {os.fspath(path)}")


def checkpoint_weights(path):
    """``(config, params)`` of checkpoint ``path``: fine-tuning starts from its architecture
    (its config, then ``--config`` / ``--set``) and from every array whose name and shape the new
    model shares; a predictor of other classes starts afresh (the training loop names it)."""
    path = existing_file(path, flag="--weights")
    model, _state = load_checkpoint(path)
    return model.config, dict(model.params)
