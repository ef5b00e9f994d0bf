// SPDX-License-Identifier: Apache-2.0
/// @file permute.hpp
/// @brief Stage 2 of the MoE layer: the dispatch plan and the gather into expert order.
///
/// The T·K (token, slot) pairs chosen by the router — "expanded rows", index t·K + j — are
/// reordered so that each expert's rows are contiguous ("permuted rows", R = T·K of them):
/// expert e owns permuted rows [expert_offsets[e], expert_offsets[e+1]). Within an expert, rows
/// keep ascending expanded index, i.e. ascending token (a stable counting sort), so the plan is
/// a pure function of topk_ids. Dropless: every pair is kept; an expert may own 0 or all rows.
#pragma once

#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace moe {

/// How the T·K expanded rows of a batch map to expert-contiguous permuted rows. Views into
/// storage the caller owns (MoeWorkspace on the CPU); all int32, host.
/// Invariants: expert_offsets[0] = 0, expert_offsets[E] = R, tokens_per_expert[e] =
/// expert_offsets[e+1] − expert_offsets[e]; permuted_to_expanded and expanded_to_permuted are
/// inverse permutations of [0, R).
template <config::ModelConfig C>
struct DispatchPlan {
  static_assert(config::validate<C>());
  static constexpr std::int64_t kExperts = config::experts_extent<C>;
  VectorView<std::int32_t, kExperts> tokens_per_expert;  ///< [E] rows per expert
  VectorView<std::int32_t, kExperts == kDyn ? kDyn : kExperts + 1>
      expert_offsets;                             ///< [E+1] exclusive prefix sum
  VectorView<std::int32_t> permuted_to_expanded;  ///< [R] permuted row → t·K + j
  VectorView<std::int32_t> expanded_to_permuted;  ///< [R] t·K + j → permuted row
};

/// Fills `plan` from the router's ids by a stable counting sort on expert id.
/// @param plan      out; its views must have room for R = T·K rows and E (+1) experts
/// @param topk_ids  [T, K] int32 expert ids in [0, E)
/// @param cfg       the config (E, K)
/// @returns invalid_argument when the plan's views do not hold R rows or E experts, when T·K
///          overflows int32, or naming the token and slot of an id outside [0, E).
template <config::ModelConfig C>
Status build_dispatch_plan(DispatchPlan<C> const& plan,
                           MatrixView<std::int32_t const, kDyn, config::topk_extent<C>> topk_ids,
                           C const& cfg = {}) {
  static_assert(config::validate<C>());
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  std::int64_t const T = topk_ids.extent(0);
  if (topk_ids.extent(1) != K || plan.tokens_per_expert.extent(0) != E ||
      plan.expert_offsets.extent(0) != E + 1) {
    return invalid_argument(
        "build_dispatch_plan: topk_ids has " + std::to_string(topk_ids.extent(1)) +
        " columns and the plan " + std::to_string(plan.tokens_per_expert.extent(0)) +
        " experts; the config has k = " + std::to_string(K) + ", E = " + std::to_string(E));
  }
  if (T > std::numeric_limits<std::int32_t>::max() / K) {
    return invalid_argument("build_dispatch_plan: " + std::to_string(T) + " tokens × " +
                            std::to_string(K) + " experts overflow int32 row indices");
  }
  std::int64_t const R = T * K;
  if (plan.permuted_to_expanded.size() != R || plan.expanded_to_permuted.size() != R) {
    return invalid_argument("build_dispatch_plan: plan holds " +
                            std::to_string(plan.permuted_to_expanded.size()) + " and " +
                            std::to_string(plan.expanded_to_permuted.size()) +
                            " rows, expected T·K = " + std::to_string(R));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("build_dispatch_plan", "topk_ids", topk_ids.data(), R));
  DEEPMOE_RETURN_IF_ERROR(require_data("build_dispatch_plan", "plan.permuted_to_expanded",
                                       plan.permuted_to_expanded.data(), R));
  DEEPMOE_RETURN_IF_ERROR(require_data("build_dispatch_plan", "plan.expanded_to_permuted",
                                       plan.expanded_to_permuted.data(), R));
  DEEPMOE_RETURN_IF_ERROR(require_data("build_dispatch_plan", "plan.tokens_per_expert",
                                       plan.tokens_per_expert.data(), E));
  DEEPMOE_RETURN_IF_ERROR(require_data("build_dispatch_plan", "plan.expert_offsets",
                                       plan.expert_offsets.data(), E + 1));
  std::int32_t* counts = plan.tokens_per_expert.data();
  std::int32_t* offsets = plan.expert_offsets.data();
  std::memset(counts, 0, sizeof(std::int32_t) * E);
  std::int32_t const* ids = topk_ids.data();
  for (std::int64_t i = 0; i < R; ++i) {
    std::int32_t const e = ids[i];
    if (e < 0 || e >= E) {
      return invalid_argument("build_dispatch_plan: topk_ids[" + std::to_string(i / K) + ", " +
                              std::to_string(i % K) + "] = " + std::to_string(e) +
                              " is not an expert id in [0, " + std::to_string(E) + ")");
    }
    ++counts[e];
  }
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    offsets[e + 1] = offsets[e] + counts[e];
  }
  // cursor[e] starts at offsets[e]; kept in expanded_to_permuted's space would alias, so a
  // small stack copy of the offsets is used.
  std::int32_t cursor[config::max_experts<C>];
  std::memcpy(cursor, offsets, sizeof(std::int32_t) * static_cast<std::size_t>(E));
  std::int32_t* p2e = plan.permuted_to_expanded.data();
  std::int32_t* e2p = plan.expanded_to_permuted.data();
  for (std::int64_t i = 0; i < R; ++i) {
    std::int32_t const r = cursor[ids[i]]++;
    p2e[r] = static_cast<std::int32_t>(i);
    e2p[i] = r;
  }
  return {};
}

/// Gathers token rows into expert order: out[r] = float(x[permuted_to_expanded[r] / K]).
/// @tparam In   element type of x: float or bfloat16 (widened exactly)
/// @param out   [R, H] fp32, out (the grouped expert GEMM's input)
/// @param x     [T, H] In, in
/// @param plan  from build_dispatch_plan for the same T
/// @param cfg   the config (H, K)
/// @returns invalid_argument when the row counts disagree with the plan or a view is null.
/// @pre out does not overlap x. @ref DeepSeek-V3 inference/model.py `MoE.forward` (the gather
///      x[idx] per expert)
template <config::ModelConfig C, class In>
Status permute(MatrixView<float, kDyn, config::hidden_extent<C>> out,
               MatrixView<In const, kDyn, config::hidden_extent<C>> x, DispatchPlan<C> const& plan,
               C const& cfg = {}) {
  std::int64_t const H = cfg.hidden_size, K = cfg.num_experts_per_tok;
  std::int64_t const R = plan.permuted_to_expanded.size();
  if (out.extent(0) != R || x.extent(0) * K != R || out.extent(1) != H || x.extent(1) != H) {
    return invalid_argument("permute: out has " + std::to_string(out.extent(0)) + " rows and x " +
                            std::to_string(x.extent(0)) +
                            "; the plan has R = " + std::to_string(R) + " = T·K rows");
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("permute", "out", out.data(), out.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("permute", "x", x.data(), x.size()));
  std::int32_t const* p2e = plan.permuted_to_expanded.data();
  DEEPMOE_OMP(omp parallel for schedule(static) if (R >= 64))
  for (std::int64_t r = 0; r < R; ++r) {
    convert_to_float(out.data() + r * H, x.data() + (p2e[r] / K) * H, H);
  }
  return {};
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
