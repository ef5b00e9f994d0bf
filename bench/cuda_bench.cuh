// SPDX-License-Identifier: Apache-2.0
// bench/cuda_bench.cuh: what the CUDA benchmarks share — error exits, a median timer, random
// device weights from a hash, and the device-copy ceiling.
#pragma once

#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/core/numeric_types.hpp>

#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

namespace dm = deepmoe;
using bf16 = dm::bfloat16;

namespace {

// The device's properties, or false (after printing SKIPPED: exit 77) without a CUDA device.
inline bool device_or_skip(cudaDeviceProp& prop) {
  if (!dm::gpu::device_available()) {
    std::puts("SKIPPED: no CUDA device");
    return false;
  }
  cudaGetDeviceProperties(&prop, 0);
  return true;
}

inline int fail(dm::Status const& st) {
  std::fprintf(stderr, "%s\n", st.to_string().c_str());
  return 1;
}
inline int fail_cublas(cublasStatus_t s, char const* what) {
  std::fprintf(stderr, "%s: cuBLAS status %d\n", what, static_cast<int>(s));
  return 1;
}

// Median time [s] of fn on the default stream: `reps` runs after min(3, reps) warm-ups.
inline double median_seconds(std::function<void()> const& fn, int reps = 20) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < std::min(3, reps); ++i)
    fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// v[i] = bf16(scale · u(i)), u uniform in [−1, 1) from a hash of (seed, i)
__global__ void fill_kernel(bf16* v, std::size_t n, float scale, std::uint64_t seed) {
  std::size_t const i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    std::uint64_t z = (seed + i) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    v[i] = bf16(scale * (static_cast<float>(z >> 40) * 0x1p-23f - 1.0f));
  }
}
inline unsigned blocks(std::size_t n) {
  return static_cast<unsigned>((n + 255) / 256);
}

// The device-to-device copy bandwidth [GB/s]: cudaMemcpy of 1 GiB, read + write, median.
inline double copy_bandwidth_gbps() {
  std::size_t const big = std::size_t{1} << 30;
  dm::gpu::DeviceBuffer<unsigned char> src, dst;
  if (!src.allocate(big).ok() || !dst.allocate(big).ok()) {
    return 0.0;
  }
  cudaMemset(src.data(), 1, big);
  double const s =
      median_seconds([&] { cudaMemcpy(dst.data(), src.data(), big, cudaMemcpyDeviceToDevice); });
  return 2.0 * static_cast<double>(big) / s * 1e-9;
}

// C[m, n] = A[m, k]·B[n, k]ᵀ, row-major bf16 A and B, fp32 C (column-major cuBLAS: Cᵀ = B·Aᵀ)
inline cublasStatus_t gemm_nt(cublasHandle_t h, float* c, bf16 const* a, bf16 const* b, int m,
                              int n, int k) {
  float const one = 1.0f, zero = 0.0f;
  return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, b, CUDA_R_16BF, k, a, CUDA_R_16BF,
                      k, &zero, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// cuBLAS's bf16 GEMM rate [TFLOP/s]: cublasGemmEx, 8192³, bf16 in, fp32 accumulate, median.
inline double bf16_gemm_peak_tflops(cublasHandle_t blas) {
  int const n = 8192;
  dm::gpu::DeviceBuffer<bf16> a, b;
  dm::gpu::DeviceBuffer<float> c;
  if (!a.allocate(std::size_t{n} * n).ok() || !b.allocate(std::size_t{n} * n).ok() ||
      !c.allocate(std::size_t{n} * n).ok()) {
    return 0.0;
  }
  fill_kernel<<<blocks(std::size_t{n} * n), 256>>>(a.data(), std::size_t{n} * n, 1.0f, 1);
  fill_kernel<<<blocks(std::size_t{n} * n), 256>>>(b.data(), std::size_t{n} * n, 1.0f, 2);
  double const t = median_seconds(
      [&] { static_cast<void>(gemm_nt(blas, c.data(), a.data(), b.data(), n, n, n)); });
  return 2.0 * n * n * static_cast<double>(n) / t * 1e-12;
}

}  // namespace
