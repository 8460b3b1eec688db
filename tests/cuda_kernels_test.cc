// Each CUDA kernel of kernels/cuda/ops.h against its CPU twin (kernels/cpu)
// on fresh random inputs: packed variable-length batches, several head shapes,
// extreme gates. Skips cleanly without a GPU.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/cpu/gdn2.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/sample.h"
#include "kernels/cuda/ops.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

using testing::RelErr;

using testing::HaveGpu;

#define SKIP_WITHOUT_GPU() \
  if (!HaveGpu()) { GTEST_SKIP() << "no CUDA device"; }

// A device copy of a host vector, freed at scope exit.
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(1, n_) * sizeof(T)), cudaSuccess);
    if (n_) {
      EXPECT_EQ(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit Dev(size_t n) : Dev(std::vector<T>(n)) {}
  ~Dev() { cudaFree(p_); }
  T* get() const { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// bf16 on the host, with cuda_bf16.h's conversions: values rounded to bf16
// (still float), their bit patterns, and bit patterns back to floats.
void RoundBf16(std::vector<float>& v) {
  for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(x));
}
std::vector<uint16_t> Bf16Bits(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const __nv_bfloat16 b = __float2bfloat16_rn(v[i]);
    std::memcpy(&h[i], &b, 2);
  }
  return h;
}
float FromBf16Bits(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

class CudaKernelTest : public ::testing::Test {
 protected:
  void SetUp() override { rng_.seed(testing::TestSeed()); }
  std::vector<float> Normal(size_t n, float scale = 1.0f, float mean = 0.0f) {
    std::normal_distribution<float> d(mean, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng_);
    return v;
  }
  std::mt19937_64 rng_;
};

// Host and device descriptions of a packed batch with the given piece lengths,
// pieces in slots slot_of[i] of a pool of `num_slots`.
struct Batch {
  std::vector<int32_t> start, slot, token_piece;
  int64_t T = 0;
  Batch(const std::vector<int>& lengths, const std::vector<int>& slots) : slot(slots) {
    start.push_back(0);
    for (size_t p = 0; p < lengths.size(); ++p) {
      for (int j = 0; j < lengths[p]; ++j) token_piece.push_back(static_cast<int32_t>(p));
      start.push_back(start.back() + lengths[p]);
    }
    T = start.back();
  }
};

struct DevBatch {
  Dev<int32_t> start, slot, token_piece;
  cuda::DevicePieces pieces;
  explicit DevBatch(const Batch& b) : start(b.start), slot(b.slot), token_piece(b.token_piece) {
    pieces.start = start.get();
    pieces.slot = slot.get();
    pieces.token_piece = token_piece.get();
    pieces.num_pieces = static_cast<int>(b.slot.size());
    pieces.num_tokens = b.T;
  }
};

// `count` distinct slots of a pool of `num_slots`, in random order (a shared
// slot would race on the GPU).
std::vector<int> ScatteredSlots(int count, int num_slots, std::mt19937_64& rng) {
  std::vector<int> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(count);
  return slots;
}

struct Shape {
  int H, HV, K, V;
};

using Gdn2Kernel = cudaError_t (*)(const cuda::Gdn2RecurrentArgs&, cudaStream_t);

// A GDN-2 kernel (gates and norms fused) vs the CPU ops + Gdn2RecurrentHead,
// outputs and final states, float32 throughout; every piece, or a listed
// subset (the others' slots must stay untouched).
// aligned: slots at 16-byte boundaries (the backend's layout for K % 4 == 0,
// which takes the kernels' vector state path) and q/k rows padded to a
// multiple of 4 (the chunk kernel's 4-element loads where K and V allow);
// else offset by odd amounts.
// heavy_runs: in each piece, tokens [5, 53) of every 64 saturate the decay (log
// decay about -100 each) and the others barely decay (about -0.1): nearby light
// tokens after a heavy run have large, nearly equal cumulative decays.
void CheckGdn2Kernel(Gdn2Kernel kernel, const std::vector<Shape>& shapes, const std::vector<int>& lengths,
                     bool use_list, std::mt19937_64& rng, bool aligned = false, int rows_per_warp = 0,
                     double tol = 1e-4, bool bf16_inputs = false, bool heavy_runs = false, bool bf16_io = false) {
  // bf16 inputs: every input rounded to bf16 first (the kernel and its twin see the same values).
  // bf16_io: also handed to the kernel as bf16, its output bf16 (Gdn2RecurrentArgs::io).
  auto Normal = [&](size_t n, float scale = 1.0f, float mean = 0.0f) {
    std::normal_distribution<float> d(mean, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  };
  for (const Shape& sh : shapes) {
    for (const bool extreme : {false, true}) {
      for (const bool neg : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "H=" << sh.H << " HV=" << sh.HV << " K=" << sh.K << " V=" << sh.V
                                          << " extreme=" << extreme << " neg=" << neg);
        const int P = static_cast<int>(lengths.size());
        const int num_slots = P + 3;
        const std::vector<int> slots = ScatteredSlots(P, num_slots, rng);
        Batch b(lengths, slots);
        const int64_t T = b.T, key_dim = sh.H * sh.K, value_dim = sh.HV * sh.V;
        const int64_t qk_stride = 2 * key_dim + (aligned ? 4 : 3);  // padded rows, like the packed qkv buffer
        std::vector<float> qk = Normal(T * qk_stride);
        std::vector<float> v = Normal(T * value_dim);
        std::vector<float> g = Normal(T * key_dim, extreme ? 4.0f : 1.0f);
        std::vector<float> bb = Normal(T * key_dim, extreme ? 8.0f : 1.0f);
        std::vector<float> w = Normal(T * value_dim, extreme ? 8.0f : 1.0f);
        std::vector<float> a_log = Normal(sh.H, 0.5f, extreme ? std::log(50.0f) : 0.0f);
        std::vector<float> dt_bias = Normal(key_dim, 0.5f, extreme ? 1.0f : -2.0f);
        if (heavy_runs) {  // -50 softplus(g): g ~ 2 gives about -106, g ~ -7 about -0.05
          std::fill(a_log.begin(), a_log.end(), std::log(50.0f));
          std::fill(dt_bias.begin(), dt_bias.end(), 0.0f);
          for (int p = 0; p < static_cast<int>(lengths.size()); ++p) {
            for (int64_t t = b.start[p]; t < b.start[p + 1]; ++t) {
              const int64_t j = (t - b.start[p]) % 64;
              const bool heavy = j >= 5 && j < 53;
              for (int64_t c = 0; c < key_dim; ++c) {
                float& x = g[t * key_dim + c];
                x = heavy ? 2.0f + 0.1f * x : -7.0f + 0.5f * x;
              }
            }
          }
        }
        if (bf16_inputs || bf16_io) {
          for (auto* x : {&qk, &v, &g, &bb, &w}) RoundBf16(*x);
        }
        // Slot pool: recurrent states of one layer at offset 5 of a padded slot.
        const int64_t rec = static_cast<int64_t>(sh.HV) * sh.V * sh.K;
        const int64_t slot_stride = aligned ? rec + 8 : rec + 11;
        const int64_t offset = aligned ? 4 : 5;
        std::vector<float> pool = Normal(num_slots * slot_stride, 0.3f);

        cuda::Gdn2RecurrentArgs a;
        Dev<float> d_qk(qk), d_v(v), d_g(g), d_b(bb), d_w(w), d_alog(a_log), d_dtb(dt_bias), d_pool(pool);
        Dev<float> d_out(T * value_dim);
        auto bits = [&](const std::vector<float>& x) { return bf16_io ? Bf16Bits(x) : std::vector<uint16_t>{}; };
        Dev<uint16_t> bf_qk(bits(qk)), bf_v(bits(v)), bf_g(bits(g)), bf_b(bits(bb)), bf_w(bits(w));
        Dev<uint16_t> bf_out(bf16_io ? T * value_dim : 0);
        DevBatch db(b);
        a.q = d_qk.get();
        a.k = d_qk.get() + key_dim;
        a.qk_stride = qk_stride;
        a.v = d_v.get();
        a.v_stride = value_dim;
        a.g = d_g.get();
        a.g_stride = key_dim;
        a.b = d_b.get();
        a.b_stride = key_dim;
        a.w = d_w.get();
        a.w_stride = value_dim;
        a.a_log = d_alog.get();
        a.dt_bias = d_dtb.get();
        a.allow_neg_eigval = neg;
        a.scale = 1.0f / std::sqrt(static_cast<float>(sh.K));
        a.H = sh.H;
        a.HV = sh.HV;
        a.K = sh.K;
        a.V = sh.V;
        a.state = {d_pool.get(), slot_stride, offset, 0};
        a.pieces = db.pieces;
        a.out = d_out.get();
        a.out_stride = value_dim;
        a.max_len = *std::max_element(lengths.begin(), lengths.end());
        a.rows_per_warp = rows_per_warp;
        if (bf16_io) {  // the same fields, pointing at bf16 arrays
          auto as_f = [](const uint16_t* p) { return reinterpret_cast<const float*>(p); };
          a.io = cuda::DType::kBF16;
          a.q = as_f(bf_qk.get());
          a.k = as_f(bf_qk.get() + key_dim);
          a.v = as_f(bf_v.get());
          a.g = as_f(bf_g.get());
          a.b = as_f(bf_b.get());
          a.w = as_f(bf_w.get());
          a.out = reinterpret_cast<float*>(bf_out.get());
        }
        // With a list: every other piece, in reverse order.
        std::vector<int32_t> list;
        for (int p = P - 1; p >= 0; p -= 2) list.push_back(p);
        Dev<int32_t> d_list(list);
        if (use_list) {
          a.piece_list = d_list.get();
          a.num_listed = static_cast<int>(list.size());
        }
        ASSERT_EQ(kernel(a, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

        // CPU twin.
        std::vector<float> q(T * key_dim), k(T * key_dim);
        for (int64_t t = 0; t < T; ++t) {
          std::memcpy(&q[t * key_dim], &qk[t * qk_stride], key_dim * 4);
          std::memcpy(&k[t * key_dim], &qk[t * qk_stride + key_dim], key_dim * 4);
        }
        cpu::L2NormHeads(q.data(), T, sh.H, sh.K, a.scale);
        cpu::L2NormHeads(k.data(), T, sh.H, sh.K, 1.0f);
        std::vector<float> gc = g, bc = bb, wc = w;
        cpu::Gdn2Gates(gc.data(), bc.data(), T, sh.H, sh.K, a_log.data(), dt_bias.data(), neg, wc.data(), value_dim);
        std::vector<float> want_pool = pool, want_out(T * value_dim);
        const int group = sh.HV / sh.H;
        for (int p = 0; p < P; ++p) {
          if (use_list && std::find(list.begin(), list.end(), p) == list.end()) continue;
          const int64_t t0 = b.start[p], n = lengths[p];
          for (int hv = 0; hv < sh.HV; ++hv) {
            const int hk = hv / group;
            cpu::Gdn2HeadInputs in{&q[t0 * key_dim + hk * sh.K], &k[t0 * key_dim + hk * sh.K],
                                   &gc[t0 * key_dim + hk * sh.K], &bc[t0 * key_dim + hk * sh.K],
                                   &v[t0 * value_dim + hv * sh.V], &wc[t0 * value_dim + hv * sh.V],
                                   key_dim, key_dim, key_dim, key_dim, value_dim, value_dim};
            cpu::Gdn2RecurrentHead(in, n, sh.K, sh.V, &want_pool[slots[p] * slot_stride + offset + hv * sh.V * sh.K],
                                   &want_out[t0 * value_dim + hv * sh.V], value_dim);
          }
        }
        std::vector<float> got_out = d_out.host();
        if (bf16_io) {
          const std::vector<uint16_t> o = bf_out.host();
          for (size_t i = 0; i < o.size(); ++i) got_out[i] = FromBf16Bits(o[i]);
        }
        if (use_list) {  // rows of unlisted pieces are not written: compare listed rows only
          for (int p = 0; p < P; ++p) {
            if (std::find(list.begin(), list.end(), p) != list.end()) continue;
            for (int64_t t = b.start[p]; t < b.start[p + 1]; ++t) {
              std::fill_n(&got_out[t * value_dim], value_dim, 0.0f);
              std::fill_n(&want_out[t * value_dim], value_dim, 0.0f);
            }
          }
        }
        EXPECT_LE(RelErr(got_out, want_out), tol);
        if (heavy_runs) {  // the light tokens right after a saturated run, on their own
          std::vector<float> got_tail, want_tail;
          for (int p = 0; p < P; ++p) {
            for (int64_t t = b.start[p]; t < b.start[p + 1]; ++t) {
              if ((t - b.start[p]) % 64 < 53) continue;
              got_tail.insert(got_tail.end(), &got_out[t * value_dim], &got_out[(t + 1) * value_dim]);
              want_tail.insert(want_tail.end(), &want_out[t * value_dim], &want_out[(t + 1) * value_dim]);
            }
          }
          if (!want_tail.empty()) {
            EXPECT_LE(RelErr(got_tail, want_tail), tol) << "tokens after a saturated run";
          }
        }
        const std::vector<float> got_pool = d_pool.host();
        EXPECT_LE(RelErr(got_pool, want_pool), tol);
        // Slots not run are untouched, bit for bit.
        for (int s = 0; s < num_slots; ++s) {
          const auto it = std::find(slots.begin(), slots.end(), s);
          const bool ran = it != slots.end() &&
                           (!use_list || std::find(list.begin(), list.end(), it - slots.begin()) != list.end());
          if (ran) continue;
          EXPECT_EQ(0, std::memcmp(&got_pool[s * slot_stride], &pool[s * slot_stride], slot_stride * 4)) << s;
        }
      }
    }
  }
}

TEST_F(CudaKernelTest, RecurrentMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{2, 2, 16, 16}, {2, 4, 64, 32}, {4, 4, 128, 128}, {1, 2, 256, 64}, {2, 2, 48, 40}};
  CheckGdn2Kernel(cuda::Gdn2Recurrent, shapes, {1, 15, 16, 17, 63, 64, 65, 130, 1, 1}, false, rng_);
  CheckGdn2Kernel(cuda::Gdn2Recurrent, {{2, 2, 128, 64}}, {64, 200, 17}, false, rng_, true, 0, 1e-4, false, true);
  CheckGdn2Kernel(cuda::Gdn2Recurrent, {{2, 2, 64, 64}}, {1, 1, 1, 1, 1}, false, rng_);  // a decode batch
  CheckGdn2Kernel(cuda::Gdn2Recurrent, {{2, 4, 64, 32}}, {3, 1, 70, 1, 5}, true, rng_);
  // The vector state path (float4 for K 128/256, float2 for K 64), decode and prefill.
  const std::vector<Shape> vec_shapes = {{4, 4, 128, 128}, {2, 2, 64, 64}, {1, 2, 256, 40}};
  CheckGdn2Kernel(cuda::Gdn2Recurrent, vec_shapes, {1, 1, 1, 1, 1, 1}, false, rng_, true);
  CheckGdn2Kernel(cuda::Gdn2Recurrent, vec_shapes, {1, 17, 64, 130}, false, rng_, true);
  // The decode launch variants (2, 4 or 8 state rows a warp).
  for (const int rows : {2, 4, 8}) {
    CheckGdn2Kernel(cuda::Gdn2Recurrent, vec_shapes, {1, 1, 1, 1, 1, 1}, false, rng_, true, rows);
    CheckGdn2Kernel(cuda::Gdn2Recurrent, {{2, 2, 48, 40}, {2, 4, 64, 32}}, {1, 1, 1}, false, rng_, false, rows);
  }
}

// The chunkwise kernel vs the same CPU recurrence: every length edge case
// (1, 15-17, 63-65, several chunks), extreme gates, grouped value heads,
// V not a multiple of the block's tile.
TEST_F(CudaKernelTest, ChunkedMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::Gdn2ChunkSupported(128)) GTEST_SKIP() << "not enough shared memory for the chunk kernel";
  const std::vector<Shape> shapes = {{2, 2, 16, 16}, {2, 4, 64, 32}, {4, 4, 128, 128}, {2, 2, 48, 40}, {1, 1, 128, 72}};
  CheckGdn2Kernel(cuda::Gdn2Chunked, shapes, {1, 15, 16, 17, 63, 64, 65, 130, 200, 2}, false, rng_);
  CheckGdn2Kernel(cuda::Gdn2Chunked, {{2, 4, 64, 32}}, {300, 1, 70, 1, 64}, true, rng_);
  CheckGdn2Kernel(cuda::Gdn2Chunked, {{4, 4, 128, 128}}, {1, 65, 200}, false, rng_, true);
}

// The tensor-core chunkwise kernel with a workspace of its own size.
// kTile: the state columns a phase-2 block carries (0: the kernel's pick).
template <cuda::ChunkMath kMath, int kTile = 0>
cudaError_t ChunkedWYWithWorkspace(const cuda::Gdn2RecurrentArgs& args, cudaStream_t stream) {
  cuda::Gdn2RecurrentArgs a = args;
  a.value_tile = kTile;
  const size_t bytes =
      cuda::Gdn2ChunkedWYWorkspaceBytes(a.pieces.num_tokens, a.pieces.num_pieces, a.H, a.HV, a.K, a.V);
  void* ws = nullptr;
  if (cudaError_t e = cudaMalloc(&ws, bytes); e != cudaSuccess) return e;
  cudaError_t e = cuda::Gdn2ChunkedWY(a, kMath, ws, bytes, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  cudaFree(ws);
  return e;
}

// Same cases as ChunkedMatchesCpu for the tensor-core kernel: split TF32 x 3
// within the float32 bound, plain TF32 on bf16 inputs within issue 6's 2e-3.
TEST_F(CudaKernelTest, ChunkedWYMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!cuda::Gdn2ChunkedWYSupported(128)) GTEST_SKIP() << "not enough shared memory for the chunk kernel";
  const std::vector<Shape> shapes = {{2, 2, 16, 16}, {2, 4, 64, 32}, {4, 4, 128, 128}, {2, 2, 48, 40}, {1, 1, 128, 72}};
  for (const bool tf32 : {false, true}) {
    SCOPED_TRACE(tf32 ? "tf32" : "3 x tf32");
    const auto kernel = tf32 ? ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32>
                             : ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3>;
    const double tol = tf32 ? 2e-3 : 1e-4;
    CheckGdn2Kernel(kernel, shapes, {1, 15, 16, 17, 63, 64, 65, 130, 200, 2}, false, rng_, false, 0, tol, tf32);
    CheckGdn2Kernel(kernel, {{2, 4, 64, 32}}, {300, 1, 70, 1, 64}, true, rng_, false, 0, tol, tf32);
    CheckGdn2Kernel(kernel, {{4, 4, 128, 128}}, {1, 65, 200, 1000}, false, rng_, true, 0, tol, tf32);
    // Runs of saturated decays followed by light ones (G split in two floats).
    CheckGdn2Kernel(kernel, {{2, 2, 128, 64}, {2, 2, 48, 40}}, {64, 200, 17, 130}, false, rng_, true, 0, tol, tf32,
                    true);
  }
  // V not a multiple of 4.
  CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3>, {{1, 2, 64, 30}}, {65, 1, 130}, false, rng_);
  // bf16 inputs and output (Gdn2RecurrentArgs::io), within issue 6's 2e-3 with
  // the output's rounding: 4-element loads (aligned, K and V multiples of 4)
  // and single ones (K 30, V 30, odd strides), saturated runs, a piece list.
  for (const bool tf32 : {false, true}) {
    SCOPED_TRACE(tf32 ? "bf16 io, tf32" : "bf16 io, 3 x tf32");
    const auto kernel = tf32 ? ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32>
                             : ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3>;
    CheckGdn2Kernel(kernel, {{4, 4, 128, 128}, {2, 2, 48, 40}}, {1, 17, 64, 65, 200}, false, rng_, true, 0, 2e-3,
                    true, false, true);
    CheckGdn2Kernel(kernel, {{2, 2, 30, 30}, {2, 4, 64, 32}}, {1, 17, 65, 130}, true, rng_, false, 0, 2e-3, true,
                    false, true);
    CheckGdn2Kernel(kernel, {{2, 2, 128, 64}}, {64, 200, 17, 130}, false, rng_, true, 0, 2e-3, true, true, true);
    // Four-element key loads with single value loads (V 30, aligned rows).
    CheckGdn2Kernel(kernel, {{1, 2, 64, 30}}, {65, 1, 130}, false, rng_, true, 0, 2e-3, true, false, true);
  }
  // The same mix in float32 I/O.
  CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3>, {{1, 2, 64, 30}}, {65, 1, 130}, false, rng_, true);
  // The wider state tiles (the pick takes them for many sequences), V not a
  // multiple of them; TF32 x 3 and TF32.
  for (const std::vector<Shape>& sh : {std::vector<Shape>{{2, 2, 128, 128}}, std::vector<Shape>{{1, 2, 64, 72}}}) {
    CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3, 32>, sh, {65, 1, 130}, false, rng_);
    CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32x3, 64>, sh, {65, 1, 130}, true, rng_);
    CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32, 16>, sh, {65, 1, 130}, false, rng_, false, 0, 2e-3,
                    true);
    CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32, 32>, sh, {65, 1, 130}, false, rng_, false, 0, 2e-3,
                    true);
    CheckGdn2Kernel(ChunkedWYWithWorkspace<cuda::ChunkMath::kTf32, 64>, sh, {65, 1, 130}, true, rng_, true, 0, 2e-3,
                    true, true);
  }
}

