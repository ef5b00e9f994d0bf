// SPDX-License-Identifier: Apache-2.0
// Picks the config to run a checkpoint with: the first compiled config (the presets, then the
// configs CMake generated for this program with deepmoe_add_model_config) that matches the
// checkpoint's config.json in every field and in precision, or else config::Dynamic at that
// precision. Shared by the example programs.
#pragma once

#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/generated/all.hpp>
#include <deepmoe/configs/kimi_k2.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/io/config_json.hpp>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

namespace examples {

namespace dm = deepmoe;

/// The storage precision a checkpoint's config.json asks for: "fp8" (an e4m3
/// quantization_config), "bf16" (torch_dtype bfloat16) or "fp32".
inline std::string checkpoint_precision(nlohmann::json const& j) {
  auto const q = j.find("quantization_config");
  if (q != j.end() && q->is_object() && q->value("fmt", std::string()) == "e4m3") {
    return "fp8";
  }
  std::string const dtype = j.value("torch_dtype", j.value("dtype", std::string()));
  return dtype == "bfloat16" ? "bf16" : "fp32";
}

/// "fp8", "bf16" or "fp32": the weight precision of config C.
template <class C>
std::string precision_of() {
  using W = typename C::weight_t;
  return dm::is_float8_v<W> ? "fp8" : std::is_same_v<W, dm::bfloat16> ? "bf16" : "fp32";
}

/// Calls run(std::type_identity<C>{}, label) with the config to use for config.json `j` and
/// returns its result: a matching compiled config unless `dynamic`, else the Dynamic config.
/// `precision` is "auto" (the checkpoint's) or "fp32"/"bf16"/"fp8".
template <class Run>
int with_config(nlohmann::json const& j, std::string const& precision, bool dynamic, Run&& run) {
  std::string const want = precision == "auto" ? checkpoint_precision(j) : precision;
  std::optional<int> rc;
  auto try_one = [&]<class C>(std::type_identity<C> tag, std::string const& name) {
    if (!rc && precision_of<C>() == want && dm::io::config_mismatches<C>(j).empty()) {
      rc = run(tag, "compiled " + name);
    }
  };
  if (!dynamic) {
    namespace cf = dm::configs;
    try_one(std::type_identity<cf::DeepSeekV3>{}, "DeepSeekV3");
    try_one(std::type_identity<cf::DeepSeekV2Lite>{}, "DeepSeekV2Lite");
    try_one(std::type_identity<cf::Moonlight16BA3B>{}, "Moonlight16BA3B");
    try_one(std::type_identity<cf::KimiK2>{}, "KimiK2");
    [&]<class... G>(std::tuple<G...>*) {
      (try_one(std::type_identity<G>{}, std::string("(generated from ") + G::source + ")"), ...);
    }(static_cast<cf::generated::All*>(nullptr));
    if (rc) {
      return *rc;
    }
  }
  std::string const why =
      dynamic ? "dynamic (--dynamic)" : "dynamic (no compiled config matches config.json)";
  using dm::config::Dynamic;
  if (want == "fp8") {
    return run(std::type_identity<Dynamic<dm::float8_e4m3fn, dm::bfloat16>>{}, why);
  }
  if (want == "bf16") {
    return run(std::type_identity<Dynamic<dm::bfloat16, dm::bfloat16>>{}, why);
  }
  return run(std::type_identity<Dynamic<float, float>>{}, why);
}

/// The config of a model directory before loading: C{} for a compiled config, read from
/// config.json for a Dynamic one.
template <class C>
dm::Status config_of(std::string const& dir, std::optional<C>& out) {
  if constexpr (dm::config::is_dynamic_v<C>) {
    return dm::io::read_dynamic_config<typename C::weight_t, typename C::act_t>(
        dir + "/config.json", out);
  } else {
    out.emplace();
    return {};
  }
}

}  // namespace examples
