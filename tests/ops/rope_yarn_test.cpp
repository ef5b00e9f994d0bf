// SPDX-License-Identifier: Apache-2.0
// YaRN frequencies and scales against the worked values of docs/model.md, and the rotation
// against a double reference and the Hugging Face (de-interleaved, rotate-half) formulation.
#include <catch2/catch.hpp>

#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/kimi_k2.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/ops/rope_yarn.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <cmath>
#include <vector>

using namespace deepmoe;

template <class C>
std::vector<float> inv_freq_of() {
  return rope_inv_freq(C::qk_rope_head_dim, C::rope_theta, C::rope_scaling);
}

TEST_CASE("ops::rope_inv_freq: YaRN ramps of the presets", "[ops][rope]") {
  auto const v3 = yarn_range(64, 10000.0, configs::DeepSeekV3::rope_scaling);
  CHECK(v3.low == 10.0);
  CHECK(v3.high == 23.0);
  auto const kimi = yarn_range(64, 50000.0, configs::KimiK2::rope_scaling);
  CHECK(kimi.low == 19.0);  // β_fast = β_slow = 1: a near-step ramp
  CHECK(kimi.high == 20.0);
  auto const f = inv_freq_of<configs::DeepSeekV3>();
  REQUIRE(f.size() == 32);
  CHECK(f[0] == Approx(1.0));
  CHECK(f[10] == Approx(5.6234e-2).epsilon(1e-4));  // last unscaled dim
  CHECK(f[16] == Approx(5.5e-3).epsilon(2e-2));
  CHECK(f[23] == Approx(3.3338e-5).epsilon(1e-4));  // first fully scaled dim: extra / 40
  CHECK(f[31] == Approx(3.3338e-6).epsilon(1e-4));
  // without rope_scaling (Moonlight): plain RoPE, base 50000
  auto const m = inv_freq_of<configs::Moonlight16BA3B>();
  for (int i = 0; i < 32; ++i)
    CHECK(m[i] == Approx(std::pow(50000.0, -2.0 * i / 64)));
}

TEST_CASE("ops::mla_softmax_scale: mscale(mscale_all_dim) squared", "[ops][rope]") {
  auto scale = [](auto c) {
    using C = decltype(c);
    return mla_softmax_scale(C::qk_nope_head_dim + C::qk_rope_head_dim, C::rope_scaling);
  };
  CHECK(scale(configs::DeepSeekV3{}) == Approx(0.1352338).epsilon(1e-6));
  CHECK(scale(configs::DeepSeekV2Lite{}) == Approx(0.1147214).epsilon(1e-6));
  CHECK(scale(configs::KimiK2{}) == Approx(0.1308608).epsilon(1e-6));
  CHECK(scale(configs::Moonlight16BA3B{}) == Approx(0.0721688).epsilon(1e-6));
  // cos/sin magnitude is 1 for every preset
  CHECK(yarn_attention_factor(configs::DeepSeekV3::rope_scaling) == 1.0);
  CHECK(yarn_attention_factor(configs::DeepSeekV2Lite::rope_scaling) == 1.0);
}

TEST_CASE("ops::apply_rope: interleaved rotation against double and the rotate-half form",
          "[ops][rope]") {
  auto const f = inv_freq_of<configs::DeepSeekV3>();
  std::int64_t const T = 5, heads = 3, d = 64;
  std::vector<std::int64_t> const pos{0, 1, 17, 4095, 163839};
  util::Rng rng(5);
  std::vector<float> x(T * heads * d);
  for (auto& v : x)
    v = rng.unit();
  std::vector<float> y = x;
  REQUIRE(apply_rope(MatrixView<float>(y.data(), T, heads * d),
                     VectorView<std::int64_t const>(pos.data(), T),
                     VectorView<float const>(f.data(), 32))
              .ok());
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < heads; ++h) {
      float const* a = x.data() + (t * heads + h) * d;
      float const* b = y.data() + (t * heads + h) * d;
      for (int i = 0; i < 32; ++i) {
        // θ is formed in fp32 (as the reference implementations do); the rest in double
        double const th = static_cast<float>(pos[t]) * f[i];
        double const r0 = a[2 * i] * std::cos(th) - a[2 * i + 1] * std::sin(th);
        double const r1 = a[2 * i] * std::sin(th) + a[2 * i + 1] * std::cos(th);
        CHECK(b[2 * i] == Approx(r0).margin(2e-5));
        CHECK(b[2 * i + 1] == Approx(r1).margin(2e-5));
      }
    }
  }
  // Hugging Face: x' = de-interleave(x), y' = x'·cat(cos, cos) + rotate_half(x')·cat(sin, sin);
  // then y'[i] = y[2i], y'[i + d/2] = y[2i+1], and q·k dot products agree.
  auto hf = [&](float const* a, double p) {
    std::vector<double> xp(d), yp(d);
    for (int i = 0; i < 32; ++i) {
      xp[i] = a[2 * i];
      xp[i + 32] = a[2 * i + 1];
    }
    for (int i = 0; i < d; ++i) {
      double const th = static_cast<float>(p) * f[i % 32];
      double const rot = i < 32 ? -xp[i + 32] : xp[i - 32];
      yp[i] = xp[i] * std::cos(th) + rot * std::sin(th);
    }
    return yp;
  };
  for (std::int64_t t = 0; t < T; ++t) {
    auto const yp = hf(x.data() + t * heads * d, static_cast<double>(pos[t]));
    float const* b = y.data() + t * heads * d;
    for (int i = 0; i < 32; ++i) {
      CHECK(b[2 * i] == Approx(yp[i]).margin(2e-5));
      CHECK(b[2 * i + 1] == Approx(yp[i + 32]).margin(2e-5));
    }
  }
}

TEST_CASE("ops::apply_rope: bad arguments", "[ops][rope]") {
  std::vector<float> x(2 * 64), f(32, 1.0f);
  std::vector<std::int64_t> pos{0, -3};
  auto const neg =
      apply_rope(MatrixView<float>(x.data(), 2, 64), VectorView<std::int64_t const>(pos.data(), 2),
                 VectorView<float const>(f.data(), 32));
  CHECK_THAT(neg.message(), Catch::Contains("positions[1] = -3"));
  auto const width =
      apply_rope(MatrixView<float>(x.data(), 2, 60), VectorView<std::int64_t const>(pos.data(), 2),
                 VectorView<float const>(f.data(), 32));
  CHECK_THAT(width.message(), Catch::Contains("multiple of 2·32"));
}
