// SPDX-License-Identifier: Apache-2.0
// Each preset in configs/ equals the config.json beside it, field by field.
#include <catch2/catch.hpp>

#include <deepmoe/config/validate.hpp>
#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/kimi_k2.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/configs/tiny_v2_moe.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

using namespace deepmoe;
using nlohmann::json;

namespace {

json load(std::string const& name) {
  std::string const path = std::string(DEEPMOE_CONFIGS_DIR) + "/" + name + ".json";
  std::ifstream in(path);
  INFO("reading " << path);
  REQUIRE(in.good());
  return json::parse(in);
}

/// An optional JSON field as a number; absent or null reads as `absent`.
double number(json const& j, char const* key, double absent) {
  auto const it = j.find(key);
  return (it == j.end() || it->is_null()) ? absent : it->get<double>();
}

template <class C>
void check_preset(std::string const& name) {
  STATIC_REQUIRE(config::validate<C>());
  json const j = load(name);
  INFO("preset " << name);
#define DEEPMOE_CHECK_FIELD(field) CHECK(C::field == j.at(#field).get<decltype(+C::field)>())
  DEEPMOE_CHECK_FIELD(vocab_size);
  DEEPMOE_CHECK_FIELD(hidden_size);
  DEEPMOE_CHECK_FIELD(intermediate_size);
  DEEPMOE_CHECK_FIELD(num_hidden_layers);
  DEEPMOE_CHECK_FIELD(first_k_dense_replace);
  DEEPMOE_CHECK_FIELD(moe_layer_freq);
  DEEPMOE_CHECK_FIELD(rms_norm_eps);
  DEEPMOE_CHECK_FIELD(max_position_embeddings);
  DEEPMOE_CHECK_FIELD(tie_word_embeddings);
  DEEPMOE_CHECK_FIELD(bos_token_id);
  DEEPMOE_CHECK_FIELD(eos_token_id);
  DEEPMOE_CHECK_FIELD(moe_intermediate_size);
  DEEPMOE_CHECK_FIELD(n_routed_experts);
  DEEPMOE_CHECK_FIELD(n_shared_experts);
  DEEPMOE_CHECK_FIELD(num_experts_per_tok);
  DEEPMOE_CHECK_FIELD(n_group);
  DEEPMOE_CHECK_FIELD(topk_group);
  DEEPMOE_CHECK_FIELD(routed_scaling_factor);
  DEEPMOE_CHECK_FIELD(norm_topk_prob);
  DEEPMOE_CHECK_FIELD(num_attention_heads);
  DEEPMOE_CHECK_FIELD(num_key_value_heads);
  DEEPMOE_CHECK_FIELD(kv_lora_rank);
  DEEPMOE_CHECK_FIELD(qk_nope_head_dim);
  DEEPMOE_CHECK_FIELD(qk_rope_head_dim);
  DEEPMOE_CHECK_FIELD(v_head_dim);
  DEEPMOE_CHECK_FIELD(rope_theta);
#undef DEEPMOE_CHECK_FIELD
  CHECK(C::q_lora_rank == number(j, "q_lora_rank", 0));  // null: q_proj path
  CHECK(C::num_nextn_predict_layers == number(j, "num_nextn_predict_layers", 0));
  CHECK(config::to_string(C::scoring_func) == j.at("scoring_func").get<std::string>());
  CHECK(config::to_string(C::topk_method) == j.at("topk_method").get<std::string>());

  auto const rs = j.find("rope_scaling");
  if (rs == j.end() || rs->is_null()) {
    CHECK(C::rope_scaling.type == config::RopeScalingType::kNone);
  } else {
    CHECK(rs->at("type").get<std::string>() == "yarn");
    CHECK(C::rope_scaling.type == config::RopeScalingType::kYarn);
    CHECK(C::rope_scaling.factor == rs->at("factor").get<double>());
    CHECK(C::rope_scaling.original_max_position_embeddings ==
          rs->at("original_max_position_embeddings").get<int>());
    CHECK(C::rope_scaling.beta_fast == rs->at("beta_fast").get<double>());
    CHECK(C::rope_scaling.beta_slow == rs->at("beta_slow").get<double>());
    CHECK(C::rope_scaling.mscale == rs->at("mscale").get<double>());
    CHECK(C::rope_scaling.mscale_all_dim == rs->at("mscale_all_dim").get<double>());
  }
  // precision: fp8 presets carry the quantization_config of their checkpoint
  auto const q = j.find("quantization_config");
  if (is_float8_v<typename C::weight_t>) {
    REQUIRE(q != j.end());
    CHECK(q->at("fmt").get<std::string>() == "e4m3");
    CHECK(q->at("weight_block_size") == json::array({C::weight_block_size, C::weight_block_size}));
  } else {
    CHECK(q == j.end());
    std::string const dtype = j.at("torch_dtype").get<std::string>();
    CHECK(dtype == (std::is_same_v<typename C::weight_t, float> ? "float32" : "bfloat16"));
  }
}

}  // namespace

TEST_CASE("configs: every preset equals its config.json", "[config]") {
  check_preset<configs::DeepSeekV3>("deepseek_v3");
  check_preset<configs::DeepSeekV2Lite>("deepseek_v2_lite");
  check_preset<configs::Moonlight16BA3B>("moonlight_16b_a3b");
  check_preset<configs::KimiK2>("kimi_k2");
  check_preset<configs::TinyMoe>("tiny_moe");
  check_preset<configs::TinyV2Moe>("tiny_v2_moe");
}
