// SPDX-License-Identifier: Apache-2.0
/// @file swiglu.hpp
/// @brief SwiGLU MLP weights and the activation: y = W_down · (silu(W_gate·x) ⊙ (W_up·x)).
#pragma once

#include <deepmoe/core/macros.hpp>
#include <deepmoe/ops/linear_weight.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN

/// One SwiGLU MLP (a routed expert, the shared experts, or a dense FFN), docs/model.md §4.
/// Checkpoint names gate_proj / up_proj / down_proj ([DS] w1 / w3 / w2).
template <class W>
struct SwiGluWeights {
  LinearWeight<W> gate_proj;  ///< [I, H] ([DS] w1)
  LinearWeight<W> up_proj;    ///< [I, H] ([DS] w3)
  LinearWeight<W> down_proj;  ///< [H, I] ([DS] w2)
};

/// silu(g) · u = g · σ(g) · u in fp32 — the SwiGLU gate.
DEEPMOE_HOST_DEVICE DEEPMOE_ALWAYS_INLINE float swiglu(float g, float u) {
  return g / (1.0f + std::exp(-g)) * u;
}

/// Checks the three weights of an MLP of width `inter` on hidden size `hidden`
/// (check_linear_weight); errors name the tensor as "<name>.gate_proj" etc. `name` is a string
/// or a callable returning one, called only on failure.
template <class W, class Name>
Status check_swiglu_weights(Name const& name, SwiGluWeights<W> const& w, std::int64_t hidden,
                            std::int64_t inter, int block) {
  auto prefix = [&] { return detail::name_of(name); };
  DEEPMOE_RETURN_IF_ERROR(check_linear_weight([&] { return prefix() + ".gate_proj"; }, w.gate_proj,
                                              inter, hidden, block));
  DEEPMOE_RETURN_IF_ERROR(
      check_linear_weight([&] { return prefix() + ".up_proj"; }, w.up_proj, inter, hidden, block));
  DEEPMOE_RETURN_IF_ERROR(check_linear_weight([&] { return prefix() + ".down_proj"; }, w.down_proj,
                                              hidden, inter, block));
  return {};
}

DEEPMOE_NAMESPACE_END
