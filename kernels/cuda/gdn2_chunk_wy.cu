// GDN-2 chunkwise prefill on tensor cores, in two parallel phases
// (ops.h: Gdn2ChunkedWY). The same result as kernels/cpu/gdn2.cc's
// Gdn2ChunkedHead (DESIGN.md 1.3), reorganised so that everything that
// depends only on a chunk's own inputs runs for all chunks at once, and only
// the state's passage from chunk to chunk is sequential.
//
// Per chunk (C = 64 tokens, sub-chunks of 16) and key head, with G the
// within-chunk inclusive cumulative log decay, A and M as in DESIGN.md 1.3,
// T = (I + A)^-1 and the decayed factors
//   Q~ = q e^G,  E~ = e e^G,  K^ = k e^(G_C - G),  W = T E~,  U = T Z  (Z = w * v)
// the chunk's new values, output and end state are
//   N = U - W S0,  O = Q~ S0 + M N,  S_C = e^(G_C) S0 + K^^T N.
//
// Phase 0 (one thread): the chunk table of the packed pieces.
// Phase 1 (a block per chunk and key head, all chunks at once): gates, norms,
//   G; the diagonal 16 x 16 blocks of A and M pairwise (no positive
//   exponent: a token may have g = -100); the blocks below the diagonal on
//   tensor cores as (e_t e^(G_t - G_r)) . (k_i e^(G_r - G_i)) with r the last
//   token before the row's sub-chunk, both factors <= 1; T by blocked
//   forward substitution in float32; W = T E~ and U = T Z on tensor cores;
//   Q~, K^, W, M, e^(G_C) and U into the workspace.
// Phase 2 (a block per piece, value head and tile of kTV value columns): the
//   state tile stays in shared memory chunk after chunk; P = [W; Q~] S0,
//   N = U - P_W, O = P_Q + M N (written out), S <- e^(G_C) S0 + K^^T N, all on
//   tensor cores, the next chunk's factors loading (cp.async) meanwhile.
//
// Tensor-core products are TF32 (mma.sync m16n8k8, float32 accumulation);
// ChunkMath::kTf32x3 splits each operand in a TF32 head and tail and adds the
// three significant products, for float32 accuracy (float32 models). In TF32
// operands are rounded to TF32 once, where they are written (phase 2's W,
// Q~, K^, M, N; phase 1's scaled key rows, T and the slices T multiplies), so
// the inner loops convert only phase 2's state: the same products as
// rounding at every load.
//
// The op's inputs (q, k, v, g, b, w) and output are float32 or bf16
// (Gdn2RecurrentArgs::io: the Io / In / Out template parameters), read into
// float32 where they are loaded and rounded where the output is stored; the
// workspace and the state are float32 either way.
//
// The comments write e^G with G the natural-log cumulative decay; the code
// keeps G log2(e) instead (base-2 units: chunk_common::SoftplusLog2), so that
// every e^(...) in them is one 2^(...) (Exp2Ftz).
//
// Phase 1 is gdn2_chunk_wy_phase1.cu; what the two phases share (the tensor-
// core tiles, the workspace layout, the I/O element access) is
// gdn2_chunk_wy.cuh.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/gdn2_chunk_wy.cuh"

