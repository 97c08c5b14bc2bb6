// Depthwise sparse convolution: per-channel products over the neighbour table (forward, and the input
// gradient over the reversed map) and over per-offset pair lists (weight gradient). Needs common.cuh.
// VEC channels per thread, loaded as one vector; VEC divides the channel count and the pointers align.

namespace wsk {

// out[row, c] = sum_k x[nbr[row, k], c] * w[k, c]; one thread per (row, VEC channels), one write each.
template <int DT, int VEC>
__global__ void ws_dw_fwd(const typename Num<DT>::T* __restrict__ x, const typename Num<DT>::T* __restrict__ w,
                          typename Num<DT>::T* __restrict__ out, const int* __restrict__ nbr, long long n_rows,
                          int kvol, int c) {
  using T = typename Num<DT>::T;
  using V = Vec<T, VEC>;
  const int groups = c / VEC;
  const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long row = gid / groups;
  if (row >= n_rows) return;
  const int c0 = (int)(gid % groups) * VEC;
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  const int* nr = nbr + row * kvol;
  for (int k = 0; k < kvol; ++k) {
    const int idx = nr[k];
    if (idx < 0) continue;
    const V xv = *reinterpret_cast<const V*>(x + (long long)idx * c + c0);
    const V wv = *reinterpret_cast<const V*>(w + (long long)k * c + c0);
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = __fmaf_rn(Num<DT>::load(xv.v[i]), Num<DT>::load(wv.v[i]), acc[i]);
  }
  V o;
#pragma unroll
  for (int i = 0; i < VEC; ++i) o.v[i] = Num<DT>::store(acc[i]);
  *reinterpret_cast<V*>(out + row * c + c0) = o;
}

// dW[k, c] = sum over pairs p of offset k of x[in_idx[p], c] * dy[out_idx[p], c]. Block (channel group, k, s)
// takes the s-th of `splits` shares of the pairs with TY threads per channel vector, then reduces them in
// shared memory in a fixed order. mode 0 writes dW (splits == 1), 1 writes fp32 partial sums to out[s].
template <int DT, int VEC, int TXC, int TY>
__global__ void __launch_bounds__(TXC* TY)
    ws_dw_wgrad(const typename Num<DT>::T* __restrict__ x, const typename Num<DT>::T* __restrict__ dy, void* out,
                const int* __restrict__ in_idx, const int* __restrict__ out_idx,
                const long long* __restrict__ bounds, int kvol, int c, int splits, int mode) {
  using T = typename Num<DT>::T;
  using V = Vec<T, VEC>;
  static_assert((TY & (TY - 1)) == 0, "TY must be a power of two");
  __shared__ float red[TY][TXC * VEC];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int k = blockIdx.y, s = blockIdx.z;
  const int c0 = (blockIdx.x * TXC + tx) * VEC;
  const bool active = c0 < c;
  const long long beg = bounds[k], end = bounds[k + 1];
  const long long share = (end - beg + splits - 1) / splits;
  const long long pb = beg + s * share;
  const long long pe = imin(end, pb + share);
  float acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
  if (active) {
    for (long long p = pb + ty; p < pe; p += TY) {
      const V xv = *reinterpret_cast<const V*>(x + (long long)in_idx[p] * c + c0);
      const V gv = *reinterpret_cast<const V*>(dy + (long long)out_idx[p] * c + c0);
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = __fmaf_rn(Num<DT>::load(xv.v[i]), Num<DT>::load(gv.v[i]), acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < VEC; ++i) red[ty][tx * VEC + i] = acc[i];
  __syncthreads();
#pragma unroll
  for (int h = TY / 2; h > 0; h >>= 1) {
    if (ty < h) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) red[ty][tx * VEC + i] += red[ty + h][tx * VEC + i];
    }
    __syncthreads();
  }
  if (ty != 0 || !active) return;
  if (mode == 0) {
    V o;
#pragma unroll
    for (int i = 0; i < VEC; ++i) o.v[i] = Num<DT>::store(red[0][tx * VEC + i]);
    *reinterpret_cast<V*>(static_cast<T*>(out) + (long long)k * c + c0) = o;
  } else {
    float* ws = static_cast<float*>(out) + ((long long)s * kvol + k) * c + c0;
#pragma unroll
    for (int i = 0; i < VEC; ++i) ws[i] = red[0][tx * VEC + i];
  }
}

}  // namespace wsk
