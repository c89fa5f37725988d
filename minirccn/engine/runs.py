"""A run is never lost: output folders, the run lock and signals (atomic writes: core.files).

The guarantees of ``minirccn train`` (README, "Your runs are safe") and the pieces that keep them:

======================================  ==============================================
guarantee                               piece
======================================  ==============================================
an unusable ``--out`` fails in seconds  :func:`minirccn.core.files.check_out_folder`
the default folder never overwrites     :func:`next_run_folder` (``runs/train``,
                                        ``runs/train2``, ... as Ultralytics does)
an explicit ``--out`` holding a run     :func:`guard_existing_run` (needs ``--resume``
needs ``--resume`` or ``--overwrite``   or ``--overwrite``)
one run per folder at a time            :class:`RunLock` (``OUT/.minirccn.lock``: an
                                        ``flock`` plus the owner's pid)
no half-written file                    :func:`minirccn.core.files.atomic_path`
leftovers of a killed save are removed  :func:`minirccn.core.files.remove_stale_temps`
Ctrl-C / SIGTERM save the current step  :class:`StopOnSignal` + :class:`Interrupted`
======================================  ==============================================
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading

from minirccn.core.errors import MinirccnError, note
from minirccn.core.files import (
    pid_alive,
    remove_quietly,
    check_out_folder,
    remove_stale_temps,
)

LOCK_NAME = ".minirccn.lock"
CHECKPOINT = "checkpoint.npz"
#: every file a run writes in its folder: ``--overwrite`` removes them all before the new run
#: starts, and any one of them means "this folder holds a run" (a run killed before its first
#: checkpoint may have left only ``best.npz``)
RUN_OUTPUTS = (
    CHECKPOINT,
    "best.npz",
    "metrics.json",
    "loss_curve.png",
    "val_curve.png",
    "detections.png",
)
RUN_FILES = RUN_OUTPUTS


def run_files_in(folder) -> list:
    """The names of :data:`RUN_OUTPUTS` present in ``folder``."""
    return [f for f in RUN_OUTPUTS if os.path.lexists(os.path.join(folder, f))]


def holds_run(folder) -> bool:
    """True if ``folder`` holds any output of a run (:data:`RUN_OUTPUTS`)."""
    return bool(run_files_in(folder))


def _numbered(base: str, k: int) -> str:
    return base if k == 1 else f"{base}{k}"


def next_run_folder(base: str = "runs/train") -> str:
    """``base`` if it holds no run, else the first of ``base2``, ``base3``, ... that holds none
    (and is not in use by a running run)."""
    k = 1
    while True:
        folder = _numbered(base, k)
        if not os.path.exists(folder) or (
            os.path.isdir(folder) and not holds_run(folder) and lock_owner(folder) is None
        ):
            return folder
        k += 1


def latest_run_folder(base: str = "runs/train") -> str | None:
    """The highest-numbered of ``base``, ``base2``, ... that holds a checkpoint, or None."""
    found, k, misses = None, 1, 0
    while misses < 20:  # numbers may have gaps (a folder removed by hand)
        folder = _numbered(base, k)
        if os.path.isfile(os.path.join(folder, CHECKPOINT)):
            found, misses = folder, 0
        elif not os.path.exists(folder):
            misses += 1
        k += 1
    return found


def guard_existing_run(folder, *, resume: bool, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to train into a folder that holds a run unless ``resume`` or ``overwrite``.

    With ``overwrite`` the previous run's outputs (:data:`RUN_OUTPUTS`) are removed first, so
    the folder never mixes two runs.
    """
    if resume and overwrite:
        raise MinirccnError("--resume and --overwrite: choose one")
    found = run_files_in(folder)
    if resume or not found:
        return
    if not overwrite:
        raise MinirccnError(
            f"{flag} {folder}: holds a run already ({', '.join(found)}); continue it with "
            "--resume, replace it with --overwrite, or choose another --out"
        )
    removed = []
    for name in found:
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            try:
                os.unlink(path)
            except OSError as exc:
                raise MinirccnError(
                    f"--overwrite: cannot remove {path} ({exc.strerror or exc})"
                ) from None
            removed.append(name)
    note(f"--overwrite: removed the previous run's {', '.join(removed)} from {folder}")


