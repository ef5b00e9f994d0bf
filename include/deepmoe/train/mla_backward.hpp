// SPDX-License-Identifier: Apache-2.0
/// @file mla_backward.hpp
/// @brief Backward of Multi-head Latent Attention (naive form, one sequence, fp32 weights):
/// gradients of every projection and of both latent norms, and of the input, from dL/d(out).
///
/// With the forward of ops/mla_attention.hpp (recomputed here), per head h and query t:
///   dWo += dout ⊗ o;  do = Woᵀ·dout
///   dp_u = do·v_u;  ds_u = p_u·(dp_u − Σ p·dp)·scale;  dv_u += p_u·do
///   dq_nope += Σ_u ds_u·k_nope_u;  dk_nope_u += ds_u·q_nope;  same for q_pe / k_pe (shared)
///   RoPE, y = af·R(θ)·x:  dx = af·R(−θ)·dy;  RMSNorm and linear: train/backward.hpp
///   dkv = [dk_nope | dv] per head → kv_b_proj;  [dc | dk_pe_raw] → kv_a_layernorm, kv_a_proj;
///   dq → q_b_proj, q_a_layernorm, q_a_proj (q_lora_rank > 0) or q_proj
/// Sources: DeepSeek-V2 paper arXiv:2405.04434 §2.1; the chain rule.
#pragma once

#include <deepmoe/ops/mla_attention.hpp>
#include <deepmoe/train/backward.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// Gradients of one layer's attention weights, shaped as the weights (row-major).
struct MlaGrads {
  std::vector<float> q_a_proj, q_a_layernorm, q_b_proj, q_proj;
  std::vector<float> kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj;
};

/// Zeroed MLA gradients for config `cfg`.
template <config::ModelConfig C>
MlaGrads zero_mla_grads(C const& cfg = {}) {
  std::size_t const H = static_cast<std::size_t>(cfg.hidden_size);
  std::size_t const nh = static_cast<std::size_t>(cfg.num_attention_heads);
  std::size_t const dn = static_cast<std::size_t>(cfg.qk_nope_head_dim);
  std::size_t const dr = static_cast<std::size_t>(cfg.qk_rope_head_dim);
  std::size_t const dv = static_cast<std::size_t>(cfg.v_head_dim);
  std::size_t const rq = static_cast<std::size_t>(cfg.q_lora_rank);
  std::size_t const rkv = static_cast<std::size_t>(cfg.kv_lora_rank);
  MlaGrads g;
  if (rq > 0) {
    g.q_a_proj.assign(rq * H, 0.0f);
    g.q_a_layernorm.assign(rq, 0.0f);
    g.q_b_proj.assign(nh * (dn + dr) * rq, 0.0f);
  } else {
    g.q_proj.assign(nh * (dn + dr) * H, 0.0f);
  }
  g.kv_a_proj_with_mqa.assign((rkv + dr) * H, 0.0f);
  g.kv_a_layernorm.assign(rkv, 0.0f);
  g.kv_b_proj.assign(nh * (dn + dv) * rkv, 0.0f);
  g.o_proj.assign(H * nh * dv, 0.0f);
  return g;
}

namespace detail {
// dx = af·R(−θ)·dy on every dim-wide segment of each row (the transpose of apply_rope)
inline void rope_backward(float* d, std::int64_t T, std::int64_t W, std::int64_t dim,
                          std::int64_t const* pos, std::vector<float> const& inv_freq, float af) {
  for (std::int64_t t = 0; t < T; ++t) {
    float const p = static_cast<float>(pos[t]);
    float* row = d + t * W;
    for (std::int64_t i = 0; i < dim / 2; ++i) {
      float const theta = p * inv_freq[static_cast<std::size_t>(i)];
      float const c = std::cos(theta) * af, s = std::sin(theta) * af;
      for (std::int64_t j = 0; j < W; j += dim) {
        float const a = row[j + 2 * i], b = row[j + 2 * i + 1];
        row[j + 2 * i] = a * c + b * s;
        row[j + 2 * i + 1] = -a * s + b * c;
      }
    }
  }
}
inline MatrixView<float> mat(std::vector<float>& v, std::int64_t r, std::int64_t c) {
  v.assign(static_cast<std::size_t>(r * c), 0.0f);
  return MatrixView<float>(v.data(), r, c);
}
inline MatrixView<float const> cmat(std::vector<float> const& v, std::int64_t r, std::int64_t c) {
  return MatrixView<float const>(v.data(), r, c);
}
}  // namespace detail

