// SPDX-License-Identifier: Apache-2.0
/// @file mla_reference.hpp
/// @brief Random MLA weights and the naive Multi-head Latent Attention in double, written from
/// the math of docs/model.md (DeepSeek-V2 paper §2.1), for checking the fast paths and the
/// backward pass. Assumes a YaRN attention factor of 1 (true for the configs the tests use).
#pragma once

#include <deepmoe/ops/mla_attention.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "reference/moe_reference.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

namespace deepmoe::reference {

/// Random attention weights of config C (owned), with `w` viewing them.
template <class C>
struct RandomMla {
  using W = typename C::weight_t;
  using A = typename C::act_t;
  static constexpr std::int64_t H = C::hidden_size, nh = C::num_attention_heads;
  static constexpr std::int64_t dq = C::qk_nope_head_dim + C::qk_rope_head_dim;
  static constexpr std::int64_t rq = C::q_lora_rank, rkv = C::kv_lora_rank;
  static constexpr std::int64_t dr = C::qk_rope_head_dim;
  static constexpr std::int64_t dkv = C::qk_nope_head_dim + C::v_head_dim;
  static constexpr int B = C::weight_block_size > 0 ? C::weight_block_size : 128;
  std::vector<util::OwnedLinear<W>> lin;
  std::vector<A> qn, kvn;
  MlaWeights<C> w;
  explicit RandomMla(std::uint64_t seed) {
    auto add = [&](std::int64_t r, std::int64_t c) {
      lin.emplace_back(seed + lin.size(), r, c, 1.0f / std::sqrt(float(c)), B);
    };
    add(rq > 0 ? rq : 1, H);
    add(nh * dq, rq > 0 ? rq : H);
    add(rkv + dr, H);
    add(nh * dkv, rkv);
    add(H, nh * C::v_head_dim);
    util::Rng rng(seed);
    for (std::int64_t i = 0; i < (rq > 0 ? rq : 1); ++i)
      qn.push_back(from_float<A>(1 + 0.2f * rng.uniform()));
    for (std::int64_t i = 0; i < rkv; ++i)
      kvn.push_back(from_float<A>(1 + 0.2f * rng.uniform()));
    if constexpr (rq > 0) {
      w.q_a_proj = lin[0].view();
      w.q_b_proj = lin[1].view();
      w.q_a_layernorm = VectorView<A const>(qn.data(), rq);
    } else {
      w.q_proj = lin[1].view();
    }
    w.kv_a_proj_with_mqa = lin[2].view();
    w.kv_b_proj = lin[3].view();
    w.o_proj = lin[4].view();
    w.kv_a_layernorm = VectorView<A const>(kvn.data(), rkv);
  }
};

/// y = W·x in double for a [r, c] weight.
inline std::vector<double> mv(std::vector<double> const& W, std::vector<double> const& x,
                              std::int64_t r, std::int64_t c) {
  std::vector<double> y(static_cast<std::size_t>(r), 0.0);
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      y[i] += W[i * c + j] * x[j];
  return y;
}
inline std::vector<double> norm(std::vector<double> v, double eps, auto const& w) {
  double ss = 0;
  for (double a : v)
    ss += a * a;
  double const r = 1 / std::sqrt(ss / v.size() + eps);
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] *= r * to_float(w[i]);
  return v;
}
inline void rope(double* v, std::int64_t d, double pos, std::vector<float> const& f) {
  for (std::int64_t i = 0; i < d / 2; ++i) {
    double const th = static_cast<float>(pos) * f[i];
    double const a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * std::cos(th) - b * std::sin(th);
    v[2 * i + 1] = a * std::sin(th) + b * std::cos(th);
  }
}

/// The naive MLA in double.
template <class C>
std::vector<double> reference_mla(RandomMla<C> const& m, std::vector<float> const& x,
                                  std::vector<std::int64_t> const& pos) {
  using R = RandomMla<C>;
  std::int64_t const T = static_cast<std::int64_t>(pos.size());
  constexpr std::int64_t H = R::H, nh = R::nh, dq = R::dq, rq = R::rq, rkv = R::rkv, dr = R::dr;
  constexpr std::int64_t dn = C::qk_nope_head_dim, dv = C::v_head_dim;
  int const B = C::weight_block_size;
  auto W = [&](int i) {
    return reference::to_double(m.lin[static_cast<std::size_t>(i)].view(), B);
  };
  auto const wqa = W(0), wqb = W(1), wkva = W(2), wkvb = W(3), wo = W(4);
  auto const f = rope_inv_freq(dr, C::rope_theta, C::rope_scaling);
  double const scale = mla_softmax_scale(dq, C::rope_scaling);
  std::vector<std::vector<double>> q(T), c(T), kpe(T), kv(T);
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> xt(x.begin() + t * H, x.begin() + (t + 1) * H);
    q[t] = rq > 0 ? mv(wqb, norm(mv(wqa, xt, rq, H), C::rms_norm_eps, m.qn), nh * dq, rq)
                  : mv(wqb, xt, nh * dq, H);
    auto a = mv(wkva, xt, rkv + dr, H);
    c[t] = norm(std::vector<double>(a.begin(), a.begin() + rkv), C::rms_norm_eps, m.kvn);
    kpe[t].assign(a.begin() + rkv, a.end());
    rope(kpe[t].data(), dr, pos[t], f);
    for (std::int64_t h = 0; h < nh; ++h)
      rope(q[t].data() + h * dq + dn, dr, pos[t], f);
    kv[t] = mv(wkvb, c[t], nh * (dn + dv), rkv);
  }
  std::vector<double> out(static_cast<std::size_t>(T * H));
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> o(static_cast<std::size_t>(nh * dv), 0.0);
    for (std::int64_t h = 0; h < nh; ++h) {
      std::vector<double> s(T, -INFINITY);
      double mx = -INFINITY;
      for (std::int64_t u = 0; u < T; ++u) {
        if (pos[u] > pos[t])
          continue;
        double v = 0;
        for (std::int64_t i = 0; i < dn; ++i)
          v += q[t][h * dq + i] * kv[u][h * (dn + dv) + i];
        for (std::int64_t i = 0; i < dr; ++i)
          v += q[t][h * dq + dn + i] * kpe[u][i];
        s[u] = v * scale;
        mx = std::max(mx, s[u]);
      }
      double sum = 0;
      for (auto& v : s)
        sum += (v = std::isinf(v) ? 0 : std::exp(v - mx));
      for (std::int64_t u = 0; u < T; ++u)
        for (std::int64_t j = 0; j < dv; ++j)
          o[h * dv + j] += s[u] / sum * kv[u][h * (dn + dv) + dn + j];
    }
    auto const y = mv(wo, o, H, nh * dv);
    std::copy(y.begin(), y.end(), out.begin() + t * H);
  }
  return out;
}

}  // namespace deepmoe::reference
