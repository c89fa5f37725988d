"""VOC, COCO and CSV loaders: round trip through export, conventions, every bad input."""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from minirccn.data import DataWarning, ShapesDataset, load_dataset
from minirccn.data.common import partition
from minirccn.data.export import export_dataset
from minirccn.core.errors import MinirccnError

COUNT = 12


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset("test", seed=2)  # images 7 and 11 have no object


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes):
    root = tmp_path_factory.mktemp("export")
    return {
        fmt: export_dataset(shapes, fmt, root / fmt, count=COUNT) for fmt in ("voc", "coco", "csv")
    }


@pytest.mark.parametrize("fmt", ["voc", "coco", "csv"])
def test_round_trip(exported, shapes, fmt):
    split = "test" if fmt == "voc" else "all"
    ds = load_dataset(exported[fmt], split=split)
    assert len(ds) == COUNT and ds.class_names == shapes.class_names
    for i in range(COUNT):
        a, b = ds[i], shapes[i]
        assert a["image_id"] == b["image_id"]
        assert np.array_equal(a["image"], b["image"])  # PNG is lossless
        assert a["boxes"].dtype == np.float32 and a["labels"].dtype == np.int64
        np.testing.assert_allclose(
            a["boxes"], b["boxes"], atol=1e-4
        )  # exact here; CSV divides by W, H
        assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(
            a["difficult"], b["difficult"]
        )
    assert any(len(shapes[i]["boxes"]) == 0 for i in range(COUNT))  # empty images survive too


def test_jpeg_export_keeps_boxes(tmp_path, shapes):
    path = export_dataset(shapes, "coco", tmp_path, count=3, image_format="jpg")
    ds = load_dataset(path, split="all")
    for i in range(3):
        assert np.array_equal(ds[i]["boxes"], shapes[i]["boxes"])
        assert np.abs(ds[i]["image"].astype(int) - shapes[i]["image"]).mean() < 6


def test_coco_and_csv_partition_is_disjoint_and_complete(exported):
    for spec in (exported["coco"], exported["csv"]):
        train = [s["image_id"] for s in load_dataset(spec, split="train")]
        test = [s["image_id"] for s in load_dataset(spec, split="test")]
        assert len(test) == 2 and len(train) == COUNT - 2  # ceil(10%)
        assert not set(train) & set(test) and len(set(train) | set(test)) == COUNT
        assert [s["image_id"] for s in load_dataset(spec, split="val")] == test
    ids = [f"img{i}" for i in range(50)]
    assert partition(ids, "test", "x") == partition(list(reversed(ids)), "test", "x")
    assert len(partition(ids, "test", "x")) == 5 and partition(["a"], "test", "x") == []
    with pytest.raises(MinirccnError, match="x: unknown split 'dev'"):
        partition(ids, "dev", "x")


