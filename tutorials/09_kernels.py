# %% [markdown]
# # Tutorial 9: kernels, from the NumPy reference to Numba and CUDA
#
# Every op in minirccn has a plain NumPy reference: the specification. The hot
# ones also have fast kernels, in `minirccn.kernels` (the `kernels/` folder):
#
# | backend | arrays | kernels |
# | --- | --- | --- |
# | `numpy` | NumPy | the reference itself |
# | `numba` | NumPy | `@numba.njit(parallel=True, cache=True)` CPU code |
# | `cuda` | CuPy (GPU) | `@numba.cuda.jit` kernels; CUDA C `RawKernel`s where C is clearer |
#
# One table, `minirccn.core.dispatch.TABLE`, says which function runs each op on each
# backend; every kernel module follows one convention (`kernels/__init__.py`):
# `<op>_numba`, `<op>_cuda` and, for a CUDA C twin, `<op>_cudac`, each taking
# the reference's arguments and returning newly allocated outputs.
#
# This tutorial runs the same ops on every backend available here, checks that
# they agree (a kernel is only as good as its comparison with the reference),
# times them honestly, and looks at the one trap that parallel code sets for
# gradients: two threads adding into the same cell.
#
# Without an NVIDIA GPU the `cuda` backend runs in **Numba's CUDA simulator**:
# the same kernel code, executed thread by thread in Python on NumPy arrays.
# It proves the kernels correct on any machine, but it is very slow, so it
# gets tiny inputs and is never timed. It must be switched on before Numba is
# imported: that is the first cell.

# %%
import _common as T

GPU = T.use_cuda_simulator_without_gpu()  # before anything imports numba

import inspect  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from minirccn import ops, viz  # noqa: E402
from minirccn.app import bench  # noqa: E402
from minirccn.core import backend  # noqa: E402
from minirccn.core import dispatch  # noqa: E402
from minirccn.kernels import boxes as iou_kernels  # noqa: E402
from minirccn.kernels import nms as nms_kernels  # noqa: E402
from minirccn.kernels import roi_pool as roi_kernels  # noqa: E402
from minirccn.ops.roi_pool import roi_bins  # noqa: E402

print("machine:", bench.machine_description())
print("\nwhich function runs each op with kernels, per backend (minirccn.core.dispatch.TABLE):")
for op, row in dispatch.TABLE.items():
    if len(set(row.values())) > 1:  # ops whose backends differ
        print(f"  {op:20s} " + "  ".join(f"{b}={t.split(':')[1]}" for b, t in row.items()))
print(
    "cuda backend:",
    "a real GPU (CuPy arrays)" if GPU else "Numba's CUDA simulator (no GPU here): correctness only",
)
rng = np.random.default_rng(9)


def source(kernel, lines=40):
    """The first ``lines`` lines of a Numba kernel's Python source (CPU or CUDA)."""
    fn = getattr(kernel, "py_func", kernel)
    text = inspect.getsource(fn).splitlines()
    return "\n".join(text[:lines])


# %% [markdown]
# ## 1. box_iou three ways
#
# * **NumPy** (`minirccn.ops.boxes.box_iou_reference`) broadcasts `(N, 1, 2)`
#   corners against `(1, M, 2)`: short, but it allocates several `N x M x 2`
#   temporaries and walks memory many times.
# * **Numba CPU** (`kernels/boxes.py`): `prange` over the rows of `boxes1`
#   (each thread writes its own rows of `out`, so no two threads touch the same
#   memory), an inner loop over `boxes2` stored as separate coordinate columns
#   so LLVM turns it into SIMD instructions.
# * **Numba CUDA**: one GPU thread per pair `(i, j)`, `x` along `j` so that
#   neighbouring threads write neighbouring addresses.
#
# All three do the same operations in the same order and dtype, so float32
# results agree **bit for bit**. (On a GPU that needs care: the compiler would
# fuse `a + b - w * h` into one fused multiply-add, rounded once instead of
# twice; the kernel multiplies with `fmul_rn`, which is never fused.)

# %%
print(source(iou_kernels._box_iou_rows))