// Only the tensor-core chunk kernel takes bf16 inputs; the other two say so
// rather than read bf16 as float32.
TEST_F(CudaKernelTest, OnlyChunkedWYTakesBf16Io) {
  SKIP_WITHOUT_GPU();
  cuda::Gdn2RecurrentArgs a;
  a.io = cuda::DType::kBF16;
  a.H = a.HV = 1;
  a.K = a.V = 16;
  a.pieces.num_pieces = 1;
  EXPECT_EQ(cuda::Gdn2Recurrent(a, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Gdn2Chunked(a, nullptr), cudaErrorInvalidValue);
}

TEST_F(CudaKernelTest, ConvSiluAndStateMatchCpu) {
  SKIP_WITHOUT_GPU();
  // Odd and even channel counts and strides, one to four taps.
  for (const auto& [W, C, x_stride] : {std::tuple<int, int64_t, int64_t>{2, 37, 50}, {4, 37, 50}, {2, 48, 52},
                                      {4, 48, 52}, {1, 48, 48}}) {
    SCOPED_TRACE(::testing::Message() << "C=" << C);
    const std::vector<int> lengths = {1, 2, 3, 5, 64, 1};
    const int P = static_cast<int>(lengths.size());
    const int num_slots = P + 2;
    std::vector<int> slots(P);
    for (int i = 0; i < P; ++i) slots[i] = num_slots - 1 - i;
    Batch b(lengths, slots);
    const int64_t T = b.T;
    std::vector<float> x = Normal(T * x_stride), wts = Normal(C * W, 0.5f);
    const int64_t slot_stride = 100 + std::max(W - 1, 1) * C, conv_offset = 100;
    std::vector<float> pool = Normal(num_slots * slot_stride);
    Dev<float> d_x(x), d_w(wts), d_pool(pool), d_out(T * C);
    DevBatch db(b);
    cuda::LayerStateRef st{d_pool.get(), slot_stride, 0, conv_offset};
    ASSERT_EQ(cuda::ConvSilu(d_x.get(), x_stride, d_w.get(), C, W, db.pieces, st, d_out.get(), C, nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::ConvStateUpdate(d_x.get(), x_stride, C, W, db.pieces, st, nullptr), cudaSuccess);
    std::vector<float> want_pool = pool, want_out(T * C);
    for (int p = 0; p < P; ++p) {
      cpu::CausalConv1dSilu(&x[b.start[p] * x_stride], x_stride, wts.data(), lengths[p], C, W,
                            &want_pool[slots[p] * slot_stride + conv_offset], &want_out[b.start[p] * C], C);
    }
    EXPECT_LE(RelErr(d_out.host(), want_out), 1e-6) << "W=" << W;
    EXPECT_EQ(d_pool.host(), want_pool) << "W=" << W;  // the state is copied, so exactly
  }
}

// The decode GEMV vs the CPU's Linear on bf16-rounded inputs: every row count
// 1-8 (one row and the tensor-core rows), widths not a multiple of either
// kernel's tile, k not a multiple of the 32-wide k block (or shorter than
// one), padded x rows, accumulation; and for 2-8 rows each output the same
// bits whatever m is.
TEST_F(CudaKernelTest, GemvMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto round = [](std::vector<float> v) {
    RoundBf16(v);
    return v;
  };
  struct Case {
    int64_t n, k, ldx;
  };
  for (const Case c : {Case{2304, 2048, 2048}, Case{10497, 2304, 2312}, Case{7, 6208, 6208}, Case{33, 8, 16},
                       Case{1001, 264, 264}, Case{40, 6200, 6200}}) {
    const int rows = cuda::kGemvMaxRows;
    const std::vector<float> w = round(Normal(c.n * c.k)), x = round(Normal(rows * c.ldx));
    const std::vector<float> y0 = Normal(rows * (c.n + 3));
    Dev<uint16_t> d_w(Bf16Bits(w)), d_x(Bf16Bits(x));
    std::vector<float> pair;  // row 0's outputs with m = 2
    for (int m = 1; m <= cuda::kGemvMaxRows; ++m) {
      for (const bool acc : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "n=" << c.n << " k=" << c.k << " m=" << m << " acc=" << acc);
        const int64_t ldy = c.n + 3;
        Dev<float> d_y(y0);
        ASSERT_TRUE(cuda::GemvBf16Supported(m, c.k, c.ldx, d_x.get(), d_w.get()));
        ASSERT_EQ(cuda::GemvBf16(d_x.get(), c.ldx, m, c.k, d_w.get(), c.n, d_y.get(), ldy, acc, nullptr),
                  cudaSuccess);
        std::vector<float> want = y0;
        cpu::Linear(x.data(), c.ldx, m, c.k, w.data(), c.n, nullptr, want.data(), ldy, acc, true);
        const std::vector<float> got = d_y.host();
        EXPECT_LE(RelErr(got, want), 1e-5);
        if (!acc && m == 2) pair.assign(got.begin(), got.begin() + c.n);
        if (!acc && m >= 2) {
          EXPECT_EQ(0, std::memcmp(got.data(), pair.data(), c.n * 4)) << "row 0 differs from m = 2";
        }
      }
    }
  }
  // Shapes it does not take.
  Dev<uint16_t> d_a(std::vector<uint16_t>(64));
  EXPECT_FALSE(cuda::GemvBf16Supported(cuda::kGemvMaxRows + 1, 16, 16, d_a.get(), d_a.get()));
  EXPECT_FALSE(cuda::GemvBf16Supported(1, 12, 16, d_a.get(), d_a.get()));
  EXPECT_FALSE(cuda::GemvBf16Supported(1, 16, 16, d_a.get() + 1, d_a.get()));
}

// The gate_up GEMV with SwiGLU on the way out vs GemvBf16 then SiluMul to
// bf16: the same bits, every row count 1-8, tile remainders (n / 2 odd).
TEST_F(CudaKernelTest, GemvSwiGluMatchesApart) {
  SKIP_WITHOUT_GPU();
  for (const int64_t I : {6208, 37}) {
    const int64_t n = 2 * I, k = 264, rows = cuda::kGemvMaxRows;
    std::vector<float> w = Normal(n * k), x = Normal(rows * k);
    RoundBf16(w);
    RoundBf16(x);
    Dev<uint16_t> d_w(Bf16Bits(w)), d_x(Bf16Bits(x));
    for (int m = 1; m <= rows; ++m) {
      SCOPED_TRACE(::testing::Message() << "I=" << I << " m=" << m);
      Dev<uint16_t> d_act(m * I), d_act2(m * I);
      Dev<float> d_gu(m * n);
      ASSERT_EQ(cuda::GemvBf16SwiGlu(d_x.get(), k, m, k, d_w.get(), n, d_act.get(), I, nullptr), cudaSuccess);
      ASSERT_EQ(cuda::GemvBf16(d_x.get(), k, m, k, d_w.get(), n, d_gu.get(), n, false, nullptr), cudaSuccess);
      ASSERT_EQ(cuda::SiluMul(d_gu.get(), m, I, d_act2.get(), cuda::DType::kBF16, nullptr), cudaSuccess);
      EXPECT_EQ(d_act.host(), d_act2.host());
    }
  }
  Dev<uint16_t> d_a(std::vector<uint16_t>(64));
  EXPECT_EQ(cuda::GemvBf16SwiGlu(d_a.get(), 16, 1, 16, d_a.get(), 3, d_a.get(), 1, nullptr), cudaErrorInvalidValue);
}

// The fused decode-step kernel (conv + SiLU, state shift, column conversion)
// vs the same CPU twin, one token a piece, scattered slots, both output types.
TEST_F(CudaKernelTest, DecodeMixerPrepMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int W : {1, 2, 4, 8}) {
    for (const cuda::DType ct : {cuda::DType::kF32, cuda::DType::kBF16}) {
      const int P = 37, num_slots = P + 5;
      const std::vector<int> slots = ScatteredSlots(P, num_slots, rng_);
      Batch b(std::vector<int>(P, 1), slots);
      // Odd and even channel counts and strides.
      const bool even = W % 2 == 0;
      const int64_t C = even ? 48 : 45, x_stride = even ? 72 : 70, cvt0 = even ? 52 : 50, cols = 20;
      std::vector<float> x = Normal(P * x_stride), wts = Normal(C * W, 0.5f);
      const int64_t slot_stride = 100 + std::max(W - 1, 1) * C, conv_offset = 100;
      std::vector<float> pool = Normal(num_slots * slot_stride);
      Dev<float> d_x(x), d_w(wts), d_pool(pool), d_out(P * C);
      Dev<uint8_t> d_cvt(std::vector<uint8_t>(P * cols * 4, 0));
      DevBatch db(b);
      cuda::LayerStateRef st{d_pool.get(), slot_stride, 0, conv_offset};
      ASSERT_EQ(cuda::DecodeMixerPrep(d_x.get(), x_stride, d_w.get(), C, W, db.pieces, st, d_out.get(), C, cvt0,
                                      cols, d_cvt.get(), ct, nullptr),
                cudaSuccess);
      std::vector<float> want_pool = pool, want_out(P * C);
      for (int p = 0; p < P; ++p) {
        cpu::CausalConv1dSilu(&x[p * x_stride], x_stride, wts.data(), 1, C, W,
                              &want_pool[slots[p] * slot_stride + conv_offset], &want_out[p * C], C);
      }
      SCOPED_TRACE(::testing::Message() << "W=" << W << " bf16=" << (ct == cuda::DType::kBF16));
      EXPECT_LE(RelErr(d_out.host(), want_out), 1e-6);
      EXPECT_EQ(d_pool.host(), want_pool);
      // Bit for bit what the prefill path's ConvSilu gives (prefix snapshots
      // continue like cold runs only if both paths round alike).
      Dev<float> d_pool2(pool), d_out2(P * C);
      const cuda::LayerStateRef st2{d_pool2.get(), slot_stride, 0, conv_offset};
      ASSERT_EQ(cuda::ConvSilu(d_x.get(), x_stride, d_w.get(), C, W, db.pieces, st2, d_out2.get(), C, nullptr),
                cudaSuccess);
      EXPECT_EQ(d_out.host(), d_out2.host());
      const std::vector<uint8_t> got = d_cvt.host();
      for (int p = 0; p < P; ++p) {
        for (int64_t c = 0; c < cols; ++c) {
          const float v = x[p * x_stride + cvt0 + c];
          if (ct == cuda::DType::kF32) {
            float g;
            std::memcpy(&g, &got[(p * cols + c) * 4], 4);
            ASSERT_EQ(g, v);
          } else {
            uint16_t h;
            std::memcpy(&h, &got[(p * cols + c) * 2], 2);
            ASSERT_EQ(FromBf16Bits(h), __bfloat162float(__float2bfloat16_rn(v)));
          }
        }
      }
    }
  }
}

