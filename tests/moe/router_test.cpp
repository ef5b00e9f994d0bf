// SPDX-License-Identifier: Apache-2.0
// Routing semantics with hand-computed answers: every routing case of docs/testing.md
// (B01–B07), tie-breaking, masks and bad input, and random sweeps against the double reference.
#include <catch2/catch.hpp>

#include <deepmoe/moe/router.hpp>

#include <deepmoe/util/random_moe.hpp>
#include "reference/moe_reference.hpp"
#include "support/router_configs.hpp"

#include <array>
#include <cmath>
#include <set>
#include <vector>

using namespace deepmoe;
using config::ScoringFunc;
using config::TopkMethod;
using deepmoe::testing::RouterConfig;

namespace {

/// Routes one token given its router *scores* (sigmoid configs; converted to logits) or its
/// logits (softmax configs).
template <class C>
struct Routed {
  std::array<std::int32_t, C::num_experts_per_tok> ids{};
  std::array<float, C::num_experts_per_tok> w{};
  moe::SelectResult result{};
};

template <class C>
Routed<C> route_logits(std::vector<double> const& z, std::vector<float> const& bias = {},
                       std::vector<std::uint8_t> const& mask = {}) {
  REQUIRE(z.size() == static_cast<std::size_t>(C::n_routed_experts));
  std::vector<float> zf(z.begin(), z.end());
  Routed<C> r;
  r.result = moe::select_experts_for_token<C>(r.ids.data(), r.w.data(), zf.data(),
                                              bias.empty() ? nullptr : bias.data(),
                                              mask.empty() ? nullptr : mask.data());
  return r;
}

std::vector<double> logits_of(std::vector<double> const& scores) {
  std::vector<double> z;
  for (double s : scores)
    z.push_back(std::log(s / (1.0 - s)));
  return z;
}

template <class C>
Routed<C> route_scores(std::vector<double> const& s, std::vector<float> const& bias = {},
                       std::vector<std::uint8_t> const& mask = {}) {
  return route_logits<C>(logits_of(s), bias, mask);
}

template <std::size_t K>
std::set<int> as_set(std::array<std::int32_t, K> const& a) {
  return {a.begin(), a.end()};
}

constexpr double kTol = 1e-6;  // fp32 sigmoid of a logit reproduces its score to ~1e-7

}  // namespace

TEST_CASE("moe::select_experts: B01 the bias selects but never weights", "[moe][router][cpu]") {
  using C = RouterConfig<4, 2, 1, 1, true, 2.5>;
  auto const r = route_scores<C>({0.9, 0.6, 0.5, 0.1}, {0.0f, -0.3f, 0.2f, 0.0f});
  REQUIRE(r.result == moe::SelectResult::kOk);
  CHECK(r.ids[0] == 0);
  CHECK(r.ids[1] == 2);                            // selected by s + b = 0.7 over expert 1's 0.3
  CHECK(r.w[0] == Approx(1.607143).margin(kTol));  // 2.5 · 0.9 / 1.4 from unbiased scores
  CHECK(r.w[1] == Approx(0.892857).margin(kTol));
  CHECK(r.w[0] + r.w[1] == Approx(2.5).margin(kTol));
  // without the bias the choice is {0, 1}
  auto const nb = route_scores<C>({0.9, 0.6, 0.5, 0.1}, {0.0f, 0.0f, 0.0f, 0.0f});
  CHECK(as_set(nb.ids) == std::set<int>{0, 1});
}

