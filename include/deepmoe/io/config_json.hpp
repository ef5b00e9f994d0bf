// SPDX-License-Identifier: Apache-2.0
/// @file config_json.hpp
/// @brief A checkpoint's Hugging Face `config.json`: read into config::ConfigValues (for the
/// Dynamic config), compared with a compile-time config (every field that changes shapes or
/// results, each mismatch listed with both values), and written from a config.
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
///   - weight_block_size is `quantization_config.weight_block_size` when its fmt is e4m3, else 0;
///     it is compared only when the compiled config's weights are fp8.
///   - a list of eos_token_id values gives its first.
/// Fields that do not change the logits (bos/eos ids, max_position_embeddings) are read but not
/// compared.
#pragma once

#include <deepmoe/config/validate.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
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

/// Reads config.json fields with the rules above into ConfigValues; every field that is
/// missing or of the wrong type is recorded in `problems` (and left at its default).
class ConfigJsonReader {
 public:
  ConfigJsonReader(nlohmann::json const& j, std::vector<std::string>& problems)
      : j_(j), problems_(problems) {}

  void read(config::ConfigValues& v) {
    std::string const type = j_.value("model_type", std::string());
    bool const v2 = type == "deepseek_v2";
    integer("vocab_size", v.vocab_size);
    integer("hidden_size", v.hidden_size);
    integer("intermediate_size", v.intermediate_size);
    integer("num_hidden_layers", v.num_hidden_layers);
    integer("first_k_dense_replace", v.first_k_dense_replace, 0, 0);
    integer("moe_layer_freq", v.moe_layer_freq, 1, 1);
    real(j_, "rms_norm_eps", v.rms_norm_eps);
    integer("max_position_embeddings", v.max_position_embeddings, 0, 0);
    boolean("tie_word_embeddings", v.tie_word_embeddings, false);
    integer(j_.contains("num_nextn_predict_layers") || !j_.contains("num_mtp_layers")
                ? "num_nextn_predict_layers"
                : "num_mtp_layers",
            v.num_nextn_predict_layers, 0, 0);
    integer("bos_token_id", v.bos_token_id, 0, 0);
    auto const eos = j_.find("eos_token_id");
    if (eos != j_.end() && eos->is_array() && !eos->empty() && (*eos)[0].is_number_integer()) {
      v.eos_token_id = (*eos)[0].get<int>();
    } else {
      integer("eos_token_id", v.eos_token_id, 1, 1);
    }
    integer("moe_intermediate_size", v.moe_intermediate_size);
    integer("n_routed_experts", v.n_routed_experts);
    integer("n_shared_experts", v.n_shared_experts, 0, 0);
    integer("num_experts_per_tok", v.num_experts_per_tok);
    integer("n_group", v.n_group, 1, 1);
    integer("topk_group", v.topk_group, 1, 1);
    real(j_, "routed_scaling_factor", v.routed_scaling_factor, 1.0);
    boolean("norm_topk_prob", v.norm_topk_prob, !v2);
    std::string const scoring = string("scoring_func", v2 ? "softmax" : "sigmoid");
    if (scoring == "sigmoid" || scoring == "softmax") {
      v.scoring_func =
          scoring == "sigmoid" ? config::ScoringFunc::kSigmoid : config::ScoringFunc::kSoftmax;
    } else if (!scoring.empty()) {
      problems_.push_back("scoring_func: config.json has \"" + scoring +
                          "\", not one of sigmoid, softmax");
    }
    std::string const topk = string("topk_method", v2 ? "greedy" : "noaux_tc");
    if (topk == "noaux_tc") {
      v.topk_method = config::TopkMethod::kNoauxTc;
    } else if (topk == "greedy") {
      v.topk_method = config::TopkMethod::kGreedy;
    } else if (topk == "group_limited_greedy") {
      v.topk_method = config::TopkMethod::kGroupLimitedGreedy;
    } else if (!topk.empty()) {
      problems_.push_back("topk_method: config.json has \"" + topk +
                          "\", not one of noaux_tc, greedy, group_limited_greedy");
    }
    integer("num_attention_heads", v.num_attention_heads);
    integer("num_key_value_heads", v.num_key_value_heads, v.num_attention_heads,
            v.num_attention_heads);
    integer("q_lora_rank", v.q_lora_rank, 0, 0);
    integer("kv_lora_rank", v.kv_lora_rank);
    integer("qk_nope_head_dim", v.qk_nope_head_dim);
    integer("qk_rope_head_dim", v.qk_rope_head_dim);
    integer("v_head_dim", v.v_head_dim);
    rope(v);
    v.weight_block_size = 0;
    auto const q = j_.find("quantization_config");
    if (q != j_.end() && q->is_object() && q->value("fmt", std::string()) == "e4m3") {
      auto const b = q->find("weight_block_size");
      if (b != q->end() && b->is_array() && b->size() == 2 && (*b)[0].is_number_integer() &&
          (*b)[0] == (*b)[1]) {
        v.weight_block_size = (*b)[0].get<int>();
      } else {
        problems_.push_back("quantization_config.weight_block_size: config.json has " +
                            (b == q->end() ? std::string("none") : b->dump()) +
                            ", expected [B, B] (square blocks, e.g. [128, 128])");
      }
    }
  }

