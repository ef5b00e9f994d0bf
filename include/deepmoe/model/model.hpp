// SPDX-License-Identifier: Apache-2.0
/// @file model.hpp
/// @brief Model<C>: a whole DeepSeek-V3-family network on the CPU, loaded from a Hugging Face
/// checkpoint, computing logits for a batch of sequences and the Multi-Token-Prediction drafts.
///
///   h = Embed[t]                                               [N, H] fp32
///   for l < L:  h = DecoderLayer_l(h)                          (decoder_layer.hpp)
///   hidden = RMSNorm_final(h);  logits = hidden · lm_headᵀ     [rows, V] fp32
/// No embedding scale, logit scale, bias or softcap. The sequences of a batch are independent:
/// attention stays within a sequence, and every kernel computes a row the same way whatever
/// the other rows, so a sequence's logits do not depend on the batch (bitwise).
/// docs/model.md §3–§4; DeepSeek-V3 inference/model.py `Transformer`; transformers
/// models/deepseek_v3/modeling_deepseek_v3.py `DeepseekV3ForCausalLM`.
#pragma once

#include <deepmoe/config/parameter_count.hpp>
#include <deepmoe/io/config_json.hpp>
#include <deepmoe/model/checkpoint.hpp>
#include <deepmoe/model/decoder_layer.hpp>
#include <deepmoe/model/kv_cache.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// Memory a model needs, known before loading [bytes].
struct MemoryPlan {
  std::int64_t weights = 0;      ///< main model at the config's precision (incl. fp8 scales)
  std::int64_t mtp_weights = 0;  ///< Multi-Token-Prediction modules, when loaded
  std::int64_t activations = 0;  ///< scratch of forward() for the planned batch
  std::int64_t tokens = 0;       ///< planned batch: tokens in all
  std::int64_t sequence = 0;     ///< planned batch: the longest sequence
};

/// The bytes of C's weights and of a forward pass over `tokens` tokens whose longest sequence
/// has `sequence` tokens (the MLA scratch of one sequence, the MoE workspace, the residual
/// stream, norms and FFN scratch; logits are the caller's).
template <config::ModelConfig C>
constexpr MemoryPlan memory_plan(std::int64_t tokens, std::int64_t sequence,
                                 C const& c = {}) noexcept {
  std::int64_t const H = c.hidden_size, nh = c.num_attention_heads;
  std::int64_t const dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  std::int64_t const rq = c.q_lora_rank, rkv = c.kv_lora_rank;
  std::int64_t const E = c.n_routed_experts, K = c.num_experts_per_tok;
  std::int64_t const M = c.moe_intermediate_size, SM = config::shared_intermediate_size(c);
  std::int64_t const N = tokens, T = sequence;
  MemoryPlan p;
  p.tokens = tokens;
  p.sequence = sequence;
  p.weights = config::weight_bytes<C>(c);
  p.mtp_weights = config::mtp_weight_bytes<C>(c);
  std::int64_t const mla =
      4 * T * (rq + nh * (dn + dr) + 2 * (rkv + dr) + nh * dr + nh * dv + nh * (dn + dv));
  std::int64_t const moe = 4 * N * (3 * H + E + 2 * K + SM) + 4 * N * K * (2 * H + M + 2);
  bool const any_dense = config::num_moe_layers(c) < c.num_hidden_layers;
  std::int64_t const dense = any_dense ? 4 * N * c.intermediate_size : 0;
  p.activations = 4 * N * 3 * H + mla + moe + dense;
  return p;
}

/// A DeepSeek-V3-family model of config C on the CPU: a compile-time config (the fast path)
/// or config::Dynamic<W, A> (read from the checkpoint's config.json). Holds the memory-mapped
/// checkpoint and the tensors converted to C's precision; move-only. forward() and
/// mtp_forward() reuse scratch memory, so one Model serves one caller at a time.
template <config::ModelConfig C>
class Model {
  static_assert(config::validate<C>());
  static constexpr std::int64_t kH = config::hidden_extent<C>;

 public:
  using config_type = C;

  Model() = default;
  Model(Model&&) noexcept = default;
  Model& operator=(Model&&) noexcept = default;

