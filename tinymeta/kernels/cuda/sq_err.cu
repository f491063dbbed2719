// The per-task mean squared error and its VJP (tinymeta/kernels/numpy_backend.py):
//
//   sq_err_mean(p, y)[t]         = (1/m) sum_j (p[t, j] - y[t, j])^2
//   sq_err_mean_grad(g, p, y)[t, j] = (p[t, j] - y[t, j]) * ((2/m) * g[t])
//
// p and y are C-contiguous (tasks, m): every axis after the task axis flattened.
// float and double instantiations under extern "C" names, as in elementwise.cu.

#define TM_REDUCE_THREADS 256  // the largest block sq_err_mean is launched with

// One block per task: each thread sums a strided share of the task's m squared
// differences, then the block adds its partial sums in shared memory by halving.
// blockDim.x must be a power of two, at most TM_REDUCE_THREADS.
template <typename T>
__device__ void sq_err_mean(const T* __restrict__ p, const T* __restrict__ y,
                            T* __restrict__ out, long long m) {
    __shared__ T partial[TM_REDUCE_THREADS];
    const long long t = blockIdx.x;
    const T* pt = p + t * m;
    const T* yt = y + t * m;
    T s = T(0);
    for (long long j = threadIdx.x; j < m; j += blockDim.x) {
        T d = pt[j] - yt[j];
        s += d * d;
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[t] = partial[0] / T(m);
    }
}

// grid-stride over all n = tasks * m elements; two_over_m = 2/m in T, so that
// (2/m) * g[t] rounds as NumPy's (2.0 / n) * g does for a float32 g
template <typename T>
__device__ void sq_err_mean_grad(const T* __restrict__ g, const T* __restrict__ p,
                                 const T* __restrict__ y, T* __restrict__ out, long long n,
                                 long long m, T two_over_m) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T c = two_over_m * g[i / m];
        out[i] = (p[i] - y[i]) * c;
    }
}

// ---- the instantiations cupy loads by name ------------------------------------------------

extern "C" __global__ void tm_sq_err_mean_f32(const float* p, const float* y, float* out,
                                              long long m) {
    sq_err_mean<float>(p, y, out, m);
}
extern "C" __global__ void tm_sq_err_mean_f64(const double* p, const double* y, double* out,
                                              long long m) {
    sq_err_mean<double>(p, y, out, m);
}

extern "C" __global__ void tm_sq_err_mean_grad_f32(const float* g, const float* p,
                                                   const float* y, float* out, long long n,
                                                   long long m, float two_over_m) {
    sq_err_mean_grad<float>(g, p, y, out, n, m, two_over_m);
}
extern "C" __global__ void tm_sq_err_mean_grad_f64(const double* g, const double* p,
                                                   const double* y, double* out, long long n,
                                                   long long m, double two_over_m) {
    sq_err_mean_grad<double>(g, p, y, out, n, m, two_over_m);
}
