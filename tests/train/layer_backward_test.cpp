// SPDX-License-Identifier: Apache-2.0
/// @file layer_backward_test.cpp
/// @brief A whole decoder layer's backward (norms, MLA, residuals, MoE FFN) against central
/// finite differences of the double reference layers composed as the forward is
/// (tests/reference/). The references take fp32 inputs, so the composed reference rounds its
/// intermediates to fp32 once per sub-layer; with the step 2^-9 that adds ~1e-4 relative noise,
/// within the bound 5e-3 · max|grad|.
#include <deepmoe/train/layer_backward.hpp>

#include "reference/mla_reference.hpp"
#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>
#include <vector>

namespace {
using namespace deepmoe;
using C = test::TinyGradCheck;
}  // namespace

TEST_CASE("train::decoder_layer_backward matches finite differences", "[train]") {
  constexpr std::int64_t H = C::hidden_size, T = 4;
  reference::RandomMla<C> attn(21);
  util::RandomMoe<C> moe(22);
  util::Rng rng(23);
  std::vector<float> w_in(H), w_post(H), h(T * H), dy(T * H);
  for (auto& v : w_in)
    v = 1.0f + 0.2f * rng.uniform();
  for (auto& v : w_post)
    v = 1.0f + 0.2f * rng.uniform();
  for (auto& v : h)
    v = rng.unit();
  for (auto& v : dy)
    v = rng.unit();
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 0);
  model::DecoderLayerWeights<C> w;
  w.is_moe = true;
  w.input_layernorm = VectorView<float const>(w_in.data(), H);
  w.post_attention_layernorm = VectorView<float const>(w_post.data(), H);
  w.self_attn = attn.w;
  w.moe = moe.weights;

  auto norm = [](std::vector<float> const& x, std::vector<float> const& wt) {
    std::vector<float> y(x.size());
    for (std::int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (std::int64_t i = 0; i < H; ++i)
        ss += double{x[t * H + i]} * x[t * H + i];
      double const r = 1 / std::sqrt(ss / H + C::rms_norm_eps);
      for (std::int64_t i = 0; i < H; ++i)
        y[t * H + i] = static_cast<float>(x[t * H + i] * r * wt[i]);
    }
    return y;
  };
  std::vector<reference::TokenRoute> routes;
  auto loss = [&] {
    auto const x1 = norm(h, w_in);
    auto const a = reference::reference_mla<C>(attn, x1, pos);
    std::vector<double> m(T * H);
    std::vector<float> mf(T * H);
    for (std::size_t i = 0; i < m.size(); ++i)
      mf[i] = static_cast<float>(m[i] = h[i] + a[i]);
    auto const x2 = norm(mf, w_post);
    auto const f = reference::moe_layer<C, float>(
        routes, MatrixView<float const, kDyn, H>(x2.data(), T), moe.weights);
    double L = 0;
    for (std::size_t i = 0; i < m.size(); ++i)
      L += dy[i] * (m[i] + f[i]);
    return L;
  };
  (void)loss();
  for (auto const& r : routes) {
    REQUIRE(r.margin > 0.02);  // the steps below cannot flip an expert
  }
  std::vector<float> dh(T * H);
  train::LayerGrads g = train::zero_layer_grads<C>(0);
  Status const st = train::decoder_layer_backward<C>(
      MatrixView<float>(dh.data(), T, H), g, MatrixView<float const>(dy.data(), T, H),
      MatrixView<float const>(h.data(), T, H), VectorView<std::int64_t const>(pos.data(), T), w);
  INFO(st.to_string());
  REQUIRE(st.ok());
  float const step = 0x1p-9f;
  auto compare = [&](std::vector<float>& values, std::vector<float> const& grads,
                     char const* what) {
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      float const keep = values[i];
      values[i] = keep + step;
      double const up = loss();
      values[i] = keep - step;
      double const down = loss();
      values[i] = keep;
      double const want = (up - down) / (2.0 * step);
      scale = std::max(scale, std::fabs(want));
      err = std::max(err, std::fabs(want - grads[i]));
    }
    INFO(what << ": max error " << err << " of max |grad| " << scale);
    CHECK(scale > 1e-3);
    CHECK(err <= 5e-3 * scale);
  };
  compare(h, dh, "layer input");
  compare(w_in, g.input_layernorm, "input_layernorm");
  compare(w_post, g.post_attention_layernorm, "post_attention_layernorm");
  compare(attn.lin[4].weight, g.self_attn.o_proj, "self_attn.o_proj");
  compare(attn.kvn, g.self_attn.kv_a_layernorm, "self_attn.kv_a_layernorm");
  compare(moe.gate, g.moe.gate, "mlp.gate");
  compare(moe.linears[0].weight, g.moe.experts[0].gate_proj, "mlp.experts.0.gate_proj");
}
