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

/// Where gpu::linear finds its rows: leading dimensions and a strided batch (one launch computes
/// y_b = x_b·W_bᵀ for b < batch, e.g. one projection per attention head).
struct LinearLayout {
  std::int64_t ldx = 0;       ///< elements between rows of x (≥ K; 0: K)
  std::int64_t ldy = 0;       ///< elements between rows of y (≥ N; 0: N)
  int batch = 1;              ///< problems (≥ 1, ≤ 65535)
  std::int64_t x_stride = 0;  ///< elements between problems' x
  std::int64_t w_stride = 0;  ///< elements between problems' W (rows of W stay K apart)
  std::int64_t y_stride = 0;  ///< elements between problems' y
};

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
                  std::int64_t T, std::int64_t N, std::int64_t K, LinearLayout l) {
  int const lane = static_cast<int>(threadIdx.x) % 32;
  x += static_cast<std::int64_t>(blockIdx.z) * l.x_stride;
  w += static_cast<std::int64_t>(blockIdx.z) * l.w_stride;
  y += static_cast<std::int64_t>(blockIdx.z) * l.y_stride;
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
  // two k-chunks per step (loads of both issued before their FMAs), each accumulator still
  // summing its chunks in increasing k: the arithmetic of one chunk per step
  constexpr std::int64_t kStep = 32 * kLinearChunk;
  for (std::int64_t k0 = std::int64_t{lane} * kLinearChunk; k0 < K; k0 += 2 * kStep) {
    std::int64_t const k1 = k0 + kStep;
    bool const second = k1 < K;
    int const m0 = K - k0 < kLinearChunk ? static_cast<int>(K - k0) : kLinearChunk;
    int const m1 = !second ? 0 : K - k1 < kLinearChunk ? static_cast<int>(K - k1) : kLinearChunk;
    std::int64_t const kb = second ? k1 : k0;  // (a pointer inside the row either way)
    float wv[2][kLinearCols][kLinearChunk];
    for (int c = 0; c < kLinearCols; ++c) {
      W const* wr = w + (c < cols ? n0 + c : n0) * K;
      load_chunk(wv[0][c], wr + k0, m0);
      load_chunk(wv[1][c], wr + kb, m1);
    }
    for (int r = 0; r < kLinearRows; ++r) {
      if (r < rows) {
        float xv[2][kLinearChunk];
        load_chunk(xv[0], x + (t0 + r) * l.ldx + k0, m0);
        load_chunk(xv[1], x + (t0 + r) * l.ldx + kb, m1);
        for (int h = 0; h < (second ? 2 : 1); ++h) {
          for (int c = 0; c < kLinearCols; ++c) {
            for (int i = 0; i < kLinearChunk; ++i) {  // past K: 0·0, which leaves acc as it is
              acc[r][c] = fmaf(xv[h][i], wv[h][c][i], acc[r][c]);
            }
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
        y[(t0 + r) * l.ldy + n0 + c] = acc[r][c];
      }
    }
  }
}
}  // namespace detail

/// y = x·Wᵀ on `stream` (file comment), asynchronous; with `layout`, rows of x and y at other
/// leading dimensions and a strided batch of such problems.
/// @tparam A, W  element types of x and W: float or bfloat16 (widened exactly)
/// @param d_y     [T, N] fp32, device, out (row stride layout.ldy)
/// @param d_x     [T, K] A, device, in (row stride layout.ldx)
/// @param d_w     [N, K] W, device, in (a bias-free linear layer's weight, as checkpoints store it)
/// @param layout  leading dimensions and batch (LinearLayout; default: one dense problem)
/// @returns invalid_argument for negative sizes, leading dimensions below K or N, or a grid
///          beyond CUDA's limits (N > 65535·16, batch > 65535); kCudaError for a failed launch.
/// @pre d_y overlaps neither input.
template <class A, class W>
Status linear(float* d_y, A const* d_x, W const* d_w, std::int64_t T, std::int64_t N,
              std::int64_t K, cudaStream_t stream, LinearLayout layout = {}) {
  layout.ldx = layout.ldx == 0 ? K : layout.ldx;
  layout.ldy = layout.ldy == 0 ? N : layout.ldy;
  if (T < 0 || N < 0 || K < 0 || layout.ldx < K || layout.ldy < N || layout.batch < 1 ||
      layout.batch > 65535 || ceil_div(T, detail::kLinearRows) > 0x7fffffff ||
      ceil_div(N, detail::kLinearWarps * detail::kLinearCols) > 65535) {
    std::string m = "gpu::linear: T, N, K ≥ 0, ldx ≥ K, ldy ≥ N, 1 ≤ batch ≤ 65535 and ";
    m += "N ≤ 65535·16 (got T ";
    m += std::to_string(T);
    m += ", N ";
    m += std::to_string(N);
    m += ", K ";
    m += std::to_string(K);
    m += ", batch ";
    m += std::to_string(layout.batch);
    m += ")";
    return invalid_argument(m);
  }
  if (T == 0 || N == 0) {
    return {};
  }
  dim3 const grid(static_cast<unsigned>(ceil_div(T, detail::kLinearRows)),
                  static_cast<unsigned>(ceil_div(N, detail::kLinearWarps * detail::kLinearCols)),
                  static_cast<unsigned>(layout.batch));
  detail::linear_kernel<A, W>
      <<<grid, detail::kLinearWarps * 32, 0, stream>>>(d_y, d_x, d_w, T, N, K, layout);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
