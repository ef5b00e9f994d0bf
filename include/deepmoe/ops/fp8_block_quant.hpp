// SPDX-License-Identifier: Apache-2.0
/// @file fp8_block_quant.hpp
/// @brief DeepSeek-V3 FP8 weights with 128×128 block scales: dequantize (whole matrix or a panel
/// of rows) and quantize, on the host.
///
/// A quantized weight W [N, K] (N = out features, K = in features) is stored as
///   Wq [N, K] float8_e4m3fn and S = `weight_scale_inv` [⌈N/B⌉, ⌈K/B⌉] fp32, B = 128,
/// and means
///   W[i, j] = f32(Wq[i, j]) · S[⌊i/B⌋, ⌊j/B⌋]            (a multiply, despite the name "inv").
/// Blocks at the bottom and right edges may be partial: V3's kv_a_proj_with_mqa has N = 576,
/// i.e. 4 full row blocks and one of 64 rows.
///
/// @ref docs/model.md §5; DeepSeek-V3 inference/kernel.py `weight_dequant_kernel`,
///      inference/fp8_cast_bf16.py, README_WEIGHTS.md ("FP8 Weight Documentation").
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

DEEPMOE_NAMESPACE_BEGIN

/// Edge of DeepSeek-V3's square FP8 weight-scale blocks [elements] (config `quant_block`).
inline constexpr int kFp8WeightBlock = 128;
/// Largest finite float8_e4m3fn, the value a block's amax is mapped to by quantize_fp8_block.
inline constexpr float kFloat8E4M3Max = 448.0f;

