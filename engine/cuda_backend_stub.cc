// CreateCudaBackend in a build without CUDA (GDNSERVE_CUDA=OFF).
#include "engine/cuda_backend.h"

namespace gdnserve {

bool CudaBackendBuilt() { return false; }

int CudaDeviceCount() { return 0; }

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights>,
                                                           const CudaBackendOptions&) {
  return absl::UnimplementedError("this gdnserve was built without CUDA (configure with -DGDNSERVE_CUDA=ON)");
}

}  // namespace gdnserve
