// SPDX-License-Identifier: Apache-2.0
// The whole MoE layer against the double-precision reference, for fp32, bf16 and fp8 weights;
// batch invariance; thread-count invariance; routed_scaling_factor applied once (B07); errors.
#include <catch2/catch.hpp>

#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/configs/tiny_v2_moe.hpp>
#include <deepmoe/moe/moe_layer.hpp>

#include <deepmoe/util/random_moe.hpp>
#include "reference/moe_reference.hpp"
#include "support/router_configs.hpp"

#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

using namespace deepmoe;
using config::WithPrecision;

namespace {

template <class C, class Act = typename C::act_t>
std::vector<Act> run_layer(moe::MoeWeights<C> const& w, std::vector<Act> const& u,
                           moe::MoeWorkspace<C>& ws, moe::ExpertMask<C> mask = {}) {
  constexpr std::int64_t H = C::hidden_size;
  std::int64_t const T = static_cast<std::int64_t>(u.size()) / H;
  std::vector<Act> y(u.size());
  Status const st =
      moe::moe_layer_forward<C, Act>(MatrixView<Act, kDyn, H>(y.data(), T),
                                     MatrixView<Act const, kDyn, H>(u.data(), T), w, ws, mask);
  REQUIRE(st.ok());
  return y;
}

/// Tolerance of the layer output against the double reference, per activation type:
/// fp32 output: fp32 accumulation over H and M terms of unit-scale products gives relative
/// errors ~ sqrt(H)·2^-24 ≈ 1e-6; 2e-5 of the output's scale leaves margin.
/// bf16 output: one final rounding to 8 significant bits: |err| ≤ 2^-8·|y|, plus the fp32 part.
template <class Act>
void check_close(std::vector<Act> const& y, std::vector<double> const& ref,
                 std::vector<reference::TokenRoute> const& routes, std::int64_t H) {
  double scale = 0;
  for (double v : ref)
    scale = std::max(scale, std::abs(v));
  std::int64_t compared = 0;
  for (std::size_t t = 0; t < routes.size(); ++t) {
    if (routes[t].margin <= 1e-6)
      continue;  // near-tie: fp32 and double may pick differently
    ++compared;
    for (std::int64_t h = 0; h < H; ++h) {
      double const r = ref[t * H + h], v = to_float(y[t * H + h]);
      double const tol =
          std::is_same_v<Act, float> ? 2e-5 * scale : std::ldexp(std::abs(r), -8) + 2e-5 * scale;
      if (std::abs(v - r) > tol) {
        FAIL_CHECK("token " << t << " h " << h << ": got " << v << ", reference " << r);
        return;
      }
    }
  }
  CHECK(compared >= static_cast<std::int64_t>(routes.size()) * 9 / 10);
}

template <class C>
void check_against_reference(std::uint64_t seed, std::int64_t T) {
  using A = typename C::act_t;
  CAPTURE(seed, T);
  deepmoe::util::RandomMoe<C> const moe(seed);
  auto const u = deepmoe::util::random_tokens<A>(seed + 1000, T, C::hidden_size);
  moe::MoeWorkspace<C> ws;
  auto const y = run_layer<C>(moe.weights, u, ws);
  std::vector<reference::TokenRoute> routes;
  auto const ref = reference::moe_layer<C, A>(
      routes, MatrixView<A const, kDyn, C::hidden_size>(u.data(), T), moe.weights);
  check_close(y, ref, routes, C::hidden_size);
  // the workspace's ids and loads are those of the reference where the margin allows
  auto const ids = ws.topk_ids();
  std::vector<std::int32_t> load(C::n_routed_experts, 0);
  for (std::int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < C::num_experts_per_tok; ++j) {
      ++load[ids(t, j)];
      if (routes[t].margin > 1e-6)
        CHECK(ids(t, j) == routes[t].ids[j]);
    }
  }
  for (int e = 0; e < C::n_routed_experts; ++e)
    CHECK(ws.tokens_per_expert()(e) == load[e]);
}