 private:
  // an integer field; `null_as`/`absent_as`: what a JSON null / an absent key stands for
  void integer(char const* key, int& out, std::optional<int> null_as = {},
               std::optional<int> absent_as = {}) {
    auto const it = j_.find(key);
    if (it == j_.end()) {
      return absent_as ? void(out = *absent_as) : missing(key);
    }
    if (it->is_null()) {
      return null_as ? void(out = *null_as) : wrong_type(key, *it);
    }
    if (!it->is_number_integer()) {
      return wrong_type(key, *it);
    }
    out = it->get<int>();
  }

  void real(nlohmann::json const& obj, std::string const& key, double& out,
            std::optional<double> absent_as = {}) {
    auto const it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      return absent_as ? void(out = *absent_as) : missing(key);
    }
    if (!it->is_number()) {
      return wrong_type(key, *it);
    }
    out = it->get<double>();
  }

  void boolean(char const* key, bool& out, bool absent_as) {
    auto const it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      out = absent_as;
    } else if (it->is_boolean()) {
      out = it->get<bool>();
    } else {
      wrong_type(key, *it);
    }
  }

  // the string at key, `absent_as` when absent or null, "" (recorded) when not a string
  std::string string(char const* key, std::string const& absent_as) {
    auto const it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      return absent_as;
    }
    if (!it->is_string()) {
      wrong_type(key, *it);
      return {};
    }
    return it->get<std::string>();
  }

  void rope(config::ConfigValues& v) {
    nlohmann::json const* rope = nullptr;
    for (char const* key : {"rope_parameters", "rope_scaling"}) {
      auto const it = j_.find(key);
      if (it != j_.end() && it->is_object()) {
        rope = &*it;
        break;
      }
    }
    real(j_.contains("rope_theta") || rope == nullptr ? j_ : *rope, "rope_theta", v.rope_theta,
         10000.0);
    std::string type = "default";
    if (rope != nullptr) {
      type = rope->value("rope_type", rope->value("type", std::string("default")));
    }
    v.rope_scaling = {};
    if (type == "default") {
      return;
    }
    if (type != "yarn") {
      problems_.push_back("rope_scaling.type: config.json has \"" + type +
                          "\"; supported are yarn and none");
      return;
    }
    config::RopeScaling& r = v.rope_scaling;
    r.type = config::RopeScalingType::kYarn;
    double original = 0.0;
    real(*rope, "factor", r.factor);
    real(*rope, "original_max_position_embeddings", original);
    r.original_max_position_embeddings = static_cast<int>(original);
    real(*rope, "beta_fast", r.beta_fast, 32.0);
    real(*rope, "beta_slow", r.beta_slow, 1.0);
    real(*rope, "mscale", r.mscale, 1.0);
    real(*rope, "mscale_all_dim", r.mscale_all_dim, 0.0);
  }

  void missing(std::string const& key) { problems_.push_back(key + ": missing from config.json"); }
  void wrong_type(std::string const& key, nlohmann::json const& v) {
    problems_.push_back(key + ": config.json has " + v.dump() +
                        ", not a value of the expected type");
  }

  nlohmann::json const& j_;
  std::vector<std::string>& problems_;
};

}  // namespace detail

/// Reads config.json `j` into `out` with the rules of this file.
/// @returns the fields that are missing or of the wrong type, one line each (empty when `out`
///          holds the whole config).
inline std::vector<std::string> read_config_values(nlohmann::json const& j,
                                                   config::ConfigValues& out) {
  std::vector<std::string> problems;
  if (!j.is_object()) {
    return {"config.json is not a JSON object"};
  }
  detail::ConfigJsonReader(j, problems).read(out);
  return problems;
}

