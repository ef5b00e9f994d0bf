// SPDX-License-Identifier: Apache-2.0
/// @file data_test.cpp
/// @brief Training data: file collection (recursion, include patterns, order), tokenization
/// into per-source streams, the validation split by document, windows that are a pure function
/// of (seed, step, b), source weights, and errors.
#include <deepmoe/train/data.hpp>

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace deepmoe;

fs::path make_tree() {
  fs::path const root = fs::temp_directory_path() / "deepmoe_data_test";
  fs::remove_all(root);
  fs::create_directories(root / "code" / "pkg");
  fs::create_directories(root / "prose");
  auto write = [](fs::path const& p, std::string const& text) { std::ofstream(p) << text; };
  for (int i = 0; i < 20; ++i) {  // (appends: GCC 12 warns falsely on "literal" + string)
    std::string const n = std::to_string(i);
    std::string file = "m", text = "def f";
    file += n;
    file += ".py";
    text += n;
    text += "(x):\n    return x * ";
    text += n;
    text += "\n";
    write(root / "code" / "pkg" / file, text);
  }
  write(root / "code" / "notes.txt", "not code");
  for (int i = 0; i < 10; ++i) {
    std::string file = "p";
    file += std::to_string(i);
    file += ".txt";
    write(root / "prose" / file, std::string(200, static_cast<char>('a' + i)));
  }
  return root;
}

}  // namespace

TEST_CASE("train::data: sources, split, deterministic windows, weights, errors", "[train]") {
  fs::path const root = make_tree();
  train::Source const code{"code", {(root / "code").string()}, {"*.py"}, 3.0};
  train::Source const prose{"prose", {(root / "prose").string()}, {}, 1.0};
  std::vector<std::string> files;
  REQUIRE(train::collect_files(code, files).ok());
  CHECK(files.size() == 20);  // notes.txt excluded, recursion into pkg/
  CHECK(std::is_sorted(files.begin(), files.end()));

  auto const tok = tokenizer::Tokenizer::byte_level();
  std::int32_t const eos = *tok.eos_id();
  train::TextDataset d;
  REQUIRE(train::TextDataset::build({code, prose}, tok, eos, 0.2, 7, d).ok());
  REQUIRE(d.sources() == 2);
  CHECK(d.documents(0) + d.documents(0, true) == 20);
  CHECK(d.documents(1) + d.documents(1, true) == 10);
  CHECK(d.documents(0, true) > 0);  // ~20% of 20 documents held out
  // bytes are tokens: the prose stream is its files' bytes with EOS after each
  CHECK(d.tokens(1).size() == static_cast<std::size_t>(d.documents(1) * 201));
  CHECK(std::count(d.tokens(1).begin(), d.tokens(1).end(), eos) == d.documents(1));

  // windows: the same (seed, step, b) gives the same tokens, whatever was asked before
  std::vector<std::int32_t> a, b;
  std::size_t sa = 0, sb = 0;
  REQUIRE(d.window(5, 1, 32, a, sa).ok());
  REQUIRE(d.window(9, 0, 32, b, sb).ok());
  REQUIRE(d.window(5, 1, 32, b, sb).ok());
  CHECK(a == b);
  CHECK(sa == sb);
  CHECK(a.size() == 33);
  // sources drawn by weight 3 : 1
  int from_code = 0;
  for (std::int64_t step = 0; step < 4000; ++step) {
    std::size_t s = 0;
    REQUIRE(d.window(step, 0, 16, a, s).ok());
    from_code += s == 0 ? 1 : 0;
  }
  CHECK(from_code / 4000.0 == Approx(0.75).margin(0.03));
  // validation windows are consecutive and within the held-out text
  CHECK(d.validation_windows(1, 100) ==
        (static_cast<std::int64_t>(d.tokens(1, true).size()) - 1) / 100);

  // a different seed splits and draws differently; errors name the source
  train::TextDataset other;
  REQUIRE(train::TextDataset::build({code, prose}, tok, eos, 0.2, 8, other).ok());
  CHECK(other.tokens(0) != d.tokens(0));
  CHECK(d.window(0, 0, 100000, a, sa).code() == StatusCode::kInvalidArgument);
  train::TextDataset bad;
  Status st = train::TextDataset::build({{"none", {(root / "missing").string()}, {}, 1.0}}, tok,
                                        eos, 0.1, 1, bad);
  CHECK(st.code() == StatusCode::kIoError);
  CHECK_THAT(st.message(), Catch::Contains("source 'none'"));
  st = train::TextDataset::build({{"empty", {(root / "code").string()}, {"*.rs"}, 1.0}}, tok, eos,
                                 0.1, 1, bad);
  CHECK_THAT(st.message(), Catch::Contains("no file matches"));
  fs::remove_all(root);
}
