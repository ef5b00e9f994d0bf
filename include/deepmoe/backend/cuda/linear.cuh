// SPDX-License-Identifier: Apache-2.0
/// @file linear.cuh
/// @brief gpu::linear: y = x·Wᵀ for T rows, fp32 accumulation, on the SIMT tile (tile_gemm.cuh)
/// — the device's first path for the small projections (the MoE gate's logits), batch-invariant
/// like cpu::gemm_nt: a row's result does not depend on the other rows.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/backend/cuda/tile_gemm.cuh>

#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
template <class A, class W>
__global__ void __launch_bounds__(kTileThreads)
    linear_kernel(float* __restrict__ y, A const* __restrict__ x, W const* __restrict__ w,
                  std::int64_t T, std::int64_t N, std::int64_t K) {
  std::int64_t const r0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  float acc[4] = {}, unused[4] = {};
  tile_products<false>(acc, unused, x, r0, T, w, w, n0, N, K);
  int const tx = static_cast<int>(threadIdx.x % kTile), ty = static_cast<int>(threadIdx.x / kTile);
  for (int i = 0; i < 4; ++i) {
    std::int64_t const r = r0 + ty + 8 * i, n = n0 + tx;
    if (r < T && n < N) {
      y[r * N + n] = acc[i];
    }
  }
}
}  // namespace detail

/// y = x·Wᵀ on `stream`, asynchronous.
/// @tparam A, W  element types of x and W: float or bfloat16 (widened exactly)
/// @param d_y  [T, N] fp32, device, out
/// @param d_x  [T, K] A, device, in
/// @param d_w  [N, K] W, device, in (a bias-free linear layer's weight, as checkpoints store it)
/// @returns invalid_argument for negative sizes or more than 65535·32 rows; kCudaError for a
///          failed launch.
/// @pre d_y overlaps neither input.
template <class A, class W>
Status linear(float* d_y, A const* d_x, W const* d_w, std::int64_t T, std::int64_t N,
              std::int64_t K, cudaStream_t stream) {
  if (T < 0 || N < 0 || K < 0 || ceil_div(T, detail::kTile) > 65535) {
    return invalid_argument("gpu::linear: T, N, K ≥ 0 and T ≤ 65535·32 (got T " +
                            std::to_string(T) + ")");
  }
  if (T == 0 || N == 0) {
    return {};
  }
  dim3 const grid(static_cast<unsigned>(ceil_div(N, detail::kTile)),
                  static_cast<unsigned>(ceil_div(T, detail::kTile)));
  detail::linear_kernel<A, W><<<grid, detail::kTileThreads, 0, stream>>>(d_y, d_x, d_w, T, N, K);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
