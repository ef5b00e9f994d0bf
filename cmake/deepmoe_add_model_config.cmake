# SPDX-License-Identifier: Apache-2.0
#
# deepmoe_add_model_config(<target> NAME <Name> CONFIG <config.json> [PRECISION auto|fp32|bf16|fp8])
#
# Turns a Hugging Face checkpoint's config.json into a compile-time model config at configure
# time: the header <deepmoe/configs/generated/<Name>.hpp> defines `deepmoe::configs::<Name>`
# (a ModelConfig), and <deepmoe/configs/generated/all.hpp> lists every config generated for
# <target> as `deepmoe::configs::generated::All` (a std::tuple of the types). Both are on
# <target>'s include path. Editing config.json re-runs the configuration.
#
# The reading rules are io/config_json.hpp's (docs/configs.md): rope_scaling or
# rope_parameters, null q_lora_rank = 0, null n_group/topk_group = 1, and transformers'
# defaults for absent routing fields by model_type. PRECISION (default auto) picks the storage
# types: fp8 (float8_e4m3fn weights with the quantization_config's block size, bf16 for the rest)
# when config.json has an e4m3 quantization_config, bf16 when its torch_dtype is bfloat16, else
# fp32; weights of another dtype are converted when the model is loaded.

# _deepmoe_json(<out> <json> <file> <default|REQUIRED> <key>...): the value at <key>... (a
# number, or ON/OFF for booleans), <default> when absent or null.
function(_deepmoe_json out json file default)
  string(JSON type ERROR_VARIABLE err TYPE "${json}" ${ARGN})
  if(err OR type STREQUAL "NULL")
    if(default STREQUAL "REQUIRED")
      string(REPLACE ";" "." key "${ARGN}")
      message(FATAL_ERROR "deepmoe_add_model_config: ${file} has no '${key}', which every "
                          "DeepSeek-V3-family config needs")
    endif()
    set(${out} "${default}" PARENT_SCOPE)
    return()
  endif()
  string(JSON value GET "${json}" ${ARGN})
  if(type STREQUAL "BOOLEAN")
    if(value)
      set(value true)
    else()
      set(value false)
    endif()
  endif()
  set(${out} "${value}" PARENT_SCOPE)
endfunction()

