// SPDX-License-Identifier: Apache-2.0
/// @file router.hpp
/// @brief Stage 1 of the MoE layer: gate logits and top-k expert selection (docs/model.md §3).
///
///   z  = W_gate · u                                   fp32 logits  [T, E]
///   s  = sigmoid(z)  |  softmax(z) over E             router scores (scoring_func)
///   sc = s + b  (noaux_tc)  |  s                      selection scores; b in fp32
///   groups (G > 1): score = Σ top-2 sc (noaux_tc) | max sc (group_limited_greedy);
///                   keep the topk_group best groups, sc = −inf elsewhere
///   idx = top-k of sc;  w = s[idx] (unbiased);  w /= Σw + 1e-20 if norm_topk_prob;  w *= rsf
///
/// Ties break by (value descending, index ascending) for groups and experts alike, and a
/// token's ids are listed in that order. routed_scaling_factor is applied exactly once, whether
/// or not the weights are renormalized (routing case B06). An optional mask removes experts
/// from a token's choice (pruned experts or a request's policy) before group scoring.
///
/// Reference implementations: DeepSeek-V3 inference/model.py `Gate.forward`; Hugging Face
/// DeepseekV3TopkRouter / DeepseekV3MoE.route_tokens_to_experts. Where they differ (docs/model.md
/// §6) this takes −inf for masked groups, the bias only in selection, an fp32 gate.
#pragma once

#include <deepmoe/backend/cpu/gemm_nt.hpp>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace moe {

/// The router's parameters for one MoE layer.
template <config::ModelConfig C>
struct RouterWeights {
  static_assert(config::validate<C>());
  /// `mlp.gate.weight` [E, H], C::act_t, host.
  MatrixView<typename C::act_t const, config::experts_extent<C>, config::hidden_extent<C>>
      gate_weight;
  /// `mlp.gate.e_score_correction_bias` [E], fp32, host; required for noaux_tc, empty (null)
  /// otherwise. Used only to select experts, never in the weights.
  VectorView<float const, config::experts_extent<C>> e_score_correction_bias;
};

/// Experts a token may not be routed to: [T or 1, E] bytes, nonzero = excluded. One row
/// applies to every token. An empty view excludes nothing. The mask restricts selection only:
/// softmax scores are still normalized over all E experts (docs/model.md §3).
template <config::ModelConfig C>
using ExpertMask = MatrixView<std::uint8_t const, kDyn, config::experts_extent<C>>;

/// Outcome of select_experts_for_token.
enum class SelectResult {
  kOk,
  kNonFiniteLogit,  ///< a logit is NaN or ±inf
  kTooFewEligible,  ///< fewer than k selectable experts remain after masking and grouping
};

/// Routes one token: fills `topk_ids[k]` (distinct, ordered by selection score desc, id asc) and
/// `topk_weights[k]` from its `logits[E]` (fp32), the correction `bias[E]` (fp32, or null when
/// the method has none) and `mask[E]` (nonzero = excluded, or null), for the config `cfg`. Pure
/// function of its inputs, no allocation; the per-thread routine of every backend.
template <config::ModelConfig C>
DEEPMOE_HOST_DEVICE SelectResult select_experts_for_token(std::int32_t* topk_ids,
                                                          float* topk_weights, float const* logits,
                                                          float const* bias,
                                                          std::uint8_t const* mask,
                                                          C const& cfg = {}) {
  int const E = cfg.n_routed_experts;
  int const K = cfg.num_experts_per_tok;
  int const G = cfg.n_group;
  int const EG = config::experts_per_group(cfg);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  float s[config::max_experts<C>];   // router scores
  float sc[config::max_experts<C>];  // selection scores
  for (int e = 0; e < E; ++e) {
    if (!std::isfinite(logits[e])) {
      return SelectResult::kNonFiniteLogit;
    }
  }
  if (cfg.scoring_func == config::ScoringFunc::kSigmoid) {
    for (int e = 0; e < E; ++e) {
      s[e] = 1.0f / (1.0f + std::exp(-logits[e]));
    }
  } else {
    float zmax = logits[0];
    for (int e = 1; e < E; ++e) {
      zmax = logits[e] > zmax ? logits[e] : zmax;
    }
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) {
      s[e] = std::exp(logits[e] - zmax);
      sum += s[e];
    }
    for (int e = 0; e < E; ++e) {
      s[e] /= sum;
    }
  }
  for (int e = 0; e < E; ++e) {
    float const b = (cfg.topk_method == config::TopkMethod::kNoauxTc && bias) ? bias[e] : 0.0f;
    sc[e] = (mask && mask[e]) ? kNegInf : s[e] + b;
  }

  // (value desc, index asc): does (va, a) rank before (vb, b)?
  auto before = [](float va, int a, float vb, int b) { return va > vb || (va == vb && a < b); };

  if (G > 1) {
    float group_score[config::max_groups<C>];
    for (int g = 0; g < G; ++g) {
      float const* v = sc + g * EG;
      if (cfg.topk_method == config::TopkMethod::kNoauxTc) {
        int first = 0;  // the top-2 by (value desc, index asc); equal values count twice
        for (int i = 1; i < EG; ++i) {
          first = before(v[i], i, v[first], first) ? i : first;
        }
        int second = first == 0 ? 1 : 0;
        for (int i = 0; i < EG; ++i) {
          second = (i != first && before(v[i], i, v[second], second)) ? i : second;
        }
        group_score[g] = v[first] + v[second];
      } else {
        float m = v[0];
        for (int i = 1; i < EG; ++i) {
          m = v[i] > m ? v[i] : m;
        }
        group_score[g] = m;
      }
    }
    bool keep[config::max_groups<C>] = {};
    for (int r = 0; r < cfg.topk_group; ++r) {
      int best = -1;
      for (int g = 0; g < G; ++g) {
        if (!keep[g] && (best < 0 || before(group_score[g], g, group_score[best], best))) {
          best = g;
        }
      }
      keep[best] = true;
    }
    for (int g = 0; g < G; ++g) {
      if (!keep[g]) {
        for (int i = 0; i < EG; ++i) {
          sc[g * EG + i] = kNegInf;
        }
      }
    }
  }

  bool taken[config::max_experts<C>] = {};
  float sum = 0.0f;
  for (int j = 0; j < K; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (!taken[e] && (best < 0 || before(sc[e], e, sc[best], best))) {
        best = e;
      }
    }
    if (sc[best] == kNegInf) {
      return SelectResult::kTooFewEligible;
    }
    taken[best] = true;
    topk_ids[j] = best;
    topk_weights[j] = s[best];
    sum += s[best];
  }
  float const scale = static_cast<float>(cfg.routed_scaling_factor);
  if (cfg.norm_topk_prob) {
    float const inv = 1.0f / (sum + 1e-20f);  // NOTES: HF's epsilon; guards an all-zero sum
    for (int j = 0; j < K; ++j) {
      topk_weights[j] = topk_weights[j] * inv * scale;
    }
  } else {
    for (int j = 0; j < K; ++j) {
      topk_weights[j] *= scale;
    }
  }
  return SelectResult::kOk;
}

