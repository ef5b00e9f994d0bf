// SPDX-License-Identifier: Apache-2.0
#include <catch2/catch.hpp>

#include <deepmoe/ops/rms_norm.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <cmath>
#include <cstring>
#include <vector>

using namespace deepmoe;

namespace {
/// The double-precision reference: w·x/sqrt(mean(x²)+eps).
std::vector<double> reference(std::vector<float> const& x, std::vector<float> const& w,
                              std::int64_t T, std::int64_t D, double eps) {
  std::vector<double> y(x.size());
  for (std::int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (std::int64_t h = 0; h < D; ++h)
      ss += double(x[t * D + h]) * x[t * D + h];
    double const r = 1.0 / std::sqrt(ss / D + eps);
    for (std::int64_t h = 0; h < D; ++h)
      y[t * D + h] = w[h] * x[t * D + h] * r;
  }
  return y;
}
}  // namespace

TEST_CASE("ops::rms_norm: matches the double reference, fp32 and bf16", "[ops][rms_norm]") {
  std::int64_t const T = 7, D = 300;
  util::Rng rng(3);
  std::vector<float> x(T * D), w(D);
  for (auto& v : x)
    v = 3.0f * rng.unit();
  for (auto& v : w)
    v = 1.0f + 0.5f * rng.uniform();
  for (double eps : {1e-6, 1e-5}) {
    auto const ref = reference(x, w, T, D, eps);
    std::vector<float> y(x.size());
    REQUIRE(rms_norm<float, float, float>(MatrixView<float>(y.data(), T, D),
                                          MatrixView<float const>(x.data(), T, D),
                                          VectorView<float const>(w.data(), D), eps)
                .ok());
    // fp32: a sum of D squares and a few roundings; 1e-6 relative is ~8 ulp
    for (std::size_t i = 0; i < y.size(); ++i)
      CHECK(y[i] == Approx(ref[i]).epsilon(1e-6));
    std::vector<bfloat16> yb(x.size());
    REQUIRE(rms_norm<bfloat16, float, float>(MatrixView<bfloat16>(yb.data(), T, D),
                                             MatrixView<float const>(x.data(), T, D),
                                             VectorView<float const>(w.data(), D), eps)
                .ok());
    // bf16 output: one rounding, half a bf16 ulp = 2^-9 relative
    for (std::size_t i = 0; i < y.size(); ++i) {
      CHECK(std::abs(to_float(yb[i]) - ref[i]) <= std::ldexp(std::abs(ref[i]), -8) + 1e-30);
    }
  }
}

TEST_CASE("ops::rms_norm: eps inside the root, rows independent, in place", "[ops][rms_norm]") {
  std::vector<float> x{0, 0, 0, 0, 1e-4f, -1e-4f, 1e-4f, -1e-4f}, w(4, 1.0f), y(8);
  REQUIRE(rms_norm<float, float, float>(MatrixView<float>(y.data(), 2, 4),
                                        MatrixView<float const>(x.data(), 2, 4),
                                        VectorView<float const>(w.data(), 4), 1e-6)
              .ok());
  CHECK(y[0] == 0.0f);  // a zero row stays zero (no division by zero)
  // mean(x²) = 1e-8, so y = 1e-4/sqrt(1e-8 + 1e-6): eps inside the root dominates
  CHECK(y[4] == Approx(1e-4 / std::sqrt(1e-8 + 1e-6)).epsilon(1e-6));
  // a row alone gives the same bits as in the batch, and in place equals out of place
  std::vector<float> one(x.begin() + 4, x.end()), y1(4);
  REQUIRE(rms_norm<float, float, float>(MatrixView<float>(y1.data(), 1, 4),
                                        MatrixView<float const>(one.data(), 1, 4),
                                        VectorView<float const>(w.data(), 4), 1e-6)
              .ok());
  CHECK(std::memcmp(y1.data(), y.data() + 4, 16) == 0);
  REQUIRE(rms_norm<float, float, float>(MatrixView<float>(one.data(), 1, 4),
                                        MatrixView<float const>(one.data(), 1, 4),
                                        VectorView<float const>(w.data(), 4), 1e-6)
              .ok());
  CHECK(std::memcmp(y1.data(), one.data(), 16) == 0);
}

TEST_CASE("ops::rms_norm: bad arguments", "[ops][rms_norm]") {
  std::vector<float> x(8), w(4), y(8);
  auto const shape = rms_norm<float, float, float>(MatrixView<float>(y.data(), 2, 4),
                                                   MatrixView<float const>(x.data(), 2, 4),
                                                   VectorView<float const>(w.data(), 3), 1e-6);
  CHECK_THAT(shape.message(), Catch::Contains("weight [3]"));
  auto const eps = rms_norm<float, float, float>(MatrixView<float>(y.data(), 2, 4),
                                                 MatrixView<float const>(x.data(), 2, 4),
                                                 VectorView<float const>(w.data(), 4), 0.0);
  CHECK_THAT(eps.message(), Catch::Contains("rms_norm_eps"));
}
