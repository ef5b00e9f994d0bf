// SPDX-License-Identifier: Apache-2.0
/// @file gemm_nt.hpp
/// @brief The CPU backend's batch-invariant fp32 "NT" GEMM: out[i, n] = Σ_k x[i, k] · w[n, k].
///
/// Every output element is computed by the same instruction sequence whatever the number of
/// rows m and whatever tile it falls in: 16 fp32 lanes accumulate x·w over k in steps of 16,
/// in increasing k; the lanes are summed by a fixed halving tree; the k % 16 tail is added
/// last, in increasing k, by fused multiply-adds. So a token's result does not depend on which
/// other tokens share its expert — the property general GEMM libraries give up when their blocking
/// (and their GEMV/GEMM path choice) depends on m.
///
/// Weights reach the tile as fp32 lanes through a row reader: fp32 rows as they are, bf16 rows
/// widened in registers (exact), fp8 rows decoded in registers and multiplied by their block
/// scale (the same fp32 product dequantize_fp8_block forms). For many rows, converting a panel
/// of weight rows to fp32 once (weight_panel) is cheaper than converting in every tile; for few
/// rows, converting in registers saves the panel's memory traffic. Both give the same values,
/// so the choice changes the speed and never a bit.
///
/// The vector type is a GCC/Clang vector extension: AVX-512 code with -march supporting it,
/// narrower SIMD otherwise, with the same per-lane arithmetic. Do not compile with
/// -ffast-math/-fassociative-math, which lets the compiler reorder the sums.
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>
#include <deepmoe/ops/linear_weight.hpp>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// NOTES: vector values travel by reference between always-inline helpers, so no call passes
// or returns one by value (GCC warns, -Wpsabi, that such calls change ABI with AVX-512).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

DEEPMOE_NAMESPACE_BEGIN
namespace cpu {

/// NOTES: tells GCC that `v` lives in a vector register here. Without it GCC folds the loads
/// of x and w into every FMA that uses them (up to 2·MR·NR loads per step instead of MR + NR),
/// which makes the tile load-bound (measured: 47 → 63+ GFLOP/s for a 6×4 fp32 tile).
#if defined(__x86_64__) && defined(__AVX512F__)
#define DEEPMOE_KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define DEEPMOE_KEEP_IN_REGISTER(v) static_cast<void>(v)
#endif

/// 16 fp32 lanes (one AVX-512 register).
using f32x16 = float __attribute__((vector_size(64)));
using u32x16 = std::uint32_t __attribute__((vector_size(64)));
inline constexpr int kLanes = 16;
/// Largest tile of the micro-kernel: kMaxTileRows rows of x by kMaxTileCols rows of w.
inline constexpr int kMaxTileRows = 4;
inline constexpr int kMaxTileCols = 8;

/// Sum of the 16 lanes by a fixed halving tree: ((l0+l8)+(l4+l12))+... for every caller.
DEEPMOE_ALWAYS_INLINE float lane_sum(f32x16 const& v) {
  std::array<float, kLanes> a;
  std::memcpy(a.data(), &v, sizeof(v));
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) {
      a[static_cast<std::size_t>(i)] += a[static_cast<std::size_t>(i + width)];
    }
  }
  return a[0];
}

