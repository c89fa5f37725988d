"""Which detector class a config builds (``config.model``), for training and checkpoints.

=============  =====================================================  ===================
``model``      class                                                  proposals
=============  =====================================================  ===================
faster_rcnn    :class:`minirccn.detector.model.FasterRCNN`            its own RPN
fast_rcnn      :class:`minirccn.detector.fast_rcnn.FastRCNN`          external (config)
rcnn           :class:`minirccn.detector.rcnn.RCNN`                   external (config)
=============  =====================================================  ===================
"""

from __future__ import annotations

from minirccn.errors import MinirccnError

MODELS = ("faster_rcnn", "fast_rcnn", "rcnn")


def model_class(config):
    """The class of ``config.model``."""
    if config.model == "faster_rcnn":
        from minirccn.detector.model import FasterRCNN

        return FasterRCNN
    if config.model == "fast_rcnn":
        from minirccn.detector.fast_rcnn import FastRCNN

        return FastRCNN
    if config.model == "rcnn":
        from minirccn.detector.rcnn import RCNN

        return RCNN
    raise MinirccnError(f"model: unknown model {config.model!r}; choose one of {', '.join(MODELS)}")


def build_model(config, class_names, params=None, rng=None):
    """A detector of ``config.model`` (fresh parameters from ``rng`` unless ``params`` given)."""
    return model_class(config)(config, class_names, params=params, rng=rng)


def init_model_params(config, num_classes: int, rng) -> dict:
    """Fresh parameters of ``config.model`` (what a checkpoint of that model must hold)."""
    if config.model == "faster_rcnn":
        from minirccn.detector.model import init_params

        return init_params(config, num_classes, rng)
    return model_class(config).init_params(config, num_classes, rng)
