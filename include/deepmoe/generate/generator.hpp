// SPDX-License-Identifier: Apache-2.0
/// @file generator.hpp
/// @brief Batched generation with continuous batching and, optionally, Multi-Token-Prediction
/// speculative decoding, over a Model<C> and its latent KV cache.
///
/// Each step() runs one forward over every active sequence: a chunk of the prompt for those
/// still prefilling, one token for those decoding — or, with MTP speculation, the last token and
/// the MTP module's draft, verified together. Requests wait in a queue until a cache slot is
/// free and leave when they finish (a stop token, max_new_tokens, or a full slot), so sequences
/// join and finish between steps. A sequence's tokens are a function of its own prompt, sampling
/// parameters and seed only: every kernel computes a row the same way whatever the batch.
///
/// Speculation (arXiv:2412.19437 §2.2, §5.4.3; spec docs/model.md §4): after a step, the MTP
/// module runs over the positions whose next token is now known (filling its own cache layer),
/// and its last position's logits give a draft d of the token after next. The next step feeds
/// [t, d]; the main logits at t's position decide: greedy accepts d iff it is their argmax;
/// sampling accepts d with probability min(1, p(d)/q(d)) and otherwise draws from
/// norm(max(0, p − q)) (Leviathan et al. 2023, arXiv:2211.17192). On acceptance the logits at
/// d's position give one more token. Greedy output is identical with and without speculation.
#pragma once

#include <deepmoe/generate/sampler.hpp>
#include <deepmoe/model/model.hpp>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace generate {

/// One generation request.
struct Request {
  std::vector<std::int32_t> prompt;          ///< token ids, ≥ 1
  SamplingParams sampling;                   ///< how to pick tokens (greedy by default)
  int max_new_tokens = 128;                  ///< stop after this many generated tokens
  std::vector<std::int32_t> stop_token_ids;  ///< stop after generating one of these
};

/// Why a request finished.
enum class FinishReason {
  kNone,       ///< not finished
  kStopToken,  ///< it generated one of its stop_token_ids (included in its output)
  kMaxTokens,  ///< it generated max_new_tokens
  kCapacity,   ///< its cache slot is full (GeneratorOptions::max_sequence)
};

/// A token generated for a request, in order; `finished` is set on its last token.
struct Event {
  int request = -1;
  std::int32_t token = -1;
  FinishReason finished = FinishReason::kNone;
};

/// Sizes of a Generator.
struct GeneratorOptions {
  int max_batch = 8;                 ///< sequences at once (KV cache slots)
  std::int64_t max_sequence = 2048;  ///< prompt + generated tokens per sequence (slot capacity)
  std::int64_t prefill_chunk = 512;  ///< prompt tokens per sequence per step
  bool speculative_mtp = false;      ///< draft with the MTP module and verify (needs MTP weights)
};

/// Counts since create().
struct GeneratorStats {
  std::int64_t steps = 0;
  std::int64_t prefill_tokens = 0;    ///< prompt tokens run
  std::int64_t generated_tokens = 0;  ///< tokens emitted
  std::int64_t drafted = 0;           ///< MTP drafts verified
  std::int64_t accepted = 0;          ///< drafts accepted
};

/// Generation over a model (which must outlive it) with its latent KV cache: a Model<C> on the
/// CPU with a KvCache<C, KV>, or any model type M with Model's interface for forward() — e.g.
/// gpu::DeviceModel<C> with a gpu::DeviceKvCache<C, KV> (M::cache_type<KV>); speculation needs
/// M to have MTP modules (has_mtp()).
template <config::ModelConfig C, class KV = typename C::act_t, class M = model::Model<C>>
class Generator {
 public:
  Generator() = default;

  /// A generator over `model` (loaded), which it switches to the absorbed MLA form (DeepSeek's
  /// decode form: attention over the 576-wide latents, never expanded per head).
  /// @returns invalid_argument for non-positive sizes or speculation without an MTP module;
  ///          the KV cache's allocation error.
  static Status create(M& model, GeneratorOptions const& opt, Generator& out) {
    if (!model.loaded()) {
      return invalid_argument("Generator: the model is not loaded");
    }
    if (opt.max_batch < 1 || opt.max_sequence < 2 || opt.prefill_chunk < 1) {
      return invalid_argument(
          "Generator: max_batch, prefill_chunk must be >= 1 and "
          "max_sequence >= 2");
    }
    if (opt.speculative_mtp && !model.has_mtp()) {
      return invalid_argument(
          "Generator: speculative_mtp needs a model with MTP weights "
          "(num_nextn_predict_layers > 0, loaded with LoadOptions::mtp)");
    }
    Generator g;
    model.set_mla_form(MlaForm::kAbsorbed);
    g.model_ = &model;
    g.opt_ = opt;
    DEEPMOE_RETURN_IF_ERROR(KvCache::create(model.config(), opt.max_batch, opt.max_sequence,
                                            g.cache_, opt.speculative_mtp));
    g.slots_.resize(static_cast<std::size_t>(opt.max_batch));
    out = std::move(g);
    return {};
  }

