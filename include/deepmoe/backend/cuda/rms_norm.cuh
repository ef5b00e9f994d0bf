// SPDX-License-Identifier: Apache-2.0
/// @file rms_norm.cuh
/// @brief RMSNorm on the device: y = w ⊙ x / sqrt(mean(x²) + eps) in fp32, one block per row —
/// the CPU's rms_norm (ops/rms_norm.hpp): eps inside the root, the weight multiplied in fp32
/// before the one rounding to the output type (DeepSeek-V3 inference/model.py `RMSNorm`).
///
/// The sum of squares is split over the block's threads (thread i: h = i, i + 256, … with fused
/// multiply-adds), then meets in a fixed tree (warp butterfly, then the 8 warp sums in order).
/// A row's result is the same sequence of operations whatever the other rows are (batch
/// invariance) and runs are deterministic; against the CPU's sequential sum it differs by the
/// rounding of another summation order (≤ ~D·2⁻²⁴ relative in the sum, ~1e-7 in y).
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/core/numeric_types.hpp>

#include <cmath>
#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
constexpr int kRowThreads = 256;  // threads of the row kernels (RMSNorm, the MLA cache write)

// Σ over the block of every thread's `v`, in a fixed order; every thread gets the sum.
// @pre blockDim.x == kRowThreads; `scratch` holds kRowThreads / 32 floats of shared memory
__device__ inline float block_sum(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  int const warp = static_cast<int>(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  float s = 0.0f;
  for (int i = 0; i < kRowThreads / 32; ++i) {
    s += scratch[i];
  }
  __syncthreads();  // scratch may be reused after this
  return s;
}

// 1 / sqrt(Σ_h x[h]² / D + eps) of one row, for every thread of the block (x and y not
// __restrict__: in place is allowed, each element read and then written by one thread)
template <class In>
__device__ inline float row_inv_rms(In const* x, std::int64_t D, float eps, float* scratch) {
  float ss = 0.0f;
  for (std::int64_t h = threadIdx.x; h < D; h += kRowThreads) {
    float const v = static_cast<float>(x[h]);
    ss = fmaf(v, v, ss);
  }
  ss = block_sum(ss, scratch);
  return 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
}

template <class Out, class In, class W>
__global__ void __launch_bounds__(kRowThreads)
    rms_norm_kernel(Out* y, In const* x, W const* __restrict__ weight, std::int64_t D, float eps) {
  __shared__ float scratch[kRowThreads / 32];
  std::int64_t const t = blockIdx.x;
  In const* xr = x + t * D;
  float const r = row_inv_rms(xr, D, eps, scratch);
  for (std::int64_t h = threadIdx.x; h < D; h += kRowThreads) {
    y[t * D + h] = Out(static_cast<float>(weight[h]) * (static_cast<float>(xr[h]) * r));
  }
}
}  // namespace detail

/// y[t] = w ⊙ x[t] / sqrt(Σ_h x[t,h]² / D + eps) for each of T rows, on `stream`; asynchronous.
/// @tparam Out, In, W  float or bfloat16 each
/// @param d_y     [T, D] Out, device, out (may be d_x when Out = In)
/// @param d_x     [T, D] In, device
/// @param d_w     [D] W, device (the norm's weight)
/// @param eps     > 0 and finite (the config's rms_norm_eps)
/// @returns invalid_argument for T < 0, D < 1, T > 2^31 − 1 or a bad eps; kCudaError for a failed
///          launch. NaN or inf in a row give NaN in that row.
/// @ref Zhang & Sennrich 2019, arXiv:1910.07467; ops/rms_norm.hpp
template <class Out, class In, class W>
Status rms_norm(Out* d_y, In const* d_x, W const* d_w, std::int64_t T, std::int64_t D, double eps,
                cudaStream_t stream) {
  if (T < 0 || D < 1 || T > 0x7fffffff || !(eps > 0.0) || !std::isfinite(eps)) {
    std::string m = "gpu::rms_norm: T in [0, 2^31), D ≥ 1 and a positive finite eps (got T ";
    m += std::to_string(T);
    m += ", D ";
    m += std::to_string(D);
    m += ", eps ";
    m += std::to_string(eps);
    m += ")";
    return invalid_argument(m);
  }
  if (T == 0) {
    return {};
  }
  detail::rms_norm_kernel<Out, In, W><<<static_cast<unsigned>(T), detail::kRowThreads, 0, stream>>>(
      d_y, d_x, d_w, D, static_cast<float>(eps));
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
