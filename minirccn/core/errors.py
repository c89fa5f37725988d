"""The one exception type that reaches a user as a single line.

Anything a user can get wrong (a missing file, a malformed annotation, a bad
flag, a corrupt checkpoint) raises :class:`MinirccnError` (or a subclass) with a
message that names the file or argument. The CLI prints ``minirccn: error: <msg>``
and exits with status 2; it never shows a traceback for these.

Ops called from Python raise plain ``ValueError`` / ``TypeError`` naming the
argument, as NumPy and torchvision do; the CLI turns those into one line too.
"""

import sys


class MinirccnError(Exception):
    """A user-facing error: the message alone is shown, naming the file or argument."""


class BackendUnavailable(MinirccnError, RuntimeError):
    """A backend was asked for explicitly but cannot run here (no GPU, no CuPy, ...)."""


def note(message: str) -> None:
    """Print ``minirccn: note: <message>`` on stderr (what the run did on the user's behalf)."""
    print(f"minirccn: note: {message}", file=sys.stderr, flush=True)
