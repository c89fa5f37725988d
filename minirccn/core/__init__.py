"""The floor everything stands on: the user-facing error (:mod:`~minirccn.core.errors`), the
backends (:mod:`~minirccn.core.backend`), the op table (:mod:`~minirccn.core.dispatch`),
argument checks (:mod:`~minirccn.core.checks`) and atomic file writes
(:mod:`~minirccn.core.files`). It imports nothing else from minirccn."""
