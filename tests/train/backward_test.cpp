// SPDX-License-Identifier: Apache-2.0
/// @file backward_test.cpp
/// @brief The backward passes of train/backward.hpp against central finite differences of a
/// double-precision forward: for a random upstream gradient dy, the gradient of L = Σ dy ⊙ y
/// with respect to every input and parameter. Tolerance: the backward runs in fp32 on
/// unit-scale values (relative error ~1e-6); central differences in double with step 1e-5
/// are exact to ~1e-9; the bound 1e-4 · max|grad| leaves ample room.
#include <deepmoe/train/backward.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <vector>

namespace {

using namespace deepmoe;

std::vector<float> random(util::Rng& rng, std::size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (float& x : v)
    x = scale * rng.unit();
  return v;
}

/// d/dθ_i of f at θ by central differences in double, for every i.
std::vector<double> numeric_grad(std::vector<float> const& theta,
                                 std::function<double(std::vector<double> const&)> const& f) {
  std::vector<double> p(theta.begin(), theta.end()), g(theta.size());
  double const h = 1e-5;
  for (std::size_t i = 0; i < p.size(); ++i) {
    double const keep = p[i];
    p[i] = keep + h;
    double const up = f(p);
    p[i] = keep - h;
    double const down = f(p);
    p[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

void check_close(std::vector<float> const& got, std::vector<double> const& want) {
  REQUIRE(got.size() == want.size());
  double scale = 0, err = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::fabs(want[i]));
    err = std::max(err, std::fabs(got[i] - want[i]));
  }
  INFO("max error " << err << " of max |grad| " << scale);
  CHECK(scale > 0);
  CHECK(err <= 1e-4 * scale);
}

}  // namespace

TEST_CASE("train::linear_backward matches finite differences", "[train]") {
  util::Rng rng(1);
  std::int64_t const T = 5, K = 7, N = 6;
  auto const x = random(rng, T * K), W = random(rng, N * K), dy = random(rng, T * N);
  auto f = [&](std::vector<double> const& xd, std::vector<double> const& Wd) {
    double L = 0;
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t n = 0; n < N; ++n) {
        double y = 0;
        for (std::int64_t k = 0; k < K; ++k)
          y += xd[t * K + k] * Wd[n * K + k];
        L += dy[t * N + n] * y;
      }
    return L;
  };
  std::vector<double> const xd(x.begin(), x.end()), Wd(W.begin(), W.end());
  std::vector<float> dx(T * K), dW(N * K, 0.0f);
  REQUIRE(train::linear_backward(
              MatrixView<float>(dx.data(), T, K), MatrixView<float>(dW.data(), N, K),
              MatrixView<float const>(dy.data(), T, N), MatrixView<float const>(x.data(), T, K),
              MatrixView<float const>(W.data(), N, K))
              .ok());
  check_close(dx, numeric_grad(x, [&](auto const& p) { return f(p, Wd); }));
  check_close(dW, numeric_grad(W, [&](auto const& p) { return f(xd, p); }));
  CHECK(train::linear_backward(
            MatrixView<float>(dx.data(), T, K), MatrixView<float>(dW.data(), N, K + 1),
            MatrixView<float const>(dy.data(), T, N), MatrixView<float const>(x.data(), T, K),
            MatrixView<float const>(W.data(), N, K))
            .code() == StatusCode::kInvalidArgument);
}

TEST_CASE("train::rms_norm_backward matches finite differences", "[train]") {
  util::Rng rng(2);
  std::int64_t const T = 4, D = 9;
  double const eps = 1e-5;
  auto const x = random(rng, T * D), dy = random(rng, T * D);
  auto w = random(rng, D, 0.1f);
  for (float& v : w)
    v += 1.0f;
  auto f = [&](std::vector<double> const& xd, std::vector<double> const& wd) {
    double L = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (std::int64_t i = 0; i < D; ++i)
        ss += xd[t * D + i] * xd[t * D + i];
      double const r = 1 / std::sqrt(ss / D + eps);
      for (std::int64_t i = 0; i < D; ++i)
        L += dy[t * D + i] * wd[i] * xd[t * D + i] * r;
    }
    return L;
  };
  std::vector<double> const xd(x.begin(), x.end()), wd(w.begin(), w.end());
  std::vector<float> dx(T * D), dw(D, 0.0f);
  REQUIRE(train::rms_norm_backward(
              MatrixView<float>(dx.data(), T, D), VectorView<float>(dw.data(), D),
              MatrixView<float const>(dy.data(), T, D), MatrixView<float const>(x.data(), T, D),
              VectorView<float const>(w.data(), D), eps)
              .ok());
  check_close(dx, numeric_grad(x, [&](auto const& p) { return f(p, wd); }));
  check_close(dw, numeric_grad(w, [&](auto const& p) { return f(xd, p); }));
}

