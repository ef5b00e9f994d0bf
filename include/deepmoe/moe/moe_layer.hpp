// SPDX-License-Identifier: Apache-2.0
/// @file moe_layer.hpp
/// @brief The DeepSeekMoE layer on the CPU: router → permute → grouped expert FFN → combine.
///
///   u [T, H] ──gate_logits──▶ z [T, E] ──select_experts──▶ ids, w [T, K]
///     ids ──build_dispatch_plan──▶ plan (offsets [E+1], permutation [R], R = T·K)
///     u ──permute──▶ x_p [R, H] ──expert_ffn──▶ o_p [R, H]       (+ shared experts on u)
///     o_p, w ──combine──▶ y [T, H] = Σ_j w[t,j]·Expert_{ids[t,j]}(u_t) + Shared(u_t)
///
/// Each stage is a public function of its own header (router.hpp, permute.hpp, expert_ffn.hpp,
/// combine.hpp) joined by the DispatchPlan, so that another backend can replace one stage.
/// The residual add is the caller's. docs/model.md §3–§4; DeepSeek-V3 inference/model.py `MoE`.
#pragma once

#include <deepmoe/backend/cpu/grouped_swiglu.hpp>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/buffer.hpp>
#include <deepmoe/moe/combine.hpp>
#include <deepmoe/moe/expert_ffn.hpp>
#include <deepmoe/moe/permute.hpp>
#include <deepmoe/moe/router.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace moe {

/// All parameters of one MoE layer (views; the caller keeps the memory alive).
template <config::ModelConfig C>
struct MoeWeights {
  static_assert(config::validate<C>());
  RouterWeights<C> router;
  /// The E routed experts, `mlp.experts.{e}.{gate,up,down}_proj`, each [M, H], [M, H], [H, M].
  /// A non-owning span: the array of ExpertWeights, like the weights, must outlive the calls.
  std::span<ExpertWeights<C> const> experts;
  /// `mlp.shared_experts.*`, one MLP of width S·M; ignored when n_shared_experts = 0.
  ExpertWeights<C> shared_experts;
};

/// Scratch memory of moe_layer_forward, reused across calls; it grows to the largest T seen
/// (about 4·T·(3H + E + 2K + S·M) + 4·T·K·(2H + M + 2) bytes). It holds the config the layer
/// runs with (a compile-time config is empty; a Dynamic one is given at construction). After a
/// successful call the router's results for that batch can be read back; after a failed one
/// they are empty. Not thread-safe: one workspace per concurrent caller.
template <config::ModelConfig C>
class MoeWorkspace {
  static_assert(config::validate<C>());
  static constexpr std::int64_t kH = config::hidden_extent<C>, kE = config::experts_extent<C>;
  static constexpr std::int64_t kK = config::topk_extent<C>;

 public:
  /// A workspace for config `cfg` (omitted for compile-time configs).
  explicit MoeWorkspace(C const& cfg = {})
      : cfg_(cfg),
        counts_(static_cast<std::size_t>(cfg.n_routed_experts), 0),
        offsets_(static_cast<std::size_t>(cfg.n_routed_experts) + 1, 0) {}

  /// The config the layer runs with.
  C const& config() const noexcept { return cfg_; }
  /// [T, K] expert ids of the last call.
  MatrixView<std::int32_t const, kDyn, kK> topk_ids() const {
    return MatrixView<std::int32_t const, kDyn, kK>::of(ids_, tokens_, cfg_.num_experts_per_tok);
  }
  /// [T, K] combine weights of the last call.
  MatrixView<float const, kDyn, kK> topk_weights() const {
    return MatrixView<float const, kDyn, kK>::of(weights_, tokens_, cfg_.num_experts_per_tok);
  }
  /// [T, E] fp32 gate logits of the last call.
  MatrixView<float const, kDyn, kE> logits() const {
    return MatrixView<float const, kDyn, kE>::of(logits_, tokens_, cfg_.n_routed_experts);
  }
  /// [E] tokens routed to each expert in the last call (load statistics).
  VectorView<std::int32_t const, kE> tokens_per_expert() const {
    return VectorView<std::int32_t const, kE>::of(counts_.data(), cfg_.n_routed_experts);
  }
  /// Bytes currently allocated.
  std::size_t bytes() const noexcept {
    return 4 * (f_x_.capacity() + f_logits_.capacity() + f_weights_.capacity() +
                f_permuted_.capacity() + f_hidden_.capacity() + f_out_.capacity() +
                f_shared_hidden_.capacity() + f_shared_out_.capacity() + i_ids_.capacity() +
                i_p2e_.capacity() + i_e2p_.capacity());
  }

