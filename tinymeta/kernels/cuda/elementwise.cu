// Elementwise kernels of the cupy backend: the epilogue after a cuBLAS GEMM
// (bias, then relu), relu and its VJP, and the gradient step x - scale * d.
//
// Each kernel is a device template instantiated for float and double under a
// plain extern "C" name (tm_<kernel>_f32, tm_<kernel>_f64), so that cupy's
// RawModule finds it by name and nvcc / NVRTC compile both bodies (a type
// error in either fails the PTX build). Arrays are C-contiguous; n counts
// elements. Every kernel is a grid-stride loop: any grid size is correct.
//
// The semantics are those of tinymeta/kernels/numpy_backend.py:
//   relu(x)           = max(x, 0), NaN kept (np.maximum keeps NaN)
//   relu_grad(g, x)   = g where x > 0, else 0 (relu'(0) = 0, NaN x gives 0)
//   bias_act(z, b)    = z + b (then relu), z of shape (tasks, rows, cols)
//   sub_scaled(x, d)  = x - scale * d

// a product rounded on its own, never contracted into an FMA with a later add, so that
// x - scale * d rounds as NumPy's does
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ T relu_value(T v) {
    return v < T(0) ? T(0) : v;  // a NaN compares false and is kept
}

template <typename T>
__device__ void relu(const T* __restrict__ x, T* __restrict__ out, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = relu_value(x[i]);
    }
}

template <typename T>
__device__ void relu_grad(const T* __restrict__ g, const T* __restrict__ x,
                          T* __restrict__ out, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = x[i] > T(0) ? g[i] : T(0);
    }
}

// z[t, r, c] += b[t * b_task_stride + c], in place, then relu when apply_relu != 0.
// z holds n = tasks * rows * cols elements; task_size = rows * cols.
// b_task_stride is 0 for one bias row shared by every task (b of shape (cols,)),
// cols for one bias row per task (b of shape (tasks, 1, cols)).
template <typename T>
__device__ void bias_act(T* __restrict__ z, const T* __restrict__ b, long long n,
                         long long task_size, long long cols, long long b_task_stride,
                         int apply_relu) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        long long t = i / task_size;
        long long c = i % cols;
        T v = z[i] + b[t * b_task_stride + c];
        z[i] = apply_relu ? relu_value(v) : v;
    }
}

template <typename T>
__device__ void sub_scaled(const T* __restrict__ x, const T* __restrict__ d, T scale,
                           T* __restrict__ out, long long n) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = x[i] - mul_rn(scale, d[i]);
    }
}

// ---- the instantiations cupy loads by name ------------------------------------------------

extern "C" __global__ void tm_relu_f32(const float* x, float* out, long long n) {
    relu<float>(x, out, n);
}
extern "C" __global__ void tm_relu_f64(const double* x, double* out, long long n) {
    relu<double>(x, out, n);
}

extern "C" __global__ void tm_relu_grad_f32(const float* g, const float* x, float* out,
                                            long long n) {
    relu_grad<float>(g, x, out, n);
}
extern "C" __global__ void tm_relu_grad_f64(const double* g, const double* x, double* out,
                                            long long n) {
    relu_grad<double>(g, x, out, n);
}

extern "C" __global__ void tm_bias_act_f32(float* z, const float* b, long long n,
                                           long long task_size, long long cols,
                                           long long b_task_stride, int apply_relu) {
    bias_act<float>(z, b, n, task_size, cols, b_task_stride, apply_relu);
}
extern "C" __global__ void tm_bias_act_f64(double* z, const double* b, long long n,
                                           long long task_size, long long cols,
                                           long long b_task_stride, int apply_relu) {
    bias_act<double>(z, b, n, task_size, cols, b_task_stride, apply_relu);
}

extern "C" __global__ void tm_sub_scaled_f32(const float* x, const float* d, float scale,
                                             float* out, long long n) {
    sub_scaled<float>(x, d, scale, out, n);
}
extern "C" __global__ void tm_sub_scaled_f64(const double* x, const double* d, double scale,
                                             double* out, long long n) {
    sub_scaled<double>(x, d, scale, out, n);
}
