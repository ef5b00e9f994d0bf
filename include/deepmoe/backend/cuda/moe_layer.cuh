// SPDX-License-Identifier: Apache-2.0
/// @file moe_layer.cuh
/// @brief The DeepSeekMoE layer on the device, stage after stage on one stream — the CPU's
/// moe::moe_layer_forward (moe/moe_layer.hpp), same math and same expert choices:
///
///   z = u·W_gateᵀ (fp32)                        gpu::linear
///   ids, w = select(z, bias)  per token          gpu::route_topk (the CPU's routine)
///   plan: rows sorted by expert                  gpu::build_dispatch_plan (CUB)
///   x_perm = u[plan]                             gpu::permute
///   o = SwiGLU_e(x_perm) per expert segment      gpu::grouped_swiglu(_mma)
///   s = SwiGLU_shared(u)                         the same kernels: on tensor cores, segment E of
///                                                the routed launches when as wide as an expert
///                                                (u appended to x_perm), else its own launches
///   y = round_Act(Σ_j w_j·o[row(t, j)] + s)      gpu::combine
///
/// The experts run on one of two kernels (ExpertKernel): the fp32 SIMT tiles, the CPU's
/// arithmetic, or tensor cores — bf16 (rows and the SwiGLU activation rounded to bf16, fp32
/// accumulation: DeepSeek-V3's bf16 inference), or for fp8 weights e4m3 with 1×128 activation
/// and 128×128 weight scales (grouped_swiglu_fp8.cuh: DeepSeek-V3's fp8 inference). All are
/// batch-invariant and deterministic.
/// Nothing waits on the host: segment offsets stay on the device. Scratch follows the two-phase
/// convention (moe_layer_workspace_bytes, then the call). The residual is not added.
#pragma once

#include <deepmoe/backend/cuda/combine.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_fp8.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>
#include <deepmoe/backend/cuda/linear.cuh>
#include <deepmoe/backend/cuda/permute.cuh>
#include <deepmoe/backend/cuda/router.cuh>

#include <cstddef>
#include <cstdint>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// One MoE layer's weights in device memory for config C.
template <config::ModelConfig C>
struct DeviceMoeWeights {
  typename C::act_t const* gate_weight = nullptr;     ///< [E, H] `mlp.gate.weight`
  float const* e_score_correction_bias = nullptr;     ///< [E], noaux_tc only (else null)
  DeviceSwiGluWeights<typename C::weight_t> experts;  ///< [E, M, H], [E, M, H], [E, H, M]
  /// [1, S·M, H], [1, S·M, H], [1, H, S·M]: `mlp.shared_experts.*`; unused without shared experts
  DeviceSwiGluWeights<typename C::weight_t> shared_experts;
};

/// Which kernel runs the experts' SwiGLU MLPs in moe_layer_forward.
enum class ExpertKernel {
  kAuto,  ///< kMma where it can run (bf16 weights, sizes multiples of 32, SM80+), else kSimt;
          ///< fp8 weights: always kMma
  kSimt,  ///< gpu::grouped_swiglu: fp32 rows and activations, the CPU's arithmetic (fp32, bf16
          ///< weights)
  kMma,   ///< gpu::grouped_swiglu_mma (bf16 weights) or gpu::grouped_swiglu_fp8 (fp8 weights,
          ///< H and widths multiples of 128, SM89+); invalid_argument where it cannot run
};

