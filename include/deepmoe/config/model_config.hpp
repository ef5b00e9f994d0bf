// SPDX-License-Identifier: Apache-2.0
/// @file model_config.hpp
/// @brief The ModelConfig concept: what a compile-time DeepSeek-V3-family config must provide.
///
/// A config is a struct of `static constexpr` members named as in the Hugging Face `config.json`
/// of DeepSeek-V3 (field table: docs/model.md §1, docs/configs.md), plus its precision as three
/// type aliases. It holds no run-time state. Structure is checked by the concept; values by
/// validate<C>() (validate.hpp), whose static_assert messages name the field at fault.
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/core/numeric_types.hpp>

#include <concepts>
#include <string_view>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// `scoring_func`: how gate logits z become router scores s.
enum class ScoringFunc {
  kSigmoid,  ///< "sigmoid": s = 1 / (1 + exp(-z)) per expert (DeepSeek-V3, Kimi-K2, Moonlight)
  kSoftmax,  ///< "softmax": s = softmax(z) over all E experts, fp32 (DeepSeek-V2)
};

/// `topk_method`: how experts are selected from the scores.
enum class TopkMethod {
  kNoauxTc,             ///< "noaux_tc": bias-corrected scores s + b, group score = top-2 sum
  kGreedy,              ///< "greedy": plain top-k of s, no groups (DeepSeek-V2-Lite)
  kGroupLimitedGreedy,  ///< "group_limited_greedy": group score = max s (DeepSeek-V2)
};

/// `rope_scaling.type`.
enum class RopeScalingType {
  kNone,  ///< rope_scaling absent or null: plain RoPE
  kYarn,  ///< "yarn": YaRN, arXiv:2309.00071
};

/// `rope_scaling`: YaRN parameters (arXiv:2309.00071; DeepSeek-V3 inference/model.py); all fields
/// are ignored when type is kNone.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                       ///< s, context extension factor
  int original_max_position_embeddings = 0;  ///< L0 [tokens]
  double beta_fast = 32.0;                   ///< β_fast [rotations]
  double beta_slow = 1.0;                    ///< β_slow [rotations]
  double mscale = 1.0;
  double mscale_all_dim = 0.0;  ///< enters the softmax scale as mscale(s, ·)²
};

/// Names as they appear in config.json.
constexpr std::string_view to_string(ScoringFunc f) noexcept {
  return f == ScoringFunc::kSigmoid ? "sigmoid" : "softmax";
}
constexpr std::string_view to_string(TopkMethod m) noexcept {
  switch (m) {
    case TopkMethod::kNoauxTc:
      return "noaux_tc";
    case TopkMethod::kGreedy:
      return "greedy";
    case TopkMethod::kGroupLimitedGreedy:
      return "group_limited_greedy";
  }
  return "?";
}

namespace detail {
template <class T>
concept IntField = std::same_as < std::remove_cvref_t<T>,
int > ;
template <class T>
concept RealField = std::same_as < std::remove_cvref_t<T>,
double > ;
template <class T>
concept BoolField = std::same_as < std::remove_cvref_t<T>,
bool > ;
template <class T>
concept StorageType = std::same_as<T, float> || std::same_as<T, bfloat16> ||
    std::same_as<T, float8_e4m3fn> || std::same_as<T, float8_e5m2>;
}  // namespace detail

