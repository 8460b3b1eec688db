// Exploration (not built by CMake): tensor-core decode GEMV variants
// (kernels/cuda/gemv.cu took the best: 8 warps a 16-row tile, 4 k blocks in
// flight, the first batch loaded before the programmatic wait, the next batch
// before the products for matrices of few tiles) vs cuBLAS on the 1.3B shapes,
// each launched after a short kernel with programmatic dependent launch as in
// a decode step, weights rotated over copies larger than L2. Results:
// bench/RESULTS.md. Standalone:
// nvcc -O3 -std=c++17 -arch=sm_90a -lcublas bench/gpu/gemv_variants.cu -o /tmp/gv && /tmp/gv
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <int LD>
__device__ __forceinline__ uint4 Ld(const __nv_bfloat16* p, bool ok) {
  if (!ok) return make_uint4(0, 0, 0, 0);
  if constexpr (LD == 0) return __ldcs(reinterpret_cast<const uint4*>(p));
  if constexpr (LD == 1) return __ldg(reinterpret_cast<const uint4*>(p));
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ void PdlWait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void PdlGo() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// MODE 0: nothing before the wait; 1: the tile into L2 (prefetch); 2: the first batch into registers.
// PIPE: the next batch's loads issued before the current batch's products.
template <int W, int U, int MODE, bool PIPE>
__global__ void __launch_bounds__(W * 32) TcGemv2(const __nv_bfloat16* __restrict__ x, int64_t ldx, int m,
                                                  const __nv_bfloat16* __restrict__ w, int64_t n, int64_t k,
                                                  float* __restrict__ y, int64_t ldy) {
  __shared__ float partial[W][8][16];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane >> 2, t = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int rows = static_cast<int>(n - n0 < 16 ? n - n0 : 16);
  const __nv_bfloat16* ra = w + (n0 + (g < rows ? g : rows - 1)) * k + 8 * t;
  const __nv_bfloat16* rb = w + (n0 + (g + 8 < rows ? g + 8 : rows - 1)) * k + 8 * t;
  const int64_t blocks = (k + 31) / 32;
  const int64_t mine = blocks > warp ? (blocks - warp + W - 1) / W : 0;  // k blocks of this warp
  uint4 wa[U], wb[U];
  auto load = [&](int64_t i0) {  // batch of this warp's k blocks i0 .. i0 + U - 1
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u, kk = (warp + i * W) * 32;
      const bool ok = i < mine && kk + 8 * t < k;
      wa[u] = Ld<2>(ra + kk, ok);
      wb[u] = Ld<2>(rb + kk, ok);
    }
  };
  if (MODE == 1) {
    const char* base = reinterpret_cast<const char*>(w + n0 * k);
    for (int64_t off = static_cast<int64_t>(tid) * 128; off < rows * k * 2; off += W * 32 * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
  }
  if (MODE == 2) load(0);
  PdlWait();
  PdlGo();
  if (MODE != 2) load(0);
  const bool xok = g < m;
  const __nv_bfloat16* xr = x + (xok ? g : 0) * ldx + 8 * t;
  float acc[4] = {0, 0, 0, 0};
  for (int64_t i0 = 0; i0 < mine; i0 += U) {
    uint4 ca[U], cb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) ca[u] = wa[u], cb[u] = wb[u];
    if (PIPE && i0 + U < mine) load(i0 + U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + u, kk = (warp + i * W) * 32;
      const bool ok = i < mine && kk + 8 * t < k;
      const uint4 xv = ok && xok ? __ldg(reinterpret_cast<const uint4*>(xr + kk)) : make_uint4(0, 0, 0, 0);
      Mma(acc, ca[u].x, cb[u].x, ca[u].y, cb[u].y, xv.x, xv.y);
      Mma(acc, ca[u].z, cb[u].z, ca[u].w, cb[u].w, xv.z, xv.w);
    }
    if (!PIPE && i0 + U < mine) load(i0 + U);
  }
  partial[warp][2 * t][g] = acc[0];
  partial[warp][2 * t + 1][g] = acc[1];
  partial[warp][2 * t][g + 8] = acc[2];
  partial[warp][2 * t + 1][g + 8] = acc[3];
  __syncthreads();
  for (int i = tid; i < 8 * 16; i += W * 32) {
    const int col = i / 16, row = i % 16;
    if (col < m && row < rows) {
      float s = 0;
      for (int q = 0; q < W; ++q) s += partial[q][col][row];
      y[col * ldy + n0 + row] = s;
    }
  }
}

// The kernel before the GEMV: waits, releases the GEMV, then ~3 us of
// dependent loads in one block (a batch-1 norm's latency chain) and writes x.
__global__ void Before(const int* __restrict__ chain, int hops, __nv_bfloat16* x) {
  PdlWait();
  PdlGo();
  int j = threadIdx.x;
  for (int h = 0; h < hops; ++h) j = chain[j];
  if (j == -1) x[0] = __float2bfloat16(1.0f);
}

template <typename... KA, typename... A>
void LaunchPdl(void (*kernel)(KA...), dim3 grid, dim3 block, A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaLaunchKernelEx(&cfg, kernel, args...);
}

__global__ void CopyKernel(const uint4* __restrict__ a, uint4* __restrict__ b, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) b[i] = a[i];
}

struct Shape { const char* name; int64_t n, k; };

