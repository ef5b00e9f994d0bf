// SPDX-License-Identifier: Apache-2.0
/// @file hf_reference_test.cpp
/// @brief Model<C> against Hugging Face transformers: the checkpoints and float64 reference
/// logits in tests/fixtures/model/ (scripts/make_fixtures.py, docs/testing.md).
///
/// Tolerance: max |ours − ref| ≤ 1e-4 · max |ref| over each sequence's [T, V] logits, and the
/// same argmax at every position. The reference is computed in float64 on exactly the weights
/// we load (fp32; bf16 or fp8·scale values, exact in fp32), so the only difference is our fp32
/// arithmetic: through two layers that is ~1e-6 relative, and 1e-4 leaves room for the
/// different summation orders of other builds (-march=native, thread counts). The fixtures'
/// top-2 logit gaps are ≥ 2.7e-3 of the range, so the argmax check is robust at this tolerance.
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/generated/all.hpp>
#include <deepmoe/io/safetensors.hpp>
#include <deepmoe/model/model.hpp>

#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace deepmoe;

constexpr double kTolerance = 1e-4;

fs::path fixture(std::string const& name) {
  return fs::path(DEEPMOE_FIXTURES_DIR) / "model" / name;
}

/// One reference sequence: tokens, positions, the MTP input's last token.
struct RefSequence {
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> positions;
  std::int32_t mtp_next_token = -1;
};

std::vector<RefSequence> read_sequences(fs::path const& dir) {
  std::ifstream in(dir / "reference.json");
  nlohmann::json const j = nlohmann::json::parse(in);
  std::vector<RefSequence> out;
  for (auto const& s : j.at("sequences")) {
    RefSequence r;
    r.tokens = s.at("tokens").get<std::vector<std::int32_t>>();
    r.positions = s.at("positions").get<std::vector<std::int64_t>>();
    r.mtp_next_token = s.value("mtp_next_token", -1);
    out.push_back(std::move(r));
  }
  return out;
}

model::Sequence view(std::vector<std::int32_t> const& t, std::vector<std::int64_t> const& p) {
  auto const n = static_cast<std::int64_t>(t.size());
  return {VectorView<std::int32_t const>(t.data(), n), VectorView<std::int64_t const>(p.data(), n)};
}

/// Compares logits [T, V] with the reference tensor `name`; returns the relative error.
double compare(io::SafetensorsFile const& ref, std::string const& name,
               std::vector<float> const& ours, std::int64_t V) {
  MatrixView<float const> r;
  Status const st = ref.matrix<float>(name, r);
  INFO(st.to_string());
  REQUIRE(st.ok());
  REQUIRE(r.size() == static_cast<std::int64_t>(ours.size()));
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < r.size(); ++i) {
    num = std::max(num, std::fabs(double{ours[static_cast<std::size_t>(i)]} - r.data()[i]));
    den = std::max(den, std::fabs(double{r.data()[i]}));
  }
  for (std::int64_t t = 0; t < r.extent(0); ++t) {
    auto const* a = ours.data() + t * V;
    auto const* b = r.data() + t * V;
    CAPTURE(name, t);
    CHECK(std::max_element(a, a + V) - a == std::max_element(b, b + V) - b);
  }
  return num / den;
}