TEST_CASE("moe::select_experts: B02a groups scored by the sum of their top-2 biased scores",
          "[moe][router][cpu]") {
  std::vector<double> const s{0.9, 0.05, 0.6, 0.55, 0.7, 0.1, 0.2, 0.2};
  std::vector<float> const zero(8, 0.0f);
  using V3 = RouterConfig<8, 2, 4, 2, true, 2.5>;
  auto const r = route_scores<V3>(s, zero);
  REQUIRE(r.result == moe::SelectResult::kOk);
  CHECK(r.ids[0] == 0);  // top-2 sums [0.95, 1.15, 0.8, 0.4] keep groups {0, 1}
  CHECK(r.ids[1] == 2);
  CHECK(r.w[0] == Approx(1.5).margin(kTol));
  CHECK(r.w[1] == Approx(1.0).margin(kTol));
  // group_limited_greedy (DeepSeek-V2) scores groups by their max: groups {0, 2}, experts {0, 4}
  using V2 =
      RouterConfig<8, 2, 4, 2, true, 2.5, ScoringFunc::kSigmoid, TopkMethod::kGroupLimitedGreedy>;
  auto const g = route_scores<V2>(s);
  CHECK(g.ids[0] == 0);
  CHECK(g.ids[1] == 4);
  CHECK(g.w[0] == Approx(1.40625).margin(kTol));
  CHECK(g.w[1] == Approx(1.09375).margin(kTol));
}

TEST_CASE("moe::select_experts: B02b masked groups are -inf, never 0", "[moe][router][cpu]") {
  using C = RouterConfig<8, 2, 4, 1, true, 1.0>;
  std::vector<float> const bias(8, -0.5f);
  auto const r = route_scores<C>({0.4, 0.3, 0.3, 0.2, 0.1, 0.05, 0.2, 0.15}, bias);
  REQUIRE(r.result == moe::SelectResult::kOk);
  CHECK(r.ids[0] == 0);  // group sums [-0.3, -0.5, -0.85, -0.65]: only group 0 is kept
  CHECK(r.ids[1] == 1);
  CHECK(r.w[0] == Approx(0.571429).margin(kTol));
  CHECK(r.w[1] == Approx(0.428571).margin(kTol));
}

TEST_CASE("moe::select_experts: B02b property — no expert outside the kept groups",
          "[moe][router][cpu]") {
  using C = RouterConfig<32, 4, 8, 2, true, 2.5>;
  deepmoe::util::Rng rng(0xB02B);
  for (int trial = 0; trial < 2000; ++trial) {
    CAPTURE(trial);
    std::vector<double> z(32);
    std::vector<float> bias(32);
    for (auto& v : z)
      v = 3.0 * rng.uniform();
    float const offset = -1.0f - 2.0f * (rng.uniform() + 1.0f);  // all biased scores < 0
    for (auto& b : bias)
      b = offset + 0.05f * rng.uniform();
    auto const r = route_logits<C>(z, bias);
    REQUIRE(r.result == moe::SelectResult::kOk);
    // the kept groups, computed independently in double
    std::set<int> groups;
    for (int id : r.ids)
      groups.insert(id / 4);
    CHECK(groups.size() <= 2);  // whatever the margins: never outside the TG = 2 kept groups
    std::vector<double> bd(bias.begin(), bias.end());
    auto const ref = reference::route_token<C>(z, bd, {});
    if (ref.margin > 1e-5) {
      CHECK(as_set(r.ids) == std::set<int>(ref.ids.begin(), ref.ids.end()));
    }
  }
}

TEST_CASE("moe::select_experts: B03 one group equals plain top-k", "[moe][router][cpu]") {
  using C = RouterConfig<4, 2, 1, 1, true, 1.0>;
  auto const r = route_scores<C>({0.1, 0.9, 0.3, 0.8}, {0.0f, 0.0f, 0.0f, 0.0f});
  REQUIRE(r.result == moe::SelectResult::kOk);
  CHECK(r.ids[0] == 1);
  CHECK(r.ids[1] == 3);
  // the accepted topology of B03 compiles (the rejected ones are compile_fail tests)
  STATIC_REQUIRE(config::validate<RouterConfig<8, 4, 4, 2>>());
}