namespace detail {
// The workspace's pieces, in order, each 256-byte aligned. rows, hidden and shared_hidden are
// sized for fp32 and hold bf16 on the tensor-core path; tokens16 is the bf16 copy of fp32 u.
struct MoeLayerScratch {
  std::size_t logits, ids, weights, counts, offsets, p2e, e2p, shared_offsets, rows, hidden, out,
      shared_hidden, shared_out, tile_starts, shared_tile_starts, tokens16, rows_q, rows_scale, fp8,
      shared_q, shared_scale, shared_fp8, plan, total;
};
template <config::ModelConfig C>
MoeLayerScratch moe_layer_scratch(std::int64_t T, std::size_t plan_bytes, C const& cfg) {
  auto const uT = static_cast<std::size_t>(T);
  std::size_t const E = static_cast<std::size_t>(cfg.n_routed_experts);
  std::size_t const R = uT * static_cast<std::size_t>(cfg.num_experts_per_tok);
  std::size_t const H = static_cast<std::size_t>(cfg.hidden_size);
  std::size_t const M = static_cast<std::size_t>(cfg.moe_intermediate_size);
  std::size_t const SM = static_cast<std::size_t>(config::shared_intermediate_size(cfg));
  MoeLayerScratch s{};
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    std::size_t const here = at;
    at += align_up(bytes);
    return here;
  };
  s.logits = take(uT * E * 4);
  s.ids = take(R * 4);
  s.weights = take(R * 4);
  s.counts = take(E * 4);
  s.offsets = take((E + 2) * 4);  // + the merged shared expert's end
  s.p2e = take(R * 4);
  s.e2p = take(R * 4);
  s.shared_offsets = take(2 * 4);
  std::size_t const RT = R + uT;  // routed rows, then the token rows of a merged shared expert
  bool const fp8 = is_float8_v<typename C::weight_t>;  // its hidden rows live in the fp8 scratch
  s.rows = take(RT * H * 4);
  s.hidden = take(fp8 ? 0 : RT * M * 4);
  s.out = take(RT * H * 4);
  s.shared_hidden = take(fp8 ? 0 : uT * SM * 4);
  s.shared_out = take(uT * H * 4);
  s.tile_starts = take((E + 2) * 4);
  s.shared_tile_starts = take(2 * 4);
  s.tokens16 = take(fp8 ? 0 : uT * H * 2);
  s.rows_q = take(fp8 ? RT * H : 0);
  s.rows_scale = take(fp8 ? RT * (H / 128) * 4 : 0);
  s.fp8 = take(fp8 ? grouped_swiglu_fp8_workspace_bytes(static_cast<std::int64_t>(RT),
                                                        static_cast<std::int64_t>(M))
                   : 0);
  s.shared_q = take(fp8 ? uT * H : 0);
  s.shared_scale = take(fp8 ? uT * (H / 128) * 4 : 0);
  s.shared_fp8 =
      take(fp8 ? grouped_swiglu_fp8_workspace_bytes(T, static_cast<std::int64_t>(SM)) : 0);
  s.plan = take(plan_bytes);
  s.total = at;
  return s;
}
__global__ inline void set_value_kernel(std::int32_t* at, std::int32_t value) {
  *at = value;
}
__global__ inline void set_segment_kernel(std::int32_t* offsets, std::int32_t T) {
  offsets[0] = 0;
  offsets[1] = T;
}
// out = bf16(in), n values
__global__ inline void round_bf16_kernel(bfloat16* __restrict__ out, float const* __restrict__ in,
                                         std::int64_t n) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = bfloat16(in[i]);
  }
}
}  // namespace detail

/// Bytes of device scratch moe_layer_forward needs for T tokens.
/// @returns build_dispatch_plan's errors.
template <config::ModelConfig C>
Status moe_layer_workspace_bytes(std::int64_t T, std::size_t& bytes, C const& cfg = {}) {
  std::size_t plan = 0;
  DEEPMOE_RETURN_IF_ERROR(build_dispatch_plan<C>(nullptr, plan, {}, nullptr, T, nullptr, cfg));
  bytes = detail::moe_layer_scratch<C>(T, plan, cfg).total;
  return {};
}

