// SPDX-License-Identifier: Apache-2.0
/// @file model_backward.hpp
/// @brief The language-model loss of a whole model on a batch of sequences, and its gradient
/// with respect to every trained weight (naive MLA form), in fp32 or in mixed precision.
///
///   h⁰ = Emb[tokens];  hˡ⁺¹ = Layerₗ(hˡ) (decoder_layer_train_forward, each sequence apart);
///   z = RMSNorm(hᴸ)·W_headᵀ
///   L = (1/N)·Σ_{b,t} −log softmax(z_{b,t})[target_{b,t}]   over the N targets ≠ −100
///     + (α/B)·Σ_b Σ_{MoE layers} sequence_balance_loss(b)   (the sequence-wise balance loss,
///       arXiv:2412.19437 §2.1.2, averaged over the B sequences; α = 0 by default)
///     + λ·L_mtp   (mtp_backward.hpp; when the weights have an MTP module and λ > 0)
/// Backward runs the chain in reverse: cross_entropy → lm_head → final norm → each layer →
/// embedding. By default each layer's backward starts from its saved input hˡ and recomputes
/// the layer's activations (gradient checkpointing per layer: only the L + 1 residual streams
/// [N, H] are kept); LossOptions::recompute = false keeps every layer's activations from the
/// forward instead. The forward and the recomputation run the same functions on the same input,
/// so both modes give the same bits.
/// Each sequence attends only within itself, at positions 0…T−1. Sequences are differentiated
/// in parallel, each into its own gradient buffers (one layer's worth per thread), which are then
/// summed in batch order, so the result does not depend on the thread count. With
/// tie_word_embeddings the head's gradient adds to the embedding's. docs/training.md.
///
/// Precision follows the config. fp32 weights and activations: the checks' mode. bf16 weights
/// and activations (config::WithPrecision<C, bfloat16, bfloat16>; mixed precision as in
/// arXiv:2412.19437 §3.3): the weights are a bf16 copy of fp32 master weights, every product
/// widens them exactly and accumulates in fp32, and the kept residual streams hˡ are bf16 — each
/// layer runs in fp32 on its bf16 input and its output is rounded to bf16 (round to nearest
/// even). The backward treats that rounding as the identity (the usual straight-through rule)
/// and recomputes each layer from exactly the bf16 input the forward used. Gradients are fp32.
#pragma once

#include <deepmoe/model/decoder_layer.hpp>
#include <deepmoe/train/layer_backward.hpp>
#include <deepmoe/train/mtp_backward.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// Gradients of a whole model's trained weights (accumulated; zero() to start a step).
struct ModelGrads {
  std::vector<float> embed_tokens;  ///< [V, H]
  std::vector<LayerGrads> layers;   ///< num_hidden_layers
  std::vector<float> norm;          ///< [H]
  std::vector<float> lm_head;       ///< [V, H]; empty when tied to the embedding
  std::vector<MtpGrads> mtp;        ///< MTP module 0, when trained

  /// Every tensor named as its weight in a checkpoint, in checkpoint_tensors order.
  std::vector<NamedGrad> named() {
    std::vector<NamedGrad> out{{"model.embed_tokens.weight", embed_tokens}};
    for (std::size_t l = 0; l < layers.size(); ++l) {
      auto const g = named_grads(layers[l], "model.layers." + std::to_string(l) + ".");
      out.insert(out.end(), g.begin(), g.end());
    }
    out.push_back({"model.norm.weight", norm});
    if (!lm_head.empty()) {
      out.push_back({"lm_head.weight", lm_head});
    }
    for (auto& m : mtp) {
      auto const g = m.named("model.layers." + std::to_string(layers.size()) + ".");
      out.insert(out.end(), g.begin(), g.end());
    }
    return out;
  }
  /// Sets every gradient to 0 (keeping the buffers, so spans from named() stay valid).
  void zero() {
    for (NamedGrad const& g : named())
      std::fill(g.grad.begin(), g.grad.end(), 0.0f);
  }
};

/// Zeroed gradients for config `cfg`, with MTP module 0's when `mtp`.
template <config::ModelConfig C>
ModelGrads zero_model_grads(C const& cfg = {}, bool mtp = false) {
  auto const VH = static_cast<std::size_t>(cfg.vocab_size * cfg.hidden_size);
  ModelGrads g;
  g.embed_tokens.assign(VH, 0.0f);
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    g.layers.push_back(zero_layer_grads<C>(l, cfg));
  g.norm.assign(static_cast<std::size_t>(cfg.hidden_size), 0.0f);
  if (!cfg.tie_word_embeddings) {
    g.lm_head.assign(VH, 0.0f);
  }
  if (mtp) {
    g.mtp.push_back(zero_mtp_grads<C>(cfg));
  }
  return g;
}

