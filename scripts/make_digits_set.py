"""A synthetic digits-on-noisy-canvases detection set, for checking own-data defaults.

    python scripts/make_digits_set.py [--out data/digits] [--train 300] [--val 100] [--seed 0]

writes ``OUT/images/*.png`` (128x128 greyscale canvases), ``OUT/train.json`` and ``OUT/val.json``
(COCO, ten classes ``0``-``9``). The digits are scikit-learn's 8x8 handwritten digits
(``sklearn/datasets/data/digits.csv.gz``, read as a zip member of the ``scikit-learn`` wheel:
``pip download --no-deps`` once into ``OUT/wheels``, no install; the UCI "Optical Recognition of
Handwritten Digits" data, 1797 digits of 43 writers). Training canvases use the first 1200
digits, validation canvases the other 597 (digits never seen in training). Each canvas: a
background of uniform grey plus Gaussian noise and a smooth gradient, 3-6 digits scaled
(bilinear) to 14-40 px, placed without overlap, drawn bright or dark at random; the box is the
digit's bounding box of ink (pixels above a quarter of its maximum), so the boxes are tight.

It mirrors the hidden "synthetic digits on noisy canvases" set of issue 23 in kind, not in
detail: objects that never touch, ten classes, noise. docs/real_data.md uses it to check that
the test-time rules of autoconfig cost nothing on such data.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

CANVAS = 128  # canvas side, px
TRAIN_DIGITS = 1200  # digits 0..1199 for training canvases, the rest for validation
MEMBER = "sklearn/datasets/data/digits.csv.gz"


def read_digits(wheels: str) -> tuple:
    """``(images (1797, 8, 8) float64 in 0..16, labels (1797,) int)`` from the wheel."""
    os.makedirs(wheels, exist_ok=True)
    found = [f for f in os.listdir(wheels) if f.startswith("scikit_learn-") and f.endswith(".whl")]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels,
             "scikit-learn"],
            check=True,
        )
        found = [f for f in os.listdir(wheels) if f.startswith("scikit_learn-")]
    with zipfile.ZipFile(os.path.join(wheels, sorted(found)[-1])) as z:
        rows = np.loadtxt(io.StringIO(gzip.decompress(z.read(MEMBER)).decode()), delimiter=",")
    return rows[:, :64].reshape(-1, 8, 8), rows[:, 64].astype(int)


def canvas(rng, digits, labels, pool) -> tuple:
    """One ``(CANVAS, CANVAS)`` uint8 canvas and its ``[(box, label)]``, digits drawn from
    the indices ``pool``."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    level, slope = rng.uniform(60, 190), rng.uniform(-40, 40)  # (the draws' order is fixed)
    base = level + slope * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))
    img = base + rng.normal(0, rng.uniform(5, 25), (CANVAS, CANVAS))
    taken = np.zeros((CANVAS, CANVAS), bool)
    out = []
    for _ in range(rng.integers(3, 7)):
        k = int(rng.choice(pool))
        side = int(rng.integers(14, 41))
        small = Image.fromarray((digits[k] * (255 / 16)).astype(np.uint8))
        glyph = np.asarray(small.resize((side, side), Image.BILINEAR), np.float64) / 255.0
        for _try in range(20):
            y0, x0 = rng.integers(0, CANVAS - side + 1, 2)
            if not taken[max(y0 - 2, 0) : y0 + side + 2, max(x0 - 2, 0) : x0 + side + 2].any():
                break
        else:
            continue
        taken[y0 : y0 + side, x0 : x0 + side] = True
        sign = 1.0 if rng.random() < 0.5 else -1.0
        patch = img[y0 : y0 + side, x0 : x0 + side]
        img[y0 : y0 + side, x0 : x0 + side] = patch + sign * glyph * rng.uniform(70, 120)
        ys, xs = np.nonzero(glyph > 0.25 * glyph.max())
        box = [float(x0 + xs.min()), float(y0 + ys.min()),
               float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)]
        out.append((box, int(labels[k])))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), out


def write_split(out: str, split: str, n: int, rng, digits, labels, pool) -> int:
    coco = {"images": [], "annotations": [],
            "categories": [{"id": d + 1, "name": str(d)} for d in range(10)]}
    for i in range(n):
        img, objs = canvas(rng, digits, labels, pool)
        name = f"{split}_{i:04d}.png"
        Image.fromarray(img, "L").save(os.path.join(out, "images", name))
        coco["images"].append({"id": i + 1, "file_name": name, "width": CANVAS, "height": CANVAS})
        for (x1, y1, x2, y2), label in objs:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": label + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    with open(os.path.join(out, f"{split}.json"), "w") as f:
        json.dump(coco, f)
    return len(coco["annotations"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/digits")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    digits, labels = read_digits(os.path.join(args.out, "wheels"))
    rng = np.random.default_rng(args.seed)
    seen, unseen = np.arange(TRAIN_DIGITS), np.arange(TRAIN_DIGITS, len(labels))
    n_train = write_split(args.out, "train", args.train, rng, digits, labels, seen)
    n_val = write_split(args.out, "val", args.val, rng, digits, labels, unseen)
    print(f"wrote {args.train} training canvases ({n_train} digits) and {args.val} validation "
          f"canvases ({n_val} digits, unseen in training) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
