// SPDX-License-Identifier: Apache-2.0
/// @file config_json.hpp
/// @brief Compares a checkpoint's Hugging Face `config.json` with a compile-time config: every
/// field that changes shapes or results, each mismatch listed with both values.
///
/// Reading rules (docs/configs.md):
///   - RoPE: `rope_scaling` (DeepSeek's checkpoints) or `rope_parameters` (written by
///     transformers ≥ 5, which also moves `rope_theta` there); type from `type` or `rope_type`,
///     "default"/absent/null = plain RoPE; yarn keys default as in DeepSeek's code (beta_fast
///     32, beta_slow 1, mscale 1, mscale_all_dim 0).
///   - null q_lora_rank = 0 (the q_proj path); null n_group/topk_group = 1; null
///     n_shared_experts = 0; absent num_key_value_heads = num_attention_heads.
///   - absent fields take transformers' defaults for the `model_type`: scoring_func and
///     topk_method are "sigmoid"/"noaux_tc" for deepseek_v3 and kimi_k2, "softmax"/"greedy" for
///     deepseek_v2; moe_layer_freq 1; num_nextn_predict_layers 0 (`num_mtp_layers` is read as
///     well); tie_word_embeddings false.
///   - `quantization_config.weight_block_size` is compared with weight_block_size when the
///     config's weights are fp8.
/// Fields that do not change the logits (bos/eos ids, max_position_embeddings) are not compared.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace io {

