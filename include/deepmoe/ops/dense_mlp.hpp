// SPDX-License-Identifier: Apache-2.0
/// @file dense_mlp.hpp
/// @brief A dense SwiGLU MLP over a batch of rows: out = W_down·(silu(W_gate·x) ⊙ (W_up·x)).
///
/// The FFN of the first `first_k_dense_replace` decoder layers (width I = intermediate_size) and
/// of the shared experts (width S·M). Computed with the CPU grouped-SwiGLU kernel, so a row's
/// result does not depend on the other rows. DeepSeek-V3 inference/model.py `MLP`.
#pragma once

#include <deepmoe/backend/cpu/grouped_swiglu.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <cstdint>
#include <span>
#include <string>

DEEPMOE_NAMESPACE_BEGIN

/// out[t] = W_down · (silu(W_gate·x[t]) ⊙ (W_up·x[t])) for each of the T rows.
/// @param out     [T, D] fp32, out
/// @param hidden  [T, I] fp32, scratch (the SwiGLU activations); I is the MLP's width
/// @param x       [T, D] fp32, in
/// @param w       gate_proj [I, D], up_proj [I, D], down_proj [D, I] (fp8 with block scales)
/// @param block   the fp8 scale-block edge (the config's weight_block_size)
/// @param name    the weights' prefix in error messages, e.g. "model.layers.0.mlp"
/// @returns invalid_argument for row or width mismatches, null buffers, or misshaped weights
///          and bad fp8 scales (naming "<name>.gate_proj.weight" etc.).
/// @pre the buffers do not overlap.
template <class W>
Status dense_mlp(MatrixView<float> out, MatrixView<float> hidden, MatrixView<float const> x,
                 SwiGluWeights<W> const& w, int block, std::string const& name = "mlp") {
  std::int64_t const T = x.extent(0), D = x.extent(1), I = hidden.extent(1);
  if (out.extent(0) != T || out.extent(1) != D || hidden.extent(0) != T) {
    return invalid_argument(name + ": out is [" + std::to_string(out.extent(0)) + ", " +
                            std::to_string(out.extent(1)) + "], hidden [" +
                            std::to_string(hidden.extent(0)) + ", " + std::to_string(I) + "], x [" +
                            std::to_string(T) + ", " + std::to_string(D) +
                            "]; expected out = x = [T, D], hidden = [T, I]");
  }
  DEEPMOE_RETURN_IF_ERROR(check_swiglu_weights(name, w, D, I, block));
  DEEPMOE_RETURN_IF_ERROR(require_data(name, "out", out.data(), out.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data(name, "hidden", hidden.data(), hidden.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data(name, "x", x.data(), x.size()));
  if (T == 0) {
    return {};
  }
  cpu::SwiGluSegment<W> const seg{&w, x.data(), hidden.data(), out.data(), T, I};
  cpu::grouped_swiglu<W>(std::span(&seg, 1), D, block);
  return {};
}

DEEPMOE_NAMESPACE_END
