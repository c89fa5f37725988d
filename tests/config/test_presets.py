"""The config dataclass: presets, immutability, JSON round trip, torchvision field names."""

import dataclasses

import pytest

from minirccn.config import DetectorConfig, FasterRCNNConfig, preset

# keyword arguments of torchvision.models.detection.FasterRCNN that the config mirrors
TORCHVISION_NAMES = [
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "box_fg_iou_thresh",
    "box_bg_iou_thresh",
    "box_batch_size_per_image",
    "box_positive_fraction",
    "bbox_reg_weights",
]


def test_field_names_follow_torchvision():
    names = {f.name for f in dataclasses.fields(FasterRCNNConfig)}
    assert set(TORCHVISION_NAMES) <= names


def test_paper_defaults():
    c = FasterRCNNConfig()
    assert (c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh) == (0.7, 0.3)
    assert (c.rpn_batch_size_per_image, c.rpn_positive_fraction) == (256, 0.5)
    assert (c.box_fg_iou_thresh, c.box_bg_iou_thresh, c.box_bg_iou_lo) == (0.5, 0.5, 0.0)
    assert (c.box_batch_size_per_image, c.box_positive_fraction) == (128, 0.25)
    assert c.bbox_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert (c.box_score_thresh, c.box_detections_per_img, c.rpn_nms_thresh) == (0.05, 100, 0.7)
    assert (c.momentum, c.weight_decay) == (0.9, 5e-4)


def test_frozen_and_replace():
    c = preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 1.0
    d = c.replace(lr=0.5)
    assert d.lr == 0.5 and c.lr != 0.5
    with pytest.raises(TypeError):
        c.replace(not_a_field=1)


@pytest.mark.parametrize("name", ["tiny", "vgg16"])
def test_json_round_trip(name):
    c = preset(name, backbone_stages=((8, 1, True), (16, 2, False)))
    assert FasterRCNNConfig.from_json(c.to_json()) == c


def test_from_json_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown"):
        FasterRCNNConfig.from_json('{"lr": 0.1, "bogus": 1}')


def test_presets():
    vgg = preset("vgg16")
    assert vgg.backbone == "vgg16" and len(vgg.anchor_sizes) * len(vgg.aspect_ratios) == 9
    assert preset("tiny").backbone == "tiny"
    assert preset("tiny", iters=3).iters == 3
    with pytest.raises(ValueError, match="preset"):
        preset("resnet")


def test_the_old_class_name_is_the_same_class():
    assert FasterRCNNConfig is DetectorConfig and isinstance(preset("tiny"), FasterRCNNConfig)