// The conv prep and a GEMV on other columns of the same rows in one launch
// vs the two apart (DecodeMixerPrep, then GemvBf16 on the columns converted
// to bf16): the same bits, every row count 1-8 (both GEMV kernels), conv
// widths 1 and 4, GEMV widths not a multiple of either kernel's tile.
TEST_F(CudaKernelTest, DecodeMixerPrepGemvMatchesApart) {
  SKIP_WITHOUT_GPU();
  for (int m = 1; m <= cuda::kGemvMaxRows; ++m) {
    for (const int W : {1, 4}) {
      const int num_slots = m + 3;
      const std::vector<int> slots = ScatteredSlots(m, num_slots, rng_);
      Batch b(std::vector<int>(m, 1), slots);
      const int64_t C = 300, k = 256, gemv_col = 304, x_stride = gemv_col + k + 12, n = 4096 + 5;
      std::vector<float> x = Normal(m * x_stride), cw = Normal(C * W, 0.5f), w = Normal(n * k);
      RoundBf16(w);
      const int64_t slot_stride = 40 + std::max(W - 1, 1) * C, conv_offset = 40;
      const std::vector<float> pool = Normal(num_slots * slot_stride);
      Dev<float> d_x(x), d_cw(cw), d_pool(pool), d_out(m * C), d_y(m * n);
      Dev<float> d_pool2(pool), d_out2(m * C), d_y2(m * n);
      Dev<uint16_t> d_w(Bf16Bits(w)), d_cvt(m * k);
      DevBatch db(b);
      SCOPED_TRACE(::testing::Message() << "m=" << m << " W=" << W);
      ASSERT_TRUE(cuda::DecodeMixerPrepGemvSupported(m, k, x_stride, d_x.get() + gemv_col, d_w.get()));
      ASSERT_EQ(cuda::DecodeMixerPrepGemv(d_x.get(), x_stride, d_cw.get(), C, W, db.pieces,
                                          {d_pool.get(), slot_stride, 0, conv_offset}, d_out.get(), C, gemv_col, k,
                                          d_w.get(), n, d_y.get(), n, nullptr),
                cudaSuccess);
      ASSERT_EQ(cuda::DecodeMixerPrep(d_x.get(), x_stride, d_cw.get(), C, W, db.pieces,
                                      {d_pool2.get(), slot_stride, 0, conv_offset}, d_out2.get(), C, gemv_col, k,
                                      d_cvt.get(), cuda::DType::kBF16, nullptr),
                cudaSuccess);
      ASSERT_EQ(cuda::GemvBf16(d_cvt.get(), k, m, k, d_w.get(), n, d_y2.get(), n, false, nullptr), cudaSuccess);
      EXPECT_EQ(d_out.host(), d_out2.host());
      EXPECT_EQ(d_pool.host(), d_pool2.host());
      EXPECT_EQ(d_y.host(), d_y2.host());
    }
  }
  Dev<float> d_a(std::vector<float>(64));
  EXPECT_FALSE(cuda::DecodeMixerPrepGemvSupported(cuda::kGemvMaxRows + 1, 16, 16, d_a.get(), d_a.get()));
  EXPECT_FALSE(cuda::DecodeMixerPrepGemvSupported(1, 16, 18, d_a.get(), d_a.get()));
  EXPECT_FALSE(cuda::DecodeMixerPrepGemvSupported(1, 16, 16, d_a.get() + 2, d_a.get()));
}

