// SPDX-License-Identifier: Apache-2.0
/// @file fp8_block_quant_test.cpp
/// @brief Tests of the DeepSeek-V3 FP8 block-scale dequantization and quantization against
/// naive loops in double, on shapes that are not multiples of the block (200×300, 576×256 like
/// kv_a_proj_with_mqa's 576 rows, 1×1, 0×N), plus the error paths and their messages.
#include <deepmoe/ops/fp8_block_quant.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using deepmoe::float8_e4m3fn;
using deepmoe::MatrixView;
using deepmoe::Status;
using deepmoe::StatusCode;

/// A row-major matrix that owns its storage.
template <class T>
struct Matrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<T> data;

  Matrix(std::int64_t r, std::int64_t c, T fill = T{})
      : rows(r), cols(c), data(static_cast<std::size_t>(r * c), fill) {}
  T& operator()(std::int64_t i, std::int64_t j) {
    return data[static_cast<std::size_t>(i * cols + j)];
  }
  MatrixView<T> view() { return MatrixView<T>(data.data(), rows, cols); }
  MatrixView<T const> cview() const { return MatrixView<T const>(data.data(), rows, cols); }
};

std::int64_t ceil_div(std::int64_t n, std::int64_t b) {
  return (n + b - 1) / b;
}
std::uint32_t bits_of(float f) {
  return std::bit_cast<std::uint32_t>(f);
}

/// Random finite e4m3 codes (NaN codes 0x7F/0xFF replaced by 0x00/0x80).
Matrix<float8_e4m3fn> random_codes(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Matrix<float8_e4m3fn> w(rows, cols, float8_e4m3fn::from_bits(0));
  std::mt19937 rng(seed);
  for (auto& x : w.data) {
    auto code = static_cast<std::uint8_t>(rng() & 0xFFu);
    if ((code & 0x7F) == 0x7F) {
      code = static_cast<std::uint8_t>(code & 0x80);
    }
    x = float8_e4m3fn::from_bits(code);
  }
  return w;
}

/// Random positive scales 2^U(-20, 2) with random mantissas; a few exact zeros.
Matrix<float> random_scales(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Matrix<float> s(rows, cols);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> expo(-20.0f, 2.0f);
  for (auto& x : s.data) {
    x = (rng() % 17u == 0u) ? 0.0f : std::exp2(expo(rng));
  }
  return s;
}

/// The reference: out[i, j] = float(double(Wq[i, j]) · double(S[i/B, j/B])). The double product
/// of two floats is exact, so rounding it to float is the correctly rounded fp32 product.
Matrix<float> naive_dequantize(Matrix<float8_e4m3fn> const& w, Matrix<float> const& s, int b) {
  Matrix<float> out(w.rows, w.cols);
  for (std::int64_t i = 0; i < w.rows; ++i) {
    for (std::int64_t j = 0; j < w.cols; ++j) {
      double const q =
          static_cast<double>(deepmoe::to_float(w.data[static_cast<std::size_t>(i * w.cols + j)]));
      double const sc =
          static_cast<double>(s.data[static_cast<std::size_t>((i / b) * s.cols + j / b)]);
      out(i, j) = static_cast<float>(q * sc);
    }
  }
  return out;
}

/// Index of the first element whose bits differ, or -1.
std::int64_t first_difference(std::vector<float> const& a, std::vector<float> const& b) {
  if (a.size() != b.size()) {
    return 0;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (bits_of(a[i]) != bits_of(b[i])) {
      return static_cast<std::int64_t>(i);
    }
  }
  return -1;
}

}  // namespace

TEST_CASE("ops::dequantize_fp8_block: matches a naive double loop on ragged shapes", "[ops][fp8]") {
  auto const [rows, cols, block] = GENERATE(table<std::int64_t, std::int64_t, int>({
      {200, 300, 128},
      {576, 256, 128},  // V3 kv_a_proj_with_mqa rows: 4 full row blocks + one of 64
      {128, 128, 128},
      {129, 257, 128},
      {1, 1, 128},
      {0, 7, 128},
      {7, 0, 128},
      {100, 90, 64},
      {10, 11, 3},
      {5, 4, 1},
  }));
  CAPTURE(rows, cols, block);
  auto const seed = static_cast<std::uint32_t>(rows * 1000 + cols);
  Matrix<float8_e4m3fn> const w = random_codes(rows, cols, seed);
  Matrix<float> const s = random_scales(ceil_div(rows, block), ceil_div(cols, block), seed + 1);
  Matrix<float> out(rows, cols, -12345.0f);
  Status const st = deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview(), block);
  REQUIRE(st.ok());
  Matrix<float> const want = naive_dequantize(w, s, block);
  CHECK(first_difference(out.data, want.data) == -1);
}

