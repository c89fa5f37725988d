"""Worked solutions of tutorial 17's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np

from minirccn.data import transforms


def backbone_numbers(params):
    return sum(
        int(v.size) for k, v in params.items() if k.startswith("backbone.") and ".running_" not in k
    )


def two_logits(weight):
    two = np.zeros((2 * weight.shape[0], *weight.shape[1:]), weight.dtype)
    two[1::2] = weight  # background logit 0, object logit l: softmax(0, l)[1] = sigmoid(l)
    return two


def torchvision_sizes():
    return [
        transforms.torchvision_size(427, 640, 320, 320),
        transforms.torchvision_size(100, 37, 320, 320),
    ]
