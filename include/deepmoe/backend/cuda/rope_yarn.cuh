// SPDX-License-Identifier: Apache-2.0
/// @file rope_yarn.cuh
/// @brief Rotary position embedding (with the YaRN frequencies of ops/rope_yarn.hpp) on the
/// device, in place, on the checkpoints' interleaved pairs — the CPU's apply_rope:
///   θ = fp32(position) · inv_freq[i];  c = cos θ · af, s = sin θ · af
///   y[2i] = x[2i]·c − x[2i+1]·s,  y[2i+1] = x[2i]·s + x[2i+1]·c
/// inv_freq comes from rope_inv_freq (computed once on the host, in double, rounded to fp32), af
/// from yarn_attention_factor. The device's cosf/sinf are within 2 ulps of glibc's (CUDA C
/// Programming Guide, "Mathematical Functions"), so results match the CPU's to ~1e-7 relative.
/// The rotated dims of a row may sit in several equally spaced segments (e.g. the q_pe part of
/// each head of q = [q_nope | q_pe] per head), described by RopeSegments.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>

#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// Where the rotated segments of each row are: segment j of row t starts at element
/// t·ld + first + j·stride and is 2·half wide (half = the inv_freq length).
struct RopeSegments {
  std::int64_t ld = 0;      ///< elements between rows
  std::int64_t first = 0;   ///< offset of segment 0 in a row
  std::int64_t stride = 0;  ///< elements between segments
  int count = 1;            ///< segments per row
};

namespace detail {
__global__ inline void rope_kernel(float* __restrict__ x,
                                   std::int64_t const* __restrict__ positions,
                                   float const* __restrict__ inv_freq, int half, RopeSegments seg,
                                   float af) {
  std::int64_t const t = blockIdx.x;
  float const pos = static_cast<float>(positions[t]);
  for (int k = static_cast<int>(threadIdx.x); k < seg.count * half; k += blockDim.x) {
    int const j = k / half, i = k % half;
    float const theta = pos * inv_freq[i];
    float const c = cosf(theta) * af, s = sinf(theta) * af;
    float* p = x + t * seg.ld + seg.first + j * seg.stride + 2 * i;
    float const a = p[0], b = p[1];
    p[0] = a * c - b * s;
    p[1] = a * s + b * c;
  }
}
}  // namespace detail

/// Rotates, in place, the segments `seg` of each of T rows by the row's position (file comment),
/// on `stream`; asynchronous.
/// @param d_x          [T, seg.ld] fp32, device, in/out
/// @param d_positions  [T] int64, device: absolute positions ≥ 0 [tokens] (not checked here)
/// @param d_inv_freq   [half] fp32, device: rope_inv_freq(2·half, …)
/// @param half         rotated pairs per segment (qk_rope_head_dim / 2), ≥ 1
/// @param af           yarn_attention_factor (1 for every released model)
/// @returns invalid_argument for T outside [0, 2^31), half < 1, a segment count < 1 or segments
///          that overrun a row; kCudaError for a failed launch.
inline Status apply_rope(float* d_x, std::int64_t const* d_positions, float const* d_inv_freq,
                         int half, RopeSegments seg, double af, std::int64_t T,
                         cudaStream_t stream) {
  if (T < 0 || T > 0x7fffffff || half < 1 || seg.count < 1 || seg.first < 0 ||
      (seg.count > 1 && seg.stride < 2 * half) ||
      seg.first + (seg.count - 1) * seg.stride + 2 * half > seg.ld) {
    std::string m = "gpu::apply_rope: ";
    m += std::to_string(seg.count);
    m += " segments of 2·";
    m += std::to_string(half);
    m += " from ";
    m += std::to_string(seg.first);
    m += " every ";
    m += std::to_string(seg.stride);
    m += " do not fit rows of ";
    m += std::to_string(seg.ld);
    return invalid_argument(m);
  }
  if (T == 0) {
    return {};
  }
  detail::rope_kernel<<<static_cast<unsigned>(T), 128, 0, stream>>>(
      d_x, d_positions, d_inv_freq, half, seg, static_cast<float>(af));
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