using TinyBf16 = WithPrecision<configs::TinyMoe, bfloat16, bfloat16>;
using TinyFp8 = WithPrecision<configs::TinyMoe, float8_e4m3fn, bfloat16>;
using TinyFp8F32Act = WithPrecision<configs::TinyMoe, float8_e4m3fn, float>;
using TinyV2Bf16 = WithPrecision<configs::TinyV2Moe, bfloat16, float>;

/// A wide-expert config: 64 experts of 6 chosen, no groups, 2 shared (Moonlight-like routing,
/// small widths).
struct WideTiny : deepmoe::testing::RouterConfig<64, 6, 1, 1, true, 2.446> {
  static constexpr int hidden_size = 128;
  static constexpr int moe_intermediate_size = 48;
  static constexpr int n_shared_experts = 2;
};

/// Sizes that are not multiples of the 16 SIMD lanes (the k-tail path) nor of the fp8 block.
struct OddTiny : configs::TinyMoe {
  static constexpr int hidden_size = 200;
  static constexpr int moe_intermediate_size = 40;
};
using OddTinyBf16 = WithPrecision<OddTiny, bfloat16, bfloat16>;
using OddTinyFp8 = WithPrecision<OddTiny, float8_e4m3fn, float>;

}  // namespace

TEMPLATE_TEST_CASE("moe::moe_layer_forward: matches the double reference", "[moe][layer][cpu]",
                   configs::TinyMoe, configs::TinyV2Moe, TinyBf16, TinyFp8, TinyFp8F32Act,
                   TinyV2Bf16, WideTiny, OddTiny, OddTinyBf16, OddTinyFp8) {
  for (std::int64_t T : {1, 3, 8, 37}) {
    check_against_reference<TestType>(static_cast<std::uint64_t>(T) * 7919, T);
  }
}

TEMPLATE_TEST_CASE("moe::moe_layer_forward: a token's output does not depend on the batch",
                   "[moe][layer][cpu][determinism]", configs::TinyMoe, TinyBf16, TinyFp8, WideTiny,
                   OddTinyBf16, OddTinyFp8) {
  using C = TestType;
  using A = typename C::act_t;
  constexpr std::int64_t H = C::hidden_size;
  deepmoe::util::RandomMoe<C> const moe(11);
  std::int64_t const T = 64;
  auto const u = deepmoe::util::random_tokens<A>(12, T, H);
  moe::MoeWorkspace<C> ws;
  auto const batch = run_layer<C>(moe.weights, u, ws);
  // each token alone, and inside a different, shuffled batch, gives bitwise the same row
  for (std::int64_t t = 0; t < T; t += 5) {
    std::vector<A> const one(u.begin() + t * H, u.begin() + (t + 1) * H);
    auto const alone = run_layer<C>(moe.weights, one, ws);
    CHECK(std::memcmp(alone.data(), batch.data() + t * H, H * sizeof(A)) == 0);
  }
  std::vector<A> reversed;
  for (std::int64_t t = T - 1; t >= 0; --t)
    reversed.insert(reversed.end(), u.begin() + t * H, u.begin() + (t + 1) * H);
  auto const rev = run_layer<C>(moe.weights, reversed, ws);
  for (std::int64_t t = 0; t < T; ++t) {
    CHECK(std::memcmp(rev.data() + (T - 1 - t) * H, batch.data() + t * H, H * sizeof(A)) == 0);
  }
  // and the thread count does not change any bit
  int const threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto const serial = run_layer<C>(moe.weights, u, ws);
  omp_set_num_threads(threads);
  CHECK(std::memcmp(serial.data(), batch.data(), batch.size() * sizeof(A)) == 0);
}

namespace {
template <double Rsf>
struct Scaled : configs::TinyMoe {
  static constexpr double routed_scaling_factor = Rsf;
};
template <double Rsf>
struct ScaledNoShared : Scaled<Rsf> {
  static constexpr int n_shared_experts = 0;
};
}  // namespace