TEST_CASE("moe::select_experts: B05 norm_topk_prob is read from the config", "[moe][router][cpu]") {
  std::vector<double> const s{0.8, 0.4, 0.1, 0.05};
  std::vector<float> const zero(4, 0.0f);
  auto const on = route_scores<RouterConfig<4, 2, 1, 1, true, 1.0>>(s, zero);
  CHECK(on.w[0] == Approx(0.666667).margin(kTol));
  CHECK(on.w[1] == Approx(0.333333).margin(kTol));
  auto const off = route_scores<RouterConfig<4, 2, 1, 1, false, 1.0>>(s, zero);
  CHECK(off.w[0] == Approx(0.8).margin(kTol));
  CHECK(off.w[1] == Approx(0.4).margin(kTol));
  auto const k1 = route_scores<RouterConfig<4, 1, 1, 1, true, 2.5>>(s, zero);
  CHECK(k1.ids[0] == 0);
  CHECK(k1.w[0] == Approx(2.5).margin(kTol));
}

TEST_CASE(
    "moe::select_experts: B06 routed_scaling_factor applies with and without "
    "renormalization",
    "[moe][router][cpu]") {
  std::vector<double> const z{2, 1, 0, 0};  // softmax p = [0.610296, 0.224515, 0.082595, ...]
  auto check = [&](auto cfg, double w0, double w1) {
    using C = decltype(cfg);
    auto const r = route_logits<C>(z);
    REQUIRE(r.result == moe::SelectResult::kOk);
    CHECK(r.ids[0] == 0);
    CHECK(r.ids[1] == 1);
    CHECK(r.w[0] == Approx(w0).epsilon(1e-5));
    CHECK(r.w[1] == Approx(w1).epsilon(1e-5));
  };
  constexpr auto kSoft = ScoringFunc::kSoftmax;
  constexpr auto kGreedy = TopkMethod::kGreedy;
  check(RouterConfig<4, 2, 1, 1, false, 16.0, kSoft, kGreedy>{}, 9.76473, 3.59224);
  check(RouterConfig<4, 2, 1, 1, false, 1.0, kSoft, kGreedy>{}, 0.610296, 0.224515);
  check(RouterConfig<4, 2, 1, 1, true, 1.0, kSoft, kGreedy>{}, 0.731059, 0.268941);
  check(RouterConfig<4, 2, 1, 1, true, 16.0, kSoft, kGreedy>{}, 16 * 0.731059, 16 * 0.268941);
}

TEST_CASE("moe::select_experts: ties break toward the lower expert and group id",
          "[moe][router][cpu]") {
  using C = RouterConfig<8, 3, 4, 2, true, 1.0>;
  std::vector<float> const zero(8, 0.0f);
  auto const all_equal = route_logits<C>(std::vector<double>(8, 0.25), zero);
  CHECK(all_equal.ids == std::array<std::int32_t, 3>{0, 1, 2});  // groups 0 and 1 win the tie
  CHECK(all_equal.w[0] == Approx(1.0 / 3).margin(kTol));
  // groups 1 and 3 (tied at 1.0) are kept; their four equal experts go in id order
  auto const r = route_scores<C>({0.1, 0.1, 0.5, 0.5, 0.3, 0.3, 0.5, 0.5}, zero);
  CHECK(r.ids == std::array<std::int32_t, 3>{2, 3, 6});
  // the top-2 sum counts an equal value twice: group 0 (0.6+0.6) beats group 1 (0.9+0.2)
  using C1 = RouterConfig<4, 1, 2, 1, true, 1.0>;
  auto const twice = route_scores<C1>({0.6, 0.6, 0.9, 0.2}, std::vector<float>(4, 0.0f));
  CHECK(twice.ids[0] == 0);
}

