// SPDX-License-Identifier: Apache-2.0
// Tokenizer against Hugging Face `tokenizers` (tests/fixtures/tokenizer, made by
// scripts/make_tokenizer_fixtures.py): the same ids for every fixture string on every pipeline
// variant, the same decoded text, round trips, streaming decoding, invalid UTF-8, the
// byte-level tokenizer, and malformed tokenizer.json files refused with errors naming the field.
#include <catch2/catch.hpp>

#include <deepmoe/tokenizer/stream_decoder.hpp>
#include <deepmoe/tokenizer/tokenizer.hpp>
#include <deepmoe/tokenizer/utf8.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace deepmoe;
using namespace deepmoe::tokenizer;
using nlohmann::json;

namespace {

std::string const kDir = DEEPMOE_FIXTURES_DIR "/tokenizer";

std::string read_file(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

json const& base_json() {
  static json const j = json::parse(read_file(kDir + "/tokenizer.json"));
  return j;
}

json const& reference() {
  static json const j = json::parse(read_file(kDir + "/reference.json"));
  return j;
}

// tokenizer.json with `patch` applied to its top level
Status load_patched(json const& patch, Tokenizer& out) {
  json j = base_json();
  for (auto const& [key, value] : patch.items()) {
    j[key] = value;
  }
  return Tokenizer::from_json(j.dump(), out);
}

std::string unhex(std::string const& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

std::string case_text(json const& c) {
  return c.contains("text") ? c["text"].get<std::string>() : unhex(c["bytes_hex"]);
}

std::vector<std::int32_t> encode(Tokenizer const& t, std::string const& text,
                                 bool add_special_tokens = false) {
  std::vector<std::int32_t> ids;
  Status const s = t.encode(text, ids, add_special_tokens);
  REQUIRE(s.ok());
  return ids;
}

std::string decode(Tokenizer const& t, std::vector<std::int32_t> const& ids, bool skip = false) {
  std::string text;
  Status const s = t.decode(ids, text, skip);
  REQUIRE(s.ok());
  return text;
}

// the pieces a StreamDecoder gives for `ids`, flush last
std::vector<std::string> stream(Tokenizer const& t, std::vector<std::int32_t> const& ids,
                                bool skip = false) {
  StreamDecoder d(t, skip);
  std::vector<std::string> pieces;
  for (std::int32_t id : ids) {
    std::string text;
    REQUIRE(d.feed(id, text).ok());
    pieces.push_back(text);
  }
  pieces.push_back(d.flush());
  return pieces;
}

Tokenizer const& deepseek() {
  static Tokenizer const t = [] {
    Tokenizer t;
    Status const s = Tokenizer::load(kDir + "/tokenizer.json", t);
    INFO(s.to_string());
    REQUIRE(s.ok());
    return t;
  }();
  return t;
}

// from_json of the base file with `patch`; its error
Status patched_error(json const& patch) {
  Tokenizer t;
  return load_patched(patch, t);
}

}  // namespace

TEST_CASE("tokenizer: every fixture string encodes to the ids of tokenizers",
          "[tokenizer][reference]") {
  CAPTURE(reference()["tokenizers_version"].get<std::string>());
  std::size_t checked = 0;
  for (json const& variant : reference()["variants"]) {
    std::string const name = variant["name"];
    CAPTURE(name);
    Tokenizer t;
    Status const s = load_patched(variant["overrides"], t);
    INFO(s.to_string());
    REQUIRE(s.ok());
    for (json const& c : variant["cases"]) {
      std::string const text = case_text(c);
      CAPTURE(c.dump());
      CHECK(encode(t, text, false) == c["ids"].get<std::vector<std::int32_t>>());
      CHECK(encode(t, text, true) == c["ids_special"].get<std::vector<std::int32_t>>());
      ++checked;
    }
  }
  CHECK(checked > 1000);
}

TEST_CASE("tokenizer: decode gives the text of tokenizers, special tokens skipped or not",
          "[tokenizer][reference]") {
  Tokenizer const& t = deepseek();
  for (json const& c : reference()["decode"]) {
    auto const ids = c["ids"].get<std::vector<std::int32_t>>();
    CAPTURE(ids);
    CHECK(decode(t, ids) == c["text"].get<std::string>());
    CHECK(decode(t, ids, true) == c["text_skip_special"].get<std::string>());
  }
}

TEST_CASE("tokenizer: decode(encode(s)) == s for valid UTF-8", "[tokenizer]") {
  Tokenizer const& t = deepseek();
  for (json const& c : reference()["variants"][0]["cases"]) {
    if (c.contains("text")) {
      std::string const text = c["text"];
      CAPTURE(text);
      CHECK(decode(t, encode(t, text)) == text);
    }
  }
}

TEST_CASE("tokenizer: streaming decoding equals decode and emits whole characters only",
          "[tokenizer][stream]") {
  Tokenizer const& t = deepseek();
  auto check = [&](std::vector<std::int32_t> const& ids, bool skip) {
    CAPTURE(ids, skip);
    std::string joined;
    for (std::string const& piece : stream(t, ids, skip)) {
      CHECK(utf8_valid(piece));
      joined += piece;
    }
    CHECK(joined == decode(t, ids, skip));
  };
  for (json const& c : reference()["variants"][0]["cases"]) {
    check(c["ids"].get<std::vector<std::int32_t>>(), false);
  }
  for (json const& c : reference()["decode"]) {  // random ids: cut characters, specials
    check(c["ids"].get<std::vector<std::int32_t>>(), false);
    check(c["ids"].get<std::vector<std::int32_t>>(), true);
  }

  SECTION("a character split over tokens comes out when its last byte arrives") {
    Tokenizer const bytes = Tokenizer::byte_level();
    std::string const emoji = "a😀";  // 61 F0 9F 98 80
    auto const pieces = stream(bytes, encode(bytes, emoji));
    CHECK(pieces == std::vector<std::string>{"a", "", "", "", "😀", ""});
  }
  SECTION("an unfinished character is flushed as U+FFFD") {
    Tokenizer const bytes = Tokenizer::byte_level();
    auto const pieces = stream(bytes, {0xF0, 0x9F, 'x', 0xE2, 0x82});
    CHECK(pieces == std::vector<std::string>{"", "", "\uFFFDx", "", "", "\uFFFD"});
  }
}

TEST_CASE("tokenizer: invalid UTF-8 is replaced by U+FFFD per maximal subpart",
          "[tokenizer][utf8]") {
  // as Rust's String::from_utf8_lossy and Python's bytes.decode("utf-8", "replace")
  std::string const r = "\uFFFD";
  CHECK(utf8_lossy("\xF0\x9F\x98") == r);  // truncated 4-byte sequence
  CHECK(utf8_lossy("\xF0\x9F\x98 x") == r + " x");
  CHECK(utf8_lossy("\xE0\x80\x80") == r + r + r);          // overlong
  CHECK(utf8_lossy("\xED\xA0\x80") == r + r + r);          // surrogate
  CHECK(utf8_lossy("\xC0\x80") == r + r);                  // overlong NUL
  CHECK(utf8_lossy("\xF4\x90\x80\x80") == r + r + r + r);  // above U+10FFFF
  CHECK(utf8_lossy("caf\xE9") == "caf" + r);
  CHECK(utf8_lossy("\xE4\xB8\xAD\xE6") == "中" + r);
  CHECK(utf8_lossy("ok\xF5\xFE\xFF ok") == "ok" + r + r + r + " ok");
  CHECK(utf8_lossy("valid 中文 😀") == "valid 中文 😀");
  CHECK(utf8_complete_prefix("a\xF0\x9F") == 1);
  CHECK(utf8_complete_prefix("a\xFF") == 2);
  CHECK(utf8_complete_prefix("\xE2\x82") == 0);
  CHECK(utf8_complete_prefix("\xE2\x82\xAC") == 3);

  // encode repairs the text first: the same ids as for the repaired text (the fixture's
  // bytes_hex cases check them against tokenizers)
  Tokenizer const& t = deepseek();
  CHECK(encode(t,
               "ab\xFF"
               "cd") == encode(t,
                               "ab\uFFFD"
                               "cd"));
  CHECK(decode(t, encode(t, "\xF0\x9F\x98")) == r);
}

TEST_CASE("tokenizer: the byte-level tokenizer round-trips arbitrary bytes",
          "[tokenizer][byte_level]") {
  Tokenizer const t = Tokenizer::byte_level();
  CHECK(t.vocab_size() == 259);
  CHECK(t.bos_id() == 256);
  CHECK(t.eos_id() == 257);
  CHECK(t.token_to_id(std::string(kPadToken)) == 258);
  CHECK(t.is_special(256));
  CHECK_FALSE(t.is_special(65));

  std::mt19937 rng(7);
  for (int n : {0, 1, 2, 17, 1000}) {
    std::string bytes;
    for (int i = 0; i < n; ++i) {
      bytes += static_cast<char>(rng() & 0xFF);
    }
    CAPTURE(n);
    auto const ids = encode(t, bytes);
    REQUIRE(ids.size() == bytes.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      CHECK(ids[i] == static_cast<unsigned char>(bytes[i]));
    }
    std::string back;
    REQUIRE(t.decode_bytes(ids, back).ok());
    CHECK(back == bytes);
  }

  std::string const text = std::string(kBosToken) + "hi\xFF" + std::string(kEosToken);
  auto const ids = encode(t, text);
  CHECK(ids == std::vector<std::int32_t>{256, 'h', 'i', 0xFF, 257});
  std::string back;
  REQUIRE(t.decode_bytes(ids, back).ok());
  CHECK(back == text);
  REQUIRE(t.decode_bytes(ids, back, true).ok());
  CHECK(back == "hi\xFF");
  CHECK(decode(t, ids, true) == "hi\uFFFD");
}

TEST_CASE("tokenizer: vocabulary lookups", "[tokenizer]") {
  Tokenizer const& t = deepseek();
  CHECK(t.vocab_size() == 3005);
  CHECK(t.bos_id() == 0);
  CHECK(t.eos_id() == 1);
  CHECK(t.is_special(0));
  CHECK_FALSE(t.is_special(3002));  // <｜User｜> is added, not special (as in DeepSeek-V3)
  CHECK(t.token_to_id("<｜User｜>") == 3002);
  CHECK(t.id_to_token(3002) == "<｜User｜>");
  CHECK(t.token_to_id("Ġthe").has_value());
  CHECK_FALSE(t.token_to_id("no such token").has_value());
  for (std::int32_t id = 0; id < t.vocab_size(); ++id) {
    auto const token = t.id_to_token(id);
    REQUIRE(token.has_value());
    CHECK(t.token_to_id(*token) == id);
  }
  CHECK_FALSE(t.id_to_token(t.vocab_size()).has_value());

  std::string text;
  std::vector<std::int32_t> const bad = {5, 3005};
  Status const s = t.decode(bad, text);
  CHECK(s.code() == StatusCode::kOutOfRange);
  CHECK_THAT(s.message(), Catch::Contains("ids[1] = 3005"));
}

TEST_CASE("tokenizer: malformed or unsupported tokenizer.json files are refused, naming the field",
          "[tokenizer][errors]") {
  auto expect = [](Status const& s, StatusCode code, std::string const& needle) {
    INFO(s.to_string());
    CHECK(s.code() == code);
    CHECK_THAT(s.message(), Catch::Contains(needle));
  };
  Tokenizer t;
  expect(Tokenizer::load(kDir + "/no_such_file.json", t), StatusCode::kIoError, "no_such_file");
  expect(Tokenizer::from_json("{\"model\": ", t), StatusCode::kInvalidArgument, "not a JSON");

  json no_model = base_json();
  no_model.erase("model");
  expect(Tokenizer::from_json(no_model.dump(), t), StatusCode::kInvalidArgument,
         "model is missing");
  json model = base_json()["model"];
  model["type"] = "WordPiece";
  expect(patched_error({{"model", model}}), StatusCode::kNotSupported, "model.type");
  model = base_json()["model"];
  model["merges"][5] = "nospace";
  expect(patched_error({{"model", model}}), StatusCode::kInvalidArgument, "model.merges[5]");
  model["merges"][5] = json::array({"Ġ", "zzz-not-a-token"});
  expect(patched_error({{"model", model}}), StatusCode::kInvalidArgument, "zzz-not-a-token");
  model = base_json()["model"];
  model["vocab"]["Ġthe"] = -3;
  expect(patched_error({{"model", model}}), StatusCode::kInvalidArgument, "model.vocab[\"Ġthe\"]");
  model = base_json()["model"];
  model.erase("merges");
  expect(patched_error({{"model", model}}), StatusCode::kInvalidArgument, "model.merges");
  model = base_json()["model"];
  model["byte_fallback"] = true;
  expect(patched_error({{"model", model}}), StatusCode::kNotSupported, "model.byte_fallback");

  json pre = base_json()["pre_tokenizer"];
  pre["pretokenizers"][1] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  expect(patched_error({{"pre_tokenizer", pre}}), StatusCode::kNotSupported,
         "pre_tokenizer.pretokenizers[1].type");
  pre = base_json()["pre_tokenizer"];
  pre["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{N}";
  expect(patched_error({{"pre_tokenizer", pre}}), StatusCode::kInvalidArgument,
         "pre_tokenizer.pretokenizers[0].pattern.Regex");
  pre = base_json()["pre_tokenizer"];
  pre["pretokenizers"][2]["behavior"] = "Sideways";
  expect(patched_error({{"pre_tokenizer", pre}}), StatusCode::kInvalidArgument,
         "pre_tokenizer.pretokenizers[2].behavior");

  expect(patched_error({{"normalizer", {{"type", "NFC"}}}}), StatusCode::kNotSupported,
         "normalizer");
  expect(patched_error({{"decoder", {{"type", "WordPiece"}}}}), StatusCode::kNotSupported,
         "decoder");
  expect(patched_error({{"truncation", {{"max_length", 8}}}}), StatusCode::kNotSupported,
         "truncation");
  expect(patched_error({{"post_processor", {{"type", "BertProcessing"}}}}),
         StatusCode::kNotSupported, "post_processor");

  json added = base_json()["added_tokens"];
  added[4]["id"] = 3010;  // tokenizers would give it 3001
  expect(patched_error({{"added_tokens", added}}), StatusCode::kInvalidArgument, "added_tokens[4]");
  added = base_json()["added_tokens"];
  added[3]["single_word"] = true;
  expect(patched_error({{"added_tokens", added}}), StatusCode::kNotSupported,
         "added_tokens[3].single_word");
}
