"""Re-run the input half of issue 25's misuse sweep (D7, D12-D25 of
../shared/reviews/cli-misuse-sweep.md, and the progress / VOC-split items) on this checkout and
print OK or DEFECT per case (docs/misuse-input.md lists the fixes and their tests).

    python scripts/misuse_input_sweep.py [--keep DIR]

Everything is made in a scratch folder from the built-in ``shapes`` data: a 20-image COCO
export, a 3-step checkpoint, crafted checkpoints, damaged and EXIF-rotated images. Each case
runs ``python -m minirccn ...`` as a user would and checks its exit status, its last stderr
line and its outputs. Exit status: 0 if every case is OK, else 1. About 2-4 minutes on two
cores (run it through /work/heavy/run on the shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

FAST = ["backbone_stages=[[4, 1, true], [8, 1, true], [8, 1, false]]", "rpn_channels=8",
        "representation_size=16", "roi_output_size=3", "rpn_pre_nms_top_n_test=30",
        "rpn_post_nms_top_n_test=10", "box_batch_size_per_image=16"]
SETS = [a for f in FAST for a in ("--set", f)]


def cli(work, *argv, timeout=300):
    """Run ``minirccn argv`` in ``work``: (exit status, stdout, stderr, seconds)."""
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "minirccn", *argv], cwd=work, text=True,
                           capture_output=True, timeout=timeout)
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    return code, out, err, time.perf_counter() - t


def last(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(none)"


# ----------------------------------------------------------------------------- the scratch data
def corrupt_inside(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    b = bytearray(open(path, "rb").read())
    for k in range(len(b) // 2, len(b) // 2 + 200):
        b[k] ^= 0x5A
    open(path, "wb").write(bytes(b))


def exif6(path, size=(160, 128)):
    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, exif=exif, quality=95)


def crafted(src, dst, change=None, meta=None):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    if change:
        change(arrays)
    if meta:
        m = json.loads(str(arrays["meta"]))
        meta(m)
        arrays["meta"] = np.array(json.dumps(m))
    np.savez(dst, **arrays)


def first_param(arrays):
    return sorted(k for k in arrays if k.startswith("param/"))[0]


def make_scratch(work):
    from minirccn.data import ShapesConfig, load_dataset
    from minirccn.data.export import export_coco, export_voc

    small = ShapesConfig(image_size=64, min_object_size=10, max_object_size=30, train_size=20,
                         test_size=6)
    coco = export_coco(load_dataset("shapes", "train", shapes_config=small), f"{work}/ds")
    val = export_coco(load_dataset("shapes", "test", shapes_config=small), f"{work}/val")
    d = json.load(open(coco))
    os.makedirs(f"{work}/img/mixed", exist_ok=True)
    Image.new("RGB", (64, 64), (40, 90, 10)).save(f"{work}/img/good.png")
    for name in ("a_good.png", "c_good.png"):
        shutil.copy(f"{work}/img/good.png", f"{work}/img/mixed/{name}")
    corrupt_inside(f"{work}/img/mixed/b_corrupt_idat.png")
    Image.new("RGB", (4000, 1)).save(f"{work}/img/strip.png")
    exif6(f"{work}/img/exif6.jpg")
    # a JPEG cut in half with its end marker appended
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        f"{work}/img/full.jpg", quality=95)
    b = open(f"{work}/img/full.jpg", "rb").read()
    open(f"{work}/img/trunc_eoi.jpg", "wb").write(b[: len(b) // 2] + b"\xff\xd9")

    def variant(name, change, corrupt_first=False):
        root = f"{work}/{name}"
        shutil.copytree(os.path.dirname(coco), root)
        v = json.loads(json.dumps(d))
        change(v)
        json.dump(v, open(f"{root}/annotations.json", "w"))
        if corrupt_first:
            corrupt_inside(f"{root}/images/{v['images'][0]['file_name']}")
        return f"{root}/annotations.json"

    files = {
        "coco": coco, "val": val,
        "one_bad": variant("one_bad", lambda v: None, corrupt_first=True),
        "noanns": variant("noanns", lambda v: v.update(annotations=[])),
        "nocats": variant("nocats", lambda v: v.update(annotations=[], categories=[])),
        "widthwrong": variant("widthwrong", lambda v: v["images"][0].update(width=10)),
        "bigint": variant("bigint", lambda v: None),
    }
    # the COCO set with its first image a JPEG cut in half and closed with an end marker
    def first_jpeg(v):
        name = v["images"][0]["file_name"]
        v["images"][0]["file_name"] = name.rsplit(".", 1)[0] + ".jpg"

    files["one_trunc_jpg"] = variant("one_trunc_jpg", first_jpeg)
    root = os.path.dirname(files["one_trunc_jpg"])
    first = json.load(open(files["one_trunc_jpg"]))["images"][0]["file_name"]
    png = os.path.join(root, "images", first.rsplit(".", 1)[0] + ".png")
    Image.open(png).convert("RGB").save(os.path.join(root, "images", first), quality=95)
    b = open(os.path.join(root, "images", first), "rb").read()
    open(os.path.join(root, "images", first), "wb").write(b[: len(b) // 2] + b"\xff\xd9")
    text = open(files["bigint"]).read().replace(
        json.dumps(d["annotations"][0]["bbox"]), "[" + "9" * 5000 + ", 1, 2, 3]", 1)
    open(files["bigint"], "w").write(text)
    # a COCO set with one EXIF-6 JPEG, annotated in the displayed (portrait) frame
    os.makedirs(f"{work}/exif/images", exist_ok=True)
    exif6(f"{work}/exif/images/e.jpg")
    json.dump({"images": [{"id": 1, "file_name": "e.jpg", "width": 128, "height": 160},
                          {"id": 2, "file_name": "e2.jpg", "width": 128, "height": 160}],
               "categories": [{"id": 1, "name": "x"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [60, 100, 40, 40]},
                               {"id": 2, "image_id": 2, "category_id": 1, "bbox": [60, 100, 40, 40]}]},
              open(f"{work}/exif/annotations.json", "w"))
    shutil.copy(f"{work}/exif/images/e.jpg", f"{work}/exif/images/e2.jpg")
    # a big COCO file (every entry the same image) for the --out-first timing
    big = {"images": [{"id": i, "file_name": d["images"][0]["file_name"]} for i in range(150000)],
           "categories": d["categories"],
           "annotations": [{"id": i, "image_id": i, "category_id": d["categories"][0]["id"],
                            "bbox": [1, 1, 10, 10]} for i in range(150000)]}
    json.dump(big, open(f"{work}/ds/big.json", "w"))
    # VOC with only trainval.txt
    voc = export_voc(load_dataset("shapes", "train", shapes_config=small), f"{work}/voc")
    main_dir = f"{voc}/ImageSets/Main"
    ids = sorted(f[:-4] for f in os.listdir(f"{voc}/Annotations"))
    for f in os.listdir(main_dir):
        os.unlink(f"{main_dir}/{f}")
    open(f"{main_dir}/trainval.txt", "w", encoding="utf-8-sig").write("\n".join(ids) + "\n")
    files["voc"] = voc
    return files


def make_checkpoints(work, files):
    code, out, err, _ = cli(work, "train", "--data", files["coco"], "--split", "all",
                            "--eval-split", "", "--no-progress", "--iters", "3", "--out", "base",
                            *SETS)
    assert code == 0, err
    ck = f"{work}/base/checkpoint.npz"
    os.makedirs(f"{work}/ck", exist_ok=True)

    def huge(m):
        m["config"]["min_size"] = m["config"]["max_size"] = 8192

    def poison(value):
        def f(a):
            k = first_param(a)
            a[k] = a[k].copy()
            a[k].flat[0] = value
        return f

    def cast(dtype):
        def f(a):
            for k in [k for k in a if k.startswith("param/")]:
                a[k] = a[k].astype(dtype)
        return f

    crafted(ck, f"{work}/ck/huge_minsize.npz", meta=huge)
    crafted(ck, f"{work}/ck/nan_weights.npz", poison(np.nan))
    crafted(ck, f"{work}/ck/inf_weights.npz", poison(np.inf))
    crafted(ck, f"{work}/ck/f64_weights.npz", cast("float64"))
    crafted(ck, f"{work}/ck/int_weights.npz", cast("int32"))
    crafted(ck, f"{work}/ck/bigendian_weights.npz", cast(">f4"))
    os.makedirs(f"{work}/rngbad", exist_ok=True)
    crafted(ck, f"{work}/rngbad/checkpoint.npz",
            meta=lambda m: m.update(rng_state={"bit_generator": "MT19937", "state": {}}))
    return ck


# ----------------------------------------------------------------------------- the cases
def cases(work, f):
    """(name, defect, argv, check(code, out, err, seconds) -> None or what is wrong)."""
    ck = "base/checkpoint.npz"
    tr = ["train", "--no-progress", "--eval-split", "", *SETS]

    def error(*words):
        def check(code, out, err, s):
            line = last(err)
            if code != 2 or not line.startswith("minirccn: error:") or "Traceback" in err:
                return f"exit {code}, last line {line!r}"
            missing = [w for w in words if w not in line]
            return f"line {line!r} lacks {missing}" if missing else None
        return check

    def ok(*words, stream="err"):
        def check(code, out, err, s):
            text = err if stream == "err" else out
            if code != 0:
                return f"exit {code}, last line {last(err)!r}"
            missing = [w for w in words if w not in text]
            return f"output lacks {missing}" if missing else None
        return check

    def det_json(path, want):
        def check(code, out, err, s):
            if code != 0:
                return f"exit {code}: {last(err)}"
            d = json.load(open(os.path.join(work, path)))
            got = (d["width"], d["height"])
            return None if got == want else f"width, height {got}, expected {want}"
        return check

    def mixed(code, out, err, s):
        n = len([p for p in os.listdir(f"{work}/o/det-mixed") if p.endswith(".json")])
        warned = "b_corrupt_idat.png: cannot decode image" in err
        return None if code == 0 and n == 2 and warned else f"exit {code}, {n} json, warned {warned}"

    def fast_refusal(code, out, err, s):
        if code != 2 or "exists and is not a folder" not in last(err):
            return f"exit {code}: {last(err)}"
        return None if s < 2 else f"took {s:.1f} s (reading the data takes about 6 s)"

    def no_cr(code, out, err, s):
        return None if code == 0 and "\r" not in err and "train: 5/5 step" in err else (
            f"exit {code}, carriage returns: {err.count(chr(13))}")

    open(f"{work}/o/outfile.png", "wb").write(b"x")
    return [
        ("D7 val image corrupt inside", "D7",
         [*tr, "--data", f["coco"], "--split", "all", "--val-data", f["one_bad"], "--iters", "4",
          "--set", "eval_every=2", "--out", "o/d7val"], ok("cannot decode image", "skipped")),
        ("D7 train image corrupt inside", "D7",
         [*tr, "--data", f["one_bad"], "--split", "all", "--iters", "25", "--out", "o/d7train"],
         ok("cannot decode image")),
        ("D12 checkpoint min_size=max_size=8192", "D12",
         ["detect", "--checkpoint", "ck/huge_minsize.npz", "img/good.png", "--out", "o/d12"],
         error("min_size x max_size = 8192 x 8192")),
        ("D13 train --minutes inf", "D13",
         ["train", "--data", f["coco"], "--out", "o/d13", "--minutes", "inf"],
         error("--minutes: expected a positive finite number")),
        ("D13 config show --minutes inf", "D13", ["config", "show", "--minutes", "inf"],
         error("--minutes")),
        ("D14 extend with --resume --iters", "D14",
         [*tr, "--data", f["coco"], "--split", "all", "--iters", "6", "--out", "base2", "--resume"],
         ok("going on to 6 steps with the checkpoint's schedule")),
        ("D15 detect a 4000x1 strip", "D15",
         ["detect", "--checkpoint", ck, "img/strip.png", "--out", "o/d15"],
         error("strip.png", "4000x1")),
        ("D16 float64 weights", "D16",
         ["detect", "--checkpoint", "ck/f64_weights.npz", "img/good.png", "--out", "o/d16"],
         error("f64_weights.npz: parameter", "<f8")),
        ("D16 int weights", "D16",
         ["detect", "--checkpoint", "ck/int_weights.npz", "img/good.png", "--out", "o/d16"],
         error("int_weights.npz: parameter", "i4")),
        ("D16 big-endian float32 weights", "D16",
         ["detect", "--checkpoint", "ck/bigendian_weights.npz", "img/good.png", "--out", "o/d16"],
         ok("detections", stream="out")),
        ("D17 rng_state", "D17",
         [*tr, "--data", f["coco"], "--split", "all", "--iters", "3", "--out", "rngbad", "--resume"],
         error("rngbad/checkpoint.npz: rng_state")),
        ("D17 COCO 5000-digit number", "D17",
         [*tr, "--data", f["bigint"], "--split", "all", "--iters", "3", "--out", "o/d17a"],
         error("annotations.json: malformed JSON")),
        ("D17 bench --seed -1", "D17", ["bench", "--seed", "-1"], error("--seed")),
        ("D17 scale_jitter=0.01,0.02", "D17",
         [*tr, "--data", f["coco"], "--split", "all", "--iters", "3", "--out", "o/d17b",
          "--set", "scale_jitter=0.01,0.02"], error("scale_jitter")),
        ("D17 rpn_fg_iou_thresh=0.1", "D17",
         ["config", "show", "--set", "rpn_fg_iou_thresh=0.1"], error("rpn_fg_iou_thresh")),
        ("D17 COCO without categories", "D17",
         [*tr, "--data", f["nocats"], "--split", "all", "--iters", "3", "--out", "o/d17c"],
         error("no categories")),
        ("D17 lineage --seed -1", "D17", ["lineage", "--seed", "-1", "--out", "o/lin"],
         error("--seed")),
        ("D17 --images ''", "D17",
         [*tr, "--data", f["coco"], "--images", "", "--out", "o/d17d"], error("--images")),
        ("D17 data preview --out ''", "D17", ["data", "preview", "--out", ""], error("--out")),
        ("D18 detect a folder with one bad image", "D18",
         ["detect", "--checkpoint", ck, "img/mixed/a_good.png", "img/mixed/b_corrupt_idat.png",
          "img/mixed/c_good.png", "--out", "o/det-mixed"], mixed),
        ("D18 eval with one bad image", "D18",
         ["eval", "--checkpoint", ck, "--data", f["one_bad"]], ok("cannot decode image", "skipped")),
        ("D18 data preview with one bad image", "D18",
         ["data", "preview", "--data", f["one_bad"], "--split", "all", "--out", "o/prev.png"],
         ok("skipped")),
        ("D18 data export with one bad image", "D18",
         ["data", "export", "--format", "coco", "--data", f["one_bad"], "--split", "all", "--out",
          "o/exp"], ok("skipped")),
        ("D19 truncated JPEG with an end marker", "D19",
         ["detect", "--checkpoint", ck, "img/trunc_eoi.jpg", "--out", "o/d19"], error("trunc_eoi")),
        ("D19 train on a set with a truncated JPEG", "D19",
         [*tr, "--data", f["one_trunc_jpg"], "--split", "all", "--iters", "2", "--out", "o/d19t"],
         ok("truncated JPEG", "skipped")),
        ("D20 detect an EXIF-6 JPEG", "D20",
         ["detect", "--checkpoint", ck, "img/exif6.jpg", "--out", "o/d20"],
         det_json("o/d20/exif6.json", (128, 160))),
        ("D20 COCO width that disagrees", "D20",
         [*tr, "--data", f["widthwrong"], "--split", "all", "--iters", "2", "--out", "o/d20b"],
         ok("width 10 height 64 in the file")),
        ("D20 train on an EXIF-6 set", "D20",
         [*tr, "--data", "exif/annotations.json", "--split", "all", "--iters", "2", "--out",
          "o/d20c"], ok("median image 160x128", stream="out")),
        ("D21 NaN weights", "D21",
         ["detect", "--checkpoint", "ck/nan_weights.npz", "img/good.png", "--out", "o/d21"],
         error("NaN or infinite")),
        ("D21 inf weights", "D21",
         ["eval", "--checkpoint", "ck/inf_weights.npz", "--data", f["coco"]], error("NaN or infinite")),
        ("D22 bench --min-time nan", "D22", ["bench", "--min-time", "nan"], error("--min-time")),
        ("D22 lineage --rpn-top-n 0", "D22", ["lineage", "--rpn-top-n", "0", "--out", "o/lin"],
         error("--rpn-top-n")),
        ("D22 --set backbone=bogus", "D22", ["config", "show", "--set", "backbone=bogus"],
         error("backbone must be one of")),
        ("D23 --minutes 1e300", "D23", ["config", "show", "--data", f["coco"], "--minutes", "1e300"],
         ok("capped at 150 passes", stream="out")),
        ("D24 --out a file, 150k-image COCO", "D24",
         ["train", "--data", "ds/big.json", "--out", "o/outfile.png"], fast_refusal),
        ("D25 COCO without annotations", "D25",
         [*tr, "--data", f["noanns"], "--split", "all", "--iters", "3", "--out", "o/d25"],
         error("no boxes at all")),
        ("progress off a terminal", "progress",
         ["train", "--eval-split", "", *SETS, "--data", f["coco"], "--split", "all", "--iters", "5",
          "--out", "o/prog"], no_cr),
        ("VOC with only trainval.txt (with a BOM)", "VOC",
         [*tr, "--data", f["voc"], "--iters", "2", "--out", "o/voc"],
         ok("ImageSets/Main/trainval.txt", stream="out")),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="scratch folder to use and keep")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="misuse-input-")
    os.makedirs(f"{work}/o", exist_ok=True)
    files = make_scratch(work)
    make_checkpoints(work, files)
    shutil.copytree(f"{work}/base", f"{work}/base2")
    bad = 0
    for name, defect, argv_, check in cases(work, files):
        code, out, err, seconds = cli(work, *argv_)
        problem = check(code, out, err, seconds)
        bad += problem is not None
        verdict = "OK    " if problem is None else "DEFECT"
        print(f"{verdict} {defect:<8} {name:<42} {seconds:5.1f} s  {problem or last(err)[:110]}",
              flush=True)
    print(f"\n{bad} case(s) with a defect; scratch folder {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
