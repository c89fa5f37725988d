"""A component's settings read from the config fields that carry its prefix.

The detector's components (target creators, proposal layer, postprocesses) take plain numbers;
``from_config`` reads them from a :class:`~minirccn.config.DetectorConfig`, whose fields name
the component by a prefix (``rpn_fg_iou_thresh`` is the RPN targets' ``fg_iou_thresh``).
"""

from __future__ import annotations


def prefixed(config, prefix: str, *names: str, suffix: str = "") -> dict:
    """``{name: config.<prefix><name><suffix>}`` for each of ``names``.

    >>> from types import SimpleNamespace
    >>> prefixed(SimpleNamespace(rpn_nms_thresh=0.7, rpn_min_size=0.0), "rpn_", "nms_thresh", "min_size")
    {'nms_thresh': 0.7, 'min_size': 0.0}
    """
    return {name: getattr(config, f"{prefix}{name}{suffix}") for name in names}
