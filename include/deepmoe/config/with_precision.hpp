// SPDX-License-Identifier: Apache-2.0
/// @file with_precision.hpp
/// @brief WithPrecision<C, W, A>: the same model as C, stored and computed at another precision.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/numeric_types.hpp>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// C with weight type `Weight` and activation type `Act` (fp32 accumulation). fp8 weights get
/// 128×128 scale blocks (DeepSeek-V3's `weight_block_size`), other weight types none.
/// Example: `WithPrecision<configs::Moonlight16BA3B, float, float>` is Moonlight in fp32.
template <ModelConfig C, class Weight, class Act = bfloat16>
struct WithPrecision : C {
  using weight_t = Weight;
  using act_t = Act;
  using accum_t = float;
  static constexpr int weight_block_size = is_float8_v<Weight> ? 128 : 0;
};

}  // namespace config
DEEPMOE_NAMESPACE_END
