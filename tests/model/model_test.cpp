// SPDX-License-Identifier: Apache-2.0
/// @file model_test.cpp
/// @brief Model<C> on random checkpoints written here: loading (views, conversions, one report
/// of every bad tensor), config.json checks, batch and thread invariance, the MLA forms, fp8,
/// MTP, and bad input. Exactness against transformers is in hf_reference_test.cpp.
#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/generated/all.hpp>
#include <deepmoe/configs/kimi_k2.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/model/model.hpp>
#include <deepmoe/util/random_checkpoint.hpp>

#include "support/compare.hpp"
#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace deepmoe;
using test::FixtureMoonlight;
using test::FixtureV3;
using test::FixtureV3Fp8;
using test::max_rel_diff;
using test::same_bits;

fs::path temp_dir(std::string const& name) {
  fs::path const p = fs::temp_directory_path() / ("deepmoe_model_test_" + name);
  fs::remove_all(p);
  return p;
}

/// Token ids and positions of a few sequences, owned.
struct Batch {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<std::vector<std::int64_t>> positions;
  std::vector<model::Sequence> seqs;

  Batch(std::vector<std::vector<std::int32_t>> t, std::vector<std::int64_t> starts)
      : tokens(std::move(t)) {
    for (std::size_t s = 0; s < tokens.size(); ++s) {
      positions.emplace_back(tokens[s].size());
      for (std::size_t i = 0; i < tokens[s].size(); ++i)
        positions[s][i] = starts[s] + static_cast<std::int64_t>(i);
    }
    for (std::size_t s = 0; s < tokens.size(); ++s) {
      seqs.push_back({VectorView<std::int32_t const>(tokens[s].data(),
                                                     static_cast<std::int64_t>(tokens[s].size())),
                      VectorView<std::int64_t const>(positions[s].data(),
                                                     static_cast<std::int64_t>(tokens[s].size()))});
    }
  }
  std::int64_t total() const {
    std::int64_t n = 0;
    for (auto const& t : tokens)
      n += static_cast<std::int64_t>(t.size());
    return n;
  }
};

Batch sample_batch() {
  return Batch({{3, 17, 250, 9, 9, 100, 42}, {7, 1, 200, 31}, {64, 65, 66, 5, 128}}, {0, 0, 3});
}

template <class C>
std::vector<float> logits_of(model::Model<C>& m, Batch const& b, model::LogitsRows which,
                             std::vector<float>* hidden = nullptr) {
  std::int64_t const V = m.config().vocab_size, H = m.config().hidden_size;
  std::int64_t const rows =
      which == model::LogitsRows::kLast ? static_cast<std::int64_t>(b.seqs.size()) : b.total();
  std::vector<float> out(static_cast<std::size_t>(rows * V));
  MatrixView<float> h;
  if (hidden != nullptr) {
    hidden->resize(static_cast<std::size_t>(b.total() * H));
    h = MatrixView<float>(hidden->data(), b.total(), H);
  }
  Status const st = m.forward(b.seqs, MatrixView<float>(out.data(), rows, V), which, h);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return out;
}

template <class C>
model::Model<C> load_ok(fs::path const& dir, model::LoadOptions opt = {}) {
  model::Model<C> m;
  Status const st = model::Model<C>::load(dir.string(), m, opt);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return m;
}

}  // namespace

