"""Every tutorial runs top to bottom, in fast mode, and writes at least one PNG.

Each ``tutorials/NN_name.py`` is run as its own process (``python path``), as a
reader would run it, with ``MINIRCCN_TUTORIAL_FAST=1`` (smaller sizes, every
step) and ``MINIRCCN_TUTORIAL_OUT`` pointing into ``tmp_path``. A tutorial is
also a test: its ``T.check`` assertions compare the naive loops, the NumPy
reference and the kernels, so a disagreement exits non-zero here.
``NUMBA_ENABLE_CUDASIM`` is inherited from ``conftest.py`` (the simulator,
unless the caller chose a GPU).
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
        os.environ, MINIRCCN_TUTORIAL_FAST="1", MINIRCCN_TUTORIAL_OUT=str(out), PYTHONHASHSEED="0"
    )
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
    pngs = sorted(out.glob("*.png"))
    assert pngs, f"{script.name} wrote no PNG into {out}:\n{tail}"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png.name} is not a PNG"
