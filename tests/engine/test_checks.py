"""Checks before step 1 (config fields: minirccn.config.checks; buildable: minirccn.engine.checks;
checkpoints and --resume: minirccn.engine.checkpoint; images: minirccn.data.checks) and the data
loaders' guards: crafted checkpoints, --resume against the data, truncated images among good
ones, malformed and empty files."""

import json
import os
import shutil
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from helpers import SHAPES, TINY, tiny_config
from PIL import Image

from minirccn.engine import loop as T
from minirccn.data.checks import check_images, image_problem
from minirccn.engine.checkpoint import load_checkpoint, param_shapes, save_checkpoint
from minirccn.engine.checks import check_config
from minirccn.app.cli import main
from minirccn.config import PRESETS, preset
from minirccn.data import DataWarning, load_dataset
from minirccn.data.common import parse_bool, read_image
from minirccn.data.export import export_dataset
from minirccn.detector.models.faster_rcnn import FasterRCNN
from minirccn.detector.registry import init_model_params
from minirccn.core.errors import MinirccnError

NAMES = ["__background__", "circle", "square", "triangle"]


def one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- config


def test_every_preset_passes_and_bad_fields_are_named():
    for name in PRESETS:
        check_config(preset(name))
    for change, match in [
        (dict(representation_size=-1), "representation_size must be in"),
        (dict(representation_size=True), "representation_size must be an integer"),
        (dict(rpn_nms_thresh=1.5), "rpn_nms_thresh must be in"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(anchor_sizes=()), "anchor_sizes must be a list"),
        (dict(image_std=(1.0, 0.0, 1.0)), "image_std must be a list of 3"),
        (dict(min_size=200, max_size=100), "min_size 200 must not exceed max_size 100"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(backbone_stages=((4, 1, "yes"),)), "backbone_stages must be"),
        (dict(backbone_stages=(), backbone="nope"), "backbone must be one of"),
        (dict(milestones=(1.5,)), "milestones must be a list of integers"),
        (dict(fpn_channels=8), "backbone: an FPN needs a ResNet backbone"),
        (dict(fpn_channels=-1), "fpn_channels must be in"),
    ]:
        with pytest.raises(MinirccnError, match=f"^here: {match}"):
            check_config(tiny_config(**change), "here")
    with pytest.raises(MinirccnError, match="^here: anchor_sizes: an FPN needs one anchor size per level"):
        check_config(preset("resnet-fpn-tiny", anchor_sizes=(8, 16)), "here")


