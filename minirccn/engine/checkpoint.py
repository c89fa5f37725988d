"""Save and load a detector (weights, optimiser state, config, RNG state) as one ``.npz``.

Layout of the archive (plain ``numpy.savez``, readable with ``numpy.load``):

================  ==============================================================
key               content
================  ==============================================================
``meta``          JSON string: format version, config, class names, step, RNG
                  state, optimiser scalars, anything in ``extra``
``param/<name>``  each model parameter
``optim/<path>``  each array of the optimiser's ``state_dict()`` (nested keys
                  joined with ``/``)
================  ==============================================================

Writes are atomic (:func:`minirccn.core.files.atomic_path`): the archive goes to a temporary file in
the same folder, is ``fsync``-ed, given the permissions of the other outputs, then
``os.replace``-d over the target. A crash leaves either the old checkpoint or the new one,
never half of one; a failed save (disk full) names the file and keeps the previous one.

Reads are checked before any array is read (:func:`inspect_checkpoint`): the metadata, the
config (:func:`~minirccn.engine.checks.check_config`) and the *headers* of the arrays (shape,
dtype, size); the parameters' shapes are compared with the layers the config builds, computed
without allocating them (:func:`param_shapes`): a crafted checkpoint cannot make the loader
allocate terabytes. :func:`check_resume` checks ``--resume`` against the data (same classes in
the same order), the steps (``--iters`` not fewer than the saved step) and the seed (a
different ``--seed`` only with ``--reseed``).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from minirccn.config.checks import MAX_COUNT, is_int
from minirccn.config.presets import DetectorConfig
from minirccn.core.backend import to_numpy
from minirccn.core.errors import MinirccnError
from minirccn.core.files import atomic_path
from minirccn.detector.registry import build_model, init_model_params
from minirccn.engine.checks import check_config

FORMAT = "minirccn-checkpoint"
VERSION = 1


def _flatten(tree, prefix: str, arrays: dict) -> object:
    """Move the arrays of a nested dict/list into ``arrays`` (keyed by path); return a JSON skeleton."""
    if isinstance(tree, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray) or hasattr(tree, "__cuda_array_interface__"):
        arrays[prefix] = to_numpy(tree)
        return {"__array__": prefix}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _unflatten(skeleton, arrays):
    """Inverse of :func:`_flatten`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return np.array(arrays[skeleton["__array__"]])
        return {k: _unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, arrays) for v in skeleton]
    return skeleton


def save_checkpoint(
    path, model, *, optimizer_state=None, step: int = 0, rng_state=None, extra: dict | None = None
) -> str:
    """Write ``model`` and training state to ``path`` atomically.

    Args:
        path: target ``.npz`` file (its folder is created if missing).
        model: a :class:`~minirccn.detector.base.Detector`.
        optimizer_state: the optimiser's ``state_dict()`` (nested dicts of arrays
            and JSON scalars), or None.
        step: SGD steps done.
        rng_state: ``Generator.bit_generator.state`` of the training RNG, or None.
        extra: more JSON-serialisable information (losses so far, ...).

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    arrays = {f"param/{k}": to_numpy(v) for k, v in model.params.items()}
    optim_skeleton = (
        _flatten(optimizer_state, "optim", arrays) if optimizer_state is not None else None
    )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.loads(model.config.to_json()),
        "class_names": list(model.class_names),
        "step": int(step),
        "rng_state": rng_state,
        "optimizer": optim_skeleton,
        "extra": extra or {},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path, f"checkpoint (step {int(step)})") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(model, state)``: the :class:`~minirccn.detector.base.Detector` of the config, with host (NumPy)
        arrays, and a dict with ``step``, ``optimizer`` (state dict or None),
        ``rng_state`` (or None), ``extra``.

    Raises:
        MinirccnError: naming ``path`` if it is missing, corrupt, or not a
            compatible minirccn checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MinirccnError(f"{path}: checkpoint not found")
    # metadata, config (types, ranges) and every array's header, checked before any array is
    # read: the parameters' shapes must be the ones the config builds (computed without memory)
    checked = inspect_checkpoint(path)
    meta, config = checked["meta"], checked["config"]
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        class_names = list(meta["class_names"])
        params = {k[len("param/") :]: v for k, v in files.items() if k.startswith("param/")}
        params = {k: _native(v) for k, v in params.items()}
        for k in sorted(params):
            bad = int(np.size(params[k]) - np.count_nonzero(np.isfinite(params[k])))
            if bad:
                raise MinirccnError(
                    f"{path}: parameter {k} holds {bad} NaN or infinite values of "
                    f"{params[k].size} (a diverged run or a damaged file); not used"
                )
        model = build_model(config, class_names, params=params)
        optimizer = None
        if meta.get("optimizer") is not None:
            optimizer = _unflatten(meta["optimizer"], files)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise MinirccnError(f"{path}: incompatible checkpoint ({exc.__class__.__name__}: {exc})") from None
    state = {
        "step": int(meta.get("step", 0)),
        "optimizer": optimizer,
        "rng_state": meta.get("rng_state"),
        "extra": meta.get("extra") or {},
    }
    return model, state


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in the machine's byte order (a big-endian float32 array is a float32 array)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- shapes, no memory


class _ShapeOnly(np.ndarray):
    """A zero-strided stand-in array: arithmetic and ``astype`` keep it zero-strided, so a
    ``(10**6, 10**6)`` weight costs no memory while its shape and dtype are traced."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or "out" in kwargs:
            return NotImplemented
        shape = np.broadcast_shapes(*(np.shape(x) for x in inputs))
        dtype = np.result_type(*(x.dtype if isinstance(x, np.ndarray) else x for x in inputs))
        return _lazy(shape, dtype)

    def astype(self, dtype, *args, **kwargs):
        return _lazy(self.shape, dtype)

    def copy(self, *args, **kwargs):
        return self


