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

/// What the backward of one sequence's attention reads from its forward (one per sequence in
/// flight; mla_train_forward fills it, the buffers are reused across calls).
struct MlaActivations {
  std::vector<float> cq, cqn;  ///< [T, rq] q_a_proj's output and its norm (q_lora_rank > 0)
  std::vector<float> q;        ///< [T, nh·(dn + dr)] the queries before RoPE
  std::vector<float> craw, c;  ///< [T, rkv] the latent before and after kv_a_layernorm
  std::vector<float> kpe;      ///< [T, dr] the rotated shared key
  std::vector<float> qpe;      ///< [T, nh·dr] the rotated query parts
  std::vector<float> kv;       ///< [T, nh·(dn + dv)] kv_b_proj's keys and values
  std::vector<float> P;        ///< [nh, T, T] the softmax rows
  std::vector<float> o;        ///< [T, nh·dv] the heads' outputs, before o_proj
  /// Bytes held.
  std::size_t bytes() const { return detail::bytes_of(cq, cqn, q, craw, c, kpe, qpe, kv, P, o); }
};

namespace detail {
template <config::ModelConfig C>
Status mla_shapes(char const* fn, std::int64_t T, MatrixView<float const> x, std::int64_t r0,
                  std::int64_t c0, std::int64_t r1, std::int64_t c1,
                  VectorView<std::int64_t const> positions, C const& cfg) {
  std::int64_t const H = cfg.hidden_size;
  if (x.extent(1) != H || r0 != T || c0 != H || r1 != T || c1 != H || positions.extent(0) != T) {
    std::string m = fn;
    m += ": x, the output and its gradient must be [T, ";
    m += std::to_string(H);
    m += "] with one position per row";
    return invalid_argument(std::move(m));
  }
  return {};
}
}  // namespace detail

/// The attention forward of one sequence of T tokens for training: out = mla_attention's output
/// (naive form, no cache; the same math, its own loops) with the activations kept in `a`.
/// @param out        [T, H] fp32, out
/// @param a          out: the activations mla_attention_backward reads
/// @param x          [T, H] fp32: the input-normalized hidden states
/// @param positions  [T] absolute positions (a token attends to rows at positions ≤ its own)
/// @param w          the layer's attention weights (fp32 or bf16, read as fp32)
/// @returns the ops' errors; invalid_argument for mismatched shapes.
template <config::ModelConfig C>
Status mla_train_forward(MatrixView<float> out, MlaActivations& a, MatrixView<float const> x,
                         VectorView<std::int64_t const> positions, MlaWeights<C> const& w,
                         C const& cfg = {}) {
  static_assert(detail::trainable<C>, "mla_train_forward: fp32 or bf16 weights");
  using detail::cmat;
  using detail::mat;
  std::int64_t const T = x.extent(0), H = cfg.hidden_size, nh = cfg.num_attention_heads;
  std::int64_t const dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
  std::int64_t const rq = cfg.q_lora_rank, rkv = cfg.kv_lora_rank, dq = dn + dr;
  DEEPMOE_RETURN_IF_ERROR(detail::mla_shapes("mla_train_forward", T, x, out.extent(0),
                                             out.extent(1), T, H, positions, cfg));
  int const B = cfg.weight_block_size;
  double const eps = cfg.rms_norm_eps;
  auto& [cq, cqn, q, craw, c, kpe, qpe, kv, P, o] = a;
  std::vector<float> kva;
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
  craw.resize(static_cast<std::size_t>(T * rkv));
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
  qpe.resize(static_cast<std::size_t>(T * nh * dr));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < nh; ++h)
      for (std::int64_t i = 0; i < dr; ++i)
        qpe[static_cast<std::size_t>((t * nh + h) * dr + i)] =
            q[static_cast<std::size_t>(t * nh * dq + h * dq + dn + i)];
  DEEPMOE_RETURN_IF_ERROR(apply_rope(MatrixView<float>(qpe.data(), T, nh * dr), positions, f, af));
  DEEPMOE_RETURN_IF_ERROR(
      linear(mat(kv, T, nh * (dn + dv)), cmat(c, T, rkv), w.kv_b_proj, B, "self_attn.kv_b_proj"));
  float const scale = static_cast<float>(mla_softmax_scale(static_cast<int>(dq), cfg.rope_scaling));
  P.assign(static_cast<std::size_t>(nh * T * T), 0.0f);  // softmax rows
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
  return linear(out, cmat(o, T, nh * dv), w.o_proj, B, "self_attn.o_proj");
}