TEST_F(CudaKernelTest, NormsAndActivationsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 7;
  auto bf16_host = [](const Dev<uint16_t>& d) {
    std::vector<float> y;
    for (uint16_t h : d.host()) y.push_back(FromBf16Bits(h));
    return y;
  };
  // RmsNorm over selected rows, float32 and bf16 outputs; widths that take
  // 1, 2, 8 registers a thread and the loop (d > 8 x 512).
  for (const int64_t d : {40, 300, 2304, 5000}) {
    SCOPED_TRACE(::testing::Message() << "d=" << d);
    std::vector<float> x = Normal(T * d, 2.0f), wt = Normal(d);
    std::vector<int32_t> rows = {6, 0, 3};
    std::vector<float> want(rows.size() * d);
    for (size_t r = 0; r < rows.size(); ++r) cpu::RmsNorm(&x[rows[r] * d], wt.data(), 1, d, 1e-5f, &want[r * d]);
    Dev<float> d_x(x), d_wt(wt), d_y(rows.size() * d);
    Dev<int32_t> d_rows(rows);
    ASSERT_EQ(cuda::RmsNorm(d_x.get(), d, d_rows.get(), rows.size(), d, d_wt.get(), 1e-5f, d_y.get(),
                            cuda::DType::kF32, d, nullptr),
              cudaSuccess);
    EXPECT_LE(RelErr(d_y.host(), want), 1e-6);
    Dev<uint16_t> d_yb(rows.size() * d);
    ASSERT_EQ(cuda::RmsNorm(d_x.get(), d, d_rows.get(), rows.size(), d, d_wt.get(), 1e-5f, d_yb.get(),
                            cuda::DType::kBF16, d, nullptr),
              cudaSuccess);
    EXPECT_LE(RelErr(bf16_host(d_yb), want), 8e-3);  // bf16 rounding
  }

  // Gated RMSNorm with the z bias (z rows padded), heads of every register width.
  for (const int V : {20, 40, 128, 256}) {
    SCOPED_TRACE(::testing::Message() << "V=" << V);
    const int64_t HV = 3, zs = HV * V + 5;
    std::vector<float> o = Normal(T * HV * V), z = Normal(T * zs), zb = Normal(HV * V), ow = Normal(V);
    std::vector<float> zc(T * HV * V);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < HV * V; ++i) zc[t * HV * V + i] = z[t * zs + i] + zb[i];
    }
    std::vector<float> want_o = o;
    cpu::GatedRmsNorm(want_o.data(), zc.data(), ow.data(), T, HV, V, 1e-5f);
    Dev<float> d_o(o), d_z(z), d_zb(zb), d_ow(ow), d_go(T * HV * V);
    ASSERT_EQ(cuda::GatedRmsNorm(d_o.get(), d_z.get(), zs, d_zb.get(), d_ow.get(), T, HV, V, 1e-5f, d_go.get(),
                                 cuda::DType::kF32, nullptr),
              cudaSuccess);
    EXPECT_LE(RelErr(d_go.host(), want_o), 1e-6);
  }

  // SwiGLU: scalar (I % 4 != 0) and four a thread, float32 and bf16 outputs;
  // the GPU's rows hold (gate, up) pairs, the CPU's gate then up.
  for (const int64_t I : {130, 132, 6208}) {
    SCOPED_TRACE(::testing::Message() << "I=" << I);
    std::vector<float> gu = Normal(T * 2 * I, 3.0f), want_a(T * I), pairs(T * 2 * I);
    cpu::SiluMul(gu.data(), T, I, want_a.data());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < I; ++j) {
        pairs[t * 2 * I + 2 * j] = gu[t * 2 * I + j];
        pairs[t * 2 * I + 2 * j + 1] = gu[t * 2 * I + I + j];
      }
    }
    Dev<float> d_gu(pairs), d_a(T * I);
    ASSERT_EQ(cuda::SiluMul(d_gu.get(), T, I, d_a.get(), cuda::DType::kF32, nullptr), cudaSuccess);
    EXPECT_LE(RelErr(d_a.host(), want_a), 1e-6);
    Dev<uint16_t> d_ab(T * I);
    ASSERT_EQ(cuda::SiluMul(d_gu.get(), T, I, d_ab.get(), cuda::DType::kBF16, nullptr), cudaSuccess);
    EXPECT_LE(RelErr(bf16_host(d_ab), want_a), 8e-3);
  }

  const int64_t d = 300;
  // Embedding from a float32 table.
  std::vector<float> table = Normal(50 * d);
  std::vector<int32_t> ids = {3, 49, 0, 3};
  Dev<float> d_table(table), d_e(ids.size() * d);
  Dev<int32_t> d_ids(ids);
  ASSERT_EQ(cuda::EmbeddingLookup(d_table.get(), cuda::DType::kF32, d_ids.get(), ids.size(), d, d_e.get(), nullptr),
            cudaSuccess);
  const std::vector<float> e = d_e.host();
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(0, std::memcmp(&e[i * d], &table[ids[i] * d], d * 4));
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}


