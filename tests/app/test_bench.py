"""``minirccn bench`` runs end to end and writes a table and JSON (tiny sizes, no timing claims)."""

import json

import numpy as np
import pytest

from minirccn.app import bench
from minirccn.engine.step import train_step
from minirccn.nn import optim
from minirccn.app.cli import main


def test_time_call_reports_a_median_after_warm_up():
    calls = []
    result = bench.time_call(lambda: calls.append(1), min_time=0.0, min_repeats=4)
    assert result["repeats"] == 4 and len(calls) == 5  # one warm-up call, then the timed ones
    assert 0.0 <= result["min"] <= result["median"]


def test_bench_quick_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(
        [
            "bench",
            "--quick",
            "--groups",
            "ops,layers",
            "--backends",
            "numpy,numba",
            "--no-torch",
            "--min-time",
            "0",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    assert "| box_iou |" in text and "| conv2d fwd+bwd |" in text
    report = json.loads(out.read_text())
    impls = {(r["case"], r["impl"]) for r in report["results"]}
    cases = ("box_iou", "nms", "roi_pool fwd+bwd", "roi_align fwd+bwd", "conv2d fwd+bwd")
    for case in (*cases, "max_pool2d fwd+bwd"):
        assert (case, "numpy") in impls and (case, "numba") in impls
    assert all(r["median"] > 0 and "peak_mib" in r for r in report["results"])
    assert report["machine"]


@pytest.mark.parametrize("flag, value", [("--groups", "ops,warp"), ("--backends", "numpy,tpu")])
def test_bench_rejects_unknown_names(flag, value, capsys, tmp_path):
    assert main(["bench", flag, value, "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minirccn: error:") and flag in err


def test_clustered_boxes_are_valid():
    boxes, scores = bench.clustered_boxes(np.random.default_rng(0), 500)
    assert boxes.shape == (500, 4) and scores.shape == (500,)
    assert np.all(boxes[:, 2:] > boxes[:, :2])


def test_detector_train_case_runs_the_training_step():
    case = bench.detector_cases()[0]
    inputs = case.make(np.random.default_rng(0))
    got = case.run("numba", inputs)()
    model = bench._tiny_detector(inputs, "numba")
    cfg = model.config
    opt = optim.SGD(model.trainable(), cfg.lr, cfg.momentum, cfg.weight_decay)
    batch = model.load_batch(inputs["data"], [inputs["index"]], None, "numba")
    want = train_step(
        model, opt, batch, np.random.default_rng(0), cfg.warmup_iters, backend="numba"
    )
    assert got == {k: want[k] for k in got}


def test_bench_does_not_import_train():
    import subprocess
    import sys

    code = (
        "import sys, minirccn.app.bench as b; b.build_cases({'train'}); "
        "print('minirccn.engine.loop' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
