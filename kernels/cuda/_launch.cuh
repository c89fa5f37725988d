// What every CUDA C twin shares: the CUDA C side of kernels/_launch.py.
// Included by the .cu files; CuPy compiles them with -I kernels/cuda (_launch.CUDA_OPTIONS).
#pragma once

typedef long long i64;

// The flat index of this thread in a one-thread-per-item launch (blocks(n) x THREADS).
__device__ __forceinline__ i64 flat_index() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }

// (a, b, c, d) of the flat C-order index into an (A, B, C, D) array (kernels/_launch.py unravel4).
__device__ __forceinline__ void unravel4(i64 index, i64 b_size, i64 c_size, i64 d_size, i64& a,
                                         i64& b, i64& c, i64& d) {
    d = index % d_size;
    c = (index / d_size) % c_size;
    b = (index / (d_size * c_size)) % b_size;
    a = index / (d_size * c_size * b_size);
}
