// SPDX-License-Identifier: Apache-2.0
/// @file moe_backward.hpp
/// @brief Backward of the DeepSeekMoE layer (fp32 or bf16 weights, fp32 arithmetic): gradients of
/// the routed experts, the shared experts and the router's gate weight, and of the layer input,
/// from dL/dy.
///
/// Forward, per token t (docs/model.md §3–§4): z = W_gate·u, s = σ(z) or softmax(z), the ids
/// chosen from s + b (no gradient flows through the choice, nor into the bias b, which
/// aux-loss-free balancing sets), w_j = rsf·s_{id_j}/(Σ_k s_{id_k} + 1e-20) (norm_topk_prob) or
/// rsf·s_{id_j}, y = Σ_j w_j·E_{id_j}(u) + Shared(u). Backward:
///   d(expert input) = w_j·dy through the SwiGLU backward;  dw_j = ⟨dy, E_{id_j}(u)⟩
///   ds_k = rsf/S·(dw_k − Σ_j dw_j·s_j/S)  (normalized, S = Σ s)  |  rsf·dw_k
///   dz = ds ⊙ s ⊙ (1 − s) (sigmoid)  |  s ⊙ (ds − ⟨ds, s⟩) (softmax over all E)
///   dW_gate += dz ⊗ u;  du += W_gateᵀ·dz + Σ expert input gradients + the shared experts'
/// Each expert runs as GEMMs over its gathered tokens (in token order; experts in id order,
/// then the shared experts, each adding its input gradient), and every sum has a fixed order,
/// so results do not depend on the thread count. Checked against finite differences of the double
/// reference layer.
#pragma once

#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/ops/linear.hpp>
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

// One SwiGLU MLP over n gathered rows x [n, H] (I its width): the forward keeps g = x·W_gᵀ,
// h = x·W_uᵀ, a = silu(g)⊙h and o = a·W_dᵀ; the backward takes dout [n, H], accumulates the
// weight gradients and writes dx [n, H]. GEMMs through linear() / linear_backward().
struct MlpRows {
  std::vector<float> x, g, h, a, o, dout, da, dg, dh, dx, dx2;
  std::size_t bytes() const { return bytes_of(x, g, h, a, o, dout, da, dg, dh, dx, dx2); }
  template <class W>
  Status forward(SwiGluWeights<W> const& w, std::int64_t n, std::int64_t H, std::int64_t I) {
    auto const nI = static_cast<std::size_t>(n * I);
    g.resize(nI);
    h.resize(nI);
    a.resize(nI);
    o.resize(static_cast<std::size_t>(n * H));
    auto const xv = MatrixView<float const>(x.data(), n, H);
    DEEPMOE_RETURN_IF_ERROR(linear(MatrixView<float>(g.data(), n, I), xv, w.gate_proj, 0));
    DEEPMOE_RETURN_IF_ERROR(linear(MatrixView<float>(h.data(), n, I), xv, w.up_proj, 0));
    for (std::size_t i = 0; i < nI; ++i)
      a[i] = g[i] / (1.0f + std::exp(-g[i])) * h[i];
    return linear(MatrixView<float>(o.data(), n, H), MatrixView<float const>(a.data(), n, I),
                  w.down_proj, 0);
  }
  template <class W>
  Status backward(SwiGluWeights<W> const& w, SwiGluGrads& gw, std::int64_t n, std::int64_t H,
                  std::int64_t I) {
    auto const nI = static_cast<std::size_t>(n * I);
    auto const nH = static_cast<std::size_t>(n * H);
    da.resize(nI);
    dg.resize(nI);
    dh.resize(nI);
    dx.resize(nH);
    dx2.resize(nH);
    auto const xv = MatrixView<float const>(x.data(), n, H);
    DEEPMOE_RETURN_IF_ERROR(linear_backward(
        MatrixView<float>(da.data(), n, I), MatrixView<float>(gw.down_proj.data(), H, I),
        MatrixView<float const>(dout.data(), n, H), MatrixView<float const>(a.data(), n, I),
        MatrixView<W const>(w.down_proj.weight.data(), H, I)));
    swiglu_backward(dg.data(), dh.data(), da.data(), g.data(), h.data(),
                    static_cast<std::int64_t>(nI));
    DEEPMOE_RETURN_IF_ERROR(linear_backward(MatrixView<float>(dx.data(), n, H),
                                            MatrixView<float>(gw.gate_proj.data(), I, H),
                                            MatrixView<float const>(dg.data(), n, I), xv,
                                            MatrixView<W const>(w.gate_proj.weight.data(), I, H)));
    DEEPMOE_RETURN_IF_ERROR(linear_backward(MatrixView<float>(dx2.data(), n, H),
                                            MatrixView<float>(gw.up_proj.data(), I, H),
                                            MatrixView<float const>(dh.data(), n, I), xv,
                                            MatrixView<W const>(w.up_proj.weight.data(), I, H)));
    for (std::size_t i = 0; i < nH; ++i)
      dx[i] += dx2[i];
    return {};
  }
};

