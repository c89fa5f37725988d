"""The input half of issue 25's misuse sweep (docs/misuse-input.md): each test is one defect of
../shared/reviews/cli-misuse-sweep.md that failed on the code the sweep ran (09c0f12)."""

import json
import re
import os

import numpy as np
import pytest

from minirccn.app.cli import main
from minirccn.data import ShapesConfig, load_dataset
from minirccn.data.export import export_coco

SMALL = ShapesConfig(image_size=64, min_object_size=10, max_object_size=30, train_size=8,
                     test_size=4)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A small COCO file (8 images) exported from shapes: its path."""
    root = tmp_path_factory.mktemp("coco")
    return export_coco(load_dataset("shapes", "train", shapes_config=SMALL), str(root / "ds"))


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ------------------------------------------------------------------ D13, D23: --minutes
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_minutes_inf_is_a_clear_error_not_an_internal_one(value, capsys):
    assert main(["config", "show", f"--minutes={value}"]) == 2
    assert "--minutes: expected a positive finite number" in last_error(capsys)


def test_a_capped_minutes_budget_says_it_is_capped(coco, capsys):
    assert main(["config", "show", "--data", coco, "--minutes", "1e300"]) == 0
    out = capsys.readouterr().out
    assert "capped at 150 passes over the data" in out and "1e+300" in out


# ------------------------------------------------------------------ D21, D16: checkpoint values
from minirccn.config import preset  # noqa: E402
from minirccn.core.errors import MinirccnError  # noqa: E402
from minirccn.detector.models.faster_rcnn import FasterRCNN  # noqa: E402
from minirccn.engine import checkpoint as C  # noqa: E402

NAMES = ["__background__", "circle", "square", "triangle"]
TINY_NET = dict(backbone_stages=((4, 1, True), (6, 1, True)), rpn_channels=4,
                representation_size=8, roi_output_size=2, min_size=64, max_size=64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = FasterRCNN(preset("tiny", **TINY_NET), NAMES, rng=np.random.default_rng(0))
    return C.save_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint.npz", model)


def crafted(src, dst, change=None, meta=None):
    """A copy of checkpoint ``src`` at ``dst`` with ``change(arrays)`` / ``meta(meta)`` applied."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    if change:
        change(arrays)
    if meta:
        m = json.loads(str(arrays["meta"]))
        meta(m)
        arrays["meta"] = np.array(json.dumps(m))
    np.savez(dst, **arrays)
    return str(dst)


def first_param(arrays):
    return sorted(k for k in arrays if k.startswith("param/"))[0]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_weights_are_refused_naming_the_parameter(ckpt, tmp_path, value, capsys):
    def poison(a):
        k = first_param(a)
        a[k] = a[k].copy()
        a[k].flat[0] = value
    path = crafted(ckpt, tmp_path / "bad.npz", poison)
    with pytest.raises(MinirccnError, match=r"parameter backbone\.\S+ holds 1 NaN or infinite"):
        C.load_checkpoint(path)
    img = str(tmp_path / "x.png")
    from PIL import Image
    Image.new("RGB", (64, 64)).save(img)
    assert main(["detect", "--checkpoint", path, img, "--out", str(tmp_path / "det")]) == 2
    assert "NaN or infinite" in last_error(capsys)


def test_a_big_endian_float32_checkpoint_is_a_float32_checkpoint(ckpt, tmp_path):
    def swap(a):
        for k in [k for k in a if k.startswith("param/")]:
            a[k] = a[k].astype(">f4")
    model, _ = C.load_checkpoint(crafted(ckpt, tmp_path / "be.npz", swap))
    ref, _ = C.load_checkpoint(ckpt)
    for k, v in ref.params.items():
        assert model.params[k].dtype.isnative and np.array_equal(model.params[k], v)
    img = str(tmp_path / "x.png")
    from PIL import Image
    Image.new("RGB", (64, 64)).save(img)
    out = str(tmp_path / "det")
    assert main(["detect", "--checkpoint", str(tmp_path / "be.npz"), img, "--out", out]) == 0


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_a_parameter_of_another_dtype_is_refused_naming_it(ckpt, tmp_path, dtype):
    def cast(a):
        k = first_param(a)
        a[k] = a[k].astype(dtype)
    with pytest.raises(MinirccnError, match=r"checkpoint.npz|parameter backbone\.\S+ has dtype"):
        C.load_checkpoint(crafted(ckpt, tmp_path / "dt.npz", cast))
    with pytest.raises(MinirccnError, match=r"dt\.npz: parameter backbone\.\S+ has dtype .* its config says float32"):
        C.load_checkpoint(str(tmp_path / "dt.npz"))


