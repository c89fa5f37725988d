"""issue 25, D6: class names no detector can be trained on are refused when the data loads,
before step 1 (they used to train to the end, then detect / eval / --resume refused the
checkpoint): a class named ``__background__`` and a name given twice, in every format."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from minirccn.app.cli import main
from minirccn.core.errors import MinirccnError
from minirccn.data import load_dataset
from minirccn.data.common import check_class_names


def _png(path):
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(path)


def _coco(folder, names):
    _png(folder / "p.png")
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": k + 1, "bbox": [1, 1, 4, 4]}
        for k in range(len(names))
    ]
    path = folder / "c.json"
    path.write_text(
        json.dumps({"images": [{"id": 1, "file_name": "p.png"}], "categories": cats, "annotations": anns})
    )
    return path


def _csv(folder, label):
    os.makedirs(folder / "images", exist_ok=True)
    _png(folder / "images" / "x.png")
    path = folder / "a.csv"
    path.write_text(f"ImageID,LabelName,XMin,XMax,YMin,YMax\nx,{label},0.1,0.5,0.1,0.5\n")
    return path


def _voc(root, name):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    _png(root / "JPEGImages" / "a.png")
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.png</filename><object><name>{name}</name><bndbox><xmin>2</xmin>"
        "<ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    return root


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: _coco(d, ["circle", "square", "circle"]), "two classes are named 'circle'"),
        (lambda d: _coco(d, ["circle", "__background__"]), "a class is named '__background__'"),
        (lambda d: _csv(d, "__background__"), "a class is named '__background__'"),
        (lambda d: _voc(d / "voc", "__background__"), "a class is named '__background__'"),
    ],
)
def test_unusable_class_names_are_refused_when_the_data_loads(tmp_path, make, match):
    spec = make(tmp_path)
    split = "train" if os.path.isdir(spec) else "all"
    with pytest.raises(MinirccnError, match=match) as info:
        load_dataset(spec, split=split)
    assert str(info.value).startswith(str(spec))


def test_train_refuses_them_before_step_1(tmp_path, capsys):
    spec = _coco(tmp_path, ["circle", "circle"])
    out = tmp_path / "run"
    argv = ["train", "--data", str(spec), "--split", "all", "--iters", "1", "--no-progress"]
    assert main([*argv, "--backend", "numpy", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"minirccn: error: {spec}: two classes are named 'circle'; class names must be distinct (merge or rename them)"
    assert not (out / "checkpoint.npz").exists()


def test_check_class_names_passes_good_names():
    assert check_class_names(["__background__", "a", "b"], "x") == ["__background__", "a", "b"]
