// SPDX-License-Identifier: Apache-2.0
/// @file pre_tokenizer.hpp
/// @brief tokenizer.json's `pre_tokenizer`: the steps that cut text into the pieces BPE merges
/// within, and map bytes to GPT-2's byte-level alphabet.
///
/// Semantics of `tokenizers` (pre_tokenizers/{sequence,split,byte_level,digits}.rs,
/// tokenizer/normalizer.rs NormalizedString::split): each step applies to every piece the
/// previous steps left, and empty pieces are dropped.
///   Split{pattern: {Regex: r} | {String: s}, behavior, invert}: the piece is cut into the
///     matches of the pattern and the text between them (`invert` swaps the two roles), then
///     Removed drops the matches; Isolated keeps every part; MergedWithPrevious/-Next append
///     each match to the part before/prepend it to the part after; Contiguous joins runs of
///     consecutive matches.
///   ByteLevel{add_prefix_space, use_regex}: prepends ' ' to a piece that does not start with
///     one, then (use_regex) isolates GPT-2's regex matches, then writes every piece in the
///     byte-level alphabet.
///   Digits{individual_digits}: isolates each numeric character (\p{N}), or each run of them.
///   Sequence{pretokenizers}: the steps in order.
/// DeepSeek-V3: Sequence[Split(\p{N}{1,3}), Split(CJK/kana runs), Split(a GPT-4-like regex),
/// all Isolated; ByteLevel(add_prefix_space=false, use_regex=false)].
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/byte_level.hpp>
#include <deepmoe/tokenizer/json_fields.hpp>
#include <deepmoe/tokenizer/regex.hpp>

#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// What a Split step does with the matches of its pattern (tokenizers SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

/// The pre-tokenizer of a tokenizer.json, its regexes compiled once.
class PreTokenizer {
 public:
  /// GPT-2's pattern, the one ByteLevel uses when `use_regex` is true.
  static constexpr std::string_view kGpt2Pattern =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

  /// A byte-level pre-tokenizer without regex: ByteLevel(add_prefix_space=false,
  /// use_regex=false); every byte of the text goes to BPE in one piece.
  static PreTokenizer byte_level_only() {
    PreTokenizer p;
    p.steps_.push_back(Step{Step::kByteLevel, {}, false, SplitBehavior::kIsolated, false, false});
    return p;
  }

  /// Reads the `pre_tokenizer` value `j` (null: the text is one piece) at `path`.
  /// @returns invalid_argument naming the field for a malformed step or a regex that does not
  ///          compile; kNotSupported naming the field for a step type other than those above.
  static Status from_json(detail::Json const& j, std::string const& path, PreTokenizer& out) {
    out.steps_.clear();
    return j.is_null() ? Status{} : out.add(j, path);
  }

  /// Cuts `text` (well-formed UTF-8, no added tokens in it) into `pieces` (replaced), in
  /// order; each piece is non-empty.
  /// @returns invalid_argument if a regex gives up on the text (PCRE2's match limit).
  Status split(std::string_view text, std::vector<std::string>& pieces) const {
    pieces.assign(1, std::string(text));
    std::vector<std::string> next;
    std::vector<Span> matches;
    for (Step const& s : steps_) {
      next.clear();
      for (std::string& piece : pieces) {
        if (s.kind == Step::kByteLevel && s.add_prefix_space && !piece.starts_with(' ')) {
          piece.insert(0, 1, ' ');
        }
        if (s.kind == Step::kByteLevel && !s.has_regex) {
          if (!piece.empty()) {
            next.push_back(std::move(piece));
          }
          continue;
        }
        matches.clear();
        DEEPMOE_RETURN_IF_ERROR(s.regex.find_all(piece, matches));
        cut(piece, matches, s.kind == Step::kByteLevel ? SplitBehavior::kIsolated : s.behavior,
            s.invert, next);
      }
      std::swap(pieces, next);
      if (s.kind == Step::kByteLevel) {
        for (std::string& piece : pieces) {
          std::string mapped;
          byte_level_encode(piece, mapped);
          piece = std::move(mapped);
        }
      }
    }
    std::erase_if(pieces, [](std::string const& p) { return p.empty(); });
    return {};
  }

 private:
  struct Step {
    enum Kind { kSplit, kByteLevel } kind;
    Regex regex;
    bool has_regex;  // ByteLevel: use_regex
    SplitBehavior behavior;
    bool invert;
    bool add_prefix_space;  // ByteLevel
  };