TEST_CASE("moe::moe_layer_forward: B07 routed_scaling_factor scales the routed part once",
          "[moe][layer][cpu]") {
  // y(rsf) − shared(u) = rsf · (y(1) − shared(u)), for batched and single-token calls; the
  // shared experts' output is never scaled.
  constexpr std::int64_t H = configs::TinyMoe::hidden_size, T = 16;
  deepmoe::util::RandomMoe<Scaled<2.5>> const m25(5);
  deepmoe::util::RandomMoe<Scaled<1.0>> const m1(5);  // same seed: same weights
  deepmoe::util::RandomMoe<ScaledNoShared<1.0>> const routed_only(5);
  auto const u = deepmoe::util::random_tokens<float>(6, T, H);
  moe::MoeWorkspace<Scaled<2.5>> ws25;
  moe::MoeWorkspace<Scaled<1.0>> ws1;
  moe::MoeWorkspace<ScaledNoShared<1.0>> ws0;
  for (std::int64_t batch : {T, std::int64_t{1}}) {
    std::vector<float> const ub(u.begin(), u.begin() + batch * H);
    auto const y25 = run_layer(m25.weights, ub, ws25);
    auto const y1 = run_layer(m1.weights, ub, ws1);
    auto const routed = run_layer(routed_only.weights, ub, ws0);  // y(1) − shared
    for (std::int64_t i = 0; i < batch * H; ++i) {
      double const shared = y1[i] - routed[i];
      CHECK(y25[i] - shared == Approx(2.5 * routed[i]).margin(1e-5).epsilon(1e-5));
    }
  }
}

TEST_CASE("moe::moe_layer_forward: bad fp8 scales are named, not computed with",
          "[moe][layer][cpu]") {
  using C = TinyFp8F32Act;
  constexpr std::int64_t H = C::hidden_size;
  deepmoe::util::RandomMoe<C> moe(4);
  moe::MoeWorkspace<C> ws;
  auto const u = deepmoe::util::random_tokens<float>(2, 3, H);
  std::vector<float> y(u.size());
  auto run = [&] {
    return moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 3),
                                            MatrixView<float const, kDyn, H>(u.data(), 3),
                                            moe.weights, ws);
  };
  REQUIRE(run().ok());
  auto& shared_down = moe.linears[3 * C::n_routed_experts + 2];  // shared_experts.down_proj
  shared_down.scale[1] = std::nanf("");
  CHECK_THAT(run().message(), Catch::Contains("shared_experts.down_proj.weight_scale_inv") &&
                                  Catch::Contains("not a finite scale"));
  shared_down.scale[1] = 1.0f;
  moe.linears[3 * 6].scale[0] = -2.0f;  // experts[6].gate_proj
  CHECK_THAT(run().message(), Catch::Contains("experts[6].gate_proj.weight_scale_inv"));
}