# %%
def awkward_boxes(n, dtype):
    """Random boxes plus duplicates, zero-area boxes and boxes off the image."""
    xy = rng.uniform(-50, 300, size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 120, size=(n, 2))], axis=1)
    boxes[: n // 4, 2:] = boxes[: n // 4, :2]  # zero area
    boxes[n // 4 : n // 2] = boxes[0]  # duplicates
    return boxes.astype(dtype)


for dtype in (np.float32, np.float64):
    a, b = awkward_boxes(T.pick(24, 12), dtype), awkward_boxes(T.pick(20, 10), dtype)
    ref = ops.box_iou(a, b, backend="numpy")
    for name in ("numba", "cuda"):
        got = backend.to_numpy(ops.box_iou(a, b, backend=name))
        T.check(
            got.dtype == dtype and np.array_equal(got, ref),
            f"box_iou {np.dtype(dtype).name}: {name} == numpy, bit for bit",
        )
T.check(
    ops.box_iou(np.zeros((0, 4)), np.zeros((5, 4)), backend="numba").shape == (0, 5),
    "empty input: (0, 5) result",
)

# %% [markdown]
# ## 2. NMS: a sequential walk, made fast two ways
#
# Greedy NMS (tutorial 3) is sequential. The CPU kernel keeps the walk and
# makes each step a branch-free, vectorised pass over the later boxes; for
# `batched_nms` the categories are independent, so they run in parallel
# (`prange` over categories: again, disjoint memory). The GPU version computes
# all pairwise suppressions in parallel as 64-bit masks, then walks the mask on
# the host. The CUDA C twin of the mask kernel lives in `kernels/cuda/nms.cu`.

# %%
boxes, scores = bench.clustered_boxes(rng, T.pick(300, 120), clusters=12)
scores[:6] = scores[6:12]  # some tied scores
idxs = rng.integers(0, 3, len(boxes))
ref = ops.nms(boxes, scores, 0.5, backend="numpy")
ref_b = ops.batched_nms(boxes, scores, idxs, 0.5, backend="numpy")
for name in ("numba", "cuda"):
    T.check(
        np.array_equal(backend.to_numpy(ops.nms(boxes, scores, 0.5, backend=name)), ref),
        f"nms: {name} == numpy",
    )
    T.check(
        np.array_equal(
            backend.to_numpy(ops.batched_nms(boxes, scores, idxs, 0.5, backend=name)), ref_b
        ),
        f"batched_nms: {name} == numpy",
    )
if GPU:
    import cupy

    order = np.argsort(-scores, kind="stable")
    kept = nms_kernels.nms_sorted_cudac(cupy.asarray(boxes[order]), None, 0.5)
    T.check(
        np.array_equal(order[kept.get()], ref),
        "nms: CUDA C RawKernel (kernels/cuda/nms.cu) == numpy",
    )
else:
    print(
        "no GPU: the CUDA C RawKernel of kernels/cuda/nms.cu is not run (it needs CuPy + a device)"
    )

# %% [markdown]
# ## 3. RoI pooling: forward and the backward scatter
#
# The bins of every RoI are computed once, vectorised, by
# `minirccn.ops.roi_pool.roi_bins` (the rounding rule of tutorial 4); every
# kernel receives them and only does the two loops that are slow in Python:
# the max over each bin and the backward scatter. Forward: the CPU kernel runs
# in parallel over `(RoI, channel)` pairs, the CUDA kernel uses one thread per
# output value. Both only *read* shared memory, so there is nothing to race on.

# %%
features = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
features[0, 0, :3, :3] = 1.0  # ties
rois = np.concatenate([rng.integers(0, 2, (6, 1)), rng.uniform(-40, 180, (6, 2))], axis=1)
rois = np.concatenate([rois, rois[:, 1:3] + rng.uniform(0, 100, (6, 2))], axis=1).astype(np.float32)
rois[0] = [0, -300, -300, -200, -200]  # off the map: empty bins
out_ref, arg_ref = ops.roi_pool(features, rois, 2, 1 / 16, backend="numpy")
dout = rng.standard_normal(out_ref.shape).astype(np.float32)
grad_ref = ops.roi_pool_backward(dout, rois, arg_ref, features.shape, backend="numpy")
for name in ("numba", "cuda"):
    out, arg = (backend.to_numpy(v) for v in ops.roi_pool(features, rois, 2, 1 / 16, backend=name))
    T.check(
        np.array_equal(out, out_ref) and np.array_equal(arg, arg_ref),
        f"roi_pool forward: {name} == numpy, exactly",
    )
    grad = backend.to_numpy(
        ops.roi_pool_backward(dout, rois, arg_ref, features.shape, backend=name)
    )
    exact = np.array_equal(grad, grad_ref)
    T.check(
        np.allclose(grad, grad_ref, rtol=1e-6, atol=1e-6),
        f"roi_pool backward: {name} == numpy "
        + ("(bit for bit)" if exact else "(to float32 rounding: atomics add in another order)"),
    )
if GPU:
    import cupy

    bins = roi_bins(cupy.asarray(rois), (2, 2), 1 / 16, 10, 10, cupy)
    out, arg = roi_kernels.roi_pool_cudac(cupy.asarray(features), *bins)
    T.check(
        np.array_equal(out.get(), out_ref) and np.array_equal(arg.get(), arg_ref),
        "roi_pool: CUDA C RawKernel == numpy",
    )
else:
    print("no GPU: the CUDA C RawKernels of kernels/cuda/roi_pool.cu are not run")

# %% [markdown]
# ## 4. The scatter trap: `out[idx] += v` inside `prange`
#
# The backward of RoI pooling (and of max pooling, and `col2im`) *adds* into
# the input gradient at positions chosen by data (the argmax). Two bins may
# pick the same cell. If two threads run `g[k] += v` on the same `k` at the
# same time, each reads the old value, adds its own `v` and writes back: one
# update is lost. Numba does not warn about it: `prange` trusts you.
#
# A toy scatter shows it: ones added into a single cell, by two threads (or
# more) at once. `+=` on an array element compiles to three steps: load the
# old value, add, store. The race needs the two threads to be *running at the
# same moment* inside that window of a few nanoseconds. On an idle
# multi-core machine that happens all the time; on a busy one the operating
# system often runs the two halves of the loop one after the other (one
# thread finishes its half before the other is scheduled), and then nothing
# is lost. So one run proves nothing: we repeat the scatter until a run loses
# updates (or a time budget runs out) and report every run. A run can only
# *lose* updates, never invent them: the total is at most the truth. (These
# demo kernels are compiled without `cache=True`, so nothing is written next
# to the tutorial; minirccn's own kernels are cached.)


# %%
@numba.njit(parallel=True)
def scatter_racy(idx, values, out):
    for k in numba.prange(idx.shape[0]):
        out[idx[k]] += values[k]  # RACE: two threads may update the same cell at once


@numba.njit(parallel=True)
def scatter_disjoint(idx, values, out):
    for cell in numba.prange(out.shape[0]):  # each thread owns whole cells: nobody else writes them
        acc = 0
        for k in range(idx.shape[0]):
            if idx[k] == cell:
                acc += values[k]
        out[cell] = acc


n_race = 200_000
one_cell = np.zeros(n_race, dtype=np.int64)  # every update goes to cell 0
ones = np.ones(n_race, dtype=np.int64)
scatter_racy(one_cell, ones, np.zeros(1, dtype=np.int64))  # compile outside the loop
budget, lost_per_run, t_race = T.pick(20.0, 3.0), [], time.perf_counter()
while time.perf_counter() - t_race < budget:
    racy = np.zeros(1, dtype=np.int64)
    scatter_racy(one_cell, ones, racy)
    lost_per_run.append(n_race - int(racy[0]))
    if lost_per_run[-1] > 0 and len(lost_per_run) >= 5:
        break  # it lost updates: the point is made
lost_runs = sum(v > 0 for v in lost_per_run)
print(f"threads: {numba.get_num_threads()}; {n_race:,d} ones into one cell, truth {n_race:,d}")
print(
    f"racy scatter: {len(lost_per_run)} runs, {lost_runs} of them lost updates, at most "
    f"{max(lost_per_run):,d} ({max(lost_per_run) / n_race:.0%}); lost per run: "
    f"{lost_per_run[:12]}{' ...' if len(lost_per_run) > 12 else ''}"
)
T.check(min(lost_per_run) >= 0, "no run ever counted more than the truth: updates are only lost")
if not lost_runs:
    print(
        f"(no run lost updates within {budget:.0f} s: the threads never ran at the same moment; "
        "on a machine busier than its core count this can last a while, and with one thread "
        "it cannot happen at all. Raise `budget` and run again.)"
    )

n = T.pick(2_000_000, 400_000)
idx = rng.integers(0, 4, n)
values = np.ones(n, dtype=np.int64)
truth = np.bincount(idx, minlength=4)
safe = np.zeros(4, dtype=np.int64)
start = time.perf_counter()
scatter_disjoint(idx, values, safe)  # the first call compiles the kernel (no cache)
first_call = time.perf_counter() - start
print(f"disjoint scatter of {n:,d} ones into 4 cells: {safe.tolist()}, truth {truth.tolist()}")
T.check(np.array_equal(safe, truth), "parallel over a disjoint axis: exact, every run")

# %% [markdown]
# There are three ways out, and minirccn uses each where it fits:
#
# 1. **Parallelise over a disjoint axis.** The CPU RoI-pool backward runs one
#    thread per `(image, channel)` map; each thread walks every RoI of its
#    image and adds only into its own map. No race, no atomics, and the sums
#    happen in the reference's order: the result is bit-identical to NumPy.
# 2. **Gather instead of scatter.** The GPU max-pool backward and `col2im`
#    use one thread per *input* pixel, which sums the contributions that land
#    on it. Each output is written by exactly one thread.
# 3. **Atomics.** The GPU RoI-pool backward uses `cuda.atomic.add` (CUDA C:
#    `atomicAdd`): the hardware serialises updates of the same address. It is
#    correct, but the order of the additions depends on thread timing, and
#    float addition is not associative, so the last bits may change from run
#    to run:

# %%
a, b, c = np.float32(1e8), np.float32(-1e8), np.float32(1.0)
print("(a + b) + c =", (a + b) + c, "   a + (b + c) =", a + (b + c))
T.check((a + b) + c != a + (b + c), "float32 addition is not associative")

print("\nThe CPU backward (disjoint axis):\n" + source(roi_kernels._backward_numba, 18))
print("\nThe CUDA backward (atomics):\n" + source(roi_kernels._backward_cuda, 15))

# %% [markdown]
# ## 5. Timing, honestly
#
# `minirccn.app.bench.time_call` (the engine of `minirccn bench`) calls the
# function once to warm up (Numba compiles, or loads its cache, on the first
# call: that is not run time), then repeats it and reports the **median**.
# Inputs are built once, outside the timed call; GPU calls synchronise before
# the clock stops. The `cuda` column only appears on a real GPU: simulator
# timings measure Python, not the kernel. `minirccn bench` prints the full
# table, with torchvision's ops as a baseline when PyTorch is installed.

# %%
steady = bench.time_call(lambda: scatter_disjoint(idx, values, safe))
print(
    f"scatter_disjoint: first call {first_call:.2f} s (compiling), "
    f"then median {steady['median'] * 1e3:.2f} ms "
    f"over {steady['repeats']} calls"
)
T.check(first_call > steady["median"], "the first call (compile) is slower than the steady state")

min_time = T.pick(0.3, 0.05)
n_iou, n_nms, n_rois, channels, hw = T.pick((2000, 6000, 256, 256, 64), (400, 1000, 32, 32, 32))
timed_backends = ["numpy", "numba"] + (["cuda"] if GPU else [])
cases = {}
boxes1, boxes2 = bench.random_boxes(rng, n_iou), bench.random_boxes(rng, n_iou)
cluster_boxes, cluster_scores = bench.clustered_boxes(rng, n_nms, clusters=max(n_nms // 100, 10))


def iou_case(be):
    """A no-argument call of box_iou on ``be``, inputs moved to the backend beforehand."""
    a, b = backend.to_backend(boxes1, be), backend.to_backend(boxes2, be)
    return lambda: ops.box_iou(a, b, backend=be)


def nms_case(be):
    b, s = backend.to_backend(cluster_boxes, be), backend.to_backend(cluster_scores, be)
    return lambda: ops.nms(b, s, 0.7, backend=be)


cases[f"box_iou {n_iou}x{n_iou}"] = iou_case
cases[f"nms {n_nms} clustered @0.7"] = nms_case
feats = rng.standard_normal((1, channels, hw, hw)).astype(np.float32)
props = bench.proposal_rois(rng, n_rois, hw * 16.0)
grad_out = rng.standard_normal((n_rois, channels, 7, 7)).astype(np.float32)


def roi_case(be):
    f, r, g = (backend.to_backend(v, be) for v in (feats, props, grad_out))

    def run():
        _, argmax = ops.roi_pool(f, r, 7, 1 / 16, backend=be)
        return ops.roi_pool_backward(g, r, argmax, f.shape, backend=be)

    return run


cases[f"roi_pool fwd+bwd {n_rois} RoIs 1x{channels}x{hw}x{hw}"] = roi_case

timings = {}
for case, make in cases.items():
    timings[case] = {}
    for be in timed_backends:
        t = bench.time_call(make(be), sync=be, min_time=min_time)
        timings[case][be] = t["median"] * 1e3
    line = ", ".join(f"{be} {ms:.3g} ms" for be, ms in timings[case].items())
    print(f"{case}: {line}  (numba {timings[case]['numpy'] / timings[case]['numba']:.1f}x numpy)")
T.check(
    all(v > 0 for t in timings.values() for v in t.values()), "every timing is a positive median"
)
viz.plot_bars(
    timings,
    T.out_dir() / "09_kernel_timings.png",
    title=f"median time per call ({'with GPU' if GPU else 'CPU only'}; "
    f"{numba.get_num_threads()} Numba threads)",
    ylabel="milliseconds",
    logy=True,
    size=(760, 440),
)
print(f"wrote {T.out_dir() / '09_kernel_timings.png'}")

# %% [markdown]
# ## 6. A size sweep, and the arithmetic that predicts it
#
# One size says little. We time `box_iou` (N x N) and `nms` (N clustered
# boxes) over a range of N, and predict the speed-ups from what each version
# must *move* or *do*:
#
# * `box_iou` reference: every line of `box_iou_reference` is a NumPy call
#   that writes a whole `(N, N)` or `(N, N, 2)` temporary and reads its
#   inputs back. The table below counts, per box pair, the float32-sized
#   values each line reads and writes (bool masks count 1/4). Past the
#   caches, that traffic at the machine's memory bandwidth (measured: reads
#   at the rate of a large copy, writes at the rate of filling a *fresh*
#   array, since every temporary is new memory) predicts the reference's time. The Numba kernel writes each
#   IoU once and keeps everything else in registers: 1 value per pair. The
#   predicted speed-up is the ratio of the two, capped by how fast the kernel
#   can compute (measured: time per pair at the largest size).
# * `nms`: the reference walks the kept boxes in Python and, for each, runs
#   `box_iou_reference` on one row (about 20 NumPy calls of a few
#   microseconds each, however short the row); the kernel computes the same
#   rows' IoUs with no call overhead. Prediction: reference `K x (time of
#   one row, measured)`, kernel `(number of IoUs) x (time per pair from
#   box_iou)`, with `K` the kept boxes and the IoUs counted from the kept
#   indices (each kept box against every later one: an upper bound, the
#   kernel skips boxes already suppressed).

# %%
# (line of box_iou_reference, float32 values read, values written) per box pair
traffic = [
    ("left_top = maximum(b1[:, None, :2], b2[None, :, :2])", 0, 2),
    ("right_bottom = minimum(...)", 0, 2),
    ("right_bottom - left_top", 4, 2),
    ("wh = maximum(..., 0)", 2, 2),
    ("inter = wh[..., 0] * wh[..., 1]", 2, 1),
    ("area1[:, None] + area2[None, :]", 0, 1),
    ("union = ... - inter", 2, 1),
    ("empty = union == 0 (bool)", 1, 0.25),
    ("where(empty, 1, union)", 1.25, 1),
    ("inter / ...", 2, 1),
    ("where(empty, 0, ...)", 1.25, 1),
]
ref_values = sum(r + w for _, r, w in traffic)
print(f"{'line of box_iou_reference':55s} {'read':>5s} {'write':>6s}")
for line, r, w in traffic:
    print(f"{line:55s} {r:5.2f} {w:6.2f}")
print(f"{'total per pair (float32 values)':55s} {ref_values:12.2f}   vs the kernel: 1 (its output)")

# full mode: 128 MB, far past the caches; fast mode: 16 MB, which a large L3 cache may partly
# hold, so fast mode's "memory" bandwidth can be a cache rate (the printed size says which)
big = np.ones(T.pick(32_000_000, 4_000_000), dtype=np.float32)
dst = np.empty_like(big)
copy = bench.time_call(lambda: np.copyto(dst, big), min_time=min_time)
bandwidth = 2 * big.nbytes / copy["median"]  # a copy reads and writes every byte
fresh = bench.time_call(lambda: np.ones(big.size, dtype=np.float32), min_time=min_time)
fresh_bandwidth = big.nbytes / fresh["median"]  # writing into newly allocated memory
print(f"memory bandwidth (NumPy copy of {big.nbytes / 1e6:.0f} MB): {bandwidth / 1e9:.1f} GB/s; "
      f"writing a fresh array: {fresh_bandwidth / 1e9:.1f} GB/s")
print("(a large fresh array comes from the operating system page by page: the first write to "
      "each page is a page fault, so the reference's temporaries are written at the second rate)")
del big, dst

sizes = T.pick([250, 500, 1000, 2000, 4000], [100, 200, 400])
sweep = {"box_iou numpy": [], "box_iou numba": [], "nms numpy": [], "nms numba": []}
for n_sw in sizes:
    b1, b2 = bench.random_boxes(rng, n_sw), bench.random_boxes(rng, n_sw)
    for be in ("numpy", "numba"):
        t = bench.time_call(lambda: ops.box_iou(b1, b2, backend=be), min_time=min_time)
        sweep[f"box_iou {be}"].append(t["median"])
# the kernel's compute time per pair: its best rate over the sweep (small N adds fixed costs,
# and a busy machine adds noise, both only upwards)
t_pair = min(t / n_sw**2 for n_sw, t in zip(sizes, sweep["box_iou numba"]))
print(f"\nbox_iou numba: {t_pair * 1e9:.2f} ns per pair at best over the sweep (compute bound)")
print(f"{'N':>6s} {'numpy ms':>9s} {'predicted':>10s} {'numba ms':>9s} {'predicted':>10s} "
      f"{'speed-up':>9s} {'predicted':>10s}")
ref_ratio = []  # measured / predicted time of the reference, per N
speedup_above = []  # N at which the measured speed-up is above the predicted one
for k, n_sw in enumerate(sizes):
    reads, writes = sum(r for _, r, _ in traffic), sum(w for _, _, w in traffic)
    pred_ref = n_sw**2 * 4 * (reads / bandwidth + writes / fresh_bandwidth)
    pred_kern = max(n_sw**2 * 4 / bandwidth, n_sw**2 * t_pair)
    ref_t, kern_t = sweep["box_iou numpy"][k], sweep["box_iou numba"][k]
    ref_ratio.append(ref_t / pred_ref)
    if ref_t / kern_t > pred_ref / pred_kern:
        speedup_above.append(n_sw)
    print(f"{n_sw:6d} {ref_t * 1e3:9.3f} {pred_ref * 1e3:10.3f} {kern_t * 1e3:9.3f} "
          f"{pred_kern * 1e3:10.3f} {ref_t / kern_t:8.1f}x {pred_ref / pred_kern:9.1f}x")
print("reference: measured / predicted time per N: " + ", ".join(
    f"{n_sw}: {r:.1f}x" for n_sw, r in zip(sizes, ref_ratio)))
print(f"measured speed-up above the predicted one at N = {speedup_above}, "
      f"at or below it at N = {[n_sw for n_sw in sizes if n_sw not in speedup_above]}")

# one row of the reference's walk (a kept box against 100 later ones), timed: the unit cost
row_boxes = bench.random_boxes(rng, 101)
row_suppressed = np.zeros(101, dtype=bool)


def one_row():
    iou_row = ops.box_iou(row_boxes[:1], row_boxes[1:], backend="numpy")[0]
    row_suppressed[1:] |= iou_row.astype(np.float64) > 0.7


t_row = bench.time_call(one_row, min_time=min_time)["median"]
print(f"\none row of the reference's walk (about 20 small NumPy calls): {t_row * 1e6:.1f} us")
print(f"{'N':>6s} {'kept':>5s} {'IoUs<=':>9s} {'numpy ms':>9s} {'predicted':>10s} "
      f"{'numba ms':>9s} {'predicted':>10s}")
nms_kernel_ratio = []  # measured / predicted time of the nms kernel, per N
for n_sw in sizes:
    cb, cs = bench.clustered_boxes(rng, n_sw, clusters=max(n_sw // 100, 10))
    for be in ("numpy", "numba"):
        t = bench.time_call(lambda: ops.nms(cb, cs, 0.7, backend=be), min_time=min_time)
        sweep[f"nms {be}"].append(t["median"])
    kept_idx = ops.nms(cb, cs, 0.7, backend="numpy")
    order = np.argsort(-cs, kind="stable")
    rank = np.empty(n_sw, dtype=np.int64)
    rank[order] = np.arange(n_sw)
    ious = int(sum(n_sw - 1 - rank[i] for i in kept_idx))  # each kept box vs every later box
    print(f"{n_sw:6d} {len(kept_idx):5d} {ious:9d} {sweep['nms numpy'][-1] * 1e3:9.3f} "
          f"{len(kept_idx) * t_row * 1e3:10.3f} {sweep['nms numba'][-1] * 1e3:9.3f} "
          f"{ious * t_pair * 1e3:10.3f}")
    nms_kernel_ratio.append(sweep["nms numba"][-1] / (ious * t_pair))
print("nms kernel: measured / predicted time per N: " + ", ".join(
    f"{n_sw}: {r:.0f}x" for n_sw, r in zip(sizes, nms_kernel_ratio))
    + " (the prediction counts IoUs only, not the call's fixed cost)")
T.check(all(v > 0 for vals in sweep.values() for v in vals), "every sweep timing is positive")
viz.plot_sweep(
    sizes,
    {k: [v * 1e3 for v in vals] for k, vals in sweep.items()},
    T.out_dir() / "09_size_sweep.png",
    title="median time per call against N (box_iou: N x N; nms: N boxes)",
    xlabel="N",
    ylabel="milliseconds",
)
print(f"wrote {T.out_dir() / '09_size_sweep.png'}")

# %% [markdown]
# Reading the sweep: the arithmetic is a *model*, and the printed
# measured/predicted ratios show how far it is off on this machine. For the
# reference it errs low: the reference takes longer than predicted (the line
# "reference: measured / predicted" above prints the factor per N, which
# depends on the machine and on its load). The model counts only the memory
# traffic of the reference's temporaries; it leaves out what makes the reference slower still: a dozen
# NumPy calls, each allocating an `N x M` temporary (page faults on the first
# touch of every page, the allocator), broadcasting's strided reads, and the
# cache misses of arrays larger than the caches. For the kernel it assumes its
# best time per pair at every N, so where the kernel pays a fixed cost per call
# (small N) or its threads wait for each other on a busy machine, the measured
# speed-up falls below the predicted one; the printed line names the N on each
# side. So read the model for what it gets right: which resource binds (bytes
# per pair for the reference, compute per pair for the kernel) and that the
# gap grows with N; not for the milliseconds. For `nms` the reference pays per
# kept box, not per byte: its predicted time follows `K`, from one 100-box
# row, so it errs low once the rows are longer (large N). The kernel's time is
# several times its prediction (printed), which counts IoUs only: a fixed cost
# per call dominates at small N, and the ratio shrinks as N grows. On a busy
# shared machine all the measured numbers are noisier still.

# %% [markdown]
# ## 7. The convolution: what im2col moves, and how far from the CPU's peak
#
# The convolution is most of a training step, and it is a different kind of
# kernel: its work is three matrix products (forward, `dW`, `dX`) of
# `2 N F C kh kw Ho Wo` floating-point operations each, which NumPy's BLAS
# already does near the CPU's peak. What the reference adds is memory
# traffic: `im2col` writes the *column matrix* (`kh kw` = 9 values per input
# value), the forward GEMM reads it, the backward keeps it and reads it again
# for `dW`, then writes `dcols` (as large) and `col2im` reads it back: five
# passes over 9x the input. The numba kernel (`kernels/conv.py`) cuts the
# output rows into blocks whose columns fit a reused 1 MiB buffer, multiplies
# each block while it is in the cache, and unfolds *again* in the backward
# instead of keeping the columns. What it moves through memory is the input,
# its padded copy, the output, `dout` and `dX`.
#
# The model, as in section 6: time = max(bytes / bandwidth, flops / peak),
# with the peak measured as a large single-thread `sgemm` (the roofline of
# this CPU; `docs/conv.md` has both thread counts and a longer sweep).

# %%
from minirccn.kernels import _launch  # noqa: E402
from minirccn.nn import conv as nn_conv  # noqa: E402


def conv_traffic(n, c, hw, f, k=3):
    """(reference bytes, blocked bytes, flops) of a k x k conv fwd+bwd, float32, padding k // 2."""
    cols = n * c * k * k * hw * hw * 4
    tensors = n * c * hw * hw * 4 * 3 + n * f * hw * hw * 4 * 2  # x, padded x, dx; out, dout
    return tensors + 5 * cols, tensors, 3 * 2 * n * f * c * k * k * hw * hw


blas = _launch._openblas_threads()  # (get, set) of NumPy's OpenBLAS thread count, or None
threads_before = blas[0]() if blas else None
if blas:
    blas[1](1)  # one thread: the peak and the kernels below on the same single core
m = T.pick(1024, 384)
a_m = rng.random((m, m), dtype=np.float32)
b_m = rng.random((m, m), dtype=np.float32)
peak = 2 * m**3 / bench.time_call(lambda: a_m @ b_m, min_time=min_time)["median"]
print(f"single-thread sgemm {m}^3: {peak / 1e9:.0f} GFLOP/s (the roofline's flat part)")

conv_sizes = T.pick([(1, 16, 64, 32), (1, 64, 32, 64), (2, 64, 64, 128)], [(1, 16, 32, 16)])
print(f"{'conv 3x3 (N, C, HW, F)':24s} {'ref MB':>7s} {'blk MB':>7s} {'GFLOP':>6s} "
      f"{'numpy ms':>9s} {'pred':>6s} {'numba ms':>9s} {'pred':>6s} {'numba % of peak':>16s}")
conv_rows = []
for n_c, c_c, hw_c, f_c in conv_sizes:
    x_c = rng.standard_normal((n_c, c_c, hw_c, hw_c)).astype(np.float32)
    w_c = (rng.standard_normal((f_c, c_c, 3, 3)) * 0.05).astype(np.float32)
    b_c = np.zeros(f_c, np.float32)
    d_c = rng.standard_normal((n_c, f_c, hw_c, hw_c)).astype(np.float32)

    def fwd_bwd(be):
        out, cache = nn_conv.conv2d_forward(x_c, w_c, b_c, 1, 1, backend=be)
        return (out,) + tuple(nn_conv.conv2d_backward(d_c, cache))

    got = {be: fwd_bwd(be) for be in ("numpy", "numba")}
    for r_arr, k_arr in zip(got["numpy"], got["numba"]):  # other block sums: rounding only
        scale = float(np.abs(r_arr).max()) or 1.0
        T.check(np.abs(k_arr - r_arr).max() <= 1e-4 * scale, "numba conv = reference (rounding)")
    ms = {be: bench.time_call(lambda: fwd_bwd(be), min_time=min_time)["median"] for be in got}
    ref_b, blk_b, flops = conv_traffic(n_c, c_c, hw_c, f_c)
    pred_ref = max(ref_b / fresh_bandwidth, flops / peak)
    pred_blk = max(blk_b / bandwidth, flops / peak)
    conv_rows.append((ms["numpy"] / ms["numba"], pred_ref / pred_blk))
    print(f"{str((n_c, c_c, hw_c, f_c)):24s} {ref_b / 1e6:7.1f} {blk_b / 1e6:7.1f} {flops / 1e9:6.2f} "
          f"{ms['numpy'] * 1e3:9.2f} {pred_ref * 1e3:6.2f} {ms['numba'] * 1e3:9.2f} "
          f"{pred_blk * 1e3:6.2f} {100 * flops / ms['numba'] / peak:15.0f}%")
if blas:
    blas[1](threads_before)
print("speed-up numba / numpy, measured vs predicted: "
      + ", ".join(f"{meas:.1f}x vs {pred:.1f}x" for meas, pred in conv_rows))

# %% [markdown]
# Reading it: the reference's time is at or above its prediction (the model
# counts bytes, not the allocator and page faults of fresh 9x-sized arrays).
# The last column is the blocked kernel's share of the peak measured just
# before it; on an idle machine it grows with the layer's size (`docs/conv.md`:
# small layers are bound by per-call overhead and by GEMMs too thin to reach
# the peak, large ones come closer), on a busy one the measured peak is itself
# low and the shares are noise (they can pass 100%). The model predicts a gain
# above 1x only where the reference is memory-bound (few FLOPs per byte of its
# column matrix: its `pred` is then above the kernel's) and 1x where both are
# compute-bound, the kernel saving memory traffic and page faults, not FLOPs;
# which rows are which depends on this machine's bandwidth and peak, printed
# above. The measured gains are modest and differ from the predictions either
# way (the last line). `docs/conv.md` has the idle-machine sweep on one
# and two threads with torch beside it: on one thread the kernel is 1.0 to
# 1.3 times faster than the reference for most layers (2.3 times for a
# 64-channel 8 x 8 map, where the reference's fixed costs dominate), and
# within 0.7 to 1.3 times torch's time.

# %% [markdown]
# ### Winograd: fewer multiplications for the 3x3, stride-1 convolutions
#
# Blocking leaves the GEMMs as they are, and on the large layers the GEMMs are
# the time. A 3x3 convolution with stride 1 can do less arithmetic. Winograd's
# minimal filtering F(2x2, 3x3) (`minirccn/nn/winograd.py`, the reference)
# gets a 2x2 block of outputs from the 4x4 input tile that covers it with 16
# multiplications instead of 36: it moves the tile and the filter into a
# transformed domain (`V = B^T d B`, `U = G g G^T`, made of additions and
# halvings), multiplies there elementwise, and comes back (`y = A^T (U * V) A`).
# Summed over the input channels, each of the 16 transformed positions is one
# GEMM, `(F, C) @ (C, tiles)`, so a layer's GEMM work falls from
# `9 F C Ho Wo` to `4 F C Ho Wo` multiply-adds: 2.25 times less. The price is
# memory: the transformed tiles `V` are 4x the input and `M = U @ V` 4x the
# output, and they do not stay in the cache. So it pays where the GEMMs
# dominate (many channels, large maps) and loses on small layers, where the
# extra passes and the 16 thin GEMMs cost more than they save. The numba
# backend takes it for 3x3, stride-1 convs with at least
# `WINOGRAD_MIN_CHANNELS` channels each side and `WINOGRAD_MIN_TILES` output
# tiles (`kernels/winograd.py: use_winograd`, measured in `docs/conv.md`,
# section 9). The sums are the same ones rounded in other places, so the
# results agree with im2col to rounding, not bit for bit.
#
# One tile by hand, then the two paths of the numba backend on the same layers
# (the rule's tile threshold switched to force each path; one BLAS thread):

# %%
from minirccn.kernels import winograd as kwino  # noqa: E402
from minirccn.nn import winograd as wino  # noqa: E402

d_t = rng.standard_normal((4, 4))
g_t = rng.standard_normal((3, 3))
direct = np.array([[np.sum(d_t[i : i + 3, j : j + 3] * g_t) for j in range(2)] for i in range(2)])
u_t, v_t = wino.G @ g_t @ wino.G.T, wino.BT @ d_t @ wino.BT.T  # the transforms: adds and halves
y_t = wino.AT @ (u_t * v_t) @ wino.AT.T  # the 16 products u_t * v_t, then back
print(f"one 2x2 output block: direct {direct.size * g_t.size} multiplications, Winograd {u_t.size}; "
      f"largest difference {np.abs(y_t - direct).max():.1e}")
T.check(np.allclose(y_t, direct, rtol=1e-12, atol=1e-12), "Winograd tile = direct correlation")

if blas:
    blas[1](1)
min_tiles_before = kwino.WINOGRAD_MIN_TILES
print(f"rule: WINOGRAD_MIN_CHANNELS = {kwino.WINOGRAD_MIN_CHANNELS}, "
      f"WINOGRAD_MIN_TILES = {min_tiles_before}")
print(f"{'conv 3x3 (N, C, HW, F)':24s} {'GFLOP im2col':>12s} {'Winograd':>9s} "
      f"{'im2col ms':>10s} {'Winograd ms':>12s} {'rule picks':>11s}")
for n_c, c_c, hw_c, f_c in T.pick([(1, 32, 16, 32), (1, 64, 32, 64), (2, 64, 64, 128)], [(1, 32, 8, 32)]):
    x_c = rng.standard_normal((n_c, c_c, hw_c, hw_c)).astype(np.float32)
    w_c = (rng.standard_normal((f_c, c_c, 3, 3)) * 0.05).astype(np.float32)
    b_c = np.zeros(f_c, np.float32)
    d_c = rng.standard_normal((n_c, f_c, hw_c, hw_c)).astype(np.float32)
    picks = kwino.use_winograd((n_c, c_c), w_c.shape, (1, 1), ((hw_c, hw_c),), (1, 1))
    ms, outs = {}, {}
    try:
        for path, min_tiles in (("im2col", 1 << 40), ("winograd", 0)):
            kwino.WINOGRAD_MIN_TILES = min_tiles

            def fwd_bwd_path():
                out, cache = nn_conv.conv2d_forward(x_c, w_c, b_c, 1, 1, backend="numba")
                return (out,) + tuple(nn_conv.conv2d_backward(d_c, cache))

            outs[path] = fwd_bwd_path()
            ms[path] = bench.time_call(fwd_bwd_path, min_time=min_time)["median"]
    finally:
        kwino.WINOGRAD_MIN_TILES = min_tiles_before
    for a_arr, b_arr in zip(outs["im2col"], outs["winograd"]):
        scale = float(np.abs(a_arr).max()) or 1.0
        T.check(np.abs(a_arr - b_arr).max() <= 1e-4 * scale, "Winograd = im2col (rounding)")
    tiles = n_c * ((hw_c + 1) // 2) ** 2
    g_im2col = 3 * 2 * n_c * f_c * 9 * c_c * hw_c * hw_c / 1e9
    g_wino = 3 * 2 * 16 * f_c * c_c * tiles / 1e9
    print(f"{str((n_c, c_c, hw_c, f_c)):24s} {g_im2col:12.3f} {g_wino:9.3f} "
          f"{ms['im2col'] * 1e3:10.2f} {ms['winograd'] * 1e3:12.2f} "
          f"{'Winograd' if picks else 'im2col':>11s}")
if blas:
    blas[1](threads_before)

# %% [markdown]
# The GEMM work falls 2.25 times on every row; the time falls less, and on the
# small layer not at all, because the transforms' four passes over `V`, `M`
# and their gradients are memory traffic that im2col's blocked kernel does not
# have. `docs/conv.md` (section 9) has the idle-machine sweep on one and two
# threads with torch beside it, and the rule's thresholds read off it.

# %% [markdown]
# Read the numbers with the machine in mind. On two cores the Numba kernels
# win mostly by not allocating temporaries and by skipping work (the NMS walk
# jumps over suppressed boxes, the RoI-pool kernel scans each bin once), not by
# parallelism. Every `prange` loop ends with a join: the calling thread waits
# for the others. With OpenMP's default spin-waiting that join can cost
# milliseconds on a machine busier than its core count, so `import minirccn`
# sets `OMP_WAIT_POLICY=PASSIVE` (idle threads sleep; `docs/threads.md` has the
# measurements). Waking sleeping threads still costs a little per call, so a
# small `box_iou` can look slower in Numba than in NumPy; run with
# `NUMBA_NUM_THREADS=1` to see the kernel's own time on one thread. On a GPU the picture changes with size: the
# launch and the copy of the mask to the host cost tens of microseconds, so
# small inputs are faster on the CPU.
#
# ## Summary
#
# * One reference, several kernels, each compared with the reference on
#   random and awkward inputs; the simulator runs the CUDA kernels anywhere.
# * Parallel loops must write disjoint memory: parallelise over a disjoint
#   axis, gather instead of scatter, or use atomics (and accept a run-to-run
#   order of additions).
# * Time after a warm-up, report the median, build inputs outside the clock,
#   and synchronise the GPU.
#
# ## Exercises
#
# Fill in each stub and re-run; each check cell prints `passed` or what it
# expected.
#
# 1. Fix `scatter_racy` with per-thread buffers: `numba.get_num_threads()`
#    private copies of `out`, each thread adding into its own row (hint:
#    `numba.get_thread_id()` inside the `prange` loop), summed at the end.
# 2. Time `ops.box_iou` on `numpy` and `numba` for a few N (with
#    `bench.time_call`, after a warm-up). Return the medians in seconds.
#    Where does the reference's memory traffic start to hurt (compare with
#    the sweep above)?
# 3. Why can the greedy walk of NMS not be split over threads like a disjoint
#    axis? Because whether box `j` is suppressed depends on whether the box
#    that overlaps it was itself *kept*. Build three boxes and scores for
#    which greedy NMS (`ops.nms`, IoU 0.5) keeps a different set than the
#    "parallel" rule "drop every box that overlaps any higher-scoring box by
#    more than 0.5".


# %%
@T.stub
def scatter_private(idx, values, out):
    """out[c] = sum of values[k] with idx[k] == c, without races (per-thread rows, then a sum)."""
    raise NotImplementedError


@T.stub
def time_box_iou(n, backend):
    """Median seconds of ops.box_iou on two sets of n random boxes (bench.random_boxes)."""
    raise NotImplementedError


@T.stub
def chain_example():
    """(boxes (3, 4), scores (3,)) on which greedy NMS and the parallel rule differ."""
    raise NotImplementedError


# %%
def _check_private():
    for _ in range(3):
        got = np.zeros(4, dtype=np.int64)
        scatter_private(idx, values, got)
        if not np.array_equal(got, truth):
            return False
    got = np.zeros(1, dtype=np.int64)
    scatter_private(one_cell, ones, got)
    return int(got[0]) == n_race


T.exercise("9.1", _check_private, f"bincount exactly, every run ({n_race:,d} ones into one cell: {n_race:,d})")


ns_92 = T.pick((100, 1000, 4000), (100, 400))  # the N of exercise 9.2


def _check_timing():
    ns = ns_92
    t_np = [time_box_iou(n_t, "numpy") for n_t in ns]
    t_nb = [time_box_iou(n_t, "numba") for n_t in ns]
    print("  N: " + ", ".join(f"{n_t}: numpy {a * 1e3:.3f} ms, numba {b * 1e3:.3f} ms" for n_t, a, b in zip(ns, t_np, t_nb)))
    print(f"  numpy's time grew {t_np[-1] / t_np[0]:.0f}x from N = {ns[0]} to {ns[-1]}")
    return all(v > 0 for v in t_np + t_nb) and t_np[-1] > t_np[0]


T.exercise(
    "9.2",
    _check_timing,
    f"positive medians; numpy's time grows about with N^2 ((N_max / N_min)^2 = "
    f"{(ns_92[-1] / ns_92[0]) ** 2:.0f} times from {ns_92[0]} to {ns_92[-1]}; more where the "
    "temporaries leave the caches, less where fixed costs dominate)",
)


def _check_chain():
    b, sc = chain_example()
    b, sc = np.asarray(b, dtype=np.float64), np.asarray(sc, dtype=np.float64)
    greedy = sorted(ops.nms(b, sc, 0.5).tolist())
    iou_c = ops.box_iou(b, b)
    higher = sc[None, :] > sc[:, None]  # [i, j]: box j scores higher than box i
    parallel = sorted(np.flatnonzero(~np.any(higher & (iou_c > 0.5), axis=1)).tolist())
    print(f"  greedy keeps {greedy}, the parallel rule keeps {parallel}")
    return len(b) == 3 and greedy != parallel


T.exercise("9.3", _check_chain, "a chain A > B > C with A-B and B-C overlapping, A-C not: greedy keeps A and C")
