// SPDX-License-Identifier: Apache-2.0
/// @file kv_cache_test.cpp
/// @brief The latent KV cache: incremental decode, chunked prefill and mixed batches give the
/// logits of one full forward over each sequence, on every transformers fixture; rewinding;
/// MTP with its own cache layer; capacity and slot errors.
///
/// Tolerances: with a float cache the cached [c | k_pe] rows are the values a full forward
/// computes, and every kernel computes a row the same way whatever else is in the call, so the
/// logits are equal bitwise. With a bfloat16 cache the latents are rounded once to bf16
/// (relative 2^-9): the logits move by a few 1e-3 of their range (measured 3.4e-3 and 3.6e-3
/// on the two bf16 fixtures), so the bound is 1e-2 · max|logits|.
#include <deepmoe/model/model.hpp>

#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace deepmoe;

fs::path fixture(std::string const& name) {
  return fs::path(DEEPMOE_FIXTURES_DIR) / "model" / name;
}

std::vector<std::vector<std::int32_t>> fixture_tokens(std::string const& name) {
  std::ifstream in(fixture(name) / "reference.json");
  nlohmann::json const j = nlohmann::json::parse(in);
  std::vector<std::vector<std::int32_t>> out;
  for (auto const& s : j.at("sequences"))
    out.push_back(s.at("tokens").get<std::vector<std::int32_t>>());
  return out;
}

/// A piece of a sequence to run: tokens [begin, end) of `tokens`, in cache slot `slot`.
struct Piece {
  std::vector<std::int32_t> const* tokens;
  std::int64_t begin, end;
  int slot;
};

/// Logits [Σ (end − begin), V] of the pieces run as one batch (with `cache`, or without).
template <class M, class Cache>
std::vector<float> step(M& m, Cache* cache, std::vector<Piece> const& pieces) {
  std::vector<std::vector<std::int64_t>> pos;
  std::vector<model::Sequence> batch;
  std::int64_t n = 0;
  for (auto const& p : pieces) {
    pos.emplace_back(static_cast<std::size_t>(p.end - p.begin));
    std::iota(pos.back().begin(), pos.back().end(), p.begin);
    n += p.end - p.begin;
  }
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    auto const& p = pieces[i];
    batch.push_back({VectorView<std::int32_t const>(p.tokens->data() + p.begin, p.end - p.begin),
                     VectorView<std::int64_t const>(pos[i].data(), p.end - p.begin), p.slot});
  }
  std::int64_t const V = m.config().vocab_size;
  std::vector<float> out(static_cast<std::size_t>(n * V));
  Status const st =
      cache != nullptr
          ? m.forward(batch, *cache, MatrixView<float>(out.data(), n, V), model::LogitsRows::kAll)
          : m.forward(batch, MatrixView<float>(out.data(), n, V), model::LogitsRows::kAll);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return out;
}

/// Full-forward logits of one whole sequence.
template <class M>
std::vector<float> full(M& m, std::vector<std::int32_t> const& t) {
  return step<M, model::KvCache<typename M::config_type, float>>(
      m, nullptr, {{&t, 0, static_cast<std::int64_t>(t.size()), -1}});
}

bool same_bits(float const* a, float const* b, std::size_t n) {
  return std::equal(a, a + n, b, [](float x, float y) {
    return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
  });
}

/// Max |a − b| / max |b| over n values.
double rel(float const* a, float const* b, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double{a[i]} - b[i]));
    den = std::max(den, std::fabs(double{b[i]}));
  }
  return num / den;
}