TEST_CASE("model: config.json of every preset matches it; a mismatch lists each field",
          "[model][config]") {
  auto check_file = [](auto tag, char const* file) {
    using C = decltype(tag);
    std::ifstream in(fs::path(DEEPMOE_CONFIGS_DIR) / file);
    auto const m = io::config_mismatches<C>(nlohmann::json::parse(in));
    INFO(file << ": " << (m.empty() ? std::string() : m.front()));
    CHECK(m.empty());
    CHECK(io::config_mismatches<C>(io::config_json<C>()).empty());
  };
  check_file(configs::DeepSeekV3{}, "deepseek_v3.json");
  check_file(configs::DeepSeekV2Lite{}, "deepseek_v2_lite.json");
  check_file(configs::Moonlight16BA3B{}, "moonlight_16b_a3b.json");
  check_file(configs::KimiK2{}, "kimi_k2.json");
  CHECK(io::config_mismatches<FixtureV3Fp8>(io::config_json<FixtureV3Fp8>()).empty());

  auto const m = io::config_mismatches<FixtureMoonlight>(io::config_json<FixtureV3>());
  std::string all;
  for (auto const& line : m)
    all += line + "\n";
  INFO(all);
  // exactly the fields that differ, each with both values
  CHECK(m.size() == 7);
  CHECK_THAT(all, Catch::Contains("q_lora_rank: config.json has 48, the compiled config 0"));
  CHECK_THAT(all, Catch::Contains("rms_norm_eps: config.json has 9.9999999999999995e-07"));
  CHECK_THAT(all, Catch::Contains("num_nextn_predict_layers: config.json has 1"));
  CHECK_THAT(all, Catch::Contains("n_group: config.json has 4, the compiled config 1"));
  CHECK_THAT(all, Catch::Contains("topk_group"));
  CHECK_THAT(all, Catch::Contains("rope_theta: config.json has 10000, the compiled config 50000"));
  CHECK_THAT(all, Catch::Contains("rope_scaling.type: config.json has \"yarn\", the compiled "
                                  "config none"));

  // transformers ≥ 5 layout: rope_parameters with rope_theta inside, num_mtp_layers
  nlohmann::json j = io::config_json<FixtureV3>();
  nlohmann::json rp = j["rope_scaling"];
  rp["rope_type"] = "yarn";
  rp.erase("type");
  rp["rope_theta"] = 10000.0;
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = rp;
  j["num_mtp_layers"] = 1;
  j.erase("num_nextn_predict_layers");
  j.erase("scoring_func");  // deepseek_v3 default
  CHECK(io::config_mismatches<FixtureV3>(j).empty());
  j["rope_parameters"]["beta_fast"] = 1.0;
  j["hidden_size"] = "64";
  auto const m2 = io::config_mismatches<FixtureV3>(j);
  REQUIRE(m2.size() == 2);
  CHECK_THAT(m2[0], Catch::Contains("hidden_size: config.json has \"64\""));
  CHECK_THAT(m2[1], Catch::Contains("beta_fast: config.json has 1, the compiled config 32"));
}

TEST_CASE("model: checkpoint_tensors names every tensor of DeepSeek-V3's checkpoint",
          "[model][checkpoint]") {
  auto const specs = model::checkpoint_tensors<configs::DeepSeekV3>();
  // 61 layers: 3 dense (5 attention linears + 2 attention norms + 2 layer norms + 3 MLP) and
  // 58 MoE (… + gate, bias, 256·3 experts, 3 shared); MTP layer 61 adds the same MoE layer
  // plus embed, enorm, hnorm, eh_proj, shared_head.{norm,head}; embed, norm, lm_head.
  std::size_t const dense = 5 + 2 + 2 + 3, moe = 5 + 2 + 2 + 2 + 256 * 3 + 3;
  CHECK(specs.size() == 3 + 3 * dense + 58 * moe + (moe + 6));
  auto has = [&](std::string const& name, std::vector<std::int64_t> shape) {
    return std::any_of(specs.begin(), specs.end(),
                       [&](auto const& s) { return s.name == name && s.shape == shape; });
  };
  CHECK(has("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {576, 7168}));
  CHECK(has("model.layers.60.mlp.experts.255.down_proj.weight", {7168, 2048}));
  CHECK(has("model.layers.61.eh_proj.weight", {7168, 14336}));
  CHECK(has("model.layers.3.mlp.gate.e_score_correction_bias", {256}));
  CHECK(model::checkpoint_tensors<configs::DeepSeekV3>({.mtp = false}).size() ==
        specs.size() - (moe + 6));
}

TEST_CASE("model: forward is batch-invariant, thread-invariant, kLast = kAll's last rows",
          "[model][forward]") {
  fs::path const dir = temp_dir("invariance");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 11, .shard = true}).ok());
  auto m = load_ok<FixtureV3>(dir);
  CHECK(m.converted_bytes() == 0);  // every fp32 tensor is viewed in place
  Batch const b = sample_batch();
  auto const all = logits_of(m, b, model::LogitsRows::kAll);
  auto const last = logits_of(m, b, model::LogitsRows::kLast);
  constexpr std::int64_t V = FixtureV3::vocab_size;
  std::int64_t row = 0;
  for (std::size_t s = 0; s < b.seqs.size(); ++s) {
    row += static_cast<std::int64_t>(b.tokens[s].size());
    std::vector<float> const a(all.begin() + (row - 1) * V, all.begin() + row * V);
    std::vector<float> const l(last.begin() + static_cast<std::int64_t>(s) * V,
                               last.begin() + static_cast<std::int64_t>(s + 1) * V);
    CHECK(same_bits(a, l));
    // the sequence alone gives the same bits as in the batch
    Batch const alone({b.tokens[s]}, {b.positions[s][0]});
    CHECK(same_bits(logits_of(m, alone, model::LogitsRows::kLast), l));
  }
