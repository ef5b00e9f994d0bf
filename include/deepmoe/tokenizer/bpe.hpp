// SPDX-License-Identifier: Apache-2.0
/// @file bpe.hpp
/// @brief tokenizer.json's `model` of type BPE: vocabulary, ranked merges, and the merging of a
/// piece into token ids.
///
/// As `tokenizers` (models/bpe/{model,word}.rs): a piece starts as one symbol per character
/// (its vocabulary id; characters not in the vocabulary become `unk_token`, fused into one when
/// `fuse_unk`, or are dropped when there is none); then, repeatedly, the adjacent pair of lowest
/// merge rank is merged (the leftmost of equal ranks), rank = the merge's index in `merges`.
/// With `ignore_merges`, a piece that is itself in the vocabulary is that one token.
/// Not supported (refused at load): dropout > 0, byte_fallback, continuing_subword_prefix,
/// end_of_word_suffix.
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/byte_level.hpp>
#include <deepmoe/tokenizer/json_fields.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// A BPE model: vocabulary and merges.
class BpeModel {
 public:
  /// The 256 byte-level characters, byte b as id b, no merges: every byte its own token.
  static BpeModel byte_level_alphabet() {
    BpeModel m;
    for (int b = 0; b < 256; ++b) {
      std::string token;
      utf8_append(token, kByteToCodePoint[static_cast<std::size_t>(b)]);
      m.insert(std::move(token), b);
    }
    return m;
  }