/// Selects experts for every token from precomputed fp32 logits.
/// @param topk_ids      [T, K] int32, out: expert ids, per row ordered by selection score
///                      (desc), then id (asc)
/// @param topk_weights  [T, K] fp32, out: combine weights w (see file comment)
/// @param logits        [T, E] fp32, in: gate logits z
/// @param bias          [E] fp32: e_score_correction_bias; required iff topk_method is noaux_tc
/// @param mask          [T or 1, E] or empty: experts each token may not choose
/// @param cfg           the config (E, k, routing semantics; omitted for compile-time configs)
/// @returns invalid_argument on row-count mismatch, a missing bias, a NaN/inf logit (naming the
///          token; NaN usually comes from the hidden state) or a token left with fewer than k
///          eligible experts. T = 0 is a no-op.
template <config::ModelConfig C>
Status select_experts(MatrixView<std::int32_t, kDyn, config::topk_extent<C>> topk_ids,
                      MatrixView<float, kDyn, config::topk_extent<C>> topk_weights,
                      MatrixView<float const, kDyn, config::experts_extent<C>> logits,
                      VectorView<float const, config::experts_extent<C>> bias,
                      ExpertMask<C> mask = {}, C const& cfg = {}) {
  static_assert(config::validate<C>());
  std::int64_t const T = logits.extent(0);
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  if (topk_ids.extent(0) != T || topk_weights.extent(0) != T || topk_ids.extent(1) != K ||
      topk_weights.extent(1) != K || logits.extent(1) != E ||
      (bias.data() != nullptr && bias.extent(0) != E) ||
      (mask.data() != nullptr && mask.extent(1) != E)) {
    return invalid_argument(
        "select_experts: topk_ids is [" + std::to_string(topk_ids.extent(0)) + ", " +
        std::to_string(topk_ids.extent(1)) + "], topk_weights [" +
        std::to_string(topk_weights.extent(0)) + ", " + std::to_string(topk_weights.extent(1)) +
        "], logits [" + std::to_string(T) + ", " + std::to_string(logits.extent(1)) +
        "]; expected [T, k], [T, k], [T, E] (one row per token) with k = " + std::to_string(K) +
        ", E = " + std::to_string(E));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("select_experts", "logits", logits.data(), logits.size()));
  DEEPMOE_RETURN_IF_ERROR(
      require_data("select_experts", "topk_ids", topk_ids.data(), topk_ids.size()));
  DEEPMOE_RETURN_IF_ERROR(
      require_data("select_experts", "topk_weights", topk_weights.data(), topk_weights.size()));
  if (config::has_correction_bias(cfg)) {
    if (bias.data() == nullptr) {
      return invalid_argument(
          "select_experts: topk_method noaux_tc needs e_score_correction_bias, got none");
    }
    for (int e = 0; e < E; ++e) {
      if (!std::isfinite(bias(e))) {
        return invalid_argument("select_experts: e_score_correction_bias[" + std::to_string(e) +
                                "] = " + std::to_string(bias(e)) +
                                " is not finite — HINT: a corrupt checkpoint?");
      }
    }
  }
  std::int64_t const mask_rows = mask.data() == nullptr ? 0 : mask.extent(0);
  if (mask_rows != 0 && mask_rows != 1 && mask_rows != T) {
    return invalid_argument("select_experts: expert mask has " + std::to_string(mask_rows) +
                            " rows; expected 1 (all tokens) or " + std::to_string(T));
  }
  // Every token is routed even after a failure, so the first failing token is reported
  // regardless of the thread count.
  std::int64_t first_bad = T;
  SelectResult bad_result = SelectResult::kOk;
  DEEPMOE_OMP(omp parallel for schedule(static) if (T >= 64))
  for (std::int64_t t = 0; t < T; ++t) {
    std::uint8_t const* m = mask_rows == 0 ? nullptr : mask.data() + (mask_rows == 1 ? 0 : t) * E;
    SelectResult const r =
        select_experts_for_token<C>(topk_ids.row(t).data(), topk_weights.row(t).data(),
                                    logits.row(t).data(), bias.data(), m, cfg);
    if (r != SelectResult::kOk) {
      DEEPMOE_OMP(omp critical(deepmoe_select_experts))
      if (t < first_bad) {
        first_bad = t;
        bad_result = r;
      }
    }
  }
  if (bad_result == SelectResult::kNonFiniteLogit) {
    return invalid_argument("select_experts: token " + std::to_string(first_bad) +
                            " has a NaN or infinite gate logit — HINT: check the hidden state "
                            "fed to the MoE layer for NaN/inf");
  }
  if (bad_result == SelectResult::kTooFewEligible) {
    return invalid_argument(
        "select_experts: token " + std::to_string(first_bad) + " has fewer than " +
        std::to_string(K) +
        " eligible experts after the expert mask and group selection (a group needs 2 unmasked "
        "experts to score above −inf under noaux_tc)");
  }
  return {};
}

