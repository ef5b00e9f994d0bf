// SPDX-License-Identifier: Apache-2.0
/// @file moonlight_16b_a3b.hpp
/// @brief Moonlight-16B-A3B (Moonshot AI), as in moonlight_16b_a3b.json.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// Moonlight-16B-A3B: the DeepSeek-V3 architecture at V2-Lite size. Values of
/// configs/moonlight_16b_a3b.json (its Hugging Face config.json, transformers 4.46.3; eos is the
/// base model's 163585 — one published copy has 163586, probably the Instruct model). No YaRN
/// (plain RoPE, base 50000), rms_norm_eps 1e-5, q_proj path, bias-corrected sigmoid router.
/// Precision of the released checkpoint: BF16.
struct Moonlight16BA3B {
  static constexpr int vocab_size = 163840;
  static constexpr int hidden_size = 2048;         // H
  static constexpr int intermediate_size = 11264;  // I, dense FFN
  static constexpr int num_hidden_layers = 27;     // L
  static constexpr int first_k_dense_replace = 1;  // K
  static constexpr int moe_layer_freq = 1;
  static constexpr double rms_norm_eps = 1e-5;
  static constexpr int max_position_embeddings = 8192;  // [tokens]
  static constexpr bool tie_word_embeddings = false;
  static constexpr int num_nextn_predict_layers = 0;
  static constexpr int bos_token_id = 163584;
  static constexpr int eos_token_id = 163585;

  static constexpr int moe_intermediate_size = 1408;  // M
  static constexpr int n_routed_experts = 64;         // E
  static constexpr int n_shared_experts = 2;          // S
  static constexpr int num_experts_per_tok = 6;       // k
  static constexpr int n_group = 1;                   // G
  static constexpr int topk_group = 1;                // TG
  static constexpr double routed_scaling_factor = 2.446;
  static constexpr bool norm_topk_prob = true;
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::kSigmoid;
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kNoauxTc;

  static constexpr int num_attention_heads = 16;  // nh
  static constexpr int num_key_value_heads = 16;  // ignored by MLA
  static constexpr int q_lora_rank = 0;           // rq (null: q_proj)
  static constexpr int kv_lora_rank = 512;        // rkv
  static constexpr int qk_nope_head_dim = 128;    // dn
  static constexpr int qk_rope_head_dim = 64;     // dr
  static constexpr int v_head_dim = 128;          // dv
  static constexpr double rope_theta = 50000.0;
  static constexpr config::RopeScaling rope_scaling{};  // none

  static constexpr int weight_block_size = 0;  // BF16 checkpoint
  using weight_t = bfloat16;
  using act_t = bfloat16;
  using accum_t = float;
};

}  // namespace configs
DEEPMOE_NAMESPACE_END
