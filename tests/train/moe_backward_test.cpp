// SPDX-License-Identifier: Apache-2.0
/// @file moe_backward_test.cpp
/// @brief The MoE layer's backward against central finite differences of the double reference
/// layer (tests/reference/moe_reference.hpp), for V3-style routing (sigmoid, bias, groups,
/// normalized weights, a shared expert) and V2-style (softmax, greedy, unnormalized, 2 shared).
/// L = Σ dy ⊙ y for a random dy. Weights are stored in fp32, so the step is h = 2^-9 (exactly
/// representable added to unit-scale values); the central difference's O(h²) error and the fp32
/// backward leave the gradients within 2e-3 of max|grad|. Tokens whose routing margin is below
/// 0.05 are excluded: a step could flip their experts, where the function is not differentiable.
#include <deepmoe/train/moe_backward.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "reference/moe_reference.hpp"
#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

namespace {

using namespace deepmoe;

using TinyV3 = test::TinyGradCheck;  // sigmoid, noaux_tc, 2 groups, 1 shared

struct TinyV2 : TinyV3 {
  static constexpr int n_shared_experts = 2;
  static constexpr int n_group = 1;
  static constexpr double routed_scaling_factor = 1.5;
  static constexpr bool norm_topk_prob = false;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSoftmax;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kGreedy;
};

template <class C>
void check_moe_backward(std::uint64_t seed) {
  constexpr std::int64_t H = C::hidden_size, T = 6;
  util::RandomMoe<C> moe(seed);
  util::Rng rng(seed + 1);
  std::vector<float> u(T * H), dy(T * H);
  for (auto& v : u)
    v = rng.unit();
  for (auto& v : dy)
    v = rng.unit();
  // keep tokens whose routing is far from a tie
  std::vector<reference::TokenRoute> routes;
  reference::moe_layer<C, float>(routes, MatrixView<float const, kDyn, H>(u.data(), T),
                                 moe.weights);
  std::vector<float> dym = dy;
  int kept = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    if (routes[static_cast<std::size_t>(t)].margin < 0.05) {
      for (std::int64_t h = 0; h < H; ++h)
        dym[static_cast<std::size_t>(t * H + h)] = 0.0f;  // its output does not count
    } else {
      ++kept;
    }
  }
  REQUIRE(kept >= 3);
  auto loss = [&] {
    std::vector<reference::TokenRoute> r;
    auto const y = reference::moe_layer<C, float>(r, MatrixView<float const, kDyn, H>(u.data(), T),
                                                  moe.weights);
    double L = 0;
    for (std::size_t i = 0; i < y.size(); ++i)
      L += dym[i] * y[i];
    return L;
  };
  std::vector<float> du(T * H);
  train::MoeGrads g = train::zero_moe_grads<C>();
  REQUIRE(train::moe_layer_backward<C>(MatrixView<float>(du.data(), T, H), g,
                                       MatrixView<float const>(dym.data(), T, H),
                                       MatrixView<float const>(u.data(), T, H), moe.weights)
              .ok());
  float const h = 0x1p-9f;
  auto fd = [&](float& x) {
    float const keep = x;
    x = keep + h;
    double const up = loss();
    x = keep - h;
    double const down = loss();
    x = keep;
    return (up - down) / (2.0 * h);
  };
  auto compare = [&](std::vector<float>& values, std::vector<float> const& grads,
                     char const* what) {
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      double const want = fd(values[i]);
      scale = std::max(scale, std::fabs(want));
      err = std::max(err, std::fabs(want - grads[i]));
    }
    INFO(what << ": max error " << err << " of max |grad| " << scale);
    CHECK(scale > 1e-3);  // a gradient that is really there
    CHECK(err <= 2e-3 * scale);
  };
  compare(u, du, "input");
  compare(moe.gate, g.gate, "mlp.gate.weight");
  for (std::size_t e = 0; e < static_cast<std::size_t>(C::n_routed_experts); ++e) {
    CAPTURE(e);
    compare(moe.linears[3 * e].weight, g.experts[e].gate_proj, "experts.gate_proj");
    compare(moe.linears[3 * e + 1].weight, g.experts[e].up_proj, "experts.up_proj");
    compare(moe.linears[3 * e + 2].weight, g.experts[e].down_proj, "experts.down_proj");
  }
  std::size_t const s = 3 * static_cast<std::size_t>(C::n_routed_experts);
  compare(moe.linears[s].weight, g.shared.gate_proj, "shared_experts.gate_proj");
  compare(moe.linears[s + 2].weight, g.shared.down_proj, "shared_experts.down_proj");
}

}  // namespace

TEST_CASE("train::moe_layer_backward matches finite differences (V3 routing)", "[train]") {
  check_moe_backward<TinyV3>(3);
}

TEST_CASE("train::moe_layer_backward matches finite differences (V2 routing)", "[train]") {
  check_moe_backward<TinyV2>(4);
}
