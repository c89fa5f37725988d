"""Training and inference over datasets, for any :class:`~minirccn.detector.base.Detector`."""
