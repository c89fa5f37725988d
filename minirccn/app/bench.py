"""``minirccn bench``: every hot op timed per backend, side by side, in one process.

Why one process: timings taken in different runs differ by more than the
effects we care about (turbo, other load, BLAS threads). Here each case builds
its inputs once, then runs the NumPy reference, the Numba CPU kernels, the
CUDA kernels (when a GPU is present) and torchvision's op (when torch is
importable) back to back on the same arrays.

How a number is taken (:func:`time_call`): one warm-up call (Numba compiles on
its first call; compile time is not run time), then repeated calls until
``min_time`` seconds have passed or ``max_repeats`` calls were made; the
median is reported. GPU calls synchronise before the clock stops.

Memory: ``peak MiB`` is the peak of memory traced by :mod:`tracemalloc`
during one call: every NumPy array the call allocates (inputs excluded). It
does not see Numba's internal allocations nor GPU memory, so it is shown for
the ``numpy`` and ``numba`` columns only.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minirccn.app import flags
from minirccn.core import backend as B
from minirccn.core.errors import MinirccnError
from minirccn.core.files import check_replace, default_output, write_json
from minirccn import ops
from minirccn.config import preset
from minirccn.data import load_dataset
from minirccn.data.batching import Batch
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.detector.registry import build_model
from minirccn.engine.step import make_optimizer, train_step
from minirccn.nn import layers
from minirccn.ops.roi_align import roi_align, roi_align_backward
from minirccn.ops.roi_pool import roi_pool, roi_pool_backward

# --------------------------------------------------------------------------- timing


def _sync(kind: str) -> None:
    """Wait for queued GPU work of ``kind`` ("cuda" = CuPy/Numba, "torch-cuda")."""
    if kind == "cuda" and not B.cuda_simulator():
        import cupy

        cupy.cuda.Device().synchronize()
    elif kind == "torch-cuda":
        import torch

        torch.cuda.synchronize()


def time_call(
    fn: Callable[[], object],
    sync: str = "",
    min_time: float = 0.3,
    max_repeats: int = 50,
    min_repeats: int = 3,
) -> dict:
    """Median wall time of ``fn()`` in seconds, after one warm-up call.

    Returns:
        dict with ``median`` and ``min`` seconds and the number of timed ``repeats``.
    """
    fn()
    _sync(sync)
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or (
        len(times) < max_repeats and time.perf_counter() - start < min_time
    ):
        t0 = time.perf_counter()
        fn()
        _sync(sync)
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "repeats": len(times)}


def traced_peak_mib(fn: Callable[[], object]) -> float:
    """Peak MiB of Python/NumPy allocations made during one call of ``fn``."""
    tracemalloc.start()
    try:
        fn()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


# --------------------------------------------------------------------------- inputs


def random_boxes(
    rng: np.random.Generator,
    n: int,
    size: float = 1024.0,
    min_wh: float = 8.0,
    max_wh: float = 256.0,
    dtype=np.float32,
) -> np.ndarray:
    """``(n, 4)`` random boxes inside a ``size`` x ``size`` image."""
    wh = rng.uniform(min_wh, max_wh, size=(n, 2))
    xy = rng.uniform(0, size - wh)
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def clustered_boxes(
    rng: np.random.Generator, n: int, clusters: int = 60, size: float = 1024.0, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` boxes jittered around ``clusters`` objects (what an RPN emits), and their scores."""
    centres = random_boxes(rng, clusters, size, 32, 256, np.float64)
    which = rng.integers(0, clusters, size=n)
    base = centres[which]
    wh = (base[:, 2:] - base[:, :2])[:, [0, 1, 0, 1]]
    boxes = base + rng.normal(0.0, 0.08, size=(n, 4)) * wh
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
    return boxes.astype(dtype), rng.random(n).astype(dtype)


