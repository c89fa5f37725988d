"""Checkpoints: round trip, atomic writes, one clear error for a missing / corrupt / incompatible file."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from minirccn.engine import checkpoint as C
from minirccn.config import preset
from minirccn.core.errors import MinirccnError
from minirccn.detector.models.faster_rcnn import FasterRCNN
from minirccn.nn.optim import SGD

NAMES = ["__background__", "x", "y"]


def small_model(seed=0):
    cfg = preset(
        "tiny",
        backbone_stages=((4, 1, True), (6, 1, True)),
        rpn_channels=4,
        representation_size=8,
        roi_output_size=2,
    )
    return FasterRCNN(cfg, NAMES, rng=np.random.default_rng(seed))


def test_round_trip(tmp_path):
    model = small_model()
    opt = SGD(model.trainable(), lr=0.1)
    opt.step({k: np.ones_like(v) for k, v in model.trainable().items()})
    rng = np.random.default_rng(9)
    rng.random(3)
    path = C.save_checkpoint(
        tmp_path / "c.npz",
        model,
        optimizer_state=opt.state_dict(),
        step=17,
        rng_state=rng.bit_generator.state,
        extra={"note": [1, 2]},
    )
    loaded, state = C.load_checkpoint(path)
    assert loaded.config == model.config and loaded.class_names == NAMES
    assert set(loaded.params) == set(model.params)
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype and np.array_equal(loaded.params[k], v)
    assert state["step"] == 17 and state["extra"] == {"note": [1, 2]}
    opt2 = SGD(loaded.trainable(), lr=1.0)
    opt2.load_state_dict(state["optimizer"])
    for k, v in opt.buffers.items():
        assert np.array_equal(opt2.buffers[k], v)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = state["rng_state"]
    assert rng2.random() == rng.random()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(MinirccnError, match="nope.npz"):
        C.load_checkpoint(tmp_path / "nope.npz")


def test_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    with pytest.raises(MinirccnError, match="bad.npz"):
        C.load_checkpoint(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(MinirccnError, match="other.npz"):
        C.load_checkpoint(tmp_path / "other.npz")


def test_incompatible_checkpoint_names_it(tmp_path):
    path = C.save_checkpoint(tmp_path / "c.npz", small_model())
    with np.load(path) as z:
        files = {k: z[k] for k in z.files}
    meta = json.loads(str(files["meta"]))
    meta["config"]["representation_size"] = 16  # weights no longer fit the config
    files["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "d.npz", **files)
    with pytest.raises(MinirccnError, match="d.npz.*incompatible"):
        C.load_checkpoint(tmp_path / "d.npz")
    meta["version"] = 99
    files["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "e.npz", **files)
    with pytest.raises(MinirccnError, match="e.npz.*version"):
        C.load_checkpoint(tmp_path / "e.npz")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    C.save_checkpoint(path, small_model(0), step=1)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(C.np, "savez", crash)
    with pytest.raises(MinirccnError, match="c.npz: cannot write the checkpoint .*previous one is kept"):
        C.save_checkpoint(path, small_model(1), step=2)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind
    monkeypatch.undo()
    C.save_checkpoint(path, small_model(1), step=2)
    assert C.load_checkpoint(path)[1]["step"] == 2


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("kind", ["fasterrcnn", "retinanet"])
def test_a_checkpoint_written_before_the_redesign_loads_and_detects_the_same(kind):
    """tests/engine/fixtures: tiny models saved by the code at 09c0f12 (before detector/ was
    regrouped) with the detections that code gave on ``image.npy`` (numpy backend, every
    score kept): today's loader builds the same model and finds the same detections."""
    model, state = C.load_checkpoint(str(FIXTURES / f"{kind}-09c0f12.npz"))
    assert type(model).__name__ == {"fasterrcnn": "FasterRCNN", "retinanet": "RetinaNet"}[kind]
    assert state["step"] == 0
    want = json.loads((FIXTURES / "detections-09c0f12.json").read_text())[kind]
    got = model.predict(np.load(FIXTURES / "image.npy"), backend="numpy")
    assert len(want["scores"]) == 10
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-6, atol=1e-4)
