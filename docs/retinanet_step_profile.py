"""cProfile of the bench's RetinaNet training step (one OpenBLAS thread, as `minirccn train` sets it):
60 steps timed, then 60 profiled; prints the functions by own time and by cumulative time::

    python docs/retinanet_step_profile.py

The GEMMs are NumPy ufunc calls, not profiled on their own: they are in the own time of the kernel
function that calls them (`conv2d_levels_numba`, `conv2d_levels_backward_numba`, ...).
"""

import cProfile
import os
import pstats
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from minirccn.app import bench  # noqa: E402
print("load", os.getloadavg())
inputs = bench._inputs_of("resnet-fpn-tiny", "retinanet")(np.random.default_rng(0))
fn = bench._train_step("numba", inputs)
for _ in range(10): fn()
ts=[]
for _ in range(60):
    t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
print("median step ms", np.median(ts)*1e3, "mean", np.mean(ts)*1e3)
pr=cProfile.Profile(); pr.enable()
for _ in range(60): fn()
pr.disable()
st=pstats.Stats(pr); st.sort_stats("tottime").print_stats(35)
st.sort_stats("cumulative").print_stats(60)