TEMPLATE_TEST_CASE("moe::moe_layer_forward: equals its four stages called one by one",
                   "[moe][layer][cpu]", configs::TinyMoe, TinyBf16, TinyFp8) {
  // router → plan → permute → expert_ffn (+ shared) → combine, through the public stage API,
  // gives bitwise the layer's output: the layer adds nothing of its own.
  using C = TestType;
  using A = typename C::act_t;
  constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts, K = C::num_experts_per_tok;
  constexpr std::int64_t M = C::moe_intermediate_size;
  constexpr std::int64_t SM = config::Derived<C>::shared_intermediate_size;
  deepmoe::util::RandomMoe<C> const moe(21);
  std::int64_t const T = 19;
  auto const u = deepmoe::util::random_tokens<A>(22, T, H);
  moe::MoeWorkspace<C> ws;
  auto const y_layer = run_layer<C>(moe.weights, u, ws);
  auto sz = [](std::int64_t n) { return static_cast<std::size_t>(n); };

  std::vector<float> x(sz(T * H)), logits(sz(T * E)), w(sz(T * K));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = to_float(u[i]);
  std::vector<std::int32_t> ids(sz(T * K)), counts(sz(E)), offsets(sz(E + 1)), p2e(sz(T * K)),
      e2p(sz(T * K));
  MatrixView<float const, kDyn, H> const xv(x.data(), T);
  REQUIRE(moe::gate_logits<C>(MatrixView<float, kDyn, E>(logits.data(), T), xv,
                              moe.weights.router.gate_weight)
              .ok());
  REQUIRE(moe::select_experts<C>(MatrixView<std::int32_t, kDyn, K>(ids.data(), T),
                                 MatrixView<float, kDyn, K>(w.data(), T),
                                 MatrixView<float const, kDyn, E>(logits.data(), T),
                                 moe.weights.router.e_score_correction_bias)
              .ok());
  moe::DispatchPlan<C> const plan{
      VectorView<std::int32_t, E>(counts.data()), VectorView<std::int32_t, E + 1>(offsets.data()),
      VectorView<std::int32_t>(p2e.data(), T * K), VectorView<std::int32_t>(e2p.data(), T * K)};
  REQUIRE(moe::build_dispatch_plan<C>(plan, MatrixView<std::int32_t const, kDyn, K>(ids.data(), T))
              .ok());
  std::vector<float> permuted(sz(T * K * H)), out(sz(T * K * H)), hidden(sz(T * K * M));
  std::vector<float> shared_out(sz(T * H)), shared_hidden(sz(T * SM));
  REQUIRE(
      moe::permute<C, float>(MatrixView<float, kDyn, H>(permuted.data(), T * K), xv, plan).ok());
  moe::SharedExpertsPass<C> const shared{
      &moe.weights.shared_experts, MatrixView<float, kDyn, H>(shared_out.data(), T),
      MatrixView<float, kDyn, kDyn>(shared_hidden.data(), T, SM), xv};
  REQUIRE(moe::expert_ffn<C>(MatrixView<float, kDyn, H>(out.data(), T * K),
                             MatrixView<float, kDyn, M>(hidden.data(), T * K),
                             MatrixView<float const, kDyn, H>(permuted.data(), T * K), plan,
                             moe.weights.experts, shared)
              .ok());
  // the shared experts through their own entry point agree with the grouped pass
  std::vector<float> shared_alone(sz(T * H));
  REQUIRE(moe::shared_expert_ffn<C>(MatrixView<float, kDyn, H>(shared_alone.data(), T),
                                    MatrixView<float, kDyn, kDyn>(shared_hidden.data(), T, SM), xv,
                                    moe.weights.shared_experts)
              .ok());
  CHECK(std::memcmp(shared_alone.data(), shared_out.data(), shared_out.size() * 4) == 0);
  std::vector<A> y(sz(T * H));
  REQUIRE(moe::combine<C, A>(MatrixView<A, kDyn, H>(y.data(), T),
                             MatrixView<float const, kDyn, H>(out.data(), T * K),
                             MatrixView<float const, kDyn, K>(w.data(), T), plan,
                             MatrixView<float const, kDyn, H>(shared_out.data(), T))
              .ok());
  CHECK(std::memcmp(y.data(), y_layer.data(), y.size() * sizeof(A)) == 0);
}

