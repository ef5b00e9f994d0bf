// SPDX-License-Identifier: Apache-2.0
/// @file permute.cuh
/// @brief Stage 2 of the MoE layer on the device: the dispatch plan (CUB radix sort on the
/// expert id's ⌈log2 E⌉ bits, histogram and scan) and the gather of token rows into expert order.
///
/// The plan is moe::DispatchPlan's, element for element (moe/permute.hpp): the T·K expanded rows
/// t·K + j sorted by expert id with a stable sort, so that within an expert rows keep ascending
/// token order; tokens_per_expert by histogram; expert_offsets its exclusive prefix sum
/// (offsets[0] = 0, offsets[E] = R); expanded_to_permuted the inverse permutation. Scratch
/// follows CUB's two-phase convention: a call with d_temp_storage == nullptr only sets
/// temp_storage_bytes.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/numeric_types.hpp>

#include <cub/device/device_histogram.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// The dispatch plan in device memory (int32 arrays the caller owns; moe::DispatchPlan's
/// meaning and invariants).
struct DeviceDispatchPlan {
  std::int32_t* tokens_per_expert = nullptr;     ///< [E] rows per expert
  std::int32_t* expert_offsets = nullptr;        ///< [E + 1] exclusive prefix sum
  std::int32_t* permuted_to_expanded = nullptr;  ///< [R] permuted row → t·K + j
  std::int32_t* expanded_to_permuted = nullptr;  ///< [R] t·K + j → permuted row
};

/// Key bits of an expert id in [0, E): ⌈log2 E⌉, at least 1 — what the radix sort reads.
DEEPMOE_HOST_DEVICE constexpr int expert_id_bits(int E) {
  int b = 1;
  while ((1 << b) < E) {
    ++b;
  }
  return b;
}

namespace detail {
__global__ inline void iota_kernel(std::int32_t* __restrict__ v, std::int64_t n) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    v[i] = static_cast<std::int32_t>(i);
  }
}
__global__ inline void invert_kernel(std::int32_t* __restrict__ inverse,
                                     std::int32_t const* __restrict__ perm, std::int64_t n) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    inverse[perm[i]] = static_cast<std::int32_t>(i);
  }
}
// out[r, :] = Out(float(x[perm[r] / K, :])); one block per row
template <class In, class Out>
__global__ void gather_rows_kernel(Out* __restrict__ out, In const* __restrict__ x,
                                   std::int32_t const* __restrict__ perm, std::int64_t H, int K) {
  std::int64_t const r = blockIdx.x;
  In const* src = x + static_cast<std::int64_t>(perm[r] / K) * H;
  Out* dst = out + r * H;
  for (std::int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    dst[h] = Out(static_cast<float>(src[h]));
  }
}
}  // namespace detail

