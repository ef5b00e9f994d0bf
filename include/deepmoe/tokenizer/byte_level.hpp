// SPDX-License-Identifier: Apache-2.0
/// @file byte_level.hpp
/// @brief GPT-2's byte-level alphabet: every byte is given a printable character, so that a BPE
/// vocabulary of strings covers any byte sequence.
///
/// bytes_to_unicode (openai/gpt-2 encoder.py; tokenizers pre_tokenizers/byte_level.rs): the
/// bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves (as code points); the other
/// 68 bytes, in increasing order, take U+0100, U+0101, ... (space 0x20 → U+0120 'Ġ', newline
/// 0x0A → U+010A 'Ċ').
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <array>
#include <string>
#include <string_view>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// The code point standing for each byte.
inline constexpr std::array<char32_t, 256> kByteToCodePoint = [] {
  std::array<char32_t, 256> t{};
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    bool const printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    t[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return t;
}();

/// The byte a code point stands for, or -1 when it is not in the alphabet.
constexpr int byte_of_code_point(char32_t cp) noexcept {
  constexpr auto inverse = [] {
    std::array<short, 0x144> t{};  // NOTES: 0x100 + 68 remapped bytes
    t.fill(-1);
    for (int b = 0; b < 256; ++b) {
      t[kByteToCodePoint[static_cast<std::size_t>(b)]] = static_cast<short>(b);
    }
    return t;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

/// Appends the byte-level form of `bytes` (each byte as its character, UTF-8 encoded) to `out`.
inline void byte_level_encode(std::string_view bytes, std::string& out) {
  for (char const c : bytes) {
    utf8_append(out, kByteToCodePoint[static_cast<unsigned char>(c)]);
  }
}

/// Appends the bytes that token `token` stands for to `out`, as tokenizers' ByteLevel decoder
/// does: the byte of each character when all of them are in the alphabet, else the token's own
/// UTF-8 (an added token such as "<｜begin▁of▁sentence｜>").
inline void byte_level_decode(std::string_view token, std::string& out) {
  std::size_t const start = out.size();
  for (std::size_t i = 0; i < token.size();) {
    Utf8Step const c = utf8_step(token, i);
    int const b = c.valid ? byte_of_code_point(c.code_point) : -1;
    if (b < 0) {
      out.resize(start);
      out.append(token);
      return;
    }
    out += static_cast<char>(b);
    i += static_cast<std::size_t>(c.length);
  }
}

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