/// Loads fixture `name` as config C and checks every sequence's logits (and MTP drafts when
/// the fixture has them), in both MLA forms.
template <class C>
void check_fixture(std::string const& name, std::string const& label) {
  fs::path const dir = fixture(name);
  model::Model<C> m;
  Status const st = model::Model<C>::load(dir.string(), m);
  INFO(st.to_string());
  REQUIRE(st.ok());
  io::SafetensorsFile ref;
  REQUIRE(io::SafetensorsFile::open((dir / "reference.safetensors").string(), ref).ok());
  std::int64_t const V = m.config().vocab_size, H = m.config().hidden_size;
  auto const seqs = read_sequences(dir);
  double worst = 0, worst_mtp = 0;
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    m.set_mla_form(form);
    for (std::size_t s = 0; s < seqs.size(); ++s) {
      auto const& q = seqs[s];
      auto const T = static_cast<std::int64_t>(q.tokens.size());
      model::Sequence const seq = view(q.tokens, q.positions);
      std::vector<float> logits(static_cast<std::size_t>(T * V)),
          hidden(static_cast<std::size_t>(T * H));
      REQUIRE(m.forward(std::span(&seq, 1), MatrixView<float>(logits.data(), T, V),
                        model::LogitsRows::kAll, MatrixView<float>(hidden.data(), T, H))
                  .ok());
      double const e = compare(ref, "logits_" + std::to_string(s), logits, V);
      CAPTURE(label, s, e);
      CHECK(e <= kTolerance);
      worst = std::max(worst, e);
      if (ref.find("mtp_logits_" + std::to_string(s)) == nullptr) {
        continue;
      }
      std::vector<std::int32_t> next(q.tokens.begin() + 1, q.tokens.end());
      next.push_back(q.mtp_next_token);
      model::Sequence const ns = view(next, q.positions);
      std::vector<float> draft(static_cast<std::size_t>(T * V));
      Status const ms =
          m.mtp_forward(std::span(&ns, 1), MatrixView<float const>(hidden.data(), T, H),
                        MatrixView<float>(draft.data(), T, V));
      INFO(ms.to_string());
      REQUIRE(ms.ok());
      double const em = compare(ref, "mtp_logits_" + std::to_string(s), draft, V);
      CHECK(em <= kTolerance);
      worst_mtp = std::max(worst_mtp, em);
    }
  }
  std::printf("%-28s max relative error %.2e%s", label.c_str(), worst, worst_mtp > 0 ? "" : "\n");
  if (worst_mtp > 0) {
    std::printf(", MTP drafts %.2e\n", worst_mtp);
  }
}

}  // namespace

TEST_CASE("hf_reference: DeepSeek-V3 style (noaux_tc, groups, q_lora, YaRN, MTP)", "[hf]") {
  check_fixture<test::FixtureV3>("v3", "v3");
}

TEST_CASE("hf_reference: DeepSeek-V2-Lite style (softmax, greedy, mscale 0.707)", "[hf]") {
  check_fixture<test::FixtureV2Lite>("v2_lite", "v2_lite");
}

TEST_CASE("hf_reference: Moonlight style (no rope scaling, eps 1e-5, theta 5e4)", "[hf]") {
  check_fixture<test::FixtureMoonlight>("moonlight", "moonlight");
}

TEST_CASE("hf_reference: Kimi-K2 style (beta_fast = beta_slow = 1), BF16 weights", "[hf]") {
  check_fixture<test::FixtureKimiK2>("kimi_k2", "kimi_k2 (bf16)");
  // the same bf16 checkpoint widened to fp32 at load gives the same logits
  check_fixture<config::WithPrecision<test::FixtureKimiK2, float, float>>("kimi_k2",
                                                                          "kimi_k2 as fp32");
}

TEST_CASE("hf_reference: FP8 checkpoint in DeepSeek-V3's format (e4m3 + 128² scales)",
          "[hf][fp8]") {
  check_fixture<test::FixtureV3Fp8>("v3_fp8", "v3_fp8 (fp8 weights)");
  // dequantized at load into an fp32 config
  check_fixture<test::FixtureV3>("v3_fp8", "v3_fp8 as fp32");
}

