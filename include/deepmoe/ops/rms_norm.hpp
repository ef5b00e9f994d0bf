// SPDX-License-Identifier: Apache-2.0
/// @file rms_norm.hpp
/// @brief RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), in fp32, one row at a time.
///
/// The eps sits inside the square root. Every DeepSeek-V3-family norm has a weight and no bias
/// (input_layernorm and post_attention_layernorm [H], q_a_layernorm [rq], kv_a_layernorm
/// [rkv], model.norm [H]). Computed in fp32 and rounded once to the output type, with the
/// weight multiplied in fp32 before that rounding — DeepSeek-V3 inference/model.py `RMSNorm`.
/// Hugging Face's DeepseekV3RMSNorm instead rounds x/rms to the input dtype and multiplies by the
/// weight in that dtype; for bf16 that is a second rounding, within one bf16 ulp of this.
/// Sources differ on eps (docs/model.md §6): pass the config's rms_norm_eps.
#pragma once

#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <cmath>
#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN

/// y[t] = w ⊙ x[t] / sqrt(Σ_h x[t,h]² / D + eps) for each row t.
/// The sum of squares runs over h in increasing order in fp32, so a row's result does not
/// depend on the other rows.
/// @tparam Out, In, W  float or bfloat16 each
/// @param y       [T, D] Out, out (may be the same memory as x when Out = In)
/// @param x       [T, D] In
/// @param weight  [D] W
/// @param eps     > 0 and finite (the config's rms_norm_eps)
/// @returns invalid_argument for shape mismatches, null views or a bad eps. NaN or inf in a row
///          give NaN in that row's output (the MoE router reports them by token).
/// @ref Zhang & Sennrich 2019, arXiv:1910.07467; DeepSeek-V3 inference/model.py `RMSNorm`
template <class Out, class In, class W>
Status rms_norm(MatrixView<Out> y, MatrixView<In const> x, VectorView<W const> weight, double eps) {
  std::int64_t const T = x.extent(0), D = x.extent(1);
  if (y.extent(0) != T || y.extent(1) != D || weight.extent(0) != D) {
    return invalid_argument("rms_norm: y is [" + std::to_string(y.extent(0)) + ", " +
                            std::to_string(y.extent(1)) + "], x [" + std::to_string(T) + ", " +
                            std::to_string(D) + "], weight [" + std::to_string(weight.extent(0)) +
                            "]; expected y = x = [T, D], "
                            "weight = [D]");
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("rms_norm", "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("rms_norm", "y", y.data(), y.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("rms_norm", "weight", weight.data(), weight.size()));
  if (!(eps > 0.0) || !std::isfinite(eps)) {
    return invalid_argument("rms_norm: eps = " + std::to_string(eps) +
                            " must be positive and finite (rms_norm_eps)");
  }
  float const e = static_cast<float>(eps);
  float const inv_d = 1.0f / static_cast<float>(D);
  DEEPMOE_OMP(omp parallel for schedule(static) if (T * D >= (1 << 16)))
  for (std::int64_t t = 0; t < T; ++t) {
    In const* xr = x.data() + t * D;
    Out* yr = y.data() + t * D;
    float ss = 0.0f;
    for (std::int64_t h = 0; h < D; ++h) {
      float const v = to_float(xr[h]);
      ss = std::fma(v, v, ss);
    }
    float const r = 1.0f / std::sqrt(ss * inv_d + e);
    for (std::int64_t h = 0; h < D; ++h) {
      yr[h] = from_float<Out>(to_float(weight(h)) * (to_float(xr[h]) * r));
    }
  }
  return {};
}

DEEPMOE_NAMESPACE_END
