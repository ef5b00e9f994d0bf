// SPDX-License-Identifier: Apache-2.0
/// @file gemm_nt.hpp
/// @brief The CPU backend's batch-invariant fp32 "NT" GEMM: out[i, n] = Σ_k x[i, k] · w[n, k].
///
/// Every output element is computed by the same instruction sequence whatever the number of
/// rows m and whatever tile it falls in: 16 fp32 lanes accumulate x·w over k in steps of 16,
/// in increasing k; the lanes are summed by a fixed halving tree; the k % 16 tail is added
/// last, in increasing k. So a token's result does not depend on which other tokens share its
/// expert — the property general GEMM libraries give up when their blocking (and their
/// GEMV/GEMM path choice) depends on m. Weights other than fp32 are converted panel by panel
/// into an fp32 buffer first (weight_panel), so the conversion is paid once per panel and
/// reused by all rows.
///
/// The vector type is a GCC/Clang vector extension: AVX-512 code with -march supporting it,
/// narrower SIMD otherwise, with the same per-lane arithmetic. Do not compile with
/// -ffast-math/-fassociative-math, which lets the compiler reorder the sums.
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>
#include <deepmoe/ops/linear_weight.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

DEEPMOE_NAMESPACE_BEGIN
namespace cpu {

/// 16 fp32 lanes (one AVX-512 register).
using f32x16 = float __attribute__((vector_size(64)));
inline constexpr int kLanes = 16;
/// Largest tile of the micro-kernel: kMaxTileRows rows of x by kMaxTileCols rows of w.
inline constexpr int kMaxTileRows = 4;
inline constexpr int kMaxTileCols = 8;

/// Sum of the 16 lanes by a fixed halving tree: ((l0+l8)+(l4+l12))+... for every caller.
DEEPMOE_ALWAYS_INLINE float lane_sum(f32x16 v) {
  std::array<float, kLanes> a;
  std::memcpy(a.data(), &v, sizeof(v));
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) {
      a[static_cast<std::size_t>(i)] += a[static_cast<std::size_t>(i + width)];
    }
  }
  return a[0];
}

/// One tile: out[i*ldo + n] = Σ_k x[i*ldx + k] · w[n*ldw + k] for i < MR, n < NR.
template <int MR, int NR>
void dot_tile(float* out, std::int64_t ldo, float const* x, std::int64_t ldx, float const* w,
              std::int64_t ldw, std::int64_t kd) {
  f32x16 acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int n = 0; n < NR; ++n) {
      acc[i][n] = f32x16{};
    }
  }
  std::int64_t k = 0;
  for (; k + kLanes <= kd; k += kLanes) {
    f32x16 xv[MR];
    for (int i = 0; i < MR; ++i) {
      std::memcpy(&xv[i], x + i * ldx + k, sizeof(f32x16));
    }
    for (int n = 0; n < NR; ++n) {
      f32x16 wv;
      std::memcpy(&wv, w + n * ldw + k, sizeof(f32x16));
      for (int i = 0; i < MR; ++i) {
        acc[i][n] += xv[i] * wv;
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int n = 0; n < NR; ++n) {
      float s = lane_sum(acc[i][n]);
      for (std::int64_t t = k; t < kd; ++t) {
        s += x[i * ldx + t] * w[n * ldw + t];
      }
      out[i * ldo + n] = s;
    }
  }
}

namespace detail {
using DotTileFn = void (*)(float*, std::int64_t, float const*, std::int64_t, float const*,
                           std::int64_t, std::int64_t);
template <int... I>
constexpr std::array<DotTileFn, sizeof...(I)> make_dot_tiles(
    std::integer_sequence<int, I...>) {
  return {&dot_tile<I / kMaxTileCols + 1, I % kMaxTileCols + 1>...};
}
/// dot_tile<mr, nr> at index (mr-1)*kMaxTileCols + (nr-1).
inline constexpr auto kDotTiles =
    make_dot_tiles(std::make_integer_sequence<int, kMaxTileRows * kMaxTileCols>{});
}  // namespace detail

/// out[i*ldo + n] = Σ_k x[i*ldx + k] · w[n*ldw + k] for i < m, n < n_cols (all fp32, host).
/// Batch-invariant: row i's results are bitwise the same for any m (see file comment).
/// @pre out does not overlap x or w.
inline void gemm_nt(float* out, std::int64_t ldo, float const* x, std::int64_t ldx,
                    std::int64_t m, float const* w, std::int64_t ldw, std::int64_t n_cols,
                    std::int64_t kd) {
  // Few rows (decode): wide tiles keep 8 independent accumulator chains in flight.
  int const tile_cols = m <= 2 ? kMaxTileCols : kMaxTileCols / 2;
  for (std::int64_t i = 0; i < m; i += kMaxTileRows) {
    int const mr = static_cast<int>(m - i < kMaxTileRows ? m - i : kMaxTileRows);
    for (std::int64_t n = 0; n < n_cols; n += tile_cols) {
      int const nr = static_cast<int>(n_cols - n < tile_cols ? n_cols - n : tile_cols);
      detail::kDotTiles[static_cast<std::size_t>((mr - 1) * kMaxTileCols + (nr - 1))](
          out + i * ldo + n, ldo, x + i * ldx, ldx, w + n * ldw, ldw, kd);
    }
  }
}

/// Rows [row_begin, row_end) of `w` as fp32, row-major with K = w.weight.extent(1) columns:
/// a pointer into the weight itself for fp32 weights, else the rows converted into `panel`
/// (which must hold (row_end − row_begin)·K floats), fp8 rows multiplied by their block scales.
template <class W>
float const* weight_panel(float* panel, LinearWeight<W> const& w, std::int64_t row_begin,
                          std::int64_t row_end, int block) {
  std::int64_t const kd = w.weight.extent(1);
  if constexpr (std::is_same_v<W, float>) {
    static_cast<void>(panel);
    static_cast<void>(row_end);
    static_cast<void>(block);
    return w.weight.data() + row_begin * kd;
  } else if constexpr (is_float8_v<W>) {
    // Shapes were checked when the layer's weights were (check_linear_weight); the status
    // here can only repeat that check.
    static_cast<void>(dequantize_fp8_block_rows(panel, w.weight, w.weight_scale_inv, row_begin,
                                                row_end, block));
    return panel;
  } else {
    static_cast<void>(block);
    convert_to_float(panel, w.weight.data() + row_begin * kd, (row_end - row_begin) * kd);
    return panel;
  }
}

}  // namespace cpu
DEEPMOE_NAMESPACE_END
