// SPDX-License-Identifier: Apache-2.0
/// @file tokenizer.hpp
/// @brief Tokenizer: a Hugging Face `tokenizer.json` byte-level BPE tokenizer as DeepSeek-V3
/// uses it (text ⇄ token ids, the same ids as the `tokenizers` library), and a byte-level
/// tokenizer without a file for small models.
///
/// Encoding (tokenizers' TokenizerImpl::encode): invalid UTF-8 in the input is first replaced as
/// utf8_lossy does (each maximal invalid subpart → U+FFFD, Rust's from_utf8_lossy; a Python
/// caller of `tokenizers` can only pass text decoded that way); added tokens are cut out of the
/// raw text (added_tokens.hpp); each text run between them is pre-tokenized
/// (pre_tokenizer.hpp) and each piece merged by the BPE model (bpe.hpp); with
/// add_special_tokens, the post-processor's template then wraps the ids. DeepSeek-V3's own
/// post-processor (ByteLevel) adds nothing: transformers prepends BOS for it (add_bos_token in
/// tokenizer_config.json), so a caller wanting BOS prepends bos_id() itself.
/// Decoding (Tokenizer::decode): each id's token, added tokens included (skipped when special
/// and skip_special_tokens), through the ByteLevel decoder to bytes, then from_utf8_lossy —
/// `tokenizers`' text; decode_bytes gives the bytes themselves, StreamDecoder
/// (stream_decoder.hpp) the text piece by piece.
///
/// Supported tokenizer.json: version "1.0"; truncation and padding null; normalizer null or an
/// empty Sequence; pre_tokenizer as in pre_tokenizer.hpp (or null); model BPE (bpe.hpp);
/// post_processor null, ByteLevel, TemplateProcessing (its "single" template) or a Sequence of
/// them; decoder ByteLevel. Anything else is refused with kNotSupported naming the field (NFC
/// and other normalizers would need Unicode tables deepmoe does not carry).
/// Reference: huggingface/tokenizers (tokenizers/src/tokenizer/mod.rs); DeepSeek-V3's
/// tokenizer.json (deepseek-ai/DeepSeek-V3).
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/added_tokens.hpp>
#include <deepmoe/tokenizer/bpe.hpp>
#include <deepmoe/tokenizer/byte_level.hpp>
#include <deepmoe/tokenizer/json_fields.hpp>
#include <deepmoe/tokenizer/pre_tokenizer.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer {

/// DeepSeek's begin-of-sequence token ("<｜begin▁of▁sentence｜>", fullwidth bars U+FF5C).
inline constexpr std::string_view kBosToken = "<｜begin▁of▁sentence｜>";
/// DeepSeek's end-of-sequence token.
inline constexpr std::string_view kEosToken = "<｜end▁of▁sentence｜>";
/// DeepSeek's padding token.
inline constexpr std::string_view kPadToken = "<｜▁pad▁｜>";

