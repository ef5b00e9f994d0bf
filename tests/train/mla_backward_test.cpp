// SPDX-License-Identifier: Apache-2.0
/// @file mla_backward_test.cpp
/// @brief MLA's backward against central finite differences of the double reference
/// (tests/reference/mla_reference.hpp): the q_proj path with plain RoPE, and the q_lora path
/// with YaRN (mscale = mscale_all_dim, so the rotary attention factor is 1), at positions
/// starting at 3. L = Σ dy ⊙ out; fp32 storage, step 2^-9, bound 2e-3 · max|grad| (as for
/// the MoE layer's test).
#include <deepmoe/train/mla_backward.hpp>

#include "reference/mla_reference.hpp"
#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>
#include <vector>

namespace {

using namespace deepmoe;

using TinyAttention = test::TinyGradCheck;  // q_proj path, plain RoPE

struct TinyAttentionLora : TinyAttention {
  static constexpr int q_lora_rank = 5;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 4.0,
                                                    .original_max_position_embeddings = 16,
                                                    .beta_fast = 32.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 1.0,
                                                    .mscale_all_dim = 1.0};
};

template <class C>
void check_mla_backward(std::uint64_t seed) {
  constexpr std::int64_t H = C::hidden_size, T = 5;
  reference::RandomMla<C> m(seed);
  util::Rng rng(seed + 7);
  std::vector<float> x(T * H), dy(T * H);
  for (auto& v : x)
    v = rng.unit();
  for (auto& v : dy)
    v = rng.unit();
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 3);
  auto loss = [&] {
    auto const out = reference::reference_mla<C>(m, x, pos);
    double L = 0;
    for (std::size_t i = 0; i < out.size(); ++i)
      L += dy[i] * out[i];
    return L;
  };
  std::vector<float> dx(T * H);
  train::MlaGrads g = train::zero_mla_grads<C>();
  Status const st = train::mla_attention_backward<C>(
      MatrixView<float>(dx.data(), T, H), g, MatrixView<float const>(dy.data(), T, H),
      MatrixView<float const>(x.data(), T, H), VectorView<std::int64_t const>(pos.data(), T), m.w);
  INFO(st.to_string());
  REQUIRE(st.ok());
  float const h = 0x1p-9f;
  auto compare = [&](std::vector<float>& values, std::vector<float> const& grads,
                     char const* what) {
    REQUIRE(values.size() == grads.size());
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      float const keep = values[i];
      values[i] = keep + h;
      double const up = loss();
      values[i] = keep - h;
      double const down = loss();
      values[i] = keep;
      double const want = (up - down) / (2.0 * h);
      scale = std::max(scale, std::fabs(want));
      err = std::max(err, std::fabs(want - grads[i]));
    }
    INFO(what << ": max error " << err << " of max |grad| " << scale);
    CHECK(scale > 1e-3);
    CHECK(err <= 2e-3 * scale);
  };
  compare(x, dx, "input");
  if constexpr (C::q_lora_rank > 0) {
    compare(m.lin[0].weight, g.q_a_proj, "q_a_proj");
    compare(m.qn, g.q_a_layernorm, "q_a_layernorm");
    compare(m.lin[1].weight, g.q_b_proj, "q_b_proj");
  } else {
    compare(m.lin[1].weight, g.q_proj, "q_proj");
  }
  compare(m.lin[2].weight, g.kv_a_proj_with_mqa, "kv_a_proj_with_mqa");
  compare(m.kvn, g.kv_a_layernorm, "kv_a_layernorm");
  compare(m.lin[3].weight, g.kv_b_proj, "kv_b_proj");
  compare(m.lin[4].weight, g.o_proj, "o_proj");
}

}  // namespace

TEST_CASE("train::mla_attention_backward matches finite differences (q_proj, RoPE)", "[train]") {
  check_mla_backward<TinyAttention>(5);
}

TEST_CASE("train::mla_attention_backward matches finite differences (q_lora, YaRN)", "[train]") {
  check_mla_backward<TinyAttentionLora>(6);
}
