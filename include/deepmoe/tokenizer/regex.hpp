// SPDX-License-Identifier: Apache-2.0
/// @file regex.hpp
/// @brief A compiled PCRE2 regex that finds matches the way `tokenizers` does with Oniguruma.
///
/// `tokenizers` compiles Split and ByteLevel patterns with Oniguruma (Ruby syntax, UTF-8) and
/// walks them with the onig crate's find_iter. Here PCRE2 runs them, set up to agree:
///   - PCRE2_UTF | PCRE2_UCP: \p{..}, \d, \s, [[:alpha:]] are Unicode-aware;
///   - PCRE2_MULTILINE, newline LF: Ruby's ^ and $ match at every line;
///   - \s and \S (outside brackets, and \s inside them) are rewritten to Unicode White_Space,
///     Oniguruma's \s: PCRE2's also matches U+180E;
///   - empty matches are skipped as onig's find_iter skips them (one directly after the previous
///     match is dropped, and the search moves on by one character).
/// Other escapes keep PCRE2's meaning; where it differs from Oniguruma (\h is a hex digit there,
/// a horizontal space here; \w lacks marks here) a pattern using them may split differently.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif

#include <deepmoe/core/status.hpp>

#include <pcre2.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// A byte range [begin, end) of a subject string.
struct Span {
  std::size_t begin;
  std::size_t end;
};

namespace detail {

// Unicode White_Space: Oniguruma's \s, Rust's char::is_whitespace.
inline constexpr std::string_view kWhiteSpaceClass =
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";

/// `pattern` with \s (and \S outside brackets) spelled as White_Space classes. Knows just
/// enough PCRE2 syntax to tell where it is: escapes, \Q..\E, bracket classes (with a leading
/// literal ']' and POSIX [:name:] inside).
inline std::string with_white_space_classes(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    char const c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char const e = pattern[++i];
      if (e == 'Q') {  // literal up to \E
        std::size_t const end = pattern.find("\\E", i + 1);
        std::size_t const stop = end == std::string_view::npos ? pattern.size() : end + 2;
        out.append(pattern.substr(i - 1, stop - (i - 1)));
        i = stop - 1;
      } else if (e == 's' && in_class) {
        out.append(kWhiteSpaceClass);
      } else if ((e == 's' || e == 'S') && !in_class) {
        out.append(e == 's' ? "[" : "[^").append(kWhiteSpaceClass).append("]");
      } else {
        out += c;
        out += e;
      }
    } else if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') {
        out += pattern[++i];
      }
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') {  // a literal ']' first
        out += pattern[++i];
      }
    } else if (c == '[' && in_class && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      std::size_t const end = pattern.find(":]", i + 2);
      std::size_t const stop = end == std::string_view::npos ? i + 1 : end + 2;
      out.append(pattern.substr(i, stop - i));
      i = stop - 1;
    } else {
      in_class = in_class && c != ']';
      out += c;
    }
  }
  return out;
}

struct CodeDeleter {
  void operator()(pcre2_code_8* c) const noexcept { pcre2_code_free_8(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data_8* m) const noexcept { pcre2_match_data_free_8(m); }
};
struct CompileContextDeleter {
  void operator()(pcre2_compile_context_8* c) const noexcept { pcre2_compile_context_free_8(c); }
};

inline std::string pcre2_message(int code) {
  PCRE2_UCHAR8 buffer[256];
  int const n = pcre2_get_error_message_8(code, buffer, sizeof buffer);
  return n < 0 ? "PCRE2 error " + std::to_string(code)
               : std::string(reinterpret_cast<char const*>(buffer), static_cast<std::size_t>(n));
}

}  // namespace detail

/// A pattern compiled once (JIT where available); matching is const and thread-safe.
class Regex {
 public:
  /// Compiles `pattern`, a regex (or, with `literal`, a plain string to find).
  /// @param field where the pattern comes from, for messages ("pre_tokenizer.pattern.Regex")
  /// @returns invalid_argument naming `field`, the pattern, PCRE2's message and the offset when
  ///          it does not compile.
  static Status compile(std::string_view pattern, bool literal, std::string const& field,
                        Regex& out) {
    std::unique_ptr<pcre2_compile_context_8, detail::CompileContextDeleter> ctx(
        pcre2_compile_context_create_8(nullptr));
    pcre2_set_newline_8(ctx.get(), PCRE2_NEWLINE_LF);
    std::string const source =
        literal ? std::string(pattern) : detail::with_white_space_classes(pattern);
    std::uint32_t const options =
        PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE);
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code_8* code = pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(source.data()),
                                         source.size(), options, &error, &offset, ctx.get());
    if (code == nullptr) {
      std::string const at =  // an offset into the rewritten pattern would mislead
          source == pattern ? " (at offset " + std::to_string(offset) + ")" : "";
      return invalid_argument(field + ": cannot compile \"" + std::string(pattern) +
                              "\": " + detail::pcre2_message(error) + at +
                              " — HINT: a PCRE2/Oniguruma syntax difference?");
    }
    pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE);  // NOTES: without JIT it is interpreted
    out.code_.reset(code, detail::CodeDeleter{});
    out.source_ = pattern;
    return {};
  }

  /// The pattern as given.
  std::string const& source() const noexcept { return source_; }

  /// Appends every match in `text` (well-formed UTF-8) to `out`, in order, as onig's find_iter
  /// yields them (empty matches included).
  /// @returns invalid_argument naming the pattern and offset if PCRE2 gives up (match limit).
  Status find_all(std::string_view text, std::vector<Span>& out) const {
    std::unique_ptr<pcre2_match_data_8, detail::MatchDataDeleter> md(
        pcre2_match_data_create_from_pattern_8(code_.get(), nullptr));
    auto const* subject = reinterpret_cast<PCRE2_SPTR8>(text.data());
    std::size_t from = 0;
    bool have_last = false;
    std::size_t last_end = 0;
    while (from <= text.size()) {
      int rc = pcre2_match_8(code_.get(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, md.get(),
                             nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match_8(code_.get(), subject, text.size(), from,
                           PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) {
        break;
      }
      if (rc < 0) {
        return invalid_argument("regex \"" + source_ + "\" failed at byte " + std::to_string(from) +
                                " of a " + std::to_string(text.size()) +
                                "-byte piece: " + detail::pcre2_message(rc));
      }
      PCRE2_SIZE const* ov = pcre2_get_ovector_pointer_8(md.get());
      Span const m{ov[0], ov[1]};
      if (m.begin == m.end && have_last && last_end == m.end) {
        // onig's find_iter: no empty match right after the previous one; step one character
        from += from < text.size() ? static_cast<std::size_t>(utf8_length(text[from])) : 1;
        continue;
      }
      out.push_back(m);
      from = m.end;
      have_last = true;
      last_end = m.end;
    }
    return {};
  }

 private:
  static int utf8_length(char lead) noexcept {
    auto const b = static_cast<unsigned char>(lead);
    return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  }

  std::shared_ptr<pcre2_code_8> code_;  // shared: a Tokenizer copy keeps the compiled code
  std::string source_;
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
