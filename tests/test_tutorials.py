"""Every tutorial runs top to bottom, in fast mode, and writes at least one PNG.

Each ``tutorials/NN_name.py`` is run as its own process (``python path``), as a
reader would run it, with ``MINIRCCN_TUTORIAL_FAST=1`` (smaller sizes, every
step) and ``MINIRCCN_TUTORIAL_OUT`` pointing into ``tmp_path``. A tutorial is
also a test: its ``T.check`` assertions compare the naive loops, the NumPy
reference and the kernels, so a disagreement exits non-zero here.
``NUMBA_ENABLE_CUDASIM`` is inherited from ``conftest.py`` (the simulator,
unless the caller chose a GPU).

The suite runs them with ``MINIRCCN_TUTORIAL_SOLUTIONS=1``: each exercise stub is
replaced by its worked solution in ``tutorials/solutions/``, so every exercise check is
shown to pass on a right answer (and a wrong answer is shown to fail, below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def test_tutorials_exist():
    assert SCRIPTS, f"no tutorials found in {TUTORIALS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_tutorial_runs(script, tmp_path):
    out = tmp_path / "figures"
    env = dict(
        os.environ,
        MINIRCCN_TUTORIAL_FAST="1",
        MINIRCCN_TUTORIAL_OUT=str(out),
        MINIRCCN_TUTORIAL_SOLUTIONS="1",
        PYTHONHASHSEED="0",
    )
    env.pop("MINIRCCN_TUTORIAL_STUDENT", None)
    env.pop("MINIRCCN_TUTORIAL_CHECKPOINT", None)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the return code is asserted below, with the output
    )
    tail = (result.stdout[-3000:] + "\n--- stderr ---\n" + result.stderr[-3000:]).strip()
    assert result.returncode == 0, f"{script.name} exited {result.returncode}:\n{tail}"
    assert "check passed" in result.stdout, f"{script.name} checked nothing:\n{tail}"
    assert "check FAILED" not in result.stdout, tail
    assert "not done yet" not in result.stdout, f"{script.name}: an exercise has no solution:\n{tail}"
    assert "not right yet" not in result.stdout, f"{script.name}: a solution fails its check:\n{tail}"
    assert "raised" not in "".join(
        line for line in result.stdout.splitlines() if line.startswith("exercise ")
    ), tail
    pngs = sorted(out.glob("*.png"))
    assert pngs, f"{script.name} wrote no PNG into {out}:\n{tail}"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png.name} is not a PNG"


def _run_snippet(tmp_path, code, **env_vars):
    """Run ``code`` as a script that imports tutorials/_common.py; return the finished process."""
    script = tmp_path / "snippet.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(TUTORIALS)!r})\n" + code)
    env = dict(os.environ, **env_vars)
    for key in ("MINIRCCN_TUTORIAL_STUDENT", "MINIRCCN_TUTORIAL_SOLUTIONS"):
        if key not in env_vars:
            env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


FAILING = """import _common as T
T.check(1 + 1 == 2, "arithmetic")
ok = T.check(1 + 1 == 3, "a wrong claim")
print("after the check, it returned", ok)
"""


def test_student_mode_reports_a_failed_check_and_goes_on(tmp_path):
    result = _run_snippet(tmp_path, FAILING, MINIRCCN_TUTORIAL_STUDENT="1")
    assert result.returncode == 0, result.stderr
    assert "check passed: arithmetic" in result.stdout
    assert "check FAILED (student mode: going on): a wrong claim" in result.stdout
    assert "after the check, it returned False" in result.stdout
    assert "1 check(s) failed" in result.stdout and "- a wrong claim" in result.stdout


def test_normal_mode_still_raises_on_a_failed_check(tmp_path):
    result = _run_snippet(tmp_path, FAILING)
    assert result.returncode != 0
    assert "AssertionError: check failed: a wrong claim" in result.stderr
    assert "after the check" not in result.stdout


def test_exercise_reports_not_done_wrong_and_right(tmp_path):
    code = """import _common as T
@T.stub
def answer():
    raise NotImplementedError
