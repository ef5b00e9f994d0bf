// SPDX-License-Identifier: Apache-2.0
/// @file derived.hpp
/// @brief Derived<C>: quantities computed once from a config's fields.
#pragma once

#include <deepmoe/config/validate.hpp>

#include <bit>
#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// Values every layer of the model needs, derived from C's fields (docs/model.md notation in
/// comments).
template <ModelConfig C>
struct Derived {
  static_assert(validate<C>());
  /// Experts per group, E / G.
  static constexpr int experts_per_group = C::n_routed_experts / C::n_group;
  /// Bits an expert id needs, ceil(log2 E) (at least 1); a radix sort of ids needs no more.
  static constexpr int expert_id_bits =
      C::n_routed_experts <= 1
          ? 1
          : static_cast<int>(std::bit_width(static_cast<unsigned>(C::n_routed_experts - 1)));
  /// Width of the shared-expert MLP, S · M (0 when there is no shared expert).
  static constexpr int shared_intermediate_size = C::n_shared_experts * C::moe_intermediate_size;
  /// Query/key head dimension dn + dr.
  static constexpr int qk_head_dim = C::qk_nope_head_dim + C::qk_rope_head_dim;
  /// Values the MLA cache keeps per token and layer: rkv + dr (576 for DeepSeek-V3).
  static constexpr int kv_cache_dim = C::kv_lora_rank + C::qk_rope_head_dim;
  /// Whether the model carries e_score_correction_bias (only topk_method noaux_tc).
  static constexpr bool has_correction_bias = C::topk_method == TopkMethod::kNoauxTc;

  /// Whether decoder layer `layer` (0-based) has an MoE FFN rather than a dense one: l >= K and
  /// l % moe_layer_freq == 0 (the remote-code rule; all released models use freq 1, docs/model.md
  /// §1).
  static constexpr bool is_moe_layer(int layer) noexcept {
    return layer >= C::first_k_dense_replace && layer % C::moe_layer_freq == 0;
  }
  /// Number of MoE layers in the main model.
  static constexpr int num_moe_layers = [] {
    int n = 0;
    for (int l = 0; l < C::num_hidden_layers; ++l) {
      n += is_moe_layer(l) ? 1 : 0;
    }
    return n;
  }();
  /// Number of dense-FFN layers in the main model.
  static constexpr int num_dense_layers = C::num_hidden_layers - num_moe_layers;
};

}  // namespace config
DEEPMOE_NAMESPACE_END