TEST_CASE("train::swiglu_backward matches finite differences", "[train]") {
  util::Rng rng(3);
  std::int64_t const n = 64;
  auto const g = random(rng, n, 3.0f), u = random(rng, n), dh = random(rng, n);
  auto f = [&](std::vector<double> const& gd, std::vector<double> const& ud) {
    double L = 0;
    for (std::int64_t i = 0; i < n; ++i)
      L += dh[i] * gd[i] / (1 + std::exp(-gd[i])) * ud[i];
    return L;
  };
  std::vector<double> const gd(g.begin(), g.end()), ud(u.begin(), u.end());
  std::vector<float> dg(n), du(n);
  train::swiglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  check_close(dg, numeric_grad(g, [&](auto const& p) { return f(p, ud); }));
  check_close(du, numeric_grad(u, [&](auto const& p) { return f(gd, p); }));
}

TEST_CASE("train::embedding_backward and cross_entropy", "[train]") {
  util::Rng rng(4);
  std::int64_t const T = 6, V = 11, H = 3;
  std::vector<std::int32_t> const ids{3, 1, 3, 10, 0, 3};
  auto const dh = random(rng, T * H);
  std::vector<float> dE(V * H, 0.0f);
  REQUIRE(train::embedding_backward(MatrixView<float>(dE.data(), V, H),
                                    MatrixView<float const>(dh.data(), T, H),
                                    VectorView<std::int32_t const>(ids.data(), T))
              .ok());
  for (std::int64_t h = 0; h < H; ++h) {  // token 3 appears three times
    CHECK(dE[3 * H + h] == dh[0 * H + h] + dh[2 * H + h] + dh[5 * H + h]);
    CHECK(dE[2 * H + h] == 0.0f);
  }
  std::vector<std::int32_t> const bad{0, 11};
  CHECK(train::embedding_backward(MatrixView<float>(dE.data(), V, H),
                                  MatrixView<float const>(dh.data(), 2, H),
                                  VectorView<std::int32_t const>(bad.data(), 2))
            .code() == StatusCode::kOutOfRange);

  // cross-entropy: value against a double computation, gradient against finite differences;
  // the ignored target counts for neither
  auto const z = random(rng, T * V, 2.0f);
  std::vector<std::int32_t> const y{4, -100, 0, 10, 7, 7};
  auto f = [&](std::vector<double> const& zd) {
    double L = 0;
    int n = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      if (y[t] < 0)
        continue;
      double s = 0;
      for (std::int64_t v = 0; v < V; ++v)
        s += std::exp(zd[t * V + v]);
      L += std::log(s) - zd[t * V + y[t]];
      ++n;
    }
    return L / n;
  };
  std::vector<float> dz(T * V);
  double loss = 0;
  REQUIRE(train::cross_entropy(MatrixView<float>(dz.data(), T, V), loss,
                               MatrixView<float const>(z.data(), T, V),
                               VectorView<std::int32_t const>(y.data(), T))
              .ok());
  CHECK(loss == Approx(f(std::vector<double>(z.begin(), z.end()))).epsilon(1e-12));
  check_close(dz, numeric_grad(z, f));
  for (std::int64_t v = 0; v < V; ++v)
    CHECK(dz[1 * V + v] == 0.0f);
  std::vector<std::int32_t> const out_of_range{4, 11, 0, 0, 0, 0};
  CHECK(train::cross_entropy(MatrixView<float>(dz.data(), T, V), loss,
                             MatrixView<float const>(z.data(), T, V),
                             VectorView<std::int32_t const>(out_of_range.data(), T))
            .code() == StatusCode::kOutOfRange);
}
