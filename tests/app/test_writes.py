"""issue 25: one rule for every command that writes (minirccn.core.files.check_replace):
nothing the user did not ask to replace is replaced; two outputs never share a name; an
existing output needs --overwrite; an input is never an output; a default output name moves on
to the next free one. Each test names the sweep's defect it guards (docs/misuse.md)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from minirccn.app import cli, predict
from minirccn.core import files
from minirccn.core.errors import MinirccnError
from minirccn.data.shapes import CLASS_NAMES


class FakeModel:
    class_names = list(CLASS_NAMES)

    def predict(self, image, backend=None, image_id=None):
        return {
            "boxes": np.array([[2, 3, 20, 30]], np.float32),
            "scores": np.array([0.9], np.float32),
            "labels": np.array([1]),
        }


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(predict, "_load_model", lambda path: FakeModel())


def _png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), value, np.uint8)).save(path)
    return str(path)


def _error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- the helpers


def test_distinct_names_never_reuse_a_name_another_input_has():
    assert files.distinct_names(["same", "same", "same_1"]) == ["same", "same_2", "same_1"]
    assert files.distinct_names(["a", "A"]) == ["a", "A_1"]  # one file on macOS / Windows
    assert files.distinct_names(["x"], taken=["x"]) == ["x_1"]


def test_check_replace(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert files.check_replace([a, b]) == []
    a.write_text("mine")
    with pytest.raises(MinirccnError, match="a.json exists already; add --overwrite"):
        files.check_replace([a, b])
    assert files.check_replace([a, b], overwrite=True) == [str(a)]
    with pytest.raises(MinirccnError, match="would replace the input"):
        files.check_replace([a], overwrite=True, inputs=[str(a)])


# ----------------------------------------------------------------------------- detect


def test_detect_never_replaces_an_input_image(fake, tmp_path, capsys):
    """D1: ``detect photos/cat.png --out photos`` replaced cat.png with its drawing."""
    img = _png(tmp_path / "photos" / "good.png", 7)
    before = open(img, "rb").read()
    for extra in ([], ["--overwrite"]):
        argv = ["detect", "--checkpoint", "c", img, "--out", str(tmp_path / "photos"), *extra]
        assert cli.main(argv) == 2
        assert "would replace the input" in _error_line(capsys)
        assert open(img, "rb").read() == before
    assert sorted(os.listdir(tmp_path / "photos")) == ["good.png"]


def test_detect_outputs_never_share_a_name(fake, tmp_path, capsys):
    """D2: a/same.png, b/same.png, same_1.png gave same, same_1, same_1 (two files)."""
    imgs = [
        _png(tmp_path / "a" / "same.png", 1),
        _png(tmp_path / "b" / "same.png", 2),
        _png(tmp_path / "same_1.png", 3),
    ]
    out = tmp_path / "o"
    assert cli.main(["detect", "--checkpoint", "c", *imgs, "--out", str(out)]) == 0
    records = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert records == ["same.json", "same_1.json", "same_2.json"]
    images = {json.loads((out / r).read_text())["image"] for r in records}
    assert images == set(imgs)  # one result per input


def test_detect_refuses_to_replace_earlier_results_without_overwrite(fake, tmp_path, capsys):
    """D11: a user's OUT/good.json (or a second detect's results) was replaced silently."""
    img = _png(tmp_path / "good.png")
    out = tmp_path / "o"
    out.mkdir()
    (out / "good.json").write_text('{"mine": 1}')
    assert cli.main(["detect", "--checkpoint", "c", img, "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert "good.json exists already" in line and "--overwrite" in line
    assert (out / "good.json").read_text() == '{"mine": 1}'
    assert not (out / "good.png").exists()
    assert cli.main(["detect", "--checkpoint", "c", img, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "good.json").read_text())["image"] == img


def test_detect_default_folder_moves_on(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    img = _png(tmp_path / "good.png")
    assert cli.main(["detect", "--checkpoint", "c", img]) == 0
    assert cli.main(["detect", "--checkpoint", "c", img]) == 0
    assert "results go to detections2" in capsys.readouterr().err
    assert os.listdir("detections") and os.listdir("detections2")


# ----------------------------------------------------------------------------- data export


def _coco_source(folder, file_names):
    """A COCO dataset in ``folder``: one box per image, images named by ``file_names``."""
    images, anns = [], []
    for k, name in enumerate(file_names, 1):
        _png(folder / "images" / name, 10 * k)
        images.append({"id": k, "file_name": name})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 6, 6]})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    data["info"] = {"owner": "me"}
    (folder / "annotations.json").write_text(json.dumps(data))
    return folder / "annotations.json"


def _export(*argv):
    return cli.main(["data", "export", *argv])


def test_export_never_replaces_its_own_source(tmp_path, capsys):
    """D8: ``data export --data mydata/annotations.json --out mydata`` replaced the user's
    annotation file with a 3-image export."""
    src = _coco_source(tmp_path / "mydata", ["a.png", "b.png", "c.png"])
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        argv = ["--format", "coco", "--data", str(src), "--split", "all", "--count", "2"]
        assert _export(*argv, "--out", str(tmp_path / "mydata"), *extra) == 2
        assert "would replace the input" in _error_line(capsys)
        assert src.read_bytes() == before


def test_export_refuses_to_replace_an_existing_annotation_file(tmp_path, capsys):
    """D8: any folder holding an annotations.json had it replaced silently."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "annotations.json").write_text('{"images": [], "mine": true}')
    assert _export("--format", "coco", "--out", str(other), "--count", "2") == 2
    line = _error_line(capsys)
    assert "annotations.json exists already" in line and "--overwrite" in line
    assert "mine" in (other / "annotations.json").read_text()
    assert not (other / "images").exists()  # refused before the first file
    assert _export("--format", "coco", "--out", str(other), "--count", "2", "--overwrite") == 0
    assert len(json.loads((other / "annotations.json").read_text())["images"]) == 2