  /// Loads the checkpoint directory `dir` (config.json + model.safetensors or shards with
  /// model.safetensors.index.json). A compile-time C is compared with config.json
  /// (check_config_json); a Dynamic one is read from it (read_dynamic_config). Then every
  /// tensor is loaded and checked (CheckpointLoader).
  /// @returns kIoError for unreadable files; invalid_argument listing every config field that
  ///          differs (with both values) or cannot be read, or every missing/misshaped/
  ///          unexpected tensor.
  static Status load(std::string const& dir, Model& out, LoadOptions const& opt = {}) {
    namespace fs = std::filesystem;
    std::string const json = (fs::path(dir) / "config.json").string();
    std::unique_ptr<State> s;
    if constexpr (config::is_dynamic_v<C>) {
      std::optional<C> cfg;
      DEEPMOE_RETURN_IF_ERROR(
          io::read_dynamic_config<typename C::weight_t, typename C::act_t>(json, cfg));
      s = std::make_unique<State>(*cfg);
    } else {
      DEEPMOE_RETURN_IF_ERROR(io::check_config_json<C>(json));
      s = std::make_unique<State>(C{});
    }
    DEEPMOE_RETURN_IF_ERROR(io::WeightMap::open(dir, s->map));
    DEEPMOE_RETURN_IF_ERROR(CheckpointLoader<C>(s->map, s->store, dir, s->cfg).load(s->w, opt));
    for (auto const& layer : s->w.layers) {
      s->expert_load.emplace_back(
          layer.is_moe ? static_cast<std::size_t>(s->cfg.n_routed_experts) : 0, 0);
    }
    out.s_ = std::move(s);
    return {};
  }

  /// The KV cache type of forward() with a cache (what generate::Generator allocates).
  template <class KV>
  using cache_type = KvCache<C, KV>;

  /// Whether a checkpoint is loaded.
  bool loaded() const noexcept { return s_ != nullptr; }
  /// Whether the Multi-Token-Prediction modules are loaded (mtp_forward can run).
  bool has_mtp() const noexcept { return s_ != nullptr && !s_->w.mtp.empty(); }
  /// The config. @pre loaded()
  C const& config() const noexcept { return s_->cfg; }
  /// The weights (views at C's precision). @pre loaded()
  ModelWeights<C> const& weights() const noexcept { return s_->w; }
  /// Bytes of tensors converted at load time (the rest are mapped from the checkpoint).
  std::size_t converted_bytes() const noexcept { return s_ ? s_->store.bytes() : 0; }
  /// Which MLA form forward() uses (kNaive by default; kAbsorbed is DeepSeek's decode form).
  void set_mla_form(MlaForm f) noexcept { form_ = f; }

  /// Tokens routed to each expert, per main-model layer, summed over the forward() calls since
  /// load or reset_expert_load(): [L][E] (empty rows for dense layers). @pre loaded()
  std::vector<std::vector<std::int64_t>> const& expert_load() const noexcept {
    return s_->expert_load;
  }
  /// Zeroes expert_load(). @pre loaded()
  void reset_expert_load() {
    for (auto& row : s_->expert_load)
      std::fill(row.begin(), row.end(), 0);
  }

  /// Logits of a batch of sequences.
  /// @param batch   the sequences; each needs ≥ 1 token for LogitsRows::kLast
  /// @param logits  [rows, V] fp32, out: rows = batch.size() (kLast) or Σ T_s (kAll)
  /// @param which   which positions get logits
  /// @param hidden  [Σ T_s, H] fp32, out, optional: the final-normed hidden state of every
  ///                position (the MTP module's input), or an empty view
  /// @returns kOutOfRange naming sequence and position for a token id outside [0, V);
  ///          invalid_argument for a shape mismatch, an empty sequence under kLast, negative
  ///          positions, or NaN/inf hidden states (naming layer and token); kOutOfRange when
  ///          scratch memory runs out.
  Status forward(std::span<Sequence const> batch, MatrixView<float> logits,
                 LogitsRows which = LogitsRows::kLast, MatrixView<float> hidden = {}) {
    return run<float>(batch, nullptr, logits, which, hidden);
  }

