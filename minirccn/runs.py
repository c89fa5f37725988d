"""A run is never lost: output folders, the run lock, atomic writes and signals.

The guarantees of ``minirccn train`` (README, "Your runs are safe") and the pieces that keep them:

======================================  ==============================================
guarantee                               piece
======================================  ==============================================
an unusable ``--out`` fails in seconds  :func:`check_out_folder` (before any data)
the default folder never overwrites     :func:`next_run_folder` (``runs/train``,
                                        ``runs/train2``, ... as Ultralytics does)
an explicit ``--out`` holding a run     :func:`guard_existing_run` (needs ``--resume``
needs ``--resume`` or ``--overwrite``   or ``--overwrite``)
one run per folder at a time            :class:`RunLock` (``OUT/.minirccn.lock``: an
                                        ``flock`` plus the owner's pid)
no half-written file                    :func:`atomic_path` (temp file in the same
                                        folder, ``fsync``, ``os.replace``)
leftovers of a killed save are removed  :func:`remove_stale_temps`
Ctrl-C / SIGTERM save the current step  :class:`StopOnSignal` + :class:`Interrupted`
======================================  ==============================================

A temporary file is named ``.<name>.tmp-<pid>-<random><ext>`` (the extension kept, so writers
that infer the format from the name still work); a leftover whose pid is no longer running is
removed at the next start in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import sys
import threading

from minirccn.errors import MinirccnError

LOCK_NAME = ".minirccn.lock"
CHECKPOINT = "checkpoint.npz"
#: files whose presence means "this folder holds a run"
RUN_FILES = (CHECKPOINT, "metrics.json")
#: the outputs of a run that ``--overwrite`` removes before the new run starts
RUN_OUTPUTS = (CHECKPOINT, "metrics.json", "loss_curve.png", "detections.png")
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+(\.[A-Za-z0-9]+)?$")
_LEGACY_TEMP_RE = re.compile(r"^\.checkpoint-.+\.tmp$")  # mkstemp names of older versions


def note(message: str) -> None:
    """Print ``minirccn: note: <message>`` on stderr (what the run did on the user's behalf)."""
    print(f"minirccn: note: {message}", file=sys.stderr, flush=True)


def describe_os_error(exc: OSError, path=None) -> str:
    """``"<file>: <reason>"`` for an ``OSError``, naming ``path`` when the error does not."""
    name = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    return f"{os.fspath(name)}: {reason}" if name is not None else reason


# ----------------------------------------------------------------------------- permissions


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


# ----------------------------------------------------------------------------- atomic writes


def _temp_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(name)[1]
    if not re.fullmatch(r"\.[A-Za-z0-9]+", ext or "."):
        ext = ""
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")


@contextlib.contextmanager
def atomic_path(path, what: str = "file"):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Write the whole file to the yielded path (any writer: ``open``, ``numpy.savez``,
    ``PIL.Image.save(..., format=...)``); when the block ends without an exception the file is
    ``fsync``-ed, given the permissions of a normally created file (``0o666 & ~umask``) and
    ``os.replace``-d over ``path``. On any exception (including ``KeyboardInterrupt``) the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        MinirccnError: naming ``path`` for an ``OSError`` (disk full, permission denied, ...),
            and saying that the previous file, if any, is kept.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _temp_name(path)
    try:
        os.makedirs(folder, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        kept = "; the previous one is kept" if os.path.isfile(path) else ""
        raise MinirccnError(
            f"{path}: cannot write the {what} ({exc.strerror or exc}){kept}"
        ) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(folder)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text: str, what: str = "file") -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return os.fspath(path)


def write_json(path, obj, what: str = "file", **dump_kwargs) -> str:
    """``json.dump(obj)`` to ``path`` atomically; returns ``path``."""
    import json

    return write_text(path, json.dumps(obj, **dump_kwargs), what)


def save_image(image, path, what: str = "image", **options) -> str:
    """Save a PIL image to ``path`` atomically (the format from ``path``'s extension)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    with atomic_path(path, what) as tmp:
        image.save(tmp, format=fmt, **options)
    return os.fspath(path)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def remove_stale_temps(folder, any_legacy: bool = False) -> list:
    """Remove temporary files left in ``folder`` by a killed save; returns their names.

    Removed: ``.<name>.tmp-<pid>-...`` files whose pid no longer runs, and (``any_legacy``,
    for a folder whose run lock is held) ``.checkpoint-*.tmp`` files of older versions.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        stale = (m is not None and not _pid_alive(int(m.group(1)))) or (
            any_legacy and _LEGACY_TEMP_RE.match(name) is not None
        )
        if stale:
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


# ----------------------------------------------------------------------------- output folders


def check_out_folder(folder, flag: str = "--out") -> str:
    """Make sure ``folder`` exists (created if missing) and a file can be written in it.

    Runs in milliseconds, before any data is read, so that a run never trains for an hour and
    then fails to save.

    Raises:
        MinirccnError: naming ``flag`` and ``folder``: it is a file, a parent is a file, or the
            folder cannot be created or written (read-only, no permission, disk full).
    """
    folder = os.fspath(folder)
    if not folder:
        raise MinirccnError(f"{flag}: expected a folder name, got an empty string")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MinirccnError(f"{flag} {folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise MinirccnError(
            f"{flag} {folder}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    probe = os.path.join(folder, f".write-test.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"minirccn")
        finally:
            os.close(fd)
    except OSError as exc:
        raise MinirccnError(
            f"{flag} {folder}: cannot write in this folder ({exc.strerror or exc})"
        ) from None
    finally:
        _remove_quietly(probe)
    return folder


def holds_run(folder) -> bool:
    """True if ``folder`` holds the outputs of a run (a checkpoint or metrics.json)."""
    return any(os.path.exists(os.path.join(folder, f)) for f in RUN_FILES)


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
    if resume or not holds_run(folder):
        return
    if not overwrite:
        raise MinirccnError(
            f"{flag} {folder}: holds a run already; continue it with --resume, replace it with "
            "--overwrite, or choose another --out"
        )
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
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
            return pid if pid and _pid_alive(pid) else None
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
            if locked is None and old and old != os.getpid() and _pid_alive(old):
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
        _remove_quietly(self.path)
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
