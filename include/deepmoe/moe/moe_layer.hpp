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

/// Scratch memory of moe_layer_forward, reused across calls; it grows to the largest T seen.
/// After a call, the router's results for that batch can be read back.
template <config::ModelConfig C>
class MoeWorkspace {
  static_assert(config::validate<C>());

 public:
  static constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts;
  static constexpr std::int64_t K = C::num_experts_per_tok, M = C::moe_intermediate_size;
  static constexpr std::int64_t SM = config::Derived<C>::shared_intermediate_size;

  /// [T, K] expert ids of the last call.
  MatrixView<std::int32_t const, kDyn, K> topk_ids() const {
    return MatrixView<std::int32_t const, kDyn, K>(ids_, tokens_);
  }
  /// [T, K] combine weights of the last call.
  MatrixView<float const, kDyn, K> topk_weights() const {
    return MatrixView<float const, kDyn, K>(weights_, tokens_);
  }
  /// [T, E] fp32 gate logits of the last call.
  MatrixView<float const, kDyn, E> logits() const {
    return MatrixView<float const, kDyn, E>(logits_, tokens_);
  }
  /// [E] tokens routed to each expert in the last call (load statistics).
  VectorView<std::int32_t const, E> tokens_per_expert() const {
    return VectorView<std::int32_t const, E>(counts_.data());
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
  friend Status moe_layer_forward(MatrixView<Act, kDyn, C2::hidden_size>,
                                  MatrixView<Act const, kDyn, C2::hidden_size>,
                                  MoeWeights<C2> const&, MoeWorkspace<C2>&, ExpertMask<C2>);

  // Points the views at storage for T tokens.
  void prepare(std::int64_t T) {
    auto const t = static_cast<std::size_t>(T), r = static_cast<std::size_t>(T * K);
    tokens_ = T;
    x_ = f_x_.get(t * H);
    logits_ = f_logits_.get(t * E);
    weights_ = f_weights_.get(t * K);
    ids_ = i_ids_.get(t * K);
    p2e_ = i_p2e_.get(r);
    e2p_ = i_e2p_.get(r);
    permuted_ = f_permuted_.get(r * H);
    hidden_ = f_hidden_.get(r * M);
    out_ = f_out_.get(r * H);
    shared_hidden_ = f_shared_hidden_.get(t * SM);
    shared_out_ = f_shared_out_.get(SM > 0 ? t * H : 0);
  }

  std::int64_t tokens_ = 0;
  Buffer<float> f_x_, f_logits_, f_weights_, f_permuted_, f_hidden_, f_out_, f_shared_hidden_,
      f_shared_out_;
  Buffer<std::int32_t> i_ids_, i_p2e_, i_e2p_;
  std::array<std::int32_t, E> counts_{};
  std::array<std::int32_t, E + 1> offsets_{};
  float *x_ = nullptr, *logits_ = nullptr, *weights_ = nullptr, *permuted_ = nullptr,
        *hidden_ = nullptr, *out_ = nullptr, *shared_hidden_ = nullptr, *shared_out_ = nullptr;
  std::int32_t *ids_ = nullptr, *p2e_ = nullptr, *e2p_ = nullptr;
};

/// One DeepSeekMoE layer: y = Σ_j w_j · Expert_{idx_j}(u) + SharedMLP(u) for each token.
/// @tparam C    the model config (E, K, H, M, routing semantics and precision)
/// @tparam Act  activation element type of u and y: float or bfloat16 (normally C::act_t)
/// @param y        [T, H] out: the layer's output (without the residual)
/// @param u        [T, H] in: the post-attention-normalized hidden state
/// @param weights  router, routed-expert and shared-expert weights
/// @param ws       scratch; after the call it holds the batch's ids, weights and expert loads
/// @param mask     [T or 1, E] experts each token may not choose, or empty
/// @returns invalid_argument for mismatched rows, null u or y, missing or misshaped weights (naming
/// the
///          tensor), NaN/inf hidden states (naming the token), T·K overflowing int32, or a
///          mask that leaves a token fewer than k experts. T = 0 is a no-op.
/// @pre y does not overlap u.
template <config::ModelConfig C, class Act>
Status moe_layer_forward(MatrixView<Act, kDyn, C::hidden_size> y,
                         MatrixView<Act const, kDyn, C::hidden_size> u,
                         MoeWeights<C> const& weights, MoeWorkspace<C>& ws,
                         ExpertMask<C> mask = {}) {
  static_assert(config::validate<C>());
  static_assert(std::is_same_v<Act, float> || std::is_same_v<Act, bfloat16>,
                "moe_layer_forward: activations are float or bfloat16");
  using Ws = MoeWorkspace<C>;
  constexpr std::int64_t H = Ws::H, K = Ws::K, SM = Ws::SM;
  std::int64_t const T = u.extent(0);
  if (y.extent(0) != T) {
    return invalid_argument("moe_layer_forward: y has " + std::to_string(y.extent(0)) +
                            " rows, u has " + std::to_string(T));
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
  DEEPMOE_RETURN_IF_ERROR(check_expert_weights<C>(weights.experts));
  if constexpr (SM > 0) {
    DEEPMOE_RETURN_IF_ERROR(check_swiglu_weights("shared_experts", weights.shared_experts, H, SM,
                                                 C::weight_block_size));
  }
  ws.prepare(T);
  if (T == 0) {
    ws.counts_.fill(0);
    return {};
  }

  // u in fp32 for the gate and the shared experts
  std::int64_t const th = T * H;
  if constexpr (std::is_same_v<Act, float>) {
    std::copy(u.data(), u.data() + th, ws.x_);
  } else {
#pragma omp parallel for schedule(static) if (T >= 64)
    for (std::int64_t t = 0; t < T; ++t) {
      convert_to_float(ws.x_ + t * H, u.data() + t * H, H);
    }
  }
  MatrixView<float const, kDyn, H> const x(ws.x_, T);
  MatrixView<float, kDyn, C::n_routed_experts> const logits(ws.logits_, T);
  MatrixView<std::int32_t, kDyn, K> const ids(ws.ids_, T);
  MatrixView<float, kDyn, K> const topk_weights(ws.weights_, T);

  DEEPMOE_RETURN_IF_ERROR(gate_logits<C>(logits, x, weights.router.gate_weight));
  DEEPMOE_RETURN_IF_ERROR(
      select_experts<C>(ids, topk_weights, logits, weights.router.e_score_correction_bias, mask));
  DispatchPlan<C> const plan{VectorView<std::int32_t, C::n_routed_experts>(ws.counts_.data()),
                             VectorView<std::int32_t, C::n_routed_experts + 1>(ws.offsets_.data()),
                             VectorView<std::int32_t>(ws.p2e_, T * K),
                             VectorView<std::int32_t>(ws.e2p_, T * K)};
  DEEPMOE_RETURN_IF_ERROR(build_dispatch_plan<C>(plan, ids));
  MatrixView<float, kDyn, H> const permuted(ws.permuted_, T * K);
  DEEPMOE_RETURN_IF_ERROR(permute<C, float>(permuted, x, plan));

  // routed experts and shared experts in one grouped pass
  using W = typename C::weight_t;
  std::vector<cpu::SwiGluSegment<W>> segments;
  segments.reserve(C::n_routed_experts + 1);
  for (int e = 0; e < C::n_routed_experts; ++e) {
    std::int64_t const r0 = ws.offsets_[static_cast<std::size_t>(e)];
    std::int64_t const n = ws.offsets_[static_cast<std::size_t>(e) + 1] - r0;
    segments.push_back({&weights.experts[static_cast<std::size_t>(e)], ws.permuted_ + r0 * H,
                        ws.hidden_ + r0 * Ws::M, ws.out_ + r0 * H, n, Ws::M});
  }
  if constexpr (SM > 0) {
    segments.push_back({&weights.shared_experts, ws.x_, ws.shared_hidden_, ws.shared_out_, T, SM});
  }
  cpu::grouped_swiglu<W>(segments, H, C::weight_block_size);

  return combine<C, Act>(y, MatrixView<float const, kDyn, H>(ws.out_, T * K), topk_weights, plan,
                         SM > 0 ? MatrixView<float const, kDyn, H>(ws.shared_out_, T)
                                : MatrixView<float const, kDyn, H>());
}

}  // namespace moe
DEEPMOE_NAMESPACE_END
