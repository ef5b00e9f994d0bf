// SPDX-License-Identifier: Apache-2.0
/// @file tile_gemm.cuh
/// @brief The SIMT tile of the fp32 expert path (grouped_swiglu.cuh): 32×32 fp32 outputs of
/// a row segment times Bᵀ, k staged 32 at a time in shared memory, inputs widened to fp32 as they
/// are staged. Each output element is one thread's sum over k in increasing order, so a row's
/// result does not depend on the other rows (batch invariance).
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/core/numeric_types.hpp>

#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {
namespace detail {
constexpr int kTile = 32;  // NOTES: 32×32 outputs per block, k staged 32 at a time
constexpr int kTileThreads = 256;

/// acc[i] (and acc2[i]) for rows r0 + ty + 8i (ty = threadIdx.x / 32) and column n0 + tx
/// (tx = threadIdx.x % 32) of the tile: Σ_k a[r, k]·B[n, k] over k < K, rows < r1, n < N, with
/// a [·, K] of type A and B [N, K] of type W, row-major. kTwo: B2 (the up projection) shares a.
/// Every thread of the block must call it (it synchronizes).
template <bool kTwo, class A, class W>
__device__ void tile_products(float (&acc)[4], float (&acc2)[4], A const* __restrict__ a,
                              std::int64_t r0, std::int64_t r1, W const* __restrict__ B,
                              W const* __restrict__ B2, std::int64_t n0, std::int64_t N,
                              std::int64_t K) {
  __shared__ float as[kTile][kTile + 1];
  __shared__ float bs[kTile][kTile + 1];
  __shared__ float bs2[kTwo ? kTile : 1][kTile + 1];
  int const tx = static_cast<int>(threadIdx.x % kTile), ty = static_cast<int>(threadIdx.x / kTile);
  for (std::int64_t k0 = 0; k0 < K; k0 += kTile) {
    for (int i = static_cast<int>(threadIdx.x); i < kTile * kTile; i += kTileThreads) {
      int const row = i / kTile, kk = i % kTile;
      std::int64_t const k = k0 + kk, r = r0 + row, n = n0 + row;
      as[row][kk] = (r < r1 && k < K) ? static_cast<float>(a[r * K + k]) : 0.0f;
      bool const in = n < N && k < K;
      bs[row][kk] = in ? static_cast<float>(B[n * K + k]) : 0.0f;
      if constexpr (kTwo) {
        bs2[row][kk] = in ? static_cast<float>(B2[n * K + k]) : 0.0f;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kTile; ++kk) {
      float const b = bs[tx][kk];
      float const b2 = kTwo ? bs2[tx][kk] : 0.0f;
      for (int i = 0; i < 4; ++i) {
        float const x = as[ty + 8 * i][kk];
        acc[i] += x * b;
        if constexpr (kTwo) {
          acc2[i] += x * b2;
        }
      }
    }
    __syncthreads();
  }
}
}  // namespace detail
}  // namespace gpu
DEEPMOE_NAMESPACE_END
