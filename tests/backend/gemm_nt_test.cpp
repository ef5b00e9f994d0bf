// SPDX-License-Identifier: Apache-2.0
// The CPU GEMM kernel: exact in-register weight decoding, agreement with a double loop, and
// batch invariance at the kernel level (every row count, every reader, bitwise).
#include <catch2/catch.hpp>

#include <deepmoe/backend/cpu/gemm_nt.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <cmath>
#include <cstring>
#include <vector>

using namespace deepmoe;

TEST_CASE("cpu::load_lanes: every e4m3fn code decodes exactly", "[cpu][gemm]") {
  std::vector<float8_e4m3fn> codes(256);
  for (int c = 0; c < 256; ++c)
    codes[static_cast<std::size_t>(c)].bits = static_cast<std::uint8_t>(c);
  for (int c0 = 0; c0 < 256; c0 += cpu::kLanes) {
    cpu::f32x16 v;
    cpu::load_lanes(v, codes.data() + c0);
    for (int l = 0; l < cpu::kLanes; ++l) {
      float const want = to_float(codes[static_cast<std::size_t>(c0 + l)]);
      CAPTURE(c0 + l);
      if (std::isnan(want)) {
        CHECK(std::isnan(v[l]));
      } else {
        CHECK(std::bit_cast<std::uint32_t>(v[l]) == std::bit_cast<std::uint32_t>(want));
      }
    }
  }
}

TEST_CASE("cpu::load_lanes: bf16 widens exactly", "[cpu][gemm]") {
  std::vector<bfloat16> h(1 << 16);
  for (std::size_t i = 0; i < h.size(); ++i)
    h[i] = bfloat16::from_bits(static_cast<std::uint16_t>(i));
  for (std::size_t i = 0; i < h.size(); i += cpu::kLanes) {
    cpu::f32x16 v;
    cpu::load_lanes(v, h.data() + i);
    for (int l = 0; l < cpu::kLanes; ++l) {
      CHECK(std::bit_cast<std::uint32_t>(v[l]) ==
            std::bit_cast<std::uint32_t>(to_float(h[i + static_cast<std::size_t>(l)])));
    }
  }
}

namespace {

/// out = x·Wᵀ through linear_rows for the given weights, m rows at a time in chunks of `step`.
template <class W>
std::vector<float> run(util::OwnedLinear<W> const& w, std::vector<float> const& x, std::int64_t m,
                       std::int64_t step) {
  std::int64_t const n = w.rows, kd = w.cols;
  std::vector<float> out(static_cast<std::size_t>(m * n)), panel(static_cast<std::size_t>(16 * kd));
  for (std::int64_t i = 0; i < m; i += step) {
    std::int64_t const mi = std::min(step, m - i);
    for (std::int64_t r = 0; r < n; r += 16) {
      cpu::linear_rows(out.data() + i * n + r, n, x.data() + i * kd, kd, mi, w.view(), r,
                       std::min(r + 16, n), w.block, panel.data());
    }
  }
  return out;
}

template <class W>
void check_kernel(std::int64_t n, std::int64_t kd) {
  CAPTURE(n, kd);
  util::OwnedLinear<W> const w(7, n, kd, 0.05f, 128);
  std::int64_t const m = 23;
  std::vector<float> x(static_cast<std::size_t>(m * kd));
  util::Rng rng(8);
  for (auto& v : x)
    v = rng.unit();
  auto const all = run(w, x, m, m);  // one call: tiles of 4 rows, panel paths
  // against a double loop over the exact weights
  std::vector<float> dense(static_cast<std::size_t>(n * kd));
  for (std::int64_t r = 0; r < n; ++r) {
    static_cast<void>(cpu::weight_panel(dense.data() + r * kd, w.view(), r, r + 1, w.block));
    if constexpr (std::is_same_v<W, float>) {
      std::memcpy(dense.data() + r * kd, w.weight.data() + r * kd, sizeof(float) * kd);
    }
  }
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t r = 0; r < n; ++r) {
      double ref = 0, mag = 0;
      for (std::int64_t k = 0; k < kd; ++k) {
        ref += double(x[i * kd + k]) * dense[r * kd + k];
        mag += std::abs(double(x[i * kd + k]) * dense[r * kd + k]);
      }
      REQUIRE(std::abs(all[i * n + r] - ref) <= 1e-6 * mag + 1e-30);
    }
  }
  // every chunking of the rows gives the same bits (1 and 2 rows: direct reads, 8-wide tiles)
  for (std::int64_t step : {1, 2, 3, 5, 8, 9}) {
    CAPTURE(step);
    auto const chunked = run(w, x, m, step);
    CHECK(std::memcmp(chunked.data(), all.data(), sizeof(float) * all.size()) == 0);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("cpu::linear_rows: exact against a double loop and batch-invariant",
                   "[cpu][gemm]", float, bfloat16, float8_e4m3fn) {
  check_kernel<TestType>(40, 256);   // whole SIMD steps
  check_kernel<TestType>(37, 200);   // a k tail and partial tiles
  check_kernel<TestType>(130, 300);  // partial fp8 blocks in both dimensions
}