TEST_CASE("hf_reference: configs generated from config.json by deepmoe_add_model_config",
          "[hf][generated]") {
  using namespace deepmoe::configs;
  // the precision follows the checkpoint: fp32, bf16 (torch_dtype) or fp8 (quantization_config)
  STATIC_REQUIRE(std::is_same_v<Generated_v3::weight_t, float>);
  STATIC_REQUIRE(std::is_same_v<Generated_kimi_k2::weight_t, bfloat16>);
  STATIC_REQUIRE(std::is_same_v<Generated_v3_fp8::weight_t, float8_e4m3fn>);
  STATIC_REQUIRE(Generated_v3_fp8::weight_block_size == 128);
  STATIC_REQUIRE(std::tuple_size_v<generated::All> == 5);
  // each equals the hand-written fixture config in every field that matters
  CHECK(io::config_mismatches<test::FixtureV3>(io::config_json<Generated_v3>()).empty());
  CHECK(io::config_mismatches<test::FixtureV2Lite>(io::config_json<Generated_v2_lite>()).empty());
  CHECK(io::config_mismatches<test::FixtureMoonlight>(io::config_json<Generated_moonlight>())
            .empty());
  CHECK(io::config_mismatches<test::FixtureKimiK2>(io::config_json<Generated_kimi_k2>()).empty());
  check_fixture<Generated_v3>("v3", "v3 (generated config)");
  check_fixture<Generated_v2_lite>("v2_lite", "v2_lite (generated config)");
  check_fixture<Generated_v3_fp8>("v3_fp8", "v3_fp8 (generated config)");
}

TEST_CASE("hf_reference: the Dynamic config (sizes read at run time) on every fixture",
          "[hf][dynamic]") {
  using config::Dynamic;
  check_fixture<Dynamic<float, float>>("v3", "v3 (dynamic)");
  check_fixture<Dynamic<float, float>>("v2_lite", "v2_lite (dynamic)");
  check_fixture<Dynamic<float, float>>("moonlight", "moonlight (dynamic)");
  check_fixture<Dynamic<bfloat16, bfloat16>>("kimi_k2", "kimi_k2 (dynamic, bf16)");
  check_fixture<Dynamic<float8_e4m3fn, bfloat16>>("v3_fp8", "v3_fp8 (dynamic, fp8)");
}

TEST_CASE("hf_reference: a checkpoint written by deepmoe-train, loaded by transformers",
          "[hf][dynamic][trained]") {
  // config.json and model.safetensors exactly as deepmoe-train wrote them (configs/train_tiny.json,
  // 30 steps on docs/, with its MTP module); the reference is transformers' from_pretrained of the
  // same two files. The MTP drafts use the module's own trained embedding and head.
  check_fixture<config::Dynamic<float, float>>("deepmoe_trained", "deepmoe_trained (dynamic)");
}

TEST_CASE("hf_reference: compiled and Dynamic configs give the same bits", "[hf][dynamic]") {
  auto logits = [](auto& m, RefSequence const& q) {
    auto const T = static_cast<std::int64_t>(q.tokens.size());
    std::int64_t const V = m.config().vocab_size;
    model::Sequence const seq = view(q.tokens, q.positions);
    std::vector<float> out(static_cast<std::size_t>(T * V));
    REQUIRE(
        m.forward(std::span(&seq, 1), MatrixView<float>(out.data(), T, V), model::LogitsRows::kAll)
            .ok());
    return out;
  };
  for (std::string const name : {"v3", "v2_lite"}) {
    model::Model<config::Dynamic<>> dynamic;
    REQUIRE(model::Model<config::Dynamic<>>::load(fixture(name).string(), dynamic).ok());
    auto const seqs = read_sequences(fixture(name));
    auto check = [&](auto& compiled) {
      for (auto const& q : seqs) {
        auto const a = logits(compiled, q), b = logits(dynamic, q);
        CHECK(std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
          return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
        }));
      }
    };
    if (name == "v3") {
      model::Model<test::FixtureV3> m;
      REQUIRE(model::Model<test::FixtureV3>::load(fixture(name).string(), m).ok());
      check(m);
    } else {
      model::Model<test::FixtureV2Lite> m;
      REQUIRE(model::Model<test::FixtureV2Lite>::load(fixture(name).string(), m).ok());
      check(m);
    }
  }
}