# ------------------------------------------------------------------ D12: bounded work
def test_a_checkpoint_asking_for_huge_images_is_refused_before_any_work(ckpt, tmp_path, capsys):
    def huge(m):
        m["config"]["min_size"] = m["config"]["max_size"] = 8192
    path = crafted(ckpt, tmp_path / "huge.npz", meta=huge)
    with pytest.raises(MinirccnError, match=r"huge\.npz: config: min_size x max_size = 8192 x 8192"):
        C.load_checkpoint(path)
    img = str(tmp_path / "x.png")
    from PIL import Image
    Image.new("RGB", (160, 128)).save(img)
    assert main(["detect", "--checkpoint", path, img, "--out", str(tmp_path / "d")]) == 2
    assert "M pixels, more than the 16.8 M" in last_error(capsys)


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(min_size=2048, max_size=4096), "anchors per image"),
        (dict(rpn_pre_nms_top_n_test=10**6, min_size=2048, max_size=2048), "NMS walk"),
    ],
)
def test_a_checkpoint_asking_for_too_many_anchors_or_nms_boxes_is_refused(ckpt, tmp_path, fields, words):
    path = crafted(ckpt, tmp_path / "w.npz", meta=lambda m: m["config"].update(fields))
    with pytest.raises(MinirccnError, match=words):
        C.load_checkpoint(path)


def test_the_work_bound_counts_this_machines_memory(ckpt, tmp_path, monkeypatch):
    from minirccn.engine import checks
    path = crafted(ckpt, tmp_path / "m.npz", meta=lambda m: m["config"].update(min_size=1024, max_size=1024))
    C.load_checkpoint(path)  # 1 M pixels: fine here
    monkeypatch.setattr(checks, "_memory_bytes", lambda: 256 << 20)
    with pytest.raises(MinirccnError, match=r"detecting one image needs at least .* GiB, more than half"):
        C.load_checkpoint(path)