namespace detail::fp8_block {

/// ⌈n / b⌉ for n ≥ 0, b > 0.
constexpr std::int64_t ceil_div(std::int64_t n, std::int64_t b) noexcept {
  return (n + b - 1) / b;
}

/// "[r, c]".
inline std::string shape_string(std::int64_t rows, std::int64_t cols) {
  // NOTES: appends rather than `"[" + std::to_string(...)`, which trips GCC 12's false
  // -Wrestrict positive at -O3 (GCC PR 105329).
  std::string s("[");
  s += std::to_string(rows);
  s += ", ";
  s += std::to_string(cols);
  s += ']';
  return s;
}
template <class T>
std::string shape_string(MatrixView<T> m) {
  return shape_string(m.extent(0), m.extent(1));
}

/// Shared precondition checks: block_size > 0, non-null data for non-empty views, and the scale
/// shape [⌈rows/B⌉, ⌈cols/B⌉] of `w`.
template <class W, class S>
Status check_block_shapes(char const* fn, MatrixView<W> w, MatrixView<S> scale, int block_size) {
  std::string const f(fn);
  if (block_size <= 0) {
    return invalid_argument(f + ": block_size = " + std::to_string(block_size) +
                            " must be > 0 (DeepSeek-V3 uses 128)");
  }
  if (!w.empty() && w.data() == nullptr) {
    return invalid_argument(f + ": w has shape " + shape_string(w) + " but a null data pointer");
  }
  std::int64_t const want_r = ceil_div(w.extent(0), block_size);
  std::int64_t const want_c = ceil_div(w.extent(1), block_size);
  if (scale.extent(0) != want_r || scale.extent(1) != want_c) {
    return invalid_argument(f + ": weight_scale_inv has shape " + shape_string(scale) +
                            " but w of shape " + shape_string(w) + " with block_size " +
                            std::to_string(block_size) + " needs " + shape_string(want_r, want_c) +
                            " (ceil-div of each extent) -- HINT: wrong scale tensor or block "
                            "size?");
  }
  if (!scale.empty() && scale.data() == nullptr) {
    return invalid_argument(f + ": weight_scale_inv has shape " + shape_string(scale) +
                            " but a null data pointer");
  }
  return {};
}

/// First scale that is NaN, infinite or negative, reported with its block index and the rows
/// and columns of w that it scales.
inline Status check_scale_values(char const* fn, MatrixView<float8_e4m3fn const> w,
                                 MatrixView<float const> scale, int block_size) {
  std::int64_t const nbr = scale.extent(0);
  std::int64_t const nbc = scale.extent(1);
  float const* const s = scale.data();
  for (std::int64_t bi = 0; bi < nbr; ++bi) {
    for (std::int64_t bj = 0; bj < nbc; ++bj) {
      float const v = s[bi * nbc + bj];
      // NOTES: tests on the bit pattern, which -ffast-math cannot fold away: NaN or inf
      // (exponent all ones), or negative and non-zero (−0 is accepted).
      std::uint32_t const u = detail::bit_cast<std::uint32_t>(v);
      if ((u & 0x7FFF'FFFFu) >= 0x7F80'0000u || (u > 0x8000'0000u)) {
        std::int64_t const r0 = bi * block_size;
        std::int64_t const c0 = bj * block_size;
        return invalid_argument(std::string(fn) + ": weight_scale_inv[" + std::to_string(bi) +
                                ", " + std::to_string(bj) + "] = " + std::to_string(v) +
                                " is not a finite scale >= 0 (it scales w rows " +
                                std::to_string(r0) + ".." +
                                std::to_string(std::min(r0 + block_size, w.extent(0)) - 1) +
                                ", columns " + std::to_string(c0) + ".." +
                                std::to_string(std::min(c0 + block_size, w.extent(1)) - 1) + ")");
      }
    }
  }
  return {};
}

/// out[j] = f32(w[j]) · s for j < n: one fused decode-and-scale pass (integer decode, one
/// multiply), vectorized at -O3; see detail::map_to_float.
DEEPMOE_ALWAYS_INLINE void dequantize_span(float* out, float8_e4m3fn const* w, std::int64_t n,
                                           float s) noexcept {
  detail::map_to_float(out, w, n,
                       [s](float8_e4m3fn x) { return detail::e4m3fn_bits_to_float(x.bits) * s; });
}

}  // namespace detail::fp8_block

/// Checks a block-scale tensor against its weight: block_size > 0, shape
/// [⌈N/B⌉, ⌈K/B⌉], and every scale finite and ≥ 0 (−0 and 0 are accepted: they zero the block).
/// dequantize_fp8_block calls this; callers of dequantize_fp8_block_rows call it once per weight.
/// @param w                [N, K] float8_e4m3fn, row-major, host (only its shape is read)
/// @param weight_scale_inv [⌈N/B⌉, ⌈K/B⌉] float, row-major, host
/// @param block_size       B [elements], > 0
/// @returns kOk; kInvalidArgument naming the argument and both shapes on a shape mismatch, or
///          the block index (and its row/column ranges) of the first non-finite or negative scale.
inline Status validate_fp8_block_scales(MatrixView<float8_e4m3fn const> w,
                                        MatrixView<float const> weight_scale_inv,
                                        int block_size = kFp8WeightBlock) {
  DEEPMOE_RETURN_IF_ERROR(detail::fp8_block::check_block_shapes("validate_fp8_block_scales", w,
                                                                weight_scale_inv, block_size));
  return detail::fp8_block::check_scale_values("validate_fp8_block_scales", w, weight_scale_inv,
                                               block_size);
}

/// Dequantizes rows [row_begin, row_end) of a block-scaled FP8 weight into a dense buffer:
///   out[(i − row_begin)·K + j] = f32(w[i, j]) · weight_scale_inv[⌊i/B⌋, ⌊j/B⌋].
/// Meant for GEMMs that dequantize weight panels of a few rows at a time: O(1) checks, then one
/// fused, vectorized decode-and-scale pass per (row, column block); the result is bit-identical
/// to dequantize_fp8_block. Scale *values* are not checked here (call validate_fp8_block_scales
/// once per weight): a NaN/inf scale gives NaN/inf outputs, as do NaN codes in w.
/// @param out              [row_end − row_begin, K] float, row-major, contiguous, host, out
/// @param w                [N, K] float8_e4m3fn, row-major, host
/// @param weight_scale_inv [⌈N/B⌉, ⌈K/B⌉] float, row-major, host
/// @param row_begin        first row [rows], 0 ≤ row_begin ≤ row_end
/// @param row_end          one past the last row [rows], ≤ N; an empty range is a no-op
/// @param block_size       B [elements], > 0
/// @returns kOk; kInvalidArgument for a bad shape, block size, row range or null `out`.
/// @pre out does not overlap w or weight_scale_inv.
inline Status dequantize_fp8_block_rows(float* out, MatrixView<float8_e4m3fn const> w,
                                        MatrixView<float const> weight_scale_inv,
                                        std::int64_t row_begin, std::int64_t row_end,
                                        int block_size = kFp8WeightBlock) {
  DEEPMOE_RETURN_IF_ERROR(detail::fp8_block::check_block_shapes("dequantize_fp8_block_rows", w,
                                                                weight_scale_inv, block_size));
  std::int64_t const n = w.extent(0);
  std::int64_t const k = w.extent(1);
  if (row_begin < 0 || row_begin > row_end || row_end > n) {
    return invalid_argument("dequantize_fp8_block_rows: row range [" + std::to_string(row_begin) +
                            ", " + std::to_string(row_end) + ") is not within the " +
                            std::to_string(n) + " rows of w (shape " +
                            detail::fp8_block::shape_string(w) + ")");
  }
  if (row_end == row_begin || k == 0) {
    return {};
  }
  if (out == nullptr) {
    return invalid_argument("dequantize_fp8_block_rows: out is null");
  }
  std::int64_t const bs = block_size;
  std::int64_t const nbc = weight_scale_inv.extent(1);
  float8_e4m3fn const* const wd = w.data();
  float const* const sd = weight_scale_inv.data();
  for (std::int64_t i = row_begin; i < row_end; ++i) {
    float* const orow = out + (i - row_begin) * k;
    float8_e4m3fn const* const wrow = wd + i * k;
    float const* const srow = sd + (i / bs) * nbc;
    for (std::int64_t bj = 0; bj < nbc; ++bj) {
      std::int64_t const j0 = bj * bs;
      detail::fp8_block::dequantize_span(orow + j0, wrow + j0, std::min(bs, k - j0), srow[bj]);
    }
  }
  return {};
}

/// Dequantizes a block-scaled FP8 weight:
///   out[i, j] = f32(w[i, j]) · weight_scale_inv[⌊i/B⌋, ⌊j/B⌋]   (fp32 product, rounded once).
/// NaN codes in w (0x7F, 0xFF) give NaN.
/// @param out              [N, K] float, row-major, host, out
/// @param w                [N, K] float8_e4m3fn, row-major, host
/// @param weight_scale_inv [⌈N/B⌉, ⌈K/B⌉] float, row-major, host; each finite and ≥ 0
/// @param block_size       B [elements], > 0 (128 for DeepSeek-V3 checkpoints)
/// @returns kOk (N = 0 or K = 0 is a valid no-op); kInvalidArgument, naming the argument and
///          both shapes, if out's shape differs from w's or weight_scale_inv's from
///          [⌈N/B⌉, ⌈K/B⌉], if block_size ≤ 0, or, naming the block index, if a scale is NaN,
///          infinite or negative. Nothing is written on error.
/// @pre out does not overlap w or weight_scale_inv.
/// @ref docs/model.md §5; DeepSeek-V3 inference/kernel.py `weight_dequant`.
inline Status dequantize_fp8_block(MatrixView<float> out, MatrixView<float8_e4m3fn const> w,
                                   MatrixView<float const> weight_scale_inv,
                                   int block_size = kFp8WeightBlock) {
  if (out.extent(0) != w.extent(0) || out.extent(1) != w.extent(1)) {
    return invalid_argument("dequantize_fp8_block: out has shape " +
                            detail::fp8_block::shape_string(out) + " but w has shape " +
                            detail::fp8_block::shape_string(w));
  }
  if (!out.empty() && out.data() == nullptr) {
    return invalid_argument("dequantize_fp8_block: out has shape " +
                            detail::fp8_block::shape_string(out) + " but a null data pointer");
  }
  DEEPMOE_RETURN_IF_ERROR(detail::fp8_block::check_block_shapes("dequantize_fp8_block", w,
                                                                weight_scale_inv, block_size));
  DEEPMOE_RETURN_IF_ERROR(detail::fp8_block::check_scale_values("dequantize_fp8_block", w,
                                                                weight_scale_inv, block_size));
  return dequantize_fp8_block_rows(out.data(), w, weight_scale_inv, 0, w.extent(0), block_size);
}

/// Quantizes a weight to FP8 with one scale per B×B block, as DeepSeek-V3's checkpoints are:
///   amax = max |w[i, j]| over the block's real elements,
///   s    = amax / 448                 if amax > 0 (raised to FLT_MIN should that underflow),
///        = 1                          if the block is all zeros (any s > 0 would do: q = 0),
///   q    = e4m3fn(w[i, j] / s)        (fp32 division, then saturating RNE),
/// storing q in out and s in weight_scale_inv, so dequantize_fp8_block gives back q·s.
/// Partial edge blocks: DeepSeek zero-pads them to B×B to compute the scale; zeros never raise
/// the amax, so using the real elements only is the same.
/// Error: the element of amax maps to ±448 exactly (when amax ≥ 448·FLT_MIN); every element obeys
///   |w − q·s| ≤ max(2^−4·|w|, 2^−10·s) + 2^−21·amax,
/// i.e. half an e4m3 ulp (relative 2^−4 where x = w/s is in e4m3's normal range, 2^−10·s absolute
/// in its subnormal range |x| < 2^−6), plus the fp32 rounding of the division and of the
/// dequantizing product (derivation in tests/ops/fp8_block_quant_test.cpp).
/// @param out              [N, K] float8_e4m3fn, row-major, host, out
/// @param weight_scale_inv [⌈N/B⌉, ⌈K/B⌉] float, row-major, host, out
/// @param w                [N, K] float, row-major, host; every element finite
/// @param block_size       B [elements], > 0
/// @returns kOk (N = 0 or K = 0 is a valid no-op); kInvalidArgument naming the argument and the
///          shapes on a shape mismatch or block_size ≤ 0, or naming the index (row-major first) of
///          a NaN or infinite element of w. Nothing is written on error.
/// @pre the outputs do not overlap each other or w.
/// @ref docs/model.md §5; DeepSeek-V3 README_WEIGHTS.md (block-wise FP8 quantization).
inline Status quantize_fp8_block(MatrixView<float8_e4m3fn> out, MatrixView<float> weight_scale_inv,
                                 MatrixView<float const> w, int block_size = kFp8WeightBlock) {
  if (out.extent(0) != w.extent(0) || out.extent(1) != w.extent(1)) {
    return invalid_argument("quantize_fp8_block: out has shape " +
                            detail::fp8_block::shape_string(out) + " but w has shape " +
                            detail::fp8_block::shape_string(w));
  }
  if (!out.empty() && out.data() == nullptr) {
    return invalid_argument("quantize_fp8_block: out has shape " +
                            detail::fp8_block::shape_string(out) + " but a null data pointer");
  }
  DEEPMOE_RETURN_IF_ERROR(
      detail::fp8_block::check_block_shapes("quantize_fp8_block", w, weight_scale_inv, block_size));
  std::int64_t const n = w.extent(0);
  std::int64_t const k = w.extent(1);
  float const* const wd = w.data();
  // Integer tests on the bit patterns: exact, and unaffected by DAZ.
  for (std::int64_t i = 0; i < n * k; ++i) {
    if ((detail::bit_cast<std::uint32_t>(wd[i]) & 0x7FFF'FFFFu) >= 0x7F80'0000u) {
      return invalid_argument("quantize_fp8_block: w[" + std::to_string(i / k) + ", " +
                              std::to_string(i % k) + "] = " + std::to_string(wd[i]) +
                              " is not finite (w has shape " + detail::fp8_block::shape_string(w) +
                              ")");
    }
  }
  std::int64_t const bs = block_size;
  std::int64_t const nbr = weight_scale_inv.extent(0);
  std::int64_t const nbc = weight_scale_inv.extent(1);
  for (std::int64_t bi = 0; bi < nbr; ++bi) {
    std::int64_t const i0 = bi * bs;
    std::int64_t const i1 = std::min(i0 + bs, n);
    for (std::int64_t bj = 0; bj < nbc; ++bj) {
      std::int64_t const j0 = bj * bs;
      std::int64_t const j1 = std::min(j0 + bs, k);
      // NOTES: for finite floats, |x| orders like the integer (bits & 0x7FFFFFFF).
      std::uint32_t amax_bits = 0;
      for (std::int64_t i = i0; i < i1; ++i) {
        for (std::int64_t j = j0; j < j1; ++j) {
          amax_bits =
              std::max(amax_bits, detail::bit_cast<std::uint32_t>(wd[i * k + j]) & 0x7FFF'FFFFu);
        }
      }
      float const amax = detail::bit_cast<float>(amax_bits);
      float const s = amax_bits == 0u
                          ? 1.0f
                          : std::max(amax / kFloat8E4M3Max, std::numeric_limits<float>::min());
      weight_scale_inv.data()[bi * nbc + bj] = s;
      for (std::int64_t i = i0; i < i1; ++i) {
        for (std::int64_t j = j0; j < j1; ++j) {
          out.data()[i * k + j] = float8_e4m3fn(wd[i * k + j] / s);
        }
      }
    }
  }
  return {};
}

DEEPMOE_NAMESPACE_END
