// SPDX-License-Identifier: Apache-2.0
/// @file router.cuh
/// @brief Stage 1 of the MoE layer on the device: gate logits → top-k expert ids and combine
/// weights, one warp per token.
///
/// The warp computes moe::select_experts_for_token<C> — the routine the CPU backend runs per
/// token — step for step, with its lanes splitting each loop whose result does not depend on
/// the order of its steps: scoring (sigmoid or softmax), the fp32 correction bias, the groups'
/// scores (lane g scores group g as the CPU does), group selection and top-k as warp arg-max
/// reductions under the CPU's total order (score desc, then id asc: the winner is unique, so
/// any reduction tree finds the CPU's), normalization and scaling. The sums whose order matters
/// — the softmax denominator and the top-k weights' sum — run in the CPU's order on one lane.
/// So ids and weights are the CPU's (the device's expf against the host's may differ by an
/// ulp). Scores live in shared memory, E floats twice per warp. @ref arXiv:2412.19437 §2.1.2;
/// DeepSeek-V3 inference/model.py `Gate.forward`; docs/model.md §3.
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
constexpr int kRouterWarps = 4;  // tokens per block

// (value desc, index asc), the CPU's order; index −1 ranks last
__device__ inline bool ranks_before(float va, int a, float vb, int b) {
  return b < 0 || (a >= 0 && (va > vb || (va == vb && a < b)));
}
// The warp's first (value, index) under ranks_before; every lane gets it.
__device__ inline void warp_arg_best(float& v, int& i) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    float const v2 = __shfl_xor_sync(0xffffffffu, v, offset);
    int const i2 = __shfl_xor_sync(0xffffffffu, i, offset);
    if (ranks_before(v2, i2, v, i)) {
      v = v2;
      i = i2;
    }
  }
}

// A token that cannot be routed: reported through first_failed (the smallest such token, the
// same at any schedule), and given ids 0…K−1 with weights 0, so that the dispatch plan stays
// consistent and the other tokens' rows are not disturbed.
__device__ inline void fail_token(std::int32_t* ids, float* weights, int K,
                                  unsigned long long* first_failed, std::int64_t t) {
  for (int j = 0; j < K; ++j) {
    ids[j] = j;
    weights[j] = 0.0f;
  }
  atomicMin(first_failed, static_cast<unsigned long long>(t));
}

