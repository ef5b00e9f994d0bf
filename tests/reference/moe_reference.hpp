// SPDX-License-Identifier: Apache-2.0
/// @file moe_reference.hpp
/// @brief Naive double-precision reference of the MoE layer (router, experts, combine), written
/// directly from docs/model.md §3–§4 as plain loops, for checking the fast paths.
#pragma once

#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/moe/moe_layer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace deepmoe::reference {

/// The routing of one token, in double.
struct TokenRoute {
  std::vector<int> ids;         // [K], by (selection score desc, id asc)
  std::vector<double> weights;  // [K]
  /// Smallest gap between a chosen and a rejected candidate, at group level (TG-th vs
  /// (TG+1)-th group score) and expert level (k-th vs (k+1)-th selection score); +inf if none.
  double margin = std::numeric_limits<double>::infinity();
  bool ok = true;  // false: fewer than K eligible experts
};

/// Routes one token from its logits z[E] (double), bias b[E] (or empty) and mask (or empty).
template <class C>
TokenRoute route_token(std::vector<double> const& z, std::vector<double> const& b,
                       std::vector<std::uint8_t> const& mask) {
  constexpr int E = C::n_routed_experts, K = C::num_experts_per_tok, G = C::n_group;
  constexpr int EG = E / G;
  double const inf = std::numeric_limits<double>::infinity();
  std::vector<double> s(E), sc(E);
  if (C::scoring_func == config::ScoringFunc::kSigmoid) {
    for (int e = 0; e < E; ++e)
      s[e] = 1.0 / (1.0 + std::exp(-z[e]));
  } else {
    double const zmax = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (int e = 0; e < E; ++e)
      sum += std::exp(z[e] - zmax);
    for (int e = 0; e < E; ++e)
      s[e] = std::exp(z[e] - zmax) / sum;
  }
  bool const use_bias = C::topk_method == config::TopkMethod::kNoauxTc && !b.empty();
  for (int e = 0; e < E; ++e) {
    sc[e] = (!mask.empty() && mask[e]) ? -inf : s[e] + (use_bias ? b[e] : 0.0);
  }
  TokenRoute out;
  // order of candidates: value desc, index asc
  auto rank = [](std::vector<double> const& v) {
    std::vector<int> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int c) { return v[a] > v[c]; });
    return idx;
  };
  if (G > 1) {
    std::vector<double> gs(G);
    for (int g = 0; g < G; ++g) {
      std::vector<double> v(sc.begin() + g * EG, sc.begin() + (g + 1) * EG);
      std::sort(v.begin(), v.end(), std::greater<>());
      gs[g] = C::topk_method == config::TopkMethod::kNoauxTc ? v[0] + v[1] : v[0];
    }
    auto order = rank(gs);
    if (C::topk_group < G && std::isfinite(gs[order[C::topk_group - 1]])) {
      out.margin = std::min(out.margin, gs[order[C::topk_group - 1]] - gs[order[C::topk_group]]);
    }
    for (int r = C::topk_group; r < G; ++r) {
      for (int i = 0; i < EG; ++i)
        sc[order[r] * EG + i] = -inf;
    }
  }
  auto order = rank(sc);
  for (int j = 0; j < K; ++j) {
    if (sc[order[j]] == -inf)
      out.ok = false;
    out.ids.push_back(order[j]);
  }
  if (K < E && std::isfinite(sc[order[K - 1]])) {
    out.margin = std::min(out.margin, sc[order[K - 1]] - sc[order[K]]);
  }
  double sum = 0;
  for (int j = 0; j < K; ++j)
    sum += s[out.ids[j]];
  for (int j = 0; j < K; ++j) {
    double w = s[out.ids[j]];
    if (C::norm_topk_prob)
      w /= sum;
    out.weights.push_back(w * C::routed_scaling_factor);
  }
  return out;
}

