// SPDX-License-Identifier: Apache-2.0
/// @file moe_backward.hpp
/// @brief Backward of the DeepSeekMoE layer (fp32 weights): gradients of the routed experts, the
/// shared experts and the router's gate weight, and of the layer input, from dL/dy.
///
/// Forward, per token t (docs/model.md §3–§4): z = W_gate·u, s = σ(z) or softmax(z), the ids
/// chosen from s + b (no gradient flows through the choice, nor into the bias b, which
/// aux-loss-free balancing sets), w_j = rsf·s_{id_j}/(Σ_k s_{id_k} + 1e-20) (norm_topk_prob) or
/// rsf·s_{id_j}, y = Σ_j w_j·E_{id_j}(u) + Shared(u). Backward:
///   d(expert input) = w_j·dy through the SwiGLU backward;  dw_j = ⟨dy, E_{id_j}(u)⟩
///   ds_k = rsf/S·(dw_k − Σ_j dw_j·s_j/S)  (normalized, S = Σ s)  |  rsf·dw_k
///   dz = ds ⊙ s ⊙ (1 − s) (sigmoid)  |  s ⊙ (ds − ⟨ds, s⟩) (softmax over all E)
///   dW_gate += dz ⊗ u;  du += W_gateᵀ·dz + Σ expert input gradients + the shared experts'
/// Tokens are processed in order and every sum has a fixed order, so results do not depend on
/// the thread count. Checked against finite differences of the double reference layer.
#pragma once

#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/train/backward.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// Gradients of one SwiGLU MLP's weights, [I, H], [I, H], [H, I] row-major.
struct SwiGluGrads {
  std::vector<float> gate_proj, up_proj, down_proj;
};

/// Gradients of one MoE layer's weights (accumulated across calls; zero them to start).
struct MoeGrads {
  std::vector<float> gate;           ///< [E, H] `mlp.gate.weight`
  std::vector<SwiGluGrads> experts;  ///< E routed experts
  SwiGluGrads shared;                ///< `mlp.shared_experts`, when S > 0
};

namespace detail {

// o = MLP(x) for one row, keeping g = W_g·x, h = W_u·x and a = silu(g)·h; then, given do,
// accumulates the weight gradients and adds the input gradient to dx.
struct MlpRow {
  std::vector<float> g, h, a, o, da, dg, dh;
  void forward(SwiGluWeights<float> const& w, float const* x, std::int64_t H, std::int64_t I) {
    g.assign(static_cast<std::size_t>(I), 0.0f);
    h.assign(static_cast<std::size_t>(I), 0.0f);
    a.resize(static_cast<std::size_t>(I));
    o.assign(static_cast<std::size_t>(H), 0.0f);
    for (std::int64_t i = 0; i < I; ++i) {
      for (std::int64_t k = 0; k < H; ++k) {
        g[i] += w.gate_proj.weight.data()[i * H + k] * x[k];
        h[i] += w.up_proj.weight.data()[i * H + k] * x[k];
      }
      a[i] = g[i] / (1.0f + std::exp(-g[i])) * h[i];
    }
    for (std::int64_t k = 0; k < H; ++k)
      for (std::int64_t i = 0; i < I; ++i)
        o[k] += w.down_proj.weight.data()[k * I + i] * a[i];
  }
  void backward(SwiGluWeights<float> const& w, SwiGluGrads& gw, float const* x, float const* dout,
                float* dx, std::int64_t H, std::int64_t I) {
    da.assign(static_cast<std::size_t>(I), 0.0f);
    for (std::int64_t k = 0; k < H; ++k)
      for (std::int64_t i = 0; i < I; ++i) {
        da[i] += w.down_proj.weight.data()[k * I + i] * dout[k];
        gw.down_proj[k * I + i] += dout[k] * a[i];
      }
    dg.resize(static_cast<std::size_t>(I));
    dh.resize(static_cast<std::size_t>(I));
    swiglu_backward(dg.data(), dh.data(), da.data(), g.data(), h.data(), I);
    for (std::int64_t i = 0; i < I; ++i)
      for (std::int64_t k = 0; k < H; ++k) {
        gw.gate_proj[i * H + k] += dg[i] * x[k];
        gw.up_proj[i * H + k] += dh[i] * x[k];
        dx[k] += w.gate_proj.weight.data()[i * H + k] * dg[i] +
                 w.up_proj.weight.data()[i * H + k] * dh[i];
      }
  }
};

inline void zero_grads(SwiGluGrads& g, std::int64_t H, std::int64_t I) {
  g.gate_proj.assign(static_cast<std::size_t>(I * H), 0.0f);
  g.up_proj.assign(static_cast<std::size_t>(I * H), 0.0f);
  g.down_proj.assign(static_cast<std::size_t>(H * I), 0.0f);
}

}  // namespace detail