  /// Logits of a batch of sequences that continue in a KV cache: prefill (the whole prompt, or
  /// a chunk of it), decode (one token) or verification (several) — any mix per batch. Each
  /// sequence names its cache slot; its positions must be consecutive and start at most at the
  /// slot's length (a start below it rewinds the slot to that point first). The result equals a
  /// forward() over the sequence's whole prefix (bitwise with a float cache). On success each
  /// slot's length becomes its last position + 1; on failure a rewound slot stays rewound.
  /// @param cache   a cache of this model (KvCache::create with config())
  /// @returns the errors of forward(), and invalid_argument for a slot outside the cache, a slot
  ///          used twice in the batch, an empty sequence, or a gap after the slot's length;
  ///          kOutOfRange for positions beyond the cache's capacity.
  template <class KV>
  Status forward(std::span<Sequence const> batch, KvCache<C, KV>& cache, MatrixView<float> logits,
                 LogitsRows which = LogitsRows::kLast, MatrixView<float> hidden = {}) {
    return run<KV>(batch, &cache, logits, which, hidden);
  }

  /// Draft logits of Multi-Token-Prediction module 0 (arXiv:2412.19437 §2.2): for each position
  /// i of each sequence, h'_i = eh_proj·[enorm(Emb(next_i)); hnorm(hidden_i)], then the module's
  /// decoder layer (attention within the sequence at the same positions), shared_head.norm and
  /// shared_head.head. The logits at i predict the token two after position i.
  /// @param next    the sequences shifted by one: next[s].tokens[i] is the token that follows
  ///                position i (the last one: the token just sampled), next[s].positions the
  ///                positions of the main forward
  /// @param hidden  [Σ T_s, H] fp32: the main model's final-normed hidden states (forward's
  ///                `hidden` output for the same batch)
  /// @param logits  [rows, V] fp32, out (rows as in forward)
  /// @returns kNotSupported when the model has no MTP module (config or LoadOptions); the
  ///          errors of forward() otherwise.
  Status mtp_forward(std::span<Sequence const> next, MatrixView<float const> hidden,
                     MatrixView<float> logits, LogitsRows which = LogitsRows::kAll) {
    return run_mtp<float>(next, nullptr, hidden, logits, which);
  }

  /// mtp_forward() continuing in the MTP module's own layer of a KV cache (created with `mtp`);
  /// the sequences' slots and positions follow forward()'s rules for that layer. The slot's
  /// length is not changed: the main forward() owns it.
  template <class KV>
  Status mtp_forward(std::span<Sequence const> next, KvCache<C, KV>& cache,
                     MatrixView<float const> hidden, MatrixView<float> logits,
                     LogitsRows which = LogitsRows::kAll) {
    return run_mtp<KV>(next, &cache, hidden, logits, which);
  }