TEST_CASE("ops::dequantize_fp8_block: NaN codes dequantize to NaN", "[ops][fp8]") {
  Matrix<float8_e4m3fn> w(2, 3, float8_e4m3fn::from_bits(0x38));  // 1.0
  w(0, 1) = float8_e4m3fn::from_bits(0x7F);
  w(1, 2) = float8_e4m3fn::from_bits(0xFF);
  Matrix<float> s(1, 1, 0.5f);
  Matrix<float> out(2, 3);
  REQUIRE(deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview()).ok());
  CHECK(std::isnan(out(0, 1)));
  CHECK(std::isnan(out(1, 2)));
  CHECK(out(0, 0) == 0.5f);
  CHECK(out(1, 1) == 0.5f);
}

TEST_CASE("ops::dequantize_fp8_block: rejects shape mismatches, naming argument and shapes",
          "[ops][fp8]") {
  Matrix<float8_e4m3fn> const w = random_codes(200, 300, 1);
  Matrix<float> const s(2, 3, 1.0f);
  SECTION("out shape differs from w") {
    Matrix<float> out(200, 301, 7.0f);
    Status const st = deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview());
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Contains("dequantize_fp8_block") &&
                                 Contains("out has shape [200, 301]") &&
                                 Contains("w has shape [200, 300]"));
    CHECK(std::all_of(out.data.begin(), out.data.end(), [](float v) { return v == 7.0f; }));
  }
  SECTION("scale shape is not the ceil-div of w's") {
    Matrix<float> out(200, 300, 7.0f);
    Matrix<float> const bad(2, 2, 1.0f);
    Status const st = deepmoe::dequantize_fp8_block(out.view(), w.cview(), bad.cview());
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Contains("weight_scale_inv has shape [2, 2]") &&
                                 Contains("w of shape [200, 300]") && Contains("block_size 128") &&
                                 Contains("needs [2, 3]"));
    CHECK(std::all_of(out.data.begin(), out.data.end(), [](float v) { return v == 7.0f; }));
  }
  SECTION("576 rows need 5 row blocks, not 4 (floor-div)") {
    Matrix<float8_e4m3fn> const w576 = random_codes(576, 256, 2);
    Matrix<float> out(576, 256);
    Matrix<float> const floor_div(4, 2, 1.0f);
    Status const st = deepmoe::dequantize_fp8_block(out.view(), w576.cview(), floor_div.cview());
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Contains("[4, 2]") && Contains("needs [5, 2]"));
  }
  SECTION("block_size <= 0") {
    Matrix<float> out(200, 300);
    for (int const b : {0, -128}) {
      Status const st = deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview(), b);
      REQUIRE(st.code() == StatusCode::kInvalidArgument);
      CHECK_THAT(st.message(), Contains("block_size = " + std::to_string(b)));
    }
  }
}