/// Backward of mla_attention (naive form, no cache) for one sequence of T tokens.
/// @param dx         [T, H] fp32, out: dL/dx (x: the input-normalized hidden states)
/// @param g          weight gradients, accumulated (zero_mla_grads to start)
/// @param dout       [T, H] fp32: dL/d(out)
/// @param x          [T, H] fp32: the forward input
/// @param positions  [T] absolute positions
/// @param w          the layer's attention weights (fp32)
/// @returns the forward ops' errors; invalid_argument for mismatched shapes.
template <config::ModelConfig C>
Status mla_attention_backward(MatrixView<float> dx, MlaGrads& g, MatrixView<float const> dout,
                              MatrixView<float const> x, VectorView<std::int64_t const> positions,
                              MlaWeights<C> const& w, C const& cfg = {}) {
  static_assert(
      std::is_same_v<typename C::weight_t, float> && std::is_same_v<typename C::act_t, float>,
      "mla_attention_backward: training runs with fp32 weights");
  using detail::cmat;
  using detail::mat;
  std::int64_t const T = x.extent(0), H = cfg.hidden_size, nh = cfg.num_attention_heads;
  std::int64_t const dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
  std::int64_t const rq = cfg.q_lora_rank, rkv = cfg.kv_lora_rank, dq = dn + dr;
  if (x.extent(1) != H || dx.extent(0) != T || dx.extent(1) != H || dout.extent(0) != T ||
      dout.extent(1) != H || positions.extent(0) != T) {
    return invalid_argument("mla_attention_backward: x, dx and dout must be [T, " +
                            std::to_string(H) + "] with one position per row");
  }
  int const B = cfg.weight_block_size;
  double const eps = cfg.rms_norm_eps;
  auto W = [](LinearWeight<float> const& l) { return l.weight; };
  // ---- forward, keeping what backward needs
  std::vector<float> cq, cqn, q, kva, c, kpe, kv, o;
  if (rq > 0) {
    DEEPMOE_RETURN_IF_ERROR(linear(mat(cq, T, rq), x, w.q_a_proj, B, "self_attn.q_a_proj"));
    DEEPMOE_RETURN_IF_ERROR(rms_norm(mat(cqn, T, rq), cmat(cq, T, rq), w.q_a_layernorm, eps));
    DEEPMOE_RETURN_IF_ERROR(
        linear(mat(q, T, nh * dq), cmat(cqn, T, rq), w.q_b_proj, B, "self_attn.q_b_proj"));
  } else {
    DEEPMOE_RETURN_IF_ERROR(linear(mat(q, T, nh * dq), x, w.q_proj, B, "self_attn.q_proj"));
  }
  DEEPMOE_RETURN_IF_ERROR(
      linear(mat(kva, T, rkv + dr), x, w.kv_a_proj_with_mqa, B, "self_attn.kv_a_proj_with_mqa"));
  std::vector<float> craw(static_cast<std::size_t>(T * rkv));
  mat(kpe, T, dr);
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < rkv; ++i)
      craw[static_cast<std::size_t>(t * rkv + i)] =
          kva[static_cast<std::size_t>(t * (rkv + dr) + i)];
    for (std::int64_t i = 0; i < dr; ++i)
      kpe[static_cast<std::size_t>(t * dr + i)] =
          kva[static_cast<std::size_t>(t * (rkv + dr) + rkv + i)];
  }
  DEEPMOE_RETURN_IF_ERROR(rms_norm(mat(c, T, rkv), cmat(craw, T, rkv), w.kv_a_layernorm, eps));
  std::vector<float> const inv_freq =
      rope_inv_freq(static_cast<int>(dr), cfg.rope_theta, cfg.rope_scaling);
  VectorView<float const> const f(inv_freq.data(), dr / 2);
  double const af = yarn_attention_factor(cfg.rope_scaling);
  DEEPMOE_RETURN_IF_ERROR(apply_rope(MatrixView<float>(kpe.data(), T, dr), positions, f, af));
  std::vector<float> qpe(static_cast<std::size_t>(T * nh * dr));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < nh; ++h)
      for (std::int64_t i = 0; i < dr; ++i)
        qpe[static_cast<std::size_t>((t * nh + h) * dr + i)] =
            q[static_cast<std::size_t>(t * nh * dq + h * dq + dn + i)];
  DEEPMOE_RETURN_IF_ERROR(apply_rope(MatrixView<float>(qpe.data(), T, nh * dr), positions, f, af));
  DEEPMOE_RETURN_IF_ERROR(
      linear(mat(kv, T, nh * (dn + dv)), cmat(c, T, rkv), w.kv_b_proj, B, "self_attn.kv_b_proj"));
  float const scale = static_cast<float>(mla_softmax_scale(static_cast<int>(dq), cfg.rope_scaling));
  std::vector<float> P(static_cast<std::size_t>(nh * T * T), 0.0f);  // softmax rows
  mat(o, T, nh * dv);
  for (std::int64_t h = 0; h < nh; ++h) {
    for (std::int64_t t = 0; t < T; ++t) {
      float* p = P.data() + (h * T + t) * T;
      float mx = -std::numeric_limits<float>::infinity();
      for (std::int64_t u = 0; u < T; ++u) {
        if (positions(u) > positions(t)) {
          continue;
        }
        float s = 0.0f;
        for (std::int64_t i = 0; i < dn; ++i)
          s += q[static_cast<std::size_t>(t * nh * dq + h * dq + i)] *
               kv[static_cast<std::size_t>(u * nh * (dn + dv) + h * (dn + dv) + i)];
        for (std::int64_t i = 0; i < dr; ++i)
          s += qpe[static_cast<std::size_t>((t * nh + h) * dr + i)] *
               kpe[static_cast<std::size_t>(u * dr + i)];
        p[u] = s * scale;
        mx = p[u] > mx ? p[u] : mx;
      }
      float sum = 0.0f;
      for (std::int64_t u = 0; u < T; ++u) {
        p[u] = positions(u) > positions(t) ? 0.0f : std::exp(p[u] - mx);
        sum += p[u];
      }
      for (std::int64_t u = 0; u < T; ++u) {
        p[u] /= sum;
        for (std::int64_t j = 0; j < dv; ++j)
          o[static_cast<std::size_t>(t * nh * dv + h * dv + j)] +=
              p[u] * kv[static_cast<std::size_t>(u * nh * (dn + dv) + h * (dn + dv) + dn + j)];
      }
    }
  }
  // ---- backward
  std::vector<float> dO;
  DEEPMOE_RETURN_IF_ERROR(linear_backward(mat(dO, T, nh * dv),
                                          MatrixView<float>(g.o_proj.data(), H, nh * dv), dout,
                                          cmat(o, T, nh * dv), W(w.o_proj)));
  std::vector<float> dq_(static_cast<std::size_t>(T * nh * dq), 0.0f),
      dqpe(static_cast<std::size_t>(T * nh * dr), 0.0f), dkv(kv.size(), 0.0f),
      dkpe(kpe.size(), 0.0f), dp(static_cast<std::size_t>(T));
  for (std::int64_t h = 0; h < nh; ++h) {
    for (std::int64_t t = 0; t < T; ++t) {
      float const* p = P.data() + (h * T + t) * T;
      float const* go = dO.data() + t * nh * dv + h * dv;
      float pdp = 0.0f;
      for (std::int64_t u = 0; u < T; ++u) {
        float d = 0.0f;
        for (std::int64_t j = 0; j < dv; ++j) {
          std::size_t const vi =
              static_cast<std::size_t>(u * nh * (dn + dv) + h * (dn + dv) + dn + j);
          d += go[j] * kv[vi];
          dkv[vi] += p[u] * go[j];
        }
        dp[static_cast<std::size_t>(u)] = d;
        pdp += p[u] * d;
      }
      for (std::int64_t u = 0; u < T; ++u) {
        float const ds = p[u] * (dp[static_cast<std::size_t>(u)] - pdp) * scale;
        if (ds == 0.0f) {
          continue;
        }
        for (std::int64_t i = 0; i < dn; ++i) {
          std::size_t const qi = static_cast<std::size_t>(t * nh * dq + h * dq + i);
          std::size_t const ki = static_cast<std::size_t>(u * nh * (dn + dv) + h * (dn + dv) + i);
          dq_[qi] += ds * kv[ki];
          dkv[ki] += ds * q[qi];
        }
        for (std::int64_t i = 0; i < dr; ++i) {
          std::size_t const qi = static_cast<std::size_t>((t * nh + h) * dr + i);
          std::size_t const ki = static_cast<std::size_t>(u * dr + i);
          dqpe[qi] += ds * kpe[ki];
          dkpe[ki] += ds * qpe[qi];
        }
      }
    }
  }
  // RoPE backward, into the raw q_pe slots of dq and the raw k_pe part of dkva
  detail::rope_backward(dqpe.data(), T, nh * dr, dr, positions.data(), inv_freq,
                        static_cast<float>(af));
  detail::rope_backward(dkpe.data(), T, dr, dr, positions.data(), inv_freq, static_cast<float>(af));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < nh; ++h)
      for (std::int64_t i = 0; i < dr; ++i)
        dq_[static_cast<std::size_t>(t * nh * dq + h * dq + dn + i)] =
            dqpe[static_cast<std::size_t>((t * nh + h) * dr + i)];
  std::vector<float> dc, dcraw;
  DEEPMOE_RETURN_IF_ERROR(
      linear_backward(mat(dc, T, rkv), MatrixView<float>(g.kv_b_proj.data(), nh * (dn + dv), rkv),
                      cmat(dkv, T, nh * (dn + dv)), cmat(c, T, rkv), W(w.kv_b_proj)));
  DEEPMOE_RETURN_IF_ERROR(
      rms_norm_backward(mat(dcraw, T, rkv), VectorView<float>(g.kv_a_layernorm.data(), rkv),
                        cmat(dc, T, rkv), cmat(craw, T, rkv), w.kv_a_layernorm, eps));
  std::vector<float> dkva(static_cast<std::size_t>(T * (rkv + dr)));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < rkv; ++i)
      dkva[static_cast<std::size_t>(t * (rkv + dr) + i)] =
          dcraw[static_cast<std::size_t>(t * rkv + i)];
    for (std::int64_t i = 0; i < dr; ++i)
      dkva[static_cast<std::size_t>(t * (rkv + dr) + rkv + i)] =
          dkpe[static_cast<std::size_t>(t * dr + i)];
  }
  std::vector<float> dx_kv;
  DEEPMOE_RETURN_IF_ERROR(
      linear_backward(mat(dx_kv, T, H), MatrixView<float>(g.kv_a_proj_with_mqa.data(), rkv + dr, H),
                      cmat(dkva, T, rkv + dr), x, W(w.kv_a_proj_with_mqa)));
  std::vector<float> dx_q;
  if (rq > 0) {
    std::vector<float> dcqn, dcq;
    DEEPMOE_RETURN_IF_ERROR(
        linear_backward(mat(dcqn, T, rq), MatrixView<float>(g.q_b_proj.data(), nh * dq, rq),
                        cmat(dq_, T, nh * dq), cmat(cqn, T, rq), W(w.q_b_proj)));
    DEEPMOE_RETURN_IF_ERROR(
        rms_norm_backward(mat(dcq, T, rq), VectorView<float>(g.q_a_layernorm.data(), rq),
                          cmat(dcqn, T, rq), cmat(cq, T, rq), w.q_a_layernorm, eps));
    DEEPMOE_RETURN_IF_ERROR(linear_backward(mat(dx_q, T, H),
                                            MatrixView<float>(g.q_a_proj.data(), rq, H),
                                            cmat(dcq, T, rq), x, W(w.q_a_proj)));
  } else {
    DEEPMOE_RETURN_IF_ERROR(linear_backward(mat(dx_q, T, H),
                                            MatrixView<float>(g.q_proj.data(), nh * dq, H),
                                            cmat(dq_, T, nh * dq), x, W(w.q_proj)));
  }
  for (std::int64_t i = 0; i < T * H; ++i)
    dx.data()[i] = dx_q[static_cast<std::size_t>(i)] + dx_kv[static_cast<std::size_t>(i)];
  return {};
}

}  // namespace train
DEEPMOE_NAMESPACE_END
