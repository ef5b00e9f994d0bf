// SPDX-License-Identifier: Apache-2.0
/// @file tiny_moe.hpp
/// @brief A tiny DeepSeek-V3-style model for tests, as in tiny_moe.json.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// A tiny model with every DeepSeek-V3 routing feature: sigmoid scores, correction bias,
/// 4 groups of 2 experts with 2 kept (top-2-sum group scores), top-2, renormalized, scaled by
/// 2.5, one shared expert. moe_intermediate_size 96 is deliberately not a multiple of 128, so
/// that fp8 variants (config::WithPrecision) have partial scale blocks. fp32 throughout.
struct TinyMoe {
  static constexpr int vocab_size = 256;
  static constexpr int hidden_size = 256;          // H
  static constexpr int intermediate_size = 512;    // I, dense FFN
  static constexpr int num_hidden_layers = 2;      // L
  static constexpr int first_k_dense_replace = 1;  // K
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-6;
  static constexpr int max_position_embeddings = 512;  // [tokens]
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 1;
  static constexpr int bos_token_id = 0;
  static constexpr int eos_token_id = 1;

  static constexpr int moe_intermediate_size = 96;  // M
  static constexpr int n_routed_experts = 8;        // E
  static constexpr int n_shared_experts = 1;        // S
  static constexpr int num_experts_per_tok = 2;     // k
  static constexpr int n_group = 4;                 // G
  static constexpr int topk_group = 2;              // TG
  static constexpr double routed_scaling_factor = 2.5;
  static constexpr bool norm_topk_prob = true;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSigmoid;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kNoauxTc;

  static constexpr int num_attention_heads = 4;  // nh
  static constexpr int num_key_value_heads = 4;  // ignored by MLA
  static constexpr int q_lora_rank = 32;         // rq
  static constexpr int kv_lora_rank = 32;        // rkv
  static constexpr int qk_nope_head_dim = 16;    // dn
  static constexpr int qk_rope_head_dim = 8;     // dr
  static constexpr int v_head_dim = 16;          // dv
  static constexpr double rope_theta = 10000.0;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 4.0,
                                                    .original_max_position_embeddings = 128,
                                                    .beta_fast = 32.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 1.0,
                                                    .mscale_all_dim = 1.0};

  static constexpr int weight_block_size = 0;
  using weight_t = float;
  using act_t = float;
  using accum_t = float;
};

}  // namespace configs
DEEPMOE_NAMESPACE_END
