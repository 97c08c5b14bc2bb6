// Implicit-GEMM sparse convolution: output-stationary forward (also the input gradient, over the reversed
// map with W transposed) and the weight gradient over per-offset pair lists. Needs common.cuh before it.
//
// Template parameters shared by both kernels:
//   DT      storage type (0 fp32, 1 fp16, 2 bf16); accumulation is always fp32
//   BM, BN  output tile (rows x channels for the forward, C_in x C_out for the weight gradient)
//   BK      reduction tile (input channels for the forward, pairs for the weight gradient)
//   WM, WN  warps along M and N (threads = 32 * WM * WN)
//   STAGES  shared-memory pipeline depth
//   VA, VB  elements per copy of the A and B tiles (16-byte copies where channels and pointers allow)
//   MMA     tensor cores (mma.sync: fp16/bf16 m16n8k16, fp32 as TF32 m16n8k8) or exact FFMA

namespace wsk {

// ---- tensor-core tile: each warp owns a (BM/WM) x (BN/WN) block of 16x8 accumulators ----
// A is [BM][lda] (m-major) or, with AK, [BK][lda] (k-major); B is always [BK][ldb].
template <int DT, int BM, int BN, int BK, int WM, int WN, bool AK>
struct MmaTile {
  using T = typename Num<DT>::T;
  static constexpr int WTM = BM / WM, WTN = BN / WN;
  static constexpr int MI = WTM / 16, NI = WTN / 8;
  static constexpr int KS = DT == 0 ? 8 : 16;
  static_assert(MI * 16 == WTM && NI * 8 == WTN && BK % KS == 0, "tile does not fit the mma shape");
  static_assert(DT == 0 || NI % 2 == 0, "half-precision warp tiles need a multiple of 16 columns");
  float acc[MI][NI][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  }

  static __device__ __forceinline__ unsigned tf32(float f) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
  }

  __device__ __forceinline__ void step(const T* As, int lda, const T* Bs, int ldb, int tid) {
#if __CUDA_ARCH__ >= 800
    const int warp = tid >> 5, lane = tid & 31;
    const int wm0 = (warp % WM) * WTM, wn0 = (warp / WM) * WTN;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int ks = 0; ks < BK; ks += KS) {
      unsigned a[MI][4], b[NI][2];
      if constexpr (DT == 0) {
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          const int m = wm0 + i * 16 + g;
          if constexpr (AK) {
            a[i][0] = tf32(As[(ks + t) * lda + m]);
            a[i][1] = tf32(As[(ks + t) * lda + m + 8]);
            a[i][2] = tf32(As[(ks + t + 4) * lda + m]);
            a[i][3] = tf32(As[(ks + t + 4) * lda + m + 8]);
          } else {
            a[i][0] = tf32(As[m * lda + ks + t]);
            a[i][1] = tf32(As[(m + 8) * lda + ks + t]);
            a[i][2] = tf32(As[m * lda + ks + t + 4]);
            a[i][3] = tf32(As[(m + 8) * lda + ks + t + 4]);
          }
        }
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          b[j][0] = tf32(Bs[(ks + t) * ldb + wn0 + j * 8 + g]);
          b[j][1] = tf32(Bs[(ks + t + 4) * ldb + wn0 + j * 8 + g]);
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j)
            asm volatile(
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                "{%0,%1,%2,%3};\n"
                : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
      } else {
        const int q = lane >> 3, r8 = lane & 7;
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          // matrices 0..3 = (rows 0-7 | 8-15) x (k 0-7 | 8-15) of the 16x16 A fragment
          const T* p = AK ? As + (ks + r8 + (q >> 1) * 8) * lda + wm0 + i * 16 + (q & 1) * 8
                          : As + (wm0 + i * 16 + r8 + (q & 1) * 8) * lda + ks + (q >> 1) * 8;
          const unsigned addr = smem_addr(p);
          if constexpr (AK) {
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[i][0]), "=r"(a[i][1]), "=r"(a[i][2]), "=r"(a[i][3])
                         : "r"(addr));
          } else {
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                         : "=r"(a[i][0]), "=r"(a[i][1]), "=r"(a[i][2]), "=r"(a[i][3])
                         : "r"(addr));
          }
        }
