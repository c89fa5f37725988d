"""The import direction of DESIGN.md, read from the source with ``ast`` (nothing is imported):

    core <- kernels, ops, nn <- data, proposals, config, evaluation, viz <- detector <- engine <- app

A module imports only modules of its own layer or of the layers below it; inside ``detector/``
the order is base, matching, anchors, test_time, backbones <- rpn, roi_heads, dense <- models <- registry;
``engine/`` reaches the detector only through ``registry`` and ``base`` (its Faster R-CNN
recipe, ``alternating``, excepted); nothing imports ``app/``. The module graph has no circle,
and imports written inside functions are few (lazy imports of optional heavy dependencies and
string tables only).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minirccn"
KERNELS = ROOT / "kernels"

#: module-name prefix -> layer (the longest matching prefix wins); lower imports nothing higher
LAYERS = {
    "minirccn.core": 0,
    "minirccn.kernels": 1,
    "minirccn.ops": 1,
    "minirccn.nn": 1,
    "minirccn.data": 2,
    "minirccn.proposals": 2,
    "minirccn.config": 2,
    "minirccn.evaluation": 2,
    "minirccn.viz": 2,
    "minirccn.detector.base": 3.0,
    "minirccn.detector.matching": 3.0,
    "minirccn.detector.anchors": 3.0,
    "minirccn.detector.test_time": 3.0,
    "minirccn.detector.backbones": 3.0,
    "minirccn.detector.rpn": 3.1,
    "minirccn.detector.roi_heads": 3.1,
    "minirccn.detector.dense": 3.1,
    "minirccn.detector.models": 3.2,
    "minirccn.detector.registry": 3.3,
    "minirccn.detector": 3.3,  # the package itself
    "minirccn.engine": 4,
    "minirccn.app": 5,
    "minirccn.__main__": 5,
    "minirccn": 0,  # the package: the alias finder only
}
#: engine may reach into the detector only here
ENGINE_DOORS = ("minirccn.detector.registry", "minirccn.detector.base")
ENGINE_RECIPES = ("minirccn.engine.alternating",)
#: at most this many minirccn imports written inside functions in the whole package
MAX_LOCAL_IMPORTS = 12


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["minirccn", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    for path in sorted(KERNELS.rglob("*.py")):
        rel = path.relative_to(KERNELS).with_suffix("")
        parts = ["minirccn", "kernels", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str):
    """The module ``name`` refers to (a module, or the package an attribute comes from)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, module: str):
    """``[(target module, line, inside a function)]`` of every minirccn import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in child.names] or [base]
            for n in names:
                if n.startswith("minirccn"):
                    target = _resolve(n)
                    if target and target != module:
                        found.append((target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = {m: _imports(p, m) for m, p in MODULES.items()}


def layer(module: str):
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    assert all(layer(m) is not None for m in MODULES)


def test_a_layer_imports_only_itself_and_the_layers_below():
    bad = [
        f"{m}:{line} imports {t}"
        for m, imports in IMPORTS.items()
        for t, line, local in imports
        if m != "minirccn" and layer(t) > layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_the_engine_reaches_the_detector_through_the_registry_and_the_protocol():
    bad = [
        f"{m}:{line} imports {t}"
        for m, imports in IMPORTS.items()
        if m.startswith("minirccn.engine") and m not in ENGINE_RECIPES
        for t, line, _ in imports
        if t.startswith("minirccn.detector") and t not in ENGINE_DOORS and t != "minirccn.detector"
    ]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_commands():
    bad = [
        f"{m}:{line} imports {t}"
        for m, imports in IMPORTS.items()
        if not m.startswith("minirccn.app") and m not in ("minirccn.__main__", "minirccn")
        for t, line, _ in imports
        if t.startswith("minirccn.app")
    ]
    assert not bad, "\n".join(bad)


def _cycles():
    graph = {m: {t for t, _, _ in imports} for m, imports in IMPORTS.items()}  # local ones too
    graph["minirccn"] = set()  # the alias finder names its targets as strings only
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_circle():
    assert _cycles() == []


def test_few_imports_inside_functions():
    local = [f"{m}:{line} {t}" for m, imports in IMPORTS.items() for t, line, inside in imports if inside]
    assert len(local) <= MAX_LOCAL_IMPORTS, "\n".join(local)


@pytest.mark.parametrize("bad", ["minirccn.app.cli", "minirccn.engine.loop"])
def test_the_check_can_fail(bad):
    """A detector module importing upward is caught (the rule is not vacuous)."""
    assert layer(bad) > layer("minirccn.detector.models.faster_rcnn")
