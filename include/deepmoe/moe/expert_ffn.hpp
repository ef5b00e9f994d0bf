// SPDX-License-Identifier: Apache-2.0
/// @file expert_ffn.hpp
/// @brief Stage 3 of the MoE layer: the grouped expert SwiGLU over expert-contiguous rows.
///
/// For expert e and its permuted rows P_e = [expert_offsets[e], expert_offsets[e+1]):
///   out[P_e] = W_down,e · (silu(W_gate,e · x[P_e]) ⊙ (W_up,e · x[P_e]))     (docs/model.md §4)
/// Weights in C::weight_t (fp32, bf16, or fp8-e4m3 with C::weight_block_size² block scales);
/// activations and accumulation in fp32. The shared experts are one MLP of width S·M over all
/// tokens (shared_expert_ffn); moe_layer_forward runs both in one grouped pass.
#pragma once

#include <deepmoe/backend/cpu/grouped_swiglu.hpp>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/moe/permute.hpp>
#include <deepmoe/ops/dense_mlp.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace moe {

/// The weights of one routed expert or of the shared experts, at the config's precision.
template <config::ModelConfig C>
using ExpertWeights = SwiGluWeights<typename C::weight_t>;

/// Checks the E routed experts' shapes ([M, H], [M, H], [H, M] plus fp8 scales) for config
/// `cfg`; the error names the expert, e.g. "experts[17].down_proj.weight has shape ...".
template <config::ModelConfig C>
Status check_expert_weights(std::span<ExpertWeights<C> const> experts, C const& cfg = {}) {
  if (experts.size() != static_cast<std::size_t>(cfg.n_routed_experts)) {
    return invalid_argument("experts: got " + std::to_string(experts.size()) +
                            " routed experts, the config has n_routed_experts = " +
                            std::to_string(cfg.n_routed_experts));
  }
  for (std::size_t e = 0; e < experts.size(); ++e) {
    DEEPMOE_RETURN_IF_ERROR(
        check_swiglu_weights([e] { return "experts[" + std::to_string(e) + "]"; }, experts[e],
                             cfg.hidden_size, cfg.moe_intermediate_size, cfg.weight_block_size));
  }
  return {};
}

/// The shared experts' share of a grouped pass: out = Shared(x) over all T tokens. A pass
/// with `weights` null has no shared experts.
template <config::ModelConfig C>
struct SharedExpertsPass {
  static_assert(config::validate<C>());
  ExpertWeights<C> const* weights = nullptr;                  ///< `mlp.shared_experts.*`, S·M
  MatrixView<float, kDyn, config::hidden_extent<C>> out;      ///< [T, H] fp32, out
  MatrixView<float, kDyn, kDyn> hidden;                       ///< [T, S·M] fp32, scratch
  MatrixView<float const, kDyn, config::hidden_extent<C>> x;  ///< [T, H] fp32, in
};

