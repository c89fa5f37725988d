"""constraints.txt pins the versions the README's measured numbers were made with (issue 25)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins() -> dict:
    out = {}
    for line in open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[name.strip().lower()] = version.strip()
    return out


def readme_versions() -> dict:
    """The versions the README states beside the default run's table."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Training on `shapes`"):]
    section = section[: section.index("| training |")]
    found = dict(
        (name.lower(), version)
        for name, version in re.findall(r"\b(Python|NumPy|Numba|llvmlite|Pillow) (\d+(?:\.\d+)+)", section)
    )
    assert set(found) == {"python", "numpy", "numba", "llvmlite", "pillow"}, found
    return found


def test_the_pins_are_the_versions_the_readme_states():
    p, r = pins(), readme_versions()
    for name in ("numpy", "numba", "llvmlite", "pillow"):
        assert p[name] == r[name], (name, p[name], r[name])
    header = open(os.path.join(ROOT, "constraints.txt"), encoding="utf-8").read()
    assert f"Python {r['python']}" in header


def test_every_dependency_is_pinned():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    names = {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower() for d in wanted}
    assert names <= set(pins()), sorted(names - set(pins()))


def test_the_readme_says_how_to_reproduce_the_numbers():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "pip install -e . -c constraints.txt" in text
