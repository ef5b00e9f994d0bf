// SPDX-License-Identifier: Apache-2.0
/// @file deepseek_v2_lite.hpp
/// @brief DeepSeek-V2-Lite (15.7B), as in deepseek_v2_lite.json.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// DeepSeek-V2-Lite. Values of configs/deepseek_v2_lite.json (the Hugging Face config.json of
/// deepseek-ai/DeepSeek-V2-Lite; deepseek-ai/DeepSeek-V3 inference/configs/config_16B.json has
/// the same dims and mscale 0.707). Softmax router, plain top-k (topk_method "greedy"), weights
/// not renormalized. Precision of the released checkpoint: BF16.
struct DeepSeekV2Lite {
  static constexpr int vocab_size = 102400;
  static constexpr int hidden_size = 2048;         // H
  static constexpr int intermediate_size = 10944;  // I, dense FFN
  static constexpr int num_hidden_layers = 27;     // L
  static constexpr int first_k_dense_replace = 1;  // K
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-6;
  static constexpr int max_position_embeddings = 163840;  // [tokens]
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 0;
  static constexpr int bos_token_id = 100000;
  static constexpr int eos_token_id = 100001;

  static constexpr int moe_intermediate_size = 1408;  // M
  static constexpr int n_routed_experts = 64;         // E
  static constexpr int n_shared_experts = 2;          // S
  static constexpr int num_experts_per_tok = 6;       // k
  static constexpr int n_group = 1;                   // G
  static constexpr int topk_group = 1;                // TG
  static constexpr double routed_scaling_factor = 1.0;
  static constexpr bool norm_topk_prob = false;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSoftmax;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kGreedy;

  static constexpr int num_attention_heads = 16;  // nh
  static constexpr int num_key_value_heads = 16;  // ignored by MLA
  static constexpr int q_lora_rank = 0;           // rq (null: q_proj)
  static constexpr int kv_lora_rank = 512;        // rkv
  static constexpr int qk_nope_head_dim = 128;    // dn
  static constexpr int qk_rope_head_dim = 64;     // dr
  static constexpr int v_head_dim = 128;          // dv
  static constexpr double rope_theta = 10000.0;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 40.0,
                                                    .original_max_position_embeddings = 4096,
                                                    .beta_fast = 32.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 0.707,
                                                    .mscale_all_dim = 0.707};

  static constexpr int weight_block_size = 0;  // BF16 checkpoint
  using weight_t = bfloat16;
  using act_t = bfloat16;
  using accum_t = float;
};

}  // namespace configs
DEEPMOE_NAMESPACE_END