/// A compile-time DeepSeek-V3-family model config: every field of the math (docs/model.md §1),
/// typed. `q_lora_rank` 0 means "null" (no query compression, q_proj path). `weight_block_size` is
/// the edge of the square FP8 scale blocks ("weight_block_size": [128, 128]) and 0 for unquantized
/// weights.
/// Precision: `weight_t` for the linear layers' weights (float, bfloat16, float8_e4m3fn);
/// `act_t` for activations between ops and for unquantized weights (embedding, lm_head, gate,
/// norms); `accum_t` for accumulation (float).
template <class C>
concept ModelConfig = requires {
  // vocabulary and trunk
  { C::vocab_size } -> detail::IntField;
  { C::hidden_size } -> detail::IntField;
  { C::intermediate_size } -> detail::IntField;
  { C::num_hidden_layers } -> detail::IntField;
  { C::first_k_dense_replace } -> detail::IntField;
  { C::moe_layer_freq } -> detail::IntField;
  { C::rms_norm_eps } -> detail::RealField;
  { C::max_position_embeddings } -> detail::IntField;
  { C::tie_word_embeddings } -> detail::BoolField;
  { C::num_nextn_predict_layers } -> detail::IntField;
  { C::bos_token_id } -> detail::IntField;
  { C::eos_token_id } -> detail::IntField;
  // mixture of experts
  { C::moe_intermediate_size } -> detail::IntField;
  { C::n_routed_experts } -> detail::IntField;
  { C::n_shared_experts } -> detail::IntField;
  { C::num_experts_per_tok } -> detail::IntField;
  { C::n_group } -> detail::IntField;
  { C::topk_group } -> detail::IntField;
  { C::routed_scaling_factor } -> detail::RealField;
  { C::norm_topk_prob } -> detail::BoolField;
  { C::scoring_func } -> std::convertible_to<ScoringFunc>;
  { C::topk_method } -> std::convertible_to<TopkMethod>;
  // multi-head latent attention
  { C::num_attention_heads } -> detail::IntField;
  { C::num_key_value_heads } -> detail::IntField;
  { C::q_lora_rank } -> detail::IntField;
  { C::kv_lora_rank } -> detail::IntField;
  { C::qk_nope_head_dim } -> detail::IntField;
  { C::qk_rope_head_dim } -> detail::IntField;
  { C::v_head_dim } -> detail::IntField;
  { C::rope_theta } -> detail::RealField;
  { C::rope_scaling } -> std::convertible_to<RopeScaling>;
  // precision
  { C::weight_block_size } -> detail::IntField;
  typename C::weight_t;
  typename C::act_t;
  typename C::accum_t;
  requires detail::StorageType<typename C::weight_t>;
  requires detail::StorageType<typename C::act_t>;
};

/// True for configs whose values are known only at run time (config::Dynamic); false for the
/// compile-time configs, whose fields are static constexpr members.
template <class C>
inline constexpr bool is_dynamic_v = requires {
  requires C::is_dynamic;
};

/// A config's fields as run-time values, under their Hugging Face config.json names: what
/// io::read_config_values() reads from a checkpoint.
struct ConfigValues {
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int num_nextn_predict_layers = 0;
  int bos_token_id = 0;
  int eos_token_id = 1;
  int moe_intermediate_size = 0;
  int n_routed_experts = 0;
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int n_group = 1;
  int topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  ScoringFunc scoring_func = ScoringFunc::kSigmoid;
  TopkMethod topk_method = TopkMethod::kNoauxTc;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int q_lora_rank = 0;
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling{};
  int weight_block_size = 0;  ///< > 0 iff the weights are fp8
};

/// Largest n_routed_experts and n_group of a Dynamic config (the router keeps per-token scores
/// on the stack; Kimi-K2 has 384 experts, DeepSeek-V3 8 groups).
inline constexpr int kMaxDynamicExperts = 1024;
inline constexpr int kMaxDynamicGroups = 64;

/// A config whose sizes and routing semantics are run-time values (like Eigen's Dynamic and
/// CuTe's run-time extents), so that one binary runs any DeepSeek-V3-family checkpoint; only
/// the storage types are compile-time. Every op takes the config object (`cfg`), and for the
/// compile-time configs the same code folds the values into constants: those are the fast path.
/// Built from checked values only (io::read_config_values, config::check), hence no default
/// constructor.
/// @tparam W  weight storage type (float, bfloat16, float8_e4m3fn)
/// @tparam A  activation/norm storage type (float, bfloat16)
template <class W = float, class A = float>
struct Dynamic : ConfigValues {
  static constexpr bool is_dynamic = true;
  using weight_t = W;
  using act_t = A;
  using accum_t = float;
  explicit Dynamic(ConfigValues const& v) : ConfigValues(v) {}
};

}  // namespace config
DEEPMOE_NAMESPACE_END
