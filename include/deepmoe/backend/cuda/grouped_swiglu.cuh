// SPDX-License-Identifier: Apache-2.0
/// @file grouped_swiglu.cuh
/// @brief Stage 3 of the MoE layer on the device: each expert's SwiGLU MLP over its contiguous
/// segment of permuted rows (a grouped GEMM), with fp32 accumulation — the first, SIMT path.
///
/// For segment s (an expert; or the shared experts over every token) and each row r in
/// [offsets[s], offsets[s+1]):
///   hidden[r] = silu(x[r]·W_gate[s]ᵀ) ⊙ (x[r]·W_up[s]ᵀ)      [I]
///   out[r]    = hidden[r]·W_down[s]ᵀ                            [H]
/// Two kernels (gate/up with the SwiGLU, then down), each a grid of 32×32 output tiles per
/// segment (detail::tile_products, tile_gemm.cuh): every output element is one thread's sum
/// over k in increasing order, so a row's result does not depend on which other rows share its
/// expert (batch invariance, as the CPU kernels). The segment offsets stay on the device: the grid
/// covers `max_rows` rows per segment and tiles past a segment's end return at once, so no host
/// synchronization is needed. This path keeps the CPU's fp32 arithmetic; the tensor-core paths
/// (grouped_swiglu_mma.cuh, grouped_swiglu_fp8.cuh) are checked against it and against double
/// loops.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/backend/cuda/tile_gemm.cuh>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// The weights of S SwiGLU MLPs stacked per segment, row-major, device memory.
/// @tparam W  float, bfloat16, or float8_e4m3fn (with 128×128 block scales: W[n, k] =
///            float(q[n, k]) · weight_scale_inv[n/128, k/128], docs/model.md §5)
template <class W>
struct DeviceSwiGluWeights {
  W const* gate_proj = nullptr;           ///< [S, I, H]
  W const* up_proj = nullptr;             ///< [S, I, H]
  W const* down_proj = nullptr;           ///< [S, H, I]
  float const* gate_scale_inv = nullptr;  ///< [S, ⌈I/128⌉, ⌈H/128⌉] fp32, fp8 only
  float const* up_scale_inv = nullptr;    ///< [S, ⌈I/128⌉, ⌈H/128⌉] fp32, fp8 only
  float const* down_scale_inv = nullptr;  ///< [S, ⌈H/128⌉, ⌈I/128⌉] fp32, fp8 only
};