  /// Reads the `model` object `j` at `path`.
  /// @returns invalid_argument naming the field for a malformed vocabulary or merge (a merge of
  ///          tokens not in the vocabulary, or whose result is not); kNotSupported naming the
  ///          field for another model type or an unsupported option.
  static Status from_json(detail::Json const& j, std::string const& path, BpeModel& out) {
    using detail::field;
    out = BpeModel();
    if (!j.is_object()) {
      return detail::wrong_type(path, j, "an object");
    }
    std::string type;
    DEEPMOE_RETURN_IF_ERROR(detail::read_string(j, path, "type", type));
    if (type != "BPE") {
      return Status(StatusCode::kNotSupported,
                    field(path, "type") + ": \"" + type + "\" is not supported (supported: BPE)");
    }
    DEEPMOE_RETURN_IF_ERROR(out.read_options(j, path));
    detail::Json const* vocab = detail::member(j, "vocab");
    if (vocab == nullptr || !vocab->is_object()) {
      return vocab == nullptr
                 ? invalid_argument(field(path, "vocab") + " is missing")
                 : detail::wrong_type(field(path, "vocab"), *vocab, "an object {token: id}");
    }
    for (auto const& [token, id] : vocab->items()) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0 ||
          id.get<std::int64_t>() > INT32_MAX) {
        return detail::wrong_type(field(path, "vocab") + "[\"" + token + "\"]", id,
                                  "an id in [0, 2^31)");
      }
      if (!out.insert(token, id.get<std::int32_t>())) {
        return invalid_argument(field(path, "vocab") + ": id " + id.dump() + " is given to \"" +
                                out.tokens_.at(id.get<std::int32_t>()) + "\" and \"" + token +
                                "\"");
      }
    }
    if (!out.unk_token_.empty() && !out.token_to_id(out.unk_token_)) {
      return invalid_argument(field(path, "unk_token") + " \"" + out.unk_token_ + "\" is not in " +
                              field(path, "vocab"));
    }
    return out.read_merges(j, path);
  }

  /// Appends the ids of `piece` (well-formed UTF-8) to `ids`.
  void tokenize(std::string_view piece, std::vector<std::int32_t>& ids) const {
    if (piece.empty()) {
      return;
    }
    if (ignore_merges_) {
      if (auto const id = token_to_id(piece)) {
        ids.push_back(*id);
        return;
      }
    }
    std::vector<Symbol> w = symbols(piece);
    merge_all(w);
    for (Symbol const& s : w) {
      if (!s.removed) {
        ids.push_back(s.id);
      }
    }
  }

  /// The id of vocabulary entry `token`, if any.
  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    auto const it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<std::int32_t>(it->second);
  }

  /// The vocabulary entry of `id`, or null.
  std::string const* id_to_token(std::int32_t id) const {
    auto const it = tokens_.find(id);
    return it == tokens_.end() ? nullptr : &it->second;
  }

  /// The number of vocabulary entries (tokenizers' get_vocab_size).
  std::size_t size() const noexcept { return vocab_.size(); }

  /// The largest id in the vocabulary, -1 when it is empty.
  std::int32_t max_id() const noexcept { return max_id_; }

 private:
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  struct Merge {
    std::int32_t rank;
    std::int32_t id;  // of the merged token
  };
  struct Symbol {
    std::int32_t id;
    int prev;  // index of the previous live symbol, -1 at the start
    int next;  // index of the next live symbol, -1 at the end
    bool removed;
  };

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  bool insert(std::string token, std::int32_t id) {
    if (!tokens_.emplace(id, token).second) {
      return false;
    }
    max_id_ = std::max(max_id_, id);
    vocab_.emplace(std::move(token), id);
    return true;
  }

  Status read_options(detail::Json const& j, std::string const& path) {
    using detail::field;
    detail::Json const* dropout = detail::member(j, "dropout");
    if (dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0)) {
      return Status(StatusCode::kNotSupported,
                    field(path, "dropout") + " is " + detail::show(*dropout) +
                        "; BPE dropout (random merges, for training) is not supported — HINT: "
                        "set it to null");
    }
    for (char const* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      detail::Json const* v = detail::member(j, key);
      if (v != nullptr && !(v->is_string() && v->get<std::string>().empty())) {
        return Status(StatusCode::kNotSupported,
                      field(path, key) + " is " + detail::show(*v) + "; only null is supported");
      }
    }
    bool byte_fallback = false;
    DEEPMOE_RETURN_IF_ERROR(detail::read_bool(j, path, "byte_fallback", false, byte_fallback));
    if (byte_fallback) {
      return Status(StatusCode::kNotSupported, field(path, "byte_fallback") +
                                                   " is true; only false is supported (a "
                                                   "byte-level vocabulary covers every byte)");
    }
    DEEPMOE_RETURN_IF_ERROR(detail::read_bool(j, path, "fuse_unk", false, fuse_unk_));
    DEEPMOE_RETURN_IF_ERROR(detail::read_bool(j, path, "ignore_merges", false, ignore_merges_));
    if (detail::Json const* unk = detail::member(j, "unk_token")) {
      if (!unk->is_string()) {
        return detail::wrong_type(field(path, "unk_token"), *unk, "a string or null");
      }
      unk_token_ = unk->get<std::string>();
    }
    return {};
  }

  // "a b" strings or [a, b] pairs; rank = index (a repeated merge keeps its last rank)
  Status read_merges(detail::Json const& j, std::string const& path) {
    std::string const merges_field = detail::field(path, "merges");
    detail::Json const* merges = detail::member(j, "merges");
    if (merges == nullptr || !merges->is_array()) {
      return merges == nullptr ? invalid_argument(merges_field + " is missing")
                               : detail::wrong_type(merges_field, *merges, "an array");
    }
    merges_.reserve(merges->size());
    for (std::size_t i = 0; i < merges->size(); ++i) {
      detail::Json const& m = (*merges)[i];
      std::string const at = merges_field + "[" + std::to_string(i) + "]";
      std::string a, b;
      if (m.is_string()) {
        std::string const s = m.get<std::string>();
        std::size_t const space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return detail::wrong_type(at, m, "\"left right\" (one space)");
        }
        a = s.substr(0, space), b = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      } else {
        return detail::wrong_type(at, m, "\"left right\" or [\"left\", \"right\"]");
      }
      auto const ia = token_to_id(a), ib = token_to_id(b), iab = token_to_id(a + b);
      if (!ia || !ib || !iab) {
        return invalid_argument(at + " " + detail::show(m) + ": \"" +
                                (!ia   ? a
                                 : !ib ? b
                                       : a + b) +
                                "\" is not in " + detail::field(path, "vocab") +
                                " — HINT: merges and vocab from different tokenizers?");
      }
      merges_.insert_or_assign(pair_key(*ia, *ib), Merge{static_cast<std::int32_t>(i), *iab});
    }
    return {};
  }

  std::optional<Merge> merge_of(std::int32_t a, std::int32_t b) const {
    auto const it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? std::nullopt : std::optional<Merge>(it->second);
  }

  // one symbol per character (BPE::merge_word)
  std::vector<Symbol> symbols(std::string_view piece) const {
    std::vector<Symbol> w;
    auto add = [&w](std::int32_t id) {
      int const n = static_cast<int>(w.size());
      if (n > 0) {
        w.back().next = n;
      }
      w.push_back({id, n - 1, -1, false});
    };
    std::optional<std::int32_t> const unk =
        unk_token_.empty() ? std::nullopt : token_to_id(unk_token_);
    bool pending_unk = false;
    for (std::size_t i = 0; i < piece.size();) {
      auto const len = static_cast<std::size_t>(utf8_step(piece, i).length);
      if (auto const id = token_to_id(piece.substr(i, len))) {
        if (pending_unk) {
          add(*unk);
          pending_unk = false;
        }
        add(*id);
      } else if (unk) {
        if (pending_unk && !fuse_unk_) {
          add(*unk);
        }
        pending_unk = true;
      }
      i += len;
    }
    if (pending_unk) {
      add(*unk);
    }
    return w;
  }

  // Word::merge_all: a queue of candidate merges, lowest (rank, position) first; stale entries
  // (a side already merged away) are skipped when popped
  void merge_all(std::vector<Symbol>& w) const {
    struct Candidate {
      std::int32_t rank;
      int pos;
      std::int32_t id;
      bool operator>(Candidate const& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    for (int i = 0; i + 1 < static_cast<int>(w.size()); ++i) {
      if (auto const m = merge_of(w[i].id, w[i + 1].id)) {
        queue.push({m->rank, i, m->id});
      }
    }
    while (!queue.empty()) {
      Candidate const top = queue.top();
      queue.pop();
      Symbol& s = w[static_cast<std::size_t>(top.pos)];
      if (s.removed || s.next < 0) {
        continue;
      }
      Symbol& right = w[static_cast<std::size_t>(s.next)];
      auto const m = merge_of(s.id, right.id);
      if (!m || m->id != top.id) {
        continue;
      }
      s.id = top.id;
      right.removed = true;
      s.next = right.next;
      if (s.next >= 0) {
        w[static_cast<std::size_t>(s.next)].prev = top.pos;
      }
      if (s.prev >= 0) {
        if (auto const p = merge_of(w[static_cast<std::size_t>(s.prev)].id, s.id)) {
          queue.push({p->rank, s.prev, p->id});
        }
      }
      if (s.next >= 0) {
        if (auto const n = merge_of(s.id, w[static_cast<std::size_t>(s.next)].id)) {
          queue.push({n->rank, top.pos, n->id});
        }
      }
    }
  }

  std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>> vocab_;
  std::unordered_map<std::int32_t, std::string> tokens_;
  std::unordered_map<std::uint64_t, Merge> merges_;  // (left id, right id) → rank, merged id
  std::string unk_token_;                            // "" for none
  std::int32_t max_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