/// Backward of mla_attention (naive form, no cache) for one sequence of T tokens, from the
/// activations its mla_train_forward kept.
/// @param dx         [T, H] fp32, out: dL/dx (x: the input-normalized hidden states)
/// @param g          weight gradients, accumulated (zero_mla_grads to start)
/// @param dout       [T, H] fp32: dL/d(out)
/// @param a          the forward's activations
/// @param x          [T, H] fp32: the forward input
/// @param positions  [T] absolute positions
/// @param w          the layer's attention weights (fp32 or bf16, read as fp32)
/// @returns the ops' errors; invalid_argument for mismatched shapes.
template <config::ModelConfig C>
Status mla_attention_backward(MatrixView<float> dx, MlaGrads& g, MatrixView<float const> dout,
                              MlaActivations const& a, MatrixView<float const> x,
                              VectorView<std::int64_t const> positions, MlaWeights<C> const& w,
                              C const& cfg = {}) {
  static_assert(detail::trainable<C>, "mla_attention_backward: fp32 or bf16 weights");
  using detail::cmat;
  using detail::mat;
  std::int64_t const T = x.extent(0), H = cfg.hidden_size, nh = cfg.num_attention_heads;
  std::int64_t const dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
  std::int64_t const rq = cfg.q_lora_rank, rkv = cfg.kv_lora_rank, dq = dn + dr;
  DEEPMOE_RETURN_IF_ERROR(detail::mla_shapes("mla_attention_backward", T, x, dx.extent(0),
                                             dx.extent(1), dout.extent(0), dout.extent(1),
                                             positions, cfg));
  if (a.o.size() != static_cast<std::size_t>(T * nh * dv)) {
    return invalid_argument("mla_attention_backward: the activations are not this input's");
  }
  double const eps = cfg.rms_norm_eps;
  auto W = [](auto const& l) { return l.weight; };
  auto const& [cq, cqn, q, craw, c, kpe, qpe, kv, P, o] = a;
  std::vector<float> const inv_freq =
      rope_inv_freq(static_cast<int>(dr), cfg.rope_theta, cfg.rope_scaling);
  double const af = yarn_attention_factor(cfg.rope_scaling);
  float const scale = static_cast<float>(mla_softmax_scale(static_cast<int>(dq), cfg.rope_scaling));
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

/// Backward of mla_attention for one sequence, recomputing its forward (mla_train_forward):
/// gradient checkpointing's form. Parameters as above, without the activations.
template <config::ModelConfig C>
Status mla_attention_backward(MatrixView<float> dx, MlaGrads& g, MatrixView<float const> dout,
                              MatrixView<float const> x, VectorView<std::int64_t const> positions,
                              MlaWeights<C> const& w, C const& cfg = {}) {
  MlaActivations a;
  std::vector<float> out(static_cast<std::size_t>(x.extent(0) * cfg.hidden_size));
  DEEPMOE_RETURN_IF_ERROR(mla_train_forward<C>(
      MatrixView<float>(out.data(), x.extent(0), cfg.hidden_size), a, x, positions, w, cfg));
  return mla_attention_backward<C>(dx, g, dout, a, x, positions, w, cfg);
}

}  // namespace train
DEEPMOE_NAMESPACE_END
