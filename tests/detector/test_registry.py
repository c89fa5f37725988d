"""The model table and what each kind says about itself: the code outside the registry asks a
class attribute (``PROPOSALS``, ``TORCHVISION``, ``ALTERNATING``) or the registry, never the
kind's name."""

import ast
from pathlib import Path

import numpy as np

from minirccn.config import preset
from minirccn.detector import registry

PACKAGE = Path(__file__).resolve().parents[2] / "minirccn"
#: where a kind's name may stand in a comparison: the table itself, and the config layer's
#: RetinaNet preset (config sits below the detector, so it cannot ask the registry)
ALLOWED = {"detector/registry.py", "config/presets.py"}


def test_each_kind_says_where_its_proposals_come_from():
    kinds = {name: registry.model_class(name) for name in registry.MODELS}
    assert {n: c.PROPOSALS for n, c in kinds.items()} == {
        "fasterrcnn": "rpn",
        "retinanet": "",
        "fastrcnn": "external",
        "rcnn": "external",
    }
    assert [n for n, c in kinds.items() if c.TORCHVISION] == ["fasterrcnn"]
    assert [n for n, c in kinds.items() if c.ALTERNATING] == ["fasterrcnn"]


def test_the_default_model_comes_from_the_table():
    assert registry.default_model() == registry.DEFAULT_MODEL == "fasterrcnn"
    assert registry.default_model(external_proposals=True) == "fastrcnn"


def test_metrics_name_the_kind_except_the_default():
    names = ["__background__", "a"]
    rng = np.random.default_rng(0)
    default = registry.build_model(preset("tiny"), names, rng=rng)
    retina = registry.build_model(preset("tiny", model="retinanet"), names, rng=rng)
    assert registry.model_record(default) == {}
    assert registry.model_record(retina) == {"model": "retinanet"}


def _kind_comparisons(tree) -> list:
    """Line numbers of comparisons with a kind's name: ``x == "retinanet"``, ``x in ("rcnn", ...)``."""
    kinds = set(registry.MODELS)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            if any(isinstance(v, ast.Constant) and v.value in kinds for v in values):
                found.append(node.lineno)
    return found


def test_no_branch_on_a_kind_name_outside_the_registry():
    branches = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = _kind_comparisons(ast.parse(path.read_text(encoding="utf-8")))
        if lines and rel not in ALLOWED:
            branches[rel] = lines
    assert branches == {}


def test_the_branch_check_can_fail():
    tree = ast.parse('if cfg.model == "retinanet":\n    pass\nok = name in ("rcnn", "fastrcnn")\n')
    assert _kind_comparisons(tree) == [1, 3]
