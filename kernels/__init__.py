"""Fast kernels for the hot ops, installed as ``minirccn.kernels``.

One file per op, CPU (``@numba.njit``) and GPU (``@numba.cuda.jit``) side by side;
CUDA C sources for CuPy ``RawKernel`` s live in ``cuda/*.cu``. Kernels never
import the model: they take plain arrays and return plain arrays, and contain
no logic that the NumPy reference in ``minirccn`` lacks.
"""
