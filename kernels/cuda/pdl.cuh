// Programmatic dependent launch (Hopper and later): a kernel launched with
// LaunchPdl may start while the kernel before it in the stream is still
// running. Each such kernel calls PdlWait() (returns once the previous kernel
// has finished and its writes are visible) before it touches anything an
// earlier kernel of the same step writes, and PdlLaunchDependents() (the next
// kernel may now be scheduled) only after that wait: so when a kernel starts,
// every kernel but the one right before it has finished, whoever launched
// them (cuBLAS's kernels may take part in the chain too). Triggering before
// the wait let chains of early starts run ahead of an unfinished GEMM and
// broke the GPU backend tests (H100). Reads of data no kernel of the step
// writes (weights, the kernel's own layer's state) may come before the wait.
// Elsewhere (sm_80, or ProgrammaticLaunch off) both are no-ops and the
// launch is an ordinary one.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace gdnserve::cuda {

__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches ask for programmatic serialization (ops.h: SetProgrammaticLaunch).
bool ProgrammaticLaunchOn();

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchPdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = ProgrammaticLaunchOn() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace gdnserve::cuda
