"""torchvision's detectors beside minirccn's: seeded random models, the key manifest, and the
two reproduction checks of issue 24. Needs torch and torchvision (never a minirccn dependency).

::

    python scripts/torchvision_models.py manifest [--out tests/interop/torchvision_manifest.json]
    python scripts/torchvision_models.py make fasterrcnn_resnet50_c4 --out model.safetensors [--seed 0]
    python scripts/torchvision_models.py reproduce fasterrcnn_resnet50_fpn [--backends numpy,numba]
        [--images 4] [--size 320] [--json results.json]
    python scripts/torchvision_models.py export-check tiny [--iters 300] [--images 6]

* ``manifest``: every ``state_dict`` name and shape of each architecture of
  :data:`minirccn.engine.interop.ARCHS` (91 classes), as torchvision builds it, in one small JSON
  that the tests compare with minirccn's name table without torch.
* ``make``: a torchvision model with seeded random weights whose batch-norm statistics are
  *calibrated* (the running mean and variance of every batch norm set to the statistics of its
  input over synthetic photos, so activations are realistic), and whose head layers are
  scaled to realistic output spreads (RPN logits std 2, class logits std 2.5, ...; see
  :data:`HEAD_SCALES`); saved with ``safetensors.torch.save_file(model.state_dict(), F)``.
* ``reproduce``: ``make``, then ``minirccn convert`` and ``minirccn detect --score-thresh 0.05``
  on synthetic photos, ``min_size = max_size = SIZE``, beside torchvision's own detections of
  the same model: the share of torchvision's top-20 detections per image that minirccn
  reproduces (same label, IoU >= 0.99, score within 1e-3), per backend.
* ``export-check``: ``minirccn train`` a preset for a few hundred steps on ``shapes``,
  ``minirccn export --to torchvision``, then ``build()`` beside ``minirccn detect`` on the test
  images, by the same rule (torchvision's model reproducing minirccn's detections).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import save_file
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign, box_iou

ARCHS = ("fasterrcnn_resnet50_c4", "fasterrcnn_resnet50_fpn")
#: target standard deviation of each head layer's output over the calibration images
HEAD_SCALES = (
    ("rpn.head.conv", 1.0),
    ("rpn.head.cls_logits", 2.0),
    ("rpn.head.bbox_pred", 0.2),
    ("roi_heads.box_head.fc6", 1.0),
    ("roi_heads.box_head.fc7", 1.0),
    ("roi_heads.box_predictor.cls_score", 2.5),
    ("roi_heads.box_predictor.bbox_pred", 1.0),
)
PY = sys.executable


def build_torchvision(arch: str, num_classes: int = 91):
    """The torchvision model of ``arch`` with default (random) initialisation, eval mode."""
    if arch == "fasterrcnn_resnet50_c4":
        resnet = torchvision.models.resnet50(weights=None)
        backbone = nn.Sequential(*list(resnet.children())[:-3])  # up to layer3
        backbone.out_channels = 1024
        anchors = AnchorGenerator(
            sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)
        )
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
        model = FasterRCNN(
            backbone, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=pool
        )
    elif arch == "fasterrcnn_resnet50_fpn":
        model = fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
    else:
        raise SystemExit(f"arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    return model.eval()


def synthetic_photos(
    n: int,
    seed: int,
    sizes=((480, 640), (427, 640), (500, 375), (320, 320), (360, 480), (640, 426)),
):
    """``n`` RGB uint8 pictures: a colour gradient, noise, and 4-12 filled shapes, blurred a
    little (edges and textures for the convolutions), sizes cycling through ``sizes``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = ((xx / w + yy / h) / 2)[..., None]
        base = (c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(4, 13))):
            x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
            bw, bh = rng.uniform(0.08, 0.5) * w, rng.uniform(0.08, 0.5) * h
            box = [x0, y0, min(x0 + bw, w - 1), min(y0 + bh, h - 1)]
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(3))
            if kind == 0:
                draw.rectangle(box, fill=color)
            elif kind == 1:
                draw.ellipse(box, fill=color)
            else:
                draw.polygon(
                    [(box[0], box[3]), ((box[0] + box[2]) / 2, box[1]), (box[2], box[3])],
                    fill=color,
                )
        out.append(np.asarray(img.filter(ImageFilter.GaussianBlur(1.0))))
    return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1] (torchvision's ``to_tensor``)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)


@torch.no_grad()
def calibrate(model, images, seed: int):
    """Random batch-norm affine parameters, running statistics from ``images``, then the head
    layers scaled to :data:`HEAD_SCALES` (module docstring). In place; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the statistics of the calibration batch
    for m in model.backbone.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    model.eval()
    batch, _ = model.transform([to_tensor(im) for im in images])
    for bn in bns:
        bn.train()
    model.backbone(batch.tensors)
    model.eval()
    modules = dict(model.named_modules())
    for name, target in HEAD_SCALES:
        layer, seen = modules[name], []
        if isinstance(layer, nn.Sequential):  # RPNHead's conv: Conv2dNormActivation
            layer = layer[0][0] if isinstance(layer[0], nn.Sequential) else layer[0]
        hook = layer.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o.detach().flatten())
        )
        model([to_tensor(im) for im in images])
        hook.remove()
        std = float(torch.cat(seen).std())
        layer.weight.mul_(target / max(std, 1e-12))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1 * target)
    return model


def make(arch: str, seed: int, num_classes: int = 91, calibration: int = 4):
    """A seeded random, calibrated torchvision model of ``arch`` (eval mode)."""
    torch.manual_seed(seed)
    model = build_torchvision(arch, num_classes)
    model.transform.min_size, model.transform.max_size = (320,), 320
    return calibrate(model, synthetic_photos(calibration, seed + 1000), seed)


def manifest(out: str) -> None:
    data = {
        "made_with": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        "note": "state_dict names and shapes of torchvision's models, 91 classes "
        "(num_batches_tracked left out: FrozenBatchNorm2d has none)",
        "archs": {},
    }
    for arch in ARCHS:
        sd = build_torchvision(arch).state_dict()
        data["archs"][arch] = {
            k: list(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")
        }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        json.dump(data, fh, indent=0, sort_keys=True)
        fh.write("\n")
    print(f"wrote {out}: " + ", ".join(f"{a} {len(v)} keys" for a, v in data["archs"].items()))


# ----------------------------------------------------------------------------- comparison


def match(
    reference: dict, candidate: dict, top: int = 20, iou: float = 0.99, score_tol: float = 1e-3
):
    """How many of ``reference``'s ``top`` best detections ``candidate`` reproduces: same label,
    IoU >= ``iou``, |score difference| <= ``score_tol``, each candidate used once.

    Both dicts: ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` (NumPy or lists).
    Returns ``(matched, compared)``."""
    rb, rs, rl = (np.asarray(reference[k], np.float64) for k in ("boxes", "scores", "labels"))
    cb, cs, cl = (np.asarray(candidate[k], np.float64) for k in ("boxes", "scores", "labels"))
    order = np.argsort(-rs, kind="stable")[:top]
    if len(order) == 0:
        return 0, 0
    if len(cs) == 0:
        return 0, len(order)
    ious = box_iou(
        torch.from_numpy(rb[order].reshape(-1, 4)), torch.from_numpy(cb.reshape(-1, 4))
    ).numpy()
    used, hits = set(), 0
    for r, i in enumerate(order):
        ok = (cl == rl[i]) & (ious[r] >= iou) & (np.abs(cs - rs[i]) <= score_tol)
        for j in np.flatnonzero(ok):
            if j not in used:
                used.add(int(j))
                hits += 1
                break
    return hits, len(order)


def minirccn(*args) -> None:
    """Run ``python -m minirccn ARGS`` (raises with its stderr if it fails)."""
    proc = subprocess.run(
        [PY, "-m", "minirccn", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"minirccn {' '.join(args)} failed:\n{proc.stderr}")


def minirccn_detect(checkpoint, paths, backend, out) -> list:
    minirccn(
        "detect",
        "--checkpoint",
        checkpoint,
        *paths,
        "--score-thresh",
        "0.05",
        "--backend",
        backend,
        "--out",
        out,
    )
    dets = []
    for p in paths:
        with open(os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ".json")) as fh:
            dets.append(json.load(fh))
    return dets


def save_images(images, folder) -> list:
    paths = []
    for i, im in enumerate(images):
        p = os.path.join(folder, f"photo{i}.png")
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


def reproduce(arch, seed, backends, n_images, size, json_out=None, sets=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = make(arch, seed)
        model.transform.min_size, model.transform.max_size = (size,), size
        weights = os.path.join(tmp, f"{arch}.safetensors")
        save_file(model.state_dict(), weights)
        ck = os.path.join(tmp, "converted.npz")
        extra = [a for kv in sets for a in ("--set", kv)]
        minirccn(
            "convert",
            weights,
            "--arch",
            arch,
            "--num-classes",
            "91",
            "--out",
            ck,
            "--set",
            f"min_size={size}",
            "--set",
            f"max_size={size}",
            *extra,
        )
        images = synthetic_photos(n_images, seed + 2000)
        paths = save_images(images, tmp)
        with (
            torch.no_grad()
        ):  # one image at a time, as minirccn detect (a batch pads all to the largest)
            ref = [{k: v.numpy() for k, v in model([to_tensor(im)])[0].items()} for im in images]
        result = {
            "arch": arch,
            "seed": seed,
            "size": size,
            "sets": list(sets),
            "images": [list(im.shape[:2]) for im in images],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "backends": {},
        }
        for backend in backends:
            t0 = time.perf_counter()
            dets = minirccn_detect(ck, paths, backend, os.path.join(tmp, backend))
            seconds = time.perf_counter() - t0
            per = [match(r, d) for r, d in zip(ref, dets)]
            hits, total = sum(h for h, _ in per), sum(t for _, t in per)
            result["backends"][backend] = {
                "per_image": [f"{h}/{t}" for h, t in per],
                "reproduced": hits / max(total, 1),
                "minimum_per_image": min(h / max(t, 1) for h, t in per),
                "detect_seconds": round(seconds, 1),
            }
            print(
                f"{arch} {' '.join(sets)} {backend}: {hits}/{total} of torchvision's top-20 reproduced "
                f"({100 * hits / max(total, 1):.1f} %), per image {result['backends'][backend]['per_image']}",
                flush=True,
            )
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def export_check(preset, iters, n_images, seed=0, backend="numpy", json_out=None) -> dict:
    sys.path_importer_cache.clear()
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        minirccn(
            "train",
            "--preset",
            preset,
            "--iters",
            str(iters),
            "--out",
            run,
            "--seed",
            str(seed),
            "--no-progress",
            "--eval-images",
            "2",
        )
        ck = os.path.join(run, "checkpoint.npz")
        out = os.path.join(tmp, "tv")
        minirccn("export", "--checkpoint", ck, "--to", "torchvision", "--out", out)
        sys.path.insert(0, out)
        import importlib

        build = importlib.import_module("build")
        model = build.build()
        sys.path.remove(out)
        sys.modules.pop("build", None)
        from minirccn.data import load_dataset  # the shapes test images

        data = load_dataset("shapes", split="test", seed=seed)
        images = [data[i]["image"] for i in range(min(n_images, len(data)))]
        paths = save_images(images, tmp)
        dets = minirccn_detect(ck, paths, backend, os.path.join(tmp, "det"))
        with torch.no_grad():
            tv = [{k: v.numpy() for k, v in model([to_tensor(im)])[0].items()} for im in images]
        per = [match(d, t) for d, t in zip(dets, tv)]  # minirccn's top-20, reproduced by build()
        hits, total = sum(h for h, _ in per), sum(t for _, t in per)
        result = {
            "preset": preset,
            "iters": iters,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "per_image": [f"{h}/{t}" for h, t in per],
            "reproduced": hits / max(total, 1),
        }
        print(
            f"export {preset}: build() reproduces {hits}/{total} of minirccn detect's top-20 "
            f"({100 * hits / max(total, 1):.1f} %), per image {result['per_image']}",
            flush=True,
        )
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest")
    m.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(__file__), "..", "tests", "interop", "torchvision_manifest.json"
        ),
    )
    k = sub.add_parser("make")
    k.add_argument("arch", choices=ARCHS)
    k.add_argument("--out", required=True)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--num-classes", type=int, default=91)
    r = sub.add_parser("reproduce")
    r.add_argument("arch", choices=ARCHS)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backends", default="numpy,numba")
    r.add_argument("--images", type=int, default=4)
    r.add_argument("--size", type=int, default=320)
    r.add_argument("--json", default=None)
    r.add_argument(
        "--set", dest="sets", action="append", default=[], help="a config field for convert"
    )
    e = sub.add_parser("export-check")
    e.add_argument("preset")
    e.add_argument("--iters", type=int, default=300)
    e.add_argument("--images", type=int, default=6)
    e.add_argument("--backend", default="numpy")
    e.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    if a.cmd == "manifest":
        manifest(a.out)
    elif a.cmd == "make":
        save_file(make(a.arch, a.seed, a.num_classes).state_dict(), a.out)
        print(f"wrote {a.out}")
    elif a.cmd == "reproduce":
        reproduce(a.arch, a.seed, a.backends.split(","), a.images, a.size, a.json, a.sets)
    else:
        export_check(a.preset, a.iters, a.images, backend=a.backend, json_out=a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
