// Token sampling on the GPU (ops.h: SampleRows), the twin of
// kernels/cpu/sample.cc's ApplyPenalties + DrawToken + LogSoftmaxAt.
//
// One block of 1024 threads per draw; the row stays in global memory (L2).
// The kept set of the CPU rule (a prefix of the logits in descending order,
// ties by id) is found without sorting: a prefix of length m is the elements
// whose order key is above the m-th largest key theta, plus the q lowest-id
// elements equal to it. theta comes from a bitwise radix select (32 passes of
// a block-wide count, or of a block-wide mass for top_p); the draw then walks
// the kept elements in id order, each thread a contiguous segment, with a
// block-wide exclusive scan of the segments' masses.
#include <cfloat>
#include <climits>

#include "kernels/cuda/ops.h"

namespace gdnserve::cuda {
namespace {

constexpr int kThreads = 1024;  // 32 warps: the block reductions below read 32 partials
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Order-preserving map of float to uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t Key(float x) {
  if (x == 0.0f) x = 0.0f;  // -0 and +0 are one value (a tie), as on the CPU
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float Unkey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Block-wide sum; every thread gets the same value (same order everywhere).
template <typename T>
__device__ T BlockSum(T v, T* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  T r = 0;
#pragma unroll
  for (int i = 0; i < 32; ++i) r += sh[i];
  __syncthreads();
  return r;
}

template <typename T>
__device__ T BlockMax(T v, T* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  T r = sh[0];
#pragma unroll
  for (int i = 1; i < 32; ++i) r = max(r, sh[i]);
  __syncthreads();
  return r;
}

// The largest value, first index on ties; index INT_MAX marks a thread with
// no element (it never wins, even against -inf).
__device__ __forceinline__ bool Better(float ov, int oi, float v, int i) {
  return oi != INT_MAX && (i == INT_MAX || ov > v || (ov == v && oi < i));
}
__device__ void BlockArgmax(float& v, int& i, float* shv, int* shi) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFull, v, o);
    const int oi = __shfl_xor_sync(kFull, i, o);
    if (Better(ov, oi, v, i)) v = ov, i = oi;
  }
  if (threadIdx.x % 32 == 0) shv[threadIdx.x / 32] = v, shi[threadIdx.x / 32] = i;
  __syncthreads();
  v = shv[0], i = shi[0];
  for (int w = 1; w < 32; ++w) {
    if (Better(shv[w], shi[w], v, i)) v = shv[w], i = shi[w];
  }
  __syncthreads();
}

// Exclusive scan in thread order; *total gets the block's sum.
template <typename T>
__device__ T BlockExclusiveScan(T v, T* sh, T* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(kFull, inc, o);
    if (lane >= o) inc += y;
  }
  T ex = __shfl_up_sync(kFull, inc, 1);
  if (lane == 0) ex = 0;
  if (lane == 31) sh[warp] = inc;
  __syncthreads();
  T base = 0, tot = 0;
  for (int w = 0; w < 32; ++w) {
    if (w < warp) base += sh[w];
    tot += sh[w];
  }
  __syncthreads();
  *total = tot;
  return base + ex;
}

struct Row {
  const float* x;  // penalized logits
  int64_t n;
  float mx, inv_t;
  __device__ float W(float v) const { return expf((v - mx) * inv_t); }
};

__device__ int64_t CountGe(const Row& r, uint32_t key, int* shi) {
  int c = 0;
  for (int64_t i = threadIdx.x; i < r.n; i += kThreads) c += Key(r.x[i]) >= key;
  return BlockSum(c, shi);
}

__device__ double MassGe(const Row& r, uint32_t key, double* shd) {
  double m = 0.0;
  for (int64_t i = threadIdx.x; i < r.n; i += kThreads) {
    const float v = r.x[i];
    if (Key(v) >= key) m += r.W(v);
  }
  return BlockSum(m, shd);
}

// The key of the m-th largest element (1 <= m <= n).
__device__ uint32_t SelectCount(const Row& r, int64_t m, int* shi) {
  uint32_t kappa = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t c = kappa | (1u << bit);
    if (CountGe(r, c, shi) >= m) kappa = c;
  }
  return kappa;
}

