// SPDX-License-Identifier: Apache-2.0
/// @file validate.hpp
/// @brief validate<C>(): compile-time checks of a config's values, one message per field; and
/// check(c): the same rules at run time, for Dynamic configs.
///
/// Every public entry point of deepmoe starts with `static_assert(config::validate<C>())`, so
/// an inconsistent config is a compile error that names the field, not a silent misroute.
/// Each invariant below is one that another implementation has shipped without checking
/// (routing case B03 of docs/testing.md; docs/model.md §3).
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

#include <deepmoe/core/status.hpp>

#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// The storage-type rules, which every config (Dynamic included) meets at compile time.
template <ModelConfig C>
consteval bool validate_types() {
  static_assert(std::is_same_v<typename C::accum_t, float>,
                "accum_t must be float (fp32 accumulation, as DeepSeek-V3 does)");
  static_assert(std::is_same_v<typename C::weight_t, float> ||
                    std::is_same_v<typename C::weight_t, bfloat16> ||
                    std::is_same_v<typename C::weight_t, float8_e4m3fn>,
                "weight_t must be float, bfloat16 or float8_e4m3fn (the checkpoint formats the "
                "kernels read; e5m2 is a storage type only)");
  static_assert(!is_float8_v<typename C::act_t>,
                "act_t must be float or bfloat16: activations are not stored in fp8");
  return true;
}

