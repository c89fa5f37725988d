// RoI max pooling in CUDA C, for CuPy RawKernel (roi_pool_cudac / roi_pool_backward_cudac in
// kernels/roi_pool.py); compile-checked by tests/test_kernels.py with `nvcc -ptx`.
//
// The rule is minirccn.ops.roi_pool.roi_pool_reference. The bins (projection, C
// rounding, floor/ceil, clipping to the map) arrive precomputed as int64 arrays:
//   batch (R,), hstart/hend (R, ph), wstart/wend (R, pw).
// All arrays are C-contiguous. One thread per output element (r, c, i, j).
//
// Entry points (extern "C" so CuPy finds them by name):
//   roi_pool_forward_f32 / roi_pool_forward_f64
//   roi_pool_backward_f32 / roi_pool_backward_f64   (atomicAdd on double needs sm_60+)

#include "_launch.cuh"

template <typename T>
__device__ void roi_pool_forward(const T* features, const i64* batch, const i64* hstart,
                                 const i64* hend, const i64* wstart, const i64* wend, T lowest,
                                 i64 rois, i64 channels, i64 height, i64 width, i64 ph, i64 pw,
                                 T* out, i64* argmax) {
    i64 index = flat_index();
    if (index >= rois * channels * ph * pw) return;
    i64 r, c, i, j;
    unravel4(index, channels, ph, pw, r, c, i, j);

    i64 h0 = hstart[r * ph + i], h1 = hend[r * ph + i];
    i64 w0 = wstart[r * pw + j], w1 = wend[r * pw + j];
    if (h1 <= h0 || w1 <= w0) {  // empty bin: 0, nothing to send gradient to
        out[index] = T(0);
        argmax[index] = -1;
        return;
    }
    const T* fmap = features + (batch[r] * channels + c) * height * width;
    T best = lowest;  // -FLT_MAX; strict > keeps the first maximum and never takes NaN
    i64 best_at = -1;
    for (i64 h = h0; h < h1; ++h) {
        for (i64 w = w0; w < w1; ++w) {
            T v = fmap[h * width + w];
            if (v > best) {
                best = v;
                best_at = h * width + w;
            }
        }
    }
    out[index] = best;
    argmax[index] = best_at;
}

template <typename T>
__device__ void roi_pool_backward(const T* grad_out, const i64* batch, const i64* argmax,
                                  i64 rois, i64 channels, i64 cells, i64 ph, i64 pw, T* grad) {
    i64 index = flat_index();
    if (index >= rois * channels * ph * pw) return;
    i64 c = (index / (pw * ph)) % channels;
    i64 r = index / (pw * ph * channels);
    i64 k = argmax[index];
    if (k >= 0) atomicAdd(grad + (batch[r] * channels + c) * cells + k, grad_out[index]);
}

#define ROI_POOL_ENTRY_POINTS(T, SUFFIX)                                                         \
    extern "C" __global__ void roi_pool_forward_##SUFFIX(                                        \
        const T* features, const i64* batch, const i64* hstart, const i64* hend,                 \
        const i64* wstart, const i64* wend, T lowest, i64 rois, i64 channels, i64 height,        \
        i64 width, i64 ph, i64 pw, T* out, i64* argmax) {                                        \
        roi_pool_forward<T>(features, batch, hstart, hend, wstart, wend, lowest, rois, channels, \
                            height, width, ph, pw, out, argmax);                                 \
    }                                                                                            \
    extern "C" __global__ void roi_pool_backward_##SUFFIX(                                       \
        const T* grad_out, const i64* batch, const i64* argmax, i64 rois, i64 channels,          \
        i64 cells, i64 ph, i64 pw, T* grad) {                                                    \
        roi_pool_backward<T>(grad_out, batch, argmax, rois, channels, cells, ph, pw, grad);      \
    }

ROI_POOL_ENTRY_POINTS(float, f32)
ROI_POOL_ENTRY_POINTS(double, f64)
