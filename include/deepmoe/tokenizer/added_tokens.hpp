// SPDX-License-Identifier: Apache-2.0
/// @file added_tokens.hpp
/// @brief tokenizer.json's `added_tokens` (special tokens such as <｜begin▁of▁sentence｜> and
/// other whole-string tokens): their ids, and their extraction from raw text before anything
/// else sees it, so that they are never split.
///
/// As `tokenizers` (tokenizer/added_vocabulary.rs): the text is scanned for the tokens with
/// `normalized: false`, then what lies between the matches for those with `normalized: true`
/// (the normalizer being the identity here); each scan takes, left to right, the leftmost
/// occurrence of any token, the longest when several start there (Aho-Corasick
/// LeftmostLongest). A token with `lstrip`/`rstrip` also swallows the Unicode White_Space
/// before/after it (not before the previous match's end). Tokens are matched with
/// add_special_tokens true or false alike. Ids: a token in the model vocabulary has its id
/// there; the others follow the vocabulary in file order (tokenizers assigns them so and
/// ignores the file's ids; a file whose ids disagree is refused). `single_word` tokens are not
/// supported.
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/bpe.hpp>
#include <deepmoe/tokenizer/json_fields.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// One entry of `added_tokens`.
struct AddedToken {
  std::int32_t id = 0;
  std::string content;      ///< the exact text it stands for
  bool special = false;     ///< skipped by decode(skip_special_tokens = true)
  bool lstrip = false;      ///< swallows the white space before it
  bool rstrip = false;      ///< swallows the white space after it
  bool normalized = false;  ///< matched in the second scan (after normalization)
};

/// A run of the input: an added token (`id` >= 0) or text for the pre-tokenizer (`id` = -1).
struct Segment {
  std::string_view text;
  std::int32_t id;
};

