"""The flags several commands share, each written (and checked) once: the data to read
(``--data``, ``--images``), ``--seed``, ``--backend``, ``--no-progress`` and the inference
switch ``--test-flip``.

A command's own flags stay in its module (``add_arguments``); these helpers keep one name,
one default, one help line and one error message per shared flag.
"""

from __future__ import annotations

from minirccn.core.backend import BACKENDS
from minirccn.core.errors import MinirccnError

#: ``--data``'s help where the command reads any layout
DATA_HELP = "'shapes' (default), a VOC root folder, a COCO .json or a .csv file"


def add_data_arguments(parser, help: str = DATA_HELP) -> None:
    """``--data D`` (default ``shapes``) and ``--images DIR`` (the image folder of a COCO or
    CSV file)."""
    parser.add_argument("--data", default="shapes", help=help)
    parser.add_argument("--images", default=None, help="image folder of a COCO/CSV --data")


def add_seed_argument(parser, help: str = "seed of every random choice") -> None:
    """``--seed S`` (default 0); :func:`check_seed` refuses a negative one."""
    parser.add_argument("--seed", type=int, default=0, help=help)


def check_seed(args) -> None:
    """One clear error unless ``args.seed`` is a non-negative integer."""
    if args.seed < 0:
        raise MinirccnError(f"--seed: expected a non-negative integer, got {args.seed}")


def add_backend_argument(parser) -> None:
    """``--backend numpy|numba|cuda`` (default: ``MINIRCCN_BACKEND``, else numba)."""
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="numpy, numba (default) or cuda")


def add_progress_argument(parser) -> None:
    """``--no-progress``: no progress bars (``progress=not args.no_progress``)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_test_flip_argument(parser) -> None:
    """``--test-flip``: turn on the checkpoint's ``test_flip`` (test-time augmentation)."""
    parser.add_argument(
        "--test-flip",
        action="store_true",
        help="also detect on each image's mirror image and merge the two (class-wise NMS): "
        "test-time augmentation, twice the time (default: the checkpoint's test_flip)",
    )
