// SPDX-License-Identifier: Apache-2.0
/// @file mtp_backward.hpp
/// @brief The Multi-Token-Prediction loss of module 0 (arXiv:2412.19437 §2.2; spec §4) and its
/// gradient, for training (fp32 or bf16 weights, fp32 arithmetic). For each sequence of T tokens
/// t_1…t_T with main-model final-normed hidden states x_1…x_T, at the positions i = 1…T−1:
///   h'_i = eh_proj·[enorm(Emb_mtp(t_{i+1})); hnorm(x_i)]        (embedding half first)
///   h''  = the module's decoder layer over h' (positions 0…T−2, as the main forward)
///   L_mtp = mean over the counted targets of −log softmax(head(norm(h''_i)))[target_{i+1}]
/// where target_{i+1} is the token two after position i. The backward runs the chain in reverse
/// and adds d/dx_i to the main model's final-norm gradient. Emb_mtp and head are the main
/// model's embedding and lm_head, shared as in DeepSeek-V3 (arXiv:2412.19437 §2.2; transformers'
/// MtpModel ties them too): their gradients add to the main model's, and the checkpoint's
/// copies (`model.layers.{L}.embed_tokens`, `shared_head.head`) are kept equal to them
/// (Parameters::sync_copies). shared_head.norm is the module's own. The balance loss does not
/// apply to the module's MoE layer.
#pragma once

#include <deepmoe/model/decoder_layer.hpp>
#include <deepmoe/train/layer_backward.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// Gradients of one MTP module's own weights (its embedding and head are the main model's).
struct MtpGrads {
  std::vector<float> enorm, hnorm, eh_proj;  ///< [H], [H], [H, 2H]
  LayerGrads layer;                          ///< its decoder layer
  std::vector<float> shared_head_norm;       ///< [H]

  /// Every tensor with its checkpoint name (`prefix`: "model.layers.{L}.").
  std::vector<NamedGrad> named(std::string const& prefix) {
    std::vector<NamedGrad> out{{prefix + "enorm.weight", enorm},
                               {prefix + "hnorm.weight", hnorm},
                               {prefix + "eh_proj.weight", eh_proj}};
    auto const l = named_grads(layer, prefix);
    out.insert(out.end(), l.begin(), l.end());
    out.push_back({prefix + "shared_head.norm.weight", shared_head_norm});
    return out;
  }
};

/// Zeroed gradients of config `cfg`'s MTP module 0.
template <config::ModelConfig C>
MtpGrads zero_mtp_grads(C const& cfg = {}) {
  auto const H = static_cast<std::size_t>(cfg.hidden_size);
  MtpGrads g;
  g.enorm.assign(H, 0.0f);
  g.hnorm.assign(H, 0.0f);
  g.eh_proj.assign(2 * H * H, 0.0f);
  g.layer = zero_layer_grads<C>(cfg.num_hidden_layers, cfg);
  g.shared_head_norm.assign(H, 0.0f);
  return g;
}

/// Scratch of mtp_loss (reused across calls): M = Σ (T_s − 1) module rows.
struct MtpScratch {
  /// [M, H] x_i, Emb(t_{i+1}), its enorm, then h', h'', norm(h'') (or hnorm(x) during the
  /// forward); [M, 2H] the concatenation; [M, V] logits and their gradient; and the gradients
  std::vector<float> x, e, en, cat, hp, hq, y, z, dz, dy, dhq, dhp, dcat, dn, dd;
  std::vector<std::int32_t> next, targets;  ///< [M] t_{i+1} and the token two ahead
  std::vector<std::int64_t> rows;           // main-model row of each module row
  std::vector<float> unused;                // the gradient arguments of a call without gradients
  /// [sequences] the module layer's activations, kept from the forward to the backward (or,
  /// when recomputing, released after the forward; acts[0] is then the backward's scratch)
  std::vector<LayerActivations> acts;
  std::vector<std::vector<std::int32_t>> ids;  ///< [sequences] the module layer's expert ids
  std::vector<Status> status;                  ///< [sequences] their forward's
  std::vector<std::int64_t> load;              ///< [E] the module layer's tokens per expert (MoE)
  std::size_t kept_bytes = 0;                  ///< activations the forward kept for the backward
};