__device__ int64_t CountGt(const Row& r, uint32_t key, int* shi) {
  return key == 0xffffffffu ? 0 : CountGe(r, key + 1, shi);
}
__device__ double MassGt(const Row& r, uint32_t key, double* shd) {
  return key == 0xffffffffu ? 0.0 : MassGe(r, key + 1, shd);
}

__global__ void __launch_bounds__(kThreads) SampleKernel(const float* __restrict__ logits, int64_t n,
                                                          const DrawSpec* __restrict__ specs,
                                                          const int32_t* __restrict__ lists, float* work,
                                                          int32_t* out_token, float* out_logprob) {
  __shared__ double shd[32];
  __shared__ float shf[32];
  __shared__ int shi[32];
  __shared__ int chosen;
  const DrawSpec sp = specs[blockIdx.x];
  const float* raw = logits + static_cast<int64_t>(sp.row) * n;
  const int tid = threadIdx.x;

  // Penalties into this draw's work row (kernels/cpu/sample.cc's order).
  const float* x = raw;
  const bool counted = sp.num_counted > 0 && (sp.presence != 0.0f || sp.frequency != 0.0f);
  if (sp.repetition != 1.0f || counted) {
    float* w = work + static_cast<int64_t>(blockIdx.x) * n;
    for (int64_t i = tid; i < n; i += kThreads) w[i] = raw[i];
    __syncthreads();
    if (sp.repetition != 1.0f) {
      for (int j = tid; j < sp.num_repeated; j += kThreads) {
        const int32_t t = lists[sp.repeated_begin + j];
        if (t >= 0 && t < n) w[t] = w[t] > 0 ? w[t] / sp.repetition : w[t] * sp.repetition;
      }
      __syncthreads();
    }
    if (counted) {
      for (int j = tid; j < sp.num_counted; j += kThreads) {
        const int32_t t = lists[sp.counted_begin + j];
        const int32_t c = lists[sp.counted_begin + sp.num_counted + j];
        if (t >= 0 && t < n) w[t] = __fsub_rn(w[t], __fadd_rn(__fmul_rn(sp.frequency, static_cast<float>(c)), sp.presence));
      }
      __syncthreads();
    }
    x = w;
  }

  // Maximum (first on ties) of x; log-sum-exp of the raw logits.
  float mx = -FLT_MAX, rmx = -FLT_MAX;
  int arg = INT_MAX;
  for (int64_t i = tid; i < n; i += kThreads) {
    const float v = x[i];
    if (v > mx || arg == INT_MAX) mx = v, arg = static_cast<int>(i);
    rmx = fmaxf(rmx, raw[i]);
  }
  BlockArgmax(mx, arg, shf, shi);
  rmx = BlockMax(rmx, shf);
  double rs = 0.0;
  for (int64_t i = tid; i < n; i += kThreads) rs += exp(static_cast<double>(raw[i]) - rmx);
  rs = BlockSum(rs, shd);

  int token = arg;
  if (sp.temperature != 0.0f) {
    const Row r{x, n, mx, fminf(1.0f / sp.temperature, FLT_MAX)};  // a tiny temperature: the argmax
    const bool cut_k = sp.top_k > 0 && sp.top_k < n;
    uint32_t theta = 0;
    int64_t q = INT64_MAX;  // ties at theta kept (lowest ids first)
    if (cut_k || sp.top_p < 1.0f || sp.min_p > 0.0f) {
      // top_k: the prefix of length k.
      int64_t m = n;
      uint32_t th_k = 0;
      int64_t q_k = INT64_MAX;
      double mass_k;
      if (cut_k) {
        th_k = SelectCount(r, sp.top_k, shi);
        q_k = sp.top_k - CountGt(r, th_k, shi);
        mass_k = MassGt(r, th_k, shd) + static_cast<double>(q_k) * r.W(Unkey(th_k));
        m = sp.top_k;
        theta = th_k, q = q_k;
      } else {
        mass_k = MassGe(r, 0, shd);
      }
      // top_p: the shortest prefix (within the top_k) whose mass reaches top_p.
      if (sp.top_p < 1.0f) {
        const double tau = static_cast<double>(sp.top_p) * mass_k;
        uint32_t kappa = 0;
        for (int bit = 31; bit >= 0; --bit) {
          const uint32_t c = kappa | (1u << bit);
          if (MassGe(r, c, shd) >= tau) kappa = c;
        }
        const uint32_t th_p = max(kappa, th_k);
        const double above = MassGt(r, th_p, shd);
        const int64_t gt = CountGt(r, th_p, shi);
        int64_t ties = CountGe(r, th_p, shi) - gt;
        if (cut_k && th_p == th_k) ties = Min64(ties, q_k);
        const double w = r.W(Unkey(th_p));
        int64_t q_p = ties;
        if (w > 0.0) q_p = Min64(ties, Max64(1, static_cast<int64_t>(ceil((tau - above) / w))));
        if (gt + q_p < m) m = gt + q_p, theta = th_p, q = q_p;
      }
      // min_p: weights >= min_p (the top weight is 1), at least one token.
      if (sp.min_p > 0.0f) {
        int c = 0;
        for (int64_t i = tid; i < n; i += kThreads) c += r.W(x[i]) >= sp.min_p;
        const int64_t m_min = Max64(1, BlockSum(c, shi));
        if (m_min < m) {
          m = m_min;
          theta = SelectCount(r, m, shi);
          q = m - CountGt(r, theta, shi);
        }
      }
    }

    // Inverse CDF over the kept elements in id order.
    const int64_t seg = (n + kThreads - 1) / kThreads;
    const int64_t b = Min64(n, tid * seg), e = Min64(n, b + seg);
    int64_t rank = 0;  // ties at theta before this segment
    if (q != INT64_MAX) {
      int t = 0;
      for (int64_t i = b; i < e; ++i) t += Key(x[i]) == theta;
      int total_ties;
      rank = BlockExclusiveScan(t, shi, &total_ties);
    }
    auto kept = [&](float v, int64_t& rk) {
      const uint32_t k = Key(v);
      return k > theta || (k == theta && rk++ < q);
    };
    double my = 0.0;
    int last = -1;
    int64_t rk = rank;
    for (int64_t i = b; i < e; ++i) {
      if (kept(x[i], rk)) my += r.W(x[i]), last = static_cast<int>(i);
    }
    double total;
    const double pre = BlockExclusiveScan(my, shd, &total);
    last = BlockMax(last, shi);
    if (tid == 0) chosen = INT_MAX;
    __syncthreads();
    const double target = sp.uniform * total;
    if (my > 0.0 && pre <= target && target < pre + my) {
      double acc = pre;
      rk = rank;
      int found = -1;
      for (int64_t i = b; i < e; ++i) {
        if (!kept(x[i], rk)) continue;
        acc += r.W(x[i]);
        found = static_cast<int>(i);
        if (target < acc) break;
      }
      atomicMin(&chosen, found);
    }
    __syncthreads();
    token = chosen != INT_MAX ? chosen : last;
  }
  if (token < 0 || token >= n) token = arg;  // nothing kept (top_p <= 0 is refused upstream)
  if (token < 0 || token >= n) token = 0;
  if (tid == 0) {
    out_token[blockIdx.x] = token;
    out_logprob[blockIdx.x] = static_cast<float>(static_cast<double>(raw[token]) - rmx - log(rs));
  }
}

}  // namespace

cudaError_t SampleRows(const float* logits, int64_t vocab, const DrawSpec* specs, int num_draws,
                       const int32_t* lists, float* work, int32_t* out_token, float* out_logprob,
                       cudaStream_t stream) {
  if (num_draws == 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT_MAX || num_draws < 0) return cudaErrorInvalidValue;
  SampleKernel<<<num_draws, kThreads, 0, stream>>>(logits, vocab, specs, lists, work, out_token, out_logprob);
  return cudaGetLastError();
}

}  // namespace gdnserve::cuda
