// RoIAlign in CUDA C, for CuPy RawKernel (roi_align_cudac / roi_align_backward_cudac in
// kernels/roi_align.py); compile-checked by tests/test_kernels.py with `nvcc -ptx`.
//
// The rule is minirccn.ops.roi_align.roi_align_reference. Where every sample reads
// the map (projection, sample grid, clamping, bilinear weights) arrives precomputed
// by minirccn.ops.roi_align.sample_tables, as C-contiguous arrays:
//   batch (R,) int64, count (R,) T               image of each RoI, divisor of each bin
//   ylo, yhi (R, ph, gh) int64, wylo, wyhi (R, ph, gh) T   rows of every sample
//   xlo, xhi (R, pw, gw) int64, wxlo, wxhi (R, pw, gw) T   columns of every sample
// A lo index of -1 marks a sample that contributes nothing (outside the map, or
// beyond this RoI's own grid). One thread per output element (r, c, i, j).
//
// Entry points (extern "C" so CuPy finds them by name):
//   roi_align_forward_f32 / roi_align_forward_f64
//   roi_align_backward_f32 / roi_align_backward_f64   (atomicAdd on double needs sm_60+)

#include "_launch.cuh"

template <typename T>
__device__ void roi_align_forward(const T* features, const i64* batch, const T* count,
                                  const i64* ylo, const i64* yhi, const T* wylo, const T* wyhi,
                                  const i64* xlo, const i64* xhi, const T* wxlo, const T* wxhi,
                                  i64 rois, i64 channels, i64 height, i64 width, i64 ph, i64 gh,
                                  i64 pw, i64 gw, T* out) {
    i64 index = flat_index();
    if (index >= rois * channels * ph * pw) return;
    i64 r, c, i, j;
    unravel4(index, channels, ph, pw, r, c, i, j);

    const T* fmap = features + (batch[r] * channels + c) * height * width;
    T acc = T(0);
    for (i64 g = 0; g < gh; ++g) {
        i64 ys = (r * ph + i) * gh + g;
        i64 y0 = ylo[ys];
        if (y0 < 0) continue;  // this row of samples contributes nothing
        i64 y1 = yhi[ys];
        T ay = wylo[ys], by = wyhi[ys];
        for (i64 h = 0; h < gw; ++h) {
            i64 xs = (r * pw + j) * gw + h;
            i64 x0 = xlo[xs];
            if (x0 < 0) continue;
            i64 x1 = xhi[xs];
            T ax = wxlo[xs], bx = wxhi[xs];
            acc += ay * ax * fmap[y0 * width + x0] + ay * bx * fmap[y0 * width + x1] +
                   by * ax * fmap[y1 * width + x0] + by * bx * fmap[y1 * width + x1];
        }
    }
    out[index] = acc / count[r];
}

template <typename T>
__device__ void roi_align_backward(const T* grad_out, const i64* batch, const T* count,
                                   const i64* ylo, const i64* yhi, const T* wylo, const T* wyhi,
                                   const i64* xlo, const i64* xhi, const T* wxlo, const T* wxhi,
                                   i64 rois, i64 channels, i64 height, i64 width, i64 ph, i64 gh,
                                   i64 pw, i64 gw, T* grad) {
    i64 index = flat_index();
    if (index >= rois * channels * ph * pw) return;
    i64 r, c, i, j;
    unravel4(index, channels, ph, pw, r, c, i, j);

    T* plane = grad + (batch[r] * channels + c) * height * width;
    T top = grad_out[index];
    for (i64 g = 0; g < gh; ++g) {
        i64 ys = (r * ph + i) * gh + g;
        i64 y0 = ylo[ys];
        if (y0 < 0) continue;
        i64 y1 = yhi[ys];
        T ay = wylo[ys], by = wyhi[ys];
        for (i64 h = 0; h < gw; ++h) {
            i64 xs = (r * pw + j) * gw + h;
            i64 x0 = xlo[xs];
            if (x0 < 0) continue;
            i64 x1 = xhi[xs];
            T ax = wxlo[xs], bx = wxhi[xs];
            // the 4 neighbours of the sample, each with its bilinear weight
            atomicAdd(plane + y0 * width + x0, top * (ay * ax) / count[r]);
            atomicAdd(plane + y0 * width + x1, top * (ay * bx) / count[r]);
            atomicAdd(plane + y1 * width + x0, top * (by * ax) / count[r]);
            atomicAdd(plane + y1 * width + x1, top * (by * bx) / count[r]);
        }
    }
}

#define ROI_ALIGN_ENTRY_POINTS(T, SUFFIX)                                                         \
    extern "C" __global__ void roi_align_forward_##SUFFIX(                                        \
        const T* features, const i64* batch, const T* count, const i64* ylo, const i64* yhi,      \
        const T* wylo, const T* wyhi, const i64* xlo, const i64* xhi, const T* wxlo,              \
        const T* wxhi, i64 rois, i64 channels, i64 height, i64 width, i64 ph, i64 gh, i64 pw,     \
        i64 gw, T* out) {                                                                         \
        roi_align_forward<T>(features, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi,  \
                             rois, channels, height, width, ph, gh, pw, gw, out);                 \
    }                                                                                             \
    extern "C" __global__ void roi_align_backward_##SUFFIX(                                       \
        const T* grad_out, const i64* batch, const T* count, const i64* ylo, const i64* yhi,      \
        const T* wylo, const T* wyhi, const i64* xlo, const i64* xhi, const T* wxlo,              \
        const T* wxhi, i64 rois, i64 channels, i64 height, i64 width, i64 ph, i64 gh, i64 pw,     \
        i64 gw, T* grad) {                                                                        \
        roi_align_backward<T>(grad_out, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo,       \
                              wxhi, rois, channels, height, width, ph, gh, pw, gw, grad);         \
    }

ROI_ALIGN_ENTRY_POINTS(float, f32)
ROI_ALIGN_ENTRY_POINTS(double, f64)
