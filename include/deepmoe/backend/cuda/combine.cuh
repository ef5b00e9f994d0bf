// SPDX-License-Identifier: Apache-2.0
/// @file combine.cuh
/// @brief Stage 4 of the MoE layer on the device: each token's weighted sum of its expert
/// outputs, in token order, without atomics (moe::combine's arithmetic, moe/combine.hpp):
///
///   y[t] = round_Out( (Σ_{j=0..K-1} w[t,j] · out[expanded_to_permuted[t·K+j]]) + shared[t] )
///
/// A block per token and 1024 hidden columns, one thread per column: every output element is one
/// thread's fixed-order sum, so a token's result never depends on the rest of the batch.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/backend/cuda/permute.cuh>

#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
constexpr std::int64_t kCombineColumns = 1024;  // hidden columns per block (grid y)
template <class Out>
__global__ void combine_kernel(Out* __restrict__ y, float const* __restrict__ expert_out,
                               float const* __restrict__ topk_weights,
                               std::int32_t const* __restrict__ expanded_to_permuted,
                               float const* __restrict__ shared_out, std::int64_t H, int K) {
  std::int64_t const t = blockIdx.x;
  std::int64_t const h0 = static_cast<std::int64_t>(blockIdx.y) * kCombineColumns;
  std::int64_t const h1 = h0 + kCombineColumns < H ? h0 + kCombineColumns : H;
  for (std::int64_t h = h0 + threadIdx.x; h < h1; h += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < K; ++j) {
      std::int64_t const r = expanded_to_permuted[t * K + j];
      // NOTES: explicit roundings, no fused multiply-add: moe::combine's arithmetic
      acc = __fadd_rn(acc, __fmul_rn(topk_weights[t * K + j], expert_out[r * H + h]));
    }
    if (shared_out != nullptr) {
      acc = __fadd_rn(acc, shared_out[t * H + h]);
    }
    y[t * H + h] = Out(acc);
  }
}
}  // namespace detail

/// Combines expert outputs back into token order on `stream` (file comment). Asynchronous.
/// @tparam Out  element type of y: float or bfloat16 (rounded once, RNE)
/// @param d_y             [T, H] Out, device, out
/// @param d_expert_out    [R, H] fp32, device, in: the experts' output in permuted order
/// @param d_topk_weights  [T, K] fp32, device, in: the router's combine weights
/// @param plan            the dispatch plan of d_expert_out (its expanded_to_permuted)
/// @param d_shared_out    [T, H] fp32, device, or null: the shared experts' output
/// @param T               tokens (≥ 0)
/// @returns invalid_argument for T < 0; kCudaError for a failed launch.
/// @pre d_y overlaps no input.
template <config::ModelConfig C, class Out>
Status combine(Out* d_y, float const* d_expert_out, float const* d_topk_weights,
               DeviceDispatchPlan const& plan, float const* d_shared_out, std::int64_t T,
               cudaStream_t stream, C const& cfg = {}) {
  if (T < 0) {
    return invalid_argument("gpu::combine: T < 0");
  }
  if (T == 0) {
    return {};
  }
  dim3 const grid(static_cast<unsigned>(T),
                  static_cast<unsigned>(ceil_div(cfg.hidden_size, detail::kCombineColumns)));
  detail::combine_kernel<Out><<<grid, 256, 0, stream>>>(d_y, d_expert_out, d_topk_weights,
                                                        plan.expanded_to_permuted, d_shared_out,
                                                        cfg.hidden_size, cfg.num_experts_per_tok);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
