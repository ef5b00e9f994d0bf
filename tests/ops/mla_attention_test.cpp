// SPDX-License-Identifier: Apache-2.0
// MLA against a double-precision reference written from the math, the absorbed form against the
// naive one, causality (a token ignores later tokens, bitwise), RoPE's relative-position
// property, and errors.
#include <catch2/catch.hpp>

#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/configs/tiny_v2_moe.hpp>
#include <deepmoe/ops/mla_attention.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "reference/mla_reference.hpp"

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

using namespace deepmoe;
using reference::RandomMla;
using reference::reference_mla;

namespace {

template <class C>
std::vector<float> run(RandomMla<C> const& m, std::vector<float> const& x,
                       std::vector<std::int64_t> const& pos, MlaForm form) {
  std::int64_t const T = static_cast<std::int64_t>(pos.size());
  std::vector<float> out(static_cast<std::size_t>(T * C::hidden_size));
  Status const s = mla_attention<C>(MatrixView<float, kDyn, C::hidden_size>(out.data(), T),
                                    MatrixView<float const, kDyn, C::hidden_size>(x.data(), T),
                                    VectorView<std::int64_t const>(pos.data(), T), m.w, form);
  REQUIRE(s.ok());
  return out;
}

using TinyFp8 = config::WithPrecision<configs::TinyMoe, float8_e4m3fn, float>;

}  // namespace

TEMPLATE_TEST_CASE("ops::mla_attention: naive and absorbed forms match the double reference",
                   "[ops][mla]", configs::TinyMoe, configs::TinyV2Moe, TinyFp8) {
  using C = TestType;
  RandomMla<C> const m(31);
  std::int64_t const T = 9;
  auto const x = util::random_tokens<float>(32, T, C::hidden_size);
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 3);  // a chunk that starts at position 3
  auto const ref = reference_mla(m, x, pos);
  double scale = 0;
  for (double v : ref)
    scale = std::max(scale, std::abs(v));
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    auto const y = run(m, x, pos, form);
    for (std::size_t i = 0; i < y.size(); ++i) {
      // fp32 sums of a few hundred unit-scale products: ~1e-6 relative; 1e-5 leaves margin
      REQUIRE(std::abs(y[i] - ref[i]) <= 1e-5 * scale);
    }
  }
}

TEST_CASE("ops::mla_attention: causal, and invariant to where the sequence starts", "[ops][mla]") {
  using C = configs::TinyMoe;
  constexpr std::int64_t H = C::hidden_size;
  RandomMla<C> const m(41);
  std::int64_t const T = 12;
  auto const x = util::random_tokens<float>(42, T, H);
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 0);
  auto const full = run(m, x, pos, MlaForm::kNaive);
  // the first 5 tokens alone: later tokens never influenced them, to the bit
  std::vector<float> const head(x.begin(), x.begin() + 5 * H);
  auto const first5 =
      run(m, head, std::vector<std::int64_t>(pos.begin(), pos.begin() + 5), MlaForm::kNaive);
  CHECK(std::memcmp(first5.data(), full.data(), first5.size() * sizeof(float)) == 0);
  // RoPE makes scores depend on relative positions only: shifting all by 1000 changes rounding
  std::vector<std::int64_t> shifted(pos);
  for (auto& p : shifted)
    p += 1000;
  auto const far = run(m, x, shifted, MlaForm::kNaive);
  double scale = 0;
  for (float v : full)
    scale = std::max(scale, double(std::abs(v)));
  for (std::size_t i = 0; i < far.size(); ++i)
    CHECK(std::abs(far[i] - full[i]) <= 1e-4 * scale);
}

TEST_CASE("ops::mla_attention: bad input is named", "[ops][mla]") {
  using C = configs::TinyMoe;
  constexpr std::int64_t H = C::hidden_size;
  RandomMla<C> m(51);
  auto const x = util::random_tokens<float>(52, 2, H);
  std::vector<float> out(2 * H);
  std::vector<std::int64_t> pos{0, -1};
  auto call = [&] {
    return mla_attention<C>(MatrixView<float, kDyn, H>(out.data(), 2),
                            MatrixView<float const, kDyn, H>(x.data(), 2),
                            VectorView<std::int64_t const>(pos.data(), 2), m.w);
  };
  CHECK_THAT(call().message(), Catch::Contains("positions[1] = -1"));
  pos[1] = 1;
  m.w.kv_b_proj.weight = MatrixView<float const>(m.w.kv_b_proj.weight.data(), 32, 128);
  CHECK_THAT(call().message(),
             Catch::Contains("self_attn.kv_b_proj.weight has shape [32, 128], expected [128, 32]"));
  m.w.kv_a_layernorm = VectorView<float const>(m.kvn.data(), 31);
  CHECK_THAT(call().message(), Catch::Contains("kv_a_layernorm.weight has 31 elements"));
}