  Status add(detail::Json const& j, std::string const& path) {
    using detail::field;
    if (!j.is_object()) {
      return detail::wrong_type(path, j, "an object with a \"type\"");
    }
    std::string type;
    DEEPMOE_RETURN_IF_ERROR(detail::read_string(j, path, "type", type));
    if (type == "Sequence") {
      detail::Json const* steps = detail::member(j, "pretokenizers");
      if (steps == nullptr || !steps->is_array()) {
        return invalid_argument(field(path, "pretokenizers") + " is missing or not an array");
      }
      for (std::size_t i = 0; i < steps->size(); ++i) {
        DEEPMOE_RETURN_IF_ERROR(
            add((*steps)[i], field(path, "pretokenizers") + "[" + std::to_string(i) + "]"));
      }
      return {};
    }
    Step s{Step::kSplit, {}, true, SplitBehavior::kIsolated, false, false};
    if (type == "ByteLevel") {
      s.kind = Step::kByteLevel;
      DEEPMOE_RETURN_IF_ERROR(
          detail::read_bool(j, path, "add_prefix_space", true, s.add_prefix_space));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(j, path, "use_regex", true, s.has_regex));
      if (s.has_regex) {
        DEEPMOE_RETURN_IF_ERROR(Regex::compile(kGpt2Pattern, false, path, s.regex));
      }
    } else if (type == "Digits") {
      bool individual = false;
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(j, path, "individual_digits", false, individual));
      // char::is_numeric is \p{N}; Contiguous runs of single-character matches are \p{N}+
      DEEPMOE_RETURN_IF_ERROR(
          Regex::compile(individual ? "\\p{N}" : "\\p{N}+", false, path, s.regex));
    } else if (type == "Split") {
      DEEPMOE_RETURN_IF_ERROR(read_split(j, path, s));
    } else {
      return Status(StatusCode::kNotSupported,
                    field(path, "type") + ": \"" + type +
                        "\" is not supported (supported: Sequence, Split, ByteLevel, Digits)");
    }
    steps_.push_back(std::move(s));
    return {};
  }

  static Status read_split(detail::Json const& j, std::string const& path, Step& s) {
    using detail::field;
    detail::Json const* pattern = detail::member(j, "pattern");
    std::string const pattern_field = field(path, "pattern");
    if (pattern == nullptr || !pattern->is_object() || pattern->size() != 1 ||
        !(pattern->contains("Regex") || pattern->contains("String")) ||
        !pattern->begin()->is_string()) {
      return pattern == nullptr
                 ? invalid_argument(pattern_field + " is missing")
                 : detail::wrong_type(pattern_field, *pattern,
                                      "{\"Regex\": \"...\"} or {\"String\": \"...\"}");
    }
    bool const literal = pattern->contains("String");
    std::string const text = pattern->begin()->get<std::string>();
    if (literal && text.empty()) {
      return invalid_argument(field(pattern_field, "String") + " is empty");
    }
    DEEPMOE_RETURN_IF_ERROR(
        Regex::compile(text, literal, field(pattern_field, literal ? "String" : "Regex"), s.regex));
    std::string behavior;
    DEEPMOE_RETURN_IF_ERROR(detail::read_string(j, path, "behavior", behavior));
    constexpr std::pair<std::string_view, SplitBehavior> kBehaviors[] = {
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous}};
    auto const* it = std::find_if(std::begin(kBehaviors), std::end(kBehaviors),
                                  [&](auto const& b) { return b.first == behavior; });
    if (it == std::end(kBehaviors)) {
      return invalid_argument(field(path, "behavior") + " is \"" + behavior +
                              "\", expected Removed, Isolated, MergedWithPrevious, "
                              "MergedWithNext or Contiguous");
    }
    s.behavior = it->second;
    return detail::read_bool(j, path, "invert", false, s.invert);
  }

  // NormalizedString::split: `matches` of the pattern in `piece` → the parts kept, appended
  // (non-empty) to `out`
  static void cut(std::string const& piece, std::vector<Span> const& matches,
                  SplitBehavior behavior, bool invert, std::vector<std::string>& out) {
    struct Part {
      Span span;
      bool match;
    };
    std::vector<Part> parts;  // the whole piece, in order
    std::size_t prev = 0;
    for (Span const& m : matches) {
      if (prev != m.begin) {
        parts.push_back({{prev, m.begin}, invert});
      }
      parts.push_back({m, !invert});
      prev = m.end;
    }
    if (prev != piece.size()) {
      parts.push_back({{prev, piece.size()}, invert});
    }
    std::vector<Part> kept;
    bool previous_match = false;
    switch (behavior) {
      case SplitBehavior::kRemoved:
        for (Part const& p : parts) {
          if (!p.match) {
            kept.push_back(p);
          }
        }
        break;
      case SplitBehavior::kIsolated:
        kept = parts;
        break;
      case SplitBehavior::kContiguous:
      case SplitBehavior::kMergedWithPrevious:
        for (Part const& p : parts) {
          bool const join = behavior == SplitBehavior::kContiguous ? p.match == previous_match
                                                                   : p.match && !previous_match;
          if (join && !kept.empty()) {
            kept.back().span.end = p.span.end;
          } else {
            kept.push_back(p);
          }
          previous_match = p.match;
        }
        break;
      case SplitBehavior::kMergedWithNext:
        for (auto p = parts.rbegin(); p != parts.rend(); ++p) {
          if (p->match && !previous_match && !kept.empty()) {
            kept.back().span.begin = p->span.begin;
          } else {
            kept.push_back(*p);
          }
          previous_match = p->match;
        }
        std::reverse(kept.begin(), kept.end());
        break;
    }
    for (Part const& p : kept) {
      if (p.span.end > p.span.begin) {
        out.push_back(piece.substr(p.span.begin, p.span.end - p.span.begin));
      }
    }
  }

  std::vector<Step> steps_;
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