/// Zeroed gradients for config `cfg`'s MoE layer.
template <config::ModelConfig C>
MoeGrads zero_moe_grads(C const& cfg = {}) {
  std::int64_t const H = cfg.hidden_size, E = cfg.n_routed_experts;
  MoeGrads g;
  g.gate.assign(static_cast<std::size_t>(E * H), 0.0f);
  g.experts.resize(static_cast<std::size_t>(E));
  for (auto& e : g.experts)
    detail::zero_grads(e, H, cfg.moe_intermediate_size);
  detail::zero_grads(g.shared, H, config::shared_intermediate_size(cfg));
  return g;
}

/// Backward of moe_layer_forward for T tokens (file comment).
/// @param du    [T, H] fp32, out: dL/du
/// @param g     weight gradients, accumulated (zero_moe_grads to start)
/// @param dy    [T, H] fp32: dL/dy
/// @param u     [T, H] fp32: the forward input
/// @param w     the layer's weights (fp32)
/// @returns invalid_argument for mismatched shapes, a missing correction bias or a NaN logit.
template <config::ModelConfig C>
Status moe_layer_backward(MatrixView<float> du, MoeGrads& g, MatrixView<float const> dy,
                          MatrixView<float const> u, moe::MoeWeights<C> const& w,
                          C const& cfg = {}) {
  static_assert(
      std::is_same_v<typename C::weight_t, float> && std::is_same_v<typename C::act_t, float>,
      "moe_layer_backward: training runs with fp32 weights");
  std::int64_t const T = u.extent(0), H = cfg.hidden_size, E = cfg.n_routed_experts;
  std::int64_t const K = cfg.num_experts_per_tok, M = cfg.moe_intermediate_size;
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  if (u.extent(1) != H || dy.extent(0) != T || dy.extent(1) != H || du.extent(0) != T ||
      du.extent(1) != H || g.gate.size() != static_cast<std::size_t>(E * H) ||
      g.experts.size() != static_cast<std::size_t>(E)) {
    return invalid_argument("moe_layer_backward: u, dy and du must be [T, " + std::to_string(H) +
                            "] and the gradients those of zero_moe_grads");
  }
  if (config::has_correction_bias(cfg) && w.router.e_score_correction_bias.data() == nullptr) {
    return invalid_argument("moe_layer_backward: noaux_tc needs e_score_correction_bias");
  }
  // the forward's logits and choices (the same functions, so the same experts)
  std::vector<float> z(static_cast<std::size_t>(T * E));
  DEEPMOE_RETURN_IF_ERROR(moe::gate_logits<C>(
      MatrixView<float, kDyn, config::experts_extent<C>>::of(z.data(), T, E),
      MatrixView<float const, kDyn, config::hidden_extent<C>>::of(u.data(), T, H),
      w.router.gate_weight, cfg));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(K));
  std::vector<float> wts(static_cast<std::size_t>(K)), s(static_cast<std::size_t>(E)),
      ds(static_cast<std::size_t>(E)), dz(static_cast<std::size_t>(E)),
      dexp(static_cast<std::size_t>(H)), dw(static_cast<std::size_t>(K));
  detail::MlpRow row;
  bool const sigmoid = cfg.scoring_func == config::ScoringFunc::kSigmoid;
  float const rsf = static_cast<float>(cfg.routed_scaling_factor);
  for (std::int64_t t = 0; t < T; ++t) {
    float const* x = u.data() + t * H;
    float const* gy = dy.data() + t * H;
    float* gx = du.data() + t * H;
    float const* zt = z.data() + t * E;
    if (moe::select_experts_for_token<C>(ids.data(), wts.data(), zt,
                                         w.router.e_score_correction_bias.data(), nullptr,
                                         cfg) != moe::SelectResult::kOk) {
      return invalid_argument("moe_layer_backward: token " + std::to_string(t) +
                              " cannot be routed (NaN logit or too few experts)");
    }
    for (std::int64_t h = 0; h < H; ++h)
      gx[h] = 0.0f;
    // routed experts: weight gradients and input gradients, and dw_j = <dy, E_j(u)>
    for (std::int64_t j = 0; j < K; ++j) {
      auto const e = static_cast<std::size_t>(ids[static_cast<std::size_t>(j)]);
      row.forward(w.experts[e], x, H, M);
      float d = 0.0f;
      for (std::int64_t h = 0; h < H; ++h) {
        d += gy[h] * row.o[static_cast<std::size_t>(h)];
        dexp[static_cast<std::size_t>(h)] = wts[static_cast<std::size_t>(j)] * gy[h];
      }
      dw[static_cast<std::size_t>(j)] = d;
      row.backward(w.experts[e], g.experts[e], x, dexp.data(), gx, H, M);
    }
    if (SM > 0) {
      row.forward(w.shared_experts, x, H, SM);
      row.backward(w.shared_experts, g.shared, x, gy, gx, H, SM);
    }
    // router: scores, their gradient through the combine weights, then the logits'
    if (sigmoid) {
      for (std::int64_t e = 0; e < E; ++e)
        s[static_cast<std::size_t>(e)] = 1.0f / (1.0f + std::exp(-zt[e]));
    } else {
      float mx = zt[0], sum = 0.0f;
      for (std::int64_t e = 1; e < E; ++e)
        mx = zt[e] > mx ? zt[e] : mx;
      for (std::int64_t e = 0; e < E; ++e)
        sum += (s[static_cast<std::size_t>(e)] = std::exp(zt[e] - mx));
      for (auto& v : s)
        v /= sum;
    }
    std::fill(ds.begin(), ds.end(), 0.0f);
    if (cfg.norm_topk_prob) {
      float S = 0.0f, dot = 0.0f;
      for (std::int64_t j = 0; j < K; ++j)
        S += s[static_cast<std::size_t>(ids[static_cast<std::size_t>(j)])];
      S += 1e-20f;
      for (std::int64_t j = 0; j < K; ++j)
        dot += dw[static_cast<std::size_t>(j)] *
               s[static_cast<std::size_t>(ids[static_cast<std::size_t>(j)])] / S;
      for (std::int64_t j = 0; j < K; ++j)
        ds[static_cast<std::size_t>(ids[static_cast<std::size_t>(j)])] =
            rsf / S * (dw[static_cast<std::size_t>(j)] - dot);
    } else {
      for (std::int64_t j = 0; j < K; ++j)
        ds[static_cast<std::size_t>(ids[static_cast<std::size_t>(j)])] =
            rsf * dw[static_cast<std::size_t>(j)];
    }
    float sds = 0.0f;
    for (std::int64_t e = 0; e < E; ++e)
      sds += ds[static_cast<std::size_t>(e)] * s[static_cast<std::size_t>(e)];
    for (std::int64_t e = 0; e < E; ++e) {
      float const se = s[static_cast<std::size_t>(e)], de = ds[static_cast<std::size_t>(e)];
      dz[static_cast<std::size_t>(e)] = sigmoid ? de * se * (1.0f - se) : se * (de - sds);
    }
    for (std::int64_t e = 0; e < E; ++e) {
      float const d = dz[static_cast<std::size_t>(e)];
      float const* wg = w.router.gate_weight.data() + e * H;
      float* gg = g.gate.data() + e * H;
      for (std::int64_t h = 0; h < H; ++h) {
        gg[h] += d * x[h];
        gx[h] += wg[h] * d;
      }
    }
  }
  return {};
}

}  // namespace train
DEEPMOE_NAMESPACE_END
