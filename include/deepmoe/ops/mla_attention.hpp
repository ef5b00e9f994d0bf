// SPDX-License-Identifier: Apache-2.0
/// @file mla_attention.hpp
/// @brief Multi-head Latent Attention on the CPU (prefill of one sequence): the naive per-head
/// form and the absorbed form, which agree.
///
/// For tokens x_t [H] (already input-normalized) at absolute positions p_t:
///   q      = W_qb·RMSNorm_qa(W_qa·x)  (q_lora_rank > 0)  |  W_q·x  (q_lora_rank = 0)
///            head-major: q[h] = [q_nope[h] (dn) | q_pe[h] (dr)]
///   a      = W_kva·x = [latent (rkv) | rope part (dr)];  c = RMSNorm_kva(latent)
///   k_pe   = RoPE(rope part, p_t) (shared by all heads);  q_pe[h] = RoPE(q_pe[h], p_t)
///   kv     = W_kvb·c, head-major: kv[h] = [k_nope[h] (dn) | v[h] (dv)]
///   s[h,t,u] = scale·(q_nope[h,t]·k_nope[h,u] + q_pe[h,t]·k_pe[u]),  allowed iff p_u ≤ p_t
///   o[h,t] = Σ_u softmax_u(s[h,t,·])·v[h,u];  out = W_o·concat_h o[h,t]
/// with scale = (dn+dr)^−0.5·mscale² (mla_softmax_scale). The absorbed form folds
/// W_UK[h] (kv_b rows of k_nope[h]) into the query, q̃[h] = W_UK[h]ᵀ·q_nope[h] ∈ R^rkv, scores
/// q̃·c_u + q_pe·k_pe_u over the 576-wide latent cache, ctx = Σ p·c_u, o[h] = W_UV[h]·ctx —
/// the same math, other rounding (DeepSeek's decode form).
/// Softmax and sums in fp32, keys in increasing index order. Norms use the config's
/// rms_norm_eps (Hugging Face builds q_a/kv_a norms with 1e-6 whatever the config: docs/model.md
/// §6). Sources: DeepSeek-V2 paper arXiv:2405.04434 §2.1; DeepSeek-V3 inference/model.py `MLA`.
#pragma once

#include <deepmoe/config/derived.hpp>
#include <deepmoe/ops/linear.hpp>
#include <deepmoe/ops/rms_norm.hpp>
#include <deepmoe/ops/rope_yarn.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN

/// The attention weights of one layer (views of `self_attn.*`).
template <config::ModelConfig C>
struct MlaWeights {
  static_assert(config::validate<C>());
  using W = typename C::weight_t;
  using A = typename C::act_t;
  LinearWeight<W> q_a_proj;            ///< [rq, H], q_lora_rank > 0
  VectorView<A const> q_a_layernorm;   ///< [rq], q_lora_rank > 0
  LinearWeight<W> q_b_proj;            ///< [nh·(dn+dr), rq], q_lora_rank > 0
  LinearWeight<W> q_proj;              ///< [nh·(dn+dr), H], q_lora_rank = 0
  LinearWeight<W> kv_a_proj_with_mqa;  ///< [rkv+dr, H]
  VectorView<A const> kv_a_layernorm;  ///< [rkv]
  LinearWeight<W> kv_b_proj;           ///< [nh·(dn+dv), rkv]
  LinearWeight<W> o_proj;              ///< [H, nh·dv]
};

/// One sequence's rows of the latent KV cache for one layer: row p holds position p's
/// [c (rkv) | rotated k_pe (dr)] in KV (DeepSeek-V3: 576 values). Host memory. A view with
/// null rows means "no cache".
template <class KV>
struct MlaCacheRows {
  KV* rows = nullptr;         ///< [capacity, rkv + dr]
  std::int64_t capacity = 0;  ///< rows [tokens]
};

/// Which of the two equal forms of MLA to compute.
enum class MlaForm {
  kNaive,     ///< per-head keys and values from W_kvb·c
  kAbsorbed,  ///< W_UK into the query, W_UV after attention over the latent
};