def _lazy(shape, dtype) -> np.ndarray:
    return np.broadcast_to(np.zeros((), dtype), tuple(int(s) for s in shape)).view(_ShapeOnly)


class _ShapeRNG(np.random.Generator):
    """A Generator whose draws are :class:`_ShapeOnly` arrays (the shapes, not the numbers)."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return _lazy(() if size is None else np.atleast_1d(size), dtype)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return _lazy(() if size is None else np.atleast_1d(size), np.float64)

    def uniform(self, low=0.0, high=1.0, size=None):
        return _lazy(() if size is None else np.atleast_1d(size), np.float64)


def param_shapes(config, num_classes: int) -> dict:
    """``{name: (shape, dtype)}`` of the parameters ``config`` builds, without allocating them.

    Runs the model's own ``init_params`` with a Generator whose draws are zero-strided
    stand-ins, so the answer always matches the model code. ``config`` must have passed
    :func:`~minirccn.engine.checks.check_config` (that bounds the few small arrays built with ``np.zeros``).
    """
    params = init_model_params(config, int(num_classes), _ShapeRNG())
    return {k: (tuple(int(s) for s in v.shape), np.dtype(v.dtype)) for k, v in params.items()}


# ----------------------------------------------------------------------------- checkpoints

MAX_META_BYTES = 256 << 20  # the JSON metadata (history of a long run included)


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _array_headers(path: str, zf: zipfile.ZipFile) -> dict:
    """``{key: (shape, dtype, nbytes)}`` from the ``.npy`` headers of the archive's members,
    reading no array data; a header that disagrees with its member's size is an error."""
    headers = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[: -len(".npy")]
        try:
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                offset = fh.tell()
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise MinirccnError(f"{path}: array {key!r} is unreadable ({exc})") from None
        if dtype.hasobject:
            raise MinirccnError(f"{path}: array {key!r} holds Python objects (refused)")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes != info.file_size - offset:
            raise MinirccnError(
                f"{path}: array {key!r} claims shape {shape} ({nbytes} bytes) but holds "
                f"{info.file_size - offset} bytes (truncated or crafted file)"
            )
        headers[key] = (tuple(shape), dtype, nbytes)
    return headers