/// v = 16 consecutive weights as fp32 lanes: fp32 as is, bf16 widened exactly (bits << 16).
DEEPMOE_ALWAYS_INLINE void load_lanes(f32x16& v, float const* p) {
  std::memcpy(&v, p, sizeof(v));
}
DEEPMOE_ALWAYS_INLINE void load_lanes(f32x16& v, bfloat16 const* p) {
  using u16x16 = std::uint16_t __attribute__((vector_size(32)));
  u16x16 h;
  std::memcpy(&h, p, sizeof(h));
  u32x16 const bits = __builtin_convertvector(h, u32x16) << 16;
  std::memcpy(&v, &bits, sizeof(v));
}
/// v = 16 e4m3fn codes as fp32 lanes, exact: the lane-wise form of detail::e4m3fn_bits_to_float
/// (integer operations and selects, subnormals and NaN included, independent of FTZ/DAZ).
DEEPMOE_ALWAYS_INLINE void load_lanes(f32x16& v, float8_e4m3fn const* p) {
#if defined(__AVX512F__)
  // NOTES: written with intrinsics because GCC 12 widens a 16-byte vector extension through
  // general registers, one byte at a time (1.9 G codes/s against 4.4+ here). Subnormal codes
  // (exponent 0: m·2^-9, m < 8) come from an 8-entry table; the rest rebias the exponent.
  // The maskz_ forms (all lanes on) avoid GCC 12's false -Wmaybe-uninitialized inside the
  // plain forms, whose pass-through operand is _mm512_undefined_epi32().
  constexpr auto f = [](float x) { return std::bit_cast<int>(x); };
  constexpr __mmask16 kAll = 0xFFFF;
  __m512i const table =
      _mm512_setr_epi32(0, f(0x1p-9f), f(0x1p-8f), f(0x3p-9f), f(0x1p-7f), f(0x5p-9f), f(0x6p-9f),
                        f(0x7p-9f), 0, 0, 0, 0, 0, 0, 0, 0);
  u32x16 const c = reinterpret_cast<u32x16>(
      _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<__m128i const*>(p))));
  u32x16 const em = c & 0x7Fu;
  u32x16 const normal = (em << 20) + ((127u - 7u) << 23);
  __m512i const sub = _mm512_maskz_permutexvar_epi32(kAll, reinterpret_cast<__m512i>(em), table);
  __m512i mag = _mm512_mask_blend_epi32(
      _mm512_cmplt_epu32_mask(reinterpret_cast<__m512i>(em), _mm512_set1_epi32(8)),
      reinterpret_cast<__m512i>(normal), sub);
  mag = _mm512_mask_mov_epi32(
      mag, _mm512_cmpeq_epi32_mask(reinterpret_cast<__m512i>(em), _mm512_set1_epi32(0x7F)),
      _mm512_set1_epi32(0x7FC0'0000));
  u32x16 const bits = reinterpret_cast<u32x16>(mag) | ((c << 24) & 0x8000'0000u);
  std::memcpy(&v, &bits, sizeof(v));
#else
  using u8x16 = std::uint8_t __attribute__((vector_size(16)));
  u8x16 b;
  std::memcpy(&b, p, sizeof(b));
  u32x16 const c = __builtin_convertvector(b, u32x16);
  u32x16 const sign = (c & 0x80u) << 24;
  u32x16 const em = c & 0x7Fu;
  u32x16 const normal = (em << 20) + ((127u - 7u) << 23);
  u32x16 const zero = u32x16{};
  u32x16 const subnormal = em >= 4u   ? (em << 21) + (119u << 23)
                           : em >= 2u ? (em << 22) + (118u << 23)
                           : em == 1u ? zero + (118u << 23)
                                      : zero;
  u32x16 mag = em < 8u ? subnormal : normal;
  mag = em == 0x7Fu ? zero + 0x7FC0'0000u : mag;
  u32x16 const bits = sign | mag;
  std::memcpy(&v, &bits, sizeof(v));
#endif
}

/// Reads dense weight rows of type WT (float or bfloat16): row n starts at w + n·ld.
template <class WT>
struct DenseRows {
  WT const* w;
  std::int64_t ld;
  DEEPMOE_ALWAYS_INLINE void lanes(f32x16& v, int n, std::int64_t k) const {
    load_lanes(v, w + n * ld + k);
  }
  DEEPMOE_ALWAYS_INLINE float at(int n, std::int64_t k) const { return to_float(w[n * ld + k]); }
  /// The reader of rows [n, …).
  DenseRows offset(std::int64_t n) const { return {w + n * ld, ld}; }
};

/// Reads fp8 rows with 128×128-style block scales: value(n, k) = float(q[n, k]) ·
/// scale[(row + n) / B, k / B], B = 1 << block_shift ≥ 16, one fp32 product like
/// dequantize_fp8_block. Precomputes the scale row of each of the first kMaxTileCols rows.
struct Fp8BlockRows {
  float8_e4m3fn const* w;
  std::int64_t ld;
  float const* scale;     // weight_scale_inv [ceil(N/B), ceil(K/B)]
  std::int64_t scale_ld;  // ceil(K/B)
  int block_shift;        // log2(B)
  std::int64_t row;       // absolute row of w[0]
  std::array<float const*, kMaxTileCols> scale_row{};

  DEEPMOE_ALWAYS_INLINE void lanes(f32x16& v, int n, std::int64_t k) const {
    load_lanes(v, w + n * ld + k);
    v *= scale_row[static_cast<std::size_t>(n)][k >> block_shift];
  }
  DEEPMOE_ALWAYS_INLINE float at(int n, std::int64_t k) const {
    return to_float(w[n * ld + k]) * scale_row[static_cast<std::size_t>(n)][k >> block_shift];
  }
  Fp8BlockRows offset(std::int64_t n) const {
    Fp8BlockRows r{w + n * ld, ld, scale, scale_ld, block_shift, row + n, {}};
    for (std::size_t i = 0; i < r.scale_row.size(); ++i) {
      r.scale_row[i] = scale + ((r.row + static_cast<std::int64_t>(i)) >> block_shift) * scale_ld;
    }
    return r;
  }
};

/// One tile: out[i*ldo + n] = Σ_k x[i*ldx + k] · w.value(n, k) for i < MR, n < NR.
template <int MR, int NR, class Rows>
void dot_tile(float* out, std::int64_t ldo, float const* x, std::int64_t ldx, Rows const& w,
              std::int64_t kd) {
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
      DEEPMOE_KEEP_IN_REGISTER(xv[i]);
    }
    for (int n = 0; n < NR; ++n) {
      f32x16 wv;
      w.lanes(wv, n, k);
      DEEPMOE_KEEP_IN_REGISTER(wv);
      for (int i = 0; i < MR; ++i) {
        acc[i][n] += xv[i] * wv;
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int n = 0; n < NR; ++n) {
      float s = lane_sum(acc[i][n]);
      for (std::int64_t t = k; t < kd; ++t) {
        // NOTES: an explicit fma: left as `s += x * w`, GCC vectorizes this tail for fp32
        // weights as an in-order reduction of separately rounded products, and for bf16 as
        // scalar FMAs — two readers of the same values would then disagree in the last bit.
        s = std::fma(x[i * ldx + t], w.at(n, t), s);
      }
      out[i * ldo + n] = s;
    }
  }
}

namespace detail {
template <class Rows>
using DotTileFn = void (*)(float*, std::int64_t, float const*, std::int64_t, Rows const&,
                           std::int64_t);
template <class Rows, int... I>
constexpr std::array<DotTileFn<Rows>, sizeof...(I)> make_dot_tiles(
    std::integer_sequence<int, I...>) {
  return {&dot_tile<I / kMaxTileCols + 1, I % kMaxTileCols + 1, Rows>...};
}
/// dot_tile<mr, nr, Rows> at index (mr-1)*kMaxTileCols + (nr-1).
template <class Rows>
inline constexpr auto kDotTiles =
    make_dot_tiles<Rows>(std::make_integer_sequence<int, kMaxTileRows * kMaxTileCols>{});
}  // namespace detail

/// out[i*ldo + n] = Σ_k x[i*ldx + k] · w.value(n, k) for i < m, n < n_cols; x and out fp32,
/// host; `w` a row reader (DenseRows<float>, DenseRows<bfloat16>, Fp8BlockRows).
/// Batch-invariant: row i's results are bitwise the same for any m and any reader that yields
/// the same values (see file comment).
/// @pre out does not overlap x or the weights.
template <class Rows>
void gemm_nt(float* out, std::int64_t ldo, float const* x, std::int64_t ldx, std::int64_t m,
             Rows const& w, std::int64_t n_cols, std::int64_t kd) {
  // Few rows (decode): wide tiles keep 8 independent accumulator chains in flight.
  int const tile_cols = m <= 2 ? kMaxTileCols : kMaxTileCols / 2;
  for (std::int64_t i = 0; i < m; i += kMaxTileRows) {
    int const mr = static_cast<int>(m - i < kMaxTileRows ? m - i : kMaxTileRows);
    for (std::int64_t n = 0; n < n_cols; n += tile_cols) {
      int const nr = static_cast<int>(n_cols - n < tile_cols ? n_cols - n : tile_cols);
      detail::kDotTiles<Rows>[static_cast<std::size_t>((mr - 1) * kMaxTileCols + (nr - 1))](
          out + i * ldo + n, ldo, x + i * ldx, ldx, w.offset(n), kd);
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
    static_cast<void>(
        dequantize_fp8_block_rows(panel, w.weight, w.weight_scale_inv, row_begin, row_end, block));
    return panel;
  } else {
    static_cast<void>(block);
    convert_to_float(panel, w.weight.data() + row_begin * kd, (row_end - row_begin) * kd);
    return panel;
  }
}

/// Rows at most this many read bf16 or fp8 weights directly (converted in registers, no
/// panel): so few rows cannot amortize a panel conversion. The choice never changes a result.
inline constexpr std::int64_t kDirectRows = 8;

/// out[i, n] = Σ_k x[i, k] · W[row_begin + n, k] for i < m and rows [row_begin, row_end) of the
/// linear weight `w` [N, K] (fp32, bf16, or fp8 with block scales, `block` their edge); x [m, K]
/// fp32 with leading dimension ldx, out with leading dimension ldo. `panel` is scratch for
/// (row_end − row_begin)·K floats, used when the weight rows are converted to fp32 first.
template <class W>
void linear_rows(float* out, std::int64_t ldo, float const* x, std::int64_t ldx, std::int64_t m,
                 LinearWeight<W> const& w, std::int64_t row_begin, std::int64_t row_end, int block,
                 float* panel) {
  std::int64_t const kd = w.weight.extent(1), rows = row_end - row_begin;
  if constexpr (std::is_same_v<W, bfloat16>) {
    if (m <= kDirectRows) {
      gemm_nt(out, ldo, x, ldx, m, DenseRows<bfloat16>{w.weight.data() + row_begin * kd, kd}, rows,
              kd);
      return;
    }
  } else if constexpr (is_float8_v<W>) {
    // in-register decoding needs 16-lane chunks inside one scale block: B a power of 2 ≥ 16
    if (m <= kDirectRows && block >= kLanes && std::has_single_bit(static_cast<unsigned>(block))) {
      Fp8BlockRows const r{w.weight.data() + row_begin * kd,
                           kd,
                           w.weight_scale_inv.data(),
                           w.weight_scale_inv.extent(1),
                           std::countr_zero(static_cast<unsigned>(block)),
                           row_begin,
                           {}};
      gemm_nt(out, ldo, x, ldx, m, r, rows, kd);
      return;
    }
  }
  float const* wp = weight_panel(panel, w, row_begin, row_end, block);
  gemm_nt(out, ldo, x, ldx, m, DenseRows<float>{wp, kd}, rows, kd);
}

}  // namespace cpu
DEEPMOE_NAMESPACE_END

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
