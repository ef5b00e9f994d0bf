// SPDX-License-Identifier: Apache-2.0
/// @file router.cuh
/// @brief Stage 1 of the MoE layer on the device: gate logits → top-k expert ids and combine
/// weights, one thread per token.
///
/// Each thread runs moe::select_experts_for_token<C> — the same host-device routine the CPU
/// backend runs per token — so scoring (sigmoid or softmax), the fp32 correction bias,
/// group-limited selection, top-k with ties broken by lower id, normalization and scaling are
/// the CPU's, and so are the ids (docs/model.md §3). The per-token arrays are the config's
/// compile-time E floats in registers or local memory. @ref arXiv:2412.19437 §2.1.2; DeepSeek-V3
/// inference/model.py `Gate.forward`.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/moe/router.hpp>

#include <cstdint>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
__global__ inline void set_first_failed_kernel(unsigned long long* first_failed, std::int64_t T) {
  *first_failed = static_cast<unsigned long long>(T);
}
template <config::ModelConfig C>
__global__ void route_topk_kernel(std::int32_t* __restrict__ topk_ids,
                                  float* __restrict__ topk_weights,
                                  float const* __restrict__ logits, float const* __restrict__ bias,
                                  std::int64_t T, unsigned long long* first_failed, C cfg) {
  std::int64_t const t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) {
    return;
  }
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  moe::SelectResult const r = moe::select_experts_for_token<C>(
      topk_ids + t * K, topk_weights + t * K, logits + t * E, bias, nullptr, cfg);
  if (r != moe::SelectResult::kOk) {  // the smallest failing token: the same at any schedule
    atomicMin(first_failed, static_cast<unsigned long long>(t));
  }
}
}  // namespace detail

/// Routes T tokens on `stream` (file comment). Asynchronous.
/// @tparam C a compile-time config (its fields are kernel arguments and its E sizes the
///           per-thread arrays)
/// @param d_topk_ids      [T, K] int32, device, out: per token, the ids by selection score
///                        (desc), then id (asc)
/// @param d_topk_weights  [T, K] fp32, device, out: combine weights
/// @param d_logits        [T, E] fp32, device, in: gate logits
/// @param d_bias          [E] fp32, device: e_score_correction_bias; required iff topk_method is
///                        noaux_tc, else null
/// @param T               tokens (≥ 0)
/// @param d_first_failed  [1] device, out: T when every token was routed, else the smallest index
///                        of a token that was not (non-finite logit or too few eligible experts);
///                        valid once the stream has reached this point
/// @returns invalid_argument for T < 0 or a missing bias; kCudaError for a failed launch.
template <config::ModelConfig C>
Status route_topk(std::int32_t* d_topk_ids, float* d_topk_weights, float const* d_logits,
                  float const* d_bias, std::int64_t T, unsigned long long* d_first_failed,
                  cudaStream_t stream, C const& cfg = {}) {
  static_assert(!config::is_dynamic_v<C> && std::is_trivially_copyable_v<C>,
                "gpu::route_topk: a compile-time config (its E sizes per-thread arrays)");
  if (T < 0) {
    return invalid_argument("gpu::route_topk: T < 0");
  }
  if (config::has_correction_bias(cfg) && d_bias == nullptr) {
    return invalid_argument("gpu::route_topk: topk_method noaux_tc needs e_score_correction_bias");
  }
  // a kernel, not a copy from the host: the call stays capturable into a CUDA graph
  detail::set_first_failed_kernel<<<1, 1, 0, stream>>>(d_first_failed, T);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  if (T == 0) {
    return {};
  }
  constexpr int kThreads = 128;
  detail::route_topk_kernel<C>
      <<<static_cast<unsigned>(ceil_div(T, kThreads)), kThreads, 0, stream>>>(
          d_topk_ids, d_topk_weights, d_logits, d_bias, T, d_first_failed, cfg);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