TEST_CASE("moe::select_experts: expert mask", "[moe][router][cpu]") {
  using C = RouterConfig<8, 2, 4, 2, true, 2.5>;
  std::vector<double> const s{0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2};
  std::vector<float> const zero(8, 0.0f);
  auto const plain = route_scores<C>(s, zero);
  CHECK(plain.ids == std::array<std::int32_t, 2>{0, 1});
  // masking expert 0 makes group 0 score −inf (one eligible expert): groups 1, 2 are kept
  auto const masked = route_scores<C>(s, zero, {1, 0, 0, 0, 0, 0, 0, 0});
  REQUIRE(masked.result == moe::SelectResult::kOk);
  CHECK(masked.ids == std::array<std::int32_t, 2>{2, 3});
  CHECK(masked.w[0] == Approx(2.5 * 0.7 / 1.3).margin(kTol));
  // a mask that leaves fewer than k experts in reach is an error, not a −inf pick
  auto const starved = route_scores<C>(s, zero, {1, 1, 1, 1, 1, 1, 1, 0});
  CHECK(starved.result == moe::SelectResult::kTooFewEligible);

  // through the batched API: one mask row applies to every token
  std::vector<float> logits;
  for (int t = 0; t < 3; ++t) {
    for (double v : logits_of(s))
      logits.push_back(static_cast<float>(v));
  }
  std::vector<std::int32_t> ids(6);
  std::vector<float> w(6);
  std::vector<std::uint8_t> mask{1, 1, 0, 0, 0, 0, 0, 0};
  auto const st = moe::select_experts<C>(
      MatrixView<std::int32_t, kDyn, 2>(ids.data(), 3), MatrixView<float, kDyn, 2>(w.data(), 3),
      MatrixView<float const, kDyn, 8>(logits.data(), 3), VectorView<float const, 8>(zero.data()),
      moe::ExpertMask<C>(mask.data(), 1));
  REQUIRE(st.ok());
  for (int t = 0; t < 3; ++t) {
    CHECK(ids[2 * t] == 2);
    CHECK(ids[2 * t + 1] == 3);
  }
  mask.assign(16, 0);  // 2 rows for 3 tokens
  auto const bad = moe::select_experts<C>(
      MatrixView<std::int32_t, kDyn, 2>(ids.data(), 3), MatrixView<float, kDyn, 2>(w.data(), 3),
      MatrixView<float const, kDyn, 8>(logits.data(), 3), VectorView<float const, 8>(zero.data()),
      moe::ExpertMask<C>(mask.data(), 2));
  CHECK_FALSE(bad.ok());
  CHECK_THAT(bad.message(), Catch::Contains("mask has 2 rows"));
}