namespace detail {

inline std::string show(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

/// Reads config.json fields with the rules above, collecting mismatches against expectations.
class ConfigJsonReader {
 public:
  explicit ConfigJsonReader(nlohmann::json const& j) : j_(j) {
    std::string const type = j.value("model_type", std::string());
    v2_ = type == "deepseek_v2";
    auto const rp = j.find("rope_parameters");
    auto const rs = j.find("rope_scaling");
    if (rp != j.end() && rp->is_object()) {
      rope_ = &*rp;
    } else if (rs != j.end() && rs->is_object()) {
      rope_ = &*rs;
    }
  }

  std::vector<std::string> const& mismatches() const { return out_; }

  // an integer field; `null_as`: the value a JSON null (or absence, if `absent_as`) stands for
  void integer(char const* key, int expected, std::optional<int> null_as = {},
               std::optional<int> absent_as = {}) {
    auto const it = j_.find(key);
    std::optional<int> got;
    if (it == j_.end()) {
      got = absent_as;
      if (!got) {
        return missing(key);
      }
    } else if (it->is_null()) {
      got = null_as;
      if (!got) {
        return wrong_type(key, *it);
      }
    } else if (it->is_number_integer()) {
      got = it->get<int>();
    } else {
      return wrong_type(key, *it);
    }
    if (*got != expected) {
      differ(key, std::to_string(*got), std::to_string(expected));
    }
  }

  void real(nlohmann::json const& obj, std::string const& key, double expected,
            std::optional<double> absent_as = {}) {
    auto const it = obj.find(key);
    double got = 0.0;
    if (it == obj.end() || it->is_null()) {
      if (!absent_as) {
        return missing(key);
      }
      got = *absent_as;
    } else if (it->is_number()) {
      got = it->get<double>();
    } else {
      return wrong_type(key, *it);
    }
    if (std::fabs(got - expected) > 1e-12 * std::fmax(std::fabs(got), std::fabs(expected))) {
      differ(key, show(got), show(expected));
    }
  }
  void real(char const* key, double expected, std::optional<double> absent_as = {}) {
    real(j_, key, expected, absent_as);
  }

  void boolean(char const* key, bool expected, std::optional<bool> absent_as = {}) {
    auto const it = j_.find(key);
    bool got = false;
    if (it == j_.end() || it->is_null()) {
      if (!absent_as) {
        return missing(key);
      }
      got = *absent_as;
    } else if (it->is_boolean()) {
      got = it->get<bool>();
    } else {
      return wrong_type(key, *it);
    }
    if (got != expected) {
      differ(key, got ? "true" : "false", expected ? "true" : "false");
    }
  }

  void string(char const* key, std::string_view expected, std::string const& absent_as) {
    auto const it = j_.find(key);
    std::string got = absent_as;
    if (it != j_.end() && it->is_string()) {
      got = it->get<std::string>();
    } else if (it != j_.end() && !it->is_null()) {
      return wrong_type(key, *it);
    }
    if (got != expected) {
      differ(key, '"' + got + '"', '"' + std::string(expected) + '"');
    }
  }

  void rope(double theta, config::RopeScaling const& s) {
    if (j_.contains("rope_theta") || rope_ == nullptr) {
      real("rope_theta", theta, 10000.0);
    } else {
      real(*rope_, "rope_theta", theta, 10000.0);
    }
    std::string type = "default";
    if (rope_ != nullptr) {
      type = rope_->value("rope_type", rope_->value("type", std::string("default")));
    }
    bool const yarn = s.type == config::RopeScalingType::kYarn;
    if (type != (yarn ? "yarn" : "default")) {
      differ("rope_scaling.type", '"' + type + '"', yarn ? "\"yarn\"" : "none");
      return;
    }
    if (!yarn) {
      return;
    }
    real(*rope_, "factor", s.factor);
    real(*rope_, "original_max_position_embeddings", s.original_max_position_embeddings);
    real(*rope_, "beta_fast", s.beta_fast, 32.0);
    real(*rope_, "beta_slow", s.beta_slow, 1.0);
    real(*rope_, "mscale", s.mscale, 1.0);
    real(*rope_, "mscale_all_dim", s.mscale_all_dim, 0.0);
  }

  bool v2() const { return v2_; }
  nlohmann::json const& json() const { return j_; }

 private:
  void missing(std::string const& key) { out_.push_back(key + ": missing from config.json"); }
  void wrong_type(std::string const& key, nlohmann::json const& v) {
    out_.push_back(key + ": config.json has " + v.dump() + ", not a value of the expected type");
  }
  void differ(std::string const& key, std::string const& got, std::string const& expected) {
    out_.push_back(key + ": config.json has " + got + ", the compiled config " + expected);
  }

  nlohmann::json const& j_;
  nlohmann::json const* rope_ = nullptr;
  bool v2_ = false;
  std::vector<std::string> out_;
};

}  // namespace detail

/// Every difference between config.json `j` and config C that changes the model's shapes or
/// results, one line each ("n_routed_experts: config.json has 64, the compiled config 8").
template <config::ModelConfig C>
std::vector<std::string> config_mismatches(nlohmann::json const& j) {
  if (!j.is_object()) {
    return {"config.json is not a JSON object"};
  }
  detail::ConfigJsonReader r(j);
  bool const v2 = r.v2();
  r.integer("vocab_size", C::vocab_size);
  r.integer("hidden_size", C::hidden_size);
  r.integer("intermediate_size", C::intermediate_size);
  r.integer("num_hidden_layers", C::num_hidden_layers);
  r.integer("first_k_dense_replace", C::first_k_dense_replace, 0, 0);
  r.integer("moe_layer_freq", C::moe_layer_freq, 1, 1);
  r.real("rms_norm_eps", C::rms_norm_eps);
  r.boolean("tie_word_embeddings", C::tie_word_embeddings, false);
  if (j.contains("num_nextn_predict_layers") || !j.contains("num_mtp_layers")) {
    r.integer("num_nextn_predict_layers", C::num_nextn_predict_layers, 0, 0);
  } else {
    r.integer("num_mtp_layers", C::num_nextn_predict_layers, 0, 0);
  }
  r.integer("moe_intermediate_size", C::moe_intermediate_size);
  r.integer("n_routed_experts", C::n_routed_experts);
  r.integer("n_shared_experts", C::n_shared_experts, 0, 0);
  r.integer("num_experts_per_tok", C::num_experts_per_tok);
  r.integer("n_group", C::n_group, 1, 1);
  r.integer("topk_group", C::topk_group, 1, 1);
  r.real("routed_scaling_factor", C::routed_scaling_factor, 1.0);
  r.boolean("norm_topk_prob", C::norm_topk_prob, !v2);
  r.string("scoring_func", config::to_string(C::scoring_func), v2 ? "softmax" : "sigmoid");
  r.string("topk_method", config::to_string(C::topk_method), v2 ? "greedy" : "noaux_tc");
  r.integer("num_attention_heads", C::num_attention_heads);
  r.integer("num_key_value_heads", C::num_key_value_heads, C::num_attention_heads,
            j.value("num_attention_heads", 0));
  r.integer("q_lora_rank", C::q_lora_rank, 0, 0);
  r.integer("kv_lora_rank", C::kv_lora_rank);
  r.integer("qk_nope_head_dim", C::qk_nope_head_dim);
  r.integer("qk_rope_head_dim", C::qk_rope_head_dim);
  r.integer("v_head_dim", C::v_head_dim);
  r.rope(C::rope_theta, C::rope_scaling);
  if constexpr (is_float8_v<typename C::weight_t>) {
    auto const q = j.find("quantization_config");
    if (q != j.end() && q->is_object() && q->contains("weight_block_size")) {
      auto const& b = (*q)["weight_block_size"];
      if (!b.is_array() || b.size() != 2 || b[0] != C::weight_block_size ||
          b[1] != C::weight_block_size) {
        std::vector<std::string> m = r.mismatches();
        m.push_back("quantization_config.weight_block_size: config.json has " + b.dump() +
                    ", the compiled config [" + std::to_string(C::weight_block_size) + ", " +
                    std::to_string(C::weight_block_size) + "]");
        return m;
      }
    }
  }
  return r.mismatches();
}

/// C as a Hugging Face config.json object (model_type "deepseek_v3", architectures
/// DeepseekV3ForCausalLM, DeepSeek's key names: `rope_scaling`, `num_nextn_predict_layers`);
/// config_mismatches<C> of it is empty. fp8 configs get DeepSeek-V3's quantization_config.
template <config::ModelConfig C>
nlohmann::json config_json() {
  nlohmann::json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = C::vocab_size;
  j["hidden_size"] = C::hidden_size;
  j["intermediate_size"] = C::intermediate_size;
  j["num_hidden_layers"] = C::num_hidden_layers;
  j["first_k_dense_replace"] = C::first_k_dense_replace;
  j["moe_layer_freq"] = C::moe_layer_freq;
  j["rms_norm_eps"] = C::rms_norm_eps;
  j["max_position_embeddings"] = C::max_position_embeddings;
  j["tie_word_embeddings"] = C::tie_word_embeddings;
  j["num_nextn_predict_layers"] = C::num_nextn_predict_layers;
  j["bos_token_id"] = C::bos_token_id;
  j["eos_token_id"] = C::eos_token_id;
  j["moe_intermediate_size"] = C::moe_intermediate_size;
  j["n_routed_experts"] = C::n_routed_experts;
  j["n_shared_experts"] = C::n_shared_experts;
  j["num_experts_per_tok"] = C::num_experts_per_tok;
  j["n_group"] = C::n_group;
  j["topk_group"] = C::topk_group;
  j["routed_scaling_factor"] = C::routed_scaling_factor;
  j["norm_topk_prob"] = C::norm_topk_prob;
  j["scoring_func"] = std::string(config::to_string(C::scoring_func));
  j["topk_method"] = std::string(config::to_string(C::topk_method));
  j["num_attention_heads"] = C::num_attention_heads;
  j["num_key_value_heads"] = C::num_key_value_heads;
  j["q_lora_rank"] = C::q_lora_rank > 0 ? nlohmann::json(C::q_lora_rank) : nlohmann::json();
  j["kv_lora_rank"] = C::kv_lora_rank;
  j["qk_nope_head_dim"] = C::qk_nope_head_dim;
  j["qk_rope_head_dim"] = C::qk_rope_head_dim;
  j["v_head_dim"] = C::v_head_dim;
  j["rope_theta"] = C::rope_theta;
  config::RopeScaling const rs = C::rope_scaling;
  if (rs.type == config::RopeScalingType::kYarn) {
    j["rope_scaling"] = {{"type", "yarn"},
                         {"factor", rs.factor},
                         {"original_max_position_embeddings", rs.original_max_position_embeddings},
                         {"beta_fast", rs.beta_fast},
                         {"beta_slow", rs.beta_slow},
                         {"mscale", rs.mscale},
                         {"mscale_all_dim", rs.mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  if constexpr (is_float8_v<typename C::weight_t>) {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {C::weight_block_size, C::weight_block_size}}};
  }
  return j;
}

/// Reads `path` (a checkpoint's config.json) and compares it with C (config_mismatches).
/// @returns kIoError if the file cannot be read; invalid_argument naming the file and listing
///          every mismatching field with both values, or the JSON parse error.
template <config::ModelConfig C>
Status check_config_json(std::string const& path) {
  std::ifstream in(path);
  if (!in) {
    return Status(StatusCode::kIoError, path + ": cannot open — HINT: a checkpoint directory "
                                               "holds config.json next to its safetensors files");
  }
  nlohmann::json const j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) {
    return invalid_argument(path + ": not valid JSON");
  }
  std::vector<std::string> const m = config_mismatches<C>(j);
  if (m.empty()) {
    return {};
  }
  std::string msg = path + " does not match the compiled config (" + std::to_string(m.size()) +
                    (m.size() == 1 ? " field):" : " fields):");
  for (std::string const& line : m) {
    msg += "\n  " + line;
  }
  msg += "\n  HINT: generate a config for this checkpoint (deepmoe_add_model_config in CMake)";
  return invalid_argument(std::move(msg));
}

}  // namespace io
DEEPMOE_NAMESPACE_END
