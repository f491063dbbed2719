// Patch extraction (im2col) and its adjoint (col2im) of the cupy backend: the kernels of
// the convolution primitives (tinymeta/kernels/conv_numpy.py is the reference).
//
// Images are C-contiguous (N, H, W, C), every leading axis merged into N; patches are
// C-contiguous (N, Ho, Wo, kh*kw*C), the columns in (a, b, c) order over the kh x kw
// window and the C channels. (pt, pl) is the zero padding above and left; the padding
// below and right only shows in Ho and Wo.
//
//   im2col: out[n, i, j, a, b, c] = x[n, i*sh + a - pt, j*sw + b - pl, c], 0 outside
//   col2im: out[n, r, s, c] = sum over the taps (i, j, a, b) that read pixel (r, s)
//           of cols[n, i, j, a, b, c]: i*sh + a = r + pt and j*sw + b = s + pl
//
// col2im gathers: one thread per image element sums its taps in (a, b) order, the order
// in which the reference adds them, so no atomics and the same sums. Grid-stride loops,
// as in elementwise.cu; float and double instantiations under extern "C" names.

template <typename T>
__device__ void im2col(const T* __restrict__ x, T* __restrict__ out, long long n,
                       long long H, long long W, long long C, long long Ho, long long Wo,
                       long long kh, long long kw, long long sh, long long sw,
                       long long pt, long long pl) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        long long rest = e;
        long long c = rest % C;
        rest /= C;
        long long b = rest % kw;
        rest /= kw;
        long long a = rest % kh;
        rest /= kh;
        long long j = rest % Wo;
        rest /= Wo;
        long long i = rest % Ho;
        long long img = rest / Ho;
        long long r = i * sh + a - pt;
        long long s = j * sw + b - pl;
        bool inside = r >= 0 && r < H && s >= 0 && s < W;
        out[e] = inside ? x[((img * H + r) * W + s) * C + c] : T(0);
    }
}

template <typename T>
__device__ void col2im(const T* __restrict__ cols, T* __restrict__ out, long long n,
                       long long H, long long W, long long C, long long Ho, long long Wo,
                       long long kh, long long kw, long long sh, long long sw,
                       long long pt, long long pl) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        long long rest = e;
        long long c = rest % C;
        rest /= C;
        long long s = rest % W;
        rest /= W;
        long long r = rest % H;
        long long img = rest / H;
        T sum = T(0);
        for (long long a = 0; a < kh; ++a) {
            long long ii = r + pt - a;  // i * sh for the patch row i that tap a reads r from
            if (ii < 0 || ii % sh != 0 || ii / sh >= Ho) continue;
            long long i = ii / sh;
            for (long long b = 0; b < kw; ++b) {
                long long jj = s + pl - b;
                if (jj < 0 || jj % sw != 0 || jj / sw >= Wo) continue;
                long long j = jj / sw;
                sum += cols[((((img * Ho + i) * Wo + j) * kh + a) * kw + b) * C + c];
            }
        }
        out[e] = sum;
    }
}

// ---- the instantiations cupy loads by name ------------------------------------------------

// (the parameter lists are written out: the host emulator of the tests reads them)
#define TM_CONV_ARGS n, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pl

extern "C" __global__ void tm_im2col_f32(const float* x, float* out, long long n, long long H,
                                         long long W, long long C, long long Ho, long long Wo,
                                         long long kh, long long kw, long long sh,
                                         long long sw, long long pt, long long pl) {
    im2col<float>(x, out, TM_CONV_ARGS);
}
extern "C" __global__ void tm_im2col_f64(const double* x, double* out, long long n,
                                         long long H, long long W, long long C, long long Ho,
                                         long long Wo, long long kh, long long kw,
                                         long long sh, long long sw, long long pt,
                                         long long pl) {
    im2col<double>(x, out, TM_CONV_ARGS);
}

extern "C" __global__ void tm_col2im_f32(const float* cols, float* out, long long n,
                                         long long H, long long W, long long C, long long Ho,
                                         long long Wo, long long kh, long long kw,
                                         long long sh, long long sw, long long pt,
                                         long long pl) {
    col2im<float>(cols, out, TM_CONV_ARGS);
}
extern "C" __global__ void tm_col2im_f64(const double* cols, double* out, long long n,
                                         long long H, long long W, long long C, long long Ho,
                                         long long Wo, long long kh, long long kw,
                                         long long sh, long long sw, long long pt,
                                         long long pl) {
    col2im<double>(cols, out, TM_CONV_ARGS);
}