#if defined(_OPENMP)
  int const threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto const one = logits_of(m, b, model::LogitsRows::kAll);
  omp_set_num_threads(threads);
  CHECK(same_bits(one, all));
#endif
  // the logits are not degenerate: a spread of values, no NaN
  CHECK(std::all_of(all.begin(), all.end(), [](float x) { return std::isfinite(x); }));
  CHECK(*std::max_element(all.begin(), all.end()) - *std::min_element(all.begin(), all.end()) >
        1.0f);
  fs::remove_all(dir);
}

TEST_CASE("model: the absorbed MLA form gives the naive form's logits", "[model][forward]") {
  fs::path const dir = temp_dir("absorbed");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 12}).ok());
  auto m = load_ok<FixtureV3>(dir);
  Batch const b = sample_batch();
  auto const naive = logits_of(m, b, model::LogitsRows::kAll);
  m.set_mla_form(MlaForm::kAbsorbed);
  auto const absorbed = logits_of(m, b, model::LogitsRows::kAll);
  // fp32 sums in another order through 2 layers: ~1e-6 relative
  CHECK(max_rel_diff(absorbed, naive) < 1e-5);
  fs::remove_all(dir);
}

TEST_CASE("model: fp8 checkpoints load viewed in place, or dequantized; fp32 ones quantized",
          "[model][fp8]") {
  fs::path const f8 = temp_dir("fp8"), f32 = temp_dir("fp8_from_f32");
  REQUIRE(
      util::write_random_checkpoint<FixtureV3Fp8>(f8.string(), {.seed = 13,
                                                                .linear_dtype = io::Dtype::kF8E4M3,
                                                                .act_dtype = io::Dtype::kBF16,
                                                                .shard = true})
          .ok());
  Batch const b = sample_batch();
  auto native = load_ok<FixtureV3Fp8>(f8);
  CHECK(native.converted_bytes() == 0);  // e4m3 + scales + bf16: all in place
  auto const ref = logits_of(native, b, model::LogitsRows::kAll);
  // the same checkpoint in an fp32 config: weights dequantized at load, same values
  auto wide = load_ok<FixtureV3>(f8);
  CHECK(wide.converted_bytes() > 0);
  CHECK(max_rel_diff(logits_of(wide, b, model::LogitsRows::kAll), ref) < 1e-6);

  // an fp32 checkpoint quantized at load gives the bits of the same values written in fp8
  // (the checkpoint writer quantizes with the same quantize_fp8_block, 128² blocks)
  REQUIRE(util::write_random_checkpoint<FixtureV3>(f32.string(), {.seed = 13, .shard = true}).ok());
  auto q = load_ok<FixtureV3Fp8>(f32);
  CHECK(q.converted_bytes() > 0);
  CHECK(same_bits(logits_of(q, b, model::LogitsRows::kAll), ref));
  fs::remove_all(f8);
  fs::remove_all(f32);
}