/// Runs every fixture sequence (1) token by token after a 2-token prefill, (2) in chunks of 3,
/// (3) as a mixed batch — sequence 0 prefilled while sequence 1 decodes — and compares each
/// position's logits with the full forward's.
template <class C, class KV>
void check_incremental(std::string const& name) {
  model::Model<C> m;
  REQUIRE(model::Model<C>::load(fixture(name).string(), m).ok());
  auto const seqs = fixture_tokens(name);
  std::int64_t const V = m.config().vocab_size;
  model::KvCache<C, KV> cache;
  REQUIRE(model::KvCache<C, KV>::create(m.config(), 3, 16, cache).ok());
  constexpr bool exact = std::is_same_v<KV, float>;
  double worst = 0;
  auto compare = [&](std::vector<float> const& got, std::vector<float> const& want,
                     std::int64_t row, std::int64_t rows, std::int64_t at) {
    float const* g = got.data() + row * V;
    float const* w = want.data() + at * V;
    auto const n = static_cast<std::size_t>(rows * V);
    if constexpr (exact) {
      CHECK(same_bits(g, w, n));
    } else {
      double const e = rel(g, w, n);
      worst = std::max(worst, e);
      CHECK(e <= 1e-2);
    }
  };
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    auto const& t = seqs[s];
    auto const T = static_cast<std::int64_t>(t.size());
    auto const ref = full(m, t);
    CAPTURE(name, s);
    // (1) prefill 2, then decode one token at a time
    cache.release(0);
    compare(step(m, &cache, {{&t, 0, 2, 0}}), ref, 0, 2, 0);
    for (std::int64_t i = 2; i < T; ++i) {
      compare(step(m, &cache, {{&t, i, i + 1, 0}}), ref, 0, 1, i);
    }
    CHECK(cache.length(0) == T);
    // (2) chunks of 3
    cache.release(1);
    for (std::int64_t i = 0; i < T; i += 3) {
      std::int64_t const e = std::min(T, i + 3);
      compare(step(m, &cache, {{&t, i, e, 1}}), ref, 0, e - i, i);
    }
    // (3) rewind slot 1 to 1 token and redo the rest in one verification-style step
    compare(step(m, &cache, {{&t, 1, T, 1}}), ref, 0, T - 1, 1);
  }
  // (3) a mixed batch: sequence 0's prompt while sequence 1 decodes, sequence 2 alone after
  auto const& a = seqs[0];
  auto const& b = seqs[1];
  auto const ra = full(m, a), rb = full(m, b);
  cache.release(0);
  cache.release(1);
  compare(step(m, &cache, {{&b, 0, 2, 1}}), rb, 0, 2, 0);
  auto const mixed = step(m, &cache, {{&a, 0, 5, 0}, {&b, 2, 3, 1}});
  compare(mixed, ra, 0, 5, 0);
  compare(mixed, rb, 5, 1, 2);
  auto const next = step(m, &cache, {{&b, 3, 4, 1}, {&a, 5, 7, 0}});
  compare(next, rb, 0, 1, 3);
  compare(next, ra, 1, 2, 5);
  if (!exact) {
    std::printf("%-10s bf16 cache: max relative difference from the full forward %.1e\n",
                name.c_str(), worst);
  }
}

}  // namespace

TEST_CASE(
    "kv_cache: incremental decode, chunked prefill and mixed batches equal the full "
    "forward (float cache: bitwise)",
    "[kv_cache]") {
  check_incremental<test::FixtureV3, float>("v3");
  check_incremental<test::FixtureV2Lite, float>("v2_lite");
  check_incremental<test::FixtureMoonlight, float>("moonlight");
  check_incremental<test::FixtureKimiK2, float>("kimi_k2");
  check_incremental<test::FixtureV3Fp8, float>("v3_fp8");
  check_incremental<config::Dynamic<>, float>("v3");
}

TEST_CASE("kv_cache: a bfloat16 cache stays within its stated tolerance", "[kv_cache]") {
  check_incremental<test::FixtureKimiK2, bfloat16>("kimi_k2");
  check_incremental<test::FixtureV3Fp8, bfloat16>("v3_fp8");
}

TEST_CASE("kv_cache: both MLA forms read the cache; MTP keeps its own layer", "[kv_cache]") {
  using C = test::FixtureV3;
  model::Model<C> m;
  REQUIRE(model::Model<C>::load(fixture("v3").string(), m).ok());
  m.set_mla_form(MlaForm::kAbsorbed);
  auto const t = fixture_tokens("v3")[0];
  auto const T = static_cast<std::int64_t>(t.size());
  constexpr std::int64_t V = C::vocab_size, H = C::hidden_size;
  model::KvCache<C, float> cache;
  REQUIRE(model::KvCache<C, float>::create(m.config(), 1, 8, cache).ok());
  CHECK(cache.layers() == 3);  // 2 layers + the MTP module
  CHECK(cache.bytes_per_token() == 3 * (32 + 16) * 4);
  auto const ref = full(m, t);
  // prefill 4 then decode: absorbed form, bitwise equal to its own full forward
  auto const p = step(m, &cache, {{&t, 0, 4, 0}});
  CHECK(same_bits(p.data(), ref.data(), static_cast<std::size_t>(4 * V)));
  for (std::int64_t i = 4; i < T; ++i) {
    auto const d = step(m, &cache, {{&t, i, i + 1, 0}});
    CHECK(same_bits(d.data(), ref.data() + i * V, static_cast<std::size_t>(V)));
  }

  // MTP drafts, whole sequence without a cache vs in two steps with the cache's MTP layer
  std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<float> hidden(static_cast<std::size_t>(T * H)),
      logits(static_cast<std::size_t>(T * V));
  model::Sequence const whole{VectorView<std::int32_t const>(t.data(), T),
                              VectorView<std::int64_t const>(pos.data(), T), 0};
  REQUIRE(m.forward(std::span(&whole, 1), MatrixView<float>(logits.data(), T, V),
                    model::LogitsRows::kAll, MatrixView<float>(hidden.data(), T, H))
              .ok());
  std::vector<std::int32_t> next(t.begin() + 1, t.end());
  next.push_back(7);
  model::Sequence const nx{VectorView<std::int32_t const>(next.data(), T),
                           VectorView<std::int64_t const>(pos.data(), T), 0};
  std::vector<float> d_full(static_cast<std::size_t>(T * V)), d_inc(d_full.size());
  REQUIRE(m.mtp_forward(std::span(&nx, 1), MatrixView<float const>(hidden.data(), T, H),
                        MatrixView<float>(d_full.data(), T, V))
              .ok());
  for (std::int64_t a : {std::int64_t{0}, std::int64_t{5}}) {
    std::int64_t const b = a == 0 ? 5 : T;
    model::Sequence const part{VectorView<std::int32_t const>(next.data() + a, b - a),
                               VectorView<std::int64_t const>(pos.data() + a, b - a), 0};
    REQUIRE(m.mtp_forward(std::span(&part, 1), cache,
                          MatrixView<float const>(hidden.data() + a * H, b - a, H),
                          MatrixView<float>(d_inc.data() + a * V, b - a, V))
                .ok());
  }
  CHECK(same_bits(d_inc.data(), d_full.data(), d_full.size()));
  CHECK(cache.length(0) == T);  // the main forward owns the length
}

