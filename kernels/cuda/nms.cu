// The NMS suppression-mask kernel in CUDA C: the twin of _nms_mask_kernel in
// kernels/nms.py (read that docstring first). Loaded by CuPy as a RawKernel
// (nms_sorted_cudac / nms_mask_cudac); compile-checked by tests/test_kernels.py with `nvcc -ptx`.
//
// Boxes arrive sorted by decreasing score. Block (i, j) of a (B, B) grid, 64
// threads: thread t takes row box r = 64 i + t and sets bit k of mask[r, j]
// when column box c = 64 j + k comes after r, has the same label and overlaps
// r with IoU > threshold. The caller then walks the mask on the host.
//
// IoU is the reference formula (minirccn.ops.boxes) in T, in the same order; the
// products use __fmul_rn / __dmul_rn so the compiler cannot fuse them into
// the following add (a fused multiply-add rounds once and would change bits).

#define NMS_BLOCK 64

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ T min_(T a, T b) { return a < b ? a : b; }
template <typename T>
__device__ __forceinline__ T max_(T a, T b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ T iou(const T* a, T area_a, const T* b, T area_b) {
    T w = max_(min_(a[2], b[2]) - max_(a[0], b[0]), T(0));
    T h = max_(min_(a[3], b[3]) - max_(a[1], b[1]), T(0));
    T inter = mul_rn(w, h);
    T uni = area_a + area_b - inter;
    return uni == T(0) ? T(0) : inter / uni;
}

template <typename T>
__device__ void nms_mask(int n, double threshold, const T* boxes, const T* areas,
                         const long long* labels, unsigned long long* mask) {
    const int row_block = blockIdx.y;
    const int col_block = blockIdx.x;
    if (col_block < row_block) return;  // column boxes all come before row boxes
    const int blocks = (n + NMS_BLOCK - 1) / NMS_BLOCK;
    const int t = threadIdx.x;

    __shared__ T tile[NMS_BLOCK * 4];
    __shared__ T tile_area[NMS_BLOCK];
    __shared__ long long tile_label[NMS_BLOCK];
    const int c = col_block * NMS_BLOCK + t;
    if (c < n) {
        for (int d = 0; d < 4; ++d) tile[t * 4 + d] = boxes[c * 4 + d];
        tile_area[t] = areas[c];
        tile_label[t] = labels[c];
    }
    __syncthreads();

    const int r = row_block * NMS_BLOCK + t;
    if (r >= n) return;
    const int cols = min(n - col_block * NMS_BLOCK, NMS_BLOCK);
    const int first = (col_block == row_block) ? t + 1 : 0;
    const T* a = boxes + r * 4;
    const T area_a = areas[r];
    const long long label = labels[r];
    unsigned long long word = 0ULL;
    for (int k = first; k < cols; ++k) {
        if (tile_label[k] == label &&
            (double)iou(a, area_a, tile + k * 4, tile_area[k]) > threshold) {
            word |= 1ULL << k;
        }
    }
    mask[(long long)r * blocks + col_block] = word;
}

extern "C" __global__ void nms_mask_f32(int n, double threshold, const float* boxes,
                                        const float* areas, const long long* labels,
                                        unsigned long long* mask) {
    nms_mask<float>(n, threshold, boxes, areas, labels, mask);
}

extern "C" __global__ void nms_mask_f64(int n, double threshold, const double* boxes,
                                        const double* areas, const long long* labels,
                                        unsigned long long* mask) {
    nms_mask<double>(n, threshold, boxes, areas, labels, mask);
}