# ------------------------------------------------------------------ D24: --out first
def test_an_unusable_out_is_refused_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    from minirccn.app import userdata
    def never(*a, **k):
        raise AssertionError("the data was read before --out was checked")
    monkeypatch.setattr(userdata, "configure", never)
    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    assert main(["train", "--data", "missing.json", "--out", str(afile)]) == 2
    assert "exists and is not a folder" in last_error(capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"x")
    assert main(["train", "--data", "missing.json", "--out", str(run)]) == 2
    assert "holds a run already" in last_error(capsys)
    assert main(["train", "--data", "missing.json", "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "--resume: no checkpoint at" in last_error(capsys)


# ------------------------------------------------------------------ D18, D15, D7: one bad image
def corrupt_inside(path):
    """Damage ``path``'s PNG image data in the middle, keeping its IEND chunk: the preflight
    (header and end marker) passes, decoding fails."""
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    b = bytearray(open(path, "rb").read())
    for k in range(len(b) // 2, len(b) // 2 + 200):
        b[k] ^= 0x5A
    open(path, "wb").write(bytes(b))
    return str(path)


@pytest.fixture
def one_bad(coco, tmp_path):
    """A copy of the COCO set whose first image is corrupt inside (intact end marker)."""
    import shutil
    root = tmp_path / "one_bad"
    shutil.copytree(os.path.dirname(coco), root)
    d = json.load(open(root / "annotations.json"))
    bad = root / "images" / d["images"][0]["file_name"].split("/")[-1]
    corrupt_inside(bad)
    return str(root / "annotations.json"), str(bad)


def test_detect_skips_a_bad_image_with_one_warning_and_runs_the_others(ckpt, tmp_path, capsys):
    from PIL import Image
    good = [str(tmp_path / f"g{i}.png") for i in range(2)]
    for g in good:
        Image.new("RGB", (64, 64), (40, 90, 10)).save(g)
    bad = corrupt_inside(tmp_path / "bad.png")
    strip = str(tmp_path / "strip.png")
    Image.new("RGB", (4000, 1)).save(strip)
    out = tmp_path / "det"
    assert main(["detect", "--checkpoint", ckpt, good[0], bad, strip, good[1], "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sorted(p.name for p in out.glob("*.json")) == ["g0.json", "g1.json"]
    assert len([e for e in err if "bad.png: cannot decode image" in e and "skipped" in e]) == 1
    assert len([e for e in err if "strip.png: cannot run the model on this 4000x1 image" in e]) == 1
    assert main(["detect", "--checkpoint", ckpt, bad, strip, "--out", str(out)]) == 2
    assert "none of the 2 images could be read" in last_error(capsys)
    assert main(["detect", "--checkpoint", ckpt, bad, "--out", str(out)]) == 2
    assert "bad.png: cannot decode image" in last_error(capsys)


def test_eval_skips_a_bad_image_with_one_warning(ckpt, one_bad, capsys):
    data, bad = one_bad
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["num_images"] == 7
    assert [e for e in err.splitlines() if "skipped" in e] == [
        f"minirccn: warning: {bad}: cannot decode image (unrecognized data stream contents "
        "when reading image file); skipped"
    ]


@pytest.mark.parametrize("fmt", ["coco", "voc", "csv"])
def test_data_export_skips_a_bad_image(one_bad, tmp_path, fmt, capsys):
    data, bad = one_bad
    out = str(tmp_path / "exp")
    assert main(["data", "export", "--format", fmt, "--data", data, "--split", "all", "--out", out]) == 0
    o, err = capsys.readouterr()
    assert "wrote 7 images" in o and f"{bad}: cannot decode image" in err
    back = {"voc": out, "coco": os.path.join(out, "annotations.json"),
            "csv": os.path.join(out, "annotations.csv")}[fmt]
    assert len(load_dataset(back, "all")) == 7


def test_data_preview_skips_a_bad_image(one_bad, tmp_path, capsys):
    data, bad = one_bad
    out = str(tmp_path / "p.png")
    assert main(["data", "preview", "--data", data, "--split", "all", "--out", out]) == 0
    assert f"{bad}: cannot decode image" in capsys.readouterr().err and os.path.isfile(out)


# ------------------------------------------------------------------ D19: a truncated JPEG closed with FFD9
def truncate_jpeg_with_eoi(path, keep=0.5):
    """Cut the JPEG at ``path`` to ``keep`` of its bytes and append the end-of-image marker:
    Pillow decodes it without an error, the missing blocks grey."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)] + b"\xff\xd9")
    return str(path)


@pytest.fixture(scope="module")
def one_trunc_jpeg(tmp_path_factory):
    """A COCO set of 8 JPEG images whose first is cut in half and closed with FFD9."""
    root = tmp_path_factory.mktemp("trunc_jpeg")
    data = export_coco(load_dataset("shapes", "train", shapes_config=SMALL), str(root / "ds"),
                       image_format="jpg")
    d = json.load(open(data))
    bad = os.path.join(os.path.dirname(data), "images", d["images"][0]["file_name"])
    return data, truncate_jpeg_with_eoi(bad)


def test_detect_refuses_a_truncated_jpeg_closed_with_an_end_marker(ckpt, tmp_path, capsys):
    from PIL import Image
    good = str(tmp_path / "good.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good, quality=95)
    bad = truncate_jpeg_with_eoi(_copy(good, tmp_path / "trunc_eoi.jpg"))
    out = tmp_path / "det"
    assert main(["detect", "--checkpoint", ckpt, bad, "--out", str(out)]) == 2
    assert last_error(capsys) == (
        f"minirccn: error: {bad}: truncated JPEG (scan 1 ends after 7 of its 16 blocks of 16x16 "
        "pixels; a decoder fills the rest grey)")
    assert main(["detect", "--checkpoint", ckpt, good, bad, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{bad}: truncated JPEG" in err and "skipped" in err
    assert sorted(p.name for p in out.glob("*.json")) == ["good.json"]


def _copy(src, dst):
    import shutil
    shutil.copy(src, dst)
    return dst


def test_train_skips_a_truncated_jpeg_with_one_warning(one_trunc_jpeg, tmp_path, capsys):
    data, bad = one_trunc_jpeg
    argv = ["train", "--data", data, "--split", "all", "--eval-split", "", "--no-progress",
            "--iters", "2", "--out", str(tmp_path / "run")] + SETS
    assert main(argv) == 0
    warned = [e for e in capsys.readouterr().err.splitlines() if "truncated JPEG" in e]
    assert warned == [f"minirccn: warning: {bad}: truncated JPEG (scan 1 ends after 6 of its 16 "
                      "blocks of 16x16 pixels; a decoder fills the rest grey); skipped"]


def test_the_training_loader_replaces_a_jpeg_truncated_after_the_preflight(one_trunc_jpeg):
    from minirccn.data.checks import ReplaceUnreadable
    from minirccn.data.common import DataWarning
    data, bad = one_trunc_jpeg
    ds = ReplaceUnreadable(load_dataset(data, "all"))  # no preflight: the loader finds it
    i = [ds.dataset.image_file(k) for k in range(len(ds))].index(bad)
    with pytest.warns(DataWarning, match="truncated JPEG") as record:
        assert ds[i]["image_id"] == ds.dataset[(i + 1) % len(ds)]["image_id"]
    assert [str(w.message) for w in record] == [
        f"{bad}: truncated JPEG (scan 1 ends after 6 of its 16 blocks of 16x16 pixels; a decoder "
        "fills the rest grey); skipped for the rest of the run"]


def test_eval_preview_and_export_skip_a_truncated_jpeg(ckpt, one_trunc_jpeg, tmp_path, capsys):
    data, bad = one_trunc_jpeg
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--split", "all", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["num_images"] == 7 and f"{bad}: truncated JPEG" in err
    prev = str(tmp_path / "p.png")
    assert main(["data", "preview", "--data", data, "--split", "all", "--out", prev]) == 0
    assert f"{bad}: truncated JPEG" in capsys.readouterr().err and os.path.isfile(prev)
    exp = str(tmp_path / "exp")
    assert main(["data", "export", "--format", "coco", "--data", data, "--split", "all",
                 "--out", exp]) == 0
    o, err = capsys.readouterr()
    assert "wrote 7 images" in o and f"{bad}: truncated JPEG" in err


# ------------------------------------------------------------------ D20: EXIF, COCO width/height
def exif_rotated(path, size=(160, 128), orientation=6):
    """A JPEG stored ``size`` (w, h) wide with EXIF orientation 6 (shown turned 90 degrees
    clockwise: ``h x w``); a red block marks the stored top-left corner."""
    from PIL import Image
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=95)
    return str(path)


def test_exif_orientation_is_applied_when_an_image_is_read(tmp_path):
    from minirccn.data.common import read_image
    img = read_image(exif_rotated(tmp_path / "e.jpg"))
    assert img.shape == (160, 128, 3)  # shown as a portrait
    assert img[5, -5, 0] > 200 and img[5, 5, 0] < 50  # stored top-left is now top-right


def test_detect_writes_the_displayed_size_of_an_exif_image(ckpt, tmp_path):
    path = exif_rotated(tmp_path / "exif6.jpg")
    out = tmp_path / "det"
    assert main(["detect", "--checkpoint", ckpt, path, "--out", str(out)]) == 0
    d = json.load(open(out / "exif6.json"))
    assert (d["width"], d["height"]) == (128, 160)


def test_coco_width_height_that_disagree_with_the_image_are_one_warning(coco, tmp_path, capsys):
    import warnings
    from minirccn.data.common import DataWarning
    d = json.load(open(coco))
    d["images"][0]["width"] = 10
    bad = tmp_path / "w.json"
    json.dump(d, open(bad, "w"))
    ds = load_dataset(str(bad), "all", images=os.path.join(os.path.dirname(coco), "images"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds)):
            ds[i]
    texts = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(texts) == 1 and "width 10 height 64 in the file" in texts[0] and "64x64" in texts[0]


# ------------------------------------------------------------------ D25: no annotations
def test_training_on_a_coco_file_without_annotations_is_refused(coco, tmp_path, capsys):
    d = json.load(open(coco))
    d["annotations"] = []
    empty = tmp_path / "noanns.json"
    json.dump(d, open(empty, "w"))
    argv = ["train", "--data", str(empty), "--images", os.path.join(os.path.dirname(coco), "images"),
            "--split", "all", "--iters", "2", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "hold no boxes at all: nothing to learn from" in last_error(capsys)
    assert not os.path.exists(tmp_path / "r" / "checkpoint.npz")


# ------------------------------------------------------------------ VOC split files
def voc_with_lists(tmp_path, lists):
    from minirccn.data.export import export_voc
    root = export_voc(load_dataset("shapes", "train", shapes_config=SMALL), str(tmp_path / "voc"))
    main_dir = os.path.join(root, "ImageSets", "Main")
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")))
    for f in os.listdir(main_dir):
        os.unlink(os.path.join(main_dir, f))
    for name, (a, b) in lists.items():
        open(os.path.join(main_dir, f"{name}.txt"), "w").write("\n".join(ids[a:b]) + "\n")
    return root


def test_a_voc_folder_with_only_trainval_trains_on_it_and_says_so(tmp_path):
    from minirccn.app import userdata
    p = userdata.plan(voc_with_lists(tmp_path, {"trainval": (0, 8)}))
    assert p.train_split == "trainval" and len(p.train) == 8 and p.val is None
    assert "ImageSets/Main/trainval.txt" in p.note


def test_a_voc_folder_never_validates_on_a_list_inside_the_training_one(tmp_path):
    from minirccn.app import userdata
    p = userdata.plan(voc_with_lists(tmp_path, {"trainval": (0, 8), "val": (6, 8)}))
    assert p.train_split == "trainval" and p.val is None


def test_a_voc_folder_without_split_files_trains_on_every_annotation(tmp_path):
    from minirccn.app import userdata
    p = userdata.plan(voc_with_lists(tmp_path, {}))
    assert p.train_split == "all" and len(p.train) == 8 and p.val is None
    assert "no train.txt or trainval.txt; found: no split files" in p.note


def test_a_voc_folder_with_only_other_split_files_lists_them(tmp_path):
    from minirccn.app import userdata
    with pytest.raises(MinirccnError, match=r"no train\.txt or trainval\.txt, only test\.txt, val\.txt; give --split NAME"):
        userdata.plan(voc_with_lists(tmp_path, {"val": (6, 8), "test": (4, 6)}))


def test_a_missing_voc_split_file_lists_the_ones_found(tmp_path):
    root = voc_with_lists(tmp_path, {"trainval": (0, 8), "val": (6, 8)})
    with pytest.raises(MinirccnError, match=r"test\.txt: split file not found .*ImageSets/Main has trainval\.txt, val\.txt"):
        load_dataset(root, "test")


def test_a_voc_split_file_with_a_utf8_bom_reads(tmp_path):
    root = voc_with_lists(tmp_path, {"train": (0, 4)})
    path = os.path.join(root, "ImageSets", "Main", "train.txt")
    text = open(path).read()
    open(path, "w", encoding="utf-8-sig").write(text)
    assert len(load_dataset(root, "train")) == 4


# ------------------------------------------------------------------ D14: extending a run
FAST = ["backbone_stages=[[4, 1, true], [8, 1, true], [8, 1, false]]", "rpn_channels=8",
        "representation_size=16", "roi_output_size=3", "rpn_pre_nms_top_n_test=30",
        "rpn_post_nms_top_n_test=10", "box_batch_size_per_image=16"]
SETS = [a for f in FAST for a in ("--set", f)]


def test_a_run_can_be_extended_with_resume_iters(coco, tmp_path, capsys):
    from minirccn.engine.checkpoint import load_checkpoint
    out = str(tmp_path / "run")
    base = ["train", "--data", coco, "--split", "all", "--eval-split", "", "--no-progress",
            "--out", out] + SETS
    assert main(base + ["--iters", "10"]) == 0
    before, _ = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    capsys.readouterr()
    assert main(base + ["--iters", "20", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "--resume: going on to 20 steps with the checkpoint's schedule (" in err
    assert f"milestones={list(before.config.milestones)}" in err
    model, state = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["step"] == 20 and model.config.milestones == before.config.milestones
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["config"]["iters"] == 20 and m["config"]["milestones"] == list(before.config.milestones)


def test_resuming_with_other_data_names_the_fields_that_differ(coco, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--split", "all", "--eval-split", "", "--no-progress", "--out", out,
            "--iters", "4"] + SETS
    assert main(base + ["--data", coco]) == 0
    d = json.load(open(coco))
    for a in d["annotations"]:  # boxes twice as large: other derived anchors
        a["bbox"] = [a["bbox"][0] / 2, a["bbox"][1] / 2, a["bbox"][2] * 1.9, a["bbox"][3] * 1.9]
    other = tmp_path / "other.json"
    json.dump(d, open(other, "w"))
    images = os.path.join(os.path.dirname(coco), "images")
    capsys.readouterr()
    assert main(base + ["--data", str(other), "--images", images, "--resume"]) == 2
    line = last_error(capsys)
    assert "was trained with a different config: anchor_sizes [" in line
    assert "in the checkpoint" in line and "now (derived from the data)" in line


# ------------------------------------------------------------------ D17, D22: messages, nonsense flags
@pytest.mark.parametrize(
    "argv, words",
    [
        (["bench", "--seed", "-1"], "--seed: expected a non-negative integer, got -1"),
        (["bench", "--min-time", "-1"], "--min-time: expected a finite number"),
        (["bench", "--min-time", "nan"], "--min-time: expected a finite number"),
        (["bench", "--min-time", "inf"], "--min-time: expected a finite number"),
        (["lineage", "--seed", "-1"], "--seed: expected a non-negative integer, got -1"),
        (["lineage", "--rpn-top-n", "0"], "--rpn-top-n: expected a positive number, got 0"),
        (["lineage", "--rpn-top-n", "-1"], "--rpn-top-n: expected a positive number, got -1"),
        (["data", "preview", "--out", ""], "--out: expected a file or folder name"),
        (["config", "show", "--no-derive", "--set", "backbone=bogus"],
         "backbone must be one of tiny, vgg16"),
        (["config", "show", "--no-derive", "--set", "rpn_fg_iou_thresh=0.1"],
         "rpn_bg_iou_thresh 0.3 must not exceed rpn_fg_iou_thresh 0.1"),
        (["config", "show", "--no-derive", "--set", "scale_jitter=0.01,0.02"],
         "scale_jitter: 0.01 x min_size"),
    ],
)
def test_nonsense_flags_are_one_line_naming_the_flag(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing written where the tests run
    assert main(argv) == 2
    assert words in last_error(capsys)


def test_coco_files_that_name_their_problem(coco, tmp_path, capsys):
    images = os.path.join(os.path.dirname(coco), "images")
    text = open(coco).read()
    d = json.loads(text)
    big = tmp_path / "bigint.json"
    ann = json.dumps(d["annotations"][0]["bbox"])
    big.write_text(text.replace(ann, "[" + "9" * 5000 + ", 1, 2, 3]", 1))
    nocats = tmp_path / "nocats.json"
    json.dump({**d, "categories": [], "annotations": []}, open(nocats, "w"))
    for path, words in ((big, "bigint.json: malformed JSON (Exceeds the limit"),
                        (nocats, "nocats.json: no categories")):
        with pytest.raises(MinirccnError, match=re.escape(words)):
            load_dataset(str(path), "all", images=images)
    with pytest.raises(MinirccnError, match="--images: expected a folder name"):
        load_dataset(coco, "all", images="")


def test_deep_config_and_proposal_files_name_the_file(tmp_path):
    from minirccn.config.overrides import read_config_file
    from minirccn.proposals.source import load_proposal_file
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(MinirccnError, match="deep.json: JSON nested too deeply"):
        read_config_file(str(deep))
    with pytest.raises(MinirccnError, match="deep.json: not a readable JSON proposal file"):
        load_proposal_file(str(deep))


def test_a_bad_rng_state_names_the_checkpoint(coco, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", coco, "--split", "all", "--eval-split", "", "--no-progress",
            "--out", str(out), "--iters", "3"] + SETS
    assert main(base) == 0
    ck = str(out / "checkpoint.npz")
    crafted(ck, ck, meta=lambda m: m.update(rng_state={"bit_generator": "MT19937", "state": {}}))
    capsys.readouterr()
    assert main(base + ["--resume"]) == 2
    assert "checkpoint.npz: rng_state is not a PCG64 generator state" in last_error(capsys)


# ------------------------------------------------------------------ D7: corrupt inside, in training
def test_a_training_image_corrupt_inside_is_skipped_and_resume_goes_past_it(one_bad, tmp_path, capsys):
    from minirccn.engine.checkpoint import load_checkpoint
    data, bad = one_bad
    base = ["train", "--data", data, "--split", "all", "--eval-split", "", "--no-progress"] + SETS
    assert main(base + ["--iters", "12", "--out", str(tmp_path / "full")]) == 0
    err = capsys.readouterr().err
    assert [e for e in err.splitlines() if "cannot decode" in e] == [
        f"minirccn: warning: {bad}: cannot decode image (unrecognized data stream contents when "
        "reading image file); skipped for the rest of the run"
    ]
    # interrupted runs (6 steps, then resumed to 12) take the same images: the same weights
    assert main(base + ["--iters", "6", "--out", str(tmp_path / "kk"), "--no-derive"]) == 0
    assert main(base + ["--iters", "12", "--out", str(tmp_path / "kk"), "--no-derive", "--resume"]) == 0
    assert main(base + ["--iters", "12", "--out", str(tmp_path / "ref"), "--no-derive"]) == 0
    a, _ = load_checkpoint(str(tmp_path / "kk" / "checkpoint.npz"))
    b, _ = load_checkpoint(str(tmp_path / "ref" / "checkpoint.npz"))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)


def test_a_validation_image_corrupt_inside_is_skipped_and_the_run_finishes(coco, one_bad, tmp_path, capsys):
    data, bad = one_bad
    out = tmp_path / "run"
    argv = ["train", "--data", coco, "--split", "all", "--val-data", data, "--no-progress",
            "--iters", "4", "--set", "eval_every=2", "--out", str(out)] + SETS
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{bad}: cannot decode image" in err and "skipped" in err
    m = json.load(open(out / "metrics.json"))
    assert len(m["val_curve"]) == 2 and m["num_images"] == 7
    assert (out / "checkpoint.npz").exists() and (out / "detections.png").exists()


def test_a_corrupt_exif_block_reads_the_image_as_stored_without_a_nameless_warning(tmp_path):
    import warnings
    from PIL import Image
    from minirccn.data.common import read_image
    path = str(tmp_path / "garbexif.jpg")
    Image.new("RGB", (40, 30)).save(path, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")
    from minirccn.data.checks import image_problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_problem(path) is None
        assert read_image(path).shape == (30, 40, 3)