T.exercise("9.1", lambda: answer() == 42, "42")
T.exercise("9.2", lambda: 41 == 42, "42")
T.exercise("9.3", lambda: 1 / 0, "no error")
T.exercise("9.4", lambda: 42 == 42, "42")
print("still running")
"""
    result = _run_snippet(tmp_path, code)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "exercise 9.1: not done yet" in out
    assert "exercise 9.2: not right yet. Expected: 42" in out
    assert "exercise 9.3: your code raised ZeroDivisionError" in out
    assert "exercise 9.4: passed" in out
    assert "still running" in out and "exercises: 1 of 4 passed" in out


def test_every_exercise_stub_has_a_solution():
    """Each ``@T.stub`` function of a tutorial has a worked solution of the same name."""
    import ast

    for script in SCRIPTS:
        tree = ast.parse(script.read_text())
        stubs = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            and any(ast.unparse(d) == "T.stub" for d in node.decorator_list)
        ]
        if not stubs:
            continue
        solution = TUTORIALS / "solutions" / script.name
        assert solution.is_file(), f"{script.name} has stubs but no {solution}"
        defined = {
            node.name for node in ast.parse(solution.read_text()).body if isinstance(node, ast.FunctionDef)
        }
        missing = sorted(set(stubs) - defined)
        assert not missing, f"{solution.name} lacks {missing}"


def test_rules_table_is_printed_from_the_config():
    """tutorials/RULES.md is exactly what tutorials/rules.py prints (no hand-typed number)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tutorial_rules", TUTORIALS / "rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (TUTORIALS / "RULES.md").read_text()
    assert committed == module.table(), "RULES.md is stale: run python tutorials/rules.py --write"


REPO = TUTORIALS.parent
DSB_COPY = TUTORIALS / "data" / "dsb"


def _real_sets_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_real_sets", REPO / "scripts" / "make_real_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_18_data_is_small_and_says_where_it_is_from():
    """The nuclei image tutorial 18 ships: under 300 KB, with its provenance and licence."""
    files = sorted(p for p in DSB_COPY.iterdir() if p.is_file())
    assert [p.name for p in files] == ["README.md", "image.png", "mask.png"], files
    assert sum(p.stat().st_size for p in files) < 300_000
    readme = (DSB_COPY / "README.md").read_text()
    for needed in ("stardist", "CC0", "BBBC038", "Caicedo", "--tutorial-copy"):
        assert needed in readme, f"tutorials/data/dsb/README.md does not mention {needed}"


def test_tutorial_18_data_is_the_wheels_when_the_wheel_is_here():
    """The shipped copy is ``scripts/make_real_sets.py``'s dsb source, pixel for pixel (skipped
    unless ``python scripts/make_real_sets.py`` has downloaded the wheel: no network here)."""
    import numpy as np
    from PIL import Image

    wheels = REPO / "data" / "real" / "wheels"
    if not wheels.is_dir() or not any(p.name.startswith("stardist-") for p in wheels.iterdir()):
        pytest.skip("no stardist wheel in data/real/wheels (run scripts/make_real_sets.py)")
    image, mask, _ = _real_sets_module().source("dsb", str(wheels))
    assert np.array_equal(np.array(Image.open(DSB_COPY / "image.png")), image)
    assert np.array_equal(np.array(Image.open(DSB_COPY / "mask.png")), mask)


def test_tutorial_18_tiles_are_the_dsb_set(tmp_path):
    """Cut from the shipped copy, the tiles and COCO files are those of ``data/real/dsb``: the
    split sizes and box counts of docs/real_data.md."""
    import numpy as np
    from PIL import Image

    module = _real_sets_module()
    image = np.array(Image.open(DSB_COPY / "image.png"))
    mask = np.array(Image.open(DSB_COPY / "mask.png"))
    counts = module.write_set("dsb", image, mask, str(tmp_path), tile=192, stride=16)
    assert counts == {"train": (81, 1258, 171), "dev": (3, 42, 6), "test": (2, 44, 3)}
    real = REPO / "data" / "real" / "dsb"
    if real.is_dir():
        for split in ("train", "dev", "test"):
            assert (tmp_path / "dsb" / f"{split}.json").read_text() == (real / f"{split}.json").read_text()
