# %% [markdown]
# # Tutorial 5: the convolutional backbone, forward and backward, from im2col
#
# Faster R-CNN looks at an image once, through a stack of convolutions that
# turns `3 x H x W` pixels into a `C x H/16 x W/16` feature map (the paper's
# VGG16; the `tiny` preset that `minirccn train` uses stops at `H/4 x W/4`,
# section 4); the RPN and the RoI head both read that map. minirccn writes every layer of the stack by
# hand, with its backward pass, and no autograd. This tutorial goes from a
# six-loop convolution to im2col + one matrix product, derives the three
# gradients, checks them by finite differences, and then walks an image
# through the `tiny` and `vgg16` presets.

# %%
import time

import numpy as np
from PIL import Image

import _common as T
from minirccn.config import preset
from minirccn.detector.backbones import vgg as backbone
from minirccn.detector.backbones.levels import backbone_spec
from minirccn.nn import gradcheck, layers
from minirccn.data import load_dataset
from minirccn.data.transforms import normalize

rng = np.random.default_rng(5)

# %% [markdown]
# ## 1. Convolution, the maths and a naive loop
#
# For input `x (N, C, H, W)`, weights `w (F, C, kh, kw)`, bias `b (F,)`,
# stride `s` and zero padding `p` (`xpad` is `x` with `p` zeros around it):
#
#     out[n, f, oh, ow] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, oh*s + i, ow*s + j]
#     Ho = (H + 2p - kh) // s + 1          (Wo likewise)
#
# (Deep learning's "convolution" is a cross-correlation: the kernel is not
# flipped.)