  /// Queues `r`; `id` is its number in Events (0, 1, … in add order).
  /// @returns invalid_argument for an empty prompt, a token id outside the vocabulary, a prompt
  ///          that does not fit max_sequence, max_new_tokens < 1 or bad sampling parameters.
  Status add(Request r, int& id) {
    if (model_ == nullptr) {
      return invalid_argument("Generator::add: not created");
    }
    DEEPMOE_RETURN_IF_ERROR(check(r.sampling));
    std::int64_t const V = model_->config().vocab_size;
    if (r.prompt.empty()) {
      return invalid_argument("Generator::add: the prompt is empty");
    }
    for (std::size_t i = 0; i < r.prompt.size(); ++i) {
      if (r.prompt[i] < 0 || r.prompt[i] >= V) {
        return Status(StatusCode::kOutOfRange, "Generator::add: prompt token " + std::to_string(i) +
                                                   " = " + std::to_string(r.prompt[i]) +
                                                   " is outside the vocabulary [0, " +
                                                   std::to_string(V) + ")");
      }
    }
    if (static_cast<std::int64_t>(r.prompt.size()) >= opt_.max_sequence) {
      return invalid_argument("Generator::add: the prompt has " + std::to_string(r.prompt.size()) +
                              " tokens; max_sequence = " + std::to_string(opt_.max_sequence) +
                              " leaves no room to generate");
    }
    if (r.max_new_tokens < 1) {
      return invalid_argument("Generator::add: max_new_tokens must be >= 1");
    }
    id = next_id_++;
    queue_.push_back({id, std::move(r)});
    return {};
  }