# ----------------------------------------------------------------------------- the run lock


def lock_owner(folder) -> int | None:
    """The pid of the live process holding ``folder``'s run lock, or None."""
    path = os.path.join(os.fspath(folder), LOCK_NAME)
    if not os.path.exists(path):
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        locked = _try_flock(fd)
        pid = _read_pid(path)
        if locked is None:
            return pid if pid and pid_alive(pid) else None
        if locked:
            return None  # nobody holds it (closing drops our probe lock)
        return pid or -1
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    """True: locked; False: another open file holds it; None: no flock here (pid alone)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): rely on the pid alone
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:  # a file system without flock: rely on the pid alone
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.read(200).split()
        return int(first[0]) if first else None
    except (OSError, ValueError):
        return None


class RunLock:
    """One run per folder: ``OUT/.minirccn.lock`` holds the owner's pid under an ``flock``.

    The operating system drops an ``flock`` when its process dies, however it dies, so a lock
    left by a killed run is *stale*: the next run takes it over with a note. A lock held by a
    live process (another run in the same folder) is a :class:`MinirccnError` naming its pid.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, folder, flag: str = "--out"):
        self.folder = os.fspath(folder)
        self.flag = flag
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd = None

    def acquire(self) -> "RunLock":
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MinirccnError(
                    f"{self.flag} {self.folder}: cannot create the run lock {self.path} "
                    f"({exc.strerror or exc})"
                ) from None
            locked = _try_flock(fd)
            old = _read_pid(self.path)
            if locked is None and old and old != os.getpid() and pid_alive(old):
                locked = False  # no flock on this file system: a live pid holds the folder
            if not locked:
                os.close(fd)
                pid = old
                who = f"pid {pid}" if pid else "another process"
                raise MinirccnError(
                    f"{self.flag} {self.folder}: another minirccn run ({who}) is using this "
                    f"folder; wait for it to finish or choose another {self.flag}"
                )
            try:  # the file we locked must still be the one at self.path (not unlinked meanwhile)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            if old and old != os.getpid():
                note(
                    f"{self.folder}: took over a stale run lock (pid {old} is no longer "
                    "running in this folder)"
                )
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)[:500]}\n".encode())
            self._fd = fd
            removed = remove_stale_temps(self.folder, any_legacy=True)
            if removed:
                note(
                    f"{self.folder}: removed {len(removed)} temporary file(s) of an interrupted "
                    f"save: {', '.join(removed[:3])}"
                )
            return self
        raise MinirccnError(f"{self.flag} {self.folder}: cannot take the run lock {self.path}")

    def release(self) -> None:
        if self._fd is None:
            return
        remove_quietly(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- signals


class Interrupted(MinirccnError):
    """Training stopped on SIGINT / SIGTERM after saving; the CLI exits ``128 + signum``."""

    def __init__(self, signum: int, message: str, checkpoint: str | None = None, step: int = 0):
        super().__init__(message)
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.step = int(step)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """SIGINT and SIGTERM during a run: stop cleanly, never lose the steps done.

    While :attr:`defer` is True (the training loop and its checkpoint saves) the first signal
    only sets :attr:`signum`; the loop polls :meth:`requested` after each step, saves a
    checkpoint at the step it has finished and raises :class:`Interrupted`. A second signal
    abandons the step at once (``KeyboardInterrupt``; the last saved checkpoint is kept and a
    save in progress leaves no partial file). While :attr:`defer` is False (loading data,
    evaluating) a signal stops at once. Outside the main thread it installs nothing.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signum = None
        self.defer = False
        self._previous = {}

    def _handle(self, signum, frame):
        first = self.signum is None
        if first:
            self.signum = signum
        if self.defer and first:
            note(
                f"{signal.Signals(signum).name}: finishing the current step, then saving a "
                "checkpoint (a second signal stops at once)"
            )
            return
        if self.defer:
            note("second signal: stopping now; the last saved checkpoint is kept")
        raise KeyboardInterrupt

    def requested(self) -> bool:
        """True once a signal has asked the run to stop."""
        return self.signum is not None

    def interrupted(self, step: int, checkpoint: str | None) -> Interrupted:
        """The :class:`Interrupted` to raise after saving ``checkpoint`` at ``step``."""
        name = signal.Signals(self.signum or signal.SIGINT).name
        where = f"; checkpoint at step {step} saved to {checkpoint}" if checkpoint else ""
        return Interrupted(
            self.signum or signal.SIGINT, f"{name}: stopped at step {step}{where}", checkpoint, step
        )

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        _STOPS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if _STOPS and _STOPS[-1] is self:
            _STOPS.pop()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


_STOPS: list = []
_PENDING = {"signum": None}  # a signal seen by the early handler (before a run's own handlers)


def _early_handler(signum, frame):
    _PENDING["signum"] = signum
    raise KeyboardInterrupt


@contextlib.contextmanager
def early_signals():
    """From the very start of the CLI: SIGINT and SIGTERM raise ``KeyboardInterrupt`` *and*
    are remembered, so that one swallowed by a library while it is imported still stops the
    run (:func:`guarded_run` checks) instead of being lost."""
    _PENDING["signum"] = None
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in StopOnSignal.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, _early_handler)
    try:
        yield _PENDING
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _PENDING["signum"] = None


def pending_signal() -> int | None:
    """The signal number the early handler saw (SIGTERM exits 143, not 130)."""
    return _PENDING["signum"]


def current_stop() -> StopOnSignal:
    """The :class:`StopOnSignal` of the run in progress (an inactive one outside a run)."""
    return _STOPS[-1] if _STOPS else StopOnSignal()


def guarded_run(fn):
    """Decorate a training function that takes ``out``, ``resume`` and ``overwrite``.

    Before ``fn`` runs (in milliseconds, before any data is read): ``--resume`` needs a
    checkpoint in ``out``; ``out`` must be a writable folder (:func:`check_out_folder`); its
    run lock is taken (:class:`RunLock`, which also removes temporary files of a killed save);
    a folder that holds a run needs ``resume`` or ``overwrite`` (:func:`guard_existing_run`).
    While ``fn`` runs, :class:`StopOnSignal` is active; a signal that stops it outside the
    training loop becomes :class:`Interrupted`. With ``out=None`` (nothing written) ``fn``
    simply runs.
    """
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        out = bound.arguments.get("out")
        if not out:
            return fn(*args, **kwargs)
        out = os.fspath(out)
        resume = bool(bound.arguments.get("resume"))
        overwrite = bool(bound.arguments.get("overwrite"))
        ckpt = os.path.join(out, CHECKPOINT)
        if resume and not os.path.isfile(ckpt):
            raise MinirccnError(f"--resume: no checkpoint at {ckpt}")
        check_out_folder(out)
        with RunLock(out):
            guard_existing_run(out, resume=resume, overwrite=overwrite)
            with StopOnSignal() as stop:
                try:
                    if _PENDING["signum"] is not None:  # arrived while loading the code
                        stop.signum = _PENDING["signum"]
                        raise KeyboardInterrupt
                    return fn(*args, **kwargs)
                except KeyboardInterrupt:
                    signum = stop.signum or signal.SIGINT
                    kept = (
                        f"; the last checkpoint saved is {ckpt}"
                        if os.path.isfile(ckpt)
                        else "; no checkpoint was saved"
                    )
                    raise Interrupted(
                        signum,
                        f"{signal.Signals(signum).name}: stopped{kept}",
                        ckpt if os.path.isfile(ckpt) else None,
                    ) from None

    return wrapper


def resume_command(argv: list, out: str) -> str:
    """The command line that resumes a run started with ``argv`` (``minirccn`` arguments)."""
    import shlex

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--out", "--overwrite", "--resume"):
            skip = a == "--out"
            continue
        if a.startswith("--out="):
            continue
        args.append(a)
    return shlex.join(["minirccn", *args, "--out", out, "--resume"])
