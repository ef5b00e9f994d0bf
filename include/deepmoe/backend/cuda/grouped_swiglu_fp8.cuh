// SPDX-License-Identifier: Apache-2.0
/// @file grouped_swiglu_fp8.cuh
/// @brief Stage 3 of the MoE layer for fp8 checkpoints, DeepSeek-V3's recipe: e4m3 expert
/// weights with 128×128 block scales, activations quantized to e4m3 per 1×128 tile, e4m3 tensor
/// cores (mma.sync m16n8k32, SM89 and later) with fp32 accumulation promoted every 128 k.
///
/// Activation quantization (quantize_rows_fp8), per row r and 128-column block b:
///   s[r, b] = max(amax_{k ∈ b} |x[r, k]|, 10⁻⁴) / 448,   q[r, k] = e4m3(x[r, k] / s[r, b])
/// (DeepSeek-V3 inference/kernel.py `act_quant`; the 10⁻⁴ floor is DeepGEMM's
/// `per_token_cast_to_fp8`, so that an all-zero block gives zeros, not NaN).
///
/// The grouped GEMM, for segment s, row r and output n, with block-scale matrices S_w [N/128,
/// K/128]:
///   y[r, n] = Σ_b ( s[r, b] · S_w[n/128, b] ) · ( Σ_{k ∈ b} q[r, k] · W_q[n, k] )
/// — each 128-wide partial sum comes from e4m3 mma with fp32 accumulation and is scaled and
/// added to the fp32 total (the per-128 "promotion" of arXiv:2412.19437 §3.3.2, DeepGEMM). As in
/// DeepSeek-V3's inference (class Expert with fp8 `linear`), the SwiGLU activation is rounded to
/// bf16 and quantized again for the down projection:
///   hidden = bf16(silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)),  out = quantize(hidden)·W_downᵀ   (fp32 out)
///
/// Tiling: 64 rows × 128 B-rows × 128 k per stage (one scale block), four cp.async stages
/// (96 KiB), 8 warps of 32 × 32; gate/up tiles hold 64 gate and the same 64 up rows (both in one
/// 128-row scale block). The row-tile schedule is grouped_swiglu_mma's (tile_schedule.hpp). Each
/// output is a fixed sequence of operations over its row and column only: batch-invariant and
/// deterministic.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>
#include <deepmoe/backend/cuda/mma_sm80.cuh>
#include <deepmoe/backend/cuda/tile_schedule.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// The 1×128 activation scale of a block whose largest magnitude is `amax` (file comment):
/// max(amax, 10⁻⁴) / 448. Host-device, so that references compute the kernel's bits.
DEEPMOE_HOST_DEVICE inline float fp8_activation_scale(float amax) {
  return (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
}

namespace detail {
constexpr int kFp8Block = 128;        // scale block edge (k and n)
constexpr int kFp8TileM = kMmaTileM;  // rows per threadblock tile (the shared schedule)
constexpr int kFp8Stages = 4;         // cp.async pipeline depth
constexpr std::size_t kFp8SmemBytes =
    std::size_t{kFp8Stages} * (kFp8TileM + kMmaTileN) * kSlabBytes;  // 96 KiB

#if defined(__CUDACC__)
// q, s of rows × K/128 blocks; one warp per (row, block), four values per lane
template <class In>
__global__ void __launch_bounds__(256)
    quantize_rows_fp8_kernel(float8_e4m3fn* __restrict__ q, float* __restrict__ scales,
                             In const* __restrict__ x, std::int64_t rows, std::int64_t K) {
  std::int64_t const blocks = K / kFp8Block;
  std::int64_t const job = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  int const lane = static_cast<int>(threadIdx.x) % 32;
  if (job >= rows * blocks) {
    return;  // uniform over the warp
  }
  std::int64_t const base = (job / blocks) * K + (job % blocks) * kFp8Block + lane * 4;
  float v[4];
  float amax = 0.0f;
  for (int i = 0; i < 4; ++i) {
    v[i] = static_cast<float>(x[base + i]);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  }
  float const s = fp8_activation_scale(amax);
  for (int i = 0; i < 4; ++i) {
    q[base + i] = float8_e4m3fn(v[i] / s);
  }
  if (lane == 0) {
    scales[job] = s;
  }
}

// acc += Σ_b (s_a·s_w) · (A-tile · B-tileᵀ over block b) for this warp's 32 × 32 outputs. A: a_rows
// valid rows of K e4m3 (row stride K) with scales a_scale [rows, K/128]; B-tile rows 0…63 from
// b0 (b0_rows valid, block scales b0_scale[b]), rows 64…127 from b1 (b1_scale). K % 128 == 0.
__device__ inline void fp8_mainloop(float (&acc)[2][4][4], float8_e4m3fn const* __restrict__ a,
                                    float const* __restrict__ a_scale, int a_rows,
                                    float8_e4m3fn const* __restrict__ b0,
                                    float const* __restrict__ b0_scale, int b0_rows,
                                    float8_e4m3fn const* __restrict__ b1,
                                    float const* __restrict__ b1_scale, int b1_rows, std::int64_t K,
                                    unsigned char* smem) {
  int const tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  int const wm = warp >> 2, wn = warp & 3;
  constexpr int kStage = (kFp8TileM + kMmaTileN) * kSlabBytes;  // bytes per stage
  std::int64_t const nk = K / kFp8Block;
  auto load = [&](int stage, std::int64_t kb) {
    unsigned char* sa = smem + stage * kStage;
    unsigned char* sb = sa + kFp8TileM * kSlabBytes;
    for (int c = tid; c < kFp8TileM * 8; c += kMmaThreads) {  // 64 rows × 8 chunks
      int const row = c >> 3, k = (c & 7) * 16;
      bool const v = row < a_rows;
      cp_async_16(sa + slab_offset(row, k), v ? a + row * K + kb * kFp8Block + k : a, v);
    }
    for (int c = tid; c < 64 * 8; c += kMmaThreads) {
      int const row = c >> 3, k = (c & 7) * 16;
      bool const v0 = row < b0_rows, v1 = row < b1_rows;
      cp_async_16(sb + slab_offset(row, k), v0 ? b0 + row * K + kb * kFp8Block + k : b0, v0);
      cp_async_16(sb + slab_offset(row + 64, k), v1 ? b1 + row * K + kb * kFp8Block + k : b0, v1);
    }
  };
  // this thread's accumulator rows: wm·32 + mi·16 + lane/4 + 8·half
  int a_row[2][2];
  for (int mi = 0; mi < 2; ++mi) {
    for (int half = 0; half < 2; ++half) {
      int const row = wm * 32 + mi * 16 + (lane >> 2) + 8 * half;
      a_row[mi][half] = row < a_rows ? row : 0;  // rows past the segment read row 0's scales
    }
  }
  for (int s = 0; s < kFp8Stages - 1; ++s) {
    if (s < nk) {
      load(s, s);
    }
    cp_async_commit();
  }
  for (std::int64_t kb = 0; kb < nk; ++kb) {
    cp_async_wait<kFp8Stages - 2>();
    __syncthreads();
    if (std::int64_t const next = kb + kFp8Stages - 1; next < nk) {
      load(static_cast<int>(next % kFp8Stages), next);
    }
    cp_async_commit();
    unsigned char const* sa = smem + static_cast<int>(kb % kFp8Stages) * kStage;
    unsigned char const* sb = sa + kFp8TileM * kSlabBytes;
    // this block's scales, loaded before the products so that their latency hides behind them
    float const w0 = b0_scale[kb], w1 = b1_scale[kb];
    float row_scale[2][2];
    for (int mi = 0; mi < 2; ++mi) {
      for (int half = 0; half < 2; ++half) {
        row_scale[mi][half] = a_scale[a_row[mi][half] * nk + kb];
      }
    }
    float part[2][4][4] = {};  // this block's sums, fp32
    for (int kk = 0; kk < kFp8Block; kk += 32) {
      unsigned af[2][4], bf[2][4];
      for (int mi = 0; mi < 2; ++mi) {  // rows wm·32 + mi·16 + lane % 16, bytes + 16·(lane/16)
        ldmatrix_x4(af[mi],
                    sa + slab_offset(wm * 32 + mi * 16 + (lane & 15), kk + (lane >> 4) * 16));
      }
      for (int h = 0; h < 2; ++h) {  // B rows h·64 + wn·16 + 8·(lane / 16) + lane % 8
        int const row = h * 64 + wn * 16 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrix_x4(bf[h], sb + slab_offset(row, kk + ((lane >> 3) & 1) * 16));
      }
      for (int mi = 0; mi < 2; ++mi) {
        for (int nj = 0; nj < 4; ++nj) {
          int const h = nj >> 1, t = nj & 1;
          mma_e4m3_16832(part[mi][nj], af[mi], bf[h][2 * t], bf[h][2 * t + 1]);
        }
      }
    }
    for (int mi = 0; mi < 2; ++mi) {
      for (int half = 0; half < 2; ++half) {
        for (int nj = 0; nj < 4; ++nj) {
          float const scale = row_scale[mi][half] * (nj < 2 ? w0 : w1);
          acc[mi][nj][2 * half] += part[mi][nj][2 * half] * scale;
          acc[mi][nj][2 * half + 1] += part[mi][nj][2 * half + 1] * scale;
        }
      }
    }
  }
  cp_async_wait<0>();
}

// hidden = bf16(silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)); grid (⌈R/64⌉ + S, ⌈I/64⌉)
__global__ inline void __launch_bounds__(kMmaThreads, 2)  // ≤ 128 registers: two blocks per SM
    gate_up_fp8_kernel(bfloat16* __restrict__ hidden, float8_e4m3fn const* __restrict__ xq,
                       float const* __restrict__ x_scale, std::int32_t const* __restrict__ offsets,
                       std::int32_t const* __restrict__ tile_starts, int S,
                       DeviceSwiGluWeights<float8_e4m3fn> w,
                       DeviceSwiGluWeights<float8_e4m3fn> last, std::int64_t H, std::int64_t I) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  std::int64_t r0 = 0, r1 = 0;
  int s = 0;
  if (!locate_tile(r0, r1, s, offsets, tile_starts, S)) {
    return;
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * 64;
  std::int64_t const HB = H / kFp8Block, IB = ceil_div(I, kFp8Block);
  int const rows = clamp_to(r1 - r0, kFp8TileM);
  int const cols = clamp_to(I - n0, 64);
  std::int64_t const scale_row = (n0 / kFp8Block) * HB;
  float acc[2][4][4] = {};
  fp8_mainloop(acc, xq + r0 * H, x_scale + r0 * HB, rows,
               segment_weights(w.gate_proj, last.gate_proj, s, S, I * H) + n0 * H,
               segment_weights(w.gate_scale_inv, last.gate_scale_inv, s, S, IB * HB) + scale_row,
               cols, segment_weights(w.up_proj, last.up_proj, s, S, I * H) + n0 * H,
               segment_weights(w.up_scale_inv, last.up_scale_inv, s, S, IB * HB) + scale_row, cols,
               H, smem_bytes);
  store_swiglu_tile(hidden + r0 * I + n0, I, acc, rows, cols);
}

// out = quantize(hidden)·W_downᵀ (fp32); grid (⌈R/64⌉ + S, ⌈H/128⌉)
__global__ inline void __launch_bounds__(kMmaThreads, 2)
    down_fp8_kernel(float* __restrict__ out, float8_e4m3fn const* __restrict__ hq,
                    float const* __restrict__ h_scale, std::int32_t const* __restrict__ offsets,
                    std::int32_t const* __restrict__ tile_starts, int S,
                    DeviceSwiGluWeights<float8_e4m3fn> w, DeviceSwiGluWeights<float8_e4m3fn> last,
                    std::int64_t H, std::int64_t I) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  std::int64_t r0 = 0, r1 = 0;
  int s = 0;
  if (!locate_tile(r0, r1, s, offsets, tile_starts, S)) {
    return;
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * kMmaTileN;
  std::int64_t const HB = ceil_div(H, kFp8Block), IB = I / kFp8Block;
  int const rows = clamp_to(r1 - r0, kFp8TileM);
  int const cols = clamp_to(H - n0, kMmaTileN);
  float const* ws = segment_weights(w.down_scale_inv, last.down_scale_inv, s, S, HB * IB) +
                    (n0 / kFp8Block) * IB;  // one block: 128 rows
  float8_e4m3fn const* wd = segment_weights(w.down_proj, last.down_proj, s, S, H * I) + n0 * I;
  float acc[2][4][4] = {};
  fp8_mainloop(acc, hq + r0 * I, h_scale + r0 * IB, rows, wd, ws, cols < 64 ? cols : 64,
               wd + 64 * I, ws, cols - 64, I, smem_bytes);
  store_out_tile(out + r0 * H + n0, H, acc, rows, cols);
}
#endif  // __CUDACC__
}  // namespace detail

/// ok when the fp8 path can run H and I on the current device: both multiples of 128, compute
/// capability ≥ 8.9, and this build has code for it from compute_89 or later (the default
/// architectures, 90a and 80, give that on Hopper only); else invalid_argument naming what is
/// missing.
inline Status grouped_swiglu_fp8_supported(std::int64_t H, std::int64_t I) {
  if (H < 128 || I < 128 || H % 128 != 0 || I % 128 != 0) {
    std::string m = "gpu::grouped_swiglu_fp8: hidden size ";
    m += std::to_string(H);
    m += " and width ";
    m += std::to_string(I);
    m += " must be multiples of 128 (the 1×128 activation tiles)";
    return invalid_argument(m);
  }
  // an Ada card runs the sm_80 build and a newer one compute_80's PTX: no e4m3 mma there
  return detail::check_mma_target("gpu::grouped_swiglu_fp8", detail::gate_up_fp8_kernel, 89,
                                  "e4m3 mma.sync (Ada, Hopper)", "89, 90a or later");
}

/// Quantizes rows to e4m3 with one scale per 1×128 block on `stream` (file comment).
/// Asynchronous.
/// @tparam In        float or bfloat16
/// @param d_q        [rows, K] float8_e4m3fn, device, out
/// @param d_scales   [rows, K/128] fp32, device, out
/// @param d_x        [rows, K] In, device, in
/// @param rows, K    K a multiple of 128
/// @returns invalid_argument for negative rows or K not a multiple of 128; kCudaError for a
///          failed launch.
template <class In>
Status quantize_rows_fp8(float8_e4m3fn* d_q, float* d_scales, In const* d_x, std::int64_t rows,
                         std::int64_t K, cudaStream_t stream) {
  if (rows < 0 || K < 0 || K % detail::kFp8Block != 0) {
    return invalid_argument("gpu::quantize_rows_fp8: rows ≥ 0 and K a multiple of 128");
  }
  std::int64_t const warps = rows * (K / detail::kFp8Block);
  if (warps == 0) {
    return {};
  }
  detail::quantize_rows_fp8_kernel<In>
      <<<static_cast<unsigned>(ceil_div(warps, 8)), 256, 0, stream>>>(d_q, d_scales, d_x, rows, K);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

/// Device scratch of grouped_swiglu_fp8 for R rows of width I (bf16 hidden, its e4m3 copy and
/// scales), each piece 256-byte aligned: R·I·2 + R·I + R·(I/128)·4 bytes, rounded up.
inline std::size_t grouped_swiglu_fp8_workspace_bytes(std::int64_t R, std::int64_t I) {
  auto const r = static_cast<std::size_t>(R), i = static_cast<std::size_t>(I);
  auto up = [](std::size_t n) { return (n + 255) / 256 * 256; };
  return up(r * i * 2) + up(r * i) + up(r * (i / detail::kFp8Block) * 4);
}

/// Runs S SwiGLU MLPs over their row segments with fp8 weights and activations, on `stream`
/// (file comment). Asynchronous.
/// @param d_out          [R, H] fp32, device, out (rows outside every segment are not written)
/// @param d_xq           [R, H] float8_e4m3fn, device, in: the rows, quantized (quantize_rows_fp8)
/// @param d_x_scale      [R, H/128] fp32, device, in: their 1×128 scales
/// @param d_offsets      [S + 1] int32, device: segment s is rows [offsets[s], offsets[s+1])
/// @param d_tile_starts  [S + 1] int32, device: scratch (the row-tile schedule)
/// @param S              segments (≥ 1)
/// @param R              the rows of all segments, offsets[S] (the grid's bound and the hidden
///                       rows quantized)
/// @param w              the S stacked e4m3 weights with their weight_scale_inv
/// @param H, I           hidden size and width: multiples of 128
/// @param d_workspace    grouped_swiglu_fp8_workspace_bytes(R, I) bytes of device scratch
/// @param last           weights and scales for the last segment instead of w's (S−1)-th,
///                       when given (all of gate/up/down_proj, or none): grouped_swiglu_mma's
///                       `last`
/// @returns invalid_argument for unsupported sizes or device (grouped_swiglu_fp8_supported),
///          S < 1, R < 0, null scales, a partial `last`, a grid beyond CUDA's limits, or an
///          operand not 16-byte aligned (out: 8-byte); kCudaError for a failed launch.
/// @pre the segments are ordered and cover [0, R); outputs overlap nothing.
inline Status grouped_swiglu_fp8(float* d_out, float8_e4m3fn const* d_xq, float const* d_x_scale,
                                 std::int32_t const* d_offsets, std::int32_t* d_tile_starts, int S,
                                 std::int64_t R, DeviceSwiGluWeights<float8_e4m3fn> const& w,
                                 std::int64_t H, std::int64_t I, void* d_workspace,
                                 cudaStream_t stream,
                                 DeviceSwiGluWeights<float8_e4m3fn> const& last = {}) {
  DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_fp8_supported(H, I));
  std::int64_t tiles = 0;
  DEEPMOE_RETURN_IF_ERROR(
      detail::check_grouped_operands("gpu::grouped_swiglu_fp8", tiles, S, R, H, I, d_out, last,
                                     {d_xq, d_workspace, w.gate_proj, w.up_proj, w.down_proj,
                                      last.gate_proj, last.up_proj, last.down_proj}));
  if (w.gate_scale_inv == nullptr || w.up_scale_inv == nullptr || w.down_scale_inv == nullptr ||
      (last.gate_proj != nullptr &&
       (last.gate_scale_inv == nullptr || last.up_scale_inv == nullptr ||
        last.down_scale_inv == nullptr))) {
    return invalid_argument("gpu::grouped_swiglu_fp8: the weights' weight_scale_inv are null");
  }
  if (R == 0) {
    return {};
  }
  auto* base = static_cast<unsigned char*>(d_workspace);
  auto const uR = static_cast<std::size_t>(R), uI = static_cast<std::size_t>(I);
  auto up = [](std::size_t n) { return (n + 255) / 256 * 256; };
  auto* hidden = reinterpret_cast<bfloat16*>(base);
  auto* hq = reinterpret_cast<float8_e4m3fn*>(base + up(uR * uI * 2));
  auto* h_scale = reinterpret_cast<float*>(base + up(uR * uI * 2) + up(uR * uI));
  constexpr int smem = static_cast<int>(detail::kFp8SmemBytes);
  DEEPMOE_CUDA_CHECK(cudaFuncSetAttribute(detail::gate_up_fp8_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  DEEPMOE_CUDA_CHECK(cudaFuncSetAttribute(detail::down_fp8_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  detail::tile_starts_kernel<<<1, detail::kScanThreads, 0, stream>>>(d_tile_starts, d_offsets, S);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  dim3 const up_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(ceil_div(I, 64)));
  detail::gate_up_fp8_kernel<<<up_grid, detail::kMmaThreads, smem, stream>>>(
      hidden, d_xq, d_x_scale, d_offsets, d_tile_starts, S, w, last, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  DEEPMOE_RETURN_IF_ERROR(quantize_rows_fp8(hq, h_scale, hidden, R, I, stream));
  dim3 const down_grid(static_cast<unsigned>(tiles),
                       static_cast<unsigned>(ceil_div(H, detail::kMmaTileN)));
  detail::down_fp8_kernel<<<down_grid, detail::kMmaThreads, smem, stream>>>(
      d_out, hq, h_scale, d_offsets, d_tile_starts, S, w, last, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
