// SPDX-License-Identifier: Apache-2.0
/// @file linear.cuh
/// @brief gpu::linear: y = x·Wᵀ for T rows with fp32 accumulation — the device's path for the
/// small projections (the MoE gate's logits, N = E outputs), where N is too small to fill the
/// device with output tiles and decode has a handful of rows.
///
/// One warp per 2 output columns and 8 rows: for each, lane l sums the products of the 8-element
/// k-chunks l, l + 32, l + 64, … (k ascending within a chunk, one fused multiply-add each), then
/// the 32 partial sums meet in a fixed butterfly (xor 16, 8, 4, 2, 1); 16-byte loads where a chunk
/// is whole and aligned, which reads the same values. Every output element is that same sequence of
/// operations whatever T is and whichever rows share its warp, so a row's result does not depend on
/// the batch (batch invariance, as cpu::gemm_nt), and runs are deterministic. The warp reads its
/// weight rows once per 8 rows and each row of x once for its 2 columns; the 8 warps of a block
/// share their 8 rows of x through L1.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/core/numeric_types.hpp>

#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
constexpr int kLinearRows = 8;   // rows per warp
constexpr int kLinearCols = 2;   // output columns per warp
constexpr int kLinearWarps = 8;  // warps per block
constexpr int kLinearChunk = 8;  // consecutive k per lane step

// v[i] = float(p[i]) for i < m, 0 beyond; one or two 16-byte loads when whole and aligned
template <class T>
__device__ inline void load_chunk(float (&v)[kLinearChunk], T const* p, int m) {
  if (m == kLinearChunk && reinterpret_cast<std::uintptr_t>(p) % 16 == 0) {
    constexpr int kVectors = kLinearChunk * static_cast<int>(sizeof(T)) / 16;
    uint4 raw[kVectors];
    for (int j = 0; j < kVectors; ++j) {
      raw[j] = __ldg(reinterpret_cast<uint4 const*>(p) + j);
    }
    T const* e = reinterpret_cast<T const*>(raw);
    for (int i = 0; i < kLinearChunk; ++i) {
      v[i] = static_cast<float>(e[i]);
    }
  } else {
    for (int i = 0; i < kLinearChunk; ++i) {
      v[i] = i < m ? static_cast<float>(p[i]) : 0.0f;
    }
  }
}

template <class A, class W>
__global__ void __launch_bounds__(kLinearWarps * 32)
    linear_kernel(float* __restrict__ y, A const* __restrict__ x, W const* __restrict__ w,
                  std::int64_t T, std::int64_t N, std::int64_t K) {
  int const lane = static_cast<int>(threadIdx.x) % 32;
  std::int64_t const n0 =
      (static_cast<std::int64_t>(blockIdx.y) * kLinearWarps + static_cast<int>(threadIdx.x) / 32) *
      kLinearCols;
  std::int64_t const t0 = static_cast<std::int64_t>(blockIdx.x) * kLinearRows;
  if (n0 >= N) {
    return;  // uniform over the warp
  }
  int const rows = T - t0 < kLinearRows ? static_cast<int>(T - t0) : kLinearRows;
  int const cols = N - n0 < kLinearCols ? static_cast<int>(N - n0) : kLinearCols;
  float acc[kLinearRows][kLinearCols] = {};
  for (std::int64_t k0 = std::int64_t{lane} * kLinearChunk; k0 < K; k0 += 32 * kLinearChunk) {
    int const m = K - k0 < kLinearChunk ? static_cast<int>(K - k0) : kLinearChunk;
    float wv[kLinearCols][kLinearChunk];
    for (int c = 0; c < kLinearCols; ++c) {
      load_chunk(wv[c], w + (c < cols ? n0 + c : n0) * K + k0, m);
    }
    for (int r = 0; r < kLinearRows; ++r) {
      if (r < rows) {
        float xv[kLinearChunk];
        load_chunk(xv, x + (t0 + r) * K + k0, m);
        for (int c = 0; c < kLinearCols; ++c) {
          for (int i = 0; i < kLinearChunk; ++i) {  // past K: 0·0, which leaves acc as it is
            acc[r][c] = fmaf(xv[i], wv[c][i], acc[r][c]);
          }
        }
      }
    }
  }
  for (int r = 0; r < kLinearRows; ++r) {
    for (int c = 0; c < kLinearCols; ++c) {
      for (int offset = 16; offset > 0; offset >>= 1) {
        acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], offset);
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      if (lane == r * kLinearCols + c) {
        y[(t0 + r) * N + n0 + c] = acc[r][c];
      }
    }
  }
}
}  // namespace detail

/// y = x·Wᵀ on `stream` (file comment), asynchronous.
/// @tparam A, W  element types of x and W: float or bfloat16 (widened exactly)
/// @param d_y  [T, N] fp32, device, out
/// @param d_x  [T, K] A, device, in
/// @param d_w  [N, K] W, device, in (a bias-free linear layer's weight, as checkpoints store it)
/// @returns invalid_argument for negative sizes or a grid beyond CUDA's limits (N > 65535·16);
///          kCudaError for a failed launch.
/// @pre d_y overlaps neither input.
template <class A, class W>
Status linear(float* d_y, A const* d_x, W const* d_w, std::int64_t T, std::int64_t N,
              std::int64_t K, cudaStream_t stream) {
  if (T < 0 || N < 0 || K < 0 || ceil_div(T, detail::kLinearRows) > 0x7fffffff ||
      ceil_div(N, detail::kLinearWarps * detail::kLinearCols) > 65535) {
    std::string m = "gpu::linear: T, N, K ≥ 0 and N ≤ 65535·16 (got N ";
    m += std::to_string(N);
    m += ")";
    return invalid_argument(m);
  }
  if (T == 0 || N == 0) {
    return {};
  }
  dim3 const grid(static_cast<unsigned>(ceil_div(T, detail::kLinearRows)),
                  static_cast<unsigned>(ceil_div(N, detail::kLinearWarps * detail::kLinearCols)));
  detail::linear_kernel<A, W>
      <<<grid, detail::kLinearWarps * 32, 0, stream>>>(d_y, d_x, d_w, T, N, K);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
