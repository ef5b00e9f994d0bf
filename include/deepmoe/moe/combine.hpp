// SPDX-License-Identifier: Apache-2.0
/// @file combine.hpp
/// @brief Stage 4 of the MoE layer: weighted sum of each token's expert outputs, in token order.
///
///   y[t] = round_Out( (Σ_{j=0..K-1} w[t,j] · out[expanded_to_permuted[t·K+j]]) + shared[t] )
///
/// The sum runs over j in increasing order (the router's order) in fp32, then the shared
/// experts' output is added, then the result is rounded once to the output type. A token's
/// result therefore depends only on its own rows, never on the other tokens of the batch, and
/// no atomics are involved. The residual connection is not added here.
#pragma once

#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/moe/permute.hpp>

#include <cstdint>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace moe {

/// Combines expert outputs back into token order (file comment).
/// @tparam Out          element type of y: float or bfloat16 (rounded once, RNE)
/// @param y             [T, H] Out, out
/// @param expert_out    [R, H] fp32, in: expert_ffn's output in permuted order
/// @param topk_weights  [T, K] fp32, in: the router's combine weights
/// @param plan          the dispatch plan of expert_out
/// @param shared_out    [T, H] fp32 or empty: the shared experts' output
/// @param cfg           the config (H, K)
/// @returns invalid_argument when the row counts disagree (T, R = T·K) or a view is null.
/// @pre y does not overlap the inputs.
/// @ref DeepSeek-V3 inference/model.py `MoE.forward` (y[idx] += expert(x[idx]) · weights)
template <config::ModelConfig C, class Out>
Status combine(MatrixView<Out, kDyn, config::hidden_extent<C>> y,
               MatrixView<float const, kDyn, config::hidden_extent<C>> expert_out,
               MatrixView<float const, kDyn, config::topk_extent<C>> topk_weights,
               DispatchPlan<C> const& plan,
               MatrixView<float const, kDyn, config::hidden_extent<C>> shared_out = {},
               C const& cfg = {}) {
  static_assert(config::validate<C>());
  std::int64_t const H = cfg.hidden_size, K = cfg.num_experts_per_tok;
  std::int64_t const T = y.extent(0);
  bool const has_shared = shared_out.data() != nullptr;
  if (topk_weights.extent(0) != T || expert_out.extent(0) != T * K ||
      plan.expanded_to_permuted.size() != T * K || (has_shared && shared_out.extent(0) != T) ||
      y.extent(1) != H || expert_out.extent(1) != H || topk_weights.extent(1) != K ||
      (has_shared && shared_out.extent(1) != H)) {
    return invalid_argument("combine: y has " + std::to_string(T) + " rows, topk_weights " +
                            std::to_string(topk_weights.extent(0)) + ", expert_out " +
                            std::to_string(expert_out.extent(0)) +
                            " (expected T·K = " + std::to_string(T * K) + "), shared_out " +
                            std::to_string(has_shared ? shared_out.extent(0) : T));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("combine", "y", y.data(), y.size()));
  DEEPMOE_RETURN_IF_ERROR(
      require_data("combine", "expert_out", expert_out.data(), expert_out.size()));
  DEEPMOE_RETURN_IF_ERROR(
      require_data("combine", "topk_weights", topk_weights.data(), topk_weights.size()));
  std::int32_t const* e2p = plan.expanded_to_permuted.data();
  DEEPMOE_OMP(omp parallel if (T >= 16))
  {
    std::vector<float> acc_row(static_cast<std::size_t>(H));  // one fp32 row per thread
    float* const acc = acc_row.data();
  DEEPMOE_OMP(omp for schedule(static))
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < H; ++h) {
      acc[h] = 0.0f;
    }
    for (std::int64_t j = 0; j < K; ++j) {
      float const w = topk_weights(t, j);
      float const* row = expert_out.data() + std::int64_t{e2p[t * K + j]} * H;
      for (std::int64_t h = 0; h < H; ++h) {
        acc[h] += w * row[h];
      }
    }
    if (has_shared) {
      float const* s = shared_out.data() + t * H;
      for (std::int64_t h = 0; h < H; ++h) {
        acc[h] += s[h];
      }
    }
    Out* out = y.data() + t * H;
    for (std::int64_t h = 0; h < H; ++h) {
      out[h] = from_float<Out>(acc[h]);
    }
  }
  }
  return {};
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