/// Whether `cp` has the Unicode White_Space property (Rust's char::is_whitespace).
constexpr bool is_white_space(char32_t cp) noexcept {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

/// The added tokens of a tokenizer and their matcher.
class AddedTokens {
 public:
  /// Reads the `added_tokens` array `j` (null: none) at `path`; ids as described above.
  /// @returns invalid_argument naming the entry for a malformed one, an empty or repeated
  ///          content, or an id other than the one `tokenizers` gives it; kNotSupported for
  ///          `single_word`.
  static Status from_json(detail::Json const& j, std::string const& path, BpeModel const& model,
                          AddedTokens& out) {
    out = AddedTokens();
    if (j.is_null()) {
      return {};
    }
    if (!j.is_array()) {
      return detail::wrong_type(path, j, "an array");
    }
    for (std::size_t i = 0; i < j.size(); ++i) {
      std::string const at = path + "[" + std::to_string(i) + "]";
      detail::Json const& e = j[i];
      if (!e.is_object()) {
        return detail::wrong_type(at, e, "an object");
      }
      AddedToken t;
      bool single_word = false;
      DEEPMOE_RETURN_IF_ERROR(detail::read_string(e, at, "content", t.content));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(e, at, "special", false, t.special));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(e, at, "lstrip", false, t.lstrip));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(e, at, "rstrip", false, t.rstrip));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(e, at, "normalized", !t.special, t.normalized));
      DEEPMOE_RETURN_IF_ERROR(detail::read_bool(e, at, "single_word", false, single_word));
      detail::Json const* id = detail::member(e, "id");
      if (id == nullptr || !id->is_number_integer()) {
        return id == nullptr ? invalid_argument(at + ".id is missing")
                             : detail::wrong_type(at + ".id", *id, "an integer");
      }
      if (single_word) {
        return Status(StatusCode::kNotSupported,
                      at + ".single_word is true (\"" + t.content + "\"); only false is supported");
      }
      if (t.content.empty() || !utf8_valid(t.content)) {
        return invalid_argument(at + ".content is empty or not UTF-8");
      }
      if (out.id_of(t.content)) {
        return invalid_argument(at + ": \"" + t.content + "\" is listed twice");
      }
      t.id = out.next_id(t.content, model);
      if (id->get<std::int64_t>() != t.id) {
        return invalid_argument(at + ": \"" + t.content + "\" has id " + id->dump() +
                                ", but tokenizers gives it " + std::to_string(t.id) +
                                " — HINT: added tokens not in the vocabulary take the ids after "
                                "it, in file order");
      }
      out.add(std::move(t));
    }
    return {};
  }

  /// Adds `t` (its content non-empty and not yet added).
  void add(AddedToken t) {
    by_content_.emplace(t.content, tokens_.size());
    by_id_.insert_or_assign(t.id, tokens_.size());
    max_id_ = std::max(max_id_, t.id);
    Index& index = t.normalized ? normalized_ : raw_;
    auto& bucket = index[static_cast<unsigned char>(t.content[0])];
    auto const longer = [this](std::size_t size, std::size_t k) {
      return size > tokens_[k].content.size();
    };
    bucket.insert(std::upper_bound(bucket.begin(), bucket.end(), t.content.size(), longer),
                  tokens_.size());
    tokens_.push_back(std::move(t));
  }

  /// Cuts `text` into `out` (replaced): added tokens and the text between them, in order,
  /// covering `text` exactly; no text segment is empty.
  void split(std::string_view text, std::vector<Segment>& out) const {
    out.clear();
    std::vector<Segment> first;
    find(text, raw_, first);
    for (Segment const& s : first) {
      if (s.id >= 0) {
        out.push_back(s);
      } else {
        find(s.text, normalized_, out);
      }
    }
  }

  /// The token with id `id`, or null.
  AddedToken const* find(std::int32_t id) const {
    auto const it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second];
  }

  /// The id of the token whose content is `content`, if any.
  std::optional<std::int32_t> id_of(std::string_view content) const {
    auto const it = by_content_.find(std::string(content));
    return it == by_content_.end() ? std::nullopt
                                   : std::optional<std::int32_t>(tokens_[it->second].id);
  }

  /// The tokens, in file order.
  std::vector<AddedToken> const& tokens() const noexcept { return tokens_; }

  /// The largest id, -1 when there are none.
  std::int32_t max_id() const noexcept { return max_id_; }

 private:
  // per first byte: indices of the tokens starting with it, longest first
  using Index = std::array<std::vector<std::size_t>, 256>;

  // AddedVocabulary::add_tokens: the vocabulary id, else the next id after the vocabulary
  std::int32_t next_id(std::string const& content, BpeModel const& model) const {
    if (auto const id = model.token_to_id(content)) {
      return *id;
    }
    auto const vocab = static_cast<std::int32_t>(model.size());
    if (tokens_.empty()) {
      return vocab;
    }
    return max_id_ >= vocab || vocab == 0 ? max_id_ + 1 : vocab;
  }

  // AddedVocabulary::find_matches over `text`, appending the segments to `out`
  void find(std::string_view text, Index const& index, std::vector<Segment>& out) const {
    std::size_t done = 0;  // end of the last segment
    for (std::size_t i = 0; i < text.size();) {
      AddedToken const* match = nullptr;
      for (std::size_t k : index[static_cast<unsigned char>(text[i])]) {
        if (text.substr(i).starts_with(tokens_[k].content)) {
          match = &tokens_[k];
          break;
        }
      }
      if (match == nullptr) {
        ++i;
        continue;
      }
      std::size_t start = i;
      std::size_t const end = i + match->content.size();
      std::size_t stop = end;
      if (match->lstrip) {  // the start of the white space run ending at `start`, from `done`
        start = done;
        for (std::size_t p = done; p < i;) {
          Utf8Step const c = utf8_step(text, p);
          p += static_cast<std::size_t>(c.length);
          if (!is_white_space(c.code_point)) {
            start = p;
          }
        }
      }
      if (match->rstrip) {
        while (stop < text.size()) {
          Utf8Step const c = utf8_step(text, stop);
          if (!is_white_space(c.code_point)) {
            break;
          }
          stop += static_cast<std::size_t>(c.length);
        }
      }
      if (done < start) {
        out.push_back({text.substr(done, start - done), -1});
      }
      out.push_back({text.substr(start, stop - start), match->id});
      done = stop;
      i = end;  // the scan goes on after the token itself, as Aho-Corasick's does
    }
    if (done < text.size()) {
      out.push_back({text.substr(done), -1});
    }
  }

  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, std::size_t> by_content_;
  std::unordered_map<std::int32_t, std::size_t> by_id_;
  Index raw_{};
  Index normalized_{};
  std::int32_t max_id_ = -1;
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