 private:
  template <class KV>
  Status run_mtp(std::span<Sequence const> next, KvCache<C, KV>* cache,
                 MatrixView<float const> hidden, MatrixView<float> logits, LogitsRows which) {
    if (s_ == nullptr) {
      return invalid_argument("mtp_forward: no checkpoint loaded (Model::load)");
    }
    State& s = *s_;
    C const& cfg = s.cfg;
    std::int64_t const H = cfg.hidden_size;
    if (s.w.mtp.empty()) {
      return Status(StatusCode::kNotSupported,
                    "mtp_forward: this model has no MTP module (num_nextn_predict_layers = " +
                        std::to_string(cfg.num_nextn_predict_layers) +
                        ", or loaded with LoadOptions::mtp = false)");
    }
    std::int64_t N = 0;
    DEEPMOE_RETURN_IF_ERROR(check_batch(next, which, logits, {}, s_->cfg, N));
    if (hidden.extent(0) != N || hidden.extent(1) != H) {
      return invalid_argument("mtp_forward: hidden is [" + std::to_string(hidden.extent(0)) + ", " +
                              std::to_string(hidden.extent(1)) + "], expected [" +
                              std::to_string(N) + ", " + std::to_string(H) + "]");
    }
    DEEPMOE_RETURN_IF_ERROR(require_data("mtp_forward", "hidden", hidden.data(), hidden.size()));
    MtpWeights<C> const& m = s.w.mtp.front();
    std::string const p = "model.layers." + std::to_string(cfg.num_hidden_layers);
    auto const n = static_cast<std::size_t>(N);
    auto const hn = static_cast<std::size_t>(H);
    float* cat = s.mtp_cat.get(n * 2 * hn);
    float* e = s.mtp_e.get(n * hn);
    float* h = s.residual.get(n * hn);
    if (N > 0 && (cat == nullptr || e == nullptr || h == nullptr)) {
      return Status(StatusCode::kOutOfRange, "mtp_forward: cannot allocate scratch");
    }
    DEEPMOE_RETURN_IF_ERROR(embed(next, m.embed_tokens, e));
    double const eps = cfg.rms_norm_eps;
    // [enorm(e) | hnorm(hidden)] row by row: the embedding half first
    MatrixView<float> const left(cat, N, H), right(h, N, H);
    DEEPMOE_RETURN_IF_ERROR(rms_norm(left, MatrixView<float const>(e, N, H), m.enorm, eps));
    DEEPMOE_RETURN_IF_ERROR(rms_norm(right, hidden, m.hnorm, eps));
    for (std::int64_t t = N - 1; t >= 0; --t) {  // spread [N, H] | [N, H] into [N, 2H]
      for (std::int64_t i = H - 1; i >= 0; --i)
        cat[t * 2 * H + i] = cat[t * H + i];
      for (std::int64_t i = 0; i < H; ++i)
        cat[t * 2 * H + H + i] = h[t * H + i];
    }
    DEEPMOE_RETURN_IF_ERROR(linear(MatrixView<float>(h, N, H),
                                   MatrixView<float const>(cat, N, 2 * H), m.eh_proj,
                                   cfg.weight_block_size, p + ".eh_proj"));
    std::vector<MlaCacheRows<KV>> rows;
    if (cache != nullptr) {
      if (cache->layers() <= cfg.num_hidden_layers) {
        return invalid_argument("mtp_forward: the KV cache has no MTP layer (create it with mtp)");
      }
      DEEPMOE_RETURN_IF_ERROR(check_slots(next, *cache, false));
      for (Sequence const& q : next)
        rows.push_back(cache->rows(q.slot, cfg.num_hidden_layers));
    }
    DEEPMOE_RETURN_IF_ERROR(decoder_layer_forward<C, KV>(HView::of(h, N, H), next, m.layer,
                                                         s.scratch, form_, p,
                                                         std::span<MlaCacheRows<KV> const>(rows)));
    return head(next, h, N, which, m.shared_head_norm, m.shared_head_head, p + ".shared_head.norm",
                p + ".shared_head.head", logits, {});
  }

  using A = typename C::act_t;
  using HView = MatrixView<float, kDyn, kH>;

  // forward() with or without a cache
  template <class KV>
  Status run(std::span<Sequence const> batch, KvCache<C, KV>* cache, MatrixView<float> logits,
             LogitsRows which, MatrixView<float> hidden) {
    if (s_ == nullptr) {
      return invalid_argument("forward: no checkpoint loaded (Model::load)");
    }
    State& s = *s_;
    std::int64_t const H = s.cfg.hidden_size;
    std::int64_t N = 0;
    DEEPMOE_RETURN_IF_ERROR(check_batch(batch, which, logits, hidden, s_->cfg, N));
    if (cache != nullptr) {
      DEEPMOE_RETURN_IF_ERROR(check_slots(batch, *cache, true));
    }
    float* h = s.residual.get(static_cast<std::size_t>(N * H));
    if (N > 0 && h == nullptr) {
      return Status(StatusCode::kOutOfRange, "forward: cannot allocate the residual stream for " +
                                                 std::to_string(N) + " tokens");
    }
    DEEPMOE_RETURN_IF_ERROR(embed(batch, s.w.embed_tokens, h));
    std::vector<MlaCacheRows<KV>> rows(cache != nullptr ? batch.size() : 0);
    for (std::size_t l = 0; l < s.w.layers.size(); ++l) {
      for (std::size_t q = 0; q < rows.size(); ++q)
        rows[q] = cache->rows(batch[q].slot, static_cast<int>(l));
      DEEPMOE_RETURN_IF_ERROR(decoder_layer_forward<C, KV>(
          HView::of(h, N, H), batch, s.w.layers[l], s.scratch, form_,
          "model.layers." + std::to_string(l), std::span<MlaCacheRows<KV> const>(rows)));
      if (s.w.layers[l].is_moe) {
        auto const counts = s.scratch.moe.tokens_per_expert();
        auto& load = s.expert_load[l];
        for (std::size_t e = 0; e < load.size(); ++e)
          load[e] += counts(static_cast<std::int64_t>(e));
      }
    }
    if (cache != nullptr) {
      for (Sequence const& q : batch)
        cache->set_length(q.slot, q.positions(0) + q.tokens.extent(0));
    }
    return head(batch, h, N, which, s.w.norm, s.w.lm_head, "model.norm", "lm_head", logits, hidden);
  }

