// SPDX-License-Identifier: Apache-2.0
/// @file router_configs.hpp
/// @brief RouterConfig<...>: TinyMoe with its routing fields replaced, for routing tests.
#pragma once

#include <deepmoe/configs/tiny_moe.hpp>

namespace deepmoe::testing {

/// TinyMoe with E experts, top-K, G groups keeping TG, and the given routing semantics.
template <int E, int K, int G = 1, int TG = 1, bool Norm = true, double Rsf = 1.0,
          config::ScoringFunc Score = config::ScoringFunc::kSigmoid,
          config::TopkMethod Method = config::TopkMethod::kNoauxTc>
struct RouterConfig : configs::TinyMoe {
  static constexpr int n_routed_experts = E;
  static constexpr int num_experts_per_tok = K;
  static constexpr int n_group = G;
  static constexpr int topk_group = TG;
  static constexpr bool norm_topk_prob = Norm;
  static constexpr double routed_scaling_factor = Rsf;
  static constexpr config::ScoringFunc scoring_func = Score;
  static constexpr config::TopkMethod topk_method = Method;
};

}  // namespace deepmoe::testing
