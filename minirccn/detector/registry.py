"""Which detector class a config builds (``config.model``), for training, checkpoints and
the preflight checks.

=============  =====================================================  ===================
``model``      class                                                  proposals
=============  =====================================================  ===================
fasterrcnn     :class:`minirccn.detector.model.FasterRCNN`            its own RPN
retinanet      :class:`minirccn.detector.retinanet.RetinaNet`         none (dense)
fastrcnn       :class:`minirccn.detector.fast_rcnn.FastRCNN`          external (config)
rcnn           :class:`minirccn.detector.rcnn.RCNN`                   external (config)
=============  =====================================================  ===================
"""

from __future__ import annotations

from minirccn.errors import MinirccnError

MODELS = ("fasterrcnn", "retinanet", "fastrcnn", "rcnn")
#: the models that read proposals from outside the network (selective search or a file)
EXTERNAL_MODELS = ("fastrcnn", "rcnn")


def model_class(config):
    """The class of ``config.model``."""
    if config.model == "fasterrcnn":
        from minirccn.detector.model import FasterRCNN

        return FasterRCNN
    if config.model == "retinanet":
        from minirccn.detector.retinanet import RetinaNet

        return RetinaNet
    if config.model == "fastrcnn":
        from minirccn.detector.fast_rcnn import FastRCNN

        return FastRCNN
    if config.model == "rcnn":
        from minirccn.detector.rcnn import RCNN

        return RCNN
    raise MinirccnError(f"model: expected one of {', '.join(MODELS)}, got {config.model!r}")


def build_model(config, class_names, params=None, rng=None):
    """A detector of ``config.model`` (fresh parameters from ``rng`` unless ``params`` given)."""
    return model_class(config)(config, class_names, params=params, rng=rng)


def init_model_params(config, num_classes: int, rng) -> dict:
    """Fresh parameters of ``config.model`` (what a checkpoint of that model must hold)."""
    if config.model == "fasterrcnn":
        from minirccn.detector.model import init_params
    elif config.model == "retinanet":
        from minirccn.detector.retinanet import init_params
    else:
        init_params = model_class(config).init_params
    return init_params(config, num_classes, rng)