// The sampling kernel vs its CPU twin (kernels/cpu/sample.h) with the same
// uniforms: rows of several vocabulary sizes, some with many tied logits,
// every cut (greedy, temperature only, top_k, top_p, min_p, their mixes) and
// penalties. Float32 (GPU) and float64 (CPU) sums may put a uniform on the
// other side of a cumulative boundary: a different token is accepted only
// when the CPU draws it too at u +- 1e-5.
TEST_F(CudaKernelTest, SampleRowsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  struct Case {
    float temperature;
    int top_k;
    float top_p, min_p, repetition, presence, frequency;
  };
  const std::vector<Case> cases = {
      {0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f},   {1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f},
      {0.7f, 1, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f},   {0.7f, 5, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f},
      {1.3f, 50, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f},  {1.0f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f},
      {0.5f, 0, 0.1f, 0.0f, 1.0f, 0.0f, 0.0f},   {1.0f, 0, 1.0f, 0.05f, 1.0f, 0.0f, 0.0f},
      {0.8f, 40, 0.95f, 0.02f, 1.0f, 0.0f, 0.0f}, {2.0f, 300, 0.5f, 0.0f, 1.0f, 0.0f, 0.0f},
      {0.9f, 0, 1.0f, 0.0f, 1.3f, 0.5f, 0.25f},  {0.0f, 0, 1.0f, 0.0f, 1.2f, 0.4f, 0.6f},
      {0.6f, 20, 0.8f, 0.01f, 0.8f, -0.5f, 1.0f}, {100.0f, 0, 0.99f, 0.0f, 1.0f, 0.0f, 0.0f},
      {0.01f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f}};
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  int draws = 0, boundary = 0;
  for (const int64_t vocab : {17, 1000, 4097, 32000}) {
    for (const bool ties : {false, true}) {
      const int R = 3;  // rows; every case draws from every row
      std::vector<float> logits = Normal(R * vocab, 3.0f);
      if (ties) {
        for (auto& x : logits) x = std::round(x * 2.0f) / 2.0f;  // a few hundred values for all tokens
      }
      std::vector<cuda::DrawSpec> specs;
      std::vector<int32_t> lists;
      std::vector<int> case_of;
      std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
      for (size_t c = 0; c < cases.size(); ++c) {
        for (int r = 0; r < R; ++r) {
          const Case& k = cases[c];
          cuda::DrawSpec d;
          d.row = r;
          d.top_k = k.top_k;
          d.temperature = k.temperature;
          d.top_p = k.top_p;
          d.min_p = k.min_p;
          d.repetition = k.repetition;
          d.presence = k.presence;
          d.frequency = k.frequency;
          d.uniform = uni(rng_);
          auto distinct = [&](int n) {  // up to n distinct token ids
            std::vector<int32_t> ids;
            for (int i = 0; i < n; ++i) ids.push_back(tok(rng_));
            std::sort(ids.begin(), ids.end());
            ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
            return ids;
          };
          if (k.repetition != 1.0f) {
            const std::vector<int32_t> rep = distinct(12);
            d.repeated_begin = static_cast<int32_t>(lists.size());
            d.num_repeated = static_cast<int32_t>(rep.size());
            lists.insert(lists.end(), rep.begin(), rep.end());
          }
          if (k.presence != 0.0f || k.frequency != 0.0f) {
            const std::vector<int32_t> ids = distinct(8);
            d.counted_begin = static_cast<int32_t>(lists.size());
            d.num_counted = static_cast<int32_t>(ids.size());
            lists.insert(lists.end(), ids.begin(), ids.end());
            for (size_t i = 0; i < ids.size(); ++i) lists.push_back(1 + static_cast<int32_t>(i % 3));
          }
          specs.push_back(d);
          case_of.push_back(static_cast<int>(c));
        }
      }
      const int D = static_cast<int>(specs.size());
      if (lists.empty()) lists.push_back(0);
      Dev<float> d_logits(logits), d_work(static_cast<size_t>(D) * vocab), d_lp(D);
      Dev<int32_t> d_lists(lists), d_tok(D);
      cuda::DrawSpec* d_specs = nullptr;
      ASSERT_EQ(cudaMalloc(&d_specs, D * sizeof(cuda::DrawSpec)), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(d_specs, specs.data(), D * sizeof(cuda::DrawSpec), cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(cuda::SampleRows(d_logits.get(), vocab, d_specs, D, d_lists.get(), d_work.get(), d_tok.get(),
                                 d_lp.get(), nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      cudaFree(d_specs);
      const std::vector<int32_t> got = d_tok.host();
      const std::vector<float> got_lp = d_lp.host();
      cpu::DrawScratch scratch;
      for (int i = 0; i < D; ++i) {
        const cuda::DrawSpec& d = specs[i];
        SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " ties " << ties << " case " << case_of[i]
                                          << " row " << d.row << " u " << d.uniform);
        const float* raw = &logits[d.row * vocab];
        std::vector<float> x(raw, raw + vocab);
        cpu::ApplyPenalties(x.data(), vocab, d.repetition, lists.data() + d.repeated_begin, d.num_repeated,
                            d.presence, d.frequency, lists.data() + d.counted_begin,
                            lists.data() + d.counted_begin + d.num_counted, d.num_counted);
        const cpu::DrawParams p{d.temperature, d.top_k, d.top_p, d.min_p};
        const int32_t want = cpu::DrawToken(x.data(), vocab, p, d.uniform, &scratch);
        ++draws;
        ASSERT_GE(got[i], 0);
        ASSERT_LT(got[i], vocab);
        if (got[i] != want) {
          const int32_t lo = cpu::DrawToken(x.data(), vocab, p, std::max(0.0, d.uniform - 1e-5), &scratch);
          const int32_t hi = cpu::DrawToken(x.data(), vocab, p, std::min(1.0 - 1e-12, d.uniform + 1e-5), &scratch);
          EXPECT_TRUE(got[i] == lo || got[i] == hi) << "gpu " << got[i] << " cpu " << want;
          ++boundary;
        }
        EXPECT_NEAR(got_lp[i], cpu::LogSoftmaxAt(raw, vocab, got[i]), 1e-4);
      }
    }
  }
  std::printf("sampling: %d draws, %d on a cumulative boundary\n", draws, boundary);
  EXPECT_LE(boundary * 100, draws);  // boundaries are rare, not the rule
}


}  // namespace
}  // namespace gdnserve