TEST_CASE("moe::moe_layer_forward: edge cases and bad input", "[moe][layer][cpu]") {
  using C = configs::TinyMoe;
  constexpr std::int64_t H = C::hidden_size;
  deepmoe::util::RandomMoe<C> const moe(3);
  moe::MoeWorkspace<C> ws;
  SECTION("T = 0 is a no-op") {
    std::vector<float> u, y;
    REQUIRE(moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 0),
                                             MatrixView<float const, kDyn, H>(u.data(), 0),
                                             moe.weights, ws)
                .ok());
    CHECK(ws.tokens_per_expert()(0) == 0);
  }
  SECTION("NaN in the hidden state names the token") {
    auto u = deepmoe::util::random_tokens<float>(1, 4, H);
    u[2 * H + 17] = std::nanf("");
    std::vector<float> y(u.size());
    auto const st = moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 4),
                                                     MatrixView<float const, kDyn, H>(u.data(), 4),
                                                     moe.weights, ws);
    CHECK(st.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(st.message(), Catch::Contains("token 2"));
  }
  SECTION("a misshaped expert weight is named") {
    auto experts = moe.experts;
    experts[5].down_proj.weight =
        MatrixView<float const>(experts[5].down_proj.weight.data(), 96, 256);
    auto weights = moe.weights;
    weights.experts = experts;
    auto u = deepmoe::util::random_tokens<float>(1, 2, H);
    std::vector<float> y(u.size());
    auto const st = moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 2),
                                                     MatrixView<float const, kDyn, H>(u.data(), 2),
                                                     weights, ws);
    CHECK_THAT(st.message(), Catch::Contains("experts[5].down_proj.weight has shape [96, 256], "
                                             "expected [256, 96]"));
  }
  SECTION("missing experts and rows mismatch") {
    auto weights = moe.weights;
    weights.experts = weights.experts.first(7);
    auto u = deepmoe::util::random_tokens<float>(1, 2, H);
    std::vector<float> y(u.size());
    auto const st = moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 2),
                                                     MatrixView<float const, kDyn, H>(u.data(), 2),
                                                     weights, ws);
    CHECK_THAT(st.message(), Catch::Contains("got 7 routed experts"));
    auto const rows = moe::moe_layer_forward<C, float>(
        MatrixView<float, kDyn, H>(y.data(), 1), MatrixView<float const, kDyn, H>(u.data(), 2),
        moe.weights, ws);
    CHECK_THAT(rows.message(), Catch::Contains("y is [1, 256], u [2, 256]"));
  }
  SECTION("null activations are errors, not crashes") {
    auto u = deepmoe::util::random_tokens<float>(1, 2, H);
    std::vector<float> y(u.size());
    auto const no_u = moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 2),
                                                       MatrixView<float const, kDyn, H>(nullptr, 2),
                                                       moe.weights, ws);
    CHECK_THAT(no_u.message(), Catch::Contains("u is null"));
    auto const no_y = moe::moe_layer_forward<C, float>(
        MatrixView<float, kDyn, H>(nullptr, 2), MatrixView<float const, kDyn, H>(u.data(), 2),
        moe.weights, ws);
    CHECK_THAT(no_y.message(), Catch::Contains("y is null"));
  }
  SECTION("negative and overflowing token counts") {
    float dummy = 0;
    auto const neg = moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(&dummy, -1),
                                                      MatrixView<float const, kDyn, H>(&dummy, -1),
                                                      moe.weights, ws);
    CHECK_THAT(neg.message(), Catch::Contains("negative extent"));
    std::int64_t const huge = std::numeric_limits<std::int32_t>::max() / 2 + 1;  // K = 2
    auto const over = moe::moe_layer_forward<C, float>(
        MatrixView<float, kDyn, H>(&dummy, huge), MatrixView<float const, kDyn, H>(&dummy, huge),
        moe.weights, ws);
    CHECK_THAT(over.message(), Catch::Contains("overflow int32"));
  }
  SECTION("a failed call leaves no stale routing in the workspace") {
    auto u = deepmoe::util::random_tokens<float>(1, 4, H);
    static_cast<void>(run_layer<C>(moe.weights, u, ws));
    CHECK(ws.topk_ids().extent(0) == 4);
    u[H + 3] = std::nanf("");
    std::vector<float> y(u.size());
    REQUIRE_FALSE(moe::moe_layer_forward<C, float>(MatrixView<float, kDyn, H>(y.data(), 4),
                                                   MatrixView<float const, kDyn, H>(u.data(), 4),
                                                   moe.weights, ws)
                      .ok());
    CHECK(ws.topk_ids().extent(0) == 0);
    for (int e = 0; e < C::n_routed_experts; ++e)
      CHECK(ws.tokens_per_expert()(e) == 0);
  }
  SECTION("all tokens on one expert pair, via a mask") {
    std::int64_t const T = 50;
    auto u = deepmoe::util::random_tokens<float>(9, T, H);
    std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 0, 0};  // only group 3 is eligible
    auto const y = run_layer<C>(moe.weights, u, ws, moe::ExpertMask<C>(mask.data(), 1));
    CHECK(ws.tokens_per_expert()(6) == T);
    CHECK(ws.tokens_per_expert()(7) == T);
    std::vector<reference::TokenRoute> routes;
    auto const ref = reference::moe_layer<C, float>(
        routes, MatrixView<float const, kDyn, H>(u.data(), T), moe.weights, mask);
    check_close(y, ref, routes, H);
  }
}