#pragma unroll
        for (int j = 0; j < NI; j += 2) {
          // matrices 0..3 = (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
          const T* p = Bs + (ks + r8 + (q & 1) * 8) * ldb + wn0 + j * 8 + (q >> 1) * 8;
          asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                       : "=r"(b[j][0]), "=r"(b[j][1]), "=r"(b[j + 1][0]), "=r"(b[j + 1][1])
                       : "r"(smem_addr(p)));
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            if constexpr (DT == 1) {
              asm volatile(
                  "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                  "{%0,%1,%2,%3};\n"
                  : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                  : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
            } else {
              asm volatile(
                  "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                  "{%0,%1,%2,%3};\n"
                  : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                  : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
            }
          }
      }
    }
#else
    __trap();  // tensor-core kernels are only selected on sm_80 and newer
#endif
  }

  // Hand every accumulator pair (row r, columns n and n + 1 of the block tile) to out.pair.
  template <class Out>
  __device__ __forceinline__ void store(const Out& out, int tid) const {
    const int warp = tid >> 5, lane = tid & 31;
    const int wm0 = (warp % WM) * WTM, wn0 = (warp / WM) * WTN;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          out.pair(wm0 + i * 16 + g + h * 8, wn0 + j * 8 + 2 * t, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
  }
};

// ---- FFMA tile: thread (ty, tx) owns rows ty + i*TY and columns tx + j*TX (exact fp32 math) ----
template <int DT, int BM, int BN, int BK, int NT, bool AK>
struct SimtTile {
  using T = typename Num<DT>::T;
  static constexpr int TX = BN < 16 ? BN : 16, TY = NT / TX;
  static constexpr int TM = BM / TY, TN = BN / TX;
  static_assert(TX * TY == NT && TM * TY == BM && TN * TX == BN, "thread layout does not cover the tile");
  float acc[TM][TN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  }

  __device__ __forceinline__ void step(const T* As, int lda, const T* Bs, int ldb, int tid) {
    const int tx = tid % TX, ty = tid / TX;
#pragma unroll 4
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
        a[i] = Num<DT>::load(AK ? As[kk * lda + ty + i * TY] : As[(ty + i * TY) * lda + kk]);
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Num<DT>::load(Bs[kk * ldb + tx + j * TX]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
    }
  }

  template <class Out>
  __device__ __forceinline__ void store(const Out& out, int tid) const {
    const int tx = tid % TX, ty = tid / TX;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) out.one(ty + i * TY, tx + j * TX, acc[i][j]);
  }
};

template <int DT, int BM, int BN, int BK, int WM, int WN, bool MMA, bool AK>
using GemmTile = typename Pick<MMA, MmaTile<DT, BM, BN, BK, WM, WN, AK>,
                               SimtTile<DT, BM, BN, BK, WM * WN * 32, AK>>::type;

// ---- forward epilogue: tile row r goes to output row rows[r] (-1: none), columns n0 + n ----
template <int DT>
struct RowStore {
  using T = typename Num<DT>::T;
  T* out;
  const int* rows;
  int n0, ncols;

  __device__ __forceinline__ void one(int r, int n, float v) const {
    const int row = rows[r], c = n0 + n;
    if (row >= 0 && c < ncols) out[(long long)row * ncols + c] = Num<DT>::store(v);
  }

  __device__ __forceinline__ void pair(int r, int n, float v0, float v1) const {
    const int row = rows[r], c = n0 + n;  // c is even
    if (row < 0 || c >= ncols) return;
    T* p = out + (long long)row * ncols + c;
    if ((ncols & 1) == 0) {  // c + 1 < ncols and p is aligned for a two-element store
      if constexpr (DT == 0) {
        F2 f;
        f.x = v0;
        f.y = v1;
        *reinterpret_cast<F2*>(p) = f;
      } else {
        *reinterpret_cast<unsigned*>(p) = (unsigned)Num<DT>::store(v0) | ((unsigned)Num<DT>::store(v1) << 16);
      }
    } else {
      p[0] = Num<DT>::store(v0);
      if (c + 1 < ncols) p[1] = Num<DT>::store(v1);
    }
  }
};

constexpr int KC = 32;  // kernel offsets staged in shared memory at a time by the forward kernel