TEST_CASE("ops::dequantize_fp8_block: rejects NaN, infinite and negative scales by block",
          "[ops][fp8]") {
  Matrix<float8_e4m3fn> const w = random_codes(200, 300, 3);
  Matrix<float> s(2, 3, 0.25f);
  Matrix<float> out(200, 300, 7.0f);
  auto const [bi, bj, value, text] = GENERATE(table<int, int, float, std::string>({
      {1, 2, std::numeric_limits<float>::quiet_NaN(), "nan"},
      {0, 1, -1.0f, "-1.0"},
      {1, 0, std::numeric_limits<float>::infinity(), "inf"},
      {0, 0, -std::numeric_limits<float>::infinity(), "-inf"},
  }));
  CAPTURE(bi, bj, value);
  s(bi, bj) = value;
  Status const st = deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview());
  REQUIRE(st.code() == StatusCode::kInvalidArgument);
  std::string const where =
      "weight_scale_inv[" + std::to_string(bi) + ", " + std::to_string(bj) + "] = " + text;
  CHECK_THAT(st.message(), Contains("dequantize_fp8_block") && Contains(where));
  // The rows/columns that block scales: block (1, 2) of a 200×300 matrix is rows 128..199,
  // columns 256..299.
  if (bi == 1 && bj == 2) {
    CHECK_THAT(st.message(), Contains("rows 128..199") && Contains("columns 256..299"));
  }
  CHECK(std::all_of(out.data.begin(), out.data.end(), [](float v) { return v == 7.0f; }));
  Status const v = deepmoe::validate_fp8_block_scales(w.cview(), s.cview());
  REQUIRE(v.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(v.message(), Contains("validate_fp8_block_scales") && Contains(where));
}

TEST_CASE("ops::dequantize_fp8_block: zero and negative-zero scales are accepted", "[ops][fp8]") {
  Matrix<float8_e4m3fn> const w = random_codes(3, 130, 4);
  Matrix<float> s(1, 2, 0.0f);
  s(0, 1) = -0.0f;
  Matrix<float> out(3, 130, 7.0f);
  REQUIRE(deepmoe::dequantize_fp8_block(out.view(), w.cview(), s.cview()).ok());
  CHECK(std::all_of(out.data.begin(), out.data.end(), [](float v) { return v == 0.0f; }));
  CHECK(deepmoe::validate_fp8_block_scales(w.cview(), s.cview()).ok());
}

TEST_CASE("ops::dequantize_fp8_block_rows: equals the full version on row ranges across blocks",
          "[ops][fp8]") {
  constexpr std::int64_t kRows = 300;
  constexpr std::int64_t kCols = 200;
  Matrix<float8_e4m3fn> const w = random_codes(kRows, kCols, 5);
  Matrix<float> const s = random_scales(3, 2, 6);
  Matrix<float> full(kRows, kCols);
  REQUIRE(deepmoe::dequantize_fp8_block(full.view(), w.cview(), s.cview()).ok());
  auto const [r0, r1] = GENERATE(table<std::int64_t, std::int64_t>({
      {0, 300},
      {0, 1},
      {100, 150},
      {127, 129},
      {128, 256},
      {250, 300},
      {299, 300},
      {1, 299},
  }));
  CAPTURE(r0, r1);
  std::vector<float> panel(static_cast<std::size_t>((r1 - r0) * kCols), -1.0f);
  REQUIRE(deepmoe::dequantize_fp8_block_rows(panel.data(), w.cview(), s.cview(), r0, r1).ok());
  std::vector<float> const want(full.data.begin() + r0 * kCols, full.data.begin() + r1 * kCols);
  CHECK(first_difference(panel, want) == -1);
}