  /// Ends request `id` now, queued or running (e.g. its text reached a stop string); the tokens
  /// it has are its output. @returns false if no such request is queued or running.
  bool cancel(int id) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->first == id) {
        queue_.erase(it);
        return true;
      }
    }
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      if (slots_[k].active && slots_[k].request == id) {
        slots_[k].active = false;
        cache_.release(static_cast<int>(k));
        return true;
      }
    }
    return false;
  }

  /// True when nothing is queued or running.
  bool done() const {
    return queue_.empty() &&
           std::none_of(slots_.begin(), slots_.end(), [](Slot const& s) { return s.active; });
  }
  /// Counts so far.
  GeneratorStats const& stats() const noexcept { return stats_; }
  /// The model.
  M& model() noexcept { return *model_; }

  /// One forward over the active sequences (admitting queued requests into free slots first);
  /// appends the tokens generated in this step to `events`, in slot order.
  /// @returns the model's error (then the step's sequences are left as they were before it).
  Status step(std::vector<Event>& events) {
    admit();
    std::vector<Piece> pieces;
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      Slot& s = slots_[k];
      if (!s.active) {
        continue;
      }
      Piece p{static_cast<int>(k), {}, {}, false};
      auto const done = static_cast<std::int64_t>(s.tokens.size());  // tokens known
      if (s.prefilled < static_cast<std::int64_t>(s.prompt_length)) {
        std::int64_t const end =
            std::min<std::int64_t>(s.prompt_length, s.prefilled + opt_.prefill_chunk);
        p.tokens.assign(s.tokens.begin() + s.prefilled, s.tokens.begin() + end);
        p.start = s.prefilled;
      } else {
        p.tokens = {s.tokens.back()};
        p.start = done - 1;
        if (s.draft && done + 1 <= opt_.max_sequence) {
          p.tokens.push_back(*s.draft);
          p.verify = true;
        }
      }
      pieces.push_back(std::move(p));
    }
    if (pieces.empty()) {
      return {};
    }
    // the main forward: every position's logits and final hidden states
    std::vector<model::Sequence> batch;
    std::int64_t N = 0;
    for (auto& p : pieces) {
      p.positions.resize(p.tokens.size());
      for (std::size_t i = 0; i < p.tokens.size(); ++i)
        p.positions[i] = p.start + static_cast<std::int64_t>(i);
      N += static_cast<std::int64_t>(p.tokens.size());
    }
    for (auto const& p : pieces) {
      auto const n = static_cast<std::int64_t>(p.tokens.size());
      batch.push_back({VectorView<std::int32_t const>(p.tokens.data(), n),
                       VectorView<std::int64_t const>(p.positions.data(), n), p.slot});
    }
    C const& cfg = model_->config();
    std::int64_t const V = cfg.vocab_size, H = cfg.hidden_size;
    logits_.resize(static_cast<std::size_t>(N * V));
    hidden_.resize(opt_.speculative_mtp ? static_cast<std::size_t>(N * H) : 0);
    DEEPMOE_RETURN_IF_ERROR(model_->forward(
        batch, cache_, MatrixView<float>(logits_.data(), N, V), model::LogitsRows::kAll,
        opt_.speculative_mtp ? MatrixView<float>(hidden_.data(), N, H) : MatrixView<float>()));
    ++stats_.steps;

    // tokens from the logits; for speculation, the MTP inputs (positions with a known next)
    std::vector<MtpPiece> mtp;
    std::int64_t row = 0;
    for (auto const& p : pieces) {
      Slot& s = slots_[static_cast<std::size_t>(p.slot)];
      auto const n = static_cast<std::int64_t>(p.tokens.size());
      auto logits_at = [&](std::int64_t i) {
        return std::span<float const>(logits_.data() + (row + i) * V, static_cast<std::size_t>(V));
      };
      MtpPiece m{p.slot, p.start, row, {}};
      if (s.prefilled < s.prompt_length) {  // a prompt chunk
        s.prefilled += n;
        stats_.prefill_tokens += n;
        for (std::int64_t i = 0; i + 1 < n; ++i)
          m.next.push_back(p.tokens[static_cast<std::size_t>(i + 1)]);
        if (s.prefilled < s.prompt_length) {
          m.next.push_back(s.tokens[static_cast<std::size_t>(s.prefilled)]);
        } else {
          m.next.push_back(emit(s, sample_token(s, logits_at(n - 1)), events));
        }
      } else if (!p.verify) {  // one decoded token
        m.next.push_back(emit(s, sample_token(s, logits_at(0)), events));
      } else {  // [t, d]: accept or correct d
        std::int32_t const d = p.tokens[1];
        ++stats_.drafted;
        std::optional<std::int32_t> const fix = verify(s, logits_at(0), d);
        if (!fix) {
          ++stats_.accepted;
          m.next.push_back(emit(s, d, events));
          if (s.active) {
            m.next.push_back(emit(s, sample_token(s, logits_at(1)), events));
          }
        } else {
          m.next.push_back(emit(s, *fix, events));
          cache_.truncate(p.slot, p.start + 1);  // d's position is void
        }
      }
      s.draft.reset();
      if (s.active) {
        mtp.push_back(std::move(m));
      } else {
        cache_.release(p.slot);
      }
      row += n;
    }
    if (opt_.speculative_mtp && !mtp.empty()) {
      DEEPMOE_RETURN_IF_ERROR(draft(mtp));
    }
    return {};
  }

 private:
  using KvCache = typename M::template cache_type<KV>;

  struct Slot {
    bool active = false;
    int request = -1;
    Request req;
    std::vector<std::int32_t> tokens;  // prompt, then generated
    std::int64_t prompt_length = 0, prefilled = 0;
    int generated = 0;
    util::Rng rng{0};
    std::optional<std::int32_t> draft;
    std::vector<double> draft_probs;  // q, the draft's distribution (sampling only)
  };
  struct Piece {
    int slot;
    std::vector<std::int32_t> tokens;
    std::vector<std::int64_t> positions;
    bool verify;
    std::int64_t start = 0;
  };
  struct MtpPiece {
    int slot;
    std::int64_t start;  // position of the first row
    std::int64_t row;    // its row in hidden_
    std::vector<std::int32_t> next;
  };

  void admit() {
    for (std::size_t k = 0; k < slots_.size() && !queue_.empty(); ++k) {
      Slot& s = slots_[k];
      if (s.active) {
        continue;
      }
      auto [id, r] = std::move(queue_.front());
      queue_.pop_front();
      s = Slot{};
      s.active = true;
      s.request = id;
      s.tokens = r.prompt;
      s.prompt_length = static_cast<std::int64_t>(r.prompt.size());
      s.rng = util::Rng(r.sampling.seed);
      s.req = std::move(r);
      cache_.release(static_cast<int>(k));
    }
  }

  std::int32_t sample_token(Slot& s, std::span<float const> logits) {
    return sample(logits, s.req.sampling, s.rng, probs_);
  }

  // Accepts draft d (nullopt) or returns the corrected token, from the main logits at t.
  std::optional<std::int32_t> verify(Slot& s, std::span<float const> logits, std::int32_t d) {
    SamplingParams const& sp = s.req.sampling;
    if (sp.temperature == 0.0) {
      std::int32_t const t = argmax(logits);
      return t == d ? std::nullopt : std::optional<std::int32_t>(t);
    }
    sampling_distribution(logits, sp, probs_);
    double const p = probs_[static_cast<std::size_t>(d)];
    double const q = s.draft_probs[static_cast<std::size_t>(d)];
    double const u = static_cast<double>(s.rng.next() >> 11) * 0x1p-53;
    if (q > 0 && u < std::min(1.0, p / q)) {
      return std::nullopt;
    }
    double z = 0;  // residual distribution norm(max(0, p − q))
    for (std::size_t v = 0; v < probs_.size(); ++v) {
      probs_[v] = std::max(0.0, probs_[v] - s.draft_probs[v]);
      z += probs_[v];
    }
    if (z <= 0) {  // p ≤ q everywhere: p = q, so draw from p
      sampling_distribution(logits, sp, probs_);
    } else {
      for (double& x : probs_)
        x /= z;
    }
    return draw(probs_, s.rng);
  }

  // Appends token t to s and an Event; finishes s on a stop token, max tokens or a full slot.
  std::int32_t emit(Slot& s, std::int32_t t, std::vector<Event>& events) {
    s.tokens.push_back(t);
    ++s.generated;
    ++stats_.generated_tokens;
    FinishReason why = FinishReason::kNone;
    auto const& stop = s.req.stop_token_ids;
    if (std::find(stop.begin(), stop.end(), t) != stop.end()) {
      why = FinishReason::kStopToken;
    } else if (s.generated >= s.req.max_new_tokens) {
      why = FinishReason::kMaxTokens;
    } else if (static_cast<std::int64_t>(s.tokens.size()) >= opt_.max_sequence) {
      why = FinishReason::kCapacity;
    }
    events.push_back({s.request, t, why});
    if (why != FinishReason::kNone) {
      s.active = false;
    }
    return t;
  }

  // Runs the MTP module over each piece's positions (its own cache layer) and keeps the last
  // position's draft for sequences that will decode next.
  Status draft(std::vector<MtpPiece> const& mtp) {
    C const& cfg = model_->config();
    std::int64_t const V = cfg.vocab_size, H = cfg.hidden_size;
    std::vector<std::vector<std::int64_t>> pos;
    std::vector<model::Sequence> batch;
    std::vector<float> hid;
    for (auto const& m : mtp) {
      pos.emplace_back(m.next.size());
      for (std::size_t i = 0; i < m.next.size(); ++i)
        pos.back()[i] = m.start + static_cast<std::int64_t>(i);
      hid.insert(hid.end(), hidden_.begin() + m.row * H,
                 hidden_.begin() + (m.row + static_cast<std::int64_t>(m.next.size())) * H);
    }
    for (std::size_t i = 0; i < mtp.size(); ++i) {
      auto const n = static_cast<std::int64_t>(mtp[i].next.size());
      batch.push_back({VectorView<std::int32_t const>(mtp[i].next.data(), n),
                       VectorView<std::int64_t const>(pos[i].data(), n), mtp[i].slot});
    }
    auto const rows = static_cast<std::int64_t>(mtp.size());
    std::vector<float> logits(static_cast<std::size_t>(rows * V));
    if constexpr (std::is_same_v<M, model::Model<C>>) {  // (create() refuses it elsewhere)
      DEEPMOE_RETURN_IF_ERROR(model_->mtp_forward(
          batch, cache_,
          MatrixView<float const>(hid.data(), static_cast<std::int64_t>(hid.size()) / H, H),
          MatrixView<float>(logits.data(), rows, V), model::LogitsRows::kLast));
    }
    for (std::size_t i = 0; i < mtp.size(); ++i) {
      Slot& s = slots_[static_cast<std::size_t>(mtp[i].slot)];
      if (s.prefilled < s.prompt_length) {
        continue;  // still prefilling: no draft yet
      }
      std::span<float const> const q(logits.data() + static_cast<std::int64_t>(i) * V,
                                     static_cast<std::size_t>(V));
      if (s.req.sampling.temperature == 0.0) {
        s.draft = argmax(q);
      } else {
        sampling_distribution(q, s.req.sampling, s.draft_probs);
        s.draft = draw(s.draft_probs, s.rng);
      }
    }
    return {};
  }

  M* model_ = nullptr;
  GeneratorOptions opt_;
  KvCache cache_;
  std::vector<Slot> slots_;
  std::deque<std::pair<int, Request>> queue_;
  int next_id_ = 0;
  GeneratorStats stats_;
  std::vector<float> logits_, hidden_;
  std::vector<double> probs_;
};

}  // namespace generate
DEEPMOE_NAMESPACE_END