namespace detail {
// hidden = silu(x·W_gateᵀ) ⊙ (x·W_upᵀ) per segment; grid (⌈I/32⌉, ⌈max_rows/32⌉, S)
template <class W, class In>
__global__ void __launch_bounds__(kTileThreads)
    gate_up_kernel(float* __restrict__ hidden, In const* __restrict__ x,
                   std::int32_t const* __restrict__ offsets, W const* __restrict__ gate,
                   W const* __restrict__ up, std::int64_t H, std::int64_t I) {
  std::int64_t const s = blockIdx.z;
  std::int64_t const r0 = offsets[s] + static_cast<std::int64_t>(blockIdx.y) * kTile;
  std::int64_t const r1 = offsets[s + 1];
  if (r0 >= r1) {
    return;  // past the segment's rows (uniform over the block, before any barrier)
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  float g[4] = {}, u[4] = {};
  tile_products<true>(g, u, x, r0, r1, gate + s * I * H, up + s * I * H, n0, I, H);
  int const tx = static_cast<int>(threadIdx.x % kTile), ty = static_cast<int>(threadIdx.x / kTile);
  for (int i = 0; i < 4; ++i) {
    std::int64_t const r = r0 + ty + 8 * i, n = n0 + tx;
    if (r < r1 && n < I) {
      hidden[r * I + n] = swiglu(g[i], u[i]);
    }
  }
}

// out = hidden·W_downᵀ per segment; grid (⌈H/32⌉, ⌈max_rows/32⌉, S)
template <class W>
__global__ void __launch_bounds__(kTileThreads)
    down_kernel(float* __restrict__ out, float const* __restrict__ hidden,
                std::int32_t const* __restrict__ offsets, W const* __restrict__ down,
                std::int64_t H, std::int64_t I) {
  std::int64_t const s = blockIdx.z;
  std::int64_t const r0 = offsets[s] + static_cast<std::int64_t>(blockIdx.y) * kTile;
  std::int64_t const r1 = offsets[s + 1];
  if (r0 >= r1) {
    return;
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  float o[4] = {}, unused[4] = {};
  tile_products<false>(o, unused, hidden, r0, r1, down + s * H * I, down, n0, H, I);
  int const tx = static_cast<int>(threadIdx.x % kTile), ty = static_cast<int>(threadIdx.x / kTile);
  for (int i = 0; i < 4; ++i) {
    std::int64_t const r = r0 + ty + 8 * i, n = n0 + tx;
    if (r < r1 && n < H) {
      out[r * H + n] = o[i];
    }
  }
}
}  // namespace detail

/// Runs S SwiGLU MLPs over their row segments on `stream` (file comment). Asynchronous.
/// @tparam W           weight type: float or bfloat16 (widened exactly)
/// @tparam In          row type: float, or bfloat16 (the shared experts reading token rows)
/// @param d_out        [R, H] fp32, device, out (rows outside every segment are not written)
/// @param d_hidden     [R, I] fp32, device: scratch, the SwiGLU activations
/// @param d_x          [R, H] In, device, in: the rows, segment after segment (the gather's
///                     output for the routed experts; the token rows for the shared experts)
/// @param d_offsets    [S + 1] int32, device: segment s is rows [offsets[s], offsets[s+1])
///                     (the dispatch plan's expert_offsets; {0, T} for the shared experts)
/// @param S            segments (≥ 1)
/// @param max_rows     an upper bound on any segment's rows (T for a dispatch plan: a token
///                     picks an expert at most once)
/// @param w            the S stacked weights
/// @param H, I         hidden size and the MLP's width
/// @returns invalid_argument for a non-positive size or a grid beyond CUDA's limits; kCudaError
///          for a failed launch.
/// @pre the segments are ordered and lie within [0, R); d_out and d_hidden overlap nothing.
template <class W, class In = float>
Status grouped_swiglu(float* d_out, float* d_hidden, In const* d_x, std::int32_t const* d_offsets,
                      int S, std::int64_t max_rows, DeviceSwiGluWeights<W> const& w, std::int64_t H,
                      std::int64_t I, cudaStream_t stream) {
  static_assert(std::is_same_v<W, float> || std::is_same_v<W, bfloat16>,
                "gpu::grouped_swiglu: fp32 or bf16 weights (fp8: grouped_swiglu_fp8)");
  if (S < 1 || H < 1 || I < 1 || max_rows < 0) {
    return invalid_argument("gpu::grouped_swiglu: S, H and I must be ≥ 1 and max_rows ≥ 0");
  }
  std::int64_t const row_tiles = ceil_div(max_rows, detail::kTile);
  if (row_tiles > 65535 || S > 65535 || ceil_div(std::max(H, I), detail::kTile) > 0x7fffffff) {
    return invalid_argument("gpu::grouped_swiglu: " + std::to_string(max_rows) + " rows or " +
                            std::to_string(S) + " segments exceed the grid (65535 tiles of 32)");
  }
  if (row_tiles == 0) {
    return {};
  }
  dim3 const up_grid(static_cast<unsigned>(ceil_div(I, detail::kTile)),
                     static_cast<unsigned>(row_tiles), static_cast<unsigned>(S));
  detail::gate_up_kernel<W, In><<<up_grid, detail::kTileThreads, 0, stream>>>(
      d_hidden, d_x, d_offsets, w.gate_proj, w.up_proj, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  dim3 const down_grid(static_cast<unsigned>(ceil_div(H, detail::kTile)),
                       static_cast<unsigned>(row_tiles), static_cast<unsigned>(S));
  detail::down_kernel<W><<<down_grid, detail::kTileThreads, 0, stream>>>(d_out, d_hidden, d_offsets,
                                                                         w.down_proj, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
