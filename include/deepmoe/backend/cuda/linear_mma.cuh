// SPDX-License-Identifier: Apache-2.0
/// @file linear_mma.cuh
/// @brief gpu::linear_mma: y = x·Wᵀ on tensor cores — bf16 rows and weights, fp32 accumulation
/// (mma.sync m16n8k16, SM80+) — the projections' fast path (attention, lm_head), where
/// gpu::linear is the fp32 SIMT one. The tiles are grouped_swiglu_mma's down projection with a
/// single segment: 64 rows × 128 columns × 64 k per threadblock, three cp.async stages through
/// swizzled shared memory (grouped_swiglu_mma.cuh, mma_sm80.cuh).
///
/// Each output element is a fixed-order fp32 sum over its row and column only, so a row's result
/// does not depend on the other rows (batch invariance) and runs are deterministic. Against
/// gpu::linear on fp32 rows the difference is the rounding of x to bf16 (2⁻⁹ relative per value)
/// and the order of the sums. DeepSeek-V3's bf16 inference (inference/model.py `Linear`) rounds
/// activations to bf16 the same way.
#pragma once

#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>
#include <deepmoe/backend/cuda/linear.cuh>

#include <cstdint>
#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
#if defined(__CUDACC__)
// y = x·Wᵀ (fp32); grid (⌈T/64⌉, ⌈N/128⌉)
__global__ inline void __launch_bounds__(kMmaThreads)
    linear_mma_kernel(float* __restrict__ y, bfloat16 const* __restrict__ x,
                      bfloat16 const* __restrict__ w, std::int64_t T, std::int64_t N,
                      std::int64_t K) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  std::int64_t const r0 = static_cast<std::int64_t>(blockIdx.x) * kMmaTileM;
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * kMmaTileN;
  int const rows = clamp_to(T - r0, kMmaTileM);
  int const cols = clamp_to(N - n0, kMmaTileN);
  float acc[2][4][4] = {};
  bfloat16 const* wt = w + n0 * K;
  mma_mainloop(acc, x + r0 * K, rows, wt, cols < 64 ? cols : 64, wt + 64 * K, cols - 64, K,
               smem_bytes);
  store_out_tile(y + r0 * N + n0, N, acc, rows, cols);
}

// out = bf16(in), n values
__global__ inline void to_bf16_kernel(bfloat16* __restrict__ out, float const* __restrict__ in,
                                      std::int64_t n) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = bfloat16(in[i]);
  }
}
#endif  // __CUDACC__
}  // namespace detail

/// ok when linear_mma can run y = x·Wᵀ with N outputs and K inputs on the current device: K a
/// multiple of 32, N even, compute capability ≥ 8.0 and code built from compute_80 or later;
/// else invalid_argument naming what is missing.
inline Status linear_mma_supported(std::int64_t N, std::int64_t K) {
  if (K < 32 || K % 32 != 0 || N < 2 || N % 2 != 0 || ceil_div(N, detail::kMmaTileN) > 65535) {
    std::string m = "gpu::linear_mma: K = ";  // NOTES: appends (GCC 12's -Wrestrict)
    m += std::to_string(K);
    m += " must be a multiple of 32 and N = ";
    m += std::to_string(N);
    m += " even and at most 65535·128 (use gpu::linear, the SIMT path)";
    return invalid_argument(m);
  }
  return detail::check_mma_target("gpu::linear_mma", detail::linear_mma_kernel, 80, "bf16 mma.sync",
                                  "80 or later");
}

/// y = x·Wᵀ for T rows on tensor cores (file comment), on `stream`; asynchronous.
/// @param d_y  [T, N] fp32, device, out (8-byte aligned)
/// @param d_x  [T, K] bf16, device (16-byte aligned)
/// @param d_w  [N, K] bf16, device (16-byte aligned): a bias-free linear layer's weight
/// @returns invalid_argument for T outside [0, 2^31·64), unsupported sizes or device
///          (linear_mma_supported) or misaligned operands; kCudaError for a failed launch.
/// @pre d_y overlaps neither input.
inline Status linear_mma(float* d_y, bfloat16 const* d_x, bfloat16 const* d_w, std::int64_t T,
                         std::int64_t N, std::int64_t K, cudaStream_t stream) {
  DEEPMOE_RETURN_IF_ERROR(linear_mma_supported(N, K));
  if (T < 0 || ceil_div(T, detail::kMmaTileM) > 0x7fffffff ||
      reinterpret_cast<std::uintptr_t>(d_y) % 8 != 0 ||
      reinterpret_cast<std::uintptr_t>(d_x) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(d_w) % 16 != 0) {
    return invalid_argument("gpu::linear_mma: T ≥ 0, y 8-byte and x, W 16-byte aligned (cp.async)");
  }
  if (T == 0) {
    return {};
  }
  constexpr int smem = static_cast<int>(detail::kMmaSmemBytes);
  DEEPMOE_CUDA_CHECK(cudaFuncSetAttribute(detail::linear_mma_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  dim3 const grid(static_cast<unsigned>(ceil_div(T, detail::kMmaTileM)),
                  static_cast<unsigned>(ceil_div(N, detail::kMmaTileN)));
  detail::linear_mma_kernel<<<grid, detail::kMmaThreads, smem, stream>>>(d_y, d_x, d_w, T, N, K);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

/// y = x·Wᵀ for fp32 rows x: on tensor cores when `mma` (x rounded to bf16 into `d_x16`, then
/// linear_mma; W must be bf16), else gpu::linear (fp32 rows, the CPU's arithmetic).
/// @param d_x16  [T, K] bf16 device scratch, used when `mma`
/// @returns the chosen path's errors.
template <class W>
Status project(float* d_y, float const* d_x, W const* d_w, std::int64_t T, std::int64_t N,
               std::int64_t K, bool mma, bfloat16* d_x16, cudaStream_t stream) {
  if constexpr (std::is_same_v<W, bfloat16>) {
    if (mma) {
      if (T > 0) {
        detail::to_bf16_kernel<<<static_cast<unsigned>(ceil_div(T * K, 256)), 256, 0, stream>>>(
            d_x16, d_x, T * K);
        DEEPMOE_CUDA_CHECK(cudaGetLastError());
      }
      return linear_mma(d_y, d_x16, d_w, T, N, K, stream);
    }
  }
  return linear(d_y, d_x, d_w, T, N, K, stream);
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