@pytest.mark.parametrize("fmt", ["coco", "csv", "voc"])
def test_export_gives_two_images_of_one_stem_two_names(tmp_path, capsys, fmt):
    """D9: a/x.png and b/x.png were exported to one file (COCO, VOC) or merged into one
    ImageID (CSV)."""
    from minirccn.data import load_dataset

    src = _coco_source(tmp_path / "src", ["a/x.png", "b/x.png"])
    out = tmp_path / f"exp-{fmt}"
    assert _export("--format", fmt, "--data", str(src), "--split", "all", "--out", str(out)) == 0
    spec = {"coco": out / "annotations.json", "csv": out / "annotations.csv", "voc": out}[fmt]
    back = load_dataset(spec, split="all")
    assert len(back) == 2
    ids = sorted(back[i]["image_id"] for i in range(2))
    assert ids == ["x", "x_1"]
    pixels = sorted(int(back[i]["image"][0, 0, 0]) for i in range(2))
    assert pixels == [10, 20]  # two different pictures, not one twice


# ----------------------------------------------------------------------------- data preview


def test_preview_refuses_another_extension_and_an_existing_file(tmp_path, capsys):
    """D10: ``data preview --out run/checkpoint.npz`` replaced the checkpoint with a PNG;
    ``--out p.txt`` got PNG data."""
    ck = tmp_path / "checkpoint.npz"
    ck.write_bytes(b"my checkpoint")
    for out in (ck, tmp_path / "p.txt", tmp_path / "noext"):
        assert cli.main(["data", "preview", "--count", "2", "--out", str(out)]) == 2
        assert "give a file name ending in .png" in _error_line(capsys)
    assert ck.read_bytes() == b"my checkpoint"
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "noext").exists()
    png = tmp_path / "mine.png"
    _png(png, 5)
    before = png.read_bytes()
    assert cli.main(["data", "preview", "--count", "2", "--out", str(png)]) == 2
    assert "mine.png exists already" in _error_line(capsys)
    assert png.read_bytes() == before
    assert cli.main(["data", "preview", "--count", "2", "--out", str(png), "--overwrite"]) == 0
    assert png.read_bytes() != before


def test_preview_default_name_moves_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "preview", "--count", "1"]) == 0
    assert cli.main(["data", "preview", "--count", "1"]) == 0
    assert "the preview goes to preview2.png" in capsys.readouterr().err
    assert os.path.isfile("preview.png") and os.path.isfile("preview2.png")