def test_param_shapes_are_the_model_s_own_and_cost_no_memory():
    for cfg in (
        tiny_config(),
        preset("tiny"),
        tiny_config(backbone_stages=(), backbone="tiny"),
        preset("resnet-tiny"),
        preset("resnet-fpn-tiny"),
    ):
        real = init_model_params(cfg, 4, np.random.default_rng(0))
        traced = param_shapes(cfg, 4)
        assert traced == {k: (v.shape, v.dtype) for k, v in real.items()}
    tracemalloc.start()
    try:
        huge = param_shapes(
            tiny_config(representation_size=65536, roi_output_size=64), 1000
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert huge["head.fc6.w"][0] == (8 * 64 * 64, 65536)  # 8.6 G scalars ...
    assert peak < 20 << 20  # ... traced in a few MB


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture()
def ckpt(tmp_path):
    model = FasterRCNN(tiny_config(), NAMES, rng=np.random.default_rng(0))
    return save_checkpoint(tmp_path / "c.npz", model, step=3, extra={"seed": 0})


def rewrite(path, out, meta_change=None, arrays=None):
    with np.load(path) as z:
        files = {k: z[k] for k in z.files}
    meta = json.loads(str(files["meta"]))
    if meta_change:
        meta_change(meta)
    files["meta"] = np.array(json.dumps(meta))
    files.update(arrays or {})
    np.savez(out, **files)
    return out


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m: m["config"].update(representation_size=10**9), "representation_size must be in"),
        (
            lambda m: m["config"].update(representation_size=60000, roi_output_size=60),
            "GiB of parameters|do not match",
        ),
        (lambda m: m["config"].update(rpn_channels=4096), "do not match its config"),
        (lambda m: m["config"].update(min_size="big"), "min_size must be an integer"),
        (lambda m: m["config"].update(bogus=1), "unknown field"),
        (lambda m: m.update(class_names="abc"), "class_names must be a list"),
        (lambda m: m.update(class_names=[["x"], "y"]), "class_names must be a list"),
        (lambda m: m.update(step=-4), "step must be a non-negative integer"),
        (lambda m: m.update(config=[1]), "config must be a JSON object"),
    ],
)
def test_crafted_checkpoint_is_one_clear_error_before_any_allocation(ckpt, tmp_path, change, match):
    bad = rewrite(ckpt, tmp_path / "bad.npz", change)
    tracemalloc.start()
    try:
        with pytest.raises(MinirccnError, match=f"bad.npz: .*({match})"):
            load_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_crafted_array_header_and_deep_metadata_are_refused(ckpt, tmp_path):
    # an array whose header claims far more data than the file holds
    bad = tmp_path / "lie.npz"
    shutil.copy(ckpt, bad)
    with zipfile.ZipFile(ckpt) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "param/head.fc6.w.npy":
                data = data.replace(b"(72, 16)", b"(72000000, 16000)", 1)
            zout.writestr(info, data)
    with pytest.raises(MinirccnError, match="claims shape .*truncated or crafted"):
        load_checkpoint(bad)
    deep = tmp_path / "deep.npz"
    np.savez(deep, meta=np.array("[" * 100000 + "]" * 100000))
    with pytest.raises(MinirccnError, match="deep.npz: not a readable minirccn checkpoint"):
        load_checkpoint(deep)


def test_detect_and_eval_refuse_a_crafted_checkpoint_in_one_line(ckpt, tmp_path, capsys):
    bad = rewrite(ckpt, tmp_path / "bad.npz", lambda m: m["config"].update(roi_output_size=10**6))
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    assert main(["detect", "--checkpoint", str(bad), str(image), "--out", str(tmp_path / "d")]) == 2
    assert "bad.npz: config: roi_output_size must be in [1, 64]" in one_line(capsys)
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "bad.npz: config: roi_output_size" in one_line(capsys)


# ----------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", "train", shapes_config=SHAPES), None


def train(data, out, **kw):
    return T.train(
        tiny_config(),
        train_data=data[0],
        test_data=None,
        out=str(out),
        backend="numpy",
        progress=False,
        eval_split="",
        outputs=False,
        **kw,
    )


def test_resume_is_checked_against_the_data_steps_and_seed(data, tmp_path):
    train(data, tmp_path, iters=2, seed=1)
    with pytest.raises(
        MinirccnError, match=r"--iters 1: fewer than the 2 steps .*--iters 2 or more"
    ):
        train(data, tmp_path, iters=1, seed=1, resume=True)
    with pytest.raises(MinirccnError, match="--seed 5: .* was trained with --seed 1; .*--reseed"):
        train(data, tmp_path, iters=3, seed=5, resume=True)
    other = load_dataset("shapes", "train", shapes_config=SHAPES)
    other.class_names = ["__background__", "square", "circle", "triangle"]
    with pytest.raises(MinirccnError, match=r"was trained on classes \['circle', 'square'"):
        train((other, None), tmp_path, iters=3, seed=1, resume=True)
    result = train(data, tmp_path, iters=3, seed=5, resume=True, reseed=True)
    assert len(result["history"]["loss"]) == 3
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["step"] == 3


def test_alternating_checkpoint_cannot_be_resumed(data, tmp_path):
    T.train(
        tiny_config(),
        train_data=data[0],
        out=str(tmp_path),
        backend="numpy",
        progress=False,
        eval_split="",
        outputs=False,
        iters=4,
        alternating=True,
    )
    with pytest.raises(MinirccnError, match="holds no optimiser state"):
        train(data, tmp_path, iters=6, resume=True)


# ----------------------------------------------------------------------------- images