/// Every difference between config.json `j` and config C that changes the model's shapes or
/// results, one line each ("n_routed_experts: config.json has 64, the compiled config 8"), after
/// the fields read_config_values cannot read.
template <config::ModelConfig C>
std::vector<std::string> config_mismatches(nlohmann::json const& j, C const& c = {}) {
  config::ConfigValues v;
  std::vector<std::string> m = read_config_values(j, v);
  auto failed = [&](std::string const& key) {
    return std::any_of(m.begin(), m.end(),
                       [&](std::string const& line) { return line.starts_with(key + ":"); });
  };
  auto differ = [&](std::string const& key, std::string const& got, std::string const& want) {
    if (!failed(key)) {
      m.push_back(key + ": config.json has " + got + ", the compiled config " + want);
    }
  };
  auto integer = [&](char const* key, int got, int want) {
    if (got != want) {
      differ(key, std::to_string(got), std::to_string(want));
    }
  };
  auto real = [&](char const* key, double got, double want) {
    if (std::fabs(got - want) > 1e-12 * std::fmax(std::fabs(got), std::fabs(want))) {
      differ(key, detail::show(got), detail::show(want));
    }
  };
  auto boolean = [&](char const* key, bool got, bool want) {
    if (got != want) {
      differ(key, got ? "true" : "false", want ? "true" : "false");
    }
  };
  auto quoted = [](std::string_view s) { return '"' + std::string(s) + '"'; };
  integer("vocab_size", v.vocab_size, c.vocab_size);
  integer("hidden_size", v.hidden_size, c.hidden_size);
  integer("intermediate_size", v.intermediate_size, c.intermediate_size);
  integer("num_hidden_layers", v.num_hidden_layers, c.num_hidden_layers);
  integer("first_k_dense_replace", v.first_k_dense_replace, c.first_k_dense_replace);
  integer("moe_layer_freq", v.moe_layer_freq, c.moe_layer_freq);
  real("rms_norm_eps", v.rms_norm_eps, c.rms_norm_eps);
  boolean("tie_word_embeddings", v.tie_word_embeddings, c.tie_word_embeddings);
  integer(j.contains("num_nextn_predict_layers") || !j.contains("num_mtp_layers")
              ? "num_nextn_predict_layers"
              : "num_mtp_layers",
          v.num_nextn_predict_layers, c.num_nextn_predict_layers);
  integer("moe_intermediate_size", v.moe_intermediate_size, c.moe_intermediate_size);
  integer("n_routed_experts", v.n_routed_experts, c.n_routed_experts);
  integer("n_shared_experts", v.n_shared_experts, c.n_shared_experts);
  integer("num_experts_per_tok", v.num_experts_per_tok, c.num_experts_per_tok);
  integer("n_group", v.n_group, c.n_group);
  integer("topk_group", v.topk_group, c.topk_group);
  real("routed_scaling_factor", v.routed_scaling_factor, c.routed_scaling_factor);
  boolean("norm_topk_prob", v.norm_topk_prob, c.norm_topk_prob);
  if (v.scoring_func != c.scoring_func) {
    differ("scoring_func", quoted(config::to_string(v.scoring_func)),
           quoted(config::to_string(c.scoring_func)));
  }
  if (v.topk_method != c.topk_method) {
    differ("topk_method", quoted(config::to_string(v.topk_method)),
           quoted(config::to_string(c.topk_method)));
  }
  integer("num_attention_heads", v.num_attention_heads, c.num_attention_heads);
  integer("num_key_value_heads", v.num_key_value_heads, c.num_key_value_heads);
  integer("q_lora_rank", v.q_lora_rank, c.q_lora_rank);
  integer("kv_lora_rank", v.kv_lora_rank, c.kv_lora_rank);
  integer("qk_nope_head_dim", v.qk_nope_head_dim, c.qk_nope_head_dim);
  integer("qk_rope_head_dim", v.qk_rope_head_dim, c.qk_rope_head_dim);
  integer("v_head_dim", v.v_head_dim, c.v_head_dim);
  real("rope_theta", v.rope_theta, c.rope_theta);
  config::RopeScaling const& got = v.rope_scaling;
  config::RopeScaling const want = c.rope_scaling;
  if (got.type != want.type) {
    differ("rope_scaling.type", got.type == config::RopeScalingType::kYarn ? "\"yarn\"" : "none",
           want.type == config::RopeScalingType::kYarn ? "\"yarn\"" : "none");
  } else if (got.type == config::RopeScalingType::kYarn) {
    real("factor", got.factor, want.factor);
    integer("original_max_position_embeddings", got.original_max_position_embeddings,
            want.original_max_position_embeddings);
    real("beta_fast", got.beta_fast, want.beta_fast);
    real("beta_slow", got.beta_slow, want.beta_slow);
    real("mscale", got.mscale, want.mscale);
    real("mscale_all_dim", got.mscale_all_dim, want.mscale_all_dim);
  }
  if (is_float8_v<typename C::weight_t> && v.weight_block_size != 0 &&
      v.weight_block_size != c.weight_block_size) {
    differ("quantization_config.weight_block_size", std::to_string(v.weight_block_size),
           std::to_string(c.weight_block_size));
  }
  return m;
}

