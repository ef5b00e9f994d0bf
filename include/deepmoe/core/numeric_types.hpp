// SPDX-License-Identifier: Apache-2.0
/// @file numeric_types.hpp
/// @brief Storage types bfloat16, float16, float8_e4m3fn and float8_e5m2: bit-exact conversions to
/// and from fp32, dtype traits, and fast bulk conversion to fp32.
///
/// The types are storage only (no arithmetic): compute converts to float with `to_float(x)`,
/// works in fp32, and converts back with `from_float<T>(f)`. Both functions also accept float,
/// so generic code is written once for every element type.
///
/// Conversions from fp32 round to nearest, ties to even (RNE), on the exact value, subnormals
/// included. They are done with integer operations on the fp32 bit pattern, so they give the
/// same result under flush-to-zero / denormals-are-zero modes, on the host and on the device,
/// and in constant evaluation. Conversions to fp32 are exact.
///
/// | type          | s,e,m | bias | max      | min normal | min subnormal | inf | NaN codes       |
/// |---------------|-------|------|----------|------------|---------------|-----|-----------------|
/// | bfloat16      | 1,8,7 | 127  | ≈3.39e38 | 2^-126     | 2^-133        | yes | exp 255, man≠0  |
/// | float16       | 1,5,10| 15   | 65504    | 2^-14      | 2^-24         | yes | exp 31, man≠0   |
/// | float8_e4m3fn | 1,4,3 | 7    | 448      | 2^-6       | 2^-9          | no  | 0x7F, 0xFF      |
/// | float8_e5m2   | 1,5,2 | 15   | 57344    | 2^-14      | 2^-16         | yes | 0x7D-7F, FD-FF  |
///
/// Sources: OCP 8-bit Floating Point Specification (OFP8) rev. 1.0 (2023), docs/model.md
/// §5; behaviour matched against CUDA's cuda_fp8.hpp / cuda_bf16.hpp host paths
/// (`__nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...)`, `__float2bfloat16_rn`, `__float2half_rn`),
/// NaN sign aside
/// (see each constructor).
#pragma once

#include <deepmoe/core/macros.hpp>

#include <bit>
#include <cstdint>
#include <string_view>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN

namespace detail {

/// std::bit_cast that is also callable from CUDA device code (nvcc does not treat the host
/// std::bit_cast as __device__ without --expt-relaxed-constexpr); both are the same builtin.
template <class To, class From>
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr To bit_cast(From const& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
#if defined(__CUDACC__)
  return __builtin_bit_cast(To, from);
#else
  return std::bit_cast<To>(from);
#endif
}

/// fp32 → bf16 bits, RNE. NaN → the quiet NaN with the input's sign and top payload bits
/// (`bits >> 16 | 0x0040`), so truncating the payload never turns a NaN into an infinity.
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr std::uint16_t float_to_bf16_bits(
    float f) noexcept {
  std::uint32_t const u = detail::bit_cast<std::uint32_t>(f);
  if ((u & 0x7FFF'FFFFu) > 0x7F80'0000u) {
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  }
  // NOTES: adding 0x7FFF plus the lowest kept bit rounds the dropped 16 bits to nearest-even;
  // a carry out of the mantissa bumps the exponent, and the largest finite values carry into
  // the infinity pattern 0x7F80 exactly as RNE overflow requires.
  std::uint32_t const rounded = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

/// fp32 → IEEE binary16 bits, RNE. |x| ≥ 65520 (the RNE overflow threshold) gives ±inf;
/// results below 2^−14 are rounded RNE to subnormals, |x| ≤ 2^−25 to a signed zero. NaN → the
/// quiet NaN with the input's sign and top payload bits.
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr std::uint16_t float_to_f16_bits(
    float f) noexcept {
  std::uint32_t const u = detail::bit_cast<std::uint32_t>(f);
  std::uint32_t const sign = (u >> 16) & 0x8000u;
  std::uint32_t const a = u & 0x7FFF'FFFFu;
  std::uint32_t mag = 0;
  if (a > 0x7F80'0000u) {
    mag = 0x7E00u | ((a >> 13) & 0x3FFu);  // NaN, kept quiet
  } else if (a >= 0x477F'F000u) {          // 65520.0f
    mag = 0x7C00u;
  } else if (a >= 0x3880'0000u) {  // 2^-14: normal; rebias 127 → 15 and round 13 bits RNE
    mag = ((a + 0x0FFFu + ((a >> 13) & 1u)) >> 13) - ((127u - 15u) << 10);
  } else if (a > 0x3300'0000u) {  // above 2^-25: subnormal m = RNE(|x| / 2^-24), carry to 0x400
    std::uint32_t const e = a >> 23;
    std::uint32_t const mant = (a & 0x7F'FFFFu) | 0x80'0000u;
    std::uint32_t const shift = 126u - e;  // |x| / 2^-24 = mant · 2^(e − 126), shift in [14, 24]
    mag = (mant + ((1u << (shift - 1u)) - 1u) + ((mant >> shift) & 1u)) >> shift;
  }
  return static_cast<std::uint16_t>(sign | mag);
}

/// IEEE binary16 bits → fp32, exact (integer operations only). NaN stays NaN (quiet).
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr float f16_bits_to_float(
    std::uint16_t h) noexcept {
  std::uint32_t const sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t const e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (e == 0x1Fu) {
    bits = 0x7F80'0000u | (m << 13) | (m != 0 ? 0x40'0000u : 0u);
  } else if (e != 0) {
    bits = ((e + 112u) << 23) | (m << 13);
  } else if (m != 0) {
    // subnormal m·2^-24: normalize so the leading one becomes the implicit bit
    int const lead = std::bit_width(m) - 1;  // m = 2^lead · (1 + frac)
    bits = (static_cast<std::uint32_t>(lead + 103) << 23) | ((m << (23 - lead)) & 0x7F'FFFFu);
  }
  return detail::bit_cast<float>(sign | bits);
}

/// fp32 → 8-bit float bits with `Exp` exponent bits (bias 2^(Exp-1)-1) and `Man` mantissa
/// bits: saturating RNE. |x| ≥ max (inf included) → ±max (`max_code`); NaN → sign | 0x7F.
/// Values below half the smallest subnormal (ties included) → ±0 with the input's sign.
template <int Exp, int Man, std::uint32_t MaxCode, std::uint32_t MaxFloatBits>
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr std::uint8_t float_to_fp8_bits(
    float f) noexcept {
  constexpr std::uint32_t kBias = (1u << (Exp - 1)) - 1u;
  constexpr std::uint32_t kShift = 23u - Man;  // fp32 mantissa bits dropped by a normal result
  constexpr std::uint32_t kMinNormalBits = (127u + 1u - kBias) << 23;  // 2^(1-bias)
  // |x| ≤ 2^(-bias-Man) = half the smallest subnormal rounds to zero (the tie goes to even 0).
  constexpr std::uint32_t kHalfMinSubnormalBits = (127u - kBias - Man) << 23;

  std::uint32_t const u = detail::bit_cast<std::uint32_t>(f);
  std::uint32_t const sign = (u >> 24) & 0x80u;
  std::uint32_t const a = u & 0x7FFF'FFFFu;
  std::uint32_t mag = 0;
  if (a > 0x7F80'0000u) {
    mag = 0x7Fu;  // NaN
  } else if (a >= MaxFloatBits) {
    // NOTES: saturating; every finite value above max rounds (RNE) to max or beyond, so the
    // clamp equals "RNE, then clamp to max" (CUDA __NV_SATFINITE, PTX cvt.rn.satfinite).
    mag = MaxCode;
  } else if (a >= kMinNormalBits) {
    // Rebias the exponent and round the dropped mantissa bits to nearest-even; a mantissa
    // carry bumps the exponent (never past max: inputs ≥ max were clamped above).
    std::uint32_t const rounded = a + ((1u << (kShift - 1u)) - 1u) + ((a >> kShift) & 1u);
    mag = (rounded >> kShift) - ((127u - kBias) << Man);
  } else if (a > kHalfMinSubnormalBits) {
    // Subnormal result: m = RNE(|x| / 2^(1-bias-Man)) in [0, 2^Man]; m = 2^Man is the code of
    // the smallest normal, so the carry needs no special case. Here |x| = mant·2^(e-150) with
    // the implicit bit set, so m = RNE(mant >> (151 - bias - Man - e)), a shift in [21, 24].
    std::uint32_t const e = a >> 23;
    std::uint32_t const mant = (a & 0x7F'FFFFu) | 0x80'0000u;
    std::uint32_t const shift = 151u - kBias - Man - e;
    mag = (mant + ((1u << (shift - 1u)) - 1u) + ((mant >> shift) & 1u)) >> shift;
  }
  return static_cast<std::uint8_t>(sign | mag);
}

/// e4m3fn code (in the low 8 bits of `c`) → fp32, exact. NaN → sign | 0x7FC00000.
/// Integer operations and selects only, so that loops over it vectorize (a float multiply
/// would stop GCC's if-conversion under the default -ftrapping-math) and so that FTZ/DAZ
/// cannot change the result: subnormal codes are normalized by hand.
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr float e4m3fn_bits_to_float(
    std::uint32_t c) noexcept {
  std::uint32_t const sign = (c & 0x80u) << 24;
  std::uint32_t const em = c & 0x7Fu;
  // Normal: rebias the exponent (7 → 127) and widen the mantissa (3 → 23 bits).
  std::uint32_t const normal = (em << 20) + ((127u - 7u) << 23);
  // Subnormal m·2^-9, m = em in [1, 7]: shifting m so that its leading bit lands on the
  // implicit-bit position (bit 23) and adding the exponent for that bit gives the fp32 pattern:
  // m in [4, 7] → 2^-7·(m/4), m in [2, 3] → 2^-8·(m/2), m = 1 → 2^-9.
  std::uint32_t const subnormal = em >= 4u   ? (em << 21) + (119u << 23)
                                  : em >= 2u ? (em << 22) + (118u << 23)
                                  : em == 1u ? 118u << 23
                                             : 0u;
  std::uint32_t mag = em < 8u ? subnormal : normal;
  mag = em == 0x7Fu ? 0x7FC0'0000u : mag;
  return detail::bit_cast<float>(sign | mag);
}

/// e5m2 code (in the low 8 bits of `c`) → fp32, exact. ±inf → ±inf; NaN (exponent 31,
/// mantissa m ≠ 0) → the quiet fp32 NaN sign | 0x7FC00000 | m << 21. Integer operations and
/// selects only, like e4m3fn_bits_to_float.
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE constexpr float e5m2_bits_to_float(
    std::uint32_t c) noexcept {
  std::uint32_t const sign = (c & 0x80u) << 24;
  std::uint32_t const em = c & 0x7Fu;
  std::uint32_t const normal = (em << 21) + ((127u - 15u) << 23);
  // Subnormal m·2^-16, m in [1, 3]: m in [2, 3] → 2^-15·(m/2), m = 1 → 2^-16.
  std::uint32_t const subnormal = em >= 2u ? (em << 22) + (111u << 23) : em == 1u ? 111u << 23 : 0u;
  std::uint32_t const special = 0x7F80'0000u | ((em & 3u) << 21) | (em > 0x7Cu ? 0x40'0000u : 0u);
  std::uint32_t mag = em < 4u ? subnormal : normal;
  mag = em >= 0x7Cu ? special : mag;
  return detail::bit_cast<float>(sign | mag);
}

}  // namespace detail

/// Brain floating point: the top 16 bits of an fp32 (1 sign, 8 exponent, 7 mantissa bits).
/// The activation dtype of DeepSeek-V3 inference (safetensors "BF16").
struct bfloat16 {
  std::uint16_t bits;  ///< the raw encoding

  /// Uninitialized, like float.
  bfloat16() = default;
  /// fp32 → bf16, round to nearest even. Values that round past the largest finite bf16
  /// (|x| ≥ 2^128 − 2^119, the RNE overflow threshold) give ±inf; ±inf stay ±inf; fp32
  /// subnormals round to bf16 subnormals or ±0. NaN stays NaN: quiet, with its sign and its 6
  /// top payload bits (CUDA's host `__float2bfloat16_rn` returns 0x7FFF for every NaN instead).
  DEEPMOE_HOST_DEVICE explicit constexpr bfloat16(float f) noexcept
      : bits(detail::float_to_bf16_bits(f)) {}
  /// bf16 → fp32, exact (a 16-bit shift).
  DEEPMOE_HOST_DEVICE explicit constexpr operator float() const noexcept {
    return detail::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
  }
  /// The bf16 whose encoding is `b`.
  DEEPMOE_HOST_DEVICE static constexpr bfloat16 from_bits(std::uint16_t b) noexcept {
    bfloat16 r{};
    r.bits = b;
    return r;
  }
};

/// IEEE 754 binary16 ("half"): 1 sign, 5 exponent (bias 15), 10 mantissa bits; max 65504.
/// Safetensors "F16", torch.float16. Checkpoints in F16 are converted at load time.
struct float16 {
  std::uint16_t bits;  ///< the raw encoding

  /// Uninitialized, like float.
  float16() = default;
  /// fp32 → f16, round to nearest even; overflow gives ±inf (as `__float2half_rn`).
  DEEPMOE_HOST_DEVICE explicit constexpr float16(float f) noexcept
      : bits(detail::float_to_f16_bits(f)) {}
  /// f16 → fp32, exact.
  DEEPMOE_HOST_DEVICE explicit constexpr operator float() const noexcept {
    return detail::f16_bits_to_float(bits);
  }
  /// The f16 whose encoding is `b`.
  DEEPMOE_HOST_DEVICE static constexpr float16 from_bits(std::uint16_t b) noexcept {
    float16 r{};
    r.bits = b;
    return r;
  }
};

/// OCP FP8 E4M3 ("fn": finite, no infinities): 1 sign, 4 exponent (bias 7), 3 mantissa bits.
/// value = (−1)^s · 2^(e−7) · (1 + m/8) for e ≥ 1, (−1)^s · 2^−6 · m/8 for e = 0; 0x7F and 0xFF
/// are NaN; the largest finite is 448 (0x7E). The weight dtype of DeepSeek-V3 (safetensors
/// "F8_E4M3", torch.float8_e4m3fn).
struct float8_e4m3fn {
  std::uint8_t bits;  ///< the raw encoding

  /// Uninitialized, like float.
  float8_e4m3fn() = default;
  /// fp32 → e4m3fn, saturating round to nearest even: finite |x| > 448 and ±inf give ±448
  /// (0x7E/0xFE); subnormal results are rounded RNE too; |x| ≤ 2^−10 (half the smallest
  /// subnormal) gives a zero with the sign of x. NaN → 0x7F with the sign bit of x (0xFF for a
  /// negative NaN). Equal to CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)` on
  /// every input except negative NaNs, for which CUDA's host code returns 0x7F.
  DEEPMOE_HOST_DEVICE explicit constexpr float8_e4m3fn(float f) noexcept
      : bits(detail::float_to_fp8_bits<4, 3, 0x7Eu, 0x43E0'0000u>(f)) {}  // 0x43E00000 = 448.0f
  /// e4m3fn → fp32, exact; NaN codes give a quiet fp32 NaN with the code's sign.
  DEEPMOE_HOST_DEVICE explicit constexpr operator float() const noexcept {
    return detail::e4m3fn_bits_to_float(bits);
  }
  /// The e4m3fn whose encoding is `b`.
  DEEPMOE_HOST_DEVICE static constexpr float8_e4m3fn from_bits(std::uint8_t b) noexcept {
    float8_e4m3fn r{};
    r.bits = b;
    return r;
  }
};

/// OCP FP8 E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits, IEEE-like (0x7C/0xFC are ±inf,
/// 0x7D-0x7F and 0xFD-0xFF NaN); the largest finite is 57344 (0x7B). Safetensors "F8_E5M2",
/// torch.float8_e5m2.
struct float8_e5m2 {
  std::uint8_t bits;  ///< the raw encoding

  /// Uninitialized, like float.
  float8_e5m2() = default;
  /// fp32 → e5m2, saturating-finite round to nearest even, as CUDA's
  /// `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2)` and PTX `cvt.rn.satfinite.e5m2x2.f32`
  /// do: finite |x| > 57344 **and ±inf** give ±57344 (0x7B/0xFB), so this conversion never
  /// produces an infinity; |x| ≤ 2^−17 gives a zero with the sign of x. NaN → 0x7F with the sign
  /// bit of x (CUDA's host code returns 0x7F for every NaN). To keep ±inf, test for it first.
  DEEPMOE_HOST_DEVICE explicit constexpr float8_e5m2(float f) noexcept
      : bits(detail::float_to_fp8_bits<5, 2, 0x7Bu, 0x4760'0000u>(f)) {}  // 0x47600000 = 57344.0f
  /// e5m2 → fp32, exact; ±inf → ±inf; NaN codes give a quiet fp32 NaN with the code's sign.
  DEEPMOE_HOST_DEVICE explicit constexpr operator float() const noexcept {
    return detail::e5m2_bits_to_float(bits);
  }
  /// The e5m2 whose encoding is `b`.
  DEEPMOE_HOST_DEVICE static constexpr float8_e5m2 from_bits(std::uint8_t b) noexcept {
    float8_e5m2 r{};
    r.bits = b;
    return r;
  }
};

static_assert(sizeof(bfloat16) == 2 && alignof(bfloat16) == 2);
static_assert(sizeof(float16) == 2 && alignof(float16) == 2 && std::is_trivial_v<float16>);
static_assert(sizeof(float8_e4m3fn) == 1 && sizeof(float8_e5m2) == 1);
static_assert(std::is_trivially_copyable_v<bfloat16> && std::is_trivial_v<float8_e4m3fn> &&
              std::is_trivial_v<float8_e5m2>);

/// True for the element types deepmoe stores tensors in: float, bfloat16, float16,
/// float8_e4m3fn, float8_e5m2 (cv-qualifiers ignored).
template <class T>
concept NumericType = std::is_same_v < std::remove_cv_t<T>,
float > || std::is_same_v<std::remove_cv_t<T>, bfloat16> ||
    std::is_same_v<std::remove_cv_t<T>, float16> ||
    std::is_same_v<std::remove_cv_t<T>, float8_e4m3fn> ||
    std::is_same_v<std::remove_cv_t<T>, float8_e5m2>;

/// True for float8_e4m3fn and float8_e5m2 (cv-qualifiers ignored).
template <class T>
inline constexpr bool is_float8_v = std::is_same_v<std::remove_cv_t<T>, float8_e4m3fn> ||
                                    std::is_same_v<std::remove_cv_t<T>, float8_e5m2>;

/// The safetensors dtype string of T: "F32", "BF16", "F16", "F8_E4M3" or "F8_E5M2".
template <NumericType T>
constexpr std::string_view dtype_name() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return "F32";
  } else if constexpr (std::is_same_v<U, bfloat16>) {
    return "BF16";
  } else if constexpr (std::is_same_v<U, float16>) {
    return "F16";
  } else if constexpr (std::is_same_v<U, float8_e4m3fn>) {
    return "F8_E4M3";
  } else {
    return "F8_E5M2";
  }
}

/// x as fp32 (identity for float); exact for every NumericType.
DEEPMOE_HOST_DEVICE constexpr float to_float(float x) noexcept {
  return x;
}
DEEPMOE_HOST_DEVICE constexpr float to_float(bfloat16 x) noexcept {
  return static_cast<float>(x);
}
DEEPMOE_HOST_DEVICE constexpr float to_float(float16 x) noexcept {
  return static_cast<float>(x);
}
DEEPMOE_HOST_DEVICE constexpr float to_float(float8_e4m3fn x) noexcept {
  return static_cast<float>(x);
}
DEEPMOE_HOST_DEVICE constexpr float to_float(float8_e5m2 x) noexcept {
  return static_cast<float>(x);
}

/// f as T (identity for float), with T's constructor from float: RNE; saturating for the fp8
/// types.
template <NumericType T>
DEEPMOE_HOST_DEVICE constexpr std::remove_cv_t<T> from_float(float f) noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return f;
  } else {
    return U(f);
  }
}

namespace detail {

/// out[i] = op(in[i]) for i < n: a plain counted loop over restrict-qualified pointers, which
/// GCC and Clang vectorize at -O3 without a run-time alias check. (GCC's -O2 cost model does not
/// vectorize loops of unknown trip count; -O2 -fvect-cost-model=dynamic does.)
template <class In, class Op>
DEEPMOE_ALWAYS_INLINE void map_to_float(float* __restrict out, In const* __restrict in,
                                        std::int64_t n, Op op) noexcept {
  for (std::int64_t i = 0; i < n; ++i) {
    out[i] = op(in[i]);
  }
}

}  // namespace detail

/// Converts n elements to fp32: out[i] = to_float(in[i]), bit-identical to the scalar
/// conversion (NaN codes included) and independent of FTZ/DAZ. Integer operations and selects
/// only, which GCC and Clang vectorize at -O3 (SSE2 upward; AVX2/AVX-512 with -march=native).
/// @param out [n] float, host, out
/// @param in  [n] element type, host
/// @param n   element count (n ≤ 0 does nothing)
/// @pre out and in do not overlap.
inline void convert_to_float(float* out, float const* in, std::int64_t n) noexcept {
  detail::map_to_float(out, in, n, [](float x) { return x; });
}
inline void convert_to_float(float* out, bfloat16 const* in, std::int64_t n) noexcept {
  detail::map_to_float(out, in, n, [](bfloat16 x) {
    return detail::bit_cast<float>(static_cast<std::uint32_t>(x.bits) << 16);
  });
}
inline void convert_to_float(float* out, float16 const* in, std::int64_t n) noexcept {
  detail::map_to_float(out, in, n, [](float16 x) { return detail::f16_bits_to_float(x.bits); });
}
inline void convert_to_float(float* out, float8_e4m3fn const* in, std::int64_t n) noexcept {
  detail::map_to_float(out, in, n,
                       [](float8_e4m3fn x) { return detail::e4m3fn_bits_to_float(x.bits); });
}
inline void convert_to_float(float* out, float8_e5m2 const* in, std::int64_t n) noexcept {
  detail::map_to_float(out, in, n,
                       [](float8_e5m2 x) { return detail::e5m2_bits_to_float(x.bits); });
}

DEEPMOE_NAMESPACE_END