TEST_CASE("model: MTP drafts from the final hidden states; absent without the module",
          "[model][mtp]") {
  fs::path const dir = temp_dir("mtp");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 14, .shard = true}).ok());
  auto m = load_ok<FixtureV3>(dir);
  Batch const b = sample_batch();
  std::vector<float> hidden;
  (void)logits_of(m, b, model::LogitsRows::kLast, &hidden);
  // the shifted batch: token i+1 at position i, and a sampled token at the end
  std::vector<std::vector<std::int32_t>> next;
  for (auto const& t : b.tokens) {
    next.emplace_back(t.begin() + 1, t.end());
    next.back().push_back(77);
  }
  Batch const nb(next, {0, 0, 3});
  constexpr std::int64_t V = FixtureV3::vocab_size;
  std::vector<float> draft(static_cast<std::size_t>(nb.total() * V));
  MatrixView<float const> const hv(hidden.data(), b.total(), FixtureV3::hidden_size);
  Status st = m.mtp_forward(nb.seqs, hv, MatrixView<float>(draft.data(), nb.total(), V));
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(std::all_of(draft.begin(), draft.end(), [](float x) { return std::isfinite(x); }));
  // a draft depends on its own sequence only
  Batch const one({next[1]}, {0});
  std::vector<float> d1(static_cast<std::size_t>(4 * V));
  REQUIRE(m.mtp_forward(one.seqs,
                        MatrixView<float const>(hidden.data() + 7 * FixtureV3::hidden_size, 4,
                                                FixtureV3::hidden_size),
                        MatrixView<float>(d1.data(), 4, V))
              .ok());
  CHECK(same_bits(d1, std::vector<float>(draft.begin() + 7 * V, draft.begin() + 11 * V)));

  auto no_mtp = load_ok<FixtureV3>(dir, {.mtp = false});
  CHECK(no_mtp.weights().mtp.empty());
  st = no_mtp.mtp_forward(nb.seqs, hv, MatrixView<float>(draft.data(), nb.total(), V));
  CHECK(st.code() == StatusCode::kNotSupported);
  // …and a model without MTP in its config ignores the module's tensors
  auto moonlike = load_ok<FixtureV3>(dir, {.mtp = false});
  CHECK(moonlike.weights().layers.size() == 2);
  fs::remove_all(dir);
}

TEST_CASE("model: one message lists every missing, misshaped and unexpected tensor",
          "[model][errors]") {
  fs::path const dir = temp_dir("broken");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(
              dir.string(), {.seed = 15,
                             .edit =
                                 [](std::vector<util::OwnedTensor>& t) {
                                   std::erase_if(t, [](auto const& x) {
                                     return x.name ==
                                                "model.layers.1.mlp.experts.3.up_proj.weight" ||
                                            x.name == "model.norm.weight";
                                   });
                                   for (auto& x : t) {
                                     if (x.name == "model.layers.0.self_attn.o_proj.weight") {
                                       x.shape = {128, 64};  // same bytes, transposed shape
                                     }
                                   }
                                   t.push_back({"model.layers.0.self_attn.extra.weight",
                                                io::Dtype::kF32,
                                                {2},
                                                std::vector<std::byte>(8)});
                                   t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq",
                                                io::Dtype::kF32,
                                                {2},
                                                std::vector<std::byte>(8)});  // ignored
                                 }})
              .ok());
  model::Model<FixtureV3> m;
  Status const st = model::Model<FixtureV3>::load(dir.string(), m);
  REQUIRE(st.code() == StatusCode::kInvalidArgument);
  std::string const& msg = st.message();
  INFO(msg);
  CHECK_THAT(msg, Catch::Contains("missing (2)"));
  CHECK_THAT(msg, Catch::Contains("model.layers.1.mlp.experts.3.up_proj.weight [16, 64]"));
  CHECK_THAT(msg, Catch::Contains("model.norm.weight [64]"));
  CHECK_THAT(msg, Catch::Contains(
                      "model.layers.0.self_attn.o_proj.weight is [128, 64], expected [64, 128]"));
  CHECK_THAT(msg, Catch::Contains("unexpected (1)"));
  CHECK_THAT(msg, Catch::Contains("model.layers.0.self_attn.extra.weight"));
  CHECK_THAT(msg, !Catch::Contains("inv_freq"));

  // a config.json of another model: the fields, before any tensor is read
  model::Model<FixtureMoonlight> other;
  Status const cfg = model::Model<FixtureMoonlight>::load(dir.string(), other);
  CHECK_THAT(cfg.message(), Catch::Contains("config.json does not match the compiled config"));
  CHECK_THAT(cfg.message(), Catch::Contains("q_lora_rank"));
  // no directory at all
  CHECK(model::Model<FixtureV3>::load((dir / "nope").string(), m).code() == StatusCode::kIoError);
  fs::remove_all(dir);
}

