// Linear layers through BLAS (OpenBLAS sgemm). Row-major float32.
#pragma once

#include <cstdint>

namespace gdnserve::cpu {

// y[T, n_out] = x[T, n_in] . W^T (+ bias) (+ y if accumulate), W: [n_out, n_in]
// (nn.Linear layout). x rows have stride x_stride, y rows y_stride (elements).
// Up to 8 rows take a small-batch kernel unless `row_invariant`: then every
// row's result is the same whatever T is (sgemm for any T), which prompt rows
// need (the prefix cache's bit-exactness).
void Linear(const float* x, int64_t x_stride, int64_t T, int64_t n_in, const float* W,
            int64_t n_out, const float* bias, float* y, int64_t y_stride, bool accumulate = false,
            bool row_invariant = false);

// Number of threads BLAS uses (0 = library default).
void SetBlasThreads(int n);

}  // namespace gdnserve::cpu