/// The MoE layer for T tokens on `stream` (file comment). Asynchronous.
/// @tparam C    a compile-time config with fp32, bf16 or fp8-e4m3 weights (fp8: 128×128 blocks)
/// @tparam Act  element type of u and y: float or bfloat16 (y rounded once)
/// @param d_y               [T, H] Act, device, out
/// @param d_u               [T, H] Act, device, in: the post-attention-normed hidden states
/// @param w                 the layer's weights (device)
/// @param d_workspace       moe_layer_workspace_bytes(T) bytes of device scratch
/// @param workspace_bytes   its size
/// @param d_first_failed    [1] device, out: route_topk's — T, or the first token that could
///                          not be routed (a non-finite logit or bias, too few eligible experts;
///                          its y then holds the shared experts' output alone — meaningless,
///                          while the other tokens' are unaffected)
/// @param kernel            the experts' kernel (ExpertKernel; kAuto by default)
/// @returns invalid_argument, before anything is enqueued, for T outside [0, 2^31/(K+1)), a
///          null first_failed or weight (fp8: or scale), too small a workspace, a missing bias,
///          kSimt with fp8 weights, or kMma (or fp8) where it cannot run (sizes, device, the
///          architectures built); the kernels' errors (kCudaError for a failed launch).
/// @pre d_y does not overlap d_u or the workspace.
template <config::ModelConfig C, class Act>
Status moe_layer_forward(Act* d_y, Act const* d_u, DeviceMoeWeights<C> const& w, void* d_workspace,
                         std::size_t workspace_bytes, unsigned long long* d_first_failed,
                         std::int64_t T, cudaStream_t stream,
                         ExpertKernel kernel = ExpertKernel::kAuto, C const& cfg = {}) {
  static_assert(std::is_same_v<Act, float> || std::is_same_v<Act, bfloat16>,
                "gpu::moe_layer_forward: activations are float or bfloat16");
  std::int64_t const H = cfg.hidden_size, E = cfg.n_routed_experts, M = cfg.moe_intermediate_size;
  std::int64_t const SM = config::shared_intermediate_size(cfg);
  if (T < 0 || T * (cfg.num_experts_per_tok + 1) > 0x7fffffff) {
    return invalid_argument("gpu::moe_layer_forward: T must be in [0, 2^31 / (K + 1))");
  }
  if (d_first_failed == nullptr || w.gate_weight == nullptr || w.experts.gate_proj == nullptr ||
      w.experts.up_proj == nullptr || w.experts.down_proj == nullptr ||
      (SM > 0 && (w.shared_experts.gate_proj == nullptr || w.shared_experts.up_proj == nullptr ||
                  w.shared_experts.down_proj == nullptr))) {
    return invalid_argument(
        "gpu::moe_layer_forward: d_first_failed, mlp.gate.weight and the experts' (and shared "
        "experts') gate/up/down weights must not be null");
  }
  if (config::has_correction_bias(cfg) && w.e_score_correction_bias == nullptr) {
    return invalid_argument(
        "gpu::moe_layer_forward: topk_method noaux_tc needs mlp.gate.e_score_correction_bias");
  }
  using W = typename C::weight_t;
  bool mma = false;
  if constexpr (std::is_same_v<W, bfloat16>) {
    if (kernel != ExpertKernel::kSimt) {
      Status const routed = grouped_swiglu_mma_supported(H, M);
      Status const ok = routed.ok() && SM > 0 ? grouped_swiglu_mma_supported(H, SM) : routed;
      mma = ok.ok();
      if (!mma && kernel == ExpertKernel::kMma) {
        return ok;
      }
    }
  } else if constexpr (is_float8_v<W>) {
    if (kernel == ExpertKernel::kSimt) {
      return invalid_argument(
          "gpu::moe_layer_forward: fp8 weights run on tensor cores only (kAuto or kMma)");
    }
    if (cfg.weight_block_size != 128) {
      return invalid_argument("gpu::moe_layer_forward: fp8 weights need 128×128 scale blocks");
    }
    if (w.experts.gate_scale_inv == nullptr || w.experts.up_scale_inv == nullptr ||
        w.experts.down_scale_inv == nullptr ||
        (SM > 0 &&
         (w.shared_experts.gate_scale_inv == nullptr || w.shared_experts.up_scale_inv == nullptr ||
          w.shared_experts.down_scale_inv == nullptr))) {
      return invalid_argument("gpu::moe_layer_forward: fp8 weights without weight_scale_inv");
    }
    Status const routed = grouped_swiglu_fp8_supported(H, M);
    DEEPMOE_RETURN_IF_ERROR(routed.ok() && SM > 0 ? grouped_swiglu_fp8_supported(H, SM) : routed);
  } else if (kernel == ExpertKernel::kMma) {
    return invalid_argument("gpu::moe_layer_forward: ExpertKernel::kMma needs bf16 or fp8 weights");
  }
  std::size_t plan_bytes = 0;
  DEEPMOE_RETURN_IF_ERROR(build_dispatch_plan<C>(nullptr, plan_bytes, {}, nullptr, T, stream, cfg));
  detail::MoeLayerScratch const s = detail::moe_layer_scratch<C>(T, plan_bytes, cfg);
  if (d_workspace == nullptr || workspace_bytes < s.total) {
    return invalid_argument("gpu::moe_layer_forward: workspace of " +
                            std::to_string(workspace_bytes) + " bytes, need " +
                            std::to_string(s.total) + " (moe_layer_workspace_bytes)");
  }
  auto* base = static_cast<unsigned char*>(d_workspace);
  auto f32 = [&](std::size_t at) { return reinterpret_cast<float*>(base + at); };
  auto i32 = [&](std::size_t at) { return reinterpret_cast<std::int32_t*>(base + at); };
  DeviceDispatchPlan const plan{i32(s.counts), i32(s.offsets), i32(s.p2e), i32(s.e2p)};
  DEEPMOE_RETURN_IF_ERROR(linear(f32(s.logits), d_u, w.gate_weight, T, E, H, stream));
  DEEPMOE_RETURN_IF_ERROR(route_topk<C>(i32(s.ids), f32(s.weights), f32(s.logits),
                                        w.e_score_correction_bias, T, d_first_failed, stream, cfg));
  if (T == 0) {
    return {};
  }
  std::size_t pb = plan_bytes;
  DEEPMOE_RETURN_IF_ERROR(
      build_dispatch_plan<C>(base + s.plan, pb, plan, i32(s.ids), T, stream, cfg));
  auto bf = [&](std::size_t at) { return reinterpret_cast<bfloat16*>(base + at); };
  std::int64_t const R = T * cfg.num_experts_per_tok;
  // Tensor cores: a shared expert as wide as a routed one runs as segment E of the same grouped
  // launches, on the token rows appended after the routed rows (more threadblocks in flight at
  // decode); otherwise in launches of its own over the token rows.
  bool const merged = SM == M;
  float const* shared = nullptr;
  if (SM > 0) {
    if (merged && (mma || is_float8_v<W>)) {
      detail::set_value_kernel<<<1, 1, 0, stream>>>(plan.expert_offsets + E + 1,
                                                    static_cast<std::int32_t>(R + T));
      shared = f32(s.out) + R * H;
    } else {
      detail::set_segment_kernel<<<1, 1, 0, stream>>>(i32(s.shared_offsets),
                                                      static_cast<std::int32_t>(T));
      shared = f32(s.shared_out);
    }
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
  }
  int const segments = static_cast<int>(E) + (SM > 0 && merged ? 1 : 0);
  std::int64_t const rows = SM > 0 && merged ? R + T : R;
  if constexpr (std::is_same_v<W, bfloat16>) {
    if (mma) {
      bfloat16* x16 = bf(s.rows);
      DEEPMOE_RETURN_IF_ERROR(permute<C, Act>(x16, d_u, plan, T, stream, cfg));
      bfloat16 const* u16 = nullptr;  // the token rows in bf16, for the shared expert
      if (SM > 0) {
        if constexpr (std::is_same_v<Act, bfloat16>) {
          u16 = d_u;
          if (merged) {
            DEEPMOE_CUDA_CHECK(cudaMemcpyAsync(x16 + R * H, d_u,
                                               static_cast<std::size_t>(T * H) * sizeof(bfloat16),
                                               cudaMemcpyDeviceToDevice, stream));
          }
        } else {
          bfloat16* to = merged ? x16 + R * H : bf(s.tokens16);
          detail::
              round_bf16_kernel<<<static_cast<unsigned>(ceil_div(T * H, 256)), 256, 0, stream>>>(
                  to, d_u, T * H);
          DEEPMOE_CUDA_CHECK(cudaGetLastError());
          u16 = to;
        }
      }
      DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_mma(
          f32(s.out), bf(s.hidden), x16, plan.expert_offsets, i32(s.tile_starts), segments, rows,
          w.experts, H, M, stream,
          SM > 0 && merged ? w.shared_experts : DeviceSwiGluWeights<bfloat16>{}));
      if (SM > 0 && !merged) {
        DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_mma(f32(s.shared_out), bf(s.shared_hidden), u16,
                                                   i32(s.shared_offsets), i32(s.shared_tile_starts),
                                                   1, T, w.shared_experts, H, SM, stream));
      }
      return combine<C, Act>(d_y, f32(s.out), f32(s.weights), plan, shared, T, stream, cfg);
    }
  }
  if constexpr (is_float8_v<W>) {  // rows quantized per 1×128 from Act, e4m3 tensor cores
    auto f8 = [&](std::size_t at) { return reinterpret_cast<float8_e4m3fn*>(base + at); };
    Act* x = reinterpret_cast<Act*>(base + s.rows);
    DEEPMOE_RETURN_IF_ERROR(permute<C, Act>(x, d_u, plan, T, stream, cfg));
    if (SM > 0 && merged) {
      DEEPMOE_CUDA_CHECK(cudaMemcpyAsync(x + R * H, d_u,
                                         static_cast<std::size_t>(T * H) * sizeof(Act),
                                         cudaMemcpyDeviceToDevice, stream));
    }
    DEEPMOE_RETURN_IF_ERROR(quantize_rows_fp8(f8(s.rows_q), f32(s.rows_scale), x, rows, H, stream));
    DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_fp8(
        f32(s.out), f8(s.rows_q), f32(s.rows_scale), plan.expert_offsets, i32(s.tile_starts),
        segments, rows, w.experts, H, M, base + s.fp8, stream,
        SM > 0 && merged ? w.shared_experts : DeviceSwiGluWeights<float8_e4m3fn>{}));
    if (SM > 0 && !merged) {
      DEEPMOE_RETURN_IF_ERROR(
          quantize_rows_fp8(f8(s.shared_q), f32(s.shared_scale), d_u, T, H, stream));
      DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_fp8(
          f32(s.shared_out), f8(s.shared_q), f32(s.shared_scale), i32(s.shared_offsets),
          i32(s.shared_tile_starts), 1, T, w.shared_experts, H, SM, base + s.shared_fp8, stream));
    }
    return combine<C, Act>(d_y, f32(s.out), f32(s.weights), plan, shared, T, stream, cfg);
  } else {
    DEEPMOE_RETURN_IF_ERROR(permute<C, Act>(f32(s.rows), d_u, plan, T, stream, cfg));
    DEEPMOE_RETURN_IF_ERROR(grouped_swiglu<W>(f32(s.out), f32(s.hidden), f32(s.rows),
                                              plan.expert_offsets, static_cast<int>(E), T,
                                              w.experts, H, M, stream));
    if (SM > 0) {
      DEEPMOE_RETURN_IF_ERROR(grouped_swiglu<W, Act>(f32(s.shared_out), f32(s.shared_hidden), d_u,
                                                     i32(s.shared_offsets), 1, T, w.shared_experts,
                                                     H, SM, stream));
    }
    return combine<C, Act>(d_y, f32(s.out), f32(s.weights), plan, shared, T, stream, cfg);
  }
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