int main() {
  const Shape shapes[] = {{"in_proj", 10496, 2304}, {"fg_up", 4096, 256}, {"o_proj", 2304, 2048},
                          {"gate_up", 12416, 2304}, {"down", 2304, 6208}, {"lm_head", 32000, 2304}};
  cublasHandle_t h;
  cublasCreate(&h);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  // copy bandwidth
  {
    int64_t bytes = 1ll << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes)); CK(cudaMalloc(&b, bytes));
    for (int i = 0; i < 3; ++i) CopyKernel<<<132 * 8, 512>>>((uint4*)a, (uint4*)b, bytes / 16);
    cudaEventRecord(e0);
    for (int i = 0; i < 10; ++i) CopyKernel<<<132 * 8, 512>>>((uint4*)a, (uint4*)b, bytes / 16);
    cudaEventRecord(e1); cudaEventSynchronize(e1);
    float ms; cudaEventElapsedTime(&ms, e0, e1);
    printf("copy: %.0f GB/s\n", 2.0 * bytes * 10 / (ms * 1e-3) / 1e9);
    cudaFree(a); cudaFree(b);
  }
  __nv_bfloat16* x; float* y;
  const int hops = 6;  // ~3 us of dependent loads
  int* chain;
  CK(cudaMalloc(&chain, (64 << 20) * 4));
  {
    std::vector<int> hc(64 << 20);
    for (size_t i = 0; i < hc.size(); ++i) hc[i] = (int)((i * 2654435761ull + 12345) % hc.size());
    CK(cudaMemcpy(chain, hc.data(), hc.size() * 4, cudaMemcpyHostToDevice));
  }
  CK(cudaMalloc(&x, 16 * 8192 * 2)); CK(cudaMalloc(&y, 16 * 40000 * 4));
  CK(cudaMemset(x, 0, 16 * 8192 * 2));
  double tot_best[16] = {};
  for (const Shape& s : shapes) {
    const int64_t bytes = s.n * s.k * 2;
    const int copies = std::max<int64_t>(2, (400ll << 20) / bytes + 1);
    std::vector<__nv_bfloat16*> ws(copies);
    for (auto& p : ws) { CK(cudaMalloc(&p, bytes)); CK(cudaMemset(p, 0, bytes)); }
    auto time = [&](auto launch) {
      for (int i = 0; i < 4; ++i) launch(ws[i % copies]);
      CK(cudaGetLastError());
      const int reps = 4 * copies < 40 ? 40 : 4 * copies;
      cudaEventRecord(e0);
      for (int i = 0; i < reps; ++i) launch(ws[i % copies]);
      cudaEventRecord(e1);
      CK(cudaEventSynchronize(e1));
      float ms; cudaEventElapsedTime(&ms, e0, e1);
      return ms * 1e3 / reps;
    };
    printf("\n%s n=%ld k=%ld (%.1f MB, %d copies): us (GB/s)\n", s.name, s.n, s.k, bytes / 1e6, copies);
    auto report = [&](const char* label, double us, int vi) {
      printf("  %-28s %8.2f us %7.0f GB/s\n", label, us, bytes / (us * 1e-6) / 1e9);
      if (vi >= 0) tot_best[vi] += us;
    };
    const int64_t ldx = s.k;
    // The kernel before: alone, then each variant after it (PDL); the variant's cost = pair - alone.
    const double before = time([&](const __nv_bfloat16*) { LaunchPdl(Before, 1, 256, chain, hops, x); });
    auto pair = [&](const char* label, int vi, auto launch) {
      const double us = time([&](const __nv_bfloat16* w) { LaunchPdl(Before, 1, 256, chain, hops, x); launch(w); });
      report(label, us - before, vi);
    };
    const int64_t tiles = (s.n + 15) / 16;
#define V2(W, U, MODE, PIPE, VI, M) pair("tc2 W" #W " U" #U " mode" #MODE " pipe" #PIPE " m" #M, VI, [&](const __nv_bfloat16* w) { \
      LaunchPdl(TcGemv2<W, U, MODE, PIPE>, tiles, W * 32, x, ldx, M, w, s.n, s.k, y, s.n); })
    V2(8, 4, 0, false, 1, 1);
    V2(8, 4, 1, false, 2, 1);
    V2(8, 4, 2, false, 3, 1);
    V2(8, 4, 2, true, 4, 1);
    V2(16, 4, 2, false, 5, 1);
    V2(16, 4, 2, true, 6, 1);
    V2(16, 2, 2, true, 7, 1);
    V2(8, 8, 2, false, 8, 1);
    V2(16, 4, 1, false, 9, 1);
    V2(8, 4, 2, true, 10, 8);
    V2(16, 4, 2, true, 11, 8);
    printf("  (the kernel before alone: %.2f us)\n", before);
    for (int m : {1, 4, 8, 16}) {
      const float one = 1, zero = 0;
      char label[64];
      snprintf(label, sizeof label, "cublas m%d", m);
      report(label, time([&](const __nv_bfloat16* w) {
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &one, w, CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k, &zero, y,
                     CUDA_R_32F, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      }), m == 1 ? 14 : -1);
    }
    for (auto p : ws) cudaFree(p);
  }
  printf("\nsum over the six shapes (one layer's matrices + lm_head), us:\n");
  const char* names[] = {"-", "W8U4 none", "W8U4 PF", "W8U4 RF", "W8U4 RF pipe", "W16U4 RF", "W16U4 RF pipe",
                         "W16U2 RF pipe", "W8U8 RF", "W16U4 PF", "W8U4 RF pipe m8", "W16U4 RF pipe m8", "-", "-", "cublas m1 (no PDL)"};
  for (int i = 0; i < 15; ++i) printf("  %-12s %8.1f\n", names[i], tot_best[i]);
}
