// SPDX-License-Identifier: Apache-2.0
/// @file linear_weight.hpp
/// @brief LinearWeight<W>: a view of one linear layer's weight, with its fp8 block scales.
#pragma once

#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN

/// The weight of a bias-free linear layer y = W·x, as a checkpoint stores it.
/// @tparam W storage type: float, bfloat16 or float8_e4m3fn.
/// `weight` is [N, K] row-major (out_features, in_features), host memory; for fp8 weights
/// `weight_scale_inv` is fp32 [ceil(N/B), ceil(K/B)] with W[n,k] = float(q[n,k]) ·
/// weight_scale_inv[n/B, k/B] (docs/model.md §5; B = the config's weight_block_size); for other
/// types it is empty. The views do not own memory (they may point into a memory-mapped checkpoint).
template <class W>
struct LinearWeight {
  MatrixView<W const> weight;                ///< [N, K] W
  MatrixView<float const> weight_scale_inv;  ///< [ceil(N/B), ceil(K/B)] fp32, fp8 only
};

namespace detail {
/// A tensor name given as a string or as a callable that builds one (so that hot paths build
/// names only when they report an error).
template <class Name>
std::string name_of(Name const& name) {
  if constexpr (std::is_invocable_v<Name const&>) {
    return name();
  } else {
    return std::string(name);
  }
}
}  // namespace detail

/// Checks that `w` is a [rows, cols] weight and, for fp8, that `weight_scale_inv` is
/// [ceil(rows/B), ceil(cols/B)] with every scale finite and ≥ 0 (validate_fp8_block_scales).
/// The error names the tensor as `name` (e.g. "experts[17].down_proj") and gives the expected
/// and actual shapes, or the block of a bad scale. `name` is a string or a callable returning
/// one, called only on failure (so hot paths build no strings).
template <class W, class Name>
Status check_linear_weight(Name const& name_arg, LinearWeight<W> const& w, std::int64_t rows,
                           std::int64_t cols, int block) {
  auto name = [&] { return detail::name_of(name_arg); };
  auto shape = [](std::int64_t r, std::int64_t c) {
    // (appends, not operator+: GCC 12 warns falsely, -Wrestrict, on "[" + string chains)
    std::string s = "[";
    s += std::to_string(r);
    s += ", ";
    s += std::to_string(c);
    s += "]";
    return s;
  };
  if (w.weight.data() == nullptr && rows * cols > 0) {
    return invalid_argument(name() + ".weight is null (expected " + shape(rows, cols) + ")");
  }
  if (w.weight.extent(0) != rows || w.weight.extent(1) != cols) {
    return invalid_argument(name() + ".weight has shape " +
                            shape(w.weight.extent(0), w.weight.extent(1)) + ", expected " +
                            shape(rows, cols) + " — HINT: config/checkpoint mismatch?");
  }
  if constexpr (is_float8_v<W>) {
    std::int64_t const sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
    if ((w.weight_scale_inv.data() == nullptr && sr * sc > 0) ||
        w.weight_scale_inv.extent(0) != sr || w.weight_scale_inv.extent(1) != sc) {
      return invalid_argument(name() + ".weight_scale_inv has shape " +
                              shape(w.weight_scale_inv.extent(0), w.weight_scale_inv.extent(1)) +
                              (w.weight_scale_inv.data() == nullptr ? " (null)" : "") +
                              ", expected " + shape(sr, sc) + " (ceil-div by block " +
                              std::to_string(block) + ")");
    }
    if constexpr (std::is_same_v<W, float8_e4m3fn>) {
      Status const values = validate_fp8_block_scales(w.weight, w.weight_scale_inv, block);
      if (!values.ok()) {
        return invalid_argument(name() + ".weight_scale_inv: " + values.message() +
                                " — HINT: a corrupt checkpoint?");
      }
    }
  }
  return {};
}

DEEPMOE_NAMESPACE_END