/// Text ⇄ token ids. Immutable once loaded: every const member may be called from any number of
/// threads at once.
class Tokenizer {
 public:
  /// Loads a tokenizer.json file.
  /// @returns kIoError if it cannot be read; otherwise as from_json, the message starting with
  ///          `path`.
  static Status load(std::string const& path, Tokenizer& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return Status(StatusCode::kIoError, path +
                                              ": cannot open — HINT: a Hugging Face model "
                                              "directory holds tokenizer.json");
    }
    std::ostringstream text;
    text << in.rdbuf();
    Status const s = from_json(text.str(), out);
    return s.ok() ? s : Status(s.code(), path + ": " + s.message());
  }

  /// Builds a tokenizer from the text of a tokenizer.json.
  /// @returns invalid_argument naming the field (e.g. "model.merges[12]",
  ///          "pre_tokenizer.pretokenizers[2].pattern.Regex") for malformed JSON, a missing or
  ///          mistyped field, a merge of tokens not in the vocabulary, a regex PCRE2 cannot
  ///          compile; kNotSupported naming the field for a valid but unsupported part (a
  ///          normalizer, a WordPiece model, a Metaspace pre-tokenizer, ...).
  static Status from_json(std::string_view json, Tokenizer& out) {
    detail::Json const j = detail::Json::parse(json, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return invalid_argument("tokenizer.json: not a JSON object — HINT: a truncated download?");
    }
    Tokenizer t;
    DEEPMOE_RETURN_IF_ERROR(check_unsupported(j));
    detail::Json const* model = detail::member(j, "model");
    if (model == nullptr) {
      return invalid_argument("model is missing — HINT: not a tokenizers tokenizer.json?");
    }
    DEEPMOE_RETURN_IF_ERROR(BpeModel::from_json(*model, "model", t.model_));
    DEEPMOE_RETURN_IF_ERROR(PreTokenizer::from_json(member_or_null(j, "pre_tokenizer"),
                                                    "pre_tokenizer", t.pre_tokenizer_));
    DEEPMOE_RETURN_IF_ERROR(AddedTokens::from_json(member_or_null(j, "added_tokens"),
                                                   "added_tokens", t.model_, t.added_));
    DEEPMOE_RETURN_IF_ERROR(
        t.read_post_processor(member_or_null(j, "post_processor"), "post_processor"));
    out = std::move(t);
    return {};
  }

  /// A tokenizer without a file for models trained from scratch: byte b is token b (0-255),
  /// then `special_tokens` take ids 256, 257, ... (default: DeepSeek's BOS, EOS, pad). No
  /// merges, no regex: encode gives one token per byte (special tokens in the text excepted),
  /// invalid UTF-8 included (nothing needs characters, so nothing is replaced), and
  /// decode_bytes restores any byte string exactly.
  static Tokenizer byte_level(std::vector<std::string> const& special_tokens = {
                                  std::string(kBosToken), std::string(kEosToken),
                                  std::string(kPadToken)}) {
    Tokenizer t;
    t.model_ = BpeModel::byte_level_alphabet();
    t.pre_tokenizer_ = PreTokenizer::byte_level_only();
    t.raw_bytes_ = true;
    std::int32_t id = 256;
    for (std::string const& s : special_tokens) {
      if (!s.empty() && !t.added_.id_of(s)) {
        t.added_.add(AddedToken{id++, s, true, false, false, false});
      }
    }
    return t;
  }

  /// Token ids of `text`, written to `ids` (replaced).
  /// @param text any bytes; invalid UTF-8 is replaced by U+FFFD first (see the file comment),
  ///        except by the byte_level() tokenizer
  /// @param add_special_tokens apply the post-processor's template (e.g. prepend BOS); added
  ///        tokens written in the text are matched either way
  /// @returns invalid_argument if a pre-tokenizer regex gives up on the text (PCRE2's match
  ///          limit; never for the DeepSeek and GPT-2 patterns).
  Status encode(std::string_view text, std::vector<std::int32_t>& ids,
                bool add_special_tokens = true) const {
    ids.clear();
    std::string repaired;
    if (!raw_bytes_ && !utf8_valid(text)) {
      repaired = utf8_lossy(text);
      text = repaired;
    }
    std::vector<Segment> segments;
    added_.split(text, segments);
    std::vector<std::string> pieces;
    for (Segment const& s : segments) {
      if (s.id >= 0) {
        ids.push_back(s.id);
        continue;
      }
      DEEPMOE_RETURN_IF_ERROR(pre_tokenizer_.split(s.text, pieces));
      for (std::string const& piece : pieces) {
        model_.tokenize(piece, ids);
      }
    }
    if (add_special_tokens) {
      for (Template const& t : templates_) {
        std::vector<std::int32_t> wrapped;
        for (TemplatePiece const& p : t) {
          wrapped.insert(wrapped.end(), p.sequence ? ids.begin() : p.ids.begin(),
                         p.sequence ? ids.end() : p.ids.end());
        }
        ids = std::move(wrapped);
      }
    }
    return {};
  }

  /// The text of `ids`, as `tokenizers` decodes it: the bytes of decode_bytes with each
  /// invalid UTF-8 subpart (a character cut between ids) replaced by U+FFFD.
  /// @returns kOutOfRange naming the position of an id that is no token.
  Status decode(std::span<std::int32_t const> ids, std::string& text,
                bool skip_special_tokens = false) const {
    std::string bytes;
    DEEPMOE_RETURN_IF_ERROR(decode_bytes(ids, bytes, skip_special_tokens));
    text = utf8_lossy(bytes);
    return {};
  }

  /// The bytes `ids` stand for, written to `bytes` (replaced), exactly: not necessarily UTF-8
  /// (an id sequence may end inside a character; the byte_level tokenizer round-trips any
  /// bytes). Every token goes through the ByteLevel decoder (byte_level_decode), added tokens
  /// too, as in `tokenizers`: those outside the byte-level alphabet give their own text.
  /// @returns kOutOfRange naming the position of an id that is no token.
  Status decode_bytes(std::span<std::int32_t const> ids, std::string& bytes,
                      bool skip_special_tokens = false) const {
    bytes.clear();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      AddedToken const* added = added_.find(ids[i]);
      if (added != nullptr) {
        if (!(skip_special_tokens && added->special)) {
          byte_level_decode(added->content, bytes);  // as tokenizers: "<think>" is itself
        }
        continue;
      }
      std::string const* token = model_.id_to_token(ids[i]);
      if (token == nullptr) {
        return Status(StatusCode::kOutOfRange, "decode: ids[" + std::to_string(i) +
                                                   "] = " + std::to_string(ids[i]) +
                                                   " is no token of this tokenizer (vocab_size " +
                                                   std::to_string(vocab_size()) +
                                                   ") — HINT: a model of another "
                                                   "tokenizer?");
      }
      byte_level_decode(*token, bytes);
    }
    return {};
  }

  /// The id of token `token` (an added token's content or a vocabulary entry in the byte-level
  /// alphabet, e.g. "Ġthe"), if any.
  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    auto const id = added_.id_of(token);
    return id ? id : model_.token_to_id(token);
  }

  /// The token of `id` as the vocabulary spells it, if any.
  std::optional<std::string_view> id_to_token(std::int32_t id) const {
    if (AddedToken const* a = added_.find(id)) {
      return a->content;
    }
    std::string const* t = model_.id_to_token(id);
    return t == nullptr ? std::nullopt : std::optional<std::string_view>(*t);
  }

  /// Whether `id` is a special added token (skipped by skip_special_tokens).
  bool is_special(std::int32_t id) const {
    AddedToken const* a = added_.find(id);
    return a != nullptr && a->special;
  }

  /// 1 + the largest id: the rows an embedding table needs (at most the model's vocab_size).
  std::int32_t vocab_size() const noexcept {
    return std::max(model_.max_id(), added_.max_id()) + 1;
  }

  /// The id of kBosToken, if this tokenizer has it.
  std::optional<std::int32_t> bos_id() const { return token_to_id(kBosToken); }
  /// The id of kEosToken, if this tokenizer has it.
  std::optional<std::int32_t> eos_id() const { return token_to_id(kEosToken); }

  /// The added tokens, in file order.
  std::vector<AddedToken> const& added_tokens() const noexcept { return added_.tokens(); }

 private:
  struct TemplatePiece {
    bool sequence;                  // the encoded text
    std::vector<std::int32_t> ids;  // else these special ids
  };
  using Template = std::vector<TemplatePiece>;

  static detail::Json const& member_or_null(detail::Json const& j, std::string_view key) {
    static detail::Json const null;
    detail::Json const* v = detail::member(j, key);
    return v == nullptr ? null : *v;
  }

  // the "type" of object `j`, "" when there is none
  static std::string type_of(detail::Json const& j) {
    detail::Json const* t = j.is_object() ? detail::member(j, "type") : nullptr;
    return t != nullptr && t->is_string() ? t->get<std::string>() : std::string();
  }

  static Status not_supported(std::string const& field, detail::Json const& v,
                              std::string const& supported) {
    return Status(StatusCode::kNotSupported,
                  field + " is " + detail::show(v) + "; supported: " + supported);
  }

  static Status check_unsupported(detail::Json const& j) {
    if (detail::Json const* v = detail::member(j, "version");
        v != nullptr && *v != detail::Json("1.0")) {
      return not_supported("version", *v, "\"1.0\"");
    }
    for (char const* key : {"truncation", "padding"}) {
      if (detail::Json const* v = detail::member(j, key)) {
        return not_supported(key, *v,
                             "null — HINT: deepmoe never truncates or pads; set it to "
                             "null");
      }
    }
    if (detail::Json const* n = detail::member(j, "normalizer")) {
      detail::Json const* steps = n->is_object() ? detail::member(*n, "normalizers") : nullptr;
      bool const identity =
          type_of(*n) == "Sequence" && steps != nullptr && steps->is_array() && steps->empty();
      if (!identity) {
        return not_supported("normalizer", *n,
                             "null or an empty Sequence — HINT: deepmoe carries no Unicode "
                             "normalization tables (DeepSeek's tokenizers normalize nothing)");
      }
    }
    detail::Json const* d = detail::member(j, "decoder");
    if (d == nullptr || type_of(*d) != "ByteLevel") {
      return not_supported("decoder", d == nullptr ? detail::Json() : *d, "ByteLevel");
    }
    return {};
  }

  Status read_post_processor(detail::Json const& j, std::string const& path) {
    if (j.is_null()) {
      return {};
    }
    std::string const type = type_of(j);
    detail::Json const* processors = type == "Sequence" ? detail::member(j, "processors") : nullptr;
    if (processors != nullptr && processors->is_array()) {
      for (std::size_t i = 0; i < processors->size(); ++i) {
        DEEPMOE_RETURN_IF_ERROR(
            read_post_processor((*processors)[i], path + ".processors[" + std::to_string(i) + "]"));
      }
      return {};
    }
    if (type == "ByteLevel") {  // offsets only
      return {};
    }
    if (type != "TemplateProcessing") {
      return not_supported(path, j, "null, ByteLevel, TemplateProcessing, Sequence of them");
    }
    detail::Json const* single = detail::member(j, "single");
    detail::Json const* specials = detail::member(j, "special_tokens");
    if (single == nullptr || !single->is_array()) {
      return invalid_argument(path + ".single is missing or not an array");
    }
    Template t;
    for (std::size_t i = 0; i < single->size(); ++i) {
      detail::Json const& p = (*single)[i];
      std::string const at = path + ".single[" + std::to_string(i) + "]";
      if (p.is_object() && p.contains("Sequence")) {
        t.push_back({true, {}});
        continue;
      }
      detail::Json const* special = p.is_object() ? detail::member(p, "SpecialToken") : nullptr;
      detail::Json const* name =
          special != nullptr && special->is_object() ? detail::member(*special, "id") : nullptr;
      if (name == nullptr || !name->is_string()) {
        return detail::wrong_type(at, p,
                                  "{\"Sequence\": ...} or {\"SpecialToken\": {\"id\": ...}}");
      }
      detail::Json const* entry =
          specials == nullptr ? nullptr : detail::member(*specials, name->get<std::string>());
      detail::Json const* ids = entry == nullptr ? nullptr : detail::member(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return invalid_argument(at + " names \"" + name->get<std::string>() + "\", which " + path +
                                ".special_tokens does not list with ids");
      }
      TemplatePiece piece{false, {}};
      for (detail::Json const& id : *ids) {
        if (!id.is_number_integer() || !id_to_token(id.get<std::int32_t>())) {
          return detail::wrong_type(
              path + ".special_tokens[\"" + name->get<std::string>() + "\"].ids", *ids,
              "ids of tokens of this tokenizer");
        }
        piece.ids.push_back(id.get<std::int32_t>());
      }
      t.push_back(std::move(piece));
    }
    templates_.push_back(std::move(t));
    return {};
  }

  BpeModel model_;
  PreTokenizer pre_tokenizer_;
  AddedTokens added_;
  std::vector<Template> templates_;  // post-processor templates, applied in order
  bool raw_bytes_ = false;           // byte_level(): encode bytes as they are
};

}  // namespace tokenizer
DEEPMOE_NAMESPACE_END
