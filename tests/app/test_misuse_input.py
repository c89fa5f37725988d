"""The input half of issue 25's misuse sweep (docs/misuse-input.md): each test is one defect of
../shared/reviews/cli-misuse-sweep.md that failed on the code the sweep ran (09c0f12)."""

import json
import os

import numpy as np
import pytest

from minirccn.app.cli import main
from minirccn.data import ShapesConfig, load_dataset
from minirccn.data.export import export_coco

SMALL = ShapesConfig(image_size=64, min_object_size=10, max_object_size=30, train_size=8,
                     test_size=4)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A small COCO file (8 images) exported from shapes: its path."""
    root = tmp_path_factory.mktemp("coco")
    return export_coco(load_dataset("shapes", "train", shapes_config=SMALL), str(root / "ds"))


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ------------------------------------------------------------------ D13, D23: --minutes
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_minutes_inf_is_a_clear_error_not_an_internal_one(value, capsys):
    assert main(["config", "show", f"--minutes={value}"]) == 2
    assert "--minutes: expected a positive finite number" in last_error(capsys)


def test_a_capped_minutes_budget_says_it_is_capped(coco, capsys):
    assert main(["config", "show", "--data", coco, "--minutes", "1e300"]) == 0
    out = capsys.readouterr().out
    assert "capped at 150 passes over the data" in out and "1e+300" in out