def truncate(path, keep=0.6):
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: int(len(blob) * keep)])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_image_problem_finds_truncated_files_from_their_header_and_end(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path, format=fmt)
    assert image_problem(str(path)) is None
    truncate(path)
    assert "truncated" in image_problem(str(path))
    path.write_bytes(b"not an image")
    assert "cannot read the image" in image_problem(str(path))


@pytest.fixture()
def coco(tmp_path):
    shapes = load_dataset("shapes", "train", shapes_config=SHAPES)
    return export_dataset(shapes, "coco", tmp_path / "coco", count=6)


def test_truncated_image_among_good_ones_is_skipped_with_one_warning(coco, tmp_path, capsys):
    images = sorted(os.listdir(os.path.dirname(coco) + "/images"))
    bad = os.path.join(os.path.dirname(coco), "images", images[0])
    truncate(bad)
    out = tmp_path / "run"
    args = ["train", "--data", coco, "--out", str(out), "--iters", "2", "--eval-split", "all"]
    args += ["--eval-images", "1", "--no-progress", "--backend", "numpy"]
    monkey = pytest.MonkeyPatch()
    monkey.setattr(T, "preset", lambda name: tiny_config())
    try:
        assert main(args) == 0
    finally:
        monkey.undo()
    err = capsys.readouterr().err
    assert err.count(f"minirccn: warning: {bad}: truncated PNG (no IEND chunk); skipped") == 2
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.npz")[1]["step"] == 2