TEST_CASE("model: bad fp8 scales and non-float dtypes are named", "[model][errors]") {
  fs::path const dir = temp_dir("bad_scale");
  REQUIRE(util::write_random_checkpoint<FixtureV3Fp8>(
              dir.string(),
              {.seed = 16,
               .linear_dtype = io::Dtype::kF8E4M3,
               .act_dtype = io::Dtype::kBF16,
               .edit =
                   [](std::vector<util::OwnedTensor>& t) {
                     for (auto& x : t) {
                       if (x.name == "model.layers.1.self_attn.kv_b_proj.weight_scale_inv") {
                         float const nan = std::nanf("");
                         std::memcpy(x.bytes.data(), &nan, 4);
                       }
                       if (x.name == "model.layers.0.input_layernorm.weight") {
                         x.dtype = io::Dtype::kI16;  // same bytes as BF16, not a float
                       }
                     }
                   }})
              .ok());
  for (int wide = 0; wide < 2; ++wide) {
    Status st;
    if (wide == 0) {
      model::Model<FixtureV3Fp8> m;
      st = model::Model<FixtureV3Fp8>::load(dir.string(), m);
    } else {
      model::Model<FixtureV3> m;
      st = model::Model<FixtureV3>::load(dir.string(), m);
    }
    INFO(st.message());
    CHECK_THAT(st.message(), Catch::Contains("unusable (2)"));
    CHECK_THAT(st.message(), Catch::Contains("model.layers.1.self_attn.kv_b_proj.weight"));
    CHECK_THAT(st.message(), Catch::Contains("= nan is not a finite scale"));
    CHECK_THAT(st.message(),
               Catch::Contains("model.layers.0.input_layernorm.weight has dtype I16"));
  }
  fs::remove_all(dir);
}

TEST_CASE("model: out-of-range tokens, empty sequences and misshaped outputs are refused",
          "[model][errors]") {
  fs::path const dir = temp_dir("bad_input");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 17, .mtp = false}).ok());
  auto m = load_ok<FixtureV3>(dir, {.mtp = false});
  constexpr std::int64_t V = FixtureV3::vocab_size;
  std::vector<float> out(3 * V);
  Batch bad({{1, 2}, {3, 256}}, {0, 0});
  Status st = m.forward(bad.seqs, MatrixView<float>(out.data(), 2, V));
  CHECK(st.code() == StatusCode::kOutOfRange);
  CHECK_THAT(st.message(), Catch::Contains("sequence 1, position 1: token id 256"));
  Batch neg({{-1}}, {0});
  CHECK(m.forward(neg.seqs, MatrixView<float>(out.data(), 1, V)).code() == StatusCode::kOutOfRange);
  Batch empty({{}}, {0});
  st = m.forward(empty.seqs, MatrixView<float>(out.data(), 1, V));
  CHECK_THAT(st.message(), Catch::Contains("sequence 0 is empty"));
  Batch ok({{1, 2}}, {0});
  st = m.forward(ok.seqs, MatrixView<float>(out.data(), 2, V));
  CHECK_THAT(st.message(), Catch::Contains("logits is [2, 256], expected [1, 256]"));
  Batch negpos({{1, 2}}, {-1});
  st = m.forward(negpos.seqs, MatrixView<float>(out.data(), 1, V));
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(st.message(), Catch::Contains("model.layers.0"));
  fs::remove_all(dir);
}