/// Builds the dispatch plan of T tokens' top-k ids on `stream` (file comment). Asynchronous.
/// @param d_temp_storage      device scratch, or null to query its size
/// @param temp_storage_bytes  in/out: the scratch's bytes (set when d_temp_storage is null)
/// @param plan                out: device arrays for E experts and R = T·K rows
/// @param d_topk_ids          [T, K] int32, device, in
/// @param T                   tokens (≥ 0)
/// @returns invalid_argument for T < 0, R beyond int32, a null plan array or too little scratch;
///          kCudaError for a failed launch or CUB call.
/// @pre every id is in [0, E) (the router's output); the plan's arrays do not overlap each
///      other, d_topk_ids or the scratch.
template <config::ModelConfig C>
Status build_dispatch_plan(void* d_temp_storage, std::size_t& temp_storage_bytes,
                           DeviceDispatchPlan const& plan, std::int32_t const* d_topk_ids,
                           std::int64_t T, cudaStream_t stream, C const& cfg = {}) {
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  std::int64_t const R = T * K;
  if (T < 0 || R > std::numeric_limits<std::int32_t>::max()) {
    return invalid_argument("gpu::build_dispatch_plan: T·K must be in [0, 2^31)");
  }
  int const n = static_cast<int>(R), bits = expert_id_bits(E);
  std::size_t sort_bytes = 0, hist_bytes = 0, scan_bytes = 0;
  DEEPMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<std::int32_t const*>(nullptr),
      static_cast<std::int32_t*>(nullptr), static_cast<std::int32_t const*>(nullptr),
      static_cast<std::int32_t*>(nullptr), n, 0, bits, stream));
  DEEPMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
      nullptr, hist_bytes, static_cast<std::int32_t const*>(nullptr),
      static_cast<std::int32_t*>(nullptr), E + 1, 0, E, n, stream));
  DEEPMOE_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes,
                                                   static_cast<std::int32_t const*>(nullptr),
                                                   static_cast<std::int32_t*>(nullptr), E, stream));
  std::size_t const rows = detail::align_up(static_cast<std::size_t>(R) * sizeof(std::int32_t));
  std::size_t cub_bytes = std::max({sort_bytes, hist_bytes, scan_bytes});
  std::size_t const total = 2 * rows + detail::align_up(cub_bytes);
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = total;
    return {};
  }
  if (temp_storage_bytes < total) {
    return invalid_argument("gpu::build_dispatch_plan: scratch of " +
                            std::to_string(temp_storage_bytes) + " bytes, need " +
                            std::to_string(total) + " (query with d_temp_storage = null)");
  }
  if (plan.tokens_per_expert == nullptr || plan.expert_offsets == nullptr ||
      (R > 0 && (plan.permuted_to_expanded == nullptr || plan.expanded_to_permuted == nullptr))) {
    return invalid_argument("gpu::build_dispatch_plan: a plan array is null");
  }
  auto* base = static_cast<unsigned char*>(d_temp_storage);
  auto* keys_out = reinterpret_cast<std::int32_t*>(base);          // [R] sorted ids (unused)
  auto* values_in = reinterpret_cast<std::int32_t*>(base + rows);  // [R] 0…R−1
  void* cub_temp = base + 2 * rows;
  constexpr int kThreads = 256;
  unsigned const blocks = static_cast<unsigned>(std::max<std::int64_t>(1, ceil_div(R, kThreads)));
  if (R > 0) {
    detail::iota_kernel<<<blocks, kThreads, 0, stream>>>(values_in, R);
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
    DEEPMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, d_topk_ids, keys_out,
                                                       values_in, plan.permuted_to_expanded, n, 0,
                                                       bits, stream));  // stable: token order
  }
  DEEPMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
      cub_temp, cub_bytes, d_topk_ids, plan.tokens_per_expert, E + 1, 0, E, n, stream));
  DEEPMOE_CUDA_CHECK(cudaMemsetAsync(plan.expert_offsets, 0, sizeof(std::int32_t), stream));
  DEEPMOE_CUDA_CHECK(cub::DeviceScan::InclusiveSum(cub_temp, cub_bytes, plan.tokens_per_expert,
                                                   plan.expert_offsets + 1, E, stream));
  if (R > 0) {
    detail::invert_kernel<<<blocks, kThreads, 0, stream>>>(plan.expanded_to_permuted,
                                                           plan.permuted_to_expanded, R);
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
  }
  return {};
}

/// Gathers token rows into expert order on `stream`: out[r] = Out(x[permuted_to_expanded[r] /
/// K]) (moe::permute's result). Asynchronous.
/// @tparam In   element type of x: float or bfloat16
/// @tparam Out  element type of the rows: float (x widened exactly: the SIMT experts' input),
///              or bfloat16 (the tensor-core experts' input; fp32 x rounded to nearest even)
/// @param d_out   [R, H] Out, device, out
/// @param d_x     [T, H] In, device, in
/// @param plan    the plan of the same T (its permuted_to_expanded)
/// @param T       tokens (≥ 0)
/// @returns invalid_argument for T < 0; kCudaError for a failed launch.
/// @pre d_out does not overlap d_x.
template <config::ModelConfig C, class In, class Out>
Status permute(Out* d_out, In const* d_x, DeviceDispatchPlan const& plan, std::int64_t T,
               cudaStream_t stream, C const& cfg = {}) {
  int const K = cfg.num_experts_per_tok;
  if (T < 0 || T * K > std::numeric_limits<std::int32_t>::max()) {
    return invalid_argument("gpu::permute: T·K must be in [0, 2^31)");
  }
  if (T == 0) {
    return {};
  }
  detail::gather_rows_kernel<In, Out><<<static_cast<unsigned>(T * K), 128, 0, stream>>>(
      d_out, d_x, plan.permuted_to_expanded, cfg.hidden_size, K);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
