"""minirccn beside torch itself: torch's resize, and torchvision models from ``build.py``
reproducing minirccn's detections (and minirccn reproducing torchvision's, with weights drawn
in torch). Skipped, with the reason, where torch is not installed (it is never a minirccn
dependency: make a virtualenv with torch and torchvision to run these).

The full-size check of issue 24 (ResNet-50 C4 and FPN, seeded random weights with calibrated
batch norm, 320-pixel images, numpy and numba backends) takes minutes:
``python scripts/torchvision_models.py reproduce ARCH``.
"""

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs torch and torchvision (not a minirccn dependency)"
)
pytest.importorskip("torchvision", reason="needs torchvision (not a minirccn dependency)")
pytest.importorskip("safetensors.numpy")

import torch.nn.functional as F
from helpers import TINY
from test_interop import random_model

from minirccn.config import preset
from minirccn.data import transforms
from minirccn.detector.registry import build_model
from minirccn.engine import interop
from minirccn.engine.checkpoint import load_checkpoint
from minirccn.engine.torchvision_export import export_torchvision

pytestmark = pytest.mark.torch
FIXTURE = os.path.join(
    os.path.dirname(__file__), "..", "engine", "fixtures", "fasterrcnn-09c0f12.npz"
)
NAMES = ["__background__", "a", "b"]


def load_build(folder):
    """The ``build`` module of an export folder."""
    spec = importlib.util.spec_from_file_location(
        f"build_{abs(hash(str(folder)))}", os.path.join(folder, "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_detect(model, image):
    with torch.no_grad():
        out = model([torch.from_numpy(image).permute(2, 0, 1).float().div(255)])[0]
    return {k: v.numpy() for k, v in out.items()}


def reproduced(reference, candidate, top=20):
    """Share of ``reference``'s ``top`` best detections found in ``candidate``: same label,
    IoU >= 0.99, score within 1e-3 (issue 24's rule)."""
    from torchvision.ops import box_iou

    order = np.argsort(-reference["scores"], kind="stable")[:top]
    if len(order) == 0:
        return 1.0
    ious = box_iou(
        torch.from_numpy(reference["boxes"][order]).double(),
        torch.from_numpy(candidate["boxes"]).double(),
    ).numpy()
    used, hits = set(), 0
    for r, i in enumerate(order):
        ok = (candidate["labels"] == reference["labels"][i]) & (ious[r] >= 0.99)
        ok &= np.abs(candidate["scores"] - reference["scores"][i]) <= 1e-3
        j = next((j for j in np.flatnonzero(ok) if j not in used), None)
        if j is not None:
            used.add(j)
            hits += 1
    return hits / len(order)


@pytest.mark.parametrize("size", [(100, 37), (427, 640), (500, 333), (64, 64)])
def test_resize_is_torchs(size):
    h, w = size
    image = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = transforms.normalize(image)
    t = torch.from_numpy(x)
    short, long_ = torch.min(torch.tensor(size)).float(), torch.max(torch.tensor(size)).float()
    scale = torch.min(320.0 / short, 320.0 / long_).item()  # GeneralizedRCNNTransform's arithmetic
    ref = F.interpolate(
        t[None],
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )[0]
    assert tuple(ref.shape[1:]) == transforms.torchvision_size(h, w, 320, 320)
    # torch 2.14.1 (torchvision 0.29.1) agrees to 1e-6; torch 2.15.0 (torchvision 0.29.2)
    # rounds its float32 interpolation weights otherwise: up to 1.6e-5 on these normalised
    # pixels (about 1e-5 of their range), the same sampling points and weights otherwise
    np.testing.assert_allclose(
        transforms.bilinear_resize(x, *ref.shape[1:]), ref.numpy(), atol=3e-5
    )


def test_the_old_tiny_checkpoint_exports_to_the_same_detections(tmp_path):
    model, _ = load_checkpoint(FIXTURE)
    build = load_build(export_torchvision(model, str(tmp_path))["build"].rsplit(os.sep, 1)[0])
    tv = build.build()
    image = np.load(
        os.path.join(os.path.dirname(FIXTURE), "image.npy")
    )  # 48 x 80: Pillow resizes it
    ours = model.predict(image, backend="numpy")
    assert len(ours["scores"]) >= 5
    assert reproduced(ours, torch_detect(tv, image)) == 1.0


@pytest.mark.parametrize(
    "config",
    [
        preset("tiny", **{**TINY, "rpn_channels": 8}),
        preset("tiny-align", **{**TINY, "rpn_channels": 8}),
        preset(
            "resnet-fpn-tiny", rpn_channels=32, representation_size=32, min_size=96, max_size=96
        ),
        preset(
            "resnet-fpn-tiny",
            rpn_channels=32,
            representation_size=32,
            min_size=96,
            max_size=96,
            image_resize="torchvision",
            size_divisible=32,
            anchor_offset=0.0,
            anchor_grid="image",
        ),
    ],
    ids=["tiny", "tiny-align", "resnet-fpn-tiny", "resnet-fpn-tiny-torchvision-mode"],
)
def test_build_reproduces_minirccn_and_back(config, tmp_path):
    """export: build() reproduces minirccn's detections; import: the torchvision model's weights,
    redrawn in torch, give minirccn the torchvision model's detections."""
    model = random_model(config, seed=5)
    model.params["head.cls.w"] = model.params["head.cls.w"] * 30  # scores spread out: no near-ties
    out = export_torchvision(model, str(tmp_path))
    tv = load_build(str(tmp_path)).build()
    rng = np.random.default_rng(7)
    images = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((64, 64), (70, 50), (96, 120))
    ]
    for image in images:
        ours = model.predict(image, backend="numpy")
        assert len(ours["scores"]) > 0
        assert reproduced(ours, torch_detect(tv, image)) >= 0.95
    # the other way: torchvision's weights (its own draw) into minirccn
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in tv.named_parameters():
            p.add_(
                torch.randn_like(p) * (0.3 * p.std() if p.numel() > 1 else 0.1)
                + (0.05 if "bias" in name else 0.0)
            )
    state = {k: v.numpy() for k, v in tv.state_dict().items()}
    keys = interop.key_table(model)
    interop.check_state_dict(
        state, keys, {k: v.shape for k, v in model.params.items()}, "state_dict"
    )
    back = build_model(config, NAMES, params=interop.from_torchvision(state, keys, np.float32))
    for image in images:
        assert reproduced(torch_detect(tv, image), back.predict(image, backend="numpy")) >= 0.95
    assert out["tensors"] == len(keys)


@pytest.mark.slow
@pytest.mark.parametrize("arch", interop.ARCHS)
def test_resnet50_archs_reproduce_torchvision(arch):
    """The issue's check, small: torchvision's real ResNet-50 model (seeded, batch norm
    calibrated), ``minirccn convert`` and ``minirccn detect`` as commands, one 160-pixel photo
    (the full check, 4 photos at 320 pixels on both backends, is the script's: docs/interop.md)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "torchvision_models.py")
    spec = importlib.util.spec_from_file_location("torchvision_models", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.reproduce(arch, seed=1, backends=["numba"], n_images=1, size=160)
    assert result["backends"]["numba"]["reproduced"] >= 0.95
