"""Re-run the writing half of issue 25's misuse sweep (D1-D6, D8-D11 of
../shared/reviews/cli-misuse-sweep.md) on this checkout and print OK or DEFECT per case
(docs/misuse.md lists the fixes and their tests).

    python scripts/misuse_write_sweep.py [--keep DIR]

Everything is made in a scratch folder from the built-in ``shapes`` data (20-image COCO exports,
a 6-step run with validation). Each case runs ``python -m minirccn ...`` as a user would and
checks its exit status and what is left on disk. Exit status: 0 if every case is OK, else 1.
A few minutes on two cores (run it through /work/heavy/run on the shared machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

FAST = ["backbone_stages=[[4, 1, true], [8, 1, true], [8, 1, false]]", "rpn_channels=8",
        "representation_size=16", "roi_output_size=3", "rpn_pre_nms_top_n_test=30",
        "rpn_post_nms_top_n_test=10", "box_batch_size_per_image=16"]
SETS = [a for f in FAST for a in ("--set", f)]
TRAIN = ["train", "--no-progress", *SETS]


def cli(work, *argv):
    p = subprocess.run([sys.executable, "-m", "minirccn", *argv], cwd=work, text=True,
                       capture_output=True, timeout=600)
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    return p.returncode, lines[-1] if lines else "(none)"


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def metrics(path):
    return json.load(open(path))


def arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


def same_arrays(a, b):
    x, y = arrays(a), arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def make_scratch(w):
    from minirccn.data import ShapesConfig, load_dataset
    from minirccn.data.export import export_coco

    small = ShapesConfig(image_size=64, min_object_size=10, max_object_size=30, train_size=20,
                         test_size=6)
    export_coco(load_dataset("shapes", "train", shapes_config=small), f"{w}/ds")
    export_coco(load_dataset("shapes", "test", shapes_config=small), f"{w}/val")
    for sub in ("img/a", "img/b", "o"):
        os.makedirs(f"{w}/{sub}", exist_ok=True)
    for k, name in enumerate(("img/good.png", "img/a/same.png", "img/b/same.png", "img/same_1.png")):
        Image.new("RGB", (64, 64), (40 * k, 90, 10)).save(f"{w}/{name}")
    d = json.load(open(f"{w}/ds/annotations.json"))
    dup = json.loads(json.dumps(d))
    dup["categories"][2]["name"] = dup["categories"][0]["name"]
    json.dump(dup, open(f"{w}/ds/c_catname_dup.json", "w"))
    bg = json.loads(json.dumps(d))
    bg["categories"][0]["name"] = "__background__"
    json.dump(bg, open(f"{w}/ds/c_catname_bg.json", "w"))
    # two images of one stem in two folders
    os.makedirs(f"{w}/o/collide/images/a", exist_ok=True)
    os.makedirs(f"{w}/o/collide/images/b", exist_ok=True)
    shutil.copy(f"{w}/ds/images/{d['images'][0]['file_name']}", f"{w}/o/collide/images/a/x.png")
    shutil.copy(f"{w}/ds/images/{d['images'][1]['file_name']}", f"{w}/o/collide/images/b/x.png")
    c = dict(d)
    c["images"] = [dict(d["images"][0], file_name="a/x.png"), dict(d["images"][1], file_name="b/x.png")]
    ids = {i["id"] for i in c["images"]}
    c["annotations"] = [a for a in d["annotations"] if a["image_id"] in ids]
    json.dump(c, open(f"{w}/o/collide/annotations.json", "w"))
    val = ["--data", "ds/annotations.json", "--val-data", "val/annotations.json"]
    code, line = cli(w, *TRAIN, *val, "--iters", "6", "--set", "eval_every=2", "--out", "base")
    assert code == 0 and os.path.isfile(f"{w}/base/best.npz"), line


def cases(w):
    """(name, defect, shell-free steps) -> yields (name, ok, note)."""
    o = f"{w}/o"
    # D1
    os.makedirs(f"{o}/inplace", exist_ok=True)
    shutil.copy(f"{w}/img/good.png", f"{o}/inplace/good.png")
    before = md5(f"{o}/inplace/good.png")
    code, line = cli(w, "detect", "--checkpoint", "base/checkpoint.npz", "o/inplace/good.png",
                     "--out", "o/inplace")
    yield "D1 det-out-is-input-folder", md5(f"{o}/inplace/good.png") == before, f"exit {code}: {line}"
    # D2
    code, line = cli(w, "detect", "--checkpoint", "base/checkpoint.npz", "img/a/same.png",
                     "img/b/same.png", "img/same_1.png", "--out", "o/det-collide")
    n = len([f for f in os.listdir(f"{o}/det-collide") if f.endswith(".json")]) if code == 0 else 0
    yield "D2 det-collide", code == 0 and n == 3, f"exit {code}: {n} json for 3 inputs"
    # D11
    os.makedirs(f"{o}/det-prev", exist_ok=True)
    open(f"{o}/det-prev/good.json", "w").write('{"mine": 1}')
    code, line = cli(w, "detect", "--checkpoint", "base/checkpoint.npz", "img/good.png",
                     "--out", "o/det-prev")
    kept = "mine" in open(f"{o}/det-prev/good.json").read()
    yield "D11 det-out-previous-results", kept and code == 2, f"exit {code}: {line}"
    # D3
    shutil.copytree(f"{w}/base", f"{o}/ow")
    code, line = cli(w, *TRAIN, "--iters", "3", "--split", "all", "--data", "ds/annotations.json",
                     "--out", "o/ow", "--overwrite")
    ck = os.path.getmtime(f"{o}/ow/checkpoint.npz")
    stale = [f for f in ("best.npz", "val_curve.png", "detections.png")
             if os.path.exists(f"{o}/ow/{f}") and os.path.getmtime(f"{o}/ow/{f}") < ck]
    yield "D3 overwrite-leaves-old-best", code == 0 and not stale, f"exit {code}; old files: {stale}"
    # D4
    os.makedirs(f"{o}/onlybest", exist_ok=True)
    shutil.copy(f"{w}/base/best.npz", f"{o}/onlybest/best.npz")
    before = md5(f"{o}/onlybest/best.npz")
    code, line = cli(w, *TRAIN, "--iters", "3", "--data", "ds/annotations.json", "--out", "o/onlybest")
    yield "D4 only-best-npz-folder", md5(f"{o}/onlybest/best.npz") == before, f"exit {code}: {line}"
    # D5: the whole run vs 4 steps + --resume to 8 (--no-derive: one schedule), validation every step
    five = [*TRAIN, "--no-derive", "--data", "ds/annotations.json", "--val-data",
            "val/annotations.json", "--eval-split", "", "--seed", "3", "--set", "eval_every=1",
            "--set", "min_size=64", "--set", "max_size=64", "--set", "warmup_iters=1",
            "--set", "milestones=[100]"]
    cli(w, *five, "--iters", "8", "--out", "o/life-ref")
    cli(w, *five, "--iters", "4", "--out", "o/life-int")
    code, line = cli(w, *five, "--iters", "8", "--out", "o/life-int", "--resume")
    ref, got = metrics(f"{o}/life-ref/metrics.json"), metrics(f"{o}/life-int/metrics.json")
    same_best = same_arrays(f"{o}/life-ref/best.npz", f"{o}/life-int/best.npz")
    ok = code == 0 and ref["val_curve"] == got["val_curve"] and ref["best"]["step"] == got["best"]["step"] and same_best
    yield ("D5 life-resume-best-and-val-curve", ok,
           f"exit {code}; curve {len(got['val_curve'])}/{len(ref['val_curve'])} points, best step "
           f"{got['best']['step']} vs {ref['best']['step']}, best.npz same arrays: {same_best}")
    shutil.copytree(f"{w}/base", f"{o}/rvc")
    os.remove(f"{o}/rvc/metrics.json")
    code, line = cli(w, *TRAIN, "--data", "ds/annotations.json", "--val-data", "val/annotations.json",
                     "--iters", "6", "--set", "eval_every=2", "--out", "o/rvc", "--resume")
    m, b = metrics(f"{o}/rvc/metrics.json"), metrics(f"{w}/base/metrics.json")
    ok = code == 0 and m.get("val_curve") == b["val_curve"] and m["best"]["step"] == b["best"]["step"]
    yield "D5 resume-finished-run-keeps-val-curve", ok, f"exit {code}; val_curve {len(m.get('val_curve') or [])} points: {line}"
    # D6
    for name in ("c_catname_dup.json", "c_catname_bg.json"):
        code, line = cli(w, *TRAIN, "--iters", "3", "--split", "all", "--data", f"ds/{name}",
                         "--out", f"o/{name}")
        yield f"D6 coco-{name}", code == 2 and not os.path.exists(f"{o}/{name}/checkpoint.npz"), line
    # D8
    shutil.copytree(f"{w}/ds", f"{o}/mydata")
    d = json.load(open(f"{o}/mydata/annotations.json"))
    d["info"] = {"owner": "me"}
    json.dump(d, open(f"{o}/mydata/annotations.json", "w"))
    code, line = cli(w, "data", "export", "--format", "coco", "--data", "o/mydata/annotations.json",
                     "--split", "all", "--out", "o/mydata", "--count", "3")
    kept = "owner" in open(f"{o}/mydata/annotations.json").read()
    yield "D8 export-coco-onto-its-own-source", kept, f"exit {code}: {line}"
    os.makedirs(f"{o}/other", exist_ok=True)
    open(f"{o}/other/annotations.json", "w").write('{"images": [], "mine": true}')
    code, line = cli(w, "data", "export", "--format", "coco", "--out", "o/other", "--count", "2")
    yield "D8 export-over-another-dataset", "mine" in open(f"{o}/other/annotations.json").read(), f"exit {code}: {line}"
    # D9
    code, line = cli(w, "data", "export", "--format", "coco", "--data", "o/collide/annotations.json",
                     "--split", "all", "--out", "o/collide-exp")
    fs = [i["file_name"] for i in json.load(open(f"{o}/collide-exp/annotations.json"))["images"]] if code == 0 else []
    yield "D9 export-stem-collision", len(set(fs)) == 2, f"exit {code}: {fs}"
    code, line = cli(w, "data", "export", "--format", "csv", "--data", "o/collide/annotations.json",
                     "--split", "all", "--out", "o/collide-csv")
    import csv

    ids = {r["ImageID"] for r in csv.DictReader(open(f"{o}/collide-csv/annotations.csv"))} if code == 0 else set()
    yield "D9 export-csv-stem-collision", len(ids) == 2, f"exit {code}: {sorted(ids)}"
    # D10
    shutil.copytree(f"{w}/base", f"{o}/pv")
    code, line = cli(w, "data", "preview", "--count", "2", "--out", "o/pv/checkpoint.npz")
    try:
        np.load(f"{o}/pv/checkpoint.npz").close()
        kept = True
    except Exception:  # noqa: BLE001 - anything but a checkpoint
        kept = False
    yield "D10 preview-out-over-checkpoint", kept and code == 2, f"exit {code}: {line}"
    code, line = cli(w, "data", "preview", "--count", "2", "--out", "o/p.txt")
    yield "D10 preview-out-txt", code == 2 and not os.path.exists(f"{o}/p.txt"), f"exit {code}: {line}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="scratch folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="minirccn-write-sweep-")
    os.makedirs(work, exist_ok=True)
    make_scratch(work)
    bad = 0
    for name, ok, note in cases(work):
        bad += not ok
        print(f"{'OK    ' if ok else 'DEFECT'} {name}: {note}", flush=True)
    print(f"{bad} defect(s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