 private:
  template <config::ModelConfig C2, class Act>
  friend Status moe_layer_forward(MatrixView<Act, kDyn, config::hidden_extent<C2>>,
                                  MatrixView<Act const, kDyn, config::hidden_extent<C2>>,
                                  MoeWeights<C2> const&, MoeWorkspace<C2>&, ExpertMask<C2>);

  // Forgets the last batch (after a failed call).
  void clear() {
    tokens_ = 0;
    std::fill(counts_.begin(), counts_.end(), 0);
  }

  // Points the buffers at storage for T tokens.
  Status prepare(std::int64_t T) {
    std::int64_t const H = cfg_.hidden_size, E = cfg_.n_routed_experts;
    std::int64_t const K = cfg_.num_experts_per_tok, M = cfg_.moe_intermediate_size;
    std::int64_t const SM = config::shared_intermediate_size(cfg_);
    auto const t = static_cast<std::size_t>(T), r = static_cast<std::size_t>(T * K);
    auto const h = static_cast<std::size_t>(H);
    x_ = f_x_.get(t * h);
    logits_ = f_logits_.get(t * static_cast<std::size_t>(E));
    weights_ = f_weights_.get(r);
    ids_ = i_ids_.get(r);
    p2e_ = i_p2e_.get(r);
    e2p_ = i_e2p_.get(r);
    permuted_ = f_permuted_.get(r * h);
    hidden_ = f_hidden_.get(r * static_cast<std::size_t>(M));
    out_ = f_out_.get(r * h);
    shared_hidden_ = f_shared_hidden_.get(t * static_cast<std::size_t>(SM));
    shared_out_ = f_shared_out_.get(SM > 0 ? t * h : 0);
    bool const ok = x_ && logits_ && weights_ && ids_ && p2e_ && e2p_ && permuted_ && hidden_ &&
                    out_ && (SM == 0 || (shared_hidden_ && shared_out_));
    if (!ok && T > 0) {
      return Status(
          StatusCode::kOutOfRange,
          "moe_layer_forward: cannot allocate the workspace for " + std::to_string(T) +
              " tokens (about " +
              std::to_string((4 * T * (H + E + 2 * K + SM + H) + 4 * T * K * (2 + 2 * H + M)) >>
                             20) +
              " MiB) — HINT: split the batch");
    }
    return {};
  }

  // The layer (moe_layer_forward without the clean-up on failure).
  template <class Act>
  Status run(MatrixView<Act, kDyn, kH> y, MatrixView<Act const, kDyn, kH> u,
             MoeWeights<C> const& weights, ExpertMask<C> mask) {
    C const& cfg = cfg_;
    std::int64_t const H = cfg.hidden_size, E = cfg.n_routed_experts;
    std::int64_t const K = cfg.num_experts_per_tok, M = cfg.moe_intermediate_size;
    std::int64_t const SM = config::shared_intermediate_size(cfg);
    std::int64_t const T = u.extent(0);
    if (y.extent(0) != T || y.extent(1) != H || u.extent(1) != H) {
      return invalid_argument("moe_layer_forward: y is [" + std::to_string(y.extent(0)) + ", " +
                              std::to_string(y.extent(1)) + "], u [" + std::to_string(T) + ", " +
                              std::to_string(u.extent(1)) + "]; expected [T, " + std::to_string(H) +
                              "] both");
    }
    DEEPMOE_RETURN_IF_ERROR(require_data("moe_layer_forward", "u", u.data(), u.size()));
    DEEPMOE_RETURN_IF_ERROR(require_data("moe_layer_forward", "y", y.data(), y.size()));
    if (T > std::numeric_limits<std::int32_t>::max() / K) {
      return invalid_argument("moe_layer_forward: " + std::to_string(T) +
                              " tokens overflow int32 row indices (T·K must be < 2^31)");
    }
    if (weights.router.gate_weight.data() == nullptr) {
      return invalid_argument("moe_layer_forward: router.gate_weight (mlp.gate.weight) is null");
    }
    clear();
    if (T == 0) {
      return {};
    }
    DEEPMOE_RETURN_IF_ERROR(prepare(T));

    // u in fp32 for the gate and the shared experts
    if constexpr (std::is_same_v<Act, float>) {
      std::copy(u.data(), u.data() + T * H, x_);
    } else {
      DEEPMOE_OMP(omp parallel for schedule(static) if (T >= 64))
      for (std::int64_t t = 0; t < T; ++t) {
        convert_to_float(x_ + t * H, u.data() + t * H, H);
      }
    }
    using XView = MatrixView<float, kDyn, kH>;
    auto const x = MatrixView<float const, kDyn, kH>::of(x_, T, H);
    auto const logits = MatrixView<float, kDyn, kE>::of(logits_, T, E);
    auto const ids = MatrixView<std::int32_t, kDyn, kK>::of(ids_, T, K);
    auto const topk_weights = MatrixView<float, kDyn, kK>::of(weights_, T, K);

    DEEPMOE_RETURN_IF_ERROR(gate_logits<C>(logits, x, weights.router.gate_weight, cfg));
    DEEPMOE_RETURN_IF_ERROR(select_experts<C>(ids, topk_weights, logits,
                                              weights.router.e_score_correction_bias, mask, cfg));
    using PlanCounts = decltype(DispatchPlan<C>::tokens_per_expert);
    using PlanOffsets = decltype(DispatchPlan<C>::expert_offsets);
    DispatchPlan<C> const plan{
        PlanCounts::of(counts_.data(), E), PlanOffsets::of(offsets_.data(), E + 1),
        VectorView<std::int32_t>(p2e_, T * K), VectorView<std::int32_t>(e2p_, T * K)};
    DEEPMOE_RETURN_IF_ERROR(build_dispatch_plan<C>(plan, ids, cfg));
    auto const permuted = XView::of(permuted_, T * K, H);
    DEEPMOE_RETURN_IF_ERROR(permute<C, float>(permuted, x, plan, cfg));
    SharedExpertsPass<C> shared{};
    if (SM > 0) {
      shared = {&weights.shared_experts, XView::of(shared_out_, T, H),
                MatrixView<float, kDyn, kDyn>(shared_hidden_, T, SM), x};
    }
    DEEPMOE_RETURN_IF_ERROR(expert_ffn<C>(
        XView::of(out_, T * K, H),
        MatrixView<float, kDyn, config::moe_intermediate_extent<C>>::of(hidden_, T * K, M),
        permuted, plan, weights.experts, shared, cfg));
    using OutView = MatrixView<float const, kDyn, kH>;
    DEEPMOE_RETURN_IF_ERROR(combine<C, Act>(y, OutView::of(out_, T * K, H), topk_weights, plan,
                                            SM > 0 ? OutView::of(shared_out_, T, H) : OutView(),
                                            cfg));
    tokens_ = T;
    return {};
  }

