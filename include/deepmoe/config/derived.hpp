// SPDX-License-Identifier: Apache-2.0
/// @file derived.hpp
/// @brief Quantities computed from a config's fields: as constexpr functions of the config
/// object (for compile-time and Dynamic configs alike), as Derived<C> constants (compile-time
/// configs), and the static extents of the views a config's ops take.
#pragma once

#include <deepmoe/config/validate.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <bit>
#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// Experts per group, E / G.
template <ModelConfig C>
constexpr int experts_per_group(C const& c) noexcept {
  return c.n_routed_experts / c.n_group;
}
/// Width of the shared-expert MLP, S · M (0 when there is no shared expert).
template <ModelConfig C>
constexpr int shared_intermediate_size(C const& c) noexcept {
  return c.n_shared_experts * c.moe_intermediate_size;
}
/// Query/key head dimension dn + dr.
template <ModelConfig C>
constexpr int qk_head_dim(C const& c) noexcept {
  return c.qk_nope_head_dim + c.qk_rope_head_dim;
}
/// Values the MLA cache keeps per token and layer: rkv + dr (576 for DeepSeek-V3).
template <ModelConfig C>
constexpr int kv_cache_dim(C const& c) noexcept {
  return c.kv_lora_rank + c.qk_rope_head_dim;
}
/// Whether the model carries e_score_correction_bias (only topk_method noaux_tc).
template <ModelConfig C>
constexpr bool has_correction_bias(C const& c) noexcept {
  return c.topk_method == TopkMethod::kNoauxTc;
}
/// Whether decoder layer `layer` (0-based) has an MoE FFN rather than a dense one: l >= K and
/// l % moe_layer_freq == 0 (the remote-code rule; all released models use freq 1,
/// docs/model.md §1). MTP layers (l ≥ L) are MoE layers by the same rule.
template <ModelConfig C>
constexpr bool is_moe_layer(C const& c, int layer) noexcept {
  return layer >= c.first_k_dense_replace && layer % c.moe_layer_freq == 0;
}
/// Number of MoE layers in the main model.
template <ModelConfig C>
constexpr int num_moe_layers(C const& c) noexcept {
  int n = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    n += is_moe_layer(c, l) ? 1 : 0;
  }
  return n;
}

/// The values above as constants of a compile-time config (docs/model.md notation).
template <ModelConfig C>
struct Derived {
  static_assert(!is_dynamic_v<C>, "Derived<C> is for compile-time configs; call the functions");
  static_assert(validate<C>());
  static constexpr int experts_per_group = config::experts_per_group(C{});
  /// Bits an expert id needs, ceil(log2 E) (at least 1); a radix sort of ids needs no more.
  static constexpr int expert_id_bits =
      C::n_routed_experts <= 1
          ? 1
          : static_cast<int>(std::bit_width(static_cast<unsigned>(C::n_routed_experts - 1)));
  static constexpr int shared_intermediate_size = config::shared_intermediate_size(C{});
  static constexpr int qk_head_dim = config::qk_head_dim(C{});
  static constexpr int kv_cache_dim = config::kv_cache_dim(C{});
  static constexpr bool has_correction_bias = config::has_correction_bias(C{});
  static constexpr bool is_moe_layer(int layer) noexcept {
    return config::is_moe_layer(C{}, layer);
  }
  static constexpr int num_moe_layers = config::num_moe_layers(C{});
  static constexpr int num_dense_layers = C::num_hidden_layers - num_moe_layers;
};

/// The static extents of a config's views: the field for compile-time configs (so a view of the
/// wrong width does not compile), kDyn for Dynamic ones (checked at run time).
template <ModelConfig C>
inline constexpr std::int64_t hidden_extent = kDyn;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr std::int64_t hidden_extent<C> = C::hidden_size;
template <ModelConfig C>
inline constexpr std::int64_t experts_extent = kDyn;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr std::int64_t experts_extent<C> = C::n_routed_experts;
template <ModelConfig C>
inline constexpr std::int64_t moe_intermediate_extent = kDyn;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr std::int64_t moe_intermediate_extent<C> =
    C::moe_intermediate_size;
template <ModelConfig C>
inline constexpr std::int64_t topk_extent = kDyn;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr std::int64_t topk_extent<C> = C::num_experts_per_tok;

/// Bounds of per-token stack arrays: E and G for compile-time configs, kMaxDynamicExperts and
/// kMaxDynamicGroups for Dynamic ones (config::check enforces them).
template <ModelConfig C>
inline constexpr int max_experts = kMaxDynamicExperts;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr int max_experts<C> = C::n_routed_experts;
template <ModelConfig C>
inline constexpr int max_groups = kMaxDynamicGroups;
template <ModelConfig C>
requires(!is_dynamic_v<C>) inline constexpr int max_groups<C> = C::n_group;

}  // namespace config
DEEPMOE_NAMESPACE_END