TEST_CASE("ops::dequantize_fp8_block_rows: empty ranges are no-ops, bad ranges are errors",
          "[ops][fp8]") {
  Matrix<float8_e4m3fn> const w = random_codes(300, 200, 7);
  Matrix<float> const s(3, 2, 1.0f);
  float sentinel = 7.0f;
  CHECK(deepmoe::dequantize_fp8_block_rows(&sentinel, w.cview(), s.cview(), 150, 150).ok());
  CHECK(deepmoe::dequantize_fp8_block_rows(nullptr, w.cview(), s.cview(), 300, 300).ok());
  CHECK(sentinel == 7.0f);
  std::vector<std::pair<std::int64_t, std::int64_t>> const bad_ranges = {{-1, 3}, {5, 4}, {0, 301}};
  for (auto const& [r0, r1] : bad_ranges) {
    CAPTURE(r0, r1);
    Status const st = deepmoe::dequantize_fp8_block_rows(&sentinel, w.cview(), s.cview(), r0, r1);
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(),
               Contains("row range [" + std::to_string(r0) + ", " + std::to_string(r1) + ")") &&
                   Contains("300 rows"));
  }
  Status const null_out = deepmoe::dequantize_fp8_block_rows(nullptr, w.cview(), s.cview(), 0, 1);
  REQUIRE(null_out.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(null_out.message(), Contains("out is null"));
  Matrix<float> const bad(2, 2, 1.0f);
  Status const shape = deepmoe::dequantize_fp8_block_rows(&sentinel, w.cview(), bad.cview(), 0, 1);
  REQUIRE(shape.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(shape.message(), Contains("needs [3, 2]"));
}

// The error bound asserted below, derived. Let s = fl(amax/448) be the block's scale, x = fl(w/s)
// = (w/s)(1 + d1) with |d1| ≤ 2^-24, q = e4m3(x), and the dequantized value fl(q·s) =
// q·s·(1 + d2), |d2| ≤ 2^-24. Since |w| ≤ amax, |x| ≤ 448(1 + 2^-23): saturation moves x by
// less than 2^-14, far below half an ulp at 448 (16). RNE onto e4m3 gives
//   |x − q| ≤ ulp(x)/2 = 2^(e−4) ≤ 2^-4·|x|  for |x| ≥ 2^-6 (x in [2^e, 2^(e+1)), 3 mantissa bits),
//   |x − q| ≤ 2^-10                          for |x| < 2^-6 (subnormal spacing 2^-9),
// so |w − q·s·(1 + d2)| ≤ s|w/s − x| + s|x − q| + |q|·s·|d2|
//                       ≤ 2^-24|w| + s·max(2^-4|x|, 2^-10) + 2^-24·448·s·(1 + 2^-4)
//                       ≤ max(2^-4·|w|, 2^-10·s) + 2^-21·amax.
// (s·2^-4|x| = 2^-4|w|(1 + d1), and 448·s ≤ amax(1 + 2^-24).) The first term is half an e4m3
// ulp at the element's magnitude; at the top binade it is ≤ 2^-4·amax = 28·s.

TEST_CASE("ops::quantize_fp8_block: quantize → dequantize error is within half an e4m3 ulp",
          "[ops][fp8]") {
  auto const [rows, cols] = GENERATE(table<std::int64_t, std::int64_t>({
      {200, 300},
      {576, 256},
      {1, 1},
      {130, 1},
      {1, 129},
      {0, 5},
      {5, 0},
  }));
  CAPTURE(rows, cols);
  constexpr int kB = 128;
  // Each block gets its own magnitude m = 2^U(-30, 30); elements are ±m·2^U(-20, 0), so w/s
  // spans 448·2^-20 ≈ 4e-4 .. 448: e4m3's normal and subnormal ranges and values that round to
  // zero. Block (0, 0) is all zeros.
  Matrix<float> w(rows, cols);
  std::mt19937 rng(static_cast<std::uint32_t>(rows * 7 + cols));
  std::uniform_real_distribution<float> block_exp(-30.0f, 30.0f);
  std::uniform_real_distribution<float> elem_exp(-20.0f, 0.0f);
  std::int64_t const nbr = ceil_div(rows, kB);
  std::int64_t const nbc = ceil_div(cols, kB);
  Matrix<float> magnitude(nbr, nbc);
  for (auto& m : magnitude.data) {
    m = std::exp2(block_exp(rng));
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      bool const zero_block = i < kB && j < kB && rows > 1 && cols > 1;
      float const sign = (rng() & 1u) != 0 ? -1.0f : 1.0f;
      w(i, j) = zero_block ? 0.0f : sign * magnitude(i / kB, j / kB) * std::exp2(elem_exp(rng));
    }
  }
  Matrix<float8_e4m3fn> q(rows, cols, float8_e4m3fn::from_bits(0));
  Matrix<float> s(nbr, nbc, -1.0f);
  REQUIRE(deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview(), kB).ok());
  Matrix<float> back(rows, cols);
  REQUIRE(deepmoe::dequantize_fp8_block(back.view(), q.cview(), s.cview(), kB).ok());

  // Per block amax, in double.
  Matrix<double> amax(nbr, nbc, 0.0);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      double& a = amax(i / kB, j / kB);
      a = std::max(a, std::fabs(static_cast<double>(w(i, j))));
    }
  }
  for (std::int64_t bi = 0; bi < nbr; ++bi) {
    for (std::int64_t bj = 0; bj < nbc; ++bj) {
      CAPTURE(bi, bj);
      float const want = amax(bi, bj) == 0.0 ? 1.0f : static_cast<float>(amax(bi, bj)) / 448.0f;
      CHECK(s(bi, bj) == want);
    }
  }
  std::int64_t failures = 0;
  std::int64_t code_mismatches = 0;
  double tightest = 0.0;  // max over elements of error / (half-ulp term)
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      double const sc = static_cast<double>(s(i / kB, j / kB));
      double const wv = static_cast<double>(w(i, j));
      double const half_ulp = std::max(std::ldexp(std::fabs(wv), -4), std::ldexp(sc, -10));
      double const bound = half_ulp + std::ldexp(amax(i / kB, j / kB), -21);
      double const err = std::fabs(wv - static_cast<double>(back(i, j)));
      failures += err <= bound ? 0 : 1;
      tightest = std::max(tightest, err / half_ulp);
      // The codes are exactly e4m3(fl(w / s)), and the block's amax maps to ±448.
      std::uint8_t const code = q(i, j).bits;
      code_mismatches += code == float8_e4m3fn(w(i, j) / s(i / kB, j / kB)).bits ? 0 : 1;
      if (std::fabs(wv) == amax(i / kB, j / kB) && wv != 0.0) {
        code_mismatches += (code & 0x7F) == 0x7E ? 0 : 1;
      }
    }
  }
  CHECK(failures == 0);
  CHECK(code_mismatches == 0);
  if (rows * cols > 1000) {
    CHECK(tightest > 0.9);          // the bound is nearly attained: the test is not vacuous
    CHECK(tightest <= 1.0 + 1e-4);  // at most the fp32 rounding terms beyond half an ulp
  }
}

