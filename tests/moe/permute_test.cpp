// SPDX-License-Identifier: Apache-2.0
// The dispatch plan: counts, offsets, the permutation and its inverse, on ordinary and edge
// cases (T = 0, T < E, empty experts, all tokens on one expert), and bad ids.
#include <catch2/catch.hpp>

#include <deepmoe/moe/permute.hpp>

#include <deepmoe/util/random_moe.hpp>
#include "support/router_configs.hpp"

#include <vector>

using namespace deepmoe;
using C = deepmoe::testing::RouterConfig<8, 2, 4, 2>;

namespace {

struct PlanStorage {
  std::vector<std::int32_t> counts = std::vector<std::int32_t>(8),
                            offsets = std::vector<std::int32_t>(9);
  std::vector<std::int32_t> p2e, e2p;
  moe::DispatchPlan<C> plan;
  explicit PlanStorage(std::int64_t T)
      : p2e(static_cast<std::size_t>(2 * T)), e2p(static_cast<std::size_t>(2 * T)) {
    plan = {VectorView<std::int32_t, 8>(counts.data()), VectorView<std::int32_t, 9>(offsets.data()),
            VectorView<std::int32_t>(p2e.data(), 2 * T),
            VectorView<std::int32_t>(e2p.data(), 2 * T)};
  }
};

Status build(PlanStorage& s, std::vector<std::int32_t> const& ids) {
  return moe::build_dispatch_plan<C>(
      s.plan, MatrixView<std::int32_t const, kDyn, 2>(ids.data(),
                                                      static_cast<std::int64_t>(ids.size() / 2)));
}

/// The invariants of a plan for `ids`: counts, offsets, inverse permutations, expert order,
/// ascending token order within an expert.
void check_plan(PlanStorage const& s, std::vector<std::int32_t> const& ids) {
  std::int64_t const R = static_cast<std::int64_t>(ids.size());
  CHECK(s.offsets[0] == 0);
  CHECK(s.offsets[8] == R);
  for (int e = 0; e < 8; ++e) {
    CHECK(s.counts[e] == std::count(ids.begin(), ids.end(), e));
    CHECK(s.offsets[e + 1] - s.offsets[e] == s.counts[e]);
    for (std::int32_t r = s.offsets[e]; r < s.offsets[e + 1]; ++r) {
      CHECK(ids[s.p2e[r]] == e);
      if (r > s.offsets[e])
        CHECK(s.p2e[r] > s.p2e[r - 1]);
    }
  }
  for (std::int64_t i = 0; i < R; ++i)
    CHECK(s.p2e[s.e2p[i]] == i);
}

}  // namespace

TEST_CASE("moe::build_dispatch_plan: ordinary and edge cases", "[moe][permute][cpu]") {
  SECTION("a small batch") {
    std::vector<std::int32_t> const ids{3, 1, 1, 0, 3, 7, 0, 1};  // T = 4, K = 2
    PlanStorage s(4);
    REQUIRE(build(s, ids).ok());
    check_plan(s, ids);
    CHECK(s.p2e == std::vector<std::int32_t>{3, 6, 1, 2, 7, 0, 4, 5});
  }
  SECTION("T = 0") {
    PlanStorage s(0);
    REQUIRE(build(s, {}).ok());
    CHECK(s.counts == std::vector<std::int32_t>(8, 0));
    CHECK(s.offsets == std::vector<std::int32_t>(9, 0));
  }
  SECTION("T = 1 < E: most experts empty") {
    std::vector<std::int32_t> const ids{6, 2};
    PlanStorage s(1);
    REQUIRE(build(s, ids).ok());
    check_plan(s, ids);
  }
  SECTION("every token on the same two experts") {
    std::vector<std::int32_t> ids;
    for (int t = 0; t < 100; ++t)
      ids.insert(ids.end(), {5, 4});
    PlanStorage s(100);
    REQUIRE(build(s, ids).ok());
    check_plan(s, ids);
    CHECK(s.counts[5] == 100);
    CHECK(s.counts[0] == 0);
  }
  SECTION("random ids") {
    deepmoe::util::Rng rng(7);
    std::vector<std::int32_t> ids;
    for (int t = 0; t < 333; ++t) {
      auto a = static_cast<std::int32_t>(rng.next() % 8),
           b = static_cast<std::int32_t>(rng.next() % 8);
      ids.insert(ids.end(), {a, a == b ? (b + 1) % 8 : b});
    }
    PlanStorage s(333);
    REQUIRE(build(s, ids).ok());
    check_plan(s, ids);
  }
}

TEST_CASE("moe::build_dispatch_plan: bad ids and sizes are clear errors", "[moe][permute][cpu]") {
  PlanStorage s(2);
  auto const bad = build(s, {0, 1, 8, 2});
  CHECK_FALSE(bad.ok());
  CHECK_THAT(bad.message(), Catch::Contains("topk_ids[1, 0] = 8"));
  auto const neg = build(s, {0, -1, 3, 2});
  CHECK_THAT(neg.message(), Catch::Contains("topk_ids[0, 1] = -1"));
  auto const size = build(s, {0, 1});
  CHECK_THAT(size.message(), Catch::Contains("expected T·K = 2"));
}