// out[rows] = sum_k x[nbr[row, k]] @ w[k]. One block per (BM output rows, BN output channels): it stages the
// neighbour indices of its rows, skips offsets none of its rows has, and writes each output element once.
// nbr is [n_out, kvol] in block order (mask-sorted or not); order[m] is the output row of block row m (null:
// identity). Grid: 1-D, ceil(n_out/BM) * ceil(c_out/BN) blocks, channel tiles fastest.
template <int DT, int BM, int BN, int BK, int WM, int WN, int STAGES, int VA, int VB, bool MMA>
__global__ void __launch_bounds__(WM* WN * 32)
    ws_conv_fwd(const typename Num<DT>::T* __restrict__ x, const typename Num<DT>::T* __restrict__ w,
                typename Num<DT>::T* __restrict__ out, const int* __restrict__ nbr, const int* __restrict__ order,
                int n_out, int kvol, int c_in, int c_out) {
  using T = typename Num<DT>::T;
  constexpr int NT = WM * WN * 32;
  constexpr int LDA = BK + 16 / (int)sizeof(T), LDB = BN + 8;
  constexpr int A_ELEMS = BM * LDA, B_ELEMS = BK * LDB;
  constexpr int NBS = BM + 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);
  T* Bs = As + STAGES * A_ELEMS;
  __shared__ int nbr_s[KC * NBS];
  __shared__ int rows_s[BM];
  __shared__ int act_s[KC];
  __shared__ int flag_s[KC];
  __shared__ int n_act_s;

  const int tid = threadIdx.x;
  const int n_tiles = (c_out + BN - 1) / BN;
  const int n0 = (int)(blockIdx.x % n_tiles) * BN;
  const int m0 = (int)(blockIdx.x / n_tiles) * BM;
  for (int r = tid; r < BM; r += NT) {
    const int m = m0 + r;
    rows_s[r] = m < n_out ? (order != nullptr ? order[m] : m) : -1;
  }
  GemmTile<DT, BM, BN, BK, WM, WN, MMA, false> tile;
  tile.zero();
  const int csteps = (c_in + BK - 1) / BK;

  for (int kc0 = 0; kc0 < kvol; kc0 += KC) {
    const int kcn = imin(KC, kvol - kc0);
    __syncthreads();
    if (tid < KC) flag_s[tid] = 0;
    __syncthreads();
    for (int i = tid; i < BM * KC; i += NT) {
      const int r = i / KC, j = i % KC;
      int v = -1;
      if (j < kcn && m0 + r < n_out) v = nbr[(long long)(m0 + r) * kvol + kc0 + j];
      nbr_s[j * NBS + r] = v;
      if (v >= 0) flag_s[j] = 1;
    }
    __syncthreads();
    if (tid < 32) {  // compact the offsets present in this block's rows
      const bool f = flag_s[tid] != 0;
      const unsigned bal = __ballot_sync(0xffffffffu, f);
      if (f) act_s[__popc(bal & ((1u << tid) - 1u))] = tid;
      if (tid == 0) n_act_s = __popc(bal);
    }
    __syncthreads();
    const int nsteps = n_act_s * csteps;
    auto load = [&](int stage, int step) {
      const int j = act_s[step / csteps];
      const int c0 = (step % csteps) * BK;
      const int* nb = nbr_s + j * NBS;
      const T* wk = w + (long long)(kc0 + j) * c_in * c_out;
      load_tile<T, BM, BK, VA, NT>(
          As + stage * A_ELEMS, LDA,
          [&](int r) -> const T* {
            const int idx = nb[r];
            return idx >= 0 ? x + (long long)idx * c_in : nullptr;
          },
          c0, c_in, x, tid);
      load_tile<T, BK, BN, VB, NT>(
          Bs + stage * B_ELEMS, LDB,
          [&](int r) -> const T* { return c0 + r < c_in ? wk + (long long)(c0 + r) * c_out : nullptr; }, n0,
          c_out, w, tid);
    };
    auto compute = [&](int stage) { tile.step(As + stage * A_ELEMS, LDA, Bs + stage * B_ELEMS, LDB, tid); };
    pipeline<STAGES>(nsteps, load, compute);
  }
  __syncthreads();  // rows_s is complete even when no chunk ran
  tile.store(RowStore<DT>{out, rows_s, n0, c_out}, tid);
}