/// Gate logits z = x · W_gateᵀ in fp32 for every token (fp32 accumulation, batch-invariant).
/// @param logits       [T, E] fp32, out
/// @param x            [T, H] fp32, in: the post-attention-normalized hidden state u
/// @param gate_weight  [E, H] C::act_t (bf16 weights are widened exactly, in registers)
/// @param cfg          the config (E, H; omitted for compile-time configs)
/// @returns invalid_argument when the shapes disagree ([T, E], [T, H], [E, H]) or a view is
///          null.
/// @ref DeepSeek-V3 inference/model.py `Gate.forward` (linear(x, self.weight)); fp32 as [HF]
template <config::ModelConfig C>
Status gate_logits(
    MatrixView<float, kDyn, config::experts_extent<C>> logits,
    MatrixView<float const, kDyn, config::hidden_extent<C>> x,
    MatrixView<typename C::act_t const, config::experts_extent<C>, config::hidden_extent<C>>
        gate_weight,
    C const& cfg = {}) {
  static_assert(config::validate<C>());
  std::int64_t const E = cfg.n_routed_experts, H = cfg.hidden_size;
  std::int64_t const T = x.extent(0);
  if (logits.extent(0) != T || logits.extent(1) != E || x.extent(1) != H ||
      (gate_weight.data() != nullptr &&
       (gate_weight.extent(0) != E || gate_weight.extent(1) != H))) {
    return invalid_argument("gate_logits: logits is [" + std::to_string(logits.extent(0)) + ", " +
                            std::to_string(logits.extent(1)) + "], x [" + std::to_string(T) + ", " +
                            std::to_string(x.extent(1)) + "], mlp.gate.weight [" +
                            std::to_string(gate_weight.extent(0)) + ", " +
                            std::to_string(gate_weight.extent(1)) + "]; expected [T, " +
                            std::to_string(E) + "], [T, " + std::to_string(H) + "], [" +
                            std::to_string(E) + ", " + std::to_string(H) + "]");
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("gate_logits", "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("gate_logits", "logits", logits.data(), logits.size()));
  if (gate_weight.data() == nullptr) {
    return invalid_argument("gate_logits: gate_weight (mlp.gate.weight) is null");
  }
  constexpr std::int64_t kRowBlock = 16;
  DEEPMOE_OMP(omp parallel for schedule(static) if (T > kRowBlock))
  for (std::int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
    std::int64_t const m = T - t0 < kRowBlock ? T - t0 : kRowBlock;
    cpu::gemm_nt(logits.data() + t0 * E, E, x.data() + t0 * H, H, m,
                 cpu::DenseRows<typename C::act_t>{gate_weight.data(), H}, E, H);
  }
  return {};
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