/// L_mtp of a batch (file comment) and, with `g`, λ times its gradient: added to `g`, to the
/// main model's embedding and head gradients, and to `dx` (the main model's d/d(final-normed
/// hidden), [N, H]).
/// @param loss, count  out: L_mtp (mean, nats) and the targets it counts
/// @param x        [N, H] the main model's final-normed hidden states, sequences back to back
/// @param first    [B + 1] the first row of each sequence, then N
/// @param tokens, targets, positions  [N] the main model's rows
/// @param embed, head    the main model's embedding [V, H] and lm_head (shared)
/// @param d_embed, d_head  their gradients [V·H] (the same vector when tied), accumulated
/// @param m        the module's own weights
/// @param ls       layer scratch (holds the config)
/// @param recompute  keep no layer activations from the forward and recompute them in the
///                   backward (LossOptions::recompute), or keep every sequence's
/// @returns the errors of the ops (named "model.layers.{L}").
template <config::ModelConfig C>
Status mtp_loss(double& loss, std::int64_t& count, MatrixView<float> dx, MtpGrads* g, double lambda,
                MatrixView<float const> x, std::span<std::int64_t const> first,
                std::span<std::int32_t const> tokens, std::span<std::int32_t const> targets,
                std::span<std::int64_t const> positions, MatrixView<typename C::act_t const> embed,
                LinearWeight<typename C::act_t> const& head, std::vector<float>& d_embed,
                std::vector<float>& d_head, model::MtpWeights<C> const& m,
                model::DecoderLayerScratch<C>& ls, MtpScratch& s, bool recompute = true) {
  C const& cfg = ls.moe.config();
  std::int64_t const H = cfg.hidden_size, V = cfg.vocab_size;
  double const eps = cfg.rms_norm_eps;
  std::string const name = "model.layers." + std::to_string(cfg.num_hidden_layers);
  // module rows: positions 0…T−2 of each sequence
  s.rows.clear();
  s.next.clear();
  s.targets.clear();
  std::vector<model::Sequence> seqs;
  std::vector<std::int64_t> mfirst{0};
  for (std::size_t b = 0; b + 1 < first.size(); ++b) {
    std::int64_t const r = first[b], T = first[b + 1] - r;
    for (std::int64_t i = 0; i + 1 < T; ++i) {
      s.rows.push_back(r + i);
      s.next.push_back(tokens[static_cast<std::size_t>(r + i + 1)]);
      s.targets.push_back(targets[static_cast<std::size_t>(r + i + 1)]);
    }
    if (T >= 2) {
      seqs.push_back({VectorView<std::int32_t const>(s.next.data() + mfirst.back(), T - 1),
                      VectorView<std::int64_t const>(positions.data() + r, T - 1)});
      mfirst.push_back(mfirst.back() + T - 1);
    }
  }
  auto const M = static_cast<std::int64_t>(s.rows.size());
  loss = 0;
  count = 0;
  if (M == 0) {
    return {};
  }
  for (std::size_t b = 0; b < seqs.size(); ++b)  // s.next may have moved while growing
    seqs[b].tokens =
        VectorView<std::int32_t const>(s.next.data() + mfirst[b], mfirst[b + 1] - mfirst[b]);
  auto mat = [](std::vector<float>& v, std::int64_t r, std::int64_t c) {
    v.resize(static_cast<std::size_t>(r * c));
    return MatrixView<float>(v.data(), r, c);
  };
  auto cmat = [](std::vector<float> const& v, std::int64_t r, std::int64_t c) {
    return MatrixView<float const>(v.data(), r, c);
  };
  // forward
  mat(s.x, M, H);
  mat(s.e, M, H);
  for (std::int64_t j = 0; j < M; ++j) {
    std::copy_n(x.data() + s.rows[static_cast<std::size_t>(j)] * H, H, s.x.data() + j * H);
    auto const* e = embed.data() + s.next[static_cast<std::size_t>(j)] * H;
    for (std::int64_t h = 0; h < H; ++h)
      s.e[static_cast<std::size_t>(j * H + h)] = static_cast<float>(e[h]);
  }
  DEEPMOE_RETURN_IF_ERROR(rms_norm(mat(s.en, M, H), cmat(s.e, M, H), m.enorm, eps));
  DEEPMOE_RETURN_IF_ERROR(rms_norm(mat(s.y, M, H), cmat(s.x, M, H), m.hnorm, eps));
  mat(s.cat, M, 2 * H);
  for (std::int64_t j = 0; j < M; ++j) {
    std::copy_n(s.en.data() + j * H, H, s.cat.data() + j * 2 * H);
    std::copy_n(s.y.data() + j * H, H, s.cat.data() + j * 2 * H + H);
  }
  DEEPMOE_RETURN_IF_ERROR(linear(mat(s.hp, M, H), cmat(s.cat, M, 2 * H), m.eh_proj,
                                 cfg.weight_block_size, name + ".eh_proj"));
  // the module's layer, each sequence apart (in parallel), its activations kept for the backward
  mat(s.hq, M, H);
  auto const S = static_cast<std::int64_t>(seqs.size());
  s.acts.resize(seqs.size());
  s.ids.resize(seqs.size());
  s.status.assign(seqs.size(), Status{});
  DEEPMOE_OMP(omp parallel for schedule(dynamic, 1))
  for (std::int64_t b = 0; b < S; ++b) {
    auto const ub = static_cast<std::size_t>(b);
    std::int64_t const r = mfirst[ub], T = mfirst[ub + 1] - r;
    s.status[ub] = decoder_layer_train_forward<C>(
        MatrixView<float>(s.hq.data() + r * H, T, H), s.acts[ub],
        MatrixView<float const>(s.hp.data() + r * H, T, H), seqs[ub].positions, m.layer, cfg);
    s.ids[ub] = s.acts[ub].moe.ids;
    if (recompute || g == nullptr) {
      s.acts[ub] = {};
    }
  }
  s.kept_bytes = 0;
  for (auto const& a : s.acts)
    s.kept_bytes += a.bytes();
  s.load.assign(m.layer.is_moe ? static_cast<std::size_t>(cfg.n_routed_experts) : 0, 0);
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    if (!s.status[b].ok()) {
      return Status(s.status[b].code(),
                    name + ", sequence " + std::to_string(b) + ": " + s.status[b].message());
    }
    for (std::int32_t id : s.ids[b])
      ++s.load[static_cast<std::size_t>(id)];
  }
  DEEPMOE_RETURN_IF_ERROR(rms_norm(mat(s.y, M, H), cmat(s.hq, M, H), m.shared_head_norm, eps));
  DEEPMOE_RETURN_IF_ERROR(linear(mat(s.z, M, V), cmat(s.y, M, H), head, cfg.weight_block_size,
                                 name + ".shared_head.head"));
  DEEPMOE_RETURN_IF_ERROR(cross_entropy(mat(s.dz, M, V), loss, cmat(s.z, M, V),
                                        VectorView<std::int32_t const>(s.targets.data(), M)));
  for (std::int32_t t : s.targets)
    count += t != -100;
  if (g == nullptr) {
    return {};
  }
  // backward, scaled by λ
  for (float& v : s.dz)
    v *= static_cast<float>(lambda);
  DEEPMOE_RETURN_IF_ERROR(linear_backward(mat(s.dy, M, H), MatrixView<float>(d_head.data(), V, H),
                                          cmat(s.dz, M, V), cmat(s.y, M, H), head.weight));
  DEEPMOE_RETURN_IF_ERROR(
      rms_norm_backward(mat(s.dhq, M, H), VectorView<float>(g->shared_head_norm.data(), H),
                        cmat(s.dy, M, H), cmat(s.hq, M, H), m.shared_head_norm, eps));
  mat(s.dhp, M, H);
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    std::int64_t const r = mfirst[b], T = mfirst[b + 1] - r;
    auto const dh = MatrixView<float>(s.dhp.data() + r * H, T, H);
    auto const dout = MatrixView<float const>(s.dhq.data() + r * H, T, H);
    auto const h = MatrixView<float const>(s.hp.data() + r * H, T, H);
    if (recompute) {
      DEEPMOE_RETURN_IF_ERROR(decoder_layer_backward<C>(dh, g->layer, dout, h, seqs[b].positions,
                                                        m.layer, cfg, 0.0, &s.acts[0]));
    } else {
      DEEPMOE_RETURN_IF_ERROR(decoder_layer_backward<C>(dh, g->layer, dout, s.acts[b], h,
                                                        seqs[b].positions, m.layer, cfg));
      s.acts[b] = {};  // released as the backward goes
    }
  }
  DEEPMOE_RETURN_IF_ERROR(
      linear_backward(mat(s.dcat, M, 2 * H), MatrixView<float>(g->eh_proj.data(), H, 2 * H),
                      cmat(s.dhp, M, H), cmat(s.cat, M, 2 * H), m.eh_proj.weight));
  mat(s.dn, M, H);
  for (std::int64_t j = 0; j < M; ++j)  // the embedding half
    std::copy_n(s.dcat.data() + j * 2 * H, H, s.dn.data() + j * H);
  DEEPMOE_RETURN_IF_ERROR(rms_norm_backward(mat(s.dd, M, H), VectorView<float>(g->enorm.data(), H),
                                            cmat(s.dn, M, H), cmat(s.e, M, H), m.enorm, eps));
  DEEPMOE_RETURN_IF_ERROR(embedding_backward(MatrixView<float>(d_embed.data(), V, H),
                                             cmat(s.dd, M, H),
                                             VectorView<std::int32_t const>(s.next.data(), M)));
  for (std::int64_t j = 0; j < M; ++j)  // the hidden half
    std::copy_n(s.dcat.data() + j * 2 * H + H, H, s.dn.data() + j * H);
  DEEPMOE_RETURN_IF_ERROR(rms_norm_backward(mat(s.dd, M, H), VectorView<float>(g->hnorm.data(), H),
                                            cmat(s.dn, M, H), cmat(s.x, M, H), m.hnorm, eps));
  for (std::int64_t j = 0; j < M; ++j) {
    float* d = dx.data() + s.rows[static_cast<std::size_t>(j)] * H;
    for (std::int64_t h = 0; h < H; ++h)
      d[h] += s.dd[static_cast<std::size_t>(j * H + h)];
  }
  return {};
}

}  // namespace train
DEEPMOE_NAMESPACE_END