TEST_CASE("model: memory plan before loading", "[model]") {
  constexpr auto p = model::memory_plan<configs::DeepSeekV3>(4096, 4096);
  static_assert(p.weights == config::weight_bytes<configs::DeepSeekV3>());
  // DeepSeek-V3's FP8 checkpoint is 688.6 GB with MTP (163 shards); the MTP module ~16.5 GB
  CHECK(p.weights + p.mtp_weights > 680'000'000'000);
  CHECK(p.weights + p.mtp_weights < 700'000'000'000);
  CHECK(p.activations > 0);
}

TEST_CASE("model: deepmoe_add_model_config turns the released config.json files into the presets",
          "[model][config]") {
  using namespace configs;
  CHECK(io::config_mismatches<DeepSeekV3>(io::config_json<from_json_deepseek_v3>()).empty());
  CHECK(
      io::config_mismatches<DeepSeekV2Lite>(io::config_json<from_json_deepseek_v2_lite>()).empty());
  CHECK(io::config_mismatches<Moonlight16BA3B>(io::config_json<from_json_moonlight_16b_a3b>())
            .empty());
  CHECK(io::config_mismatches<KimiK2>(io::config_json<from_json_kimi_k2>()).empty());
  // DeepSeek-V3 and Kimi-K2 ship FP8 weights; V2-Lite and Moonlight BF16
  STATIC_REQUIRE(std::is_same_v<from_json_deepseek_v3::weight_t, float8_e4m3fn>);
  STATIC_REQUIRE(std::is_same_v<from_json_kimi_k2::weight_t, float8_e4m3fn>);
  STATIC_REQUIRE(std::is_same_v<from_json_deepseek_v2_lite::weight_t, bfloat16>);
  STATIC_REQUIRE(std::is_same_v<from_json_moonlight_16b_a3b::weight_t, bfloat16>);
  STATIC_REQUIRE(from_json_deepseek_v3::weight_block_size == 128);
}

TEST_CASE("model: the Dynamic config reads config.json, checks it, and names what is wrong",
          "[model][dynamic]") {
  fs::path const dir = temp_dir("dynamic");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 18}).ok());
  using Dyn = config::Dynamic<float, float>;
  model::Model<Dyn> d;
  Status st = model::Model<Dyn>::load(dir.string(), d);
  INFO(st.to_string());
  REQUIRE(st.ok());
  // the same values as the compiled config, so the same memory plan and tensor list
  CHECK(io::config_mismatches<FixtureV3>(io::config_json<Dyn>(d.config())).empty());
  auto const ps = model::memory_plan<FixtureV3>(100, 50);
  auto const pd = model::memory_plan<Dyn>(100, 50, d.config());
  CHECK(ps.weights == pd.weights);
  CHECK(ps.mtp_weights == pd.mtp_weights);
  CHECK(ps.activations == pd.activations);
  CHECK(model::checkpoint_tensors<Dyn>({}, d.config()).size() ==
        model::checkpoint_tensors<FixtureV3>().size());
  auto m = load_ok<FixtureV3>(dir);
  Batch const b = sample_batch();
  CHECK(same_bits(logits_of(d, b, model::LogitsRows::kAll),
                  logits_of(m, b, model::LogitsRows::kAll)));

  auto rewrite = [&](auto edit) {
    nlohmann::json j = io::config_json<FixtureV3>();
    edit(j);
    std::ofstream(dir / "config.json") << j.dump();
    model::Model<Dyn> bad;
    return model::Model<Dyn>::load(dir.string(), bad);
  };
  st = rewrite([](nlohmann::json& j) { j["n_group"] = 3; });
  CHECK_THAT(st.message(),
             Catch::Contains("n_group must be in [1, 64] and divide n_routed_experts"));
  st = rewrite([](nlohmann::json& j) {
    j.erase("hidden_size");
    j["qk_rope_head_dim"] = "16";
    j["scoring_func"] = "relu";
  });
  CHECK_THAT(st.message(), Catch::Contains("cannot read 3 fields"));
  CHECK_THAT(st.message(), Catch::Contains("hidden_size: missing from config.json"));
  CHECK_THAT(st.message(), Catch::Contains("qk_rope_head_dim: config.json has \"16\""));
  CHECK_THAT(st.message(), Catch::Contains("scoring_func: config.json has \"relu\""));
  st = rewrite([](nlohmann::json& j) { j["num_experts_per_tok"] = 4000; });
  CHECK_THAT(st.message(), Catch::Contains("num_experts_per_tok must be in [1, n_routed_experts]"));
  // a config.json that parses but whose sizes disagree with the tensors: the tensor report
  st = rewrite([](nlohmann::json& j) { j["moe_intermediate_size"] = 32; });
  CHECK_THAT(st.message(), Catch::Contains("misshaped (54)"));  // 2 × (8·3 + 3 shared)
  CHECK_THAT(st.message(),
             Catch::Contains("model.layers.1.mlp.experts.0.gate_proj.weight is [16, 64], "
                             "expected [32, 64]"));
  fs::remove_all(dir);
}

TEST_CASE("model: load reports progress in bytes and can prefetch the mapped pages", "[model]") {
  fs::path const dir = temp_dir("progress");
  REQUIRE(util::write_random_checkpoint<FixtureV3>(dir.string(), {.seed = 19, .shard = true}).ok());
  std::int64_t calls = 0, last = 0, total = 0;
  model::Model<FixtureV3> m;
  REQUIRE(model::Model<FixtureV3>::load(dir.string(), m,
                                        {.prefetch = true,
                                         .progress =
                                             [&](std::int64_t done, std::int64_t all) {
                                               CHECK(done >= last);
                                               last = done;
                                               total = all;
                                               ++calls;
                                             }})
              .ok());
  CHECK(calls == static_cast<std::int64_t>(model::checkpoint_tensors<FixtureV3>().size()));
  CHECK(last == total);  // every tensor of the checkpoint was used
  CHECK(total > 1'000'000);
  fs::remove_all(dir);
}
