"""Worked solutions of tutorial 5's exercises (used under MINIRCCN_TUTORIAL_SOLUTIONS=1)."""

import numpy as np

from minirccn.detector.backbones import vgg as backbone


def im2col_bytes_conv1_2():
    c, h, w = 64, 224, 224
    return c * 9 * h * w * 4, c * h * w * 4  # (C*kh*kw, H*W) columns; (C, H, W) input


def params_added_by_strided_convs(spec):
    return sum(st.channels * st.channels * 9 + st.channels for st in spec.stages if st.pool)


def bias_params(spec):
    params = backbone.init_backbone(spec, np.random.default_rng(0))
    return sum(v.size for k, v in params.items() if k.endswith(".b"))