/// The value rules of a compile-time config, one static_assert per field.
template <ModelConfig C>
consteval bool validate_values() {
  // sizes
  static_assert(C::vocab_size > 0, "vocab_size must be positive");
  static_assert(C::hidden_size > 0, "hidden_size must be positive");
  static_assert(C::intermediate_size > 0, "intermediate_size must be positive");
  static_assert(C::moe_intermediate_size > 0, "moe_intermediate_size must be positive");
  static_assert(C::num_hidden_layers > 0, "num_hidden_layers must be positive");
  static_assert(C::first_k_dense_replace >= 0 && C::first_k_dense_replace <= C::num_hidden_layers,
                "first_k_dense_replace must be in [0, num_hidden_layers]");
  static_assert(C::moe_layer_freq >= 1, "moe_layer_freq must be >= 1");
  static_assert(C::rms_norm_eps > 0.0, "rms_norm_eps must be positive");
  static_assert(C::num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0");
  static_assert(C::bos_token_id >= 0 && C::bos_token_id < C::vocab_size,
                "bos_token_id must be a token id in [0, vocab_size)");
  static_assert(C::eos_token_id >= 0 && C::eos_token_id < C::vocab_size,
                "eos_token_id must be a token id in [0, vocab_size)");

  // routing (docs/model.md §3; routing case B03)
  static_assert(C::n_routed_experts >= 1, "n_routed_experts must be >= 1");
  static_assert(C::n_shared_experts >= 0, "n_shared_experts must be >= 0");
  static_assert(C::num_experts_per_tok >= 1, "num_experts_per_tok must be >= 1");
  static_assert(C::num_experts_per_tok <= C::n_routed_experts,
                "num_experts_per_tok must not exceed n_routed_experts");
  static_assert(C::n_group >= 1, "n_group must be >= 1");
  static_assert(C::topk_group >= 1, "topk_group must be >= 1");
  static_assert(C::topk_group <= C::n_group, "topk_group must not exceed n_group");
  static_assert(C::n_group >= 1 && C::n_routed_experts % C::n_group == 0,
                "n_routed_experts must be divisible by n_group");
  static_assert(C::n_group < 1 ||
                    C::num_experts_per_tok <= C::topk_group * (C::n_routed_experts / C::n_group),
                "num_experts_per_tok must be <= topk_group * n_routed_experts / n_group "
                "(the experts of the chosen groups)");
  static_assert(!(C::topk_method == TopkMethod::kNoauxTc && C::n_group > 1) ||
                    C::n_routed_experts / C::n_group >= 2,
                "n_group: with topk_method noaux_tc and n_group > 1 the group score is the sum "
                "of the top-2 scores, so every group needs >= 2 experts");
  static_assert(C::topk_method != TopkMethod::kGreedy || C::n_group == 1,
                "n_group: topk_method greedy ignores groups, so n_group must be 1 "
                "(use group_limited_greedy for group-limited routing)");
  static_assert(C::routed_scaling_factor > 0.0, "routed_scaling_factor must be positive");

  // attention (Multi-head Latent Attention, DeepSeek-V2 paper arXiv:2405.04434 §2.1)
  static_assert(C::num_attention_heads >= 1, "num_attention_heads must be >= 1");
  static_assert(C::q_lora_rank >= 0, "q_lora_rank must be >= 0 (0 means null: q_proj path)");
  static_assert(C::kv_lora_rank >= 1, "kv_lora_rank must be >= 1");
  static_assert(C::qk_nope_head_dim >= 1, "qk_nope_head_dim must be >= 1");
  static_assert(C::qk_rope_head_dim >= 2 && C::qk_rope_head_dim % 2 == 0,
                "qk_rope_head_dim must be even: RoPE rotates pairs");
  static_assert(C::v_head_dim >= 1, "v_head_dim must be >= 1");
  static_assert(C::rope_theta > 1.0, "rope_theta must be > 1");
  static_assert(
      C::rope_scaling.type == RopeScalingType::kNone ||
          (C::rope_scaling.factor >= 1.0 && C::rope_scaling.original_max_position_embeddings > 0),
      "rope_scaling: yarn needs factor >= 1 and original_max_position_embeddings > 0");

  static_assert(!is_float8_v<typename C::weight_t> || C::weight_block_size > 0,
                "weight_block_size must be > 0 (e.g. 128) for fp8 weight_t");
  static_assert(is_float8_v<typename C::weight_t> || C::weight_block_size == 0,
                "weight_block_size must be 0 unless weight_t is an fp8 type");
  return true;
}

/// True when every value of C is consistent; otherwise compilation stops at the first failed
/// static_assert, whose message names the field. A Dynamic config's values are checked at run
/// time instead (check()), so for it only the storage types are checked here.
template <ModelConfig C>
consteval bool validate() {
  static_assert(validate_types<C>());
  if constexpr (!is_dynamic_v<C>) {
    static_assert(validate_values<C>());
  }
  return true;
}

/// The rules of validate_values() at run time, for a config read from a file.
/// @returns invalid_argument naming the first field that breaks a rule (with the rule).
template <ModelConfig C>
Status check(C const& c) {
  using W = typename C::weight_t;
  struct Rule {
    bool ok;
    char const* message;
  };
  int const E = c.n_routed_experts, G = c.n_group, K = c.num_experts_per_tok;
  Rule const rules[] = {
      {c.vocab_size > 0, "vocab_size must be positive"},
      {c.hidden_size > 0, "hidden_size must be positive"},
      {c.intermediate_size > 0, "intermediate_size must be positive"},
      {c.moe_intermediate_size > 0, "moe_intermediate_size must be positive"},
      {c.num_hidden_layers > 0, "num_hidden_layers must be positive"},
      {c.first_k_dense_replace >= 0 && c.first_k_dense_replace <= c.num_hidden_layers,
       "first_k_dense_replace must be in [0, num_hidden_layers]"},
      {c.moe_layer_freq >= 1, "moe_layer_freq must be >= 1"},
      {c.rms_norm_eps > 0.0, "rms_norm_eps must be positive"},
      {c.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0"},
      {c.bos_token_id >= 0 && c.bos_token_id < c.vocab_size,
       "bos_token_id must be a token id in [0, vocab_size)"},
      {c.eos_token_id >= 0 && c.eos_token_id < c.vocab_size,
       "eos_token_id must be a token id in [0, vocab_size)"},
      {E >= 1 && E <= kMaxDynamicExperts, "n_routed_experts must be in [1, 1024]"},
      {c.n_shared_experts >= 0, "n_shared_experts must be >= 0"},
      {K >= 1 && K <= E, "num_experts_per_tok must be in [1, n_routed_experts]"},
      {G >= 1 && G <= kMaxDynamicGroups && E % G == 0,
       "n_group must be in [1, 64] and divide n_routed_experts"},
      {c.topk_group >= 1 && c.topk_group <= G, "topk_group must be in [1, n_group]"},
      {G < 1 || K <= c.topk_group * (E / G),
       "num_experts_per_tok must be <= topk_group * n_routed_experts / n_group"},
      {!(c.topk_method == TopkMethod::kNoauxTc && G > 1) || E / G >= 2,
       "n_group: with noaux_tc and n_group > 1 every group needs >= 2 experts"},
      {c.topk_method != TopkMethod::kGreedy || G == 1,
       "n_group: topk_method greedy ignores groups, so n_group must be 1"},
      {c.routed_scaling_factor > 0.0, "routed_scaling_factor must be positive"},
      {c.num_attention_heads >= 1, "num_attention_heads must be >= 1"},
      {c.q_lora_rank >= 0, "q_lora_rank must be >= 0 (0 means null: q_proj path)"},
      {c.kv_lora_rank >= 1, "kv_lora_rank must be >= 1"},
      {c.qk_nope_head_dim >= 1, "qk_nope_head_dim must be >= 1"},
      {c.qk_rope_head_dim >= 2 && c.qk_rope_head_dim % 2 == 0,
       "qk_rope_head_dim must be even: RoPE rotates pairs"},
      {c.v_head_dim >= 1, "v_head_dim must be >= 1"},
      {c.rope_theta > 1.0, "rope_theta must be > 1"},
      {c.rope_scaling.type == RopeScalingType::kNone ||
           (c.rope_scaling.factor >= 1.0 && c.rope_scaling.original_max_position_embeddings > 0),
       "rope_scaling: yarn needs factor >= 1 and original_max_position_embeddings > 0"},
      {!is_float8_v<W> || c.weight_block_size > 0,
       "weight_block_size must be > 0 (e.g. 128) for fp8 weights"},
      {is_float8_v<W> || c.weight_block_size == 0,
       "weight_block_size must be 0 unless the weights are fp8"},
  };
  for (Rule const& r : rules) {
    if (!r.ok) {
      return invalid_argument(std::string("config: ") + r.message);
    }
  }
  return {};
}

}  // namespace config
DEEPMOE_NAMESPACE_END