def proposal_rois(
    rng: np.random.Generator, r: int, image_size: float = 1024.0, dtype=np.float32
) -> np.ndarray:
    """``(r, 5)`` RoIs ``(0, x1, y1, x2, y2)`` with aspect ratio (short/long side) <= 1."""
    boxes = random_boxes(rng, r, image_size, 16, min(512.0, image_size / 2), np.float64)
    return np.concatenate([np.zeros((r, 1)), boxes], axis=1).astype(dtype)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One benchmark: inputs built once, one callable per backend and one for torch."""

    name: str
    size: str
    run: Callable[[str, dict], Callable[[], object]]  # (backend, inputs) -> fn()
    make: Callable[[np.random.Generator], dict]
    torch_run: Callable[[dict, str], Callable[[], object]] | None = None  # (inputs, device) -> fn()
    skip_numpy: bool = False  # the reference is too slow at this size


def _on(backend: str, arrays: dict) -> dict:
    """The case's inputs as arrays of ``backend`` (CuPy on a GPU)."""
    return {
        k: B.to_backend(v, backend) if isinstance(v, np.ndarray) else v for k, v in arrays.items()
    }


def _case_box_iou(n: int) -> Case:
    def make(rng):
        return {"a": random_boxes(rng, n), "b": random_boxes(rng, n)}

    def run(backend, x):
        return lambda: ops.box_iou(x["a"], x["b"], backend=backend)

    def torch_run(x, dev):
        import torch
        import torchvision

        a, b = (torch.from_numpy(x[k]).to(dev) for k in ("a", "b"))
        return lambda: torchvision.ops.box_iou(a, b)

    return Case("box_iou", f"{n}x{n}", run, make, torch_run)


