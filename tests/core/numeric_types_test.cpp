// SPDX-License-Identifier: Apache-2.0
/// @file numeric_types_test.cpp
/// @brief Tests of bfloat16, float8_e4m3fn and float8_e5m2: every fp8 code and every bf16 code
/// against hand-written decoding formulas, and ~10 million fp32 bit patterns against exact
/// round-to-nearest-even oracles (and, where DEEPMOE_HAVE_CUDA_HOST_CONVERSIONS is defined,
/// against the CUDA toolkit's host conversion functions).
///
/// The oracles compute in double, which holds every fp32, bf16 and fp8 value and every
/// difference between an fp32 and its two neighbouring codes exactly, so "nearest, ties to even"
/// is decided without rounding error.
#include <deepmoe/core/numeric_types.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define DEEPMOE_TEST_HAVE_MXCSR 1
#endif

#if defined(DEEPMOE_HAVE_CUDA_HOST_CONVERSIONS)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#endif

namespace {

using deepmoe::bfloat16;
using deepmoe::float16;
using deepmoe::float8_e4m3fn;
using deepmoe::float8_e5m2;

std::uint32_t bits_of(float f) {
  return std::bit_cast<std::uint32_t>(f);
}
float float_of(std::uint32_t u) {
  return std::bit_cast<float>(u);
}
bool is_nan_bits(std::uint32_t u) {
  return (u & 0x7FFF'FFFFu) > 0x7F80'0000u;
}

std::string hex(std::uint64_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Hand-written decoding formulas (OCP OFP8 rev. 1.0, Table 1).

/// e4m3fn: s·2^(e−7)·(1 + m/8) for e ≥ 1, s·2^−6·m/8 for e = 0, NaN for S.1111.111.
double e4m3_value(std::uint8_t c) {
  int const e = (c >> 3) & 15;
  int const m = c & 7;
  double const sign = (c & 0x80) != 0 ? -1.0 : 1.0;
  if (e == 15 && m == 7) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  return sign * (e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7));
}

/// e5m2: s·2^(e−15)·(1 + m/4) for 1 ≤ e ≤ 30, s·2^−14·m/4 for e = 0, ±inf for e = 31, m = 0,
/// NaN for e = 31, m ≠ 0.
double e5m2_value(std::uint8_t c) {
  int const e = (c >> 2) & 31;
  int const m = c & 3;
  double const sign = (c & 0x80) != 0 ? -1.0 : 1.0;
  if (e == 31) {
    return m == 0 ? sign * std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * (e == 0 ? std::ldexp(m / 4.0, -14) : std::ldexp(1.0 + m / 4.0, e - 15));
}

// ---------------------------------------------------------------------------------------------
// Exact oracles for fp32 → narrow type, round to nearest, ties to even.

/// Saturating RNE onto the non-negative codes 0..max_code of a sign-magnitude format whose code
/// order is value order: the nearest code, the even one on a tie, max_code above the range.
/// Returns the code with the sign bit of x; NaN handling is left to the caller.
template <class Decode>
std::uint8_t fp8_oracle(float x, std::uint8_t max_code, Decode decode) {
  std::uint8_t const sign = (bits_of(x) >> 31) != 0 ? 0x80 : 0x00;
  double const a = std::fabs(static_cast<double>(x));
  if (a >= decode(max_code)) {
    return static_cast<std::uint8_t>(sign | max_code);
  }
  // Largest code lo with value(lo) ≤ a (binary search over the monotone codes 0..max_code).
  int lo = 0;
  int hi = max_code;  // value(hi) > a
  while (hi - lo > 1) {
    int const mid = (lo + hi) / 2;
    if (decode(static_cast<std::uint8_t>(mid)) <= a) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  double const d_lo = a - decode(static_cast<std::uint8_t>(lo));
  double const d_hi = decode(static_cast<std::uint8_t>(hi)) - a;
  int const code = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint8_t>(sign | code);
}

std::uint8_t e4m3_oracle(float x) {
  return fp8_oracle(x, 0x7E, e4m3_value);
}
std::uint8_t e5m2_oracle(float x) {
  return fp8_oracle(x, 0x7B, e5m2_value);
}

/// bf16 RNE of a non-NaN fp32: truncation lo and lo + 1 bracket x; the infinity pattern 0x7F80
/// counts as 2^128, the value IEEE 754 rounds against to decide overflow.
std::uint16_t bf16_oracle(float x) {
  std::uint32_t const u = bits_of(x);
  std::uint16_t const sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  std::uint32_t const a = u & 0x7FFF'FFFFu;
  if (a == 0x7F80'0000u) {
    return static_cast<std::uint16_t>(sign | 0x7F80u);
  }
  auto value = [](std::uint32_t b16) {
    return b16 == 0x7F80u ? std::ldexp(1.0, 128) : static_cast<double>(float_of(b16 << 16));
  };
  std::uint32_t const lo = a >> 16;
  std::uint32_t const hi = lo + 1;
  double const ax = static_cast<double>(float_of(a));
  double const d_lo = ax - value(lo);
  double const d_hi = value(hi) - ax;
  std::uint32_t const code = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | code);
}

// ---------------------------------------------------------------------------------------------
// The fp32 sample: ~10 million bit patterns, deterministic.

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E37'79B9'7F4A'7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58'476D'1CE4'E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D0'49BB'1331'11EBull;
  return z ^ (z >> 31);
}

/// Midpoint of two adjacent non-negative codes c, c + 1 of an fp8 format, as an fp32 (exact:
/// fp8 midpoints have at most 5 significant bits).
template <class Decode>
float fp8_midpoint(std::uint8_t c, Decode decode) {
  return static_cast<float>((decode(c) + decode(static_cast<std::uint8_t>(c + 1))) / 2.0);
}

/// Eight kinds of patterns, in turn: uniformly random bits (twice), random values in the range
/// of the fp8 formats (2^−27..2^23), exact bf16 ties, bf16 near-ties (±1 below the tie bit),
/// e4m3 and e5m2 midpoints and their fp32 neighbours, and specials (zeros, subnormals,
/// infinities, NaNs with random payloads, fp32 and fp8 limits).
std::vector<std::uint32_t> const& fp32_sample() {
  static std::vector<std::uint32_t> const sample = [] {
    constexpr std::size_t kCount = std::size_t{10} << 20;
    std::vector<std::uint32_t> v;
    v.reserve(kCount);
    std::array<std::uint32_t, 24> const specials = {
        0x0000'0000u,      0x8000'0000u,      0x7F80'0000u,      0xFF80'0000u,
        0x7FC0'0000u,      0xFFC0'0000u,      0x7F80'0001u,      0xFF80'0001u,
        0x7FFF'FFFFu,      0xFFFF'FFFFu,      0x0000'0001u,      0x807F'FFFFu,
        0x0080'0000u,      0x7F7F'FFFFu,      0xFF7F'FFFFu,      bits_of(448.0f),
        bits_of(464.0f),   bits_of(480.0f),   bits_of(57344.0f), bits_of(61440.0f),
        bits_of(65536.0f), bits_of(0x1p-10f), bits_of(0x1p-17f), bits_of(-0x1p-9f)};
    std::uint64_t state = 20250101;
    for (std::size_t i = 0; i < kCount; ++i) {
      std::uint64_t const r = splitmix64(state);
      std::uint32_t const lo32 = static_cast<std::uint32_t>(r);
      std::uint32_t const hi32 = static_cast<std::uint32_t>(r >> 32);
      std::uint32_t const sign = hi32 & 0x8000'0000u;
      std::uint32_t u = 0;
      switch (i % 8) {
        case 0:
        case 1:
          u = lo32;
          break;
        case 2:  // exponent 100..150: 2^-27 .. 2^23
          u = sign | ((100u + hi32 % 51u) << 23) | (lo32 & 0x7F'FFFFu);
          break;
        case 3:
          u = (lo32 & 0xFFFF'0000u) | 0x8000u;
          break;
        case 4:
          u = (lo32 & 0xFFFF'0000u) | ((hi32 & 1u) != 0 ? 0x7FFFu : 0x8001u);
          break;
        case 5:
        case 6: {
          float const mid = i % 8 == 5
                                ? fp8_midpoint(static_cast<std::uint8_t>(hi32 % 0x7Eu), e4m3_value)
                                : fp8_midpoint(static_cast<std::uint8_t>(hi32 % 0x7Bu), e5m2_value);
          std::uint32_t const m = bits_of(mid);
          std::uint32_t const nudge = lo32 % 3u;  // 0: tie, 1: one ulp below, 2: one ulp above
          u = sign | (nudge == 0u ? m : nudge == 1u ? m - (m != 0u ? 1u : 0u) : m + 1u);
          break;
        }
        default:
          switch (lo32 % 4u) {
            case 0:
              u = specials[hi32 % specials.size()];
              break;
            case 1:
              u = sign | (hi32 & 0x7F'FFFFu);
              break;  // subnormal, zero
            case 2:
              u = sign | 0x7F80'0000u | (hi32 & 0x7F'FFFFu);
              break;  // inf, NaN
            default:
              u = sign | ((hi32 % 0x7F00'0000u) & 0x7FFF'FFFFu);
              break;
          }
          break;
      }
      v.push_back(u);
    }
    return v;
  }();
  return sample;
}

/// Counts mismatches and keeps the first few for the failure message.
struct Mismatches {
  std::int64_t count = 0;
  std::string first;
  void add(std::string const& what) {
    if (count++ < 5) {
      first += what + "\n";
    }
  }
};

#if defined(DEEPMOE_TEST_HAVE_MXCSR)
/// Sets FTZ and DAZ in MXCSR for its lifetime.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(FlushDenormals const&) = delete;
  FlushDenormals& operator=(FlushDenormals const&) = delete;

 private:
  unsigned saved_;
};
#endif

// Compile-time checks: the conversions are constexpr.
static_assert(float8_e4m3fn(448.0f).bits == 0x7E);
static_assert(float8_e4m3fn(-1e9f).bits == 0xFE);
static_assert(float8_e4m3fn(0x1p-9f).bits == 0x01);
static_assert(static_cast<float>(float8_e4m3fn::from_bits(0x08)) == 0x1p-6f);
static_assert(float8_e5m2(std::numeric_limits<float>::infinity()).bits == 0x7B);
static_assert(static_cast<float>(float8_e5m2::from_bits(0x7C)) ==
              std::numeric_limits<float>::infinity());
static_assert(bfloat16(1.0f).bits == 0x3F80);
static_assert(static_cast<float>(bfloat16::from_bits(0x4049)) == 3.140625f);
static_assert(deepmoe::to_float(2.5f) == 2.5f && deepmoe::from_float<float>(2.5f) == 2.5f);
static_assert(deepmoe::from_float<float8_e4m3fn>(1.0f).bits == 0x38);

}  // namespace

// =============================================================================================
// float8_e4m3fn

TEST_CASE("core::float8_e4m3fn: decodes all 256 codes exactly", "[core][numeric]") {
  for (int c = 0; c < 256; ++c) {
    CAPTURE(c);
    auto const code = static_cast<std::uint8_t>(c);
    float const f = deepmoe::to_float(float8_e4m3fn::from_bits(code));
    double const want = e4m3_value(code);
    if (std::isnan(want)) {
      CHECK(std::isnan(f));
      CHECK((bits_of(f) & 0x40'0000u) != 0u);  // quiet
      CHECK(std::signbit(f) == ((c & 0x80) != 0));
    } else {
      CHECK(static_cast<double>(f) == want);
      CHECK(std::signbit(f) == ((c & 0x80) != 0));  // -0 for 0x80
    }
  }
  CHECK(deepmoe::to_float(float8_e4m3fn::from_bits(0x7E)) == 448.0f);
  CHECK(deepmoe::to_float(float8_e4m3fn::from_bits(0x01)) == 0x1p-9f);
  CHECK(deepmoe::to_float(float8_e4m3fn::from_bits(0x07)) == 7 * 0x1p-9f);
  CHECK(deepmoe::to_float(float8_e4m3fn::from_bits(0x08)) == 0x1p-6f);
}

TEST_CASE("core::float8_e4m3fn: every non-NaN code round-trips", "[core][numeric]") {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) {
      continue;
    }
    CAPTURE(c);
    auto const code = static_cast<std::uint8_t>(c);
    CHECK(float8_e4m3fn(static_cast<float>(float8_e4m3fn::from_bits(code))).bits == code);
  }
}

TEST_CASE("core::float8_e4m3fn: midpoints round to the even code", "[core][numeric]") {
  // Adjacent finite codes c, c + 1 (0x00..0x7E) and their negatives: the midpoint goes to the
  // code with an even last bit; one fp32 ulp either side goes to the nearer code.
  for (int c = 0; c < 0x7E; ++c) {
    for (std::uint8_t const sign : {std::uint8_t{0x00}, std::uint8_t{0x80}}) {
      CAPTURE(c, sign);
      float const mid = fp8_midpoint(static_cast<std::uint8_t>(c), e4m3_value);
      float const x = sign != 0 ? -mid : mid;
      std::uint8_t const even = static_cast<std::uint8_t>(c % 2 == 0 ? c : c + 1);
      CHECK(float8_e4m3fn(x).bits == (sign | even));
      float const below = float_of(bits_of(mid) - 1u);
      float const above = float_of(bits_of(mid) + 1u);
      CHECK(float8_e4m3fn(sign != 0 ? -below : below).bits == (sign | c));
      CHECK(float8_e4m3fn(sign != 0 ? -above : above).bits == (sign | (c + 1)));
    }
  }
  // Named cases: 2^-10 (half the smallest subnormal) ties to 0; 7.5·2^-9 (between the largest
  // subnormal and the smallest normal) ties to 2^-6; 1 + 1/16 ties down to 1; 1 + 3/16 up.
  CHECK(float8_e4m3fn(0x1p-10f).bits == 0x00);
  CHECK(float8_e4m3fn(-0x1p-10f).bits == 0x80);
  CHECK(float8_e4m3fn(7.5f * 0x1p-9f).bits == 0x08);
  CHECK(float8_e4m3fn(1.0625f).bits == 0x38);
  CHECK(float8_e4m3fn(1.1875f).bits == 0x3A);
}

TEST_CASE("core::float8_e4m3fn: saturates, keeps NaN and signed zero, rounds subnormals",
          "[core][numeric]") {
  float const inf = std::numeric_limits<float>::infinity();
  SECTION("saturation to ±448") {
    for (float const x : {448.0f, 449.0f, 463.99f, 464.0f, 464.01f, 480.0f, 1e6f,
                          std::numeric_limits<float>::max(), inf}) {
      CAPTURE(x);
      CHECK(float8_e4m3fn(x).bits == 0x7E);
      CHECK(float8_e4m3fn(-x).bits == 0xFE);
    }
    CHECK(float8_e4m3fn(432.0f).bits == 0x7E);  // tie of 416 (0x7D) and 448 (0x7E) → even
    CHECK(float8_e4m3fn(431.0f).bits == 0x7D);  // nearer to 416
  }
  SECTION("NaN → 0x7F with the input's sign") {
    for (std::uint32_t const u : {0x7FC0'0000u, 0x7F80'0001u, 0x7FFF'FFFFu, 0x7FA0'1234u}) {
      CAPTURE(hex(u));
      CHECK(float8_e4m3fn(float_of(u)).bits == 0x7F);
      CHECK(float8_e4m3fn(float_of(u | 0x8000'0000u)).bits == 0xFF);
    }
  }
  SECTION("signed zero") {
    CHECK(float8_e4m3fn(0.0f).bits == 0x00);
    CHECK(float8_e4m3fn(-0.0f).bits == 0x80);
    CHECK(float8_e4m3fn(-1e-30f).bits == 0x80);  // underflow keeps the sign
    CHECK(std::signbit(deepmoe::to_float(float8_e4m3fn::from_bits(0x80))));
  }
  SECTION("subnormals") {
    for (int m = 1; m < 8; ++m) {
      CAPTURE(m);
      CHECK(float8_e4m3fn(static_cast<float>(m) * 0x1p-9f).bits == m);
      CHECK(float8_e4m3fn(-static_cast<float>(m) * 0x1p-9f).bits == (0x80 | m));
    }
    CHECK(float8_e4m3fn(0x1.000002p-10f).bits == 0x01);         // just above half the smallest
    CHECK(float8_e4m3fn(1.5f * 0x1p-9f).bits == 0x02);          // tie 1|2 → even 2
    CHECK(float8_e4m3fn(2.5f * 0x1p-9f).bits == 0x02);          // tie 2|3 → even 2
    CHECK(float8_e4m3fn(float_of(0x0000'0001u)).bits == 0x00);  // fp32 subnormals → 0
    CHECK(float8_e4m3fn(float_of(0x807F'FFFFu)).bits == 0x80);
  }
}

// =============================================================================================
// float8_e5m2

TEST_CASE("core::float8_e5m2: decodes all 256 codes exactly", "[core][numeric]") {
  for (int c = 0; c < 256; ++c) {
    CAPTURE(c);
    auto const code = static_cast<std::uint8_t>(c);
    float const f = deepmoe::to_float(float8_e5m2::from_bits(code));
    double const want = e5m2_value(code);
    if (std::isnan(want)) {
      CHECK(std::isnan(f));
      CHECK((bits_of(f) & 0x40'0000u) != 0u);  // quiet
    } else {
      CHECK(static_cast<double>(f) == want);  // ±inf included
    }
    CHECK(std::signbit(f) == ((c & 0x80) != 0));
  }
  CHECK(deepmoe::to_float(float8_e5m2::from_bits(0x7B)) == 57344.0f);
  CHECK(deepmoe::to_float(float8_e5m2::from_bits(0x01)) == 0x1p-16f);
  CHECK(deepmoe::to_float(float8_e5m2::from_bits(0x04)) == 0x1p-14f);
}

TEST_CASE("core::float8_e5m2: every finite code round-trips; inf saturates", "[core][numeric]") {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) >= 0x7C) {
      continue;
    }
    CAPTURE(c);
    auto const code = static_cast<std::uint8_t>(c);
    CHECK(float8_e5m2(static_cast<float>(float8_e5m2::from_bits(code))).bits == code);
  }
  // ±inf codes decode to ±inf, which converts back to ±57344 (saturating-finite, as CUDA's
  // __NV_SATFINITE conversion does).
  CHECK(float8_e5m2(static_cast<float>(float8_e5m2::from_bits(0x7C))).bits == 0x7B);
  CHECK(float8_e5m2(static_cast<float>(float8_e5m2::from_bits(0xFC))).bits == 0xFB);
}

TEST_CASE("core::float8_e5m2: midpoints round to even; saturation, NaN, zeros, subnormals",
          "[core][numeric]") {
  for (int c = 0; c < 0x7B; ++c) {
    for (std::uint8_t const sign : {std::uint8_t{0x00}, std::uint8_t{0x80}}) {
      CAPTURE(c, sign);
      float const mid = fp8_midpoint(static_cast<std::uint8_t>(c), e5m2_value);
      std::uint8_t const even = static_cast<std::uint8_t>(c % 2 == 0 ? c : c + 1);
      CHECK(float8_e5m2(sign != 0 ? -mid : mid).bits == (sign | even));
      float const below = float_of(bits_of(mid) - 1u);
      float const above = float_of(bits_of(mid) + 1u);
      CHECK(float8_e5m2(sign != 0 ? -below : below).bits == (sign | c));
      CHECK(float8_e5m2(sign != 0 ? -above : above).bits == (sign | (c + 1)));
    }
  }
  float const inf = std::numeric_limits<float>::infinity();
  for (float const x : {57344.0f, 61439.0f, 61440.0f, 65536.0f, 1e30f, inf}) {
    CAPTURE(x);
    CHECK(float8_e5m2(x).bits == 0x7B);
    CHECK(float8_e5m2(-x).bits == 0xFB);
  }
  CHECK(float8_e5m2(std::numeric_limits<float>::quiet_NaN()).bits == 0x7F);
  CHECK(float8_e5m2(-std::numeric_limits<float>::quiet_NaN()).bits == 0xFF);
  CHECK(float8_e5m2(float_of(0x7F80'0001u)).bits == 0x7F);
  CHECK(float8_e5m2(0.0f).bits == 0x00);
  CHECK(float8_e5m2(-0.0f).bits == 0x80);
  CHECK(float8_e5m2(0x1p-17f).bits == 0x00);  // half the smallest subnormal ties to 0
  CHECK(float8_e5m2(-0x1p-17f).bits == 0x80);
  CHECK(float8_e5m2(3.5f * 0x1p-16f).bits == 0x04);  // ties up to the smallest normal
  for (int m = 1; m < 4; ++m) {
    CHECK(float8_e5m2(static_cast<float>(m) * 0x1p-16f).bits == m);
  }
}

// =============================================================================================
// fp8 against the oracle, bulk conversion, FTZ/DAZ

TEST_CASE("core::float8: fp32 → fp8 matches an exact RNE oracle on 10M fp32 patterns",
          "[core][numeric]") {
  Mismatches e4;
  Mismatches e5;
  for (std::uint32_t const u : fp32_sample()) {
    float const x = float_of(u);
    std::uint8_t const got4 = float8_e4m3fn(x).bits;
    std::uint8_t const got5 = float8_e5m2(x).bits;
    std::uint8_t const sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
    std::uint8_t const want4 =
        is_nan_bits(u) ? static_cast<std::uint8_t>(sign | 0x7F) : e4m3_oracle(x);
    std::uint8_t const want5 =
        is_nan_bits(u) ? static_cast<std::uint8_t>(sign | 0x7F) : e5m2_oracle(x);
    if (got4 != want4) {
      e4.add("e4m3 x=" + hex(u) + " got " + hex(got4) + " want " + hex(want4));
    }
    if (got5 != want5) {
      e5.add("e5m2 x=" + hex(u) + " got " + hex(got5) + " want " + hex(want5));
    }
  }
  INFO(e4.first << e5.first);
  CHECK(e4.count == 0);
  CHECK(e5.count == 0);
}

TEST_CASE("core::float8: convert_to_float equals to_float for every code, also under FTZ/DAZ",
          "[core][numeric]") {
  // Every code, repeated so that the vector loop body and the scalar tail both run.
  std::vector<std::uint8_t> codes(256 * 9 + 5);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    codes[i] = static_cast<std::uint8_t>(i * 37 % 256);
  }
  std::vector<float8_e4m3fn> e4(codes.size());
  std::vector<float8_e5m2> e5(codes.size());
  std::vector<bfloat16> b16(codes.size());
  for (std::size_t i = 0; i < codes.size(); ++i) {
    e4[i] = float8_e4m3fn::from_bits(codes[i]);
    e5[i] = float8_e5m2::from_bits(codes[i]);
    b16[i] = bfloat16::from_bits(static_cast<std::uint16_t>(codes[i] * 257u));
  }
  auto run = [&] {
    auto const n = static_cast<std::int64_t>(codes.size());
    std::vector<float> o4(codes.size());
    std::vector<float> o5(codes.size());
    std::vector<float> ob(codes.size());
    std::vector<float> of(codes.size());
    deepmoe::convert_to_float(o4.data(), e4.data(), n);
    deepmoe::convert_to_float(o5.data(), e5.data(), n);
    deepmoe::convert_to_float(ob.data(), b16.data(), n);
    deepmoe::convert_to_float(of.data(), o4.data(), n);
    for (std::size_t i = 0; i < codes.size(); ++i) {
      CAPTURE(i, static_cast<int>(codes[i]));
      REQUIRE(bits_of(o4[i]) == bits_of(deepmoe::to_float(e4[i])));
      REQUIRE(bits_of(o5[i]) == bits_of(deepmoe::to_float(e5[i])));
      REQUIRE(bits_of(ob[i]) == bits_of(deepmoe::to_float(b16[i])));
      REQUIRE(bits_of(of[i]) == bits_of(o4[i]));
      // The decode formulas, bit for bit where not NaN (fp32 NaN payloads are ours to choose).
      double const w4 = e4m3_value(codes[i]);
      if (!std::isnan(w4)) {
        REQUIRE(bits_of(o4[i]) == bits_of(static_cast<float>(w4)));
      }
    }
    return std::array<std::vector<float>, 3>{o4, o5, ob};
  };
  auto const normal = run();
#if defined(DEEPMOE_TEST_HAVE_MXCSR)
  SECTION("FTZ and DAZ set") {
    std::vector<std::uint32_t> const& sample = fp32_sample();
    std::vector<std::uint32_t> expected(sample.size());
    for (std::size_t i = 0; i < sample.size(); ++i) {
      float const x = float_of(sample[i]);
      expected[i] = std::uint32_t{float8_e4m3fn(x).bits} | std::uint32_t{float8_e5m2(x).bits} << 8 |
                    std::uint32_t{bfloat16(x).bits} << 16;
    }
    FlushDenormals const ftz_daz;
    auto const flushed = run();
    for (std::size_t k = 0; k < 3; ++k) {
      for (std::size_t i = 0; i < codes.size(); ++i) {
        REQUIRE(bits_of(flushed[k][i]) == bits_of(normal[k][i]));
      }
    }
    // The scalar encoders work on bit patterns too: fp8 subnormal results and fp32 subnormal
    // inputs come out the same with FTZ/DAZ set as without (expected values computed above,
    // before FTZ/DAZ was set; the double-based oracles themselves would be flushed).
    Mismatches m;
    for (std::size_t i = 0; i < sample.size(); ++i) {
      float const x = float_of(sample[i]);
      std::uint32_t const got = std::uint32_t{float8_e4m3fn(x).bits} |
                                std::uint32_t{float8_e5m2(x).bits} << 8 |
                                std::uint32_t{bfloat16(x).bits} << 16;
      if (got != expected[i]) {
        m.add(hex(sample[i]));
      }
    }
    INFO(m.first);
    CHECK(m.count == 0);
  }
#endif
  CHECK(deepmoe::to_float(float8_e4m3fn::from_bits(0x01)) == 0x1p-9f);
}

TEST_CASE("core::float8: convert_to_float with n = 0 or negative writes nothing",
          "[core][numeric]") {
  float out = 42.0f;
  float8_e4m3fn const in = float8_e4m3fn::from_bits(0x38);
  deepmoe::convert_to_float(&out, &in, 0);
  deepmoe::convert_to_float(&out, &in, -3);
  CHECK(out == 42.0f);
}

// =============================================================================================
// bfloat16

TEST_CASE("core::bfloat16: all 2^16 codes round-trip; NaN codes stay NaN, quiet, signed",
          "[core][numeric]") {
  for (std::uint32_t c = 0; c < 0x1'0000u; ++c) {
    auto const code = static_cast<std::uint16_t>(c);
    float const f = static_cast<float>(bfloat16::from_bits(code));
    REQUIRE(bits_of(f) == c << 16);  // decoding is a shift
    std::uint16_t const back = bfloat16(f).bits;
    if ((c & 0x7FFFu) > 0x7F80u) {
      CAPTURE(hex(c), hex(back));
      REQUIRE((back & 0x7FFFu) > 0x7F80u);
      REQUIRE((back & 0x8000u) == (c & 0x8000u));
      REQUIRE((back & 0x0040u) != 0u);    // quiet
      REQUIRE(back == (code | 0x0040u));  // payload kept, quiet bit set
    } else {
      CAPTURE(hex(c), hex(back));
      REQUIRE(back == code);
    }
  }
}

TEST_CASE("core::bfloat16: fp32 → bf16 matches an exact RNE oracle on 10M fp32 patterns",
          "[core][numeric]") {
  Mismatches m;
  for (std::uint32_t const u : fp32_sample()) {
    float const x = float_of(u);
    std::uint16_t const got = bfloat16(x).bits;
    if (is_nan_bits(u)) {
      if ((got & 0x7FFFu) <= 0x7F80u || (got >> 15) != (u >> 31) || (got & 0x40u) == 0u) {
        m.add("NaN x=" + hex(u) + " got " + hex(got));
      }
    } else if (got != bf16_oracle(x)) {
      m.add("x=" + hex(u) + " got " + hex(got) + " want " + hex(bf16_oracle(x)));
    }
  }
  INFO(m.first);
  CHECK(m.count == 0);
}

TEST_CASE("core::bfloat16: ties, overflow to infinity, subnormals, signed zero",
          "[core][numeric]") {
  CHECK(bfloat16(float_of(0x3F80'8000u)).bits == 0x3F80);  // tie, lower code even
  CHECK(bfloat16(float_of(0x3F81'8000u)).bits == 0x3F82);  // tie, upper code even
  CHECK(bfloat16(float_of(0x3F80'8001u)).bits == 0x3F81);
  CHECK(bfloat16(float_of(0x3F80'7FFFu)).bits == 0x3F80);
  CHECK(bfloat16(std::numeric_limits<float>::max()).bits == 0x7F80);  // rounds past max
  CHECK(bfloat16(float_of(0x7F7F'7FFFu)).bits == 0x7F7F);
  CHECK(bfloat16(float_of(0x7F7F'8000u)).bits == 0x7F80);  // tie with the odd max → inf
  CHECK(bfloat16(-std::numeric_limits<float>::infinity()).bits == 0xFF80);
  CHECK(bfloat16(float_of(0x0000'8000u)).bits == 0x0000);  // subnormal tie → even 0
  CHECK(bfloat16(float_of(0x0001'8000u)).bits == 0x0002);
  CHECK(bfloat16(float_of(0x007F'FFFFu)).bits == 0x0080);  // carries into the smallest normal
  CHECK(bfloat16(-0.0f).bits == 0x8000);
  CHECK(bfloat16(std::numeric_limits<float>::quiet_NaN()).bits == 0x7FC0);
  CHECK(bfloat16(float_of(0xFF80'0001u)).bits == 0xFFC0);  // signalling NaN → quiet, signed
}

// float16

/// binary16 value of a finite code from the IEEE 754 formula, in double.
double f16_formula(std::uint16_t c) {
  int const e = (c >> 10) & 0x1F, m = c & 0x3FF;
  double const mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (c & 0x8000) ? -mag : mag;
}

/// f16 RNE of a non-NaN fp32 by search over all finite codes: nearest value, ties to the even
/// code; |x| ≥ 65520 (halfway between 65504 and 2^16) → inf.
std::uint16_t f16_oracle(float x) {
  static std::vector<double> const values = [] {
    std::vector<double> v;
    for (std::uint16_t c = 0; c <= 0x7C00; ++c)  // 0x7C00 (inf) stands for 2^16 here
      v.push_back(f16_formula(c));
    return v;
  }();
  std::uint16_t const sign = std::signbit(x) ? 0x8000 : 0;
  double const a = std::fabs(static_cast<double>(x));
  if (a >= 65520.0) {
    return sign | 0x7C00;
  }
  auto const it = std::lower_bound(values.begin(), values.end(), a);
  auto hi = static_cast<std::uint16_t>(it - values.begin());
  if (hi == 0 || values[hi] == a) {
    return sign | hi;
  }
  std::uint16_t const lo = hi - 1;
  double const dlo = a - values[lo], dhi = values[hi] - a;
  std::uint16_t const pick = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) == 0 ? lo : hi);
  return sign | pick;
}

TEST_CASE("core::float16: all 2^16 codes decode by the IEEE formula and round-trip",
          "[core][numeric]") {
  for (std::uint32_t c = 0; c < 0x1'0000u; ++c) {
    auto const code = static_cast<std::uint16_t>(c);
    float const f = static_cast<float>(float16::from_bits(code));
    CAPTURE(hex(c));
    if ((c & 0x7C00u) == 0x7C00u && (c & 0x3FFu) != 0) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == ((c & 0x8000u) != 0));
      std::uint16_t const back = float16(f).bits;
      REQUIRE(back == (code | 0x0200u));  // payload kept, quiet bit set
    } else if ((c & 0x7C00u) == 0x7C00u) {
      REQUIRE(std::isinf(f));
      REQUIRE(float16(f).bits == code);
    } else {
      REQUIRE(static_cast<double>(f) == f16_formula(code));
      REQUIRE(float16(f).bits == code);
    }
  }
}

TEST_CASE("core::float16: fp32 → f16 matches an exact RNE oracle on 10M fp32 patterns",
          "[core][numeric]") {
  Mismatches m;
  for (std::uint32_t const u : fp32_sample()) {
    float const x = float_of(u);
    std::uint16_t const got = float16(x).bits;
    if (is_nan_bits(u)) {
      if ((got & 0x7C00u) != 0x7C00u || (got & 0x0200u) == 0u || (got >> 15) != (u >> 31)) {
        m.add("NaN x=" + hex(u) + " got " + hex(got));
      }
    } else if (got != f16_oracle(x)) {
      m.add("x=" + hex(u) + " got " + hex(got) + " want " + hex(f16_oracle(x)));
    }
  }
  INFO(m.first);
  CHECK(m.count == 0);
}

TEST_CASE("core::float16: ties, overflow, subnormals, bulk conversion", "[core][numeric]") {
  CHECK(float16(65504.0f).bits == 0x7BFF);
  CHECK(float16(65519.996f).bits == 0x7BFF);
  CHECK(float16(65520.0f).bits == 0x7C00);  // tie with the odd max → inf
  CHECK(float16(-1e9f).bits == 0xFC00);
  CHECK(float16(std::ldexp(1.0f, -24)).bits == 0x0001);
  CHECK(float16(std::ldexp(1.0f, -25)).bits == 0x0000);  // tie → even zero
  CHECK(float16(std::ldexp(1.5f, -25)).bits == 0x0001);
  CHECK(float16(std::ldexp(1023.5f, -24)).bits == 0x0400);  // carries into the smallest normal
  CHECK(float16(-0.0f).bits == 0x8000);
  CHECK(float16(1.0f + std::ldexp(1.0f, -11)).bits == 0x3C00);  // tie → even
  CHECK(float16(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3C02);
  std::vector<float16> in(0x1'0000);
  for (std::uint32_t c = 0; c < 0x1'0000u; ++c)
    in[c] = float16::from_bits(static_cast<std::uint16_t>(c));
  std::vector<float> out(in.size());
  deepmoe::convert_to_float(out.data(), in.data(), static_cast<std::int64_t>(in.size()));
  for (std::uint32_t c = 0; c < 0x1'0000u; ++c) {
    REQUIRE(bits_of(out[c]) == bits_of(static_cast<float>(in[c])));
  }
}

// =============================================================================================
// Traits and generic helpers

TEST_CASE("core::numeric: traits, dtype names, to_float/from_float", "[core][numeric]") {
  STATIC_REQUIRE(deepmoe::is_float8_v<float8_e4m3fn>);
  STATIC_REQUIRE(deepmoe::is_float8_v<float8_e5m2 const>);
  STATIC_REQUIRE_FALSE(deepmoe::is_float8_v<bfloat16>);
  STATIC_REQUIRE_FALSE(deepmoe::is_float8_v<float>);
  STATIC_REQUIRE(deepmoe::dtype_name<float>() == "F32");
  STATIC_REQUIRE(deepmoe::dtype_name<bfloat16>() == "BF16");
  STATIC_REQUIRE(deepmoe::dtype_name<float8_e4m3fn const>() == "F8_E4M3");
  STATIC_REQUIRE(deepmoe::dtype_name<float8_e5m2>() == "F8_E5M2");
  STATIC_REQUIRE(deepmoe::NumericType<bfloat16 const>);
  STATIC_REQUIRE_FALSE(deepmoe::NumericType<double>);
  // Generic code: one expression for every element type.
  auto round_trip = [](auto tag, float f) {
    using T = decltype(tag);
    return deepmoe::to_float(deepmoe::from_float<T>(f));
  };
  CHECK(round_trip(float{}, 0.1f) == 0.1f);
  CHECK(round_trip(bfloat16{}, 0.1f) == float_of(0x3DCD'0000u));
  CHECK(round_trip(float8_e4m3fn{}, 0.1f) == 0.1015625f);
  CHECK(round_trip(float8_e5m2{}, 0.1f) == 0.09375f);
}

// =============================================================================================
// CUDA toolkit host conversions (compiled only with -DDEEPMOE_HAVE_CUDA_HOST_CONVERSIONS and
// the toolkit's include folder on the include path; no GPU needed).

#if defined(DEEPMOE_HAVE_CUDA_HOST_CONVERSIONS)

TEST_CASE("core::numeric: fp8 decoding matches CUDA's __nv_cvt_fp8_to_halfraw for all codes",
          "[core][numeric][cuda_host]") {
  for (int c = 0; c < 256; ++c) {
    CAPTURE(c);
    auto const code = static_cast<__nv_fp8_storage_t>(c);
    float const cuda4 = __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E4M3)));
    float const cuda5 = __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E5M2)));
    float const ours4 = deepmoe::to_float(float8_e4m3fn::from_bits(static_cast<std::uint8_t>(c)));
    float const ours5 = deepmoe::to_float(float8_e5m2::from_bits(static_cast<std::uint8_t>(c)));
    // CUDA returns the canonical positive NaN 0x7FFF for NaN codes; ours keep the code's sign.
    CHECK(std::isnan(cuda4) == std::isnan(ours4));
    CHECK(std::isnan(cuda5) == std::isnan(ours5));
    if (!std::isnan(ours4)) {
      CHECK(bits_of(cuda4) == bits_of(ours4));
    }
    if (!std::isnan(ours5)) {
      CHECK(bits_of(cuda5) == bits_of(ours5));
    }
  }
}

TEST_CASE("core::numeric: fp32 → fp8/bf16 match CUDA's host conversions on 10M fp32 patterns",
          "[core][numeric][cuda_host]") {
  Mismatches e4;
  Mismatches e5;
  Mismatches b16;
  Mismatches f16;
  for (std::uint32_t const u : fp32_sample()) {
    float const x = float_of(u);
    std::uint8_t const c4 = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    std::uint8_t const c5 = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2);
    __nv_bfloat16_raw const cb = __nv_bfloat16_raw(__float2bfloat16_rn(x));
    __half_raw const ch = __half_raw(__float2half_rn(x));
    std::uint16_t const oh = float16(x).bits;
    std::uint8_t const o4 = float8_e4m3fn(x).bits;
    std::uint8_t const o5 = float8_e5m2(x).bits;
    std::uint16_t const ob = bfloat16(x).bits;
    if (is_nan_bits(u)) {
      // NaN: CUDA's host code drops the sign (0x7F, 0x7F, 0x7FFF); ours keeps it. Both NaN.
      if ((c4 & 0x7F) != 0x7F || (o4 & 0x7F) != 0x7F) {
        e4.add("NaN x=" + hex(u) + " cuda " + hex(c4) + " ours " + hex(o4));
      }
      if ((c5 & 0x7F) <= 0x7C || (o5 & 0x7F) <= 0x7C) {
        e5.add("NaN x=" + hex(u) + " cuda " + hex(c5) + " ours " + hex(o5));
      }
      if ((cb.x & 0x7FFFu) <= 0x7F80u || (ob & 0x7FFFu) <= 0x7F80u) {
        b16.add("NaN x=" + hex(u) + " cuda " + hex(cb.x) + " ours " + hex(ob));
      }
      if ((ch.x & 0x7FFFu) <= 0x7C00u || (oh & 0x7FFFu) <= 0x7C00u) {
        f16.add("NaN x=" + hex(u) + " cuda " + hex(ch.x) + " ours " + hex(oh));
      }
      continue;
    }
    if (c4 != o4) {
      e4.add("x=" + hex(u) + " cuda " + hex(c4) + " ours " + hex(o4));
    }
    if (c5 != o5) {
      e5.add("x=" + hex(u) + " cuda " + hex(c5) + " ours " + hex(o5));
    }
    if (cb.x != ob) {
      b16.add("x=" + hex(u) + " cuda " + hex(cb.x) + " ours " + hex(ob));
    }
    if (ch.x != oh) {
      f16.add("x=" + hex(u) + " cuda " + hex(ch.x) + " ours " + hex(oh));
    }
  }
  INFO(e4.first << e5.first << b16.first << f16.first);
  CHECK(e4.count == 0);
  CHECK(e5.count == 0);
  CHECK(b16.count == 0);
  CHECK(f16.count == 0);
  // The behaviours the docs promise, checked on CUDA itself.
  float const inf = std::numeric_limits<float>::infinity();
  CHECK(__nv_cvt_float_to_fp8(inf, __NV_SATFINITE, __NV_E5M2) == 0x7B);
  CHECK(__nv_cvt_float_to_fp8(-inf, __NV_SATFINITE, __NV_E5M2) == 0xFB);
  CHECK(__nv_cvt_float_to_fp8(inf, __NV_SATFINITE, __NV_E4M3) == 0x7E);
}

TEST_CASE("core::numeric: bf16 decoding matches CUDA's __bfloat162float for all 2^16 codes",
          "[core][numeric][cuda_host]") {
  Mismatches m;
  for (std::uint32_t c = 0; c < 0x1'0000u; ++c) {
    __nv_bfloat16_raw raw;
    raw.x = static_cast<unsigned short>(c);
    float const cuda = __bfloat162float(__nv_bfloat16(raw));
    float const ours = static_cast<float>(bfloat16::from_bits(static_cast<std::uint16_t>(c)));
    if (bits_of(cuda) != bits_of(ours)) {
      m.add(hex(c));
    }
  }
  INFO(m.first);
  CHECK(m.count == 0);
}

#endif  // DEEPMOE_HAVE_CUDA_HOST_CONVERSIONS