/// One training sequence: inputs and the token each position should predict.
struct Example {
  VectorView<std::int32_t const> tokens;   ///< [T] ids in [0, V)
  VectorView<std::int32_t const> targets;  ///< [T] ids in [0, V), or −100 (not counted)
};

/// Which terms the loss has.
struct LossOptions {
  double balance_alpha = 0.0;  ///< α of the sequence-wise balance loss (DeepSeek-V3: 1e-4)
  double mtp_lambda = 0.0;     ///< λ of the MTP loss (weights with an MTP module; V3: 0.3)
  /// Gradient checkpointing: keep only each layer's input and recompute the layer's activations
  /// in the backward (memory: L + 1 residual streams, plus one layer's buffers per thread).
  /// false keeps every layer's activations from the forward, the MTP layer's too (no
  /// recomputation, about A_layer values per token and layer; bench/train_step). The two give
  /// the same bits.
  bool recompute = true;
};

/// What a loss evaluation measured.
struct LossStats {
  double loss = 0;           ///< mean cross-entropy over the counted targets (nats)
  double balance_loss = 0;   ///< the balance term (α included; 0 when α = 0)
  double mtp_loss = 0;       ///< L_mtp, the MTP module's mean cross-entropy (λ not included)
  std::int64_t tokens = 0;   ///< tokens processed
  std::int64_t targets = 0;  ///< targets counted
  /// [L][E] tokens routed to each expert per layer (empty rows for dense layers), then the
  /// MTP module's layer when it ran
  std::vector<std::vector<std::int64_t>> expert_load;
  /// Bytes of activations kept for the backward, measured when the MTP module's forward has
  /// run (the peak): the residual streams, plus without recomputation every layer's activations
  /// (the MTP layer's included), or with it the per-thread layer buffers — a high-water mark
  /// of forward and backward scratch reused across calls. 0 for a loss without gradients.
  std::size_t activation_bytes = 0;
};

/// Memory reused by model_loss across calls, and the config. One per concurrent caller.
template <config::ModelConfig C>
struct LossScratch {
  /// Scratch for config `cfg` (omitted for compile-time configs).
  explicit LossScratch(C const& cfg = {}) : layer(cfg) {}
  model::DecoderLayerScratch<C> layer;      ///< holds the config
  std::vector<typename C::act_t> streams;   ///< [(L + 1)·N·H] every layer's input, then hᴸ
  std::vector<float> h;                     ///< [N, H] hᴸ widened (bf16 streams)
  std::vector<std::vector<float>> inputs;   ///< per thread [T, H] a layer input, widened
  std::vector<std::vector<float>> outputs;  ///< per thread [T, H] a layer output (bf16 streams)
  std::vector<LayerActivations> scratch;    ///< per thread, when recomputing
  std::vector<std::vector<LayerActivations>> kept;  ///< [L][B] without recomputation
  std::vector<float> x, z, dz;                ///< [N, H] final-normed hᴸ, [N, V] logits and dL/dz
  std::vector<float> dx, dh, dh_in;           ///< [N, H] gradients of x and of the residual stream
  std::vector<std::int32_t> tokens, targets;  ///< [N] the batch's rows
  std::vector<std::int64_t> positions;        ///< [N]
  MtpScratch mtp;                             ///< the MTP module's
};