function(deepmoe_add_model_config target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "NAME;CONFIG;PRECISION" "")
  if(NOT arg_NAME OR NOT arg_CONFIG)
    message(FATAL_ERROR "deepmoe_add_model_config(<target> NAME <Name> CONFIG <config.json>)")
  endif()
  if(NOT arg_NAME MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
    message(FATAL_ERROR "deepmoe_add_model_config: NAME '${arg_NAME}' is not a C++ identifier")
  endif()
  get_filename_component(file "${arg_CONFIG}" ABSOLUTE)
  if(NOT EXISTS "${file}")
    message(FATAL_ERROR "deepmoe_add_model_config: ${file} does not exist")
  endif()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${file}")
  file(READ "${file}" j)
  string(JSON kind ERROR_VARIABLE err TYPE "${j}")
  if(err OR NOT kind STREQUAL "OBJECT")
    message(FATAL_ERROR "deepmoe_add_model_config: ${file} is not a JSON object")
  endif()

  _deepmoe_json(model_type "${j}" "${file}" "deepseek_v3" model_type)
  if(model_type STREQUAL "deepseek_v2")
    set(default_scoring softmax)
    set(default_topk greedy)
    set(default_norm false)
  else()
    set(default_scoring sigmoid)
    set(default_topk noaux_tc)
    set(default_norm true)
  endif()
  foreach(key vocab_size hidden_size intermediate_size num_hidden_layers moe_intermediate_size
              n_routed_experts num_experts_per_tok num_attention_heads kv_lora_rank
              qk_nope_head_dim qk_rope_head_dim v_head_dim rms_norm_eps max_position_embeddings)
    _deepmoe_json(${key} "${j}" "${file}" REQUIRED ${key})
  endforeach()
  _deepmoe_json(first_k_dense_replace "${j}" "${file}" 0 first_k_dense_replace)
  _deepmoe_json(moe_layer_freq "${j}" "${file}" 1 moe_layer_freq)
  _deepmoe_json(tie_word_embeddings "${j}" "${file}" false tie_word_embeddings)
  _deepmoe_json(mtp "${j}" "${file}" 0 num_mtp_layers)
  _deepmoe_json(num_nextn_predict_layers "${j}" "${file}" ${mtp} num_nextn_predict_layers)
  _deepmoe_json(bos_token_id "${j}" "${file}" 0 bos_token_id)
  _deepmoe_json(eos_token_id "${j}" "${file}" 1 eos_token_id)
  string(JSON eos_type ERROR_VARIABLE err TYPE "${j}" eos_token_id)
  if(eos_type STREQUAL "ARRAY")  # the first of several end ids
    _deepmoe_json(eos_token_id "${j}" "${file}" 1 eos_token_id 0)
  endif()
  _deepmoe_json(n_shared_experts "${j}" "${file}" 0 n_shared_experts)
  _deepmoe_json(n_group "${j}" "${file}" 1 n_group)
  _deepmoe_json(topk_group "${j}" "${file}" 1 topk_group)
  _deepmoe_json(routed_scaling_factor "${j}" "${file}" 1.0 routed_scaling_factor)
  _deepmoe_json(norm_topk_prob "${j}" "${file}" ${default_norm} norm_topk_prob)
  _deepmoe_json(scoring_func "${j}" "${file}" ${default_scoring} scoring_func)
  _deepmoe_json(topk_method "${j}" "${file}" ${default_topk} topk_method)
  _deepmoe_json(num_key_value_heads "${j}" "${file}" ${num_attention_heads} num_key_value_heads)
  _deepmoe_json(q_lora_rank "${j}" "${file}" 0 q_lora_rank)

  # RoPE: rope_scaling (DeepSeek's checkpoints) or rope_parameters (transformers >= 5)
  set(rope rope_scaling)
  string(JSON rope_kind ERROR_VARIABLE err TYPE "${j}" rope_parameters)
  if(rope_kind STREQUAL "OBJECT")
    set(rope rope_parameters)
  endif()
  _deepmoe_json(rope_theta "${j}" "${file}" 10000.0 rope_theta)
  _deepmoe_json(rope_theta "${j}" "${file}" ${rope_theta} ${rope} rope_theta)
  _deepmoe_json(rope_type "${j}" "${file}" default ${rope} type)
  _deepmoe_json(rope_type "${j}" "${file}" ${rope_type} ${rope} rope_type)
  if(rope_type STREQUAL "yarn")
    _deepmoe_json(factor "${j}" "${file}" REQUIRED ${rope} factor)
    _deepmoe_json(original "${j}" "${file}" REQUIRED ${rope} original_max_position_embeddings)
    _deepmoe_json(beta_fast "${j}" "${file}" 32.0 ${rope} beta_fast)
    _deepmoe_json(beta_slow "${j}" "${file}" 1.0 ${rope} beta_slow)
    _deepmoe_json(mscale "${j}" "${file}" 1.0 ${rope} mscale)
    _deepmoe_json(mscale_all_dim "${j}" "${file}" 0.0 ${rope} mscale_all_dim)
    set(rope_scaling "config::RopeScaling{.type = config::RopeScalingType::kYarn, .factor = ${factor}, .original_max_position_embeddings = ${original}, .beta_fast = ${beta_fast}, .beta_slow = ${beta_slow}, .mscale = ${mscale}, .mscale_all_dim = ${mscale_all_dim}}")
  elseif(rope_type STREQUAL "default")
    set(rope_scaling "config::RopeScaling{}")
  else()
    message(FATAL_ERROR "deepmoe_add_model_config: ${file}: rope type '${rope_type}' is not "
                        "supported (yarn, or none)")
  endif()

  # precision
  set(precision "${arg_PRECISION}")
  if(NOT precision OR precision STREQUAL "auto")
    _deepmoe_json(fmt "${j}" "${file}" "" quantization_config fmt)
    _deepmoe_json(dtype "${j}" "${file}" "" torch_dtype)
    _deepmoe_json(dtype "${j}" "${file}" "${dtype}" dtype)
    if(fmt STREQUAL "e4m3")
      set(precision fp8)
    elseif(dtype STREQUAL "bfloat16")
      set(precision bf16)
    else()
      set(precision fp32)
    endif()
  endif()
  if(precision STREQUAL "fp8")
    _deepmoe_json(block "${j}" "${file}" 128 quantization_config weight_block_size 0)
    set(types "static constexpr int weight_block_size = ${block};
  using weight_t = float8_e4m3fn;
  using act_t = bfloat16;")
  elseif(precision STREQUAL "bf16")
    set(types "static constexpr int weight_block_size = 0;
  using weight_t = bfloat16;
  using act_t = bfloat16;")
  elseif(precision STREQUAL "fp32")
    set(types "static constexpr int weight_block_size = 0;
  using weight_t = float;
  using act_t = float;")
  else()
    message(FATAL_ERROR "deepmoe_add_model_config: PRECISION '${precision}' is not one of "
                        "auto, fp32, bf16, fp8")
  endif()
  foreach(v scoring_func topk_method)
    string(REPLACE "_" ";" parts "${${v}}")
    set(camel "")
    foreach(p IN LISTS parts)
      string(SUBSTRING "${p}" 0 1 first)
      string(SUBSTRING "${p}" 1 -1 rest)
      string(TOUPPER "${first}" first)
      string(APPEND camel "${first}${rest}")
    endforeach()
    set(${v}_enum "k${camel}")
  endforeach()

  set(dir "${CMAKE_CURRENT_BINARY_DIR}/deepmoe_generated/${target}")
  file(CONFIGURE OUTPUT "${dir}/deepmoe/configs/generated/${arg_NAME}.hpp" @ONLY CONTENT
"// Generated by deepmoe_add_model_config from ${file} — do not edit.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace configs {

/// The model of ${file} (model_type ${model_type}), ${precision} weights.
struct ${arg_NAME} {
  static constexpr int vocab_size = ${vocab_size};
  static constexpr int hidden_size = ${hidden_size};
  static constexpr int intermediate_size = ${intermediate_size};
  static constexpr int num_hidden_layers = ${num_hidden_layers};
  static constexpr int first_k_dense_replace = ${first_k_dense_replace};
  static constexpr int moe_layer_freq = ${moe_layer_freq};
  static constexpr double rms_norm_eps = ${rms_norm_eps};
  static constexpr int max_position_embeddings = ${max_position_embeddings};
  static constexpr bool tie_word_embeddings = ${tie_word_embeddings};
  static constexpr int num_nextn_predict_layers = ${num_nextn_predict_layers};
  static constexpr int bos_token_id = ${bos_token_id};
  static constexpr int eos_token_id = ${eos_token_id};
  static constexpr int moe_intermediate_size = ${moe_intermediate_size};
  static constexpr int n_routed_experts = ${n_routed_experts};
  static constexpr int n_shared_experts = ${n_shared_experts};
  static constexpr int num_experts_per_tok = ${num_experts_per_tok};
  static constexpr int n_group = ${n_group};
  static constexpr int topk_group = ${topk_group};
  static constexpr double routed_scaling_factor = ${routed_scaling_factor};
  static constexpr bool norm_topk_prob = ${norm_topk_prob};
  static constexpr config::ScoringFunc scoring_func = config::ScoringFunc::${scoring_func_enum};
  static constexpr config::TopkMethod topk_method = config::TopkMethod::${topk_method_enum};
  static constexpr int num_attention_heads = ${num_attention_heads};
  static constexpr int num_key_value_heads = ${num_key_value_heads};
  static constexpr int q_lora_rank = ${q_lora_rank};
  static constexpr int kv_lora_rank = ${kv_lora_rank};
  static constexpr int qk_nope_head_dim = ${qk_nope_head_dim};
  static constexpr int qk_rope_head_dim = ${qk_rope_head_dim};
  static constexpr int v_head_dim = ${v_head_dim};
  static constexpr double rope_theta = ${rope_theta};
  static constexpr config::RopeScaling rope_scaling = ${rope_scaling};
  ${types}
  using accum_t = float;
  static constexpr char const* source = \"${file}\";
};

}  // namespace configs
DEEPMOE_NAMESPACE_END
")
  set_property(TARGET ${target} APPEND PROPERTY DEEPMOE_MODEL_CONFIGS "${arg_NAME}")
  deepmoe_model_configs(${target})
endfunction()

# deepmoe_model_configs(<target>): writes <deepmoe/configs/generated/all.hpp> for <target>,
# listing the configs generated for it so far (possibly none) as
# deepmoe::configs::generated::All, and puts it on <target>'s include path.
function(deepmoe_model_configs target)
  set(dir "${CMAKE_CURRENT_BINARY_DIR}/deepmoe_generated/${target}")
  get_target_property(names ${target} DEEPMOE_MODEL_CONFIGS)
  if(NOT names)
    set(names "")
  endif()
  set(includes "")
  set(types "")
  foreach(n IN LISTS names)
    string(APPEND includes "#include <deepmoe/configs/generated/${n}.hpp>\n")
    list(APPEND types "configs::${n}")
  endforeach()
  list(JOIN types ", " types)
  file(CONFIGURE OUTPUT "${dir}/deepmoe/configs/generated/all.hpp" @ONLY CONTENT
"// Generated by deepmoe_add_model_config for target ${target} — do not edit.
#pragma once

#include <deepmoe/core/macros.hpp>
${includes}
#include <tuple>

DEEPMOE_NAMESPACE_BEGIN
namespace configs::generated {
/// Every config generated for ${target}, in the order of the deepmoe_add_model_config calls.
using All = std::tuple<${types}>;
}  // namespace configs::generated
DEEPMOE_NAMESPACE_END
")
  target_include_directories(${target} PRIVATE "${dir}")
endfunction()