// s = σ(z) or softmax(z) over the E logits of one token; returns Σ s.
template <config::ModelConfig C>
float scores(float* s, float const* z, C const& cfg) {
  std::int64_t const E = cfg.n_routed_experts;
  float sum = 0.0f;
  if (cfg.scoring_func == config::ScoringFunc::kSigmoid) {
    for (std::int64_t e = 0; e < E; ++e)
      sum += (s[e] = 1.0f / (1.0f + std::exp(-z[e])));
    return sum;
  }
  float mx = z[0];
  for (std::int64_t e = 1; e < E; ++e)
    mx = z[e] > mx ? z[e] : mx;
  for (std::int64_t e = 0; e < E; ++e)
    sum += (s[e] = std::exp(z[e] - mx));
  for (std::int64_t e = 0; e < E; ++e)
    s[e] /= sum;
  return 1.0f;
}

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

/// The complementary sequence-wise balance loss of one sequence's routing, without its weight α
/// (arXiv:2412.19437 §2.1.2, eqs. 17–20): Σ_i f_i·P_i with
///   f_i = E/(K·T)·|{t : i ∈ topk(t)}|,   P_i = (1/T)·Σ_t s_{i,t}/Σ_j s_{j,t}
/// (s the sigmoid or softmax scores). 1 when the load is uniform and the scores too.
/// @param ids     [T, K] the chosen experts
/// @param logits  [T, E] the gate logits z (s = σ(z) or softmax(z))
template <config::ModelConfig C>
double sequence_balance_loss(std::int32_t const* ids, float const* logits, std::int64_t T,
                             C const& cfg = {}) {
  std::int64_t const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  std::vector<double> f(static_cast<std::size_t>(E), 0.0), P(static_cast<std::size_t>(E), 0.0);
  std::vector<float> sc(static_cast<std::size_t>(E));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t j = 0; j < K; ++j)
      f[static_cast<std::size_t>(ids[t * K + j])] += 1.0;
    float const S = detail::scores<C>(sc.data(), logits + t * E, cfg);
    for (std::int64_t e = 0; e < E; ++e)
      P[static_cast<std::size_t>(e)] += sc[static_cast<std::size_t>(e)] / S;
  }
  double L = 0;
  for (std::int64_t e = 0; e < E; ++e)
    L += f[static_cast<std::size_t>(e)] * static_cast<double>(E) / static_cast<double>(K * T) *
         P[static_cast<std::size_t>(e)] / static_cast<double>(T);
  return L;
}

/// What the backward of one sequence's MoE layer reads from its forward (moe_train_forward
/// fills it; the buffers are reused across calls).
struct MoeActivations {
  std::vector<float> z;                         ///< [T, E] gate logits
  std::vector<std::int32_t> ids;                ///< [T, K] the chosen experts
  std::vector<float> wts;                       ///< [T, K] their combine weights
  std::vector<std::int64_t> slot;               ///< [T, K] the row of (t, j) in its expert's batch
  std::vector<std::vector<std::int64_t>> rows;  ///< [E] the t·K + j gathered by each expert
  std::vector<detail::MlpRows> experts;         ///< [E] each expert over its rows
  detail::MlpRows shared;                       ///< the shared experts over every token
  /// Bytes held.
  std::size_t bytes() const {
    std::size_t n = detail::bytes_of(z, ids, wts, slot, rows, experts) + shared.bytes();
    for (auto const& r : rows)
      n += detail::bytes_of(r);
    for (auto const& e : experts)
      n += e.bytes();
    return n;
  }
};

