"""The docs' tables are printed by code: docs/runs_table.py reads the runs' metrics.json."""

import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")


def _runs_table():
    spec = importlib.util.spec_from_file_location("runs_table", os.path.join(DOCS, "runs_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_table_prints_one_row_per_run_from_its_metrics(tmp_path, capsys):
    metrics = {
        "iters": 6000,
        "preset": "resnet-fpn-tiny",
        "model": "retinanet",
        "map50": 0.84461,
        "map": 0.62958,
        "map75": 0.7,
        "map_small": 0.618,
        "map_medium": 0.659,
        "train_seconds": 301.4,
        "images_per_second": 19.91,
    }
    (tmp_path / "retina").mkdir()
    (tmp_path / "retina" / "metrics.json").write_text(json.dumps(metrics))
    default = {**metrics, "preset": "tiny", "iters": 5000}
    del default["model"]  # the default run's metrics.json has no "model"
    (tmp_path / "frcnn.json").write_text(json.dumps(default))
    _runs_table().main([str(tmp_path / "frcnn.json"), str(tmp_path / "retina" / "metrics.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | model | preset |")
    assert lines[2] == "| frcnn | fasterrcnn | tiny | 5000 | 0.845 | 0.630 | 0.700 | 0.618 | 0.659 | 301 | 19.9 |"
    assert lines[3].startswith("| retina | retinanet | resnet-fpn-tiny | 6000 |")


@pytest.mark.parametrize("name", ["fasterrcnn", "retinanet"])
def test_the_published_runs_are_in_the_repository(name):
    with open(os.path.join(DOCS, "measured", f"{name}.json")) as f:
        m = json.load(f)
    assert 0 < m["map50"] <= 1 and m["train_seconds"] > 0
