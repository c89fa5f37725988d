"""What a detector and its training are set to: the config dataclass and its presets
(:mod:`~minirccn.config.presets`), ``--set`` / ``--config`` (:mod:`~minirccn.config.overrides`),
defaults derived from the data (:mod:`~minirccn.config.autoconfig`) and field checks
(:mod:`~minirccn.config.checks`).

``from minirccn.config import preset, DetectorConfig`` is the usual entry point.
"""

from minirccn.config.presets import (
    PRESETS,
    DetectorConfig,
    FasterRCNNConfig,
    preset,
    retinanet_preset,
)

__all__ = [
    "PRESETS",
    "DetectorConfig",
    "FasterRCNNConfig",
    "preset",
    "retinanet_preset",
]
