"""``minirccn detect`` / ``minirccn eval`` and :func:`evaluate_model`, with a stand-in model.

The stand-in has the detector's interface (``class_names``, ``predict(image,
backend=None)``); it knows the ground truth of a few shapes images by their
bytes, so its scores are known in advance.
"""

import json

import numpy as np
import pytest
from helpers import assert_cli_fails
from PIL import Image

from minirccn.app import cli, predict
from minirccn.data import ShapesDataset
from minirccn.data.shapes import CLASS_NAMES
from minirccn.engine import inference


class FakeModel:
    def __init__(self, dataset=None, n=0, miss_label=None):
        self.class_names = list(CLASS_NAMES)
        self.answers = {}
        for i in range(n):
            s = dataset[i]
            keep = s["labels"] != miss_label
            self.answers[s["image"].tobytes()] = (s["boxes"][keep], s["labels"][keep])
        self.calls = []

    def predict(self, image, backend=None, image_id=None):
        self.calls.append(backend)
        assert image.dtype == np.uint8 and image.ndim == 3
        boxes, labels = self.answers.get(
            image.tobytes(),
            (np.array([[2, 3, 20, 30], [5, 5, 9, 9]], np.float32), np.array([1, 3])),
        )
        scores = np.linspace(0.9, 0.3, len(boxes)).astype(np.float32)
        return {"boxes": boxes, "scores": scores, "labels": labels}


@pytest.fixture
def fake(monkeypatch):
    def install(model):
        monkeypatch.setattr(predict, "_load_model", lambda path: model)
        return model

    return install


def test_evaluate_model_perfect_and_missing_class():
    ds = ShapesDataset("test", seed=0)
    r = inference.evaluate_model(FakeModel(ds, 6), ds, progress=False, limit=6)
    assert r["num_images"] == 6
    for key in ("map", "map50", "map75", "voc07_map50", "voc_map50"):
        assert r[key] == pytest.approx(1.0), key
    assert set(r["per_class"]) == {"circle", "square", "triangle"}
    r = inference.evaluate_model(FakeModel(ds, 6, miss_label=2), ds, progress=False, limit=6)
    assert r["per_class"]["square"]["ap"] == 0.0 and r["per_class"]["circle"][
        "ap"
    ] == pytest.approx(1.0)
    assert r["voc07_map50"] == pytest.approx(2 / 3)


def test_eval_table_and_json(fake, capsys):
    ds = ShapesDataset("test", seed=0)
    model = fake(FakeModel(ds, 5))
    assert cli.main(["eval", "--checkpoint", "ck.npz", "--limit", "5", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    for text in (
        "VOC07 11-point AP@0.5",
        "VOC all-point AP@0.5",
        "COCO mAP@[.50:.95]",
        "COCO mAP@0.75",
        "circle",
        "triangle",
        "1.0000",
    ):
        assert text in out
    assert set(model.calls) == {"numpy"}
    assert cli.main(["eval", "--checkpoint", "ck.npz", "--limit", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["map"] == pytest.approx(1.0)
        and result["num_images"] == 5
        and result["data"] == "shapes-test"
    )


def test_eval_errors(fake, tmp_path, capsys):
    assert_cli_fails(capsys, ["eval", "--checkpoint", str(tmp_path / "none.npz")], "none.npz")
    fake(FakeModel())
    assert_cli_fails(capsys, ["eval", "--checkpoint", "c", "--data", str(tmp_path / "x.json")], "x.json")
    assert_cli_fails(capsys, ["eval", "--checkpoint", "c", "--limit", "0"], "--limit")
    other = FakeModel()
    other.class_names = ["__background__", "cat"]
    fake(other)
    assert_cli_fails(capsys, ["eval", "--checkpoint", "c", "--limit", "2"], "classes")


def test_detect_writes_png_and_json(fake, tmp_path, capsys):
    fake(FakeModel())
    img = tmp_path / "in" / "pic.png"
    img.parent.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "detect",
                "--checkpoint",
                "c",
                str(img),
                str(img),
                "--out",
                str(out),
                "--score-thresh",
                "0.5",
            ]
        )
        == 0
    )
    record = json.loads((out / "pic.json").read_text())
    assert (
        record["boxes"] == [[2, 3, 20, 30]]
        and record["labels"] == [1]
        and record["names"] == ["circle"]
    )
    assert record["scores"] == [pytest.approx(0.9)] and record["class_names"] == CLASS_NAMES
    assert (record["height"], record["width"]) == (40, 50)
    assert Image.open(out / "pic.png").size == (100, 80)  # small images are drawn at 2x
    assert (out / "pic_1.json").exists()  # the same stem twice does not overwrite
    assert (
        cli.main(
            ["detect", "--checkpoint", "c", str(img), "--out", str(out), "--score-thresh", "0",
             "--overwrite"]
        )
        == 0
    )
    assert len(json.loads((out / "pic.json").read_text())["boxes"]) == 2


def test_detect_errors(fake, tmp_path, capsys):
    good = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    assert_cli_fails(
        capsys,
        ["detect", "--checkpoint", str(tmp_path / "nope.npz"), str(good)],
        "nope.npz",
        "not found",
    )
    fake(FakeModel())
    assert_cli_fails(capsys, ["detect", "--checkpoint", "c", str(tmp_path / "missing.jpg")], "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert_cli_fails(
        capsys,
        ["detect", "--checkpoint", "c", str(bad), "--out", str(tmp_path / "o")],
        "bad.jpg",
        "decode",
    )
    assert_cli_fails(
        capsys, ["detect", "--checkpoint", "c", str(good), "--score-thresh", "2"], "--score-thresh"
    )


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    ck = tmp_path / "broken.npz"
    ck.write_bytes(b"PK\x03\x04 this is not a zip archive")
    img = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert_cli_fails(capsys, ["detect", "--checkpoint", str(ck), str(img)], "broken.npz")
    assert_cli_fails(capsys, ["eval", "--checkpoint", str(ck), "--limit", "1"], "broken.npz")


def test_real_checkpoint_end_to_end(tmp_path, capsys):
    """An untrained detector saved by the real checkpoint code goes through both commands."""
    from minirccn.engine.checkpoint import save_checkpoint
    from minirccn.config import preset
    from minirccn.detector.models.faster_rcnn import FasterRCNN

    ds = ShapesDataset("test", seed=0)
    ck = save_checkpoint(tmp_path / "ck.npz", FasterRCNN(preset("tiny"), ds.class_names))
    img = tmp_path / "s.png"
    Image.fromarray(ds[0]["image"]).save(img)
    assert (
        cli.main(
            [
                "detect",
                "--checkpoint",
                str(ck),
                str(img),
                "--out",
                str(tmp_path / "o"),
                "--score-thresh",
                "0",
                "--backend",
                "numpy",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "o" / "s.json").read_text())
    assert len(record["boxes"]) == len(record["scores"]) == len(record["labels"]) <= 100
    capsys.readouterr()
    assert (
        cli.main(["eval", "--checkpoint", str(ck), "--limit", "2", "--backend", "numpy", "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 2 and -1.0 <= result["map"] <= 1.0