TEST_CASE("ops::quantize_fp8_block: re-quantizing a dequantized FP8 weight is exact",
          "[ops][fp8]") {
  // With power-of-two scales and a ±448 code in each block, amax/448 = s exactly and w/s is the
  // code's value, so quantize(dequantize(Wq, S)) = (Wq, S) bit for bit (−0 codes included).
  constexpr std::int64_t kRows = 576;
  constexpr std::int64_t kCols = 200;
  Matrix<float8_e4m3fn> wq = random_codes(kRows, kCols, 8);
  Matrix<float> sc(5, 2);
  std::mt19937 rng(9);
  for (auto& v : sc.data) {
    v = std::ldexp(1.0f, static_cast<int>(rng() % 41u) - 30);
  }
  for (std::int64_t bi = 0; bi < 5; ++bi) {
    for (std::int64_t bj = 0; bj < 2; ++bj) {
      wq(bi * 128, bj * 128 + 3) = float8_e4m3fn::from_bits((bi + bj) % 2 == 0 ? 0x7E : 0xFE);
    }
  }
  Matrix<float> w(kRows, kCols);
  REQUIRE(deepmoe::dequantize_fp8_block(w.view(), wq.cview(), sc.cview()).ok());
  Matrix<float8_e4m3fn> q(kRows, kCols, float8_e4m3fn::from_bits(0x11));
  Matrix<float> s(5, 2);
  REQUIRE(deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview()).ok());
  CHECK(first_difference(s.data, sc.data) == -1);
  std::int64_t mismatches = 0;
  for (std::size_t k = 0; k < q.data.size(); ++k) {
    mismatches += q.data[k].bits == wq.data[k].bits ? 0 : 1;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("ops::quantize_fp8_block: partial blocks equal DeepSeek's zero-padded blocks",
          "[ops][fp8]") {
  // Quantizing a 200×300 weight equals quantizing it zero-padded to 256×384 and cropping.
  Matrix<float> w(200, 300);
  std::mt19937 rng(10);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (auto& v : w.data) {
    v = normal(rng);
  }
  Matrix<float> padded(256, 384, 0.0f);
  for (std::int64_t i = 0; i < 200; ++i) {
    for (std::int64_t j = 0; j < 300; ++j) {
      padded(i, j) = w(i, j);
    }
  }
  Matrix<float8_e4m3fn> q(200, 300, float8_e4m3fn::from_bits(0));
  Matrix<float8_e4m3fn> qp(256, 384, float8_e4m3fn::from_bits(0));
  Matrix<float> s(2, 3);
  Matrix<float> sp(2, 3);
  REQUIRE(deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview()).ok());
  REQUIRE(deepmoe::quantize_fp8_block(qp.view(), sp.view(), padded.cview()).ok());
  CHECK(first_difference(s.data, sp.data) == -1);
  std::int64_t mismatches = 0;
  for (std::int64_t i = 0; i < 200; ++i) {
    for (std::int64_t j = 0; j < 300; ++j) {
      mismatches += q(i, j).bits == qp(i, j).bits ? 0 : 1;
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("ops::quantize_fp8_block: zero blocks get scale 1, tiny blocks a normal scale",
          "[ops][fp8]") {
  Matrix<float> w(2, 260, 0.0f);
  // Block (0, 1): amax 1e-40 (an fp32 subnormal) → amax/448 underflows → FLT_MIN.
  w(1, 130) = 1e-40f;
  // Block (0, 2): amax 448 → scale 1, codes exact.
  w(0, 256) = -448.0f;
  w(1, 259) = 3.0f;
  Matrix<float8_e4m3fn> q(2, 260, float8_e4m3fn::from_bits(0x11));
  Matrix<float> s(1, 3);
  REQUIRE(deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview()).ok());
  CHECK(s(0, 0) == 1.0f);
  CHECK(s(0, 1) == std::numeric_limits<float>::min());
  CHECK(s(0, 2) == 1.0f);
  CHECK(std::all_of(q.data.begin(), q.data.begin() + 256,
                    [](float8_e4m3fn c) { return (c.bits & 0x7F) == 0; }));
  CHECK(q(0, 256).bits == 0xFE);
  CHECK(q(1, 259).bits == 0x44);  // 3.0 = 2^1·1.5
  CHECK(q(1, 130).bits == float8_e4m3fn(1e-40f / std::numeric_limits<float>::min()).bits);
  CHECK(q(1, 130).bits == 0x04);  // 1e-40 / 2^-126 ≈ 8.5e-3 ≈ 4.35·2^-9
}

TEST_CASE("ops::quantize_fp8_block: rejects non-finite elements and bad shapes", "[ops][fp8]") {
  Matrix<float> w(200, 300, 0.5f);
  Matrix<float8_e4m3fn> q(200, 300, float8_e4m3fn::from_bits(0x11));
  Matrix<float> s(2, 3, -7.0f);
  auto untouched = [&] {
    return std::all_of(q.data.begin(), q.data.end(),
                       [](float8_e4m3fn c) { return c.bits == 0x11; }) &&
           std::all_of(s.data.begin(), s.data.end(), [](float v) { return v == -7.0f; });
  };
  SECTION("NaN and inf, reported by index") {
    auto const [i, j, value, text] = GENERATE(table<int, int, float, std::string>({
        {3, 7, std::numeric_limits<float>::quiet_NaN(), "nan"},
        {150, 2, std::numeric_limits<float>::infinity(), "inf"},
        {199, 299, -std::numeric_limits<float>::infinity(), "-inf"},
    }));
    CAPTURE(i, j);
    w(i, j) = value;
    w(199, 299) = i == 199 ? value : -std::numeric_limits<float>::infinity();  // a later one
    Status const st = deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview());
    REQUIRE(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Contains("quantize_fp8_block: w[" + std::to_string(i) + ", " +
                                      std::to_string(j) + "] = " + text) &&
                                 Contains("not finite"));
    CHECK(untouched());
  }
  SECTION("shapes and block size") {
    Matrix<float8_e4m3fn> q_bad(200, 299);
    Status const a = deepmoe::quantize_fp8_block(q_bad.view(), s.view(), w.cview());
    REQUIRE(a.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(a.message(),
               Contains("out has shape [200, 299]") && Contains("w has shape [200, 300]"));
    Matrix<float> s_bad(3, 2);
    Status const b = deepmoe::quantize_fp8_block(q.view(), s_bad.view(), w.cview());
    REQUIRE(b.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(b.message(),
               Contains("weight_scale_inv has shape [3, 2]") && Contains("needs [2, 3]"));
    Status const c = deepmoe::quantize_fp8_block(q.view(), s.view(), w.cview(), -1);
    REQUIRE(c.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(c.message(), Contains("block_size = -1"));
    CHECK(untouched());
  }
}
