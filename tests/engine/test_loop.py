"""The training loop (minirccn.engine.loop): outputs, exact resume, divergence guard, alternating
training, the CLI (tiny settings)."""

import json

import numpy as np
import pytest
from helpers import SHAPES, tiny_config

from minirccn.app.cli import main
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.detector.registry import model_class
from minirccn.engine import loop as T
from minirccn.engine.checkpoint import load_checkpoint

FasterRCNN = model_class("fasterrcnn")


@pytest.fixture(scope="module")
def data():
    return (
        load_dataset("shapes", "train", shapes_config=SHAPES),
        load_dataset("shapes", "test", shapes_config=SHAPES),
    )


def run(cfg, data, out, **kw):
    kw.setdefault("eval_split", "")
    return T.train(
        cfg, train_data=data[0], test_data=data[1], out=out, backend="numba", progress=False, **kw
    )


def test_outputs(data, tmp_path):
    result = run(tiny_config(), data, str(tmp_path), iters=3, eval_split="test")
    for name in ("checkpoint.npz", "metrics.json", "loss_curve.png", "detections.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "map50",
        "map",
        "map75",
        "voc07_map50",
        "train_seconds",
        "eval_seconds",
        "iters",
        "images_per_second",
        "backend",
        "preset",
        "seed",
        "final_losses",
    ):
        assert key in metrics, key
    assert metrics["iters"] == 3 and metrics["backend"] == "numba"
    assert set(metrics["final_losses"]) >= {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
    }
    assert len(result["history"]["loss"]) == 3
    model, state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state["step"] == 3 and model.class_names == data[0].class_names


def test_resume_continues_bit_for_bit(data, tmp_path):
    whole = run(tiny_config(), data, str(tmp_path / "a"), iters=4, seed=3)
    run(tiny_config(), data, str(tmp_path / "b"), iters=2, seed=3)
    resumed = run(tiny_config(), data, str(tmp_path / "b"), iters=4, seed=3, resume=True)
    assert whole["history"]["loss"] == resumed["history"]["loss"]
    for k, v in whole["model"].params.items():
        assert np.array_equal(v, resumed["model"].params[k]), k
    other = run(tiny_config(), data, str(tmp_path / "c"), iters=2, seed=4)
    assert other["history"]["loss"] != whole["history"]["loss"][:2]


def test_divergence_stops_with_one_message_and_keeps_the_last_checkpoint(
    data, tmp_path, monkeypatch
):
    real = FasterRCNN.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        losses, cache = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss_classifier"] = float("nan")
        return losses, cache

    monkeypatch.setattr(FasterRCNN, "forward", poisoned)
    with pytest.raises(T.TrainingDiverged, match="diverged at step 2.*loss_classifier"):
        run(tiny_config(), data, str(tmp_path), iters=5, checkpoint_every=2)
    _, state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state["step"] == 2


def test_alternating_training_runs_all_four_steps(data, tmp_path):
    result = run(tiny_config(), data, None, iters=8, alternating=True)
    h = result["history"]
    assert len(h["loss"]) == 8
    # steps 1 and 3 train the RPN only, steps 2 and 4 the head only
    assert h["loss_classifier"][:2] == [None, None] and h["loss_objectness"][2] is None
    assert all(v is not None for v in h["loss_classifier"][2:4] + h["loss_objectness"][4:6])
    assert {k for k in result["model"].params if k.startswith("rpn.")}


def test_lr_schedule():
    cfg = preset(
        "tiny", lr=0.1, warmup_iters=10, warmup_factor=0.001, milestones=(20, 30), gamma=0.1
    )
    assert T.lr_at(0, cfg) == pytest.approx(1e-4)
    assert T.lr_at(10, cfg) == pytest.approx(0.1)
    assert T.lr_at(25, cfg) == pytest.approx(0.01)
    assert T.lr_at(30, cfg) == pytest.approx(0.001)


def test_batch_indices_visit_every_image_once_per_epoch():
    seen = [i for s in range(5) for i in T.batch_indices(1, s, 2, 10)]
    assert sorted(seen) == list(range(10))
    assert T.batch_indices(1, 3, 2, 10) == T.batch_indices(1, 3, 2, 10)


def test_cli_train_and_bad_flags(tmp_path, capsys):
    rc = main(
        ["train", "--out", str(tmp_path), "--iters", "2", "--eval-images", "2", "--no-progress"]
    )
    assert rc == 0
    assert (tmp_path / "checkpoint.npz").is_file() and (tmp_path / "metrics.json").is_file()
    assert "mAP@0.5" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path), "--iters", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iters" in err[0]
    assert main(["train", "--out", str(tmp_path / "none"), "--resume", "--iters", "2"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cuda_backend_step_and_predict_match_numba(data):
    """The same detector code on the cuda backend (Numba-CUDA kernels; the simulator here)
    gives the numba backend's losses, gradients' effect and detections."""
    cfg = tiny_config(
        backbone_stages=((4, 1, True), (4, 1, True)),
        min_size=32,
        max_size=32,
        anchor_sizes=(8, 16),
        aspect_ratios=(1.0,),
        rpn_channels=4,
        representation_size=8,
        roi_output_size=2,
        box_batch_size_per_image=4,
        rpn_batch_size_per_image=16,
        rpn_pre_nms_top_n_train=20,
        rpn_post_nms_top_n_train=6,
        rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_test=6,
    )
    results = {}
    for backend in ("numba", "cuda"):
        model = FasterRCNN(cfg, data[0].class_names, rng=np.random.default_rng(0)).to(backend)
        opt = T.make_optimizer(model)
        batch = model.load_batch(data[0], [0], None, backend)
        losses = T.train_step(
            model, opt, batch, np.random.default_rng(1), cfg.warmup_iters, backend=backend
        )
        image = data[1][0]["image"]
        results[backend] = (losses, model.params, model.predict(image, backend=backend))
    (l1, p1, d1), (l2, p2, d2) = results["numba"], results["cuda"]
    for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert l2[k] == pytest.approx(l1[k], rel=1e-4, abs=1e-6), k
    for k in p1:
        np.testing.assert_allclose(np.asarray(p2[k]), p1[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert len(d1["boxes"]) == len(d2["boxes"])
    np.testing.assert_allclose(d2["scores"], d1["scores"], rtol=1e-4, atol=1e-6)
