// SPDX-License-Identifier: Apache-2.0
/// @file stream_decoder.hpp
/// @brief StreamDecoder: text of generated ids as they come, one id at a time, only ever in
/// whole UTF-8 characters.
///
/// A byte-level token may end inside a character (an emoji takes 4 bytes, often 2-3 tokens);
/// those bytes are held back until the ids that complete the character arrive. Invalid bytes
/// (which no later byte can complete) come out as U+FFFD at once. The concatenation of every
/// feed() and the final flush() equals Tokenizer::decode of all the ids.
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/tokenizer.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <cstdint>
#include <span>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// Incremental decoding of one sequence of ids.
class StreamDecoder {
 public:
  /// Decodes with `tokenizer` (which must outlive this decoder).
  /// @param skip_special_tokens leave out special tokens, as Tokenizer::decode does
  explicit StreamDecoder(Tokenizer const& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

  /// Adds `id`; `text` is set to the characters it completes (often empty).
  /// @returns kOutOfRange if `id` is no token (nothing is added then).
  Status feed(std::int32_t id, std::string& text) {
    std::string bytes;
    DEEPMOE_RETURN_IF_ERROR(
        tokenizer_->decode_bytes(std::span(&id, 1), bytes, skip_special_tokens_));
    pending_ += bytes;
    std::size_t const n = utf8_complete_prefix(pending_);
    text = utf8_lossy(std::string_view(pending_).substr(0, n));
    pending_.erase(0, n);
    return {};
  }

  /// Ends the sequence: the held-back bytes of an unfinished character as U+FFFD (empty when
  /// the ids ended on a character boundary); the decoder is then empty for a new sequence.
  std::string flush() {
    std::string text = utf8_lossy(pending_);
    pending_.clear();
    return text;
  }

 private:
  Tokenizer const* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // 0-3 bytes of an unfinished character
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