def inspect_checkpoint(path: str) -> dict:
    """Check checkpoint ``path`` without reading its arrays; return its metadata.

    Checked, in this order: it is a zip archive with a ``meta`` entry of sane size; the
    metadata is a minirccn checkpoint of a supported version; ``class_names``, ``step`` and
    ``config`` have the right types and ranges (:func:`~minirccn.engine.checks.check_config`); every array's header
    agrees with its stored size; the parameters are exactly the ones the config builds, shape
    for shape (:func:`param_shapes`, no allocation), and fit in memory.

    Returns:
        ``{"meta": dict, "config": DetectorConfig, "headers": {key: (shape, dtype, nbytes)}}``.

    Raises:
        MinirccnError: naming ``path`` and what is wrong.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("meta.npy")
            except KeyError:
                raise MinirccnError(f"{path}: not a minirccn checkpoint (no metadata)") from None
            if info.file_size > MAX_META_BYTES:
                raise MinirccnError(
                    f"{path}: metadata of {info.file_size} bytes is too large (crafted file?)"
                )
            headers = _array_headers(path, zf)
            with zf.open(info) as fh:
                meta_array = np.lib.format.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
    try:
        meta = json.loads(str(meta_array))
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise MinirccnError(
            f"{path}: not a readable minirccn checkpoint (metadata: {exc.__class__.__name__})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MinirccnError(f"{path}: not a minirccn checkpoint")
    if meta.get("version") != VERSION:
        raise MinirccnError(
            f"{path}: checkpoint format version {meta.get('version')} is not supported "
            f"(this minirccn reads version {VERSION})"
        )
    names = meta.get("class_names")
    if (
        not isinstance(names, list)
        or not 2 <= len(names) <= MAX_COUNT
        or not all(isinstance(n, str) for n in names)
        or names[0] != "__background__"
        or len(set(names)) != len(names)
    ):
        raise MinirccnError(
            f"{path}: class_names must be a list of distinct strings starting with "
            f"'__background__' and at least one class"
        )
    step = meta.get("step", 0)
    if not is_int(step) or step < 0:
        raise MinirccnError(f"{path}: step must be a non-negative integer, got {step!r}")
    for key in ("extra",):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise MinirccnError(f"{path}: {key} must be a JSON object")
    if not isinstance(meta.get("config"), dict):
        raise MinirccnError(f"{path}: config must be a JSON object")
    try:
        config = DetectorConfig.from_json(json.dumps(meta["config"]))
    except (TypeError, ValueError) as exc:
        raise MinirccnError(f"{path}: {exc}") from None
    check_config(config, f"{path}: config")
    try:
        want = param_shapes(config, len(names))
    except (ValueError, TypeError) as exc:
        raise MinirccnError(f"{path}: config builds no model ({exc})") from None
    total = sum(int(np.prod(s, dtype=object)) * d.itemsize for s, d in want.values())
    if total > _memory_bytes():
        raise MinirccnError(
            f"{path}: its config builds {total / 2**30:.1f} GiB of parameters, more than this "
            "machine's memory (crafted file?)"
        )
    have = {k[len("param/") :]: v for k, v in headers.items() if k.startswith("param/")}
    missing = sorted(set(want) - set(have))
    unknown = sorted(set(have) - set(want))
    bad = sorted(k for k in set(want) & set(have) if have[k][0] != want[k][0])
    if missing or unknown or bad:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unknown[:3]}" if unknown else "",
                ", ".join(
                    f"{k} has shape {have[k][0]}, the config builds {want[k][0]}" for k in bad[:3]
                ),
            )
            if part
        )
        raise MinirccnError(
            f"{path}: incompatible checkpoint: its parameters do not match its config ({detail})"
        )
    want_dtype = np.dtype(config.dtype)
    for k in sorted(have):
        dt = have[k][1]
        if dt.kind != "f" or dt.newbyteorder("=") != want_dtype:
            raise MinirccnError(
                f"{path}: parameter {k} has dtype {dt.str}, its config says {config.dtype}"
            )
    stored = sum(h[2] for h in headers.values())
    if stored > 4 * total + MAX_META_BYTES:  # parameters, momentum, metadata
        raise MinirccnError(
            f"{path}: holds {stored} bytes of arrays for a model of {total} bytes (crafted file?)"
        )
    return {"meta": meta, "config": config, "headers": headers}


# ----------------------------------------------------------------------------- resume


def check_resume(
    ckpt: str,
    state: dict,
    model,
    *,
    class_names,
    data: str,
    iters: int,
    seed: int,
    reseed: bool = False,
) -> None:
    """``--resume`` from ``ckpt`` is consistent with this run, else :class:`MinirccnError`.

    Args:
        state: the state :func:`load_checkpoint` returned.
        model: the checkpoint's model.
        class_names: the training data's class names; must equal the model's, in order.
        data: what ``--data`` named (for the message).
        iters: ``--iters`` of this run; not fewer than the saved step.
        seed: ``--seed`` of this run; must be the saved one unless ``reseed``.
    """
    if state.get("optimizer") is None or state.get("rng_state") is None:
        raise MinirccnError(
            f"--resume: {ckpt} holds no optimiser state (written by --alternating training or "
            "by hand) and cannot be continued"
        )
    if list(model.class_names) != list(class_names):
        raise MinirccnError(
            f"--resume: {ckpt} was trained on classes {list(model.class_names)[1:]}, but "
            f"--data {data} has {list(class_names)[1:]}"
        )
    step = int(state["step"])
    if iters < step:
        raise MinirccnError(
            f"--iters {iters}: fewer than the {step} steps {ckpt} has done already "
            f"(give --iters {step} or more)"
        )
    saved = state.get("extra", {}).get("seed")
    if saved is not None and saved != seed and not reseed:
        raise MinirccnError(
            f"--seed {seed}: {ckpt} was trained with --seed {saved}; give --seed {saved}, or "
            f"add --reseed to continue with seed {seed} (the data order changes from step {step})"
        )