def _case_nms(n: int, threshold: float = 0.7, sweep: bool = False) -> Case:
    def make(rng):
        boxes, scores = clustered_boxes(rng, n, clusters=max(n // 100, 10))
        return {"boxes": boxes, "scores": scores}

    def run(backend, x):
        return lambda: ops.nms(x["boxes"], x["scores"], threshold, backend=backend)

    def torch_run(x, dev):
        import torch
        import torchvision

        b, s = (torch.from_numpy(x[k]).to(dev) for k in ("boxes", "scores"))
        return lambda: torchvision.ops.nms(b, s, threshold)

    return Case(
        "nms" if not sweep else "nms sweep",
        f"{n} clustered @{threshold}",
        run,
        make,
        torch_run,
        skip_numpy=n > 20000,
    )


def _roi_case_inputs(r: int, c: int, hw: int, out: int):
    """``make(rng)`` of the RoI cases: ``(1, c, hw, hw)`` float32 features, ``r`` proposal-like
    RoIs on a ``16 hw`` image (spatial scale 1/16), an ``(r, c, out, out)`` output gradient."""

    def make(rng):
        feats = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        rois = proposal_rois(rng, r, hw * 16.0)
        grad = rng.standard_normal((r, c, out, out)).astype(np.float32)
        return {"features": feats, "rois": rois, "grad": grad}

    return make


def _roi_case_torch(op_name: str, *op_args):
    """``torch_run(x, dev)`` of the RoI cases: ``torchvision.ops.<op_name>(f, rois, *op_args)``
    forward and backward."""

    def torch_run(x, dev):
        import torch
        import torchvision

        op = getattr(torchvision.ops, op_name)
        f = torch.from_numpy(x["features"]).to(dev).requires_grad_(True)
        rois = torch.from_numpy(x["rois"]).to(dev)
        g = torch.from_numpy(x["grad"]).to(dev)

        def fn():
            f.grad = None
            op(f, rois, *op_args).backward(g)
            return f.grad

        return fn

    return torch_run


def _case_roi_pool(r: int = 256, c: int = 256, hw: int = 64, out: int = 7) -> Case:
    shape = (1, c, hw, hw)

    def run(backend, x):
        def fn():
            y, argmax = roi_pool(x["features"], x["rois"], out, 1.0 / 16, backend=backend)
            return roi_pool_backward(x["grad"], x["rois"], argmax, shape, backend=backend)

        return fn

    make, torch_run = _roi_case_inputs(r, c, hw, out), _roi_case_torch("roi_pool", out, 1.0 / 16)
    return Case("roi_pool fwd+bwd", f"{r} RoIs, 1x{c}x{hw}x{hw}, 1/16", run, make, torch_run)


def _case_roi_align(
    r: int = 256, c: int = 256, hw: int = 64, out: int = 7, sampling_ratio: int = 2
) -> Case:
    """RoIAlign forward + backward on the roi_pool case's inputs (torchvision's op as the peer)."""
    shape = (1, c, hw, hw)
    scale = 1.0 / 16

    def run(backend, x):
        def fn():
            roi_align(x["features"], x["rois"], out, scale, sampling_ratio, backend=backend)
            return roi_align_backward(
                x["grad"], x["rois"], shape, out, scale, sampling_ratio, backend=backend
            )

        return fn

    make = _roi_case_inputs(r, c, hw, out)
    torch_run = _roi_case_torch("roi_align", out, scale, sampling_ratio)
    size = f"{r} RoIs, 1x{c}x{hw}x{hw}, 1/16, {sampling_ratio}x{sampling_ratio} samples"
    return Case("roi_align fwd+bwd", size, run, make, torch_run)


def _case_conv2d(n=2, c=64, hw=64, f=128) -> Case:
    def make(rng):
        return {
            "x": rng.standard_normal((n, c, hw, hw)).astype(np.float32),
            "w": (rng.standard_normal((f, c, 3, 3)) * 0.05).astype(np.float32),
            "b": np.zeros(f, np.float32),
            "dout": rng.standard_normal((n, f, hw, hw)).astype(np.float32),
        }

    def run(backend, x):
        def fn():
            out, cache = layers.conv2d_forward(
                x["x"], x["w"], x["b"], stride=1, padding=1, backend=backend
            )
            return layers.conv2d_backward(x["dout"], cache)

        return fn

    def torch_run(x, dev):
        import torch

        t = {k: torch.from_numpy(v).to(dev) for k, v in x.items()}
        xx = t["x"].requires_grad_(True)
        w = t["w"].requires_grad_(True)
        b = t["b"].requires_grad_(True)

        def fn():
            xx.grad = w.grad = b.grad = None
            torch.nn.functional.conv2d(xx, w, b, padding=1).backward(t["dout"])
            return xx.grad

        return fn

    return Case(
        "conv2d fwd+bwd",
        f"{n}x{c}x{hw}x{hw} -> {f}, 3x3 pad 1",
        run,
        make,
        torch_run,
    )


def _case_max_pool(n=2, c=128, hw=64) -> Case:
    def make(rng):
        return {
            "x": rng.standard_normal((n, c, hw, hw)).astype(np.float32),
            "dout": rng.standard_normal((n, c, hw // 2, hw // 2)).astype(np.float32),
        }

    def run(backend, x):
        def fn():
            out, cache = layers.max_pool2d_forward(x["x"], 2, 2, backend=backend)
            return layers.max_pool2d_backward(x["dout"], cache)

        return fn

    def torch_run(x, dev):
        import torch

        xx = torch.from_numpy(x["x"]).to(dev).requires_grad_(True)
        d = torch.from_numpy(x["dout"]).to(dev)

        def fn():
            xx.grad = None
            torch.nn.functional.max_pool2d(xx, 2, 2).backward(d)
            return xx.grad

        return fn

    return Case("max_pool2d fwd+bwd", f"{n}x{c}x{hw}x{hw}, 2x2/2", run, make, torch_run)


def torchvision_faster_rcnn(config, num_classes: int):
    """torchvision's ``FasterRCNN`` built to match minirccn's ``config`` (the peer for ``train``).

    Same backbone stack (3x3 conv [+BN] + ReLU [+2x2 max pool] per stage), anchors,
    proposal numbers, RoI pooling 7x7 (max pooling, or ``MultiScaleRoIAlign`` on the one
    level when ``config.box_roi_pool == "roi_align"``) and a two-fc head of the same width.
    Differences that remain (torchvision's own design): one sigmoid objectness
    score per anchor instead of a 2-way softmax, and an RPN conv as wide as the
    backbone output.
    """
    import torch
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator

    spec = backbone_spec(config)
    layers, c_in, stride = [], spec.in_channels, 1
    for stage in spec.stages:
        for _ in range(stage.convs):
            layers.append(torch.nn.Conv2d(c_in, stage.channels, 3, padding=1))
            if spec.batch_norm:
                layers.append(torch.nn.BatchNorm2d(stage.channels))
            layers.append(torch.nn.ReLU(inplace=True))
            c_in = stage.channels
        if stage.pool:
            layers.append(torch.nn.MaxPool2d(2, 2))
            stride *= 2
    backbone = torch.nn.Sequential(*layers)
    backbone.out_channels = c_in

    class RoIMaxPool(torchvision.ops.MultiScaleRoIAlign):  # FasterRCNN insists on this type
        def __init__(self):
            super().__init__(["0"], config.roi_output_size, 0)
            self.pool = torchvision.ops.RoIPool(config.roi_output_size, 1.0 / stride)

        def forward(self, features, proposals, image_shapes):
            return self.pool(features["0"], proposals)

    size = config.roi_output_size
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=AnchorGenerator(
            (tuple(config.anchor_sizes),), (tuple(config.aspect_ratios),)
        ),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=RoIMaxPool()
        if config.box_roi_pool == "roi_pool"
        else torchvision.ops.MultiScaleRoIAlign(["0"], size, config.box_roi_pool_sampling_ratio),
        box_head=TwoMLPHead(c_in * size * size, config.representation_size),
        box_predictor=FastRCNNPredictor(config.representation_size, num_classes),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.box_score_thresh,
        box_detections_per_img=config.box_detections_per_img,
    )


def _torch_train_step(inputs: dict, device: str):
    """One SGD step of :func:`torchvision_faster_rcnn` on the case's image (tiny preset)."""
    import torch

    config = preset("tiny")
    data = inputs["data"]
    torch.manual_seed(inputs["seed"] % (2**31))
    model = torchvision_faster_rcnn(config, len(data.class_names)).to(device).train()
    sample = data[inputs["index"]]
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float().div(255).to(device)
    target = {
        "boxes": torch.from_numpy(sample["boxes"]).to(device),
        "labels": torch.from_numpy(sample["labels"]).to(device),
    }
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    def fn():
        opt.zero_grad()
        loss = sum(model([image], [target]).values())
        loss.backward()
        opt.step()
        return loss

    return fn


def _torch_predict(inputs: dict, device: str):
    """One inference of :func:`torchvision_faster_rcnn` on the case's image."""
    import torch

    data = inputs["data"]
    model = torchvision_faster_rcnn(preset("tiny"), len(data.class_names)).to(device).eval()
    image = (
        torch.from_numpy(data[inputs["index"]]["image"])
        .permute(2, 0, 1)
        .float()
        .div(255)
        .to(device)
    )

    def fn():
        with torch.no_grad():
            return model([image])

    return fn


def _tiny_detector(inputs: dict, backend: str):
    """A fresh detector of the case's preset (``inputs["preset"]``, default ``tiny``) on
    ``backend``, seeded by the case's inputs; that preset's RetinaNet if
    ``inputs["model"] == "retinanet"``."""
    rng = np.random.default_rng(inputs["seed"])
    cfg = preset(inputs.get("preset", "tiny"), model=inputs.get("model", "fasterrcnn"))
    return build_model(cfg, inputs["data"].class_names, rng=rng).to(backend)


def _inputs_of(preset_name: str, model: str = "fasterrcnn"):
    """The ``make`` of a detector case: the shapes image and seed, and which detector."""

    def make(rng: np.random.Generator) -> dict:
        return {**_make_detector_inputs(rng), "preset": preset_name, "model": model}

    return make


def _make_detector_inputs(rng: np.random.Generator) -> dict:
    return {"index": 0, "seed": int(rng.integers(1 << 31)), "data": load_dataset("shapes", "train")}


def _train_step(backend: str, inputs: dict):
    """One SGD step of the case's detector, as ``minirccn train`` runs it after warmup:
    forward, the hand-written backward, the preset's gradient clipping, SGD with momentum and
    weight decay; returns the losses."""
    model = _tiny_detector(inputs, backend)
    cfg = model.config
    sample = inputs["data"][inputs["index"]]
    x, scale = model.preprocess(sample["image"])
    images = B.array_module(backend).asarray(x[None])
    sizes = [tuple(x.shape[1:])]
    targets = [
        {"boxes": (sample["boxes"] * scale).astype(cfg.dtype), "labels": sample["labels"]}
    ]
    batch = Batch(images, sizes, targets)
    opt = make_optimizer(model)
    rng = np.random.default_rng(0)
    step = cfg.warmup_iters  # after the warmup, batch norm not yet frozen

    def fn():
        return train_step(model, opt, batch, rng, step, backend=backend)

    return fn


def _predict(backend: str, inputs: dict):
    """One inference of the case's detector on one image (``model.predict``)."""
    model = _tiny_detector(inputs, backend)
    image = inputs["data"][inputs["index"]]["image"]
    return lambda: model.predict(image, backend=backend)


def detector_cases() -> list[Case]:
    """The detectors' own throughput: one training step and one inference each, for the
    default Faster R-CNN (``tiny``), its pyramid preset and the default RetinaNet."""
    cases = []
    for label, name, model in (
        ("tiny", "tiny", "fasterrcnn"),
        ("resnet-fpn-tiny", "resnet-fpn-tiny", "fasterrcnn"),
        ("retinanet resnet-fpn-tiny", "resnet-fpn-tiny", "retinanet"),
    ):
        make = _inputs_of(name, model)
        cases.append(Case(f"train step ({label})", "1x3x128x128", _train_step, make))
        cases.append(Case(f"predict ({label})", "128x128", _predict, make))
    return cases


def build_cases(groups: set[str], quick: bool = False) -> list[Case]:
    """The benchmark cases of the requested ``groups`` (ops, layers, sweep, train)."""
    cases: list[Case] = []
    if "ops" in groups:
        if quick:
            cases += [_case_box_iou(200), _case_nms(500), _case_roi_pool(r=16, c=8, hw=16)]
            cases += [_case_roi_align(r=16, c=8, hw=16)]
        else:
            cases += [_case_box_iou(2000), _case_nms(6000), _case_roi_pool(), _case_roi_align()]
    if "layers" in groups:
        if quick:
            cases += [_case_conv2d(n=1, c=8, hw=16, f=16), _case_max_pool(n=1, c=8, hw=16)]
        else:
            cases += [_case_conv2d(), _case_max_pool()]
    if "sweep" in groups:
        sizes = (1000, 5000) if quick else (1000, 5000, 10000, 20000, 50000)
        cases += [_case_nms(n, sweep=True) for n in sizes]
    if "train" in groups:
        peers = {"train step (tiny)": _torch_train_step, "predict (tiny)": _torch_predict}
        for case in detector_cases():
            case.torch_run = case.torch_run or peers.get(case.name)
            cases.append(case)
    return cases


# --------------------------------------------------------------------------- running


def torch_devices() -> list[str]:
    """torchvision's devices to compare with: "cpu" (and "cuda" if torch sees a GPU); [] without torch."""
    try:
        import torch
        import torchvision  # noqa: F401
    except Exception:
        return []
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def run_case(
    case: Case, backends: list[str], devices: list[str], seed: int, min_time: float, memory: bool
) -> list[dict]:
    """Time ``case`` on every backend and torch device; one result row per column."""
    inputs = case.make(np.random.default_rng(seed))
    rows = []
    for backend in backends:
        if backend == "numpy" and case.skip_numpy:
            continue
        fn = case.run(backend, _on(backend, inputs))
        t = time_call(fn, sync=backend, min_time=min_time)
        row = {"case": case.name, "size": case.size, "impl": backend, **t}
        if memory and backend in ("numpy", "numba"):
            row["peak_mib"] = traced_peak_mib(fn)
        rows.append(row)
    for dev in devices if case.torch_run else []:
        fn = case.torch_run(inputs, dev)
        t = time_call(fn, sync="torch-cuda" if dev == "cuda" else "", min_time=min_time)
        rows.append({"case": case.name, "size": case.size, "impl": f"torchvision-{dev}", **t})
    return rows


def machine_description() -> str:
    """One line naming the machine the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"
    )
    try:
        import numba

        text += f", Numba {numba.__version__} ({numba.get_num_threads()} threads)"
    except Exception:
        pass
    if B.gpu_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        text += f", GPU {props['name'].decode()}"
    return text


def format_table(rows: list[dict]) -> str:
    """A Markdown table: one line per case, one column per implementation (median ms)."""
    impls: list[str] = []
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
    keys: list[tuple] = []
    for r in rows:
        if (r["case"], r["size"]) not in keys:
            keys.append((r["case"], r["size"]))
    names = [("numpy (reference)" if i == "numpy" else i) + " ms" for i in impls]
    head = (
        "| op | size | "
        + " | ".join(names)
        + " | numba speed-up vs numpy | numba speed-up vs torchvision-cpu |"
    )
    lines = [head, "|" + " --- |" * (len(impls) + 4)]
    for key in keys:
        cell = {r["impl"]: r for r in rows if (r["case"], r["size"]) == key}
        vals = []
        for i in impls:
            r = cell.get(i)
            vals.append(
                ""
                if r is None
                else f"{r['median'] * 1e3:.3g}"
                + (f" ({r['peak_mib']:.0f} MiB)" if "peak_mib" in r else "")
            )

        def ratio(a, b):
            if a in cell and b in cell:
                return f"{cell[b]['median'] / cell[a]['median']:.1f}x"
            return ""

        lines.append(
            f"| {key[0]} | {key[1]} | "
            + " | ".join(vals)
            + f" | {ratio('numba', 'numpy')} | {ratio('numba', 'torchvision-cpu')} |"
        )
    return "\n".join(lines)


def available_backends(requested: list[str]) -> list[str]:
    """``requested`` minus backends that cannot run here (``cuda`` without a GPU)."""
    out = []
    for b in requested:
        if b == "cuda" and not B.gpu_available():
            continue  # the simulator is for correctness, not for timing
        out.append(b)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--groups",
        default="ops,layers,sweep,train",
        help="comma-separated case groups: ops, layers, sweep, train (default: all)",
    )
    parser.add_argument(
        "--backends",
        default="numpy,numba,cuda",
        help="comma-separated backends (cuda is skipped without a GPU)",
    )
    parser.add_argument("--no-torch", action="store_true", help="do not time torchvision's ops")
    parser.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of timed calls per cell"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer and smaller cases (for smoke tests)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the tracemalloc peak-memory pass"
    )
    flags.add_seed_argument(parser, help="seed of the benchmark inputs")
    parser.add_argument(
        "--json",
        dest="json_path",
        default=None,
        help=f"where to write the JSON results (default: {DEFAULT_JSON}, or bench2.json, ... "
        "when it exists)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --json file"
    )


DEFAULT_JSON = "bench.json"


def json_out(path, overwrite: bool) -> str:
    """The results file: ``path`` (an existing file needs ``overwrite``), else the first free
    of ``bench.json``, ``bench2.json``, ... (the rule of every writer, before any timing)."""
    if path is None:
        return default_output(DEFAULT_JSON, "the results go")
    if not path.strip():
        raise MinirccnError("--json: expected a file name, got an empty string")
    check_replace([path], overwrite=overwrite, flag="--json", where=path)
    return path


def run(args: argparse.Namespace) -> int:
    flags.check_seed(args)
    if not (args.min_time >= 0 and math.isfinite(args.min_time)):
        raise MinirccnError(f"--min-time: expected a finite number of seconds >= 0, got {args.min_time}")
    groups = {g.strip() for g in args.groups.split(",") if g.strip()}
    unknown = groups - {"ops", "layers", "sweep", "train"}
    if unknown:
        raise ValueError(f"--groups: unknown group(s) {', '.join(sorted(unknown))}")
    requested = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in requested:
        if b not in B.BACKENDS:
            raise ValueError(
                f"--backends: unknown backend {b!r}; choose from {', '.join(B.BACKENDS)}"
            )
    args.json_path = json_out(args.json_path, args.overwrite)
    backends = available_backends(requested)
    devices = [] if args.no_torch else torch_devices()
    machine = machine_description()
    print(f"machine: {machine}")
    print(f"columns: {', '.join(backends + [f'torchvision-{d}' for d in devices])}", flush=True)
    rows: list[dict] = []
    for case in build_cases(groups, quick=args.quick):
        print(f"  {case.name} [{case.size}] ...", flush=True)
        rows += run_case(
            case, backends, devices, args.seed, args.min_time, memory=not args.no_memory
        )
    print()
    print(format_table(rows))
    write_json(args.json_path, {"machine": machine, "results": rows}, "results", indent=1)
    print(f"\nwrote {args.json_path}")
    return 0