# %%
def conv_loop(x, w, b, stride, pad):
    """Six nested loops: the definition, literally (tiny inputs only)."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for i_n in range(n):
        for i_f in range(f):
            for oh in range(ho):
                for ow in range(wo):
                    acc = b[i_f]
                    for i_c in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                acc += (
                                    w[i_f, i_c, i, j]
                                    * xpad[i_n, i_c, oh * stride + i, ow * stride + j]
                                )
                    out[i_n, i_f, oh, ow] = acc
    return out


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
for stride, pad in ((1, 1), (2, 0), (2, 1)):
    slow = conv_loop(x, w, b, stride, pad)
    fast, _ = layers.conv2d_forward(x, w, b, stride=stride, padding=pad, backend="numpy")
    numba_out, _ = layers.conv2d_forward(x, w, b, stride=stride, padding=pad, backend="numba")
    T.check(
        slow.shape == fast.shape
        and np.allclose(slow, fast, rtol=1e-12, atol=1e-12)
        and np.allclose(numba_out, fast, rtol=1e-12, atol=1e-12),
        f"stride {stride}, padding {pad}: loop == conv2d_forward (numpy, numba), out {fast.shape}",
    )

# %% [markdown]
# ## 2. im2col: a convolution is one matrix product
#
# The inner three loops are a dot product between the weights of filter `f`
# and one `C x kh x kw` patch of the input. **im2col** copies every patch into
# a column of a matrix `cols (C*kh*kw, Ho*Wo)`; then all filters at all
# positions are a single GEMM, which BLAS runs at close to the machine's peak:
#
#     out[n] (F, Ho*Wo) = W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo) + b
#
# The price is memory: each input value is copied up to `kh * kw` times.
# Here is the column matrix of a 3 x 3 image and a 2 x 2 kernel: column `k`
# is the `k`-th patch, read row by row.

# %%
tiny = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
cols = layers.im2col(tiny, (2, 2))
print("image:\n", tiny[0, 0])
print("cols (rows: kernel offsets (0,0) (0,1) (1,0) (1,1); columns: the 4 patches):\n", cols[0])
T.check(
    np.array_equal(cols[0][:, 0], [1, 2, 4, 5]), "the first column is the top-left patch 1 2 / 4 5"
)
cols_x = layers.im2col(x, (3, 3), 1, 1)  # (N, C*9, Ho*Wo)
gemm = (w.reshape(4, -1) @ cols_x + b[:, None]).reshape(2, 4, 7, 6)
T.check(np.allclose(gemm, conv_loop(x, w, b, 1, 1)), "W @ im2col(x) + b == the six loops")

# %% [markdown]
# ## 3. The backward pass
#
# Given `dout = dL/dout (N, F, Ho, Wo)`, the chain rule through
# `out[n] = W @ cols[n] + b` gives three gradients:
#
#     db      = sum over n, oh, ow of dout                        (F,)
#     dW      = sum_n dout[n] @ cols[n]^T                          (F, C*kh*kw)
#     dcols[n] = W^T @ dout[n]                                     (C*kh*kw, Ho*Wo)
#     dx      = col2im(dcols)                                      (N, C, H, W)
#
# `col2im` is the adjoint of `im2col`: every column entry is *added* back to
# the pixel it was copied from (a pixel read by 9 patches receives 9
# contributions). Adjoint means `<im2col(x), y> == <x, col2im(y)>` for all
# `x`, `y`: a one-line test that catches most indexing bugs.

# %%
unfolded = layers.im2col(x, (3, 3), 2, 1)  # stride 2, padding 1
y = rng.standard_normal(unfolded.shape)
lhs = (unfolded * y).sum()
rhs = (x * layers.col2im(y, x.shape, (3, 3), 2, 1)).sum()
T.check(np.isclose(lhs, rhs, rtol=1e-12), f"<im2col(x), y> == <x, col2im(y)>  ({lhs:.10f})")

# %% [markdown]
# Now the finite-difference check (`minirccn.nn.gradcheck.check_layer`): it
# turns a layer into the scalar `L = sum(out * R)` for a fixed random `R`,
# perturbs every input entry by `+-1e-6` in float64, and compares with the
# hand-written backward. Conv, ReLU, the two fused into one layer, and max pooling each get
# checked, on the NumPy reference and on the Numba kernels.

# %%
xs = rng.standard_normal((2, 3, 6, 5))
ws = rng.standard_normal((4, 3, 3, 3))
bs = rng.standard_normal(4)
for name in ("numpy", "numba"):
    errs = {
        "conv2d (stride 2, padding 1)": gradcheck.check_layer(
            lambda a, k, c, be=name: layers.conv2d_forward(
                a, k, c, stride=2, padding=1, backend=be
            ),
            layers.conv2d_backward,
            [xs, ws, bs],
        ),
        "relu": gradcheck.check_layer(
            lambda a, be=name: layers.relu_forward(a, backend=be), layers.relu_backward, [xs]
        ),
        # the conv and its ReLU as one layer (relu=True: the backbones without batch norm and
        # the heads use it; the backward reads the ReLU's mask off the kept output, out > 0)
        "conv2d + relu, fused": gradcheck.check_layer(
            lambda a, k, c, be=name: layers.conv2d_forward(
                a, k, c, stride=1, padding=1, relu=True, backend=be
            ),
            layers.conv2d_backward,
            [xs, ws, bs],
        ),
        "max_pool2d 2x2/2": gradcheck.check_layer(
            lambda a, be=name: layers.max_pool2d_forward(a, 2, 2, backend=be),
            layers.max_pool2d_backward,
            [xs],
        ),
    }
    for layer, err in errs.items():
        T.check(err < 1e-7, f"{name:5s} {layer}: relative error {err:.1e}")

# %% [markdown]
# ## 4. The backbone presets
#
# `minirccn.detector.backbones.vgg` stacks stages of `3x3 conv (padding 1) [+ batch norm] +
# ReLU`, each ending in a 2x2 max pool that halves the map. The convs keep the
# size, so the stride is `2 ** (number of pools)`:
#
# * `tiny` (the backbone module's own preset): 4 stages of one conv + BN,
#   16-32-64-128 channels, a pool after each: stride 16;
# * the `tiny` **training** preset of `minirccn.config` (what `minirccn train`
#   runs) does not use that spec: its `backbone_stages` keep the first two
#   pools only (stride 4; tutorial 8 tells why), printed below;
# * `vgg16`: the paper's 13 convs (64, 128, 256, 512, 512 channels in stages
#   of 2-2-3-3-3), pools after the first four stages only (Faster R-CNN reads
#   conv5_3), no BN: 224 x 224 x 3 -> 14 x 14 x 512.
#
# A 3x3 conv from `C` to `F` channels has `F * C * 9 + F` parameters (weights
# and biases); in a stack with batch norm each conv also has BN's `gamma` and
# `beta`, `2 F` more (the running mean and variance are statistics, not
# trained parameters, and are not counted). The printed table adds them: the
# `tiny` stacks' `conv1_1` is `16 * 3 * 9 + 16 + 2 * 16 = 480`, and each row
# is checked against the formula; `vgg16` has no BN. We run
# one image through each stack and read the shapes off the layer caches the
# forward returns (the backward's to-do list). Timing: the first call of a
# Numba kernel compiles it (seconds); we call the forward once to warm up and
# then time warm calls (the best of 3), and print both.


# %%
def describe(name, spec, size):
    spec = backbone.get_spec(spec)
    params = backbone.init_backbone(spec, np.random.default_rng(0))
    x_in = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    start = time.perf_counter()
    backbone.backbone_forward(params, x_in, spec)  # warm-up: compiles the kernels on first use
    first = time.perf_counter() - start
    seconds = float("inf")
    for _ in range(3):  # the best of 3 warm calls: the machine may be busy with other work
        start = time.perf_counter()
        features, cache = backbone.backbone_forward(params, x_in, spec)
        seconds = min(seconds, time.perf_counter() - start)
    print(f"\n{name}: input {x_in.shape}")
    print(f"  {'layer':26s} {'output':>20s} {'parameters':>11s}")
    for layer, kind, c in cache.steps:
        if kind == "bn":  # batch norm with the ReLU fused into it (the ReLU's mask)
            shape = c.mask.shape
            layer, kind = layer.removesuffix(".bn"), "relu"
        elif kind == "conv+relu":  # no batch norm: the ReLU fused into the conv (its output)
            shape = c.out.shape
            kind = "relu"
        elif kind == "pool":
            shape = c.argmax.shape
        else:
            continue
        count = (
            sum(
                int(np.prod(params[k].shape))
                for k in params
                if k.startswith(layer + ".") and ".running_" not in k
            )
            if kind == "relu"
            else 0
        )
        print(
            f"  {layer + (' + relu' if kind == 'relu' else ' pool'):26s} "
            f"{tuple(shape)!s:>20s} {count:>11,d}"
        )
        if kind == "relu":
            f_out, c_in = params[layer + ".w"].shape[:2]
            formulas.append(count == f_out * c_in * 9 + f_out + (2 * f_out if spec.batch_norm else 0))
    total = backbone.count_params(params)
    print(
        f"  features {tuple(features.shape)}, stride {backbone.stride(spec)}, "
        f"{total:,d} trainable parameters; forward: first call {first:.2f} s "
        f"(includes any compiling; Numba caches compiled kernels on disk), best warm call "
        f"{seconds:.3f} s"
    )
    return features, total


formulas = []  # one bool per conv row: its count == F*C*9 + F (+ 2F with batch norm)
f_tiny, n_tiny = describe("backbone preset 'tiny'", "tiny", 128)
T.check(f_tiny.shape == (1, 128, 8, 8), "tiny: 128 x 128 -> 128 x 8 x 8")
train_spec = backbone_spec(preset("tiny"))
f_train, n_train = describe("the tiny training preset's stack (minirccn train)", train_spec, 128)
T.check(
    backbone.stride(train_spec) == 4 and f_train.shape[2:] == (32, 32),
    f"minirccn train's backbone: stride {backbone.stride(train_spec)}, a 32 x 32 map, "
    f"{n_train:,d} parameters",
)
T.check(
    max(n_tiny, n_train) < 100_000,
    f"both tiny stacks have under 100 thousand parameters ({n_tiny:,d} and {n_train:,d})",
)
size = T.pick(224, 64)
f_vgg, n_vgg = describe("vgg16", "vgg16", size)
T.check(
    f_vgg.shape == (1, 512, size // 16, size // 16),
    f"vgg16: {size} x {size} -> 512 x {size // 16} x {size // 16}",
)
T.check(
    n_vgg == 14_714_688, "vgg16 has 14,714,688 conv parameters (torchvision's vgg16().features)"
)
T.check(
    all(formulas),
    f"all {len(formulas)} conv rows: F*C*9 + F, plus 2F (gamma, beta) in the batch-norm stacks",
)

# %% [markdown]
# The whole stack's backward walks the cached layers in reverse
# (`backbone.backbone_backward`). We check it on a small float64 two-stage
# stack with batch norm: every weight gets a directional finite-difference
# test (`gradcheck.directional_grad_check`: `(L(w + eps v) - L(w - eps v)) /
# 2 eps` against `<dw, v>` for random unit directions `v`).

# %%
small_spec = backbone.BackboneSpec(stages=(backbone.Stage(4), backbone.Stage(6)), batch_norm=True)
params = backbone.init_backbone(small_spec, np.random.default_rng(2), dtype=np.float64)
x_small = rng.standard_normal((2, 3, 8, 8))
feats, cache = backbone.backbone_forward(params, x_small, small_spec)
R = rng.standard_normal(feats.shape)
grads = backbone.backbone_backward(R, cache)


def loss():
    return float((backbone.backbone_forward(params, x_small, small_spec)[0] * R).sum())


for key in grads:
    if key.endswith(
        ".b"
    ):  # a conv bias right before batch norm: BN subtracts the mean, so dL/db = 0
        numeric = gradcheck.numerical_grad(loss, params[key])
        T.check(
            np.abs(grads[key]).max() < 1e-9 and np.abs(numeric).max() < 1e-6,
            f"backbone gradient of {key:24s} is 0 (analytic {np.abs(grads[key]).max():.0e}, "
            f"numeric {np.abs(numeric).max():.0e})",
        )
        continue
    err = gradcheck.directional_grad_check(
        loss, params[key], grads[key], np.random.default_rng(3), n_dirs=4
    )
    T.check(err < 1e-6, f"backbone gradient of {key:24s} relative error {err:.1e}")

# %% [markdown]
# ## 5. What the feature maps look like
#
# A `shapes` image through the `tiny` backbone with random (untrained)
# weights. We read the output of each stage by running the first `k` stages
# (the parameter names of a shorter spec are the same). Even random filters
# respond to edges and colours; training will make them respond to shapes.
# Each row of the picture: the input image, then the four most varied channels
# of stage `k`'s output, each on its own grey scale (black its minimum, white
# its maximum, both printed over it).

# %%
sample = load_dataset("shapes", split="train", seed=0)[3]
image = normalize(sample["image"])[None]  # (1, 3, 128, 128) float32
tiny_spec = backbone.get_spec("tiny")
tiny_params = backbone.init_backbone(tiny_spec, np.random.default_rng(0))
panels = []
for k in range(1, 5):
    spec_k = backbone.BackboneSpec(stages=tiny_spec.stages[:k], batch_norm=True)
    fmap, _ = backbone.backbone_forward(tiny_params, image, spec_k, train=True)
    up = 128 // fmap.shape[2]
    energy = fmap[0].reshape(fmap.shape[1], -1).std(axis=1)  # most varied channels first
    picks = np.argsort(-energy, kind="stable")[:4]
    panels.append(
        T.caption(Image.fromarray(sample["image"]), f"input; stage {k}'s\noutput {tuple(fmap.shape[1:])}:")
    )
    panels += [
        T.caption(
            T.grey(fmap[0, c], up),
            f"channel {c}\nblack {fmap[0, c].min():.1f}\nwhite {fmap[0, c].max():.1f}",
        )
        for c in picks
    ]
    T.check(fmap.shape[2] == 128 // 2**k, f"stage {k}: {128 // 2**k} x {128 // 2**k} map")
T.save_grid(panels, "05_feature_maps.png", cols=5, colours=128)

# %% [markdown]
# ## Summary
#
# * A convolution is im2col + one GEMM per image; its backward is two GEMMs
#   and col2im, the adjoint of im2col.
# * Every layer's backward is checked against float64 finite differences.
# * Parameter counts (printed above): the backbone preset `tiny` (stride 16)
#   and the training preset's stride-4 stack are both under 100 thousand
#   parameters and train on a CPU; `vgg16`: 13 convs, 14.7 M, 224 -> 14.
# * Time a Numba path only after a warm-up call: the first call compiles.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected.
#
# 1. How many bytes does im2col's column matrix take for VGG16's conv1_2 on a
#    224 x 224 image (64 input channels, 3x3, float32)? How many times the
#    input itself is that?
# 2. Replace each 2x2 max pool of the `tiny` training stack by a 3x3 conv of
#    stride 2 (padding 1, same channels in and out, with a bias). The shapes
#    stay the same on these even sizes; how many parameters does it add?
# 3. Section 4 found a zero gradient for every conv bias in the batch-norm
#    stack: batch norm subtracts the per-channel mean, so a constant shift
#    `b` cannot change its output (`(x + b) - mean(x + b) = x - mean(x)`).
#    How many parameters would removing the biases save in the `tiny`
#    training stack?


# %%
@T.stub
def im2col_bytes_conv1_2():
    """(column-matrix bytes, input bytes) for conv1_2 of VGG16 on one 224 x 224 image, float32."""
    raise NotImplementedError


@T.stub
def params_added_by_strided_convs(spec):
    """Parameters added when each pooling stage's 2x2 pool becomes a 3x3 stride-2 conv C -> C."""
    raise NotImplementedError