namespace gdnserve::cuda::wy {
namespace {

// 16-byte asynchronous copy global -> shared; `ok` false fills zeros.
__device__ __forceinline__ void CpAsync16(float* dst, const float* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

Layout MakeLayout(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V) {
  Layout l;
  l.P = num_pieces;
  l.max_chunks = (num_tokens + kC - 1) / kC + num_pieces;
  l.H = H;
  l.HV = HV;
  l.Kp = RoundUp(K, kSl);
  l.Vp = RoundUp(V, kSl);
  return l;
}

Table MakeTable(void* ws, const Layout& l) {
  auto* ints = static_cast<int32_t*>(ws);
  Table t;
  t.num_chunks = ints;
  t.chunk_t0 = ints + 1;
  t.chunk_n = t.chunk_t0 + l.max_chunks;
  t.piece_first = t.chunk_n + l.max_chunks;
  t.piece_count = t.piece_first + l.P;
  t.key = reinterpret_cast<float*>(static_cast<char*>(ws) + l.IntBytes());
  t.value = t.key + l.max_chunks * l.H * l.KeyFloats();
  return t;
}

// Phase 0: chunks of the listed (or all) pieces, in order.
__global__ void TableKernel(Gdn2RecurrentArgs a, Layout l, Table t) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  for (int p = 0; p < l.P; ++p) t.piece_first[p] = 0, t.piece_count[p] = 0;
  const int count = a.piece_list ? a.num_listed : l.P;
  int c = 0;
  for (int i = 0; i < count; ++i) {
    const int p = a.piece_list ? a.piece_list[i] : i;
    const int64_t s = a.pieces.start[p], e = a.pieces.start[p + 1];
    t.piece_first[p] = c;
    // max_chunks bounds the pieces' chunks (ceil(T / kC) + P); a list that
    // names a piece twice could pass it: such chunks are dropped, not written
    // past the table.
    for (int64_t t0 = s; t0 < e && c < l.max_chunks; t0 += kC) {
      t.chunk_t0[c] = static_cast<int32_t>(t0);
      t.chunk_n[c] = static_cast<int32_t>(e - t0 < kC ? e - t0 : kC);
      ++c;
    }
    t.piece_count[p] = c - t.piece_first[p];
  }
  *t.num_chunks = c;
}

// ---------------------------------------------------------------------------
// Phase 2. Shared memory (floats), ks = Kp + 4 (rows read as A), kh = Kp + 8
// (K^ read transposed), us = kTV + 8:
//   WQ [2 kC][ks], U [kC][us] (set A); K^ [kC][kh], M [kC][as], D [Kp] (set B);
//   S [Kp][us], N [kC][us].
template <int kTV>
struct Smem2 {
  static constexpr int As = kC + 4, Us = kTV + 8;
  static constexpr size_t Floats(int Kp) {
    return 2 * kC * static_cast<size_t>(Kp + 4) + kC * Us + kC * static_cast<size_t>(Kp + 8) + kC * As + Kp +
           static_cast<size_t>(Kp) * Us + kC * Us;
  }
};

template <int kTV, ChunkMath kMath, typename Out>
__global__ void __launch_bounds__(kThreads2, 1) Phase2Kernel(Gdn2RecurrentArgs a, Layout l, Table tab) {
  extern __shared__ float smem[];
  constexpr int as = Smem2<kTV>::As, us = Smem2<kTV>::Us, NT = kTV / 8;
  const int K = a.K, V = a.V, Kp = l.Kp, ks = Kp + 4, kh = Kp + 8;
  float* sWQ = smem;
  float* sU = sWQ + 2 * kC * ks;
  float* sKh = sU + kC * us;
  float* sM = sKh + kC * kh;
  float* sD = sM + kC * as;
  float* sS = sD + Kp;
  float* sN = sS + Kp * us;
  const int piece = a.piece_list ? a.piece_list[blockIdx.z] : static_cast<int>(blockIdx.z);
  const int hv = blockIdx.y;
  const int hk = hv / (a.HV / a.H);
  const int v0 = blockIdx.x * kTV;
  const int nv = min(kTV, V - v0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, tq = lane & 3;
  float* S = a.state.base + a.pieces.slot[piece] * a.state.slot_stride + a.state.recurrent_offset +
             static_cast<int64_t>(hv) * V * K;
  const int first = tab.piece_first[piece], count = tab.piece_count[piece];

  auto key_in = [&](int chunk) { return tab.key + (static_cast<int64_t>(chunk) * l.H + hk) * l.KeyFloats(); };
  // Set A of a chunk: W, Q~ rows and the U tile.
  auto load_a = [&](int chunk) {
    const float* in = key_in(chunk);
    if (lane < Kp / 4) {  // a warp a row, a lane 4 floats (Kp <= 128)
      for (int r = warp; r < 2 * kC; r += kThreads2 / 32)
        CpAsync16(&sWQ[r * ks + 4 * lane], in + r * Kp + 4 * lane, true);
    }
    const float* u = tab.value + (static_cast<int64_t>(chunk) * l.HV + hv) * l.ValueFloats();
    for (int i = tid; i < kC * (kTV / 4); i += kThreads2) {
      const int r = i / (kTV / 4), c = (i % (kTV / 4)) * 4;
      const bool ok = v0 + c < l.Vp;
      CpAsync16(&sU[r * us + c], u + r * l.Vp + (ok ? v0 + c : 0), ok);
    }
    CpAsyncCommit();
  };
  // Set B: K^, M, e^(G_C).
  auto load_b = [&](int chunk) {
    const float* in = key_in(chunk) + 2 * kC * Kp;
    if (lane < Kp / 4) {
      for (int r = warp; r < kC; r += kThreads2 / 32) CpAsync16(&sKh[r * kh + 4 * lane], in + r * Kp + 4 * lane, true);
    }
    const float* m = in + kC * Kp;
    for (int i = tid; i < kC * kC / 4; i += kThreads2) {
      const int r = i / (kC / 4), c = (i % (kC / 4)) * 4;
      CpAsync16(&sM[r * as + c], m + r * kC + c, true);
    }
    const float* d = m + kC * kC;
    if (tid < Kp / 4) CpAsync16(&sD[tid * 4], d + tid * 4, true);
    CpAsyncCommit();
  };

  if (count > 0) {
    load_a(first);
    load_b(first);
  }
  // The state tile, S0[c][j] = slot[(v0 + j) K + c]; zero padding.
  for (int i = tid; i < Kp * kTV; i += kThreads2) {
    const int j = i / Kp, c = i % Kp;
    sS[c * us + j] = j < nv && c < K ? S[static_cast<int64_t>(v0 + j) * K + c] : 0.0f;
  }
  for (int ci = 0; ci < count; ++ci) {
    const int chunk = first + ci;
    const int64_t t0 = tab.chunk_t0[chunk];
    const int n = tab.chunk_n[chunk];
    const bool more = ci + 1 < count;
    CpAsyncWait<1>();  // set A of this chunk (set B may still be in flight)
    __syncthreads();
    // P = [W; Q~] S0: warp w the rows [16 w, 16 w + 16).
    float acc[NT][4];
    ZeroAcc(acc);
    WarpMma<NT, false, false, kMath, true>(acc, sWQ, ks, 16 * warp, sS, us, 0, 0, Kp);
    if (warp < 4) {  // N = U - P_W
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq, r = 16 * warp + g;
        sN[r * us + c] = Round32<kMath>(sU[r * us + c] - acc[j][0]);
        sN[r * us + c + 1] = Round32<kMath>(sU[r * us + c + 1] - acc[j][1]);
        sN[(r + 8) * us + c] = Round32<kMath>(sU[(r + 8) * us + c] - acc[j][2]);
        sN[(r + 8) * us + c + 1] = Round32<kMath>(sU[(r + 8) * us + c + 1] - acc[j][3]);
      }
    }
    CpAsyncWait<0>();  // set B of this chunk
    __syncthreads();   // N written; set A free
    if (more) load_a(chunk + 1);
    if (warp >= 4) {  // O = P_Q + M N, written out
      const int m0 = 16 * (warp - 4);
      WarpMma<NT, false, false, kMath, true, true>(acc, sM, as, m0, sN, us, 0, 0, m0 + 16);
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int t = m0 + g + 8 * h;
          if (t >= n) continue;
          const int64_t o = (t0 + t) * a.out_stride + static_cast<int64_t>(hv) * V + v0;
          if (c < nv) StoreIo<Out>(a.out, o + c, acc[j][2 * h]);
          if (c + 1 < nv) StoreIo<Out>(a.out, o + c + 1, acc[j][2 * h + 1]);
        }
      }
    }
    // S <- e^(G_C) S0 + K^^T N: warp w the state rows [16 w, 16 w + 16) (its own).
    for (int m0 = 16 * warp; m0 < Kp; m0 += 16 * (kThreads2 / 32)) {
      float st[NT][4];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
        st[j][0] = sD[m0 + g] * sS[(m0 + g) * us + c];
        st[j][1] = sD[m0 + g] * sS[(m0 + g) * us + c + 1];
        st[j][2] = sD[m0 + g + 8] * sS[(m0 + g + 8) * us + c];
        st[j][3] = sD[m0 + g + 8] * sS[(m0 + g + 8) * us + c + 1];
      }
      WarpMma<NT, true, false, kMath, true, true>(st, sKh, kh, m0, sN, us, 0, 0, RoundUp(n, 8));
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int c = 8 * j + 2 * tq;
        sS[(m0 + g) * us + c] = st[j][0];
        sS[(m0 + g) * us + c + 1] = st[j][1];
        sS[(m0 + g + 8) * us + c] = st[j][2];
        sS[(m0 + g + 8) * us + c + 1] = st[j][3];
      }
    }
    __syncthreads();  // S, N, set B done with
    if (more) load_b(chunk + 1);
  }
  __syncthreads();
  for (int i = tid; i < nv * K; i += kThreads2) {
    const int j = i / K, c = i % K;
    S[static_cast<int64_t>(v0 + j) * K + c] = sS[c * us + j];
  }
}

