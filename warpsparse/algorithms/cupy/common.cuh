// Device helpers shared by warpsparse's run-time compiled kernels: storage types and conversions,
// asynchronous copies, tile loads and the multi-stage copy/compute pipeline.
// Self-contained on purpose (no CUDA headers), so NVRTC and nvcc compile it identically.

namespace wsk {

// ---- storage types: DT 0 = fp32, 1 = fp16, 2 = bf16 (half types travel as raw 16-bit words) ----

template <int DT> struct Num;

template <> struct Num<0> {
  using T = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <> struct Num<1> {
  using T = unsigned short;
  static __device__ __forceinline__ float load(unsigned short v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
  }
  static __device__ __forceinline__ unsigned short store(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
  }
};

template <> struct Num<2> {
  using T = unsigned short;
  static __device__ __forceinline__ float load(unsigned short v) { return __uint_as_float(((unsigned)v) << 16); }
  static __device__ __forceinline__ unsigned short store(float f) {  // round to nearest even, quiet NaN
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)(((u >> 16) & 0x8000u) | 0x7fc0u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
  }
};

template <bool C, class A, class B> struct Pick { using type = A; };
template <class A, class B> struct Pick<false, A, B> { using type = B; };

template <typename T> __device__ __forceinline__ T imin(T a, T b) { return a < b ? a : b; }

template <typename T, int N> struct alignas(sizeof(T) * N) Vec { T v[N]; };

struct alignas(8) F2 { float x, y; };

// ---- asynchronous global -> shared copies (cp.async on sm_80+, plain copies before) ----

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// Copy BYTES (4, 8 or 16) from src to dst, or fill dst with zeros when !valid (src is then not read).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
#if __CUDA_ARCH__ >= 800
  const unsigned d = smem_addr(dst);
  const int n = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(BYTES), "r"(n)
                 : "memory");
  }
#else
  using W = typename Pick<BYTES == 16, Vec<unsigned, 4>, typename Pick<BYTES == 8, Vec<unsigned, 2>,
                                                                        Vec<unsigned, 1>>::type>::type;
  W w = {};
  if (valid) w = *reinterpret_cast<const W*>(src);
  *reinterpret_cast<W*>(dst) = w;
#endif
}

__device__ __forceinline__ void cp_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Copy VEC elements (VEC * sizeof(T) bytes: asynchronous when at least 4, else a plain load/store).
template <typename T, int VEC>
__device__ __forceinline__ void copy_vec(T* dst, const T* src, bool valid) {
  constexpr int BYTES = VEC * (int)sizeof(T);
  static_assert(BYTES == 2 || BYTES == 4 || BYTES == 8 || BYTES == 16, "unsupported copy width");
  if constexpr (BYTES >= 4) {
    cp_async<BYTES>(dst, src, valid);
  } else {
    *dst = valid ? *src : T(0);
  }
}

// Load a ROWS x COLS tile into dst (leading dimension ld): row r is row_ptr(r)[col0 : col0 + COLS], or
// zeros when row_ptr(r) is null; columns at or past ncols are zero. VEC divides ncols, COLS and the row
// strides, so a vector is entirely in or out of range. `dummy` is a readable address for skipped copies.
template <typename T, int ROWS, int COLS, int VEC, int NT, class RowPtr>
__device__ __forceinline__ void load_tile(T* dst, int ld, const RowPtr& row_ptr, int col0, int ncols,
                                          const T* dummy, int tid) {
  constexpr int VPR = COLS / VEC;
  constexpr int TOTAL = ROWS * VPR;
  constexpr int ITERS = (TOTAL + NT - 1) / NT;
  static_assert(VPR * VEC == COLS, "VEC must divide the tile width");
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int i = it * NT + tid;
    if (TOTAL % NT == 0 || i < TOTAL) {
      const int r = i / VPR;
      const int c = (i % VPR) * VEC;
      const T* src = row_ptr(r);
      const bool ok = src != nullptr && col0 + c < ncols;
      copy_vec<T, VEC>(dst + r * ld + c, ok ? src + col0 + c : dummy, ok);
    }
  }
}

// Multi-stage software pipeline: load(stage, step) fills a shared-memory stage, compute(stage) consumes
// it; loads run STAGES - 1 steps ahead of the math. nsteps must be uniform across the block.
template <int STAGES, class Load, class Compute>
__device__ __forceinline__ void pipeline(int nsteps, const Load& load, const Compute& compute) {
  static_assert(STAGES >= 2, "the pipeline needs at least two stages");
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nsteps) load(s, s);
    cp_commit();
  }
  for (int t = 0; t < nsteps; ++t) {
    cp_wait<STAGES - 2>();
    __syncthreads();
    const int tn = t + STAGES - 1;
    if (tn < nsteps) load(tn % STAGES, tn);
    cp_commit();
    compute(t % STAGES);
  }
  cp_wait<0>();
  __syncthreads();
}

// out[i] = sum over s < splits of ws[s * n + i], in a fixed order (the deterministic split reduction).
template <int DT>
__global__ void ws_sum_splits(const float* __restrict__ ws, typename Num<DT>::T* __restrict__ out, long long n,
                              int splits) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float s = 0.f;
    for (int j = 0; j < splits; ++j) s += ws[(long long)j * n + i];
    out[i] = Num<DT>::store(s);
  }
}

}  // namespace wsk
