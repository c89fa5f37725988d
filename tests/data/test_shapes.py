"""The synthetic ``shapes`` dataset: contract, determinism, exact boxes, statistics."""

import numpy as np
import pytest

from minirccn.data import ShapesConfig, ShapesDataset, load_dataset
from minirccn.data.shapes import CLASS_NAMES, _background, draw_image, image_rng
from minirccn.core.errors import MinirccnError


def test_contract():
    ds = load_dataset("shapes", split="train", seed=0)
    assert ds.class_names == ["__background__", "circle", "square", "triangle"]
    assert len(ds) == ShapesConfig().train_size and ds.name == "shapes-train"
    for i in range(20):
        s = ds[i]
        assert s["image"].dtype == np.uint8 and s["image"].shape == (128, 128, 3)
        assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (len(s["labels"]), 4)
        assert s["labels"].dtype == np.int64 and s["difficult"].dtype == bool
        assert not s["difficult"].any()
        assert set(s["labels"].tolist()) <= {1, 2, 3}
        assert s["image_id"] == f"shapes_train_{i:06d}"
    assert [len(load_dataset("shapes", split=sp)) for sp in ("val", "test")] == [200, 200]


def test_same_seed_same_bytes_and_splits_differ():
    a, b = ShapesDataset("train", seed=3), ShapesDataset("train", seed=3)
    for i in (0, 1, 57):
        assert a[i]["image"].tobytes() == b[i]["image"].tobytes()
        assert a[i]["boxes"].tobytes() == b[i]["boxes"].tobytes()
    other_seed, other_split = ShapesDataset("train", seed=4), ShapesDataset("test", seed=3)
    for i in (0, 1, 57):
        assert not np.array_equal(a[i]["image"], other_seed[i]["image"])
        assert not np.array_equal(a[i]["image"], other_split[i]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    # random access order does not matter
    assert np.array_equal(a[57]["image"], ShapesDataset("train", seed=3)[57]["image"])


def test_indexing():
    ds = ShapesDataset("test")
    assert np.array_equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(TypeError):
        ds["0"]
    assert sum(1 for _ in ShapesDataset("val", config=ShapesConfig(val_size=3))) == 3


@pytest.mark.parametrize("seed", range(12))
def test_boxes_are_the_tight_boxes_of_the_drawn_pixels(seed):
    """Without noise, the pixels that differ from the background are exactly the objects."""
    cfg = ShapesConfig(noise_std=0.0, empty_fraction=0.0, max_objects=1, min_object_size=5)
    image, boxes, _labels = draw_image(image_rng(seed, "train", 0), cfg)
    background = np.clip(np.rint(_background(image_rng(seed, "train", 0), cfg)), 0, 255).astype(
        np.uint8
    )
    background = background.transpose(1, 2, 0)  # (3, S, S) -> (S, S, 3)
    changed = (image != background).any(axis=2)
    cols, rows = np.flatnonzero(changed.any(axis=0)), np.flatnonzero(changed.any(axis=1))
    assert len(boxes) == 1
    assert boxes[0].tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_statistics_of_the_default_config():
    ds = ShapesDataset("train", seed=0)
    counts, sides, labels, ious = [], [], [], []
    for i in range(300):
        s = ds[i]
        b = s["boxes"].astype(np.float64)
        counts.append(len(b))
        labels += s["labels"].tolist()
        sides += np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).tolist()
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 128).all() and (b[:, 2:] > b[:, :2]).all()
        for j in range(len(b)):
            for k in range(j):
                iw = max(0.0, min(b[j, 2], b[k, 2]) - max(b[j, 0], b[k, 0]))
                ih = max(0.0, min(b[j, 3], b[k, 3]) - max(b[j, 1], b[k, 1]))
                inter = iw * ih
                area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
                ious.append(inter / (area(b[j]) + area(b[k]) - inter))
    counts = np.bincount(counts, minlength=5)
    assert len(counts) == 5 and 0.04 < counts[0] / 300 < 0.2  # about 10% empty, at most 4 objects
    assert min(sides) >= 6 and max(sides) <= 81
    assert (
        np.mean(np.array(sides) < 20) > 0.2 and np.mean(np.array(sides) > 40) > 0.15
    )  # log-uniform
    assert sorted(set(labels)) == [1, 2, 3] and min(np.bincount(labels)[1:]) > len(labels) / 5
    assert max(ious) < 0.3 and max(ious) > 0.0  # overlaps happen, but stay small


def test_objects_stand_out_from_the_background():
    cfg = ShapesConfig(noise_std=0.0)
    for seed in range(10):
        image, boxes, _ = draw_image(image_rng(seed, "val", 1), cfg)
        background = np.rint(_background(image_rng(seed, "val", 1), cfg)).transpose(1, 2, 0)
        for x1, y1, x2, y2 in boxes.astype(int):
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2  # the centre pixel belongs to every shape here
            diff = image[cy, cx].astype(float) - background[cy, cx]
            assert np.linalg.norm(diff) > 40


def test_bad_arguments():
    with pytest.raises(MinirccnError, match="split"):
        ShapesDataset("training")
    with pytest.raises(MinirccnError, match="seed"):
        ShapesDataset("train", seed=-1)
    with pytest.raises(MinirccnError, match="nowhere"):
        load_dataset("nowhere")
    assert CLASS_NAMES[1:] == sorted(CLASS_NAMES[1:])  # exports load back with the same labels