// ---- weight-gradient epilogue: element (m0 + r, n0 + n) of a [c_in, c_out] slice at out + base ----
// mode 0: store in the storage type; 1: store fp32 (a split's partial sums); 2: atomically add fp32.
template <int DT>
struct SliceStore {
  void* out;
  long long base;
  int m0, n0, rows, cols, mode;

  __device__ __forceinline__ void one(int r, int n, float v) const {
    const int row = m0 + r, c = n0 + n;
    if (row >= rows || c >= cols) return;
    const long long off = base + (long long)row * cols + c;
    if (mode == 0) {
      static_cast<typename Num<DT>::T*>(out)[off] = Num<DT>::store(v);
    } else if (mode == 1) {
      static_cast<float*>(out)[off] = v;
    } else {
      atomicAdd(static_cast<float*>(out) + off, v);
    }
  }

  __device__ __forceinline__ void pair(int r, int n, float v0, float v1) const {
    one(r, n, v0);
    one(r, n + 1, v1);
  }
};

// dW[k] = x[in_idx[p]]^T @ dy[out_idx[p]] over the pairs p of offset k (bounds[k] .. bounds[k+1]).
// Block (tile, k, s) reduces the s-th of `splits` equal shares of those pairs into a BM x BN tile of dW[k];
// mode 0 writes dW (splits == 1), 1 writes partial sums to out[s] (reduced later), 2 adds atomically.
// Grid: 1-D, tiles * kvol * splits blocks.
template <int DT, int BM, int BN, int BK, int WM, int WN, int STAGES, int VA, int VB, bool MMA>
__global__ void __launch_bounds__(WM* WN * 32)
    ws_conv_wgrad(const typename Num<DT>::T* __restrict__ x, const typename Num<DT>::T* __restrict__ dy, void* out,
                  const int* __restrict__ in_idx, const int* __restrict__ out_idx,
                  const long long* __restrict__ bounds, int kvol, int c_in, int c_out, int splits, int mode) {
  using T = typename Num<DT>::T;
  constexpr int NT = WM * WN * 32;
  constexpr int LDA = BM + 8, LDB = BN + 8;
  constexpr int A_ELEMS = BK * LDA, B_ELEMS = BK * LDB;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);
  T* Bs = As + STAGES * A_ELEMS;

  const int tid = threadIdx.x;
  const int n_tiles = (c_out + BN - 1) / BN, m_tiles = (c_in + BM - 1) / BM;
  const int tile_id = (int)(blockIdx.x % (unsigned)(n_tiles * m_tiles));
  const int ks = (int)(blockIdx.x / (unsigned)(n_tiles * m_tiles));
  const int k = ks / splits, s = ks % splits;
  const int n0 = (tile_id % n_tiles) * BN, m0 = (tile_id / n_tiles) * BM;

  const long long beg = bounds[k], end = bounds[k + 1];
  const long long share = ((end - beg + splits - 1) / splits + BK - 1) / BK * BK;
  const long long pb = beg + s * share;
  const long long pe = imin(end, pb + share);
  const int nsteps = pe > pb ? (int)((pe - pb + BK - 1) / BK) : 0;

  GemmTile<DT, BM, BN, BK, WM, WN, MMA, true> tile;
  tile.zero();
  auto load = [&](int stage, int step) {
    const long long p0 = pb + (long long)step * BK;
    load_tile<T, BK, BM, VA, NT>(
        As + stage * A_ELEMS, LDA,
        [&](int r) -> const T* { return p0 + r < pe ? x + (long long)in_idx[p0 + r] * c_in : nullptr; }, m0, c_in,
        x, tid);
    load_tile<T, BK, BN, VB, NT>(
        Bs + stage * B_ELEMS, LDB,
        [&](int r) -> const T* { return p0 + r < pe ? dy + (long long)out_idx[p0 + r] * c_out : nullptr; }, n0,
        c_out, dy, tid);
  };
  auto compute = [&](int stage) { tile.step(As + stage * A_ELEMS, LDA, Bs + stage * B_ELEMS, LDB, tid); };
  pipeline<STAGES>(nsteps, load, compute);
  if (mode == 2 && nsteps == 0) return;
  const long long slice = (long long)c_in * c_out;
  const long long base = (mode == 1 ? (long long)s * kvol + k : (long long)k) * slice;
  tile.store(SliceStore<DT>{out, base, m0, n0, c_in, c_out, mode}, tid);
}

}  // namespace wsk