/// Grouped expert FFN over the permuted rows, and optionally the shared experts in the same
/// parallel pass: out[P_e] = Expert_e(x[P_e]) for every expert e (file comment), and
/// shared.out = Shared(shared.x) when shared.weights is set.
/// @param out      [R, H] fp32, out: each permuted row through its expert
/// @param hidden   [R, M] fp32, scratch (the SwiGLU activations)
/// @param x        [R, H] fp32, in: rows in expert order (permute())
/// @param plan     the dispatch plan that ordered x
/// @param experts  E expert weights
/// @param shared   the shared experts' pass, or {} for none
/// @param cfg      the config (H, M, E, S, fp8 block)
/// @returns invalid_argument for row-count mismatches, null buffers, or misshaped weights and
///          bad fp8 scales (naming the tensor, e.g. "experts[17].down_proj.weight").
/// @pre the buffers do not overlap one another.
/// @ref DeepSeek-V3 inference/model.py `MoE.forward` (the per-expert loop)
template <config::ModelConfig C>
Status expert_ffn(MatrixView<float, kDyn, config::hidden_extent<C>> out,
                  MatrixView<float, kDyn, config::moe_intermediate_extent<C>> hidden,
                  MatrixView<float const, kDyn, config::hidden_extent<C>> x,
                  DispatchPlan<C> const& plan, std::span<ExpertWeights<C> const> experts,
                  SharedExpertsPass<C> const& shared = {}, C const& cfg = {}) {
  static_assert(config::validate<C>());
  std::int64_t const H = cfg.hidden_size, M = cfg.moe_intermediate_size;
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  std::int64_t const R = plan.permuted_to_expanded.size();
  if (out.extent(0) != R || hidden.extent(0) != R || x.extent(0) != R || out.extent(1) != H ||
      x.extent(1) != H || hidden.extent(1) != M) {
    return invalid_argument("expert_ffn: out, hidden and x have " + std::to_string(out.extent(0)) +
                            ", " + std::to_string(hidden.extent(0)) + " and " +
                            std::to_string(x.extent(0)) +
                            " rows; the plan has R = " + std::to_string(R));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("expert_ffn", "out", out.data(), out.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("expert_ffn", "hidden", hidden.data(), hidden.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("expert_ffn", "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(check_expert_weights<C>(experts, cfg));
  std::int64_t const T = shared.x.extent(0);
  if (shared.weights != nullptr) {
    if (SM == 0) {
      return invalid_argument("expert_ffn: shared experts given, but n_shared_experts = 0");
    }
    if (shared.out.extent(0) != T || shared.hidden.extent(0) != T ||
        shared.hidden.extent(1) != SM) {
      return invalid_argument("expert_ffn: shared.out is [" + std::to_string(shared.out.extent(0)) +
                              ", H] and shared.hidden [" + std::to_string(shared.hidden.extent(0)) +
                              ", " + std::to_string(shared.hidden.extent(1)) + "], expected [" +
                              std::to_string(T) + ", H] and [" + std::to_string(T) + ", " +
                              std::to_string(SM) + "]");
    }
    DEEPMOE_RETURN_IF_ERROR(require_data("expert_ffn", "shared.out", shared.out.data(), T * H));
    DEEPMOE_RETURN_IF_ERROR(
        require_data("expert_ffn", "shared.hidden", shared.hidden.data(), T * SM));
    DEEPMOE_RETURN_IF_ERROR(require_data("expert_ffn", "shared.x", shared.x.data(), T * H));
    DEEPMOE_RETURN_IF_ERROR(
        check_swiglu_weights("shared_experts", *shared.weights, H, SM, cfg.weight_block_size));
  }
  std::vector<cpu::SwiGluSegment<typename C::weight_t>> segments;
  segments.reserve(static_cast<std::size_t>(cfg.n_routed_experts) + 1);
  for (int e = 0; e < cfg.n_routed_experts; ++e) {
    std::int64_t const r0 = plan.expert_offsets.data()[e];
    std::int64_t const n = plan.expert_offsets.data()[e + 1] - r0;
    segments.push_back({&experts[static_cast<std::size_t>(e)], x.data() + r0 * H,
                        hidden.data() + r0 * M, out.data() + r0 * H, n, M});
  }
  if (shared.weights != nullptr) {
    segments.push_back(
        {shared.weights, shared.x.data(), shared.hidden.data(), shared.out.data(), T, SM});
  }
  cpu::grouped_swiglu<typename C::weight_t>(segments, H, cfg.weight_block_size);
  return {};
}

/// The shared experts: out = W_down · (silu(W_gate·x) ⊙ (W_up·x)), width S·M, on every token.
/// Never scaled by routed_scaling_factor (routing case B07).
/// @param out     [T, H] fp32, out
/// @param hidden  [T, S·M] fp32, scratch
/// @param x       [T, H] fp32, in
/// @param shared  `mlp.shared_experts.*` weights
/// @param cfg     the config (H, S·M, fp8 block)
/// @returns invalid_argument for row or width mismatches, null buffers, n_shared_experts = 0, or
///          misshaped weights and bad fp8 scales (naming "shared_experts.<proj>").
/// @pre the buffers do not overlap.
/// @ref DeepSeek-V3 inference/model.py `MoE.forward` (self.shared_experts(x))
template <config::ModelConfig C>
Status shared_expert_ffn(MatrixView<float, kDyn, config::hidden_extent<C>> out,
                         MatrixView<float, kDyn, kDyn> hidden,
                         MatrixView<float const, kDyn, config::hidden_extent<C>> x,
                         ExpertWeights<C> const& shared, C const& cfg = {}) {
  static_assert(config::validate<C>());
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  if (SM == 0) {
    return invalid_argument("shared_expert_ffn: the config has n_shared_experts = 0");
  }
  if (hidden.extent(1) != SM) {
    return invalid_argument("shared_expert_ffn: hidden has " + std::to_string(hidden.extent(1)) +
                            " columns, expected S·M = " + std::to_string(SM));
  }
  return dense_mlp(MatrixView<float>(out.data(), out.extent(0), out.extent(1)), hidden,
                   MatrixView<float const>(x.data(), x.extent(0), x.extent(1)), shared,
                   cfg.weight_block_size, "shared_experts");
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
