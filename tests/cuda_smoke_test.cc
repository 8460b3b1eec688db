// CUDA toolchain smoke test: skips cleanly without a GPU; on one, a kernel
// runs and its result is checked.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/cuda/device_info.h"
#include "tests/test_util.h"

namespace gdnserve {
namespace {

TEST(CudaSmoke, SaxpyMatchesHost) {
  cuda::DeviceInfo info;
  std::string error;
  const int count = cuda::QueryDevices(&info, &error);
  if (count == 0) GTEST_SKIP() << "no CUDA device" << (error.empty() ? "" : " (" + error + ")");
  std::printf("device 0: %s, sm_%d%d, %.1f GiB\n", info.name.c_str(), info.sm_major, info.sm_minor,
              info.total_bytes / double(1 << 30));
  std::mt19937 rng(testing::TestSeed());
  std::normal_distribution<float> d;
  const size_t n = 100003;
  std::vector<float> x(n), y(n), want(n);
  for (size_t i = 0; i < n; ++i) {
    x[i] = d(rng);
    y[i] = d(rng);
    want[i] = 2.5f * x[i] + y[i];
  }
  ASSERT_TRUE(cuda::SaxpyOnDevice(2.5f, x.data(), y.data(), n, &error)) << error;
  EXPECT_LE(testing::RelErr(y, want), 1e-6);
}

}  // namespace
}  // namespace gdnserve
