"""The dispatch table: complete, importable, mirrored, and the only place that picks a kernel."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minirccn.core.backend import BACKENDS
from minirccn.core.dispatch import IMPLEMENTATIONS, KERNELS, TABLE, kernel

PACKAGE = Path(__file__).resolve().parents[2] / "minirccn"

#: every op a public function looks up, by the module that looks it up
USERS = {
    "minirccn/ops/boxes.py": {"box_area", "box_iou", "clip_boxes", "remove_small_boxes"},
    "minirccn/ops/box_coder.py": {"encode_boxes", "decode_boxes"},
    "minirccn/ops/nms.py": {"nms_sorted"},
    "minirccn/ops/roi_pool.py": {"roi_pool", "roi_pool_backward"},
    "minirccn/ops/roi_align.py": {"roi_align", "roi_align_backward"},
    "minirccn/nn/conv.py": {"conv2d", "conv2d_backward", "conv2d_relu", "conv2d_relu_backward"},
    "minirccn/nn/conv_levels.py": {"conv2d_levels", "conv2d_levels_backward"},
    "minirccn/nn/pool.py": {"max_pool2d", "max_pool2d_backward"},
    "minirccn/nn/layers.py": {
        "relu",
        "relu_backward",
        "linear",
        "linear_backward",
        "batchnorm2d",
        "batchnorm2d_backward",
        "batchnorm2d_relu",
        "batchnorm2d_relu_backward",
    },
    "minirccn/proposals/segmentation.py": {"felzenszwalb"},
    "minirccn/detector/matching.py": {"match"},
    "minirccn/nn/losses.py": {"labeled_focal_loss"},
}


def test_every_op_has_every_backend_the_ops_accept():
    for op, row in TABLE.items():
        assert set(BACKENDS) <= set(row), f"{op}: missing {set(BACKENDS) - set(row)}"
        assert set(row) <= set(IMPLEMENTATIONS), op
    assert len(KERNELS) == sum(len(row) for row in TABLE.values())


def test_the_table_holds_exactly_the_ops_the_code_looks_up():
    root = PACKAGE.parent
    looked_up = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        ops = set(re.findall(r'kernel\("(\w+)"', path.read_text()))
        if ops:
            looked_up[str(path.relative_to(root))] = ops
    assert looked_up == USERS
    assert set().union(*USERS.values()) == set(TABLE)


@pytest.mark.parametrize("op, impl", sorted(KERNELS))
def test_every_entry_imports_and_follows_the_convention(op, impl):
    fn = kernel(op, impl)
    assert callable(fn)
    module, _, name = KERNELS[op, impl].partition(":")
    assert fn.__module__ == module and fn.__name__ == name
    reference_module = TABLE[op]["numpy"].partition(":")[0]
    if module.startswith("minirccn.kernels."):
        # kernels: <op>_<impl> (a backend may reuse another's kernel), in the kernel module
        # with the reference module's stem
        assert name in {f"{op}_{i}" for i in IMPLEMENTATIONS} - {f"{op}_numpy"}
        assert module.rsplit(".", 1)[1] == reference_module.rsplit(".", 1)[1]
        # ... with the reference's parameters
        reference = kernel(op, "numpy")
        assert (
            inspect.signature(fn).parameters.keys()
            == inspect.signature(reference).parameters.keys()
        )
    else:
        assert module == reference_module  # a backend without a kernel runs the reference


def test_missing_pairs_raise_a_clear_error():
    with pytest.raises(NotImplementedError, match=r"'box_iou' has no 'cudac' .*numpy, numba, cuda"):
        kernel("box_iou", "cudac")
    with pytest.raises(NotImplementedError, match="no op 'box_giou'"):
        kernel("box_giou", "numba")


def test_no_op_chooses_its_backend_by_hand():
    # the table is the only place naming kernels: no import of minirccn.kernels and no
    # comparison with a backend name outside it
    for path in sorted((PACKAGE / "ops").glob("*.py")) + sorted((PACKAGE / "nn").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) minirccn(\.kernels| import kernels)", text, re.M)
        assert not re.search(r"""[=!]= *["'](numpy|numba|cuda)["']""", text), path


def test_importing_the_ops_and_layers_does_not_import_numba():
    code = (
        "import sys, minirccn.ops, minirccn.nn.layers, minirccn.core.dispatch; "
        "assert 'numba' not in sys.modules, 'numba imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