/// The MoE layer's forward for training, over T tokens: y = Σ_j w_j·E_{id_j}(u) + Shared(u)
/// (file comment; the same gate and selection functions as moe_layer_forward, so the same
/// experts; each expert's GEMMs over its gathered tokens), keeping the activations in `a`.
/// Per token the sum runs j = 0…K−1, then the shared experts.
/// @param y  [T, H] fp32, out
/// @param a  out: the activations moe_layer_backward reads
/// @param u  [T, H] fp32: the layer input (post-attention-normed)
/// @param w  the layer's weights (fp32 or bf16)
/// @returns invalid_argument for mismatched shapes, a missing correction bias or a token that
///          cannot be routed (NaN logit).
template <config::ModelConfig C>
Status moe_train_forward(MatrixView<float> y, MoeActivations& a, MatrixView<float const> u,
                         moe::MoeWeights<C> const& w, C const& cfg = {}) {
  static_assert(detail::trainable<C>, "moe_train_forward: fp32 or bf16 weights");
  std::int64_t const T = u.extent(0), H = cfg.hidden_size, E = cfg.n_routed_experts;
  std::int64_t const K = cfg.num_experts_per_tok, M = cfg.moe_intermediate_size;
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  if (u.extent(1) != H || y.extent(0) != T || y.extent(1) != H) {
    return invalid_argument("moe_train_forward: u and y must be [T, " + std::to_string(H) + "]");
  }
  if (config::has_correction_bias(cfg) && w.router.e_score_correction_bias.data() == nullptr) {
    return invalid_argument("moe_train_forward: noaux_tc needs e_score_correction_bias");
  }
  a.z.resize(static_cast<std::size_t>(T * E));
  DEEPMOE_RETURN_IF_ERROR(moe::gate_logits<C>(
      MatrixView<float, kDyn, config::experts_extent<C>>::of(a.z.data(), T, E),
      MatrixView<float const, kDyn, config::hidden_extent<C>>::of(u.data(), T, H),
      w.router.gate_weight, cfg));
  a.ids.resize(static_cast<std::size_t>(T * K));
  a.wts.resize(static_cast<std::size_t>(T * K));
  a.slot.resize(static_cast<std::size_t>(T * K));
  for (std::int64_t t = 0; t < T; ++t) {
    if (moe::select_experts_for_token<C>(
            a.ids.data() + t * K, a.wts.data() + t * K, a.z.data() + t * E,
            w.router.e_score_correction_bias.data(), nullptr, cfg) != moe::SelectResult::kOk) {
      return invalid_argument("moe_train_forward: token " + std::to_string(t) +
                              " cannot be routed (NaN logit or too few experts)");
    }
  }
  a.rows.assign(static_cast<std::size_t>(E), {});
  for (std::int64_t i = 0; i < T * K; ++i) {  // token order within each expert
    auto& r = a.rows[static_cast<std::size_t>(a.ids[static_cast<std::size_t>(i)])];
    a.slot[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(r.size());
    r.push_back(i);
  }
  a.experts.resize(static_cast<std::size_t>(E));
  for (std::int64_t e = 0; e < E; ++e) {
    auto const& rows = a.rows[static_cast<std::size_t>(e)];
    detail::MlpRows& m = a.experts[static_cast<std::size_t>(e)];
    auto const n = static_cast<std::int64_t>(rows.size());
    m.x.resize(static_cast<std::size_t>(n * H));
    for (std::int64_t r = 0; r < n; ++r)
      std::copy_n(u.data() + rows[static_cast<std::size_t>(r)] / K * H, H, m.x.data() + r * H);
    if (n > 0) {
      DEEPMOE_RETURN_IF_ERROR(m.forward(w.experts[static_cast<std::size_t>(e)], n, H, M));
    }
  }
  if (SM > 0) {
    a.shared.x.assign(u.data(), u.data() + T * H);
    DEEPMOE_RETURN_IF_ERROR(a.shared.forward(w.shared_experts, T, H, SM));
  }
  for (std::int64_t t = 0; t < T; ++t) {
    float* yt = y.data() + t * H;
    std::fill(yt, yt + H, 0.0f);
    for (std::int64_t j = 0; j < K; ++j) {
      auto const i = static_cast<std::size_t>(t * K + j);
      float const wj = a.wts[i];
      float const* o = a.experts[static_cast<std::size_t>(a.ids[i])].o.data() + a.slot[i] * H;
      for (std::int64_t h = 0; h < H; ++h)
        yt[h] += wj * o[h];
    }
    for (std::int64_t h = 0; SM > 0 && h < H; ++h)
      yt[h] += a.shared.o[static_cast<std::size_t>(t * H + h)];
  }
  return {};
}

/// Backward of the MoE layer for T tokens (file comment), from the activations its
/// moe_train_forward kept (their backward scratch is reused, hence non-const).
/// @param du    [T, H] fp32, out: dL/du
/// @param g     weight gradients, accumulated (zero_moe_grads to start)
/// @param dy    [T, H] fp32: dL/dy
/// @param a     the forward's activations
/// @param u     [T, H] fp32: the forward input
/// @param w     the layer's weights (fp32 or bf16)
/// @param balance_alpha  α: the tokens are one sequence and α·sequence_balance_loss is part of
///                       the loss (its gradient flows through the scores into the gate); 0: none
/// @returns invalid_argument for mismatched shapes or activations of another input.
template <config::ModelConfig C>
Status moe_layer_backward(MatrixView<float> du, MoeGrads& g, MatrixView<float const> dy,
                          MoeActivations& a, MatrixView<float const> u, moe::MoeWeights<C> const& w,
                          C const& cfg = {}, double balance_alpha = 0.0) {
  static_assert(detail::trainable<C>, "moe_layer_backward: fp32 or bf16 weights");
  std::int64_t const T = u.extent(0), H = cfg.hidden_size, E = cfg.n_routed_experts;
  std::int64_t const K = cfg.num_experts_per_tok, M = cfg.moe_intermediate_size;
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  if (u.extent(1) != H || dy.extent(0) != T || dy.extent(1) != H || du.extent(0) != T ||
      du.extent(1) != H || g.gate.size() != static_cast<std::size_t>(E * H) ||
      g.experts.size() != static_cast<std::size_t>(E)) {
    return invalid_argument("moe_layer_backward: u, dy and du must be [T, " + std::to_string(H) +
                            "] and the gradients those of zero_moe_grads");
  }
  if (a.ids.size() != static_cast<std::size_t>(T * K) ||
      a.experts.size() != static_cast<std::size_t>(E)) {
    return invalid_argument("moe_layer_backward: the activations are not this input's");
  }
  std::vector<float> const& z = a.z;
  std::vector<std::int32_t> const& ids = a.ids;
  std::vector<float> const& wts = a.wts;
  std::vector<float> dwts(static_cast<std::size_t>(T * K));
  std::fill(du.data(), du.data() + T * H, 0.0f);
  // each routed expert over its tokens (in token order): d(expert input) from w_j·dy, and
  // dw_j = <dy, E_j(u)>; then the shared experts over every token
  for (std::int64_t e = 0; e < E; ++e) {
    auto const& rows = a.rows[static_cast<std::size_t>(e)];
    if (rows.empty()) {
      continue;
    }
    detail::MlpRows& m = a.experts[static_cast<std::size_t>(e)];
    auto const n = static_cast<std::int64_t>(rows.size());
    m.dout.resize(static_cast<std::size_t>(n * H));
    for (std::int64_t r = 0; r < n; ++r) {
      auto const i = static_cast<std::size_t>(rows[static_cast<std::size_t>(r)]);
      float const* gy = dy.data() + static_cast<std::int64_t>(i) / K * H;
      float d = 0.0f;
      for (std::int64_t h = 0; h < H; ++h) {
        d += gy[h] * m.o[static_cast<std::size_t>(r * H + h)];
        m.dout[static_cast<std::size_t>(r * H + h)] = wts[i] * gy[h];
      }
      dwts[i] = d;
    }
    DEEPMOE_RETURN_IF_ERROR(m.backward(w.experts[static_cast<std::size_t>(e)],
                                       g.experts[static_cast<std::size_t>(e)], n, H, M));
    for (std::int64_t r = 0; r < n; ++r) {
      float* gx = du.data() + rows[static_cast<std::size_t>(r)] / K * H;
      for (std::int64_t h = 0; h < H; ++h)
        gx[h] += m.dx[static_cast<std::size_t>(r * H + h)];
    }
  }
  if (SM > 0) {
    a.shared.dout.assign(dy.data(), dy.data() + T * H);
    DEEPMOE_RETURN_IF_ERROR(a.shared.backward(w.shared_experts, g.shared, T, H, SM));
    for (std::int64_t i = 0; i < T * H; ++i)
      du.data()[i] += a.shared.dx[static_cast<std::size_t>(i)];
  }
  std::vector<float> s(static_cast<std::size_t>(E)), ds(static_cast<std::size_t>(E)),
      dz(static_cast<std::size_t>(E));
  bool const sigmoid = cfg.scoring_func == config::ScoringFunc::kSigmoid;
  float const rsf = static_cast<float>(cfg.routed_scaling_factor);
  std::vector<float> bal(static_cast<std::size_t>(E), 0.0f);  // α·f_i/T
  for (std::int32_t id : ids)
    bal[static_cast<std::size_t>(id)] +=
        static_cast<float>(balance_alpha * static_cast<double>(E) / static_cast<double>(K * T) /
                           static_cast<double>(T));
  for (std::int64_t t = 0; t < T; ++t) {
    float const* x = u.data() + t * H;
    float* gx = du.data() + t * H;
    float const* zt = z.data() + t * E;
    std::int32_t const* idt = ids.data() + t * K;
    float const* dw = dwts.data() + t * K;
    // router: scores, their gradient through the combine weights (and the balance loss), then
    // the logits'
    float const S_all = detail::scores<C>(s.data(), zt, cfg);
    std::fill(ds.begin(), ds.end(), 0.0f);
    if (cfg.norm_topk_prob) {
      float S = 0.0f, dot = 0.0f;
      for (std::int64_t j = 0; j < K; ++j)
        S += s[static_cast<std::size_t>(idt[j])];
      S += 1e-20f;
      for (std::int64_t j = 0; j < K; ++j)
        dot += dw[j] * s[static_cast<std::size_t>(idt[j])] / S;
      for (std::int64_t j = 0; j < K; ++j)
        ds[static_cast<std::size_t>(idt[j])] = rsf / S * (dw[j] - dot);
    } else {
      for (std::int64_t j = 0; j < K; ++j)
        ds[static_cast<std::size_t>(idt[j])] = rsf * dw[j];
    }
    if (balance_alpha != 0.0) {  // d(α·Σ f_i·P_i)/ds_k = (g_k − Σ_i g_i·s_i/S)/S, g_i = α·f_i/T
      float dot = 0.0f;
      for (std::int64_t e = 0; e < E; ++e)
        dot += bal[static_cast<std::size_t>(e)] * s[static_cast<std::size_t>(e)] / S_all;
      for (std::int64_t e = 0; e < E; ++e)
        ds[static_cast<std::size_t>(e)] += (bal[static_cast<std::size_t>(e)] - dot) / S_all;
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
      auto const* wg = w.router.gate_weight.data() + e * H;
      float* gg = g.gate.data() + e * H;
      for (std::int64_t h = 0; h < H; ++h) {
        gg[h] += d * x[h];
        gx[h] += static_cast<float>(wg[h]) * d;
      }
    }
  }
  return {};
}

/// Backward of the MoE layer for T tokens, recomputing its forward (moe_train_forward): gradient
/// checkpointing's form. Parameters as above, without the activations.
/// @returns moe_train_forward's and the backward's errors.
template <config::ModelConfig C>
Status moe_layer_backward(MatrixView<float> du, MoeGrads& g, MatrixView<float const> dy,
                          MatrixView<float const> u, moe::MoeWeights<C> const& w, C const& cfg = {},
                          double balance_alpha = 0.0) {
  MoeActivations a;
  std::vector<float> y(static_cast<std::size_t>(u.extent(0) * cfg.hidden_size));
  DEEPMOE_RETURN_IF_ERROR(moe_train_forward<C>(
      MatrixView<float>(y.data(), u.extent(0), cfg.hidden_size), a, u, w, cfg));
  return moe_layer_backward<C>(du, g, dy, a, u, w, cfg, balance_alpha);
}

}  // namespace train
DEEPMOE_NAMESPACE_END
