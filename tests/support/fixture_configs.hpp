// SPDX-License-Identifier: Apache-2.0
/// @file fixture_configs.hpp
/// @brief The compile-time configs of the reference checkpoints in tests/fixtures/model/, made by
/// scripts/make_fixtures.py with Hugging Face transformers (docs/testing.md). Each matches its
/// fixture's config.json (checked by the tests).
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

namespace deepmoe::test {

/// Sizes every fixture shares: V 256, H 64, I 160, L 2 (layer 0 dense), E 8, k 2, M 16,
/// nh 4, dn 32, dr 16, dv 32, rkv 32.
struct FixtureBase {
  static constexpr int vocab_size = 256;
  static constexpr int hidden_size = 64;
  static constexpr int intermediate_size = 160;
  static constexpr int num_hidden_layers = 2;
  static constexpr int first_k_dense_replace = 1;
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-6;
  static constexpr int max_position_embeddings = 4096;
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 0;
  static constexpr int bos_token_id = 0;
  static constexpr int eos_token_id = 1;
  static constexpr int moe_intermediate_size = 16;
  static constexpr int n_routed_experts = 8;
  static constexpr int n_shared_experts = 1;
  static constexpr int num_experts_per_tok = 2;
  static constexpr int n_group = 1;
  static constexpr int topk_group = 1;
  static constexpr double routed_scaling_factor = 2.5;
  static constexpr bool norm_topk_prob = true;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSigmoid;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kNoauxTc;
  static constexpr int num_attention_heads = 4;
  static constexpr int num_key_value_heads = 4;
  static constexpr int q_lora_rank = 0;
  static constexpr int kv_lora_rank = 32;
  static constexpr int qk_nope_head_dim = 32;
  static constexpr int qk_rope_head_dim = 16;
  static constexpr int v_head_dim = 32;
  static constexpr double rope_theta = 10000.0;
  static constexpr config::RopeScaling rope_scaling{};
  static constexpr int weight_block_size = 0;
  using weight_t = float;
  using act_t = float;
  using accum_t = float;
};

/// Case 1, DeepSeek-V3 style: sigmoid + noaux_tc with 4 groups (2 kept), q_lora_rank 48, YaRN
/// (factor 40, mscale_all_dim 1), one MTP module.
struct FixtureV3 : FixtureBase {
  static constexpr int num_nextn_predict_layers = 1;
  static constexpr int n_group = 4;
  static constexpr int topk_group = 2;
  static constexpr int q_lora_rank = 48;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 40.0,
                                                    .original_max_position_embeddings = 128,
                                                    .beta_fast = 32.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 1.0,
                                                    .mscale_all_dim = 1.0};
};

/// Case 2, DeepSeek-V2-Lite style: softmax + greedy, no q_lora_rank, YaRN mscale 0.707,
/// norm_topk_prob false, two shared experts.
struct FixtureV2Lite : FixtureBase {
  static constexpr int n_shared_experts = 2;
  static constexpr double routed_scaling_factor = 1.0;
  static constexpr bool norm_topk_prob = false;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSoftmax;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kGreedy;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 40.0,
                                                    .original_max_position_embeddings = 128,
                                                    .beta_fast = 32.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 0.707,
                                                    .mscale_all_dim = 0.707};
};

/// Case 3, Moonlight style: no rope scaling, rms_norm_eps 1e-5, rope_theta 50000.
struct FixtureMoonlight : FixtureBase {
  static constexpr double rms_norm_eps = 1e-5;
  static constexpr double rope_theta = 50000.0;
};

/// Case 4, Kimi-K2 style: YaRN with beta_fast = beta_slow = 1, 8 heads, q_lora_rank 48, BF16
/// weights.
struct FixtureKimiK2 : FixtureBase {
  static constexpr int q_lora_rank = 48;
  static constexpr double routed_scaling_factor = 2.827;
  static constexpr int num_attention_heads = 8;
  static constexpr int num_key_value_heads = 8;
  static constexpr config::RopeScaling rope_scaling{.type = config::RopeScalingType::kYarn,
                                                    .factor = 32.0,
                                                    .original_max_position_embeddings = 128,
                                                    .beta_fast = 1.0,
                                                    .beta_slow = 1.0,
                                                    .mscale = 1.0,
                                                    .mscale_all_dim = 1.0};
  using weight_t = bfloat16;
  using act_t = bfloat16;
};

/// Case 5: case 1 in DeepSeek-V3's FP8 format (e4m3 weights, 128×128 block scales, BF16 rest).
struct FixtureV3Fp8 : FixtureV3 {
  static constexpr int weight_block_size = 128;
  using weight_t = float8_e4m3fn;
  using act_t = bfloat16;
};

/// A tiny fp32 config for gradient checks by finite differences (every size a few units):
/// H 8, one MoE layer of 4 experts of width 4 (top-2, sigmoid, noaux_tc, 2 groups / 1 kept,
/// 1 shared), MLA with 2 heads (dn 4, dr 4, dv 3, rkv 6, q_proj path), RoPE base 100.
struct TinyGradCheck : FixtureBase {
  static constexpr int vocab_size = 16;
  static constexpr int hidden_size = 8;
  static constexpr int intermediate_size = 12;
  static constexpr int num_hidden_layers = 1;
  static constexpr int first_k_dense_replace = 0;
  static constexpr int max_position_embeddings = 64;
  static constexpr int moe_intermediate_size = 4;
  static constexpr int n_routed_experts = 4;
  static constexpr int n_group = 2;
  static constexpr int topk_group = 1;
  static constexpr int num_attention_heads = 2;
  static constexpr int num_key_value_heads = 2;
  static constexpr int kv_lora_rank = 6;
  static constexpr int qk_nope_head_dim = 4;
  static constexpr int qk_rope_head_dim = 4;
  static constexpr int v_head_dim = 3;
  static constexpr double rope_theta = 100.0;
};

}  // namespace deepmoe::test
