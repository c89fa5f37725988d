"""Own data: splits as users expect, validation during training, best.npz, the summary."""

import json
import os

import pytest

from minirccn.app import userdata
from minirccn.app.cli import main
from minirccn.data import ShapesConfig, load_dataset
from minirccn.data.export import export_coco, export_voc

SMALL = ShapesConfig(image_size=64, min_object_size=10, max_object_size=30, train_size=12,
                     test_size=6)

# a small, fast network for the CLI runs (every field through --set)
FAST = [
    "backbone_stages=[[4, 1, true], [8, 1, true], [8, 1, false]]",
    "rpn_channels=8",
    "representation_size=16",
    "roi_output_size=3",
    "rpn_pre_nms_top_n_test=30",
    "rpn_post_nms_top_n_test=10",
    "box_batch_size_per_image=16",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    train = export_coco(load_dataset("shapes", "train", shapes_config=SMALL), str(root / "tr"))
    val = export_coco(load_dataset("shapes", "test", shapes_config=SMALL), str(root / "va"))
    return {"train": train, "val": val, "root": root}


def test_coco_alone_holds_out_a_fixed_part_and_says_so(files):
    p = userdata.plan(files["train"])
    assert len(p.train) + len(p.val) == 12 and len(p.val) == 2
    assert "holding out a fixed 2 of the 12 images" in p.note and "--val-data" in p.note
    ids = {s["image_id"] for s in p.train} & {s["image_id"] for s in p.val}
    assert not ids  # disjoint
    assert [s["image_id"] for s in userdata.plan(files["train"]).val] == [
        s["image_id"] for s in p.val
    ]  # fixed


def test_coco_with_val_data_trains_on_all_of_it(files):
    p = userdata.plan(files["train"], val_data=files["val"])
    assert len(p.train) == 12 and len(p.val) == 6 and p.train_split == "all"
    assert "all 12 images" in p.note and "all 6 images" in p.note
    p = userdata.plan(files["train"], split="all")
    assert len(p.train) == 12 and p.val is None and "no validation data" in p.note


def test_voc_trains_on_trainval_and_validates_on_test(tmp_path):
    root = export_voc(load_dataset("shapes", "train", shapes_config=SMALL), str(tmp_path / "voc"))
    main_dir = os.path.join(root, "ImageSets", "Main")
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")))
    for name, part in (("train", ids[:6]), ("val", ids[6:9]), ("trainval", ids[:9]),
                       ("test", ids[9:])):
        with open(os.path.join(main_dir, f"{name}.txt"), "w") as fh:
            fh.write("\n".join(part) + "\n")
    p = userdata.plan(root)
    assert (p.train_split, len(p.train), p.val_split, len(p.val)) == ("trainval", 9, "test", 3)
    os.remove(os.path.join(main_dir, "test.txt"))
    p = userdata.plan(root)  # no test list: val is part of trainval, so train + val
    assert (p.train_split, len(p.train), p.val_split, len(p.val)) == ("train", 6, "val", 3)


def test_train_with_val_data_periodic_eval_best_and_summary(files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", files["train"], "--val-data", files["val"], "--out", str(out),
            "--iters", "4", "--set", "eval_every=2", "--no-progress"]
    for s in FAST:
        argv += ["--set", s]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "training on all 12 images" in text and "validating on all 6 images" in text
    assert "derived from the data" in text and "anchor_sizes=" in text
    for word in ("mAP@0.5", "per", str(out / "checkpoint.npz"), str(out / "best.npz"),
                 str(out / "val_curve.png"), "images/s"):
        assert word in text, word
    m = json.loads((out / "metrics.json").read_text())
    assert [p["step"] for p in m["val_curve"]] == [2, 4]
    for p in m["val_curve"]:  # each point: recall and the training loss since the last one
        assert -1.0 <= p["mar_100"] <= 1.0 and p["train_loss"] > 0
    assert "verdict: validation mAP@0.5" in text
    assert m["best"]["map50"] == max(p["map50"] for p in m["val_curve"])
    assert m["eval_images"] == 6 and m["derived"]["fields"]["iters"] == 4
    assert m["config"]["rpn_channels"] == 8 and m["config_sources"]["rpn_channels"] == "--set"
    assert m["config_sources"]["min_size"] == "derived" and m["config_sources"]["iters"] == "--iters"
    assert (out / "best.npz").is_file() and (out / "val_curve.png").is_file()
    # eval --data F scores all of F, with the checkpoint's own config
    assert main(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--data", files["train"],
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 12
    assert main(["eval", "--checkpoint", str(out / "best.npz"), "--data", files["train"],
                 "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 2
    # --json: one object for machines
    argv[argv.index(str(out))] = str(tmp_path / "run2")
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["files"]["best"].endswith("best.npz") and "per_class" in d and d["iters"] == 4


def test_minutes_picks_steps_deterministically(files, capsys):
    argv = ["config", "show", "--data", files["train"], "--minutes", "0.5", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert main(argv[:-1]) == 0
    assert f"iters={first['iters']} for 0.5 min" in capsys.readouterr().out
    assert main(["config", "show", "--minutes", "1", "--iters", "5"]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_eval_split_flag_still_chooses_the_evaluated_part(files):
    assert userdata.plan(files["train"], eval_split="").val is None
    p = userdata.plan(files["train"], eval_split="all")
    assert len(p.train) == 10 and len(p.val) == 12 and "'all'" in p.note


def test_other_presets_take_only_size_and_anchors(files, capsys):
    assert main(["config", "show", "--preset", "vgg16", "--data", files["train"], "--json"]) == 0
    out = capsys.readouterr().out
    cfg = json.loads(out.strip().splitlines()[-1])
    assert cfg["backbone"] == "vgg16" and cfg["backbone_stages"] == []
    assert cfg["iters"] == 70000 and cfg["min_size"] == 64


def test_a_pyramid_preset_keeps_one_anchor_size_per_level(files, capsys):
    # derived anchor sizes (one list for one map) cannot replace an FPN's per-level sizes
    args = ["config", "show", "--preset", "resnet-fpn-tiny", "--data", files["train"], "--json"]
    assert main(args) == 0
    cfg = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from minirccn.config import preset

    assert cfg["anchor_sizes"] == list(preset("resnet-fpn-tiny").anchor_sizes)
    assert cfg["min_size"] == 64 and cfg["fpn_channels"] == 32


def test_derived_values_that_set_replaces_are_said_so(files, capsys):
    """The derived block shows what the data gave; a --set that replaces one of those values
    is named with both values, and recorded in metrics.json's derived.overridden."""
    args = [
        "config", "show", "--data", files["train"], "--val-data", files["val"], "--iters", "4",
        "--set", "min_size=48", "--set", "box_roi_pool=roi_pool",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if l.strip().startswith("overridden"))
    assert "min_size=48 (--set; derived 64)" in line
    assert 'box_roi_pool="roi_pool" (--set; derived "roi_align")' in line
    assert "iters" not in line  # --iters is what the derivation used: nothing replaced
    import argparse

    ns = argparse.Namespace(
        preset="tiny", set=["min_size=48"], lr=None, minutes=None, iters=4, config=None,
        eval_split="test", data=files["train"], images=None, val_data=files["val"],
        val_images=None, split=None, no_derive=False,
    )
    setup = userdata.configure(ns, log=lambda *a: None)
    assert setup["config"].min_size == 48
    assert setup["metrics"]["derived"]["overridden"] == {
        "min_size": {"value": 48, "derived": 64, "source": "--set"}
    }
