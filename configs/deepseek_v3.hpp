// SPDX-License-Identifier: Apache-2.0
/// @file deepseek_v3.hpp
/// @brief DeepSeek-V3 (671B; DeepSeek-R1 is architecturally identical), as in deepseek_v3.json.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// DeepSeek-V3 main model. Values of configs/deepseek_v3.json (the Hugging Face config.json,
/// transformers 4.46.3), which agree with deepseek-ai/DeepSeek-V3 inference/configs/
/// config_671B.json. Precision of the released checkpoint: FP8 e4m3 weights with 128×128
/// scale blocks, BF16 activations.
struct DeepSeekV3 {
  static constexpr int vocab_size = 129280;
  static constexpr int hidden_size = 7168;         // H
  static constexpr int intermediate_size = 18432;  // I, dense FFN
  static constexpr int num_hidden_layers = 61;     // L
  static constexpr int first_k_dense_replace = 3;  // K
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-6;
  static constexpr int max_position_embeddings = 163840;  // [tokens]
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 1;
  static constexpr int bos_token_id = 0;
  static constexpr int eos_token_id = 1;

  static constexpr int moe_intermediate_size = 2048;  // M
  static constexpr int n_routed_experts = 256;        // E
  static constexpr int n_shared_experts = 1;          // S
  static constexpr int num_experts_per_tok = 8;       // k
  static constexpr int n_group = 8;                   // G
  static constexpr int topk_group = 4;                // TG
  static constexpr double routed_scaling_factor = 2.5;
  static constexpr bool norm_topk_prob = true;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSigmoid;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kNoauxTc;

  static constexpr int num_attention_heads = 128;  // nh
  static constexpr int num_key_value_heads = 128;  // ignored by MLA
  static constexpr int q_lora_rank = 1536;         // rq
  static constexpr int kv_lora_rank = 512;         // rkv
  static constexpr int qk_nope_head_dim = 128;     // dn
  static constexpr int qk_rope_head_dim = 64;      // dr
  static constexpr int v_head_dim = 128;           // dv
  static constexpr double rope_theta = 10000.0;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 40.0,
                                                    .original_max_position_embeddings = 4096,
                                                    .beta_fast = 32.0,
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