  // Everything a loaded model holds.
  struct State {
    explicit State(C const& c) : cfg(c), scratch(c) {}
    C cfg;
    io::WeightMap map;
    TensorStore store;
    ModelWeights<C> w;
    DecoderLayerScratch<C> scratch;
    Buffer<float> residual, gathered, normed, mtp_cat, mtp_e;
    std::vector<std::vector<std::int64_t>> expert_load;  // [L][E]
  };

  // h[row] = Emb[token] in fp32, rows in batch order
  Status embed(std::span<Sequence const> batch, MatrixView<A const> table, float* h) const {
    std::int64_t const H = s_->cfg.hidden_size;
    DEEPMOE_RETURN_IF_ERROR(
        require_data("forward", "embed_tokens", table.data(), s_->cfg.vocab_size * H));
    std::int64_t row = 0;
    for (Sequence const& s : batch) {
      for (std::int64_t i = 0; i < s.tokens.extent(0); ++i, ++row) {
        A const* e = table.data() + std::int64_t{s.tokens(i)} * H;
        for (std::int64_t j = 0; j < H; ++j)
          h[row * H + j] = to_float(e[j]);
      }
    }
    return {};
  }

  // logits = RMSNorm(h[rows]) · headᵀ for the chosen rows; hidden = RMSNorm(h) for all
  Status head(std::span<Sequence const> batch, float const* h, std::int64_t N, LogitsRows which,
              VectorView<A const> norm, LinearWeight<A> const& lm_head,
              std::string const& norm_name, std::string const& head_name, MatrixView<float> logits,
              MatrixView<float> hidden) {
    State& s = *s_;
    std::int64_t const H = s.cfg.hidden_size, rows = logits.extent(0);
    auto const n = static_cast<std::size_t>((N > rows ? N : rows) * H);
    float* g = s.gathered.get(n);
    float* y = s.normed.get(n);
    if (n > 0 && (g == nullptr || y == nullptr)) {
      return Status(StatusCode::kOutOfRange, "forward: cannot allocate the final-norm scratch");
    }
    double const eps = s.cfg.rms_norm_eps;
    if (hidden.data() != nullptr) {
      DEEPMOE_RETURN_IF_ERROR(rms_norm(hidden, MatrixView<float const>(h, N, H), norm, eps));
    }
    float const* src = h;
    if (which == LogitsRows::kLast) {
      std::int64_t end = 0;
      for (std::size_t s = 0; s < batch.size(); ++s) {
        end += batch[s].tokens.extent(0);
        std::copy(h + (end - 1) * H, h + end * H, g + static_cast<std::int64_t>(s) * H);
      }
      src = g;
    }
    if (Status const st = rms_norm(MatrixView<float>(y, rows, H),
                                   MatrixView<float const>(src, rows, H), norm, eps);
        !st.ok()) {
      return Status(st.code(), norm_name + ": " + st.message());
    }
    return linear(logits, MatrixView<float const>(y, rows, H), lm_head, s.cfg.weight_block_size,
                  head_name);
  }

  std::unique_ptr<State> s_;
  MlaForm form_ = MlaForm::kNaive;
};

}  // namespace model
DEEPMOE_NAMESPACE_END
