// SPDX-License-Identifier: Apache-2.0
/// @file batch.hpp
/// @brief A batch of sequences for a model's forward pass, and the rules every backend checks
/// before computing one: token ids in the vocabulary, one position per token, output shapes,
/// and how sequences continue in the slots of a KV cache.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// One sequence of a batch: its tokens and their absolute positions (start_pos + i for a
/// prefill that continues at start_pos). Host memory; int32 token ids, int64 positions.
struct Sequence {
  VectorView<std::int32_t const> tokens;     ///< [T] token ids in [0, vocab_size)
  VectorView<std::int64_t const> positions;  ///< [T] absolute positions ≥ 0 [tokens]
  int slot = -1;  ///< its KV cache slot, for forward() with a cache (ignored without one)
};

/// Which positions get logits.
enum class LogitsRows {
  kLast,  ///< one row per sequence: its last position (next-token prediction)
  kAll,   ///< every position of every sequence, in batch order
};

/// Checks a batch against config `cfg` and the output views of a forward pass, and counts its
/// tokens: N = Σ_s T_s.
/// @param logits  [rows, V] fp32: rows = batch.size() (kLast) or N (kAll)
/// @param hidden  [N, H] fp32, or an empty view
/// @returns invalid_argument for tokens and positions of different lengths, an empty sequence
///          under kLast, null data or misshaped outputs; kOutOfRange naming sequence and
///          position for a token id outside [0, V).
template <config::ModelConfig C>
Status check_batch(std::span<Sequence const> batch, LogitsRows which, MatrixView<float> logits,
                   MatrixView<float> hidden, C const& cfg, std::int64_t& N) {
  std::int64_t const V = cfg.vocab_size, H = cfg.hidden_size;
  N = 0;
  for (std::size_t s = 0; s < batch.size(); ++s) {
    std::int64_t const T = batch[s].tokens.extent(0);
    if (batch[s].positions.extent(0) != T) {
      return invalid_argument("forward: sequence " + std::to_string(s) + " has " +
                              std::to_string(T) + " tokens but " +
                              std::to_string(batch[s].positions.extent(0)) + " positions");
    }
    if (T == 0 && which == LogitsRows::kLast) {
      return invalid_argument("forward: sequence " + std::to_string(s) +
                              " is empty, so it has no last position to give logits for");
    }
    DEEPMOE_RETURN_IF_ERROR(require_data("forward", "tokens", batch[s].tokens.data(), T));
    DEEPMOE_RETURN_IF_ERROR(require_data("forward", "positions", batch[s].positions.data(), T));
    for (std::int64_t i = 0; i < T; ++i) {
      std::int32_t const t = batch[s].tokens(i);
      if (t < 0 || t >= V) {
        return Status(StatusCode::kOutOfRange,
                      "forward: sequence " + std::to_string(s) + ", position " + std::to_string(i) +
                          ": token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                          std::to_string(V) + ") — HINT: a tokenizer of another model?");
      }
    }
    N += T;
  }
  std::int64_t const rows =
      which == LogitsRows::kLast ? static_cast<std::int64_t>(batch.size()) : N;
  if (logits.extent(0) != rows || logits.extent(1) != V) {
    return invalid_argument("forward: logits is [" + std::to_string(logits.extent(0)) + ", " +
                            std::to_string(logits.extent(1)) + "], expected [" +
                            std::to_string(rows) + ", " + std::to_string(V) + "]");
  }
  if (hidden.data() != nullptr && (hidden.extent(0) != N || hidden.extent(1) != H)) {
    return invalid_argument("forward: hidden is [" + std::to_string(hidden.extent(0)) + ", " +
                            std::to_string(hidden.extent(1)) + "], expected [" + std::to_string(N) +
                            ", " + std::to_string(H) + "]");
  }
  return require_data("forward", "logits", logits.data(), logits.size());
}

/// The rules of a forward pass that continues in a KV cache: each sequence names a slot of the
/// cache, no slot twice, is not empty, starts at most at the slot's length (no gap) and ends
/// within its capacity. With `rewind`, every slot is then truncated to its sequence's first
/// position (a start below the length recomputes from there).
/// @tparam Cache  KvCache or gpu::DeviceKvCache (slots(), capacity(), length(), truncate())
/// @returns invalid_argument naming the sequence and slot; kOutOfRange beyond the capacity.
template <class Cache>
Status check_slots(std::span<Sequence const> batch, Cache& cache, bool rewind) {
  std::vector<bool> used(static_cast<std::size_t>(cache.slots()), false);
  for (std::size_t q = 0; q < batch.size(); ++q) {
    Sequence const& seq = batch[q];
    std::string const who = "forward: sequence " + std::to_string(q);
    if (seq.slot < 0 || seq.slot >= cache.slots()) {
      return invalid_argument(who + " has KV cache slot " + std::to_string(seq.slot) +
                              ", outside [0, " + std::to_string(cache.slots()) + ")");
    }
    if (used[static_cast<std::size_t>(seq.slot)]) {
      return invalid_argument(who + " uses KV cache slot " + std::to_string(seq.slot) +
                              ", which another sequence of the batch uses");
    }
    used[static_cast<std::size_t>(seq.slot)] = true;
    std::int64_t const T = seq.tokens.extent(0);
    if (T == 0) {
      return invalid_argument(who + " is empty");
    }
    std::int64_t const p0 = seq.positions(0), len = cache.length(seq.slot);
    if (p0 < 0 || p0 > cache.capacity()) {
      return Status(StatusCode::kOutOfRange, who + " starts at position " + std::to_string(p0) +
                                                 ", outside the KV cache's [0, " +
                                                 std::to_string(cache.capacity()) + "]");
    }
    for (std::int64_t i = 1; i < T; ++i) {
      if (seq.positions(i) != p0 + i) {
        return invalid_argument(who +
                                ": with a KV cache the positions must be consecutive; "
                                "position[" +
                                std::to_string(i) + "] = " + std::to_string(seq.positions(i)) +
                                " after " + std::to_string(p0 + i - 1));
      }
    }
    if (p0 > len) {
      return invalid_argument(who + " starts at position " + std::to_string(p0) + " but slot " +
                              std::to_string(seq.slot) + " holds " + std::to_string(len) +
                              " tokens: positions " + std::to_string(len) + ".." +
                              std::to_string(p0 - 1) + " are missing");
    }
    if (p0 + T > cache.capacity()) {
      return Status(StatusCode::kOutOfRange,
                    who + ": positions up to " + std::to_string(p0 + T - 1) +
                        " exceed the KV cache's capacity of " + std::to_string(cache.capacity()) +
                        " tokens per sequence — HINT: create a larger cache, or end the "
                        "sequence");
    }
  }
  if (rewind) {
    for (Sequence const& seq : batch)
      cache.truncate(seq.slot, seq.positions(0));
  }
  return {};
}

}  // namespace model
DEEPMOE_NAMESPACE_END