/// The loss of `batch` (file comment); with `grads`, its gradient is added to them.
/// @param stats  out: loss, counts and expert loads
/// @param batch  the sequences (each T ≥ 1)
/// @param w      the weights (fp32, or bf16 for mixed precision: file comment)
/// @param s      scratch (holds the config)
/// @param grads  accumulated when non-null (zero_model_grads to start)
/// @param opt    the loss's terms
/// @returns invalid_argument for an empty batch or sequence, or tokens and targets of unequal
///          length (naming the sequence); kOutOfRange naming the sequence and position of a token
///          or target outside [0, V); the errors of the layers' forward and backward.
template <config::ModelConfig C>
Status model_loss(LossStats& stats, std::span<Example const> batch, model::ModelWeights<C> const& w,
                  LossScratch<C>& s, ModelGrads* grads = nullptr, LossOptions const& opt = {}) {
  static_assert(detail::trainable<C>, "model_loss: fp32 or bf16 weights");
  using A = typename C::act_t;
  constexpr bool kWide = std::is_same_v<A, float>;  // streams are fp32: layers run in place
  C const& cfg = s.layer.moe.config();
  std::int64_t const H = cfg.hidden_size, V = cfg.vocab_size, L = cfg.num_hidden_layers;
  double const eps = cfg.rms_norm_eps;
  if (batch.empty()) {
    return invalid_argument("model_loss: empty batch");
  }
  // rows: the sequences back to back
  s.tokens.clear();
  s.targets.clear();
  s.positions.clear();
  std::vector<model::Sequence> seqs;
  std::vector<std::int64_t> first;  // first row of each sequence
  for (std::size_t b = 0; b < batch.size(); ++b) {
    std::int64_t const T = batch[b].tokens.extent(0);
    if (T == 0 || batch[b].targets.extent(0) != T) {
      return invalid_argument("model_loss: sequence " + std::to_string(b) + " has " +
                              std::to_string(T) + " tokens and " +
                              std::to_string(batch[b].targets.extent(0)) +
                              " targets (need equal, ≥ 1)");
    }
    first.push_back(static_cast<std::int64_t>(s.tokens.size()));
    for (std::int64_t t = 0; t < T; ++t) {
      std::int32_t const id = batch[b].tokens(t), y = batch[b].targets(t);
      if (id < 0 || id >= V || (y != -100 && (y < 0 || y >= V))) {
        return Status(StatusCode::kOutOfRange,
                      "model_loss: sequence " + std::to_string(b) + " position " +
                          std::to_string(t) + ": token " + std::to_string(id) + " / target " +
                          std::to_string(y) + " outside [0, " + std::to_string(V) + ")");
      }
      s.tokens.push_back(id);
      s.targets.push_back(y);
      s.positions.push_back(t);
    }
  }
  first.push_back(static_cast<std::int64_t>(s.tokens.size()));
  for (std::size_t b = 0; b < batch.size(); ++b) {
    std::int64_t const T = first[b + 1] - first[b];
    seqs.push_back({VectorView<std::int32_t const>(s.tokens.data() + first[b], T),
                    VectorView<std::int64_t const>(s.positions.data() + first[b], T)});
  }
  std::int64_t const N = first.back();
  auto const NH = static_cast<std::size_t>(N * H);
  auto const NV = static_cast<std::size_t>(N * V);
  s.streams.resize(static_cast<std::size_t>(L + 1) * NH);
  auto stream = [&](std::int64_t l) { return s.streams.data() + static_cast<std::size_t>(l) * NH; };

  // forward
  for (std::int64_t i = 0; i < N; ++i)
    std::copy_n(w.embed_tokens.data() + s.tokens[static_cast<std::size_t>(i)] * H, H,
                stream(0) + i * H);
  // hˡ widened to fp32: the stream itself when it is fp32, else a copy into `buf`
  auto widened = [&](A const* from, std::size_t n, std::vector<float>& buf) -> float const* {
    if constexpr (kWide) {
      return from;
    } else {
      buf.resize(n);
      for (std::size_t i = 0; i < n; ++i)
        buf[i] = static_cast<float>(from[i]);
      return buf.data();
    }
  };
  stats = {};
  stats.tokens = N;
  stats.expert_load.assign(static_cast<std::size_t>(L), {});
  // layers: sequences in parallel, in chunks of as many sequences as threads; per-sequence
  // loads and balance terms summed in batch order afterwards
  auto const B = static_cast<std::int64_t>(batch.size());
  std::int64_t const P = std::min<std::int64_t>(B, max_threads());
  bool const keep = grads != nullptr && !opt.recompute;
  s.inputs.resize(static_cast<std::size_t>(P));
  s.outputs.resize(static_cast<std::size_t>(P));
  s.scratch.resize(static_cast<std::size_t>(P));
  s.kept.resize(keep ? static_cast<std::size_t>(L) : 0);
  auto acts = [&](std::int64_t l, std::int64_t b, std::size_t k) -> LayerActivations& {
    return keep ? s.kept[static_cast<std::size_t>(l)][static_cast<std::size_t>(b)] : s.scratch[k];
  };
  std::vector<Status> st(static_cast<std::size_t>(P));
  std::int64_t const E = cfg.n_routed_experts;
  std::vector<std::int64_t> loads(static_cast<std::size_t>(B * E));
  std::vector<double> balance(static_cast<std::size_t>(B));
  for (std::int64_t l = 0; l < L; ++l) {
    auto const& lw = w.layers[static_cast<std::size_t>(l)];
    if (keep) {
      s.kept[static_cast<std::size_t>(l)].resize(static_cast<std::size_t>(B));
    }
    std::fill(loads.begin(), loads.end(), 0);
    for (std::int64_t b0 = 0; b0 < B; b0 += P) {
      std::int64_t const n = std::min(P, B - b0);
      DEEPMOE_OMP(omp parallel for schedule(dynamic, 1))
      for (std::int64_t k = 0; k < n; ++k) {
        auto const uk = static_cast<std::size_t>(k);
        std::int64_t const b = b0 + k, r = first[static_cast<std::size_t>(b)];
        std::int64_t const T = first[static_cast<std::size_t>(b) + 1] - r;
        auto const TH = static_cast<std::size_t>(T * H);
        float const* in = widened(stream(l) + r * H, TH, s.inputs[uk]);
        float* out = nullptr;
        if constexpr (kWide) {
          out = stream(l + 1) + r * H;
        } else {
          s.outputs[uk].resize(TH);
          out = s.outputs[uk].data();
        }
        LayerActivations& a = acts(l, b, uk);
        st[uk] = decoder_layer_train_forward<C>(
            MatrixView<float>(out, T, H), a, MatrixView<float const>(in, T, H),
            seqs[static_cast<std::size_t>(b)].positions, lw, cfg);
        if constexpr (!kWide) {
          for (std::size_t i = 0; i < TH; ++i)
            stream(l + 1)[static_cast<std::size_t>(r * H) + i] = A(out[i]);
        }
        if (st[uk].ok() && lw.is_moe) {
          for (std::int32_t id : a.moe.ids)
            ++loads[static_cast<std::size_t>(b * E + id)];
          balance[static_cast<std::size_t>(b)] =
              opt.balance_alpha == 0.0
                  ? 0.0
                  : sequence_balance_loss<C>(a.moe.ids.data(), a.moe.z.data(), T, cfg);
        }
      }
      for (std::int64_t k = 0; k < n; ++k)
        if (!st[static_cast<std::size_t>(k)].ok()) {
          Status const& e = st[static_cast<std::size_t>(k)];
          return Status(e.code(), "model.layers." + std::to_string(l) + ", sequence " +
                                      std::to_string(b0 + k) + ": " + e.message());
        }
    }
    if (lw.is_moe) {
      auto& total = stats.expert_load[static_cast<std::size_t>(l)];
      total.assign(static_cast<std::size_t>(E), 0);
      for (std::int64_t b = 0; b < B; ++b) {
        for (std::int64_t e = 0; e < E; ++e)
          total[static_cast<std::size_t>(e)] += loads[static_cast<std::size_t>(b * E + e)];
        stats.balance_loss +=
            opt.balance_alpha / static_cast<double>(B) * balance[static_cast<std::size_t>(b)];
      }
    }
  }
  s.x.resize(NH);
  s.z.resize(NV);
  s.dz.resize(NV);
  auto const hL = MatrixView<float const>(widened(stream(L), NH, s.h), N, H);  // s.h: hᴸ only
  DEEPMOE_RETURN_IF_ERROR(rms_norm(MatrixView<float>(s.x.data(), N, H), hL, w.norm, eps));
  DEEPMOE_RETURN_IF_ERROR(linear(MatrixView<float>(s.z.data(), N, V),
                                 MatrixView<float const>(s.x.data(), N, H), w.lm_head,
                                 cfg.weight_block_size, "lm_head"));
  DEEPMOE_RETURN_IF_ERROR(cross_entropy(MatrixView<float>(s.dz.data(), N, V), stats.loss,
                                        MatrixView<float const>(s.z.data(), N, V),
                                        VectorView<std::int32_t const>(s.targets.data(), N)));
  for (std::int32_t y : s.targets)
    stats.targets += y != -100;
  bool const mtp = !w.mtp.empty() && opt.mtp_lambda > 0;
  auto run_mtp = [&](MtpGrads* mg) -> Status {
    std::int64_t count = 0;
    DEEPMOE_RETURN_IF_ERROR(
        mtp_loss<C>(stats.mtp_loss, count, MatrixView<float>(s.dx.data(), N, H), mg, opt.mtp_lambda,
                    MatrixView<float const>(s.x.data(), N, H), first, s.tokens, s.targets,
                    s.positions, MatrixView<A const>(w.embed_tokens.data(), V, H), w.lm_head,
                    grads != nullptr ? grads->embed_tokens : s.mtp.unused,
                    grads == nullptr         ? s.mtp.unused
                    : grads->lm_head.empty() ? grads->embed_tokens
                                             : grads->lm_head,
                    w.mtp[0], s.layer, s.mtp, opt.recompute));
    if (w.mtp[0].layer.is_moe) {
      stats.expert_load.push_back(s.mtp.load);
    }
    return {};
  };
  if (grads == nullptr) {
    return mtp ? run_mtp(nullptr) : Status{};
  }

  stats.activation_bytes = detail::bytes_of(s.streams);
  for (auto const& layer : s.kept)
    for (auto const& a : layer)
      stats.activation_bytes += a.bytes();
  for (auto const& a : s.scratch)
    stats.activation_bytes += opt.recompute ? a.bytes() : 0;
  // backward: head, final norm
  ModelGrads& g = *grads;
  s.dx.resize(NH);
  s.dh.resize(NH);
  s.dh_in.resize(NH);
  std::vector<float>& dhead = g.lm_head.empty() ? g.embed_tokens : g.lm_head;
  DEEPMOE_RETURN_IF_ERROR(linear_backward(
      MatrixView<float>(s.dx.data(), N, H), MatrixView<float>(dhead.data(), V, H),
      MatrixView<float const>(s.dz.data(), N, V), MatrixView<float const>(s.x.data(), N, H),
      MatrixView<A const>(w.lm_head.weight.data(), V, H)));
  if (mtp) {  // adds λ·dL_mtp/dx to the head's dx
    if (g.mtp.empty()) {
      return invalid_argument(
          "model_loss: the weights have an MTP module but the gradients do "
          "not — HINT: zero_model_grads(cfg, true)");
    }
    DEEPMOE_RETURN_IF_ERROR(run_mtp(&g.mtp[0]));
    stats.activation_bytes += s.mtp.kept_bytes;  // alive with the main layers' (none recomputing)
  }
  DEEPMOE_RETURN_IF_ERROR(
      rms_norm_backward(MatrixView<float>(s.dh.data(), N, H), VectorView<float>(g.norm.data(), H),
                        MatrixView<float const>(s.dx.data(), N, H), hL, w.norm, eps));
  // layers, last first; each sequence into its own buffers, summed in batch order — in chunks
  // of as many sequences as threads, so memory holds one layer's gradients per thread
  for (std::int64_t l = L - 1; l >= 0; --l) {
    auto const& lw = w.layers[static_cast<std::size_t>(l)];
    std::vector<LayerGrads> per(static_cast<std::size_t>(P));
    auto into = named_grads(g.layers[static_cast<std::size_t>(l)], "");
    for (std::int64_t b0 = 0; b0 < B; b0 += P) {
      std::int64_t const n = std::min(P, B - b0);
      DEEPMOE_OMP(omp parallel for schedule(dynamic, 1))
      for (std::int64_t k = 0; k < n; ++k) {
        auto const uk = static_cast<std::size_t>(k);
        auto const ub = static_cast<std::size_t>(b0 + k);
        std::int64_t const r = first[ub], T = first[ub + 1] - r;
        per[uk] = zero_layer_grads<C>(static_cast<int>(l), cfg);
        float const* in = widened(stream(l) + r * H, static_cast<std::size_t>(T * H), s.inputs[uk]);
        auto const dh_in = MatrixView<float>(s.dh_in.data() + r * H, T, H);
        auto const dh = MatrixView<float const>(s.dh.data() + r * H, T, H);
        auto const h = MatrixView<float const>(in, T, H);
        double const alpha = opt.balance_alpha / static_cast<double>(B);
        if (keep) {
          LayerActivations& a = s.kept[static_cast<std::size_t>(l)][ub];
          st[uk] = decoder_layer_backward<C>(dh_in, per[uk], dh, a, h, seqs[ub].positions, lw, cfg,
                                             alpha);
          a = {};  // released as the backward goes
        } else {
          st[uk] = decoder_layer_backward<C>(dh_in, per[uk], dh, h, seqs[ub].positions, lw, cfg,
                                             alpha, &s.scratch[uk]);
        }
      }
      for (std::int64_t k = 0; k < n; ++k) {
        auto const uk = static_cast<std::size_t>(k);
        if (!st[uk].ok()) {
          return Status(st[uk].code(), "model.layers." + std::to_string(l) +
                                           " backward, sequence " + std::to_string(b0 + k) + ": " +
                                           st[uk].message());
        }
        auto const from = named_grads(per[uk], "");
        for (std::size_t i = 0; i < into.size(); ++i)
          for (std::size_t j = 0; j < into[i].grad.size(); ++j)
            into[i].grad[j] += from[i].grad[j];
      }
    }
    std::swap(s.dh, s.dh_in);
  }
  return embedding_backward(MatrixView<float>(g.embed_tokens.data(), V, H),
                            MatrixView<float const>(s.dh.data(), N, H),
                            VectorView<std::int32_t const>(s.tokens.data(), N));
}

}  // namespace train
DEEPMOE_NAMESPACE_END
