// SPDX-License-Identifier: Apache-2.0
/// @file linear.hpp
/// @brief A bias-free linear layer on the CPU: out = x · Wᵀ, fp32 activations, W in fp32, bf16
/// or fp8 with block scales; batch-invariant like the MoE experts (backend/cpu/gemm_nt.hpp).
#pragma once

#include <deepmoe/backend/cpu/gemm_nt.hpp>
#include <deepmoe/backend/cpu/grouped_swiglu.hpp>
#include <deepmoe/ops/linear_weight.hpp>

#include <cstdint>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN

/// out[t, n] = Σ_k x[t, k] · W[n, k] for every row t, with W = w.weight (fp8: times its block
/// scale). Work is split over panels of W's rows; each output element is computed the same way
/// whatever T, so a row's result does not depend on the other rows.
/// @param out    [T, N] fp32, out
/// @param x      [T, K] fp32, in
/// @param w      [N, K] weight (LinearWeight<W>, fp8 with `block`² scale blocks)
/// @param block  the fp8 scale-block edge (ignored for other weight types)
/// @returns invalid_argument for a weight that is not [N, K] (naming `name`.weight), bad fp8
///          scales, mismatched rows or null views.
/// @pre out does not overlap x or w.
template <class W>
Status linear(MatrixView<float> out, MatrixView<float const> x, LinearWeight<W> const& w, int block,
              std::string const& name = "linear") {
  std::int64_t const T = x.extent(0), K = x.extent(1), N = out.extent(1);
  // the weight must be [N, K] for this out and x: a misshaped weight is named as such
  DEEPMOE_RETURN_IF_ERROR(check_linear_weight(name, w, N, K, block));
  if (out.extent(0) != T) {
    return invalid_argument(name + ": out has " + std::to_string(out.extent(0)) + " rows, x has " +
                            std::to_string(T));
  }
  DEEPMOE_RETURN_IF_ERROR(require_data(name, "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data(name, "out", out.data(), out.size()));
  if (T == 0 || N == 0) {
    return {};
  }
  std::int64_t const rows = cpu::panel_rows(K);
  std::int64_t const panels = (N + rows - 1) / rows;
  DEEPMOE_OMP(omp parallel)
  {
    std::vector<float> panel(static_cast<std::size_t>(rows * K));
    DEEPMOE_OMP(omp for schedule(dynamic))
    for (std::int64_t p = 0; p < panels; ++p) {
      std::int64_t const r0 = p * rows, r1 = r0 + rows < N ? r0 + rows : N;
      cpu::linear_rows(out.data() + r0, N, x.data(), K, T, w, r0, r1, block, panel.data());
    }
  }
  return {};
}

DEEPMOE_NAMESPACE_END
