"""``minirccn data export|preview`` and data errors through the command line."""

import numpy as np
import pytest
from helpers import assert_cli_fails
from PIL import Image

from minirccn.app import cli
from minirccn.data import ShapesDataset, load_dataset


@pytest.mark.parametrize(
    "fmt, spec, split",
    [("voc", "", "val"), ("coco", "annotations.json", "all"), ("csv", "annotations.csv", "all")],
)
def test_export_then_load(tmp_path, capsys, fmt, spec, split):
    out = tmp_path / fmt
    assert (
        cli.main(
            [
                "data",
                "export",
                "--format",
                fmt,
                "--out",
                str(out),
                "--split",
                "val",
                "--count",
                "4",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert "wrote 4 images" in capsys.readouterr().out
    ds = load_dataset(out / spec if spec else out, split=split)
    ref = ShapesDataset("val", seed=1)
    assert len(ds) == 4
    for i in range(4):
        np.testing.assert_allclose(ds[i]["boxes"], ref[i]["boxes"], atol=1e-4)
        assert np.array_equal(ds[i]["labels"], ref[i]["labels"])


def test_convert_between_formats_and_preview(tmp_path, capsys):
    assert (
        cli.main(
            ["data", "export", "--format", "voc", "--out", str(tmp_path / "v"), "--count", "3"]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "data",
                "export",
                "--format",
                "csv",
                "--data",
                str(tmp_path / "v"),
                "--split",
                "test",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert len(load_dataset(tmp_path / "c" / "annotations.csv", split="all")) == 3
    assert cli.main(["data", "preview", "--out", str(tmp_path / "p.png"), "--count", "3"]) == 0
    assert Image.open(tmp_path / "p.png").size[0] > 3 * 128


def test_export_errors(tmp_path, capsys):
    assert_cli_fails(
        capsys,
        ["data", "export", "--format", "voc", "--out", str(tmp_path), "--count", "0"],
        "--count",
    )
    assert_cli_fails(
        capsys,
        ["data", "export", "--format", "voc", "--out", str(tmp_path), "--split", "dev"],
        "shapes",
        "dev",
    )
    (tmp_path / "file").write_text("x")
    assert_cli_fails(
        capsys,
        ["data", "export", "--format", "coco", "--out", str(tmp_path / "file"), "--count", "1"],
        "file: exists and is not a folder",
    )
    assert_cli_fails(
        capsys,
        [
            "data",
            "export",
            "--format",
            "csv",
            "--out",
            str(tmp_path / "o"),
            "--data",
            str(tmp_path / "missing.json"),
        ],
        "missing.json",
    )
    with pytest.raises(SystemExit):  # argparse: unknown format
        cli.main(["data", "export", "--format", "yolo", "--out", str(tmp_path)])


def _broken_datasets(tmp_path):
    """(argv for --data, names the error must contain) for each kind of bad input."""
    cases = []
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "trunc.json").write_text('{"images": [{"id": 1, "file_name": "p.png"}], "annot')
    cases.append((["--data", str(tmp_path / "trunc.json")], ["trunc.json", "malformed JSON"]))
    (tmp_path / "cat.json").write_text(
        '{"images": [{"id": 1, "file_name": "p.png"}], "categories": [], '
        '"annotations": [{"id": 4, "image_id": 1, "category_id": 2, "bbox": [0,0,1,1]}]}'
    )
    cases.append(
        (["--data", str(tmp_path / "cat.json")], ["cat.json", "annotation 4", "category_id"])
    )
    (tmp_path / "nan.csv").write_text(
        "ImageID,LabelName,XMin,XMax,YMin,YMax\np,a,nan,0.5,0.1,0.5\n"
    )
    cases.append(
        (
            ["--data", str(tmp_path / "nan.csv"), "--images", str(tmp_path)],
            ["nan.csv", "line 2", "NaN"],
        )
    )
    (tmp_path / "noimg.csv").write_text(
        "ImageID,LabelName,XMin,XMax,YMin,YMax\nq,a,0.1,0.5,0.1,0.5\n"
    )
    cases.append(
        (["--data", str(tmp_path / "noimg.csv"), "--images", str(tmp_path)], ["q.jpg", "not found"])
    )
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "corrupt.csv").write_text(
        "ImageID,LabelName,XMin,XMax,YMin,YMax\nbad,a,0.1,0.5,0.1,0.5\n"
    )
    cases.append(
        (
            ["--data", str(tmp_path / "corrupt.csv"), "--images", str(tmp_path)],
            ["bad.png", "cannot decode"],
        )
    )
    voc = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Main/all.txt").write_text("a\n")
    (voc / "Annotations/a.xml").write_text(
        "<annotation><object><name>x</name><bndbox><xmin>5</xmin><ymin>1"
        "</ymin><xmax>2</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    cases.append((["--data", str(voc)], ["a.xml", "object 0", "x2 < x1"]))
    return cases


def test_bad_data_gives_one_line_naming_the_file(tmp_path, capsys):
    for data_args, names in _broken_datasets(tmp_path):
        assert_cli_fails(
            capsys,
            [
                "data",
                "export",
                "--format",
                "coco",
                "--out",
                str(tmp_path / "o"),
                "--split",
                "all",
                *data_args,
            ],
            *names,
        )