template <config::ModelConfig C>
__global__ void __launch_bounds__(kRouterWarps * 32)
    route_topk_kernel(std::int32_t* __restrict__ topk_ids, float* __restrict__ topk_weights,
                      float const* __restrict__ logits, float const* __restrict__ bias,
                      std::int64_t T, unsigned long long* first_failed, C cfg) {
  constexpr int kE = config::max_experts<C>, kG = config::max_groups<C>;
  static_assert(kE <= 32 * 32, "gpu::route_topk: a lane's taken experts fit one 32-bit mask");
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  __shared__ float scores[kRouterWarps][kE];     // s: router scores
  __shared__ float selection[kRouterWarps][kE];  // sc: selection scores
  __shared__ bool keep_group[kRouterWarps][kG];
  int const warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  std::int64_t const t = static_cast<std::int64_t>(blockIdx.x) * kRouterWarps + warp;
  if (t >= T) {
    return;  // uniform over the warp; the warps never synchronize with each other
  }
  float* s = scores[warp];
  float* sc = selection[warp];
  bool* keep = keep_group[warp];
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok, G = cfg.n_group;
  int const EG = config::experts_per_group(cfg);
  float const* z = logits + t * E;
  bool const use_bias = cfg.topk_method == config::TopkMethod::kNoauxTc && bias != nullptr;
  bool finite = true;
  float zmax = kNegInf;
  for (int e = lane; e < E; e += 32) {
    finite = finite && isfinite(z[e]) && (!use_bias || isfinite(bias[e]));
    zmax = z[e] > zmax ? z[e] : zmax;
  }
  if (!__all_sync(0xffffffffu, finite)) {
    if (lane == 0) {
      fail_token(topk_ids + t * K, topk_weights + t * K, K, first_failed, t);
    }
    return;
  }
  if (cfg.scoring_func == config::ScoringFunc::kSigmoid) {
    for (int e = lane; e < E; e += 32) {
      s[e] = 1.0f / (1.0f + std::exp(-z[e]));
    }
  } else {
    for (int offset = 16; offset > 0; offset >>= 1) {
      float const other = __shfl_xor_sync(0xffffffffu, zmax, offset);
      zmax = other > zmax ? other : zmax;
    }
    for (int e = lane; e < E; e += 32) {
      s[e] = std::exp(z[e] - zmax);
    }
    __syncwarp();
    float sum = 0.0f;
    if (lane == 0) {  // the CPU's order
      for (int e = 0; e < E; ++e) {
        sum += s[e];
      }
    }
    sum = __shfl_sync(0xffffffffu, sum, 0);
    for (int e = lane; e < E; e += 32) {
      s[e] /= sum;
    }
  }
  for (int e = lane; e < E; e += 32) {
    sc[e] = s[e] + (use_bias ? bias[e] : 0.0f);
  }
  __syncwarp();
  if (G > 1) {
    float group_score[(kG + 31) / 32];  // groups lane + 32·i, scored as the CPU scores them
    for (int g = lane, i = 0; g < G; g += 32, ++i) {
      float const* u = sc + g * EG;
      if (cfg.topk_method == config::TopkMethod::kNoauxTc) {
        int first = 0;  // the top-2 by (value desc, index asc); equal values count twice
        for (int k = 1; k < EG; ++k) {
          first = ranks_before(u[k], k, u[first], first) ? k : first;
        }
        int second = first == 0 ? 1 : 0;
        for (int k = 0; k < EG; ++k) {
          second = (k != first && ranks_before(u[k], k, u[second], second)) ? k : second;
        }
        group_score[i] = u[first] + u[second];
      } else {
        float m = u[0];
        for (int k = 1; k < EG; ++k) {
          m = u[k] > m ? u[k] : m;
        }
        group_score[i] = m;
      }
      keep[g] = false;
    }
    for (int r = 0; r < cfg.topk_group; ++r) {
      float v = 0.0f;
      int best = -1;
      for (int g = lane, i = 0; g < G; g += 32, ++i) {
        if (!keep[g] && ranks_before(group_score[i], g, v, best)) {
          v = group_score[i];
          best = g;
        }
      }
      warp_arg_best(v, best);
      if (lane == best % 32) {  // the owner lane: keep[] of its groups is only its own
        keep[best] = true;
      }
    }
    __syncwarp();
    for (int e = lane; e < E; e += 32) {
      if (!keep[e / EG]) {
        sc[e] = kNegInf;
      }
    }
    __syncwarp();
  }
  unsigned taken = 0;  // bit i: expert lane + 32·i is taken
  float sum = 0.0f;
  for (int j = 0; j < K; ++j) {
    float v = 0.0f;
    int best = -1;
    for (int e = lane, i = 0; e < E; e += 32, ++i) {
      if (!(taken >> i & 1u) && ranks_before(sc[e], e, v, best)) {
        v = sc[e];
        best = e;
      }
    }
    warp_arg_best(v, best);
    if (v == kNegInf) {
      if (lane == 0) {
        fail_token(topk_ids + t * K, topk_weights + t * K, K, first_failed, t);
      }
      return;
    }
    if (best % 32 == lane) {
      taken |= 1u << (best / 32);
    }
    if (lane == 0) {
      topk_ids[t * K + j] = best;
      topk_weights[t * K + j] = s[best];
      sum += s[best];
    }
  }
  if (lane == 0) {
    float const scale = static_cast<float>(cfg.routed_scaling_factor);
    float const inv = 1.0f / (sum + 1e-20f);  // the CPU's normalization, operation for operation
    for (int j = 0; j < K; ++j) {
      float& w = topk_weights[t * K + j];
      w = cfg.norm_topk_prob ? w * inv * scale : w * scale;
    }
  }
}
}  // namespace detail

/// Routes T tokens on `stream` (file comment). Asynchronous.
/// @tparam C a compile-time config (its fields are kernel arguments and its E sizes the
///           shared-memory arrays)
/// @param d_topk_ids      [T, K] int32, device, out: per token, the ids by selection score
///                        (desc), then id (asc)
/// @param d_topk_weights  [T, K] fp32, device, out: combine weights
/// @param d_logits        [T, E] fp32, device, in: gate logits
/// @param d_bias          [E] fp32, device: e_score_correction_bias; required iff topk_method is
///                        noaux_tc, else null
/// @param T               tokens (≥ 0)
/// @param d_first_failed  [1] device, out: T when every token was routed, else the smallest index
///                        of a token that was not (a non-finite logit or correction bias, or
///                        too few eligible experts; its ids are then 0…K−1 with weights 0);
///                        valid once the stream has reached this point
/// @returns invalid_argument for T < 0 or a missing bias; kCudaError for a failed launch.
template <config::ModelConfig C>
Status route_topk(std::int32_t* d_topk_ids, float* d_topk_weights, float const* d_logits,
                  float const* d_bias, std::int64_t T, unsigned long long* d_first_failed,
                  cudaStream_t stream, C const& cfg = {}) {
  static_assert(!config::is_dynamic_v<C> && std::is_trivially_copyable_v<C>,
                "gpu::route_topk: a compile-time config (its E sizes shared-memory arrays)");
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
  detail::route_topk_kernel<C>
      <<<static_cast<unsigned>(ceil_div(T, detail::kRouterWarps)), detail::kRouterWarps * 32, 0,
         stream>>>(d_topk_ids, d_topk_weights, d_logits, d_bias, T, d_first_failed, cfg);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