/// y = W_down(silu(W_gate x) ⊙ W_up x) in double; W are [I, H], [I, H], [H, I] as doubles.
inline std::vector<double> swiglu_mlp(std::vector<double> const& x, std::vector<double> const& wg,
                                      std::vector<double> const& wu, std::vector<double> const& wd,
                                      std::int64_t H, std::int64_t I) {
  std::vector<double> a(static_cast<std::size_t>(I)), y(static_cast<std::size_t>(H), 0.0);
  for (std::int64_t i = 0; i < I; ++i) {
    double g = 0, u = 0;
    for (std::int64_t h = 0; h < H; ++h) {
      g += wg[i * H + h] * x[h];
      u += wu[i * H + h] * x[h];
    }
    a[i] = g / (1.0 + std::exp(-g)) * u;
  }
  for (std::int64_t h = 0; h < H; ++h) {
    double acc = 0;
    for (std::int64_t i = 0; i < I; ++i)
      acc += wd[h * I + i] * a[i];
    y[h] = acc;
  }
  return y;
}

/// A linear weight as doubles, fp8 weights dequantized with their block scales.
template <class W>
std::vector<double> to_double(LinearWeight<W> const& w, int block) {
  std::int64_t const rows = w.weight.extent(0), cols = w.weight.extent(1);
  std::vector<double> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      double v = to_float(w.weight(r, c));
      if constexpr (is_float8_v<W>)
        v *= w.weight_scale_inv(r / block, c / block);
      out[r * cols + c] = v;
    }
  }
  return out;
}

/// The whole layer for T tokens in double: y[t] = Σ_j w_j·Expert_j(u_t) + Shared(u_t).
/// Returns y [T·H] and fills `routes` with each token's reference routing.
template <class C, class Act>
std::vector<double> moe_layer(std::vector<TokenRoute>& routes,
                              MatrixView<Act const, kDyn, C::hidden_size> u,
                              moe::MoeWeights<C> const& w,
                              std::vector<std::uint8_t> const& mask = {}) {
  constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts, M = C::moe_intermediate_size;
  constexpr std::int64_t SM = config::Derived<C>::shared_intermediate_size;
  int const block = C::weight_block_size;
  std::int64_t const T = u.extent(0);
  std::vector<std::vector<double>> wg(E), wu(E), wd(E);
  for (std::int64_t e = 0; e < E; ++e) {
    wg[e] = to_double(w.experts[e].gate_proj, block);
    wu[e] = to_double(w.experts[e].up_proj, block);
    wd[e] = to_double(w.experts[e].down_proj, block);
  }
  std::vector<double> sg, su, sd;
  if (SM > 0) {
    sg = to_double(w.shared_experts.gate_proj, block);
    su = to_double(w.shared_experts.up_proj, block);
    sd = to_double(w.shared_experts.down_proj, block);
  }
  std::vector<double> bias;
  if (w.router.e_score_correction_bias.data()) {
    for (std::int64_t e = 0; e < E; ++e)
      bias.push_back(w.router.e_score_correction_bias(e));
  }
  std::vector<double> y(static_cast<std::size_t>(T * H), 0.0);
  routes.clear();
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> x(H), z(E, 0.0);
    for (std::int64_t h = 0; h < H; ++h)
      x[h] = to_float(u(t, h));
    for (std::int64_t e = 0; e < E; ++e) {
      for (std::int64_t h = 0; h < H; ++h)
        z[e] += double(to_float(w.router.gate_weight(e, h))) * x[h];
    }
    std::vector<std::uint8_t> m;
    if (!mask.empty()) {
      std::size_t const row = mask.size() == static_cast<std::size_t>(E) ? 0 : std::size_t(t);
      m.assign(mask.begin() + row * E, mask.begin() + (row + 1) * E);
    }
    routes.push_back(route_token<C>(z, bias, m));
    TokenRoute const& r = routes.back();
    for (int j = 0; j < C::num_experts_per_tok; ++j) {
      auto const o = swiglu_mlp(x, wg[r.ids[j]], wu[r.ids[j]], wd[r.ids[j]], H, M);
      for (std::int64_t h = 0; h < H; ++h)
        y[t * H + h] += r.weights[j] * o[h];
    }
    if (SM > 0) {
      auto const o = swiglu_mlp(x, sg, su, sd, H, SM);
      for (std::int64_t h = 0; h < H; ++h)
        y[t * H + h] += o[h];
    }
  }
  return y;
}

}  // namespace deepmoe::reference