template <int kTV, ChunkMath kMath, typename Io>
cudaError_t LaunchPhase2(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z,
                         cudaStream_t stream) {
  const size_t bytes = Smem2<kTV>::Floats(l.Kp) * sizeof(float);
  auto* kernel = Phase2Kernel<kTV, kMath, Io>;
  if (cudaError_t e = chunk_common::AllowSharedBytes(kernel, bytes); e != cudaSuccess) return e;
  kernel<<<dim3((a.V + kTV - 1) / kTV, a.HV, blocks_z), kThreads2, bytes, stream>>>(a, l, t);
  return cudaGetLastError();
}

// Io: the inputs' and the output's element type (float or __nv_bfloat16).
template <ChunkMath kMath, typename Io>
cudaError_t Launch(const Gdn2RecurrentArgs& a, const Layout& l, const Table& t, int blocks_z, cudaStream_t stream) {
  if (cudaError_t e = LaunchPhase1<kMath, Io>(a, l, t, stream); e != cudaSuccess) return e;
  // The widest value tile that still gives every SM a block (the state tile
  // chain is the sequential part, so a long lone sequence splits finer) and
  // fits the device's shared memory (an A100 takes 16 and 32 columns only).
  const int sms = CurrentDeviceAttribute<cudaDevAttrMultiProcessorCount>(132);
  const size_t optin = chunk_common::OptinSharedBytes();
  auto fits = [&](size_t floats) { return floats * sizeof(float) <= optin; };
  const int64_t heads = static_cast<int64_t>(blocks_z) * a.HV;
  switch (a.value_tile) {
    case 0: break;
    case 16: return LaunchPhase2<16, kMath, Io>(a, l, t, blocks_z, stream);
    case 32: return LaunchPhase2<32, kMath, Io>(a, l, t, blocks_z, stream);
    case 64: return LaunchPhase2<64, kMath, Io>(a, l, t, blocks_z, stream);
    default: return cudaErrorInvalidValue;
  }
  if (heads * ((a.V + 63) / 64) >= sms && fits(Smem2<64>::Floats(l.Kp))) {
    return LaunchPhase2<64, kMath, Io>(a, l, t, blocks_z, stream);
  }
  if (heads * ((a.V + 31) / 32) >= sms && fits(Smem2<32>::Floats(l.Kp))) {
    return LaunchPhase2<32, kMath, Io>(a, l, t, blocks_z, stream);
  }
  return LaunchPhase2<16, kMath, Io>(a, l, t, blocks_z, stream);
}

}  // namespace
}  // namespace gdnserve::cuda::wy

