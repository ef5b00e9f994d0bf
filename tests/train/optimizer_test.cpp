// SPDX-License-Identifier: Apache-2.0
/// @file optimizer_test.cpp
/// @brief AdamW against the PyTorch update written out in double; clipping; the learning-rate
/// schedule's pieces; the aux-loss-free bias update.
#include <deepmoe/train/optimizer.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

namespace {
using namespace deepmoe;
}

TEST_CASE("train::AdamW follows torch.optim.AdamW step by step", "[train]") {
  util::Rng rng(1);
  train::AdamWParams const p{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
  std::vector<float> w(16), b(4);
  for (float& x : w)
    x = rng.unit();
  for (float& x : b)
    x = rng.unit();
  std::vector<double> wd(w.begin(), w.end()), bd(b.begin(), b.end());
  std::vector<double> mw(16, 0), vw(16, 0), mb(4, 0), vb(4, 0);
  std::size_t const sizes[] = {16, 4};
  train::AdamW opt(p, sizes);
  for (int t = 1; t <= 5; ++t) {
    std::vector<float> gw(16), gb(4);
    for (float& x : gw)
      x = rng.unit();
    for (float& x : gb)
      x = 0.01f * rng.unit();
    double const lr = 1e-2 * t;
    train::ParamRef const params[] = {{w, gw, true}, {b, gb, false}};
    REQUIRE(opt.step(params, lr).ok());
    // the reference, in double: torch/optim/adamw.py (_single_tensor_adamw)
    auto ref = [&](std::vector<double>& th, std::vector<double>& m, std::vector<double>& v,
                   std::vector<float> const& g, double decay) {
      double const c1 = 1 - std::pow(p.beta1, t), c2 = 1 - std::pow(p.beta2, t);
      for (std::size_t k = 0; k < th.size(); ++k) {
        th[k] *= 1 - lr * decay;
        m[k] = p.beta1 * m[k] + (1 - p.beta1) * g[k];
        v[k] = p.beta2 * v[k] + (1 - p.beta2) * double{g[k]} * g[k];
        th[k] -= lr / c1 * m[k] / (std::sqrt(v[k]) / std::sqrt(c2) + p.eps);
      }
    };
    ref(wd, mw, vw, gw, p.weight_decay);
    ref(bd, mb, vb, gb, 0.0);
    for (std::size_t k = 0; k < 16; ++k)
      CHECK(w[k] == Approx(wd[k]).epsilon(1e-5));
    for (std::size_t k = 0; k < 4; ++k)
      CHECK(b[k] == Approx(bd[k]).epsilon(1e-5));
  }
  CHECK(opt.steps() == 5);
  std::vector<float> small(3), g3(3);
  train::ParamRef const wrong[] = {{small, g3, true}, {b, g3, false}};
  CHECK(opt.step(wrong, 1e-3).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("train::clip_grad_norm scales to the global norm", "[train]") {
  std::vector<float> a{3, 0}, b{0, 4};  // norm 5
  std::span<float> const grads[] = {a, b};
  CHECK(train::clip_grad_norm(grads, 10.0) == Approx(5.0));
  CHECK(a[0] == 3.0f);  // below the limit: unchanged
  CHECK(train::clip_grad_norm(grads, 1.0) == Approx(5.0));
  CHECK(a[0] == Approx(0.6).epsilon(1e-6));
  CHECK(b[1] == Approx(0.8).epsilon(1e-6));
}

TEST_CASE("train::LrSchedule: warmup, constant, cosine, final", "[train]") {
  train::LrSchedule const s{
      .peak = 1.0, .final = 0.1, .warmup = 10, .decay_start = 20, .decay_steps = 100};
  CHECK(s(0) == 0.0);
  CHECK(s(5) == Approx(0.5));
  CHECK(s(10) == 1.0);
  CHECK(s(19) == 1.0);
  CHECK(s(20) == Approx(1.0));
  CHECK(s(70) == Approx(0.55));  // halfway: (peak + final) / 2
  CHECK(s(120) == Approx(0.1));
  CHECK(s(1000) == Approx(0.1));
}

TEST_CASE("train::update_correction_bias moves each bias toward balance by γ", "[train]") {
  std::vector<float> bias{0.0f, 0.5f, -0.5f, 0.0f};
  std::vector<std::int64_t> const loads{10, 2, 4, 4};  // mean 5
  REQUIRE(train::update_correction_bias(bias, loads, 0.001).ok());
  CHECK(bias[0] == Approx(-0.001));  // overloaded: down
  CHECK(bias[1] == Approx(0.501));   // underloaded: up
  CHECK(bias[2] == Approx(-0.499));
  std::vector<float> even{1.0f, 1.0f};
  std::vector<std::int64_t> const equal{3, 3};
  REQUIRE(train::update_correction_bias(even, equal, 0.5).ok());
  CHECK(even[0] == 1.0f);  // at the mean: unchanged
  CHECK(train::update_correction_bias(even, loads, 0.1).code() == StatusCode::kInvalidArgument);
}