TEST_CASE("moe::select_experts: bad input gives a clear error", "[moe][router][cpu]") {
  using C = RouterConfig<8, 2, 4, 2, true, 2.5>;
  std::vector<float> logits(8 * 4, 0.5f);
  logits[2 * 8 + 5] = std::nanf("");
  std::vector<std::int32_t> ids(8);
  std::vector<float> w(8), bias(8, 0.0f);
  MatrixView<std::int32_t, kDyn, 2> const id_view(ids.data(), 4);
  MatrixView<float, kDyn, 2> const w_view(w.data(), 4);
  MatrixView<float const, kDyn, 8> const z(logits.data(), 4);
  auto const nan =
      moe::select_experts<C>(id_view, w_view, z, VectorView<float const, 8>(bias.data()));
  CHECK(nan.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(nan.message(), Catch::Contains("token 2") && Catch::Contains("NaN"));
  logits[2 * 8 + 5] = 0.5f;
  auto const no_bias = moe::select_experts<C>(id_view, w_view, z, {});
  CHECK_THAT(no_bias.message(), Catch::Contains("e_score_correction_bias"));
  auto const rows = moe::select_experts<C>(MatrixView<std::int32_t, kDyn, 2>(ids.data(), 3), w_view,
                                           z, VectorView<float const, 8>(bias.data()));
  CHECK_THAT(rows.message(), Catch::Contains("topk_ids is [3, 2], topk_weights [4, 2]"));
  // T = 0 is an ordinary no-op
  CHECK(moe::select_experts<C>(MatrixView<std::int32_t, kDyn, 2>(ids.data(), 0),
                               MatrixView<float, kDyn, 2>(w.data(), 0),
                               MatrixView<float const, kDyn, 8>(logits.data(), 0),
                               VectorView<float const, 8>(bias.data()))
            .ok());
}

TEMPLATE_TEST_CASE(
    "moe::select_experts: random sweeps match the double reference", "[moe][router][cpu]",
    (RouterConfig<8, 2, 4, 2, true, 2.5>), (RouterConfig<16, 4, 4, 3, true, 2.446>),
    (RouterConfig<64, 6, 1, 1, true, 2.446>),
    (RouterConfig<64, 6, 1, 1, false, 1.0, ScoringFunc::kSoftmax, TopkMethod::kGreedy>),
    (RouterConfig<32, 6, 8, 3, false, 16.0, ScoringFunc::kSoftmax,
                  TopkMethod::kGroupLimitedGreedy>),
    (RouterConfig<256, 8, 8, 4, true, 2.5>)) {
  using C = TestType;
  constexpr int E = C::n_routed_experts, K = C::num_experts_per_tok;
  int compared = 0;
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    CAPTURE(seed);  // the seed to replay a failure
    deepmoe::util::Rng rng(seed);
    std::vector<double> z(E), bd(E);
    std::vector<float> bias(E);
    for (auto& v : z)
      v = static_cast<float>(4.0 * rng.uniform());  // representable in fp32
    for (int e = 0; e < E; ++e)
      bd[e] = bias[e] = 0.2f * rng.uniform();
    bool const has_bias = C::topk_method == TopkMethod::kNoauxTc;
    auto const got = route_logits<C>(z, has_bias ? bias : std::vector<float>{});
    auto const ref = reference::route_token<C>(z, has_bias ? bd : std::vector<double>{}, {});
    REQUIRE(got.result == moe::SelectResult::kOk);
    if (ref.margin > 1e-6) {
      ++compared;
      for (int j = 0; j < K; ++j) {
        CHECK(got.ids[j] == ref.ids[j]);
        CHECK(got.w[j] == Approx(ref.weights[j]).epsilon(1e-5));
      }
    }
  }
  CHECK(compared >= 270);  // at least 90% of the tokens are far from a tie
}

TEST_CASE("moe::select_experts: one mask row per token", "[moe][router][cpu]") {
  using C = RouterConfig<8, 2, 4, 2, true, 2.5>;
  std::vector<double> const s{0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2};
  std::vector<float> logits;
  for (int t = 0; t < 3; ++t) {
    for (double v : logits_of(s))
      logits.push_back(static_cast<float>(v));
  }
  std::vector<std::uint8_t> const mask{0, 0, 0, 0, 0, 0, 0, 0,   // token 0: free
                                       1, 1, 0, 0, 0, 0, 0, 0,   // token 1: not 0, 1
                                       0, 0, 1, 1, 1, 1, 0, 0};  // token 2: only groups 0, 3
  std::vector<float> const zero(8, 0.0f);
  std::vector<std::int32_t> ids(6);
  std::vector<float> w(6);
  REQUIRE(moe::select_experts<C>(MatrixView<std::int32_t, kDyn, 2>(ids.data(), 3),
                                 MatrixView<float, kDyn, 2>(w.data(), 3),
                                 MatrixView<float const, kDyn, 8>(logits.data(), 3),
                                 VectorView<float const, 8>(zero.data()),
                                 moe::ExpertMask<C>(mask.data(), 3))
              .ok());
  CHECK(ids == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1});
}

TEST_CASE("moe::select_experts: a non-finite correction bias is an error", "[moe][router][cpu]") {
  using C = RouterConfig<8, 2, 4, 2, true, 2.5>;
  std::vector<float> logits(8, 0.1f), w(2), bias(8, 0.0f);
  std::vector<std::int32_t> ids(2);
  bias[3] = std::nanf("");
  auto const st = moe::select_experts<C>(
      MatrixView<std::int32_t, kDyn, 2>(ids.data(), 1), MatrixView<float, kDyn, 2>(w.data(), 1),
      MatrixView<float const, kDyn, 8>(logits.data(), 1), VectorView<float const, 8>(bias.data()));
  CHECK_THAT(st.message(), Catch::Contains("e_score_correction_bias[3]"));
}