def test_no_readable_image_and_an_image_lost_mid_run_are_clear(coco, tmp_path, data):
    folder = os.path.join(os.path.dirname(coco), "images")
    ds = load_dataset(coco, "all")
    for name in os.listdir(folder):
        truncate(os.path.join(folder, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(MinirccnError, match="none of its 6 images is readable"):
            check_images(ds)
    # an image that goes bad after the checks: the steps done are saved, the file is named
    good = load_dataset("shapes", "train", shapes_config=SHAPES)

    class Fails:
        class_names, name = good.class_names, "fails"

        def __len__(self):
            return len(good)

        def __getitem__(self, i):
            if self.calls == 2:
                raise MinirccnError("lost.png: image file not found")
            self.calls += 1
            return good[i]

        calls = 0

    with pytest.raises(
        MinirccnError, match=r"lost.png: image file not found; checkpoint at step 2"
    ):
        train((Fails(), None), tmp_path / "r", iters=5)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.npz")[1]["step"] == 2


# ----------------------------------------------------------------------------- data guards


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(str(path))
    assert image.shape == (1, 4, 3) and image.dtype == np.uint8
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]


def test_boolean_fields_written_as_text():
    for v in ("0", "false", "No", " FALSE ", 0, False, None, ""):
        assert parse_bool(v, "f", "difficult") is False
    for v in ("1", "true", "Yes", 1, True):
        assert parse_bool(v, "f", "difficult") is True
    for v in ("2", "maybe", 7, [1], 0.5):
        with pytest.raises(MinirccnError, match="^f: difficult must be 0/1"):
            parse_bool(v, "f", "difficult")


def _voc(root, difficult="0", filename="a.png", split_ids="a\n", truncated=None):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    Image.new("RGB", (30, 20)).save(root / "JPEGImages" / "a.png")
    extra = f"<truncated>{truncated}</truncated>" if truncated is not None else ""
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>{filename}</filename><object><name>dog</name>"
        f"<difficult>{difficult}</difficult>{extra}<bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    (root / "ImageSets" / "Main" / "train.txt").write_text(split_ids)
    return root


def test_voc_guards(tmp_path):
    assert load_dataset(_voc(tmp_path / "a", "false"))[0]["difficult"].tolist() == [False]
    assert load_dataset(_voc(tmp_path / "b", "yes"))[0]["difficult"].tolist() == [True]
    with pytest.raises(MinirccnError, match=r"a.xml: object 0: <difficult> must be 0/1"):
        load_dataset(_voc(tmp_path / "c", "sometimes"))
    with pytest.raises(MinirccnError, match=r"a.xml: object 0: <truncated> must be 0/1"):
        load_dataset(_voc(tmp_path / "c2", truncated="half"))
    with pytest.raises(MinirccnError, match=r"a.xml: <filename> '../../etc/passwd' leaves"):
        load_dataset(_voc(tmp_path / "d", filename="../../etc/passwd"))
    with pytest.raises(MinirccnError, match=r"a.xml: <filename> '/etc/passwd' leaves"):
        load_dataset(_voc(tmp_path / "e", filename="/etc/passwd"))
    with pytest.raises(MinirccnError, match=r"train.txt: no image ids"):
        load_dataset(_voc(tmp_path / "f", split_ids="\n\n"))
    with pytest.raises(MinirccnError, match=r"id '\.\./x.xml' leaves"):
        load_dataset(_voc(tmp_path / "g", split_ids="../x\n"))


def _coco_file(tmp_path, images=None, annotations=None, text=None):
    Image.new("RGB", (30, 20)).save(tmp_path / "p.png")
    data = {
        "images": [{"id": 1, "file_name": "p.png"}] if images is None else images,
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": annotations
        if annotations is not None
        else [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": "no"}],
    }
    path = tmp_path / "c.json"
    path.write_text(text if text is not None else json.dumps(data))
    return str(path)


def test_coco_guards(tmp_path):
    assert load_dataset(_coco_file(tmp_path), "all")[0]["difficult"].tolist() == [False]
    cases = [
        (dict(images=[]), "c.json: no images"),
        (dict(images=[{"id": [1], "file_name": "p.png"}]), r"images\[0\]: id must be an integer"),
        (dict(images=[{"id": 1, "file_name": "../p.png"}]), "file_name '../p.png' leaves"),
        (dict(images=[{"id": 1, "file_name": 7}]), "file_name must be a non-empty string"),
        (
            dict(annotations=[{"id": 5, "image_id": [1], "category_id": 1, "bbox": [1, 1, 4, 4]}]),
            "annotation 5: image_id must be an integer or a string",
        ),
        (
            dict(
                annotations=[
                    {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 2}
                ]
            ),
            "annotation 5: iscrowd must be 0/1",
        ),
        (dict(text="[" * 100000 + "]" * 100000), "c.json: JSON nested too deeply|expected a JSON"),
    ]
    for kwargs, match in cases:
        with pytest.raises(MinirccnError, match=match):
            load_dataset(_coco_file(tmp_path, **kwargs), "all")


def test_csv_guards(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.new("RGB", (30, 20)).save(tmp_path / "images" / "x.png")
    path = tmp_path / "a.csv"
    head = "ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf\n"
    path.write_text(head + "x,cat,0.1,0.5,0.1,0.5,no\n")
    assert load_dataset(str(path), "all")[0]["difficult"].tolist() == [False]
    for body, match in [
        ("", "a.csv: no images"),
        ("x,cat,0.1,0.5,0.1,0.5,perhaps\n", "line 2: IsGroupOf must be 0/1"),
        ("../x,cat,0.1,0.5,0.1,0.5,0\n", "ImageID '../x' leaves"),
    ]:
        path.write_text(head + body)
        with pytest.raises(MinirccnError, match=match):
            load_dataset(str(path), "all")


def test_empty_training_data_is_one_clear_line(tmp_path, capsys):
    root = _voc(tmp_path / "v")
    (root / "ImageSets" / "Main" / "train.txt").write_text("")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "o"), "--iters", "1"]) == 2
    assert "train.txt: no image ids" in one_line(capsys)


def test_eval_skips_an_unreadable_image_with_one_warning(coco, tmp_path, capsys):
    model = FasterRCNN(tiny_config(), NAMES, rng=np.random.default_rng(0))
    ckpt = save_checkpoint(tmp_path / "m.npz", model)
    bad = load_dataset(coco, "all").image_file(0)
    truncate(bad)
    assert main(["eval", "--checkpoint", ckpt, "--data", coco, "--split", "all", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"minirccn: warning: {bad}: truncated PNG (no IEND chunk); skipped"
    assert json.loads(captured.out)["num_images"] == 5