/// C as a Hugging Face config.json object (model_type "deepseek_v3", architectures
/// DeepseekV3ForCausalLM, DeepSeek's key names: `rope_scaling`, `num_nextn_predict_layers`);
/// config_mismatches<C> of it is empty. fp8 configs get DeepSeek-V3's quantization_config.
template <config::ModelConfig C>
nlohmann::json config_json(C const& c = {}) {
  nlohmann::json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["moe_layer_freq"] = c.moe_layer_freq;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["scoring_func"] = std::string(config::to_string(c.scoring_func));
  j["topk_method"] = std::string(config::to_string(c.topk_method));
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? nlohmann::json(c.q_lora_rank) : nlohmann::json();
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["rope_theta"] = c.rope_theta;
  config::RopeScaling const rs = c.rope_scaling;
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
                                {"weight_block_size", {c.weight_block_size, c.weight_block_size}}};
  }
  return j;
}

/// Parses the JSON file `path` into `out`.
/// @returns kIoError if it cannot be opened; invalid_argument naming the file if it is not JSON.
inline Status read_json_file(std::string const& path, nlohmann::json& out) {
  std::ifstream in(path);
  if (!in) {
    return Status(StatusCode::kIoError, path +
                                            ": cannot open — HINT: a checkpoint directory "
                                            "holds config.json next to its safetensors files");
  }
  out = nlohmann::json::parse(in, nullptr, false);
  if (out.is_discarded()) {
    return invalid_argument(path + ": not valid JSON");
  }
  return {};
}

/// Reads `path` (a checkpoint's config.json) and compares it with config `c` (config_mismatches).
/// @returns kIoError if the file cannot be read; invalid_argument naming the file and listing
///          every mismatching field with both values, or the JSON parse error.
template <config::ModelConfig C>
Status check_config_json(std::string const& path, C const& c = {}) {
  nlohmann::json j;
  DEEPMOE_RETURN_IF_ERROR(read_json_file(path, j));
  std::vector<std::string> const m = config_mismatches<C>(j, c);
  if (m.empty()) {
    return {};
  }
  std::string msg = path + " does not match the compiled config (" + std::to_string(m.size()) +
                    (m.size() == 1 ? " field):" : " fields):");
  for (std::string const& line : m) {
    msg += "\n  " + line;
  }
  msg +=
      "\n  HINT: generate a config for this checkpoint (deepmoe_add_model_config in CMake), "
      "or run it with the Dynamic config";
  return invalid_argument(std::move(msg));
}

/// The Dynamic config of a checkpoint: its config.json read (read_config_values) and checked
/// (config::check). weight_block_size is the checkpoint's for fp8 weights, or DeepSeek's 128
/// when W is fp8 and the checkpoint is not (its weights are then quantized at load); 0 for
/// other W.
/// @returns kIoError if the file cannot be read; invalid_argument naming the file and every
///          unreadable field, or the first field that breaks a rule.
template <class W, class A>
Status read_dynamic_config(std::string const& path, std::optional<config::Dynamic<W, A>>& out) {
  nlohmann::json j;
  DEEPMOE_RETURN_IF_ERROR(read_json_file(path, j));
  config::ConfigValues v;
  std::vector<std::string> const problems = read_config_values(j, v);
  if (!problems.empty()) {
    std::string msg = path + ": cannot read " + std::to_string(problems.size()) +
                      (problems.size() == 1 ? " field:" : " fields:");
    for (std::string const& line : problems) {
      msg += "\n  " + line;
    }
    return invalid_argument(std::move(msg));
  }
  if constexpr (is_float8_v<W>) {
    v.weight_block_size = v.weight_block_size > 0 ? v.weight_block_size : 128;
  } else {
    v.weight_block_size = 0;
  }
  config::Dynamic<W, A> const d(v);
  if (Status const st = config::check(d); !st.ok()) {
    return invalid_argument(path + ": " + st.message());
  }
  out.emplace(d);
  return {};
}

}  // namespace io
DEEPMOE_NAMESPACE_END