  [[no_unique_address]] C cfg_;
  std::int64_t tokens_ = 0;
  Buffer<float> f_x_, f_logits_, f_weights_, f_permuted_, f_hidden_, f_out_, f_shared_hidden_,
      f_shared_out_;
  Buffer<std::int32_t> i_ids_, i_p2e_, i_e2p_;
  std::vector<std::int32_t> counts_, offsets_;
  float *x_ = nullptr, *logits_ = nullptr, *weights_ = nullptr, *permuted_ = nullptr,
        *hidden_ = nullptr, *out_ = nullptr, *shared_hidden_ = nullptr, *shared_out_ = nullptr;
  std::int32_t *ids_ = nullptr, *p2e_ = nullptr, *e2p_ = nullptr;
};

/// One DeepSeekMoE layer: y = Σ_j w_j · Expert_{idx_j}(u) + SharedMLP(u) for each token, with
/// the config held by the workspace.
/// @tparam C    the model config (E, K, H, M, routing semantics and precision)
/// @tparam Act  activation element type of u and y: float or bfloat16 (normally C::act_t)
/// @param y        [T, H] out: the layer's output (without the residual)
/// @param u        [T, H] in: the post-attention-normalized hidden state
/// @param weights  router, routed-expert and shared-expert weights
/// @param ws       scratch and config; after a successful call it holds the batch's ids,
///                 weights, logits and expert loads; after a failed one it holds none
/// @param mask     [T or 1, E] experts each token may not choose, or empty
/// @returns invalid_argument for mismatched rows or widths, null or negative-size views,
///          missing or misshaped weights and bad fp8 scales or correction biases (naming the
///          tensor), NaN/inf hidden states (naming the token), T·K overflowing int32, a mask
///          that leaves a token fewer than k experts, or workspace memory that cannot be
///          allocated. T = 0 is a no-op.
/// @pre y does not overlap u; one workspace is not used by two calls at once.
/// @ref DeepSeek-V3 inference/model.py `MoE.forward`; arXiv:2412.19437 §2.1.2
template <config::ModelConfig C, class Act>
Status moe_layer_forward(MatrixView<Act, kDyn, config::hidden_extent<C>> y,
                         MatrixView<Act const, kDyn, config::hidden_extent<C>> u,
                         MoeWeights<C> const& weights, MoeWorkspace<C>& ws,
                         ExpertMask<C> mask = {}) {
  static_assert(config::validate<C>());
  static_assert(std::is_same_v<Act, float> || std::is_same_v<Act, bfloat16>,
                "moe_layer_forward: activations are float or bfloat16");
  Status const status = ws.run(y, u, weights, mask);
  if (!status.ok()) {
    ws.clear();
  }
  return status;
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