namespace gdnserve::cuda {

size_t Gdn2ChunkedWYWorkspaceBytes(int64_t num_tokens, int num_pieces, int H, int HV, int K, int V) {
  return static_cast<size_t>(wy::MakeLayout(num_tokens, num_pieces, H, HV, K, V).Bytes());
}

bool Gdn2ChunkedWYSupported(int K) {
  if (K < 1 || K > chunk_common::kMaxK) return false;
  // Phase 1 and the narrowest state tile must fit; wider tiles are taken
  // where they fit too.
  const int Kp = wy::RoundUp(K, wy::kSl);
  const size_t need = std::max(wy::Smem1::Floats(), wy::Smem2<16>::Floats(Kp));
  return chunk_common::OptinSharedBytes() >= need * sizeof(float);
}

cudaError_t Gdn2ChunkedWY(const Gdn2RecurrentArgs& a, ChunkMath math, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  const int blocks_z = a.piece_list ? a.num_listed : a.pieces.num_pieces;
  if (blocks_z == 0) return cudaSuccess;
  if (a.H <= 0 || a.HV < a.H || a.HV % a.H != 0 || a.V <= 0 || a.K < 1 || a.K > chunk_common::kMaxK || blocks_z > 65535 ||
      a.HV > 65535 || a.H > 65535) {
    return cudaErrorInvalidValue;
  }
  const wy::Layout l = wy::MakeLayout(a.pieces.num_tokens, a.pieces.num_pieces, a.H, a.HV, a.K, a.V);
  if (workspace == nullptr || workspace_bytes < static_cast<size_t>(l.Bytes()) || l.max_chunks > INT32_MAX ||
      reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    return cudaErrorInvalidValue;
  }
  const wy::Table t = wy::MakeTable(workspace, l);
  wy::TableKernel<<<1, 1, 0, stream>>>(a, l, t);
  if (a.io == DType::kBF16) {
    return math == ChunkMath::kTf32x3 ? wy::Launch<ChunkMath::kTf32x3, __nv_bfloat16>(a, l, t, blocks_z, stream)
                                      : wy::Launch<ChunkMath::kTf32, __nv_bfloat16>(a, l, t, blocks_z, stream);
  }
  return math == ChunkMath::kTf32x3 ? wy::Launch<ChunkMath::kTf32x3, float>(a, l, t, blocks_z, stream)
                                    : wy::Launch<ChunkMath::kTf32, float>(a, l, t, blocks_z, stream);
}

}  // namespace gdnserve::cuda
