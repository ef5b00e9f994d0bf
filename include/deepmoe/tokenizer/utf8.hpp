// SPDX-License-Identifier: Apache-2.0
/// @file utf8.hpp
/// @brief UTF-8 as the tokenizer sees it: well-formedness by the Unicode standard (Table 3-7),
/// lossy repair of invalid bytes, and the split of a byte stream at its last complete character.
///
/// Invalid input is repaired as Rust's `String::from_utf8_lossy` and Python's
/// `bytes.decode("utf-8", "replace")` do (the Unicode "maximal subpart" practice, §3.9): each
/// maximal prefix of a well-formed sequence that cannot be completed, or else each single bad
/// byte, becomes one U+FFFD. `tokenizers` decodes with from_utf8_lossy, and a Python caller can
/// only hand it text that Python decoded, so this is what both sides of a comparison see.
#pragma once

#include <deepmoe/core/macros.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// One step of a UTF-8 scan at some offset.
struct Utf8Step {
  char32_t code_point;  ///< the character (U+FFFD when !valid)
  int length;           ///< bytes consumed: 1-4 when valid, else the maximal subpart (1-3)
  bool valid;           ///< a well-formed sequence
  bool truncated;       ///< invalid only because `s` ends inside the sequence
};

/// Decodes the character at byte `i` of `s` (i < s.size()).
inline Utf8Step utf8_step(std::string_view s, std::size_t i) noexcept {
  auto const b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    return {b0, 1, true, false};
  }
  // the number of continuation bytes, the range of the first of them, and the payload bits
  int n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  char32_t cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 1, cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 2, cp = b0 & 0x0Fu;
    lo = b0 == 0xE0 ? 0xA0 : 0x80;  // no overlongs
    hi = b0 == 0xED ? 0x9F : 0xBF;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 3, cp = b0 & 0x07u;
    lo = b0 == 0xF0 ? 0x90 : 0x80;  // no overlongs
    hi = b0 == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
  } else {
    return {U'\uFFFD', 1, false, false};
  }
  for (int k = 1; k <= n; ++k) {
    if (i + k >= s.size()) {
      return {U'\uFFFD', k, false, true};
    }
    auto const b = static_cast<unsigned char>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
      return {U'\uFFFD', k, false, false};
    }
    cp = (cp << 6) | (b & 0x3Fu);
  }
  return {cp, n + 1, true, false};
}

/// Appends the UTF-8 encoding of `cp` (a Unicode scalar value) to `out`.
inline void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Whether `s` is well-formed UTF-8.
inline bool utf8_valid(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    Utf8Step const c = utf8_step(s, i);
    if (!c.valid) {
      return false;
    }
    i += static_cast<std::size_t>(c.length);
  }
  return true;
}

/// `s` with each maximal invalid subpart replaced by U+FFFD (from_utf8_lossy); `s` itself when
/// it is well-formed.
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    Utf8Step const c = utf8_step(s, i);
    if (c.valid) {
      out.append(s.substr(i, static_cast<std::size_t>(c.length)));
    } else {
      utf8_append(out, U'\uFFFD');
    }
    i += static_cast<std::size_t>(c.length);
  }
  return out;
}

/// The length of the longest prefix of `s` after which no character is cut: `s` minus a final
/// truncated sequence (1-3 bytes that more bytes could complete). utf8_lossy of that prefix,
/// then of the rest with later bytes appended, equals utf8_lossy of the whole.
inline std::size_t utf8_complete_prefix(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    Utf8Step const c = utf8_step(s, i);
    if (c.truncated) {
      break;
    }
    i += static_cast<std::size_t>(c.length);
  }
  return i;
}

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
