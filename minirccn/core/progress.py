"""Progress of a long loop, on a terminal and off it.

On a terminal (stderr is a TTY) :func:`progress_bar` is a tqdm bar that redraws itself with
``\\r``. Off a terminal (``nohup``, CI, a cluster job, ``2> log``) those redraws would pile up
into one multi-megabyte line, so it prints plain lines instead, one every ``every_steps``
steps (default: every tenth of the loop) or ``every_seconds`` seconds, whichever comes first,
and one at the end::

    train: 270/2700 steps (10%) 31 s, 8.7 steps/s, objectness=0.112 rpn_box_reg=0.031

Every command with a bar uses this one function (train, eval, the validation, data export,
lineage), so a logged run is plain lines everywhere.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

#: off a terminal: a line at least this often (seconds), and at least every tenth of the loop
EVERY_SECONDS = 30.0
EVERY_FRACTION = 0.1


def is_terminal(stream) -> bool:
    """True if ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


class PlainProgress:
    """An iterable wrapper that prints a plain progress line now and then (no ``\\r``).

    Has tqdm's methods the loops use: ``set_postfix(dict, refresh=False)``, ``write(text)``
    and ``close()``.
    """

    def __init__(self, iterable, desc="", unit="it", total=None, stream=None, enabled=True,
                 every_steps=None, every_seconds=EVERY_SECONDS, clock=time.monotonic):
        self.iterable = iterable
        if total is None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        if every_steps is None:
            every_steps = max(int(total * EVERY_FRACTION), 1) if total else 100
        self.every_steps, self.every_seconds, self.clock = int(every_steps), every_seconds, clock
        self.postfix = ""
        self.n = 0
        self._closed = False

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __iter__(self):
        self.start = self._last_time = self.clock()
        self._last_n = 0
        try:
            for item in self.iterable:
                yield item
                self.n += 1
                now = self.clock()
                if (self.n - self._last_n >= self.every_steps
                        or now - self._last_time >= self.every_seconds):
                    self._line(now)
        finally:
            self.close()

    def line(self, now: float | None = None) -> str:
        """The progress line at this moment."""
        now = self.clock() if now is None else now
        elapsed = max(now - getattr(self, "start", now), 0.0)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 and self.n else ""
        post = f", {self.postfix}" if self.postfix else ""
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{done} {self.unit}{pct} {elapsed:.0f} s{rate}{post}"

    def _line(self, now: float) -> None:
        self._last_time, self._last_n = now, self.n
        if self.enabled:
            print(self.line(now), file=self.stream, flush=True)

    def set_postfix(self, values=None, refresh=False, **kwargs):
        values = {**(values or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != getattr(self, "_last_n", self.n):  # the last line: where the loop ended
            self._line(self.clock())


def progress_bar(iterable, desc: str = "", unit: str = "it", enabled: bool = True,
                 stream=None, total=None, **tqdm_kwargs):
    """``iterable`` with progress: a tqdm bar on a terminal, plain lines off one
    (:class:`PlainProgress`), nothing when not ``enabled``.

    Args:
        desc, unit, total: as tqdm's.
        enabled: False shows nothing (``--no-progress``).
        stream: where the progress goes (default: stderr); its ``isatty()`` decides.
        tqdm_kwargs: passed to tqdm on a terminal (``leave``, ``dynamic_ncols``, ...).
    """
    stream = stream if stream is not None else sys.stderr
    if enabled and is_terminal(stream):
        return tqdm(iterable, desc=desc, unit=unit, total=total, file=stream, **tqdm_kwargs)
    return PlainProgress(iterable, desc=desc, unit=unit, total=total, stream=stream,
                         enabled=enabled)
