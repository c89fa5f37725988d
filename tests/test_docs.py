"""The docs' tables are printed by code: docs/runs_table.py reads the runs' metrics.json."""

import importlib.util
import json
import math
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


_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}


def _default_run_minutes_claims(text):
    """Every 'about N minutes' within 160 characters after a mention of `minirccn train`."""
    import re

    flat = re.sub(r"\s*\n\s*(#\s*)?", " ", text)  # join lines (and a script's comment lines)
    claims = []
    for m in re.finditer(r"minirccn train", flat):
        window = flat[m.end() : m.end() + 160]
        found = re.search(r"about (\d+|[a-z]+) minutes", window)
        if found and (found.group(1).isdigit() or found.group(1) in _WORDS):
            claims.append(int(found.group(1)) if found.group(1).isdigit() else _WORDS[found.group(1)])
    return claims


def test_the_default_run_time_in_the_prose_agrees_with_metrics_json():
    """README's caption and the tutorials' 'about N minutes' of `minirccn train` agree with
    docs/metrics.json: N is the training + evaluation time rounded down or up."""
    import glob

    with open(os.path.join(DOCS, "metrics.json")) as f:
        m = json.load(f)
    total = (m["train_seconds"] + m["eval_seconds"]) / 60  # what the user waits, in minutes
    minutes = (math.floor(total), math.ceil(total))  # "about N": N either side of it
    root = os.path.join(HERE, "..")
    files = [os.path.join(root, "README.md"), os.path.join(root, "tutorials", "README.md")]
    files += sorted(glob.glob(os.path.join(root, "tutorials", "*.py")))
    seen = 0
    for path in files:
        with open(path) as f:
            for claim in _default_run_minutes_claims(f.read()):
                seen += 1
                assert claim in minutes, (
                    f"{os.path.relpath(path, root)} says `minirccn train` takes about {claim} minutes; "
                    f"docs/metrics.json's train_seconds + eval_seconds give {total:.2f}"
                )
    assert seen >= 2, "README.md's caption and tutorials/README.md each state the default run's time"


def test_both_readmes_list_every_tutorial_with_the_same_measured_time():
    """README.md's tutorial table gives each tutorial's full-mode seconds as tutorials/README.md does."""
    import glob
    import re

    root = os.path.join(HERE, "..")
    numbers = sorted(int(os.path.basename(p)[:2]) for p in glob.glob(os.path.join(root, "tutorials", "[0-9][0-9]_*.py")))
    with open(os.path.join(root, "tutorials", "README.md")) as f:
        measured = {int(n): int(s) for n, s in re.findall(r"^\| (\d\d) [^|]+\| (\d+) \| [\d.]+ \|$", f.read(), re.M)}
    with open(os.path.join(root, "README.md")) as f:
        listed = {int(n): int(s) for n, s in re.findall(r"^\| (\d+) \| \[[^|]+\| (\d+) \| <img", f.read(), re.M)}
    assert sorted(measured) == numbers, "tutorials/README.md's run-time table must list every tutorial"
    assert listed == measured, "README.md's tutorial table must give tutorials/README.md's measured seconds"