@T.stub
def bias_params(spec):
    """Number of conv bias parameters in the stack ``spec`` (a BackboneSpec)."""
    raise NotImplementedError


# %%
def _check_im2col():
    cols, inp = im2col_bytes_conv1_2()
    print(f"  im2col {cols / 2**20:.1f} MiB, input {inp / 2**20:.1f} MiB, ratio {cols / inp:.0f}")
    return cols == 64 * 9 * 224 * 224 * 4 and cols == 9 * inp


T.exercise("5.1", _check_im2col, "64*9 x 224*224 float32 = 115,605,504 bytes (110 MiB): 9x the input")


def _check_strided():
    added = params_added_by_strided_convs(train_spec)
    expected = sum(st.channels**2 * 9 + st.channels for st in train_spec.stages if st.pool)
    print(f"  strided convs add {added:,d} parameters to the {n_train:,d} of the stack")
    return added == expected


T.exercise(
    "5.2",
    _check_strided,
    " + ".join(f"{st.channels}*{st.channels}*9+{st.channels}" for st in train_spec.stages if st.pool)
    + f" = {sum(st.channels**2 * 9 + st.channels for st in train_spec.stages if st.pool):,d} more",
)
T.exercise(
    "5.3",
    lambda: bias_params(train_spec) == sum(st.channels * st.convs for st in train_spec.stages),
    "one bias per output channel of every conv: "
    + " + ".join(str(st.channels * st.convs) for st in train_spec.stages)
    + f" = {sum(st.channels * st.convs for st in train_spec.stages)}",
)
