"""The prepared GPU check (scripts/gpu_check.sh) as far as a CPU can check it."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_script_embedded_python_compiles():
    """Every here-document of Python in the script is valid Python."""
    text = SCRIPT.read_text()
    blocks = text.split("<<'PY'\n")[1:]
    assert len(blocks) == 2
    for block in blocks:
        compile(block.split("\nPY\n")[0], str(SCRIPT), "exec")