# ----------------------------------------------------------------------------- conventions
def _png(path, h=20, w=30):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _voc(root, objects, name="a", size=(20, 30), split="train", image=True):
    """A VOC folder with one image ``name``; ``objects`` are (class, xmin, ymin, xmax, ymax, difficult)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    if image:
        _png(root / "JPEGImages" / f"{name}.png", *size)
    xml = f"<annotation><filename>{name}.png</filename>"
    for cls, x1, y1, x2, y2, diff in objects:
        xml += (
            f"<object><name>{cls}</name><difficult>{diff}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    (root / "Annotations" / f"{name}.xml").write_text(xml + "</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{name}\n")
    return root


def test_voc_one_based_inclusive_boxes_and_difficult(tmp_path):
    root = _voc(tmp_path, [("dog", 1, 1, 10, 5, 0), ("cat", 5, 6, 30, 20, 1)])
    ds = load_dataset(root)
    s = ds[0]
    assert ds.class_names == ["__background__"] + [
        c
        for c in [
            "aeroplane",
            "bicycle",
            "bird",
            "boat",
            "bottle",
            "bus",
            "car",
            "cat",
            "chair",
            "cow",
            "diningtable",
            "dog",
            "horse",
            "motorbike",
            "person",
            "pottedplant",
            "sheep",
            "sofa",
            "train",
            "tvmonitor",
        ]
    ]
    assert s["boxes"].tolist() == [[0, 0, 10, 5], [4, 5, 30, 20]]
    assert [ds.class_names[k] for k in s["labels"]] == ["dog", "cat"]
    assert s["difficult"].tolist() == [False, True]
    assert s["image"].shape == (20, 30, 3) and s["image_id"] == "a"


def test_voc_custom_classes_are_sorted_over_all_annotations(tmp_path):
    _voc(tmp_path, [("zebra", 1, 1, 5, 5, 0)], name="a", split="train")
    _voc(tmp_path, [("aardvark", 1, 1, 5, 5, 0)], name="b", split="test")
    assert load_dataset(tmp_path, split="train").class_names == [
        "__background__",
        "aardvark",
        "zebra",
    ]
    assert load_dataset(tmp_path, split="test").class_names == [
        "__background__",
        "aardvark",
        "zebra",
    ]
    assert len(load_dataset(tmp_path, split="all")) == 2


def test_coco_xywh_and_sorted_category_ids(tmp_path):
    _png(tmp_path / "p.png")
    data = {
        "images": [{"id": 9, "file_name": "p.png", "width": 30, "height": 20}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 7, "bbox": [1.5, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 9, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path / "a.json", split="all", images=tmp_path)
    s = ds[0]
    assert ds.class_names == ["__background__", "three", "seven"]
    assert s["boxes"].tolist() == [[1.5, 2, 11.5, 7], [0, 0, 4, 4]]
    assert s["labels"].tolist() == [2, 1] and s["difficult"].tolist() == [False, True]
    assert s["image_id"] == "p"


def test_csv_normalised_coordinates_and_group(tmp_path):
    os.makedirs(tmp_path / "images")
    _png(tmp_path / "images" / "x.png", 20, 40)
    _png(tmp_path / "images" / "y.png", 10, 10)
    (tmp_path / "a.csv").write_text(
        "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf\n"
        "x,b,0.25,0.5,0.1,1.0,0\nx,a,0,1,0,1,1\ny,,,,,,\n"
    )
    ds = load_dataset(tmp_path / "a.csv", split="all")
    assert ds.class_names == ["__background__", "a", "b"]
    s = ds[0]
    assert s["boxes"].tolist() == [[10, 2, 20, 20], [0, 0, 40, 20]]
    assert s["labels"].tolist() == [2, 1] and s["difficult"].tolist() == [False, True]
    assert len(ds[1]["boxes"]) == 0 and ds[1]["boxes"].shape == (0, 4)


def test_box_partly_outside_is_clipped_fully_outside_dropped(tmp_path):
    root = _voc(tmp_path, [("dog", 25, 1, 40, 5, 0), ("cat", 35, 1, 40, 5, 0)])
    with pytest.warns(DataWarning, match="outside"):
        s = load_dataset(root)[0]
    assert s["boxes"].tolist() == [[24, 0, 30, 5]]


# ----------------------------------------------------------------------------- bad input
def _error(match, fn, *args, **kwargs):
    with pytest.raises(MinirccnError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_or_missing_spec(tmp_path):
    _error("nowhere.json: annotation file not found", load_dataset, str(tmp_path / "nowhere.json"))
    _error("no such dataset", load_dataset, str(tmp_path / "missing"))
    (tmp_path / "data.txt").write_text("hello")
    _error("data.txt: unknown dataset format", load_dataset, tmp_path / "data.txt")


def test_voc_bad_inputs(tmp_path):
    _error("Annotations: folder not found", load_dataset, tmp_path)
    root = _voc(tmp_path / "ok", [("dog", 1, 1, 5, 5, 0)])
    _error(r"ImageSets/Main/test.txt: split file not found", load_dataset, root, split="test")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>1"
    )
    _error(r"a.xml: malformed XML", load_dataset, root)
    for objects, match in [
        ([("dog", 5, 1, 3, 5, 0)], r"a.xml: object 0 \(dog\): box .* x2 < x1"),
        (
            [("dog", 1, 1, 5, 5, 0), ("cat", 1, "nan", 5, 5, 0)],
            r"a.xml: object 1 \(cat\): box .* NaN",
        ),
        ([("dog", 1, "one", 5, 5, 0)], r"a.xml: object 0 \(dog\): <ymin> is not a number"),
    ]:
        bad = _voc(tmp_path / f"bad{len(match)}", objects)
        _error(match, load_dataset, bad)
    missing_img = _voc(tmp_path / "noimg", [("dog", 1, 1, 5, 5, 0)], image=False)
    _error(r"JPEGImages/a.png: image file not found", load_dataset, missing_img)
    (missing_img / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    _png(missing_img / "JPEGImages" / "a.png")
    _error(r"Annotations/b.xml: annotation file not found", load_dataset, missing_img)


def test_zero_width_box_is_skipped_with_a_warning(tmp_path):
    root = _voc(
        tmp_path, [("dog", 3, 1, 2, 5, 0), ("dog", 1, 1, 5, 5, 0)]
    )  # xmin=3, xmax=2: zero width
    with pytest.warns(DataWarning, match=r"a.xml: object 0 \(dog\): .*zero width"):
        ds = load_dataset(root)
    assert ds[0]["boxes"].tolist() == [[0, 0, 5, 5]]


def _coco(tmp_path, annotations=None, images=None, categories=None, text=None):
    _png(tmp_path / "p.png")
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "p.png"}],
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
    }
    path = tmp_path / "c.json"
    path.write_text(text if text is not None else json.dumps(data))
    return path


def test_coco_bad_inputs(tmp_path):
    good = _coco(tmp_path)
    assert len(load_dataset(good, split="all")) == 1
    full = good.read_text()
    _error("c.json: malformed JSON", load_dataset, _coco(tmp_path, text=full[: len(full) // 2]))
    _error(
        "c.json: missing list 'categories'",
        load_dataset,
        _coco(tmp_path, text='{"images": [], "annotations": []}'),
    )
    _error(
        r"c.json: annotation 5: unknown image_id 2",
        load_dataset,
        _coco(tmp_path, [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]}]),
    )
    _error(
        r"c.json: annotation 5: unknown category_id 3",
        load_dataset,
        _coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4]}]),
    )
    _error(
        r"c.json: annotation 5 .*NaN",
        load_dataset,
        _coco(tmp_path, text=full.replace("[1, 1, 4, 4]", "[1, NaN, 4, 4]")),
    )
    _error(
        r"c.json: annotation 5 .*x2 < x1",
        load_dataset,
        _coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, -4, 4]}]),
    )
    _error(
        r"c.json: annotation 5: bbox must be 4 numbers",
        load_dataset,
        _coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4]}]),
    )
    _error(
        r"c.json: images\[0\]: missing 'file_name'",
        load_dataset,
        _coco(tmp_path, images=[{"id": 1}]),
    )
    _error(
        r"q.png: image file not found",
        load_dataset,
        _coco(tmp_path, images=[{"id": 1, "file_name": "q.png"}]),
    )
    _error(r"elsewhere: image folder not found", load_dataset, good, images=tmp_path / "elsewhere")
    with pytest.warns(DataWarning, match="annotation 5 .*zero width"):
        ds = load_dataset(
            _coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 4]}]),
            split="all",
        )
    assert len(ds[0]["boxes"]) == 0


def _csv(tmp_path, text):
    os.makedirs(tmp_path / "images", exist_ok=True)
    _png(tmp_path / "images" / "x.png")
    path = tmp_path / "a.csv"
    path.write_text(text)
    return path


HEADER = "ImageID,LabelName,XMin,XMax,YMin,YMax\n"


def test_csv_bad_inputs(tmp_path):
    assert len(load_dataset(_csv(tmp_path, HEADER + "x,a,0.1,0.5,0.1,0.5\n"), split="all")) == 1
    _error("a.csv: empty file", load_dataset, _csv(tmp_path, ""))
    _error(
        "a.csv: missing column.* YMax",
        load_dataset,
        _csv(tmp_path, "ImageID,LabelName,XMin,XMax,YMin\n"),
    )
    _error(
        "a.csv: line 3: expected 6 fields",
        load_dataset,
        _csv(tmp_path, HEADER + "x,a,0.1,0.5,0.1,0.5\nx,a,0.1,0.5\n"),
    )
    _error(
        "a.csv: line 2: coordinates are not numbers",
        load_dataset,
        _csv(tmp_path, HEADER + "x,a,0.1,abc,0.1,0.5\n"),
    )
    _error(
        r"a.csv: line 2 \(a\): .*x2 < x1",
        load_dataset,
        _csv(tmp_path, HEADER + "x,a,0.6,0.5,0.1,0.5\n"),
    )
    _error(
        r"a.csv: line 2 \(a\): .*NaN",
        load_dataset,
        _csv(tmp_path, HEADER + "x,a,nan,0.5,0.1,0.5\n"),
    )
    _error(
        r"a.csv: line 2 \(a\): .*not normalised",
        load_dataset,
        _csv(tmp_path, HEADER + "x,a,1,15,1,5\n"),
    )
    _error(
        r"images/y.jpg: image file not found",
        load_dataset,
        _csv(tmp_path, HEADER + "y,a,0.1,0.5,0.1,0.5\n"),
    )
    _error(
        r"a.csv: line 2: a box without a LabelName",
        load_dataset,
        _csv(tmp_path, HEADER + "x,,0.1,0.5,0.1,0.5\n"),
    )
    with pytest.warns(DataWarning, match=r"a.csv: line 2 \(a\): .*zero width"):
        load_dataset(
            _csv(tmp_path, HEADER + "x,a,0.5,0.5,0.1,0.5\nx,a,0.1,0.5,0.1,0.5\n"), split="all"
        )


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, content):
    root = _voc(tmp_path, [("dog", 1, 1, 5, 5, 0)])
    path = root / "JPEGImages" / "a.png"
    if content == "truncated":
        content = path.read_bytes()[:60]
    path.write_bytes(content)
    ds = load_dataset(root)  # images are decoded lazily ...
    _error(r"JPEGImages/a.png: cannot decode image", ds.__getitem__, 0)  # ... with one clear error


def test_no_warnings_on_clean_exports(exported):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fmt, spec in exported.items():
            ds = load_dataset(spec, split="test" if fmt == "voc" else "all")
            for s in ds:
                pass
