"""Files are never half-written: atomic writes, temporary-file names, writable folders.

====================================  ==============================================
guarantee                             piece
====================================  ==============================================
no half-written file                  :func:`atomic_path` (temp file in the same
                                      folder, ``fsync``, ``os.replace``)
leftovers of a killed save are gone   :func:`remove_stale_temps`
an unusable ``--out`` fails at once   :func:`check_out_folder` (before any data)
nothing the user did not ask to       :func:`check_replace` (an existing output needs
replace is replaced                   ``--overwrite``; an input is never an output),
                                      :func:`distinct_names` (outputs of one command
                                      never share a name), :func:`next_free` (a
                                      default output name never replaces anything)
====================================  ==============================================

The one rule of every command that writes (train, detect, data export, data preview, bench,
lineage): nothing the user did not ask to replace is replaced. Two outputs of one command get
distinct names; an output that exists already is refused with one line naming it unless the
user gave ``--overwrite``; an output that would be one of the command's own inputs is refused
even then; a default name (no ``--out`` given) moves on to the next free one (``preview2.png``,
``detections2``, ``runs/train2``) with a note.

A temporary file is named ``.<name>.tmp-<pid>-<random><ext>`` (the extension kept, so writers
that infer the format from the name still work); a leftover whose pid is no longer running is
removed at the next start in that folder. Used by every layer that writes (viz, data export,
checkpoints, run folders).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets

from minirccn.core.errors import MinirccnError, note

_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+(\.[A-Za-z0-9]+)?$")
_LEGACY_TEMP_RE = re.compile(r"^\.checkpoint-.+\.tmp$")  # mkstemp names of older versions


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
        remove_quietly(tmp)
        kept = "; the previous one is kept" if os.path.isfile(path) else ""
        raise MinirccnError(
            f"{path}: cannot write the {what} ({exc.strerror or exc}){kept}"
        ) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    _fsync_folder(folder)


def remove_quietly(path: str) -> None:
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
    return write_text(path, json.dumps(obj, **dump_kwargs), what)


def save_image(image, path, what: str = "image", **options) -> str:
    """Save a PIL image to ``path`` atomically (the format from ``path``'s extension)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    with atomic_path(path, what) as tmp:
        image.save(tmp, format=fmt, **options)
    return os.fspath(path)


def pid_alive(pid: int) -> bool:
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
        stale = (m is not None and not pid_alive(int(m.group(1)))) or (
            any_legacy and _LEGACY_TEMP_RE.match(name) is not None
        )
        if stale:
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def existing_file(path, what: str = "file", flag: str = "") -> str:
    """``path`` as a ``str`` if it names a file, else one :class:`MinirccnError` naming it:
    ``"[FLAG ]PATH: WHAT not found"`` (``what``: "checkpoint file", "config file", ...)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinirccnError(f"{flag + ' ' if flag else ''}{path}: {what} not found")
    return path


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
        remove_quietly(probe)
    return folder


# ----------------------------------------------------------------------------- the rule of every writer


def check_replace(paths, *, overwrite: bool = False, inputs=(), flag: str = "--out", where=None) -> list:
    """Apply the rule (module docstring) to the files a command is about to write.

    Args:
        paths: every file the command will write.
        overwrite: the user asked to replace existing files (``--overwrite``).
        inputs: files the command reads; none of them is ever replaced, ``overwrite`` or not.
        flag, where: the flag and value named in the messages (``where`` default: the folder
            of the first path).

    Returns:
        The paths that exist already (replaced, with ``overwrite``), in order.

    Raises:
        MinirccnError: one line naming the input that would be replaced, or the first file
            that exists already (and how many more) with the two ways out.
    """
    paths = [os.fspath(p) for p in paths]
    if where is None:
        where = os.path.dirname(paths[0]) if paths else ""
    by_name, by_inode = {}, {}  # an input by its real path and by (device, inode)
    for inp in inputs:
        inp = os.fspath(inp)
        by_name.setdefault(os.path.realpath(inp), inp)
        try:
            st = os.stat(inp)
            by_inode.setdefault((st.st_dev, st.st_ino), inp)
        except OSError:
            pass
    for path in paths:
        inp = by_name.get(os.path.realpath(path))
        if inp is None and by_inode:
            try:
                st = os.stat(path)
                inp = by_inode.get((st.st_dev, st.st_ino))
            except OSError:
                pass
        if inp is not None:
            raise MinirccnError(
                f"{flag} {where}: the output {path} would replace the input {inp}; "
                f"choose another {flag}"
            )
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of its outputs)" if len(existing) > 1 else ""
        raise MinirccnError(
            f"{flag} {where}: {existing[0]} exists already{more}; add --overwrite to replace, "
            f"or choose another {flag}"
        )
    for p in existing:
        if os.path.isdir(p) and not os.path.islink(p):
            raise MinirccnError(f"{flag} {where}: {p} is a folder, not a file; choose another {flag}")
    return existing


def distinct_names(stems, taken=()) -> list:
    """``stems`` made distinct from each other and from ``taken``.

    A stem keeps its own name when it is free; a repeated one gets the first free
    ``<stem>_<k>``, where every input stem counts as taken: ``x/same.png, y/same.png,
    same_1.png`` give ``same, same_2, same_1`` (three names for three inputs). Names compare
    without case (``A.png`` and ``a.png`` are one file on macOS and Windows).
    """
    stems = [str(s) for s in stems]
    used = {t.casefold() for t in taken}
    reserved = {}
    for s in stems:
        reserved[s.casefold()] = reserved.get(s.casefold(), 0) + 1
    out = []
    for s in stems:
        key = s.casefold()
        if key not in used:
            name = s
        else:
            k = 1
            while f"{s}_{k}".casefold() in used or f"{s}_{k}".casefold() in reserved:
                k += 1
            name = f"{s}_{k}"
        used.add(name.casefold())
        out.append(name)
    return out


def next_free(path, is_free=None) -> str:
    """``path`` if it is free, else the first free of ``<stem>2<ext>``, ``<stem>3<ext>``, ...
    (``preview.png`` -> ``preview2.png``; ``detections`` -> ``detections2``). ``is_free``
    (default: the path does not exist) decides what free means."""
    path = os.fspath(path)
    is_free = is_free or (lambda p: not os.path.lexists(p))
    stem, ext = os.path.splitext(path)
    if os.path.isdir(path) or not ext:
        stem, ext = path, ""
    k = 1
    while True:
        candidate = path if k == 1 else f"{stem}{k}{ext}"
        if is_free(candidate):
            return candidate
        k += 1


def default_output(default: str, what: str, taken: str = "exists", is_free=None) -> str:
    """The output a command writes when none was given: ``default``, or the first free name
    after it (:func:`next_free`), said in one note (``"<default> <taken>; <what> to <path>"``)."""
    path = next_free(default, is_free)
    if path != default:
        note(f"{default} {taken}; {what} to {path}")
    return path