/// MLA over T tokens of one sequence, each attending to the tokens at or before its position.
/// Without a cache the keys are these T tokens. With one, the tokens' [c | k_pe] rows are
/// written (rounded to KV) at their positions, and the keys are cache rows 0..p_last — the
/// earlier tokens of the sequence, cached by earlier calls, and these; a query at position p
/// sees rows ≤ p. A token's output is then the same whether it came in one call or in pieces
/// (bitwise for an fp32 cache).
/// @tparam KV        cache element type (float or bfloat16)
/// @param out        [T, H] fp32, out
/// @param x          [T, H] fp32, in: the input-normalized hidden states
/// @param positions  [T] absolute positions ≥ 0 [tokens] (e.g. start_pos + i); consecutive
///                   with a cache
/// @param w          this layer's attention weights
/// @param form       naive or absorbed
/// @param cfg        the config (sizes, eps, RoPE; omitted for compile-time configs)
/// @param cache      this sequence's cache rows for this layer, or none
/// @returns invalid_argument for mismatched rows, null views, misshaped weights or bad fp8
///          scales (naming the tensor), a negative position, or (with a cache) positions that
///          are not consecutive; kOutOfRange when a position is beyond the cache's capacity.
/// @pre with a cache, rows below positions(0) hold this sequence's earlier tokens.
template <config::ModelConfig C, class KV = float>
Status mla_attention(MatrixView<float, kDyn, config::hidden_extent<C>> out,
                     MatrixView<float const, kDyn, config::hidden_extent<C>> x,
                     VectorView<std::int64_t const> positions, MlaWeights<C> const& w,
                     MlaForm form = MlaForm::kNaive, C const& cfg = {},
                     MlaCacheRows<KV> cache = {}) {
  static_assert(config::validate<C>());
  std::int64_t const H = cfg.hidden_size, nh = cfg.num_attention_heads;
  std::int64_t const dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
  std::int64_t const rq = cfg.q_lora_rank, rkv = cfg.kv_lora_rank, dq = dn + dr;
  int const B = cfg.weight_block_size;
  std::int64_t const T = x.extent(0);
  if (out.extent(1) != H || x.extent(1) != H) {
    return invalid_argument("mla_attention: out has " + std::to_string(out.extent(1)) +
                            " columns and x " + std::to_string(x.extent(1)) +
                            ", expected hidden_size = " + std::to_string(H));
  }
  if (out.extent(0) != T || positions.extent(0) != T) {
    return invalid_argument("mla_attention: out has " + std::to_string(out.extent(0)) +
                            " rows and positions " + std::to_string(positions.extent(0)) +
                            ", x has " + std::to_string(T));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("mla_attention", "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("mla_attention", "out", out.data(), out.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("mla_attention", "positions", positions.data(), T));
  auto check_norm = [](char const* name, auto const& v, std::int64_t n) -> Status {
    if (v.data() != nullptr && v.extent(0) == n) {
      return {};
    }
    // (appends, not operator+: GCC 12 warns falsely, -Wrestrict, on "literal" + string chains)
    std::string m = "mla_attention: self_attn.";
    m += name;
    m += ".weight has ";
    m += std::to_string(v.data() != nullptr ? v.extent(0) : 0);
    m += v.data() != nullptr ? " elements, expected " : " elements (null), expected ";
    m += std::to_string(n);
    return invalid_argument(std::move(m));
  };
  DEEPMOE_RETURN_IF_ERROR(check_norm("kv_a_layernorm", w.kv_a_layernorm, rkv));
  if (T == 0) {
    return {};
  }
  auto v2 = [](std::vector<float>& v, std::int64_t r, std::int64_t c) {
    v.resize(static_cast<std::size_t>(r * c));
    return MatrixView<float>(v.data(), r, c);
  };
  double const eps = cfg.rms_norm_eps;

  // queries [T, nh·(dn+dr)]
  std::vector<float> q, cq;
  if (rq > 0) {
    DEEPMOE_RETURN_IF_ERROR(check_norm("q_a_layernorm", w.q_a_layernorm, rq));
    DEEPMOE_RETURN_IF_ERROR(linear(v2(cq, T, rq), MatrixView<float const>(x.data(), T, H),
                                   w.q_a_proj, B, "self_attn.q_a_proj"));
    DEEPMOE_RETURN_IF_ERROR(
        rms_norm(v2(cq, T, rq), MatrixView<float const>(cq.data(), T, rq), w.q_a_layernorm, eps));
    DEEPMOE_RETURN_IF_ERROR(linear(v2(q, T, nh * dq), MatrixView<float const>(cq.data(), T, rq),
                                   w.q_b_proj, B, "self_attn.q_b_proj"));
  } else {
    DEEPMOE_RETURN_IF_ERROR(linear(v2(q, T, nh * dq), MatrixView<float const>(x.data(), T, H),
                                   w.q_proj, B, "self_attn.q_proj"));
  }
  // latent c [T, rkv] and rotated k_pe [T, dr]
  std::vector<float> kva, c, kpe, qpe;
  DEEPMOE_RETURN_IF_ERROR(linear(v2(kva, T, rkv + dr), MatrixView<float const>(x.data(), T, H),
                                 w.kv_a_proj_with_mqa, B, "self_attn.kv_a_proj_with_mqa"));
  v2(c, T, rkv);
  v2(kpe, T, dr);
  v2(qpe, T, nh * dr);
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < rkv; ++i)
      c[t * rkv + i] = kva[t * (rkv + dr) + i];
    for (std::int64_t i = 0; i < dr; ++i)
      kpe[t * dr + i] = kva[t * (rkv + dr) + rkv + i];
    for (std::int64_t h = 0; h < nh; ++h) {
      for (std::int64_t i = 0; i < dr; ++i)
        qpe[(t * nh + h) * dr + i] = q[t * nh * dq + h * dq + dn + i];
    }
  }
  DEEPMOE_RETURN_IF_ERROR(
      rms_norm(v2(c, T, rkv), MatrixView<float const>(c.data(), T, rkv), w.kv_a_layernorm, eps));
  std::vector<float> const inv_freq = rope_inv_freq(dr, cfg.rope_theta, cfg.rope_scaling);
  double const af = yarn_attention_factor(cfg.rope_scaling);
  VectorView<float const> const f(inv_freq.data(), dr / 2);
  DEEPMOE_RETURN_IF_ERROR(apply_rope(MatrixView<float>(kpe.data(), T, dr), positions, f, af));
  DEEPMOE_RETURN_IF_ERROR(apply_rope(MatrixView<float>(qpe.data(), T, nh * dr), positions, f, af));
  float const scale = static_cast<float>(mla_softmax_scale(dq, cfg.rope_scaling));

  // the keys: these tokens, or the cache rows up to the last position (with these written)
  std::int64_t Tk = T;
  std::vector<std::int64_t> key_pos(positions.data(), positions.data() + T);
  if (cache.rows != nullptr) {
    std::int64_t const p0 = positions(0), end = p0 + T;
    for (std::int64_t t = 0; t < T; ++t) {
      if (positions(t) != p0 + t) {
        return invalid_argument(
            "mla_attention: with a KV cache the positions must be "
            "consecutive; position[" +
            std::to_string(t) + "] = " + std::to_string(positions(t)) + " after " +
            std::to_string(p0 + t - 1));
      }
    }
    if (p0 < 0 || end > cache.capacity) {
      return Status(StatusCode::kOutOfRange, "mla_attention: positions " + std::to_string(p0) +
                                                 ".." + std::to_string(end - 1) +
                                                 " exceed the KV cache's capacity of " +
                                                 std::to_string(cache.capacity) + " tokens");
    }
    std::int64_t const dc = rkv + dr;
    for (std::int64_t t = 0; t < T; ++t) {  // round into the cache: [c | k_pe]
      KV* row = cache.rows + (p0 + t) * dc;
      for (std::int64_t i = 0; i < rkv; ++i)
        row[i] = from_float<KV>(c[static_cast<std::size_t>(t * rkv + i)]);
      for (std::int64_t i = 0; i < dr; ++i)
        row[rkv + i] = from_float<KV>(kpe[static_cast<std::size_t>(t * dr + i)]);
    }
    Tk = end;
    key_pos.resize(static_cast<std::size_t>(Tk));
    v2(c, Tk, rkv);
    v2(kpe, Tk, dr);
    for (std::int64_t u = 0; u < Tk; ++u) {  // every key as read back from the cache
      key_pos[static_cast<std::size_t>(u)] = u;
      KV const* row = cache.rows + u * dc;
      for (std::int64_t i = 0; i < rkv; ++i)
        c[static_cast<std::size_t>(u * rkv + i)] = to_float(row[i]);
      for (std::int64_t i = 0; i < dr; ++i)
        kpe[static_cast<std::size_t>(u * dr + i)] = to_float(row[rkv + i]);
    }
  }

  std::vector<float> o(static_cast<std::size_t>(T * nh * dv));
  std::vector<float> kv, wkvb;
  if (form == MlaForm::kNaive) {
    DEEPMOE_RETURN_IF_ERROR(linear(v2(kv, Tk, nh * (dn + dv)),
                                   MatrixView<float const>(c.data(), Tk, rkv), w.kv_b_proj, B,
                                   "self_attn.kv_b_proj"));
  } else {
    DEEPMOE_RETURN_IF_ERROR(
        check_linear_weight("self_attn.kv_b_proj", w.kv_b_proj, nh * (dn + dv), rkv, B));
    wkvb.resize(static_cast<std::size_t>(nh * (dn + dv) * rkv));
    float const* p = cpu::weight_panel(wkvb.data(), w.kv_b_proj, 0, nh * (dn + dv), B);
    if (p != wkvb.data())
      std::copy(p, p + wkvb.size(), wkvb.data());
  }

  DEEPMOE_OMP(omp parallel)
  {
    std::vector<float> sc(static_cast<std::size_t>(Tk)), qt(static_cast<std::size_t>(rkv)),
        ctx(static_cast<std::size_t>(rkv));
    DEEPMOE_OMP(omp for schedule(dynamic))
    for (std::int64_t ht = 0; ht < nh * T; ++ht) {
      std::int64_t const h = ht / T, t = ht % T;
      float const* qn = q.data() + t * nh * dq + h * dq;  // q_nope[h, t]
      float const* qp = qpe.data() + (t * nh + h) * dr;   // rotated q_pe[h, t]
      if (form == MlaForm::kAbsorbed) {                   // q̃ = W_UK[h]ᵀ q_nope
        for (std::int64_t r = 0; r < rkv; ++r)
          qt[static_cast<std::size_t>(r)] = 0.0f;
        for (std::int64_t i = 0; i < dn; ++i) {
          float const* wk = wkvb.data() + (h * (dn + dv) + i) * rkv;
          for (std::int64_t r = 0; r < rkv; ++r)
            qt[static_cast<std::size_t>(r)] += qn[i] * wk[r];
        }
      }
      float mx = -std::numeric_limits<float>::infinity();
      std::int64_t const pt = positions(t);
      for (std::int64_t u = 0; u < Tk; ++u) {
        if (key_pos[static_cast<std::size_t>(u)] > pt) {
          sc[static_cast<std::size_t>(u)] = -std::numeric_limits<float>::infinity();
          continue;
        }
        float s = 0.0f;
        if (form == MlaForm::kNaive) {
          float const* kn = kv.data() + u * nh * (dn + dv) + h * (dn + dv);
          for (std::int64_t i = 0; i < dn; ++i)
            s += qn[i] * kn[i];
        } else {
          float const* cu = c.data() + u * rkv;
          for (std::int64_t r = 0; r < rkv; ++r)
            s += qt[static_cast<std::size_t>(r)] * cu[r];
        }
        for (std::int64_t i = 0; i < dr; ++i)
          s += qp[i] * kpe[u * dr + i];
        s *= scale;
        sc[static_cast<std::size_t>(u)] = s;
        mx = s > mx ? s : mx;
      }
      float sum = 0.0f;
      for (std::int64_t u = 0; u < Tk; ++u) {
        float const e = key_pos[static_cast<std::size_t>(u)] > pt
                            ? 0.0f
                            : std::exp(sc[static_cast<std::size_t>(u)] - mx);
        sc[static_cast<std::size_t>(u)] = e;
        sum += e;
      }
      float* ot = o.data() + (t * nh + h) * dv;
      if (form == MlaForm::kNaive) {
        for (std::int64_t j = 0; j < dv; ++j)
          ot[j] = 0.0f;
        for (std::int64_t u = 0; u < Tk; ++u) {
          float const p = sc[static_cast<std::size_t>(u)] / sum;
          float const* vu = kv.data() + u * nh * (dn + dv) + h * (dn + dv) + dn;
          for (std::int64_t j = 0; j < dv; ++j)
            ot[j] += p * vu[j];
        }
      } else {
        for (std::int64_t r = 0; r < rkv; ++r)
          ctx[static_cast<std::size_t>(r)] = 0.0f;
        for (std::int64_t u = 0; u < Tk; ++u) {
          float const p = sc[static_cast<std::size_t>(u)] / sum;
          float const* cu = c.data() + u * rkv;
          for (std::int64_t r = 0; r < rkv; ++r)
            ctx[static_cast<std::size_t>(r)] += p * cu[r];
        }
        for (std::int64_t j = 0; j < dv; ++j) {  // o = W_UV[h] ctx
          float const* wv = wkvb.data() + (h * (dn + dv) + dn + j) * rkv;
          float s = 0.0f;
          for (std::int64_t r = 0; r < rkv; ++r)
            s += wv[r] * ctx[static_cast<std::size_t>(r)];
          ot[j] = s;
        }
      }
    }
  }
  return linear(MatrixView<float>(out.data(), T, H), MatrixView<float const>(o.data(), T, nh * dv),
                w.o_proj, B, "self_attn.o_proj");
}

DEEPMOE_NAMESPACE_END