TEST_CASE("kv_cache: full caches, bad slots and gaps are refused before anything changes",
          "[kv_cache][errors]") {
  using C = test::FixtureMoonlight;
  model::Model<C> m;
  REQUIRE(model::Model<C>::load(fixture("moonlight").string(), m).ok());
  model::KvCache<C, float> cache;
  REQUIRE(model::KvCache<C, float>::create(m.config(), 2, 4, cache).ok());
  CHECK(cache.bytes() == 2 * 4 * 2 * (32 + 16) * 4);
  std::vector<std::int32_t> t{1, 2, 3, 4, 5, 6};
  std::vector<std::int64_t> pos{0, 1, 2, 3, 4, 5};
  std::vector<float> out(6 * 256);
  auto run = [&](std::int64_t begin, std::int64_t end, int slot) {
    model::Sequence const q{VectorView<std::int32_t const>(t.data() + begin, end - begin),
                            VectorView<std::int64_t const>(pos.data() + begin, end - begin), slot};
    return m.forward(std::span(&q, 1), cache, MatrixView<float>(out.data(), 1, 256));
  };
  Status st = run(0, 5, 0);
  CHECK(st.code() == StatusCode::kOutOfRange);
  CHECK_THAT(st.message(),
             Catch::Contains("positions up to 4 exceed the KV cache's capacity of 4"));
  CHECK(cache.length(0) == 0);
  REQUIRE(run(0, 3, 0).ok());
  CHECK(cache.length(0) == 3);
  st = run(3, 5, 0);  // one past the capacity
  CHECK(st.code() == StatusCode::kOutOfRange);
  CHECK(cache.length(0) == 3);
  st = run(4, 4 + 1, 1);
  CHECK_THAT(st.message(), Catch::Contains("starts at position 4 but slot 1 holds 0 tokens"));
  st = run(0, 1, 2);
  CHECK_THAT(st.message(), Catch::Contains("slot 2, outside [0, 2)"));
  model::Sequence const twice[2] = {{VectorView<std::int32_t const>(t.data(), 1),
                                     VectorView<std::int64_t const>(pos.data(), 1), 1},
                                    {VectorView<std::int32_t const>(t.data(), 1),
                                     VectorView<std::int64_t const>(pos.data(), 1), 1}};
  st = m.forward(twice, cache, MatrixView<float>(out.data(), 2, 256));
  CHECK_THAT(st.message(), Catch::Contains("uses KV cache slot 1, which another sequence"));
  model::KvCache<C, float> none;
  CHECK(model::KvCache<C, float>::create(m.config(), 0, 4, none).code() ==
        StatusCode::kInvalidArgument);
  // no MTP layer in this cache: mtp_forward refuses (the model has none either)
  std::vector<float> h(64);
  model::Sequence const q{VectorView<std::int32_t const>(t.data(), 1),
                          VectorView<std::int64_t const>(pos.data(), 1), 0};
  CHECK(m.mtp_forward(std::span(&q, 1), cache, MatrixView<float const>(h.data(), 1, 64),
                      MatrixView<float>(out.data(), 1, 256))
            .code() == StatusCode::kNotSupported);
}
