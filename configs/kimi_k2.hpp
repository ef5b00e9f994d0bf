// SPDX-License-Identifier: Apache-2.0
/// @file kimi_k2.hpp
/// @brief Kimi-K2 (1T, Moonshot AI), as in kimi_k2.json.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// Kimi-K2 (the original release; K2-Instruct-0905 changes rope_scaling.factor to 64 and
/// max_position_embeddings to 262144). Values of configs/kimi_k2.json, assembled from the
/// sources listed in docs/model.md §1 (MoonshotAI/Kimi-K2 README, Megatron-Bridge KimiK2Provider, a
/// derived copy of the config): 384 experts, no group limit, 64 heads, one dense layer.
/// Precision of the released checkpoint: FP8 e4m3 with 128×128 blocks.
struct KimiK2 {
  static constexpr int vocab_size = 163840;
  static constexpr int hidden_size = 7168;         // H
  static constexpr int intermediate_size = 18432;  // I, dense FFN
  static constexpr int num_hidden_layers = 61;     // L
  static constexpr int first_k_dense_replace = 1;  // K
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-6;
  static constexpr int max_position_embeddings = 131072;  // [tokens]
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 0;
  static constexpr int bos_token_id = 163584;
  static constexpr int eos_token_id = 163585;

  static constexpr int moe_intermediate_size = 2048;  // M
  static constexpr int n_routed_experts = 384;        // E
  static constexpr int n_shared_experts = 1;          // S
  static constexpr int num_experts_per_tok = 8;       // k
  static constexpr int n_group = 1;                   // G
  static constexpr int topk_group = 1;                // TG
  static constexpr double routed_scaling_factor = 2.827;
  static constexpr bool norm_topk_prob = true;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSigmoid;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kNoauxTc;

  static constexpr int num_attention_heads = 64;  // nh
  static constexpr int num_key_value_heads = 64;  // ignored by MLA
  static constexpr int q_lora_rank = 1536;        // rq
  static constexpr int kv_lora_rank = 512;        // rkv
  static constexpr int qk_nope_head_dim = 128;    // dn
  static constexpr int qk_rope_head_dim = 64;     // dr
  static constexpr int v_head_dim = 128;          // dv
  static constexpr double rope_theta = 50000.0;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 32.0,
                                                    .original_max_position_embeddings = 4096,
                                                    .beta_fast = 1.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 1.0,
                                                    .mscale_all_dim = 1.0};

  static constexpr int weight_block_size = 128;  // quantization_config
  using weight_t = float8_e4m3fn;
  using act_t = bfloat16;
  using accum_t = float;
};

}  // namespace configs
DEEPMOE_NAMESPACE_END
