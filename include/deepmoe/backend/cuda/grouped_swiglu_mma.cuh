// SPDX-License-Identifier: Apache-2.0
/// @file grouped_swiglu_mma.cuh
/// @brief Stage 3 of the MoE layer on tensor cores: each expert's SwiGLU MLP over its contiguous
/// segment of permuted rows as a bf16 grouped GEMM with fp32 accumulation (mma.sync m16n8k16,
/// SM80 and later).
///
/// For segment s and each row r in [offsets[s], offsets[s+1]):
///   hidden[r] = bf16( silu(x[r]·W_gate[s]ᵀ) ⊙ (x[r]·W_up[s]ᵀ) )   [I]   (fp32 products)
///   out[r]    = hidden[r]·W_down[s]ᵀ                               [H]   fp32
/// Rows and weights are bf16, every product is accumulated in fp32, and the SwiGLU activation is
/// rounded to bf16 once before the down projection — the arithmetic of DeepSeek-V3's bf16
/// inference (inference/model.py, class Expert: w2(silu(w1(x)) * w3(x)) with bf16 tensors).
/// It differs from the fp32 SIMT path (grouped_swiglu.cuh, the CPU's arithmetic) by that rounding
/// and by the order of the fp32 sums; tests state the tolerance.
///
/// Tiling (CUTLASS vocabulary): a threadblock tile of 64 rows × 128 B-rows × 64 k, three
/// cp.async stages (72 KiB of shared memory, swizzled 128-byte slabs, mma_sm80.cuh: each stage
/// reads 128-byte runs of every weight row, which DRAM serves better than 64-byte ones; K % 64
/// == 32 leaves the last stage's second half zero), 8 warps of 32 × 32
/// (2 × 4). For gate/up the 128 B-rows are 64 gate rows and the same 64 up rows, so a thread
/// holds the gate and up sums of the same outputs and applies the SwiGLU in registers. The down
/// projection's 128 B-rows are 128 output columns.
///
/// Scheduling without the host: a one-block kernel scans the segment sizes on the device into
/// tile_starts[s] = Σ_{s' < s} ⌈rows(s') / 64⌉; block x of the grid is row tile x, it finds its
/// segment by binary search (segment_of_tile), and blocks past the last tile return at once. The
/// grid's x extent is the bound ⌈R / 64⌉ + S. Consecutive blocks share a column tile of the
/// same expert's weights, which they read close together in time (L2 reuse across row tiles).
///
/// Each output element is a fixed-order fp32 sum over its row and column only: a row's result
/// does not depend on which other rows share its expert or tile (batch invariance), and runs
/// are deterministic.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu.cuh>
#include <deepmoe/backend/cuda/mma_sm80.cuh>
#include <deepmoe/backend/cuda/tile_schedule.hpp>
#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {
namespace detail {
constexpr int kMmaTileM = 64;     // rows per threadblock tile
constexpr int kMmaTileN = 128;    // B rows per threadblock tile (gate/up: 64 + 64)
constexpr int kMmaTileK = 64;     // k per stage: 128-byte runs of each row
constexpr int kMmaStages = 3;     // cp.async pipeline depth
constexpr int kMmaThreads = 256;  // 8 warps, 2 (m) × 4 (n), 32 × 32 outputs each
constexpr std::size_t kMmaSmemBytes =
    std::size_t{kMmaStages} * (kMmaTileM + kMmaTileN) * kSlabBytes;  // 72 KiB

#if defined(__CUDACC__)
// tile_starts[s] = Σ_{s' < s} ⌈(offsets[s'+1] − offsets[s']) / 64⌉, s = 0…S; one block.
constexpr int kScanThreads = 1024;
__global__ inline void __launch_bounds__(kScanThreads)
    tile_starts_kernel(std::int32_t* __restrict__ tile_starts,
                       std::int32_t const* __restrict__ offsets, int S) {
  using Scan = cub::BlockScan<std::int32_t, kScanThreads>;
  __shared__ typename Scan::TempStorage scratch;
  std::int32_t carry = 0;  // uniform: every thread adds the same totals
  if (threadIdx.x == 0) {
    tile_starts[0] = 0;
  }
  for (int base = 0; base < S; base += kScanThreads) {
    int const s = base + static_cast<int>(threadIdx.x);
    std::int32_t const n = s < S ? row_tiles(offsets[s + 1] - offsets[s], kMmaTileM) : 0;
    std::int32_t inclusive = 0, total = 0;
    Scan(scratch).InclusiveSum(n, inclusive, total);
    if (s < S) {
      tile_starts[s + 1] = carry + inclusive;
    }
    carry += total;
    __syncthreads();  // scratch is reused by the next chunk
  }
}

// acc[mi][nj] += A-tile · B-tileᵀ for this warp's 32 × 32 outputs (file comment's tiling).
// A: a_rows valid rows of K bf16 from a (row stride K); B-tile rows 0…63 from b0 (b0_rows
// valid), rows 64…127 from b1 (b1_rows valid); invalid rows read as zeros. K % 32 == 0.
__device__ inline void mma_mainloop(float (&acc)[2][4][4], bfloat16 const* __restrict__ a,
                                    int a_rows, bfloat16 const* __restrict__ b0, int b0_rows,
                                    bfloat16 const* __restrict__ b1, int b1_rows, std::int64_t K,
                                    unsigned char* smem) {
  int const tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  int const wm = warp >> 2, wn = warp & 3;
  constexpr int kStage = (kMmaTileM + kMmaTileN) * kSlabBytes;  // bytes per stage
  auto load = [&](int stage, std::int64_t kb) {
    unsigned char* sa = smem + stage * kStage;
    unsigned char* sb = sa + kMmaTileM * kSlabBytes;
    for (int c = tid; c < 64 * 8; c += kMmaThreads) {  // 64 rows × 8 chunks of 8 values
      int const row = c >> 3, chunk = c & 7;
      std::int64_t const k = kb * kMmaTileK + chunk * 8;
      bool const in_k = k < K;  // K % 64 == 32: the last stage's second half reads zeros
      bool const va = in_k && row < a_rows, v0 = in_k && row < b0_rows, v1 = in_k && row < b1_rows;
      cp_async_16(sa + slab_offset(row, chunk * 16), va ? a + row * K + k : a, va);
      cp_async_16(sb + slab_offset(row, chunk * 16), v0 ? b0 + row * K + k : b0, v0);
      cp_async_16(sb + slab_offset(row + 64, chunk * 16), v1 ? b1 + row * K + k : b0, v1);
    }
  };
  std::int64_t const nk = ceil_div(K, kMmaTileK);
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < nk) {
      load(s, s);
    }
    cp_async_commit();
  }
  for (std::int64_t kb = 0; kb < nk; ++kb) {
    cp_async_wait<kMmaStages - 2>();  // k-block kb has landed (this thread's copies)
    __syncthreads();  // … everyone's; and everyone is done with the stage refilled below
    if (std::int64_t const next = kb + kMmaStages - 1; next < nk) {
      load(static_cast<int>(next % kMmaStages), next);
    }
    cp_async_commit();
    unsigned char const* sa = smem + static_cast<int>(kb % kMmaStages) * kStage;
    unsigned char const* sb = sa + kMmaTileM * kSlabBytes;
    for (int kk = 0; kk < kMmaTileK; kk += 16) {
      unsigned af[2][4], bf[2][4];
      for (int mi = 0; mi < 2; ++mi) {  // rows wm·32 + mi·16 + (lane % 16), k + 8·(lane / 16)
        ldmatrix_x4(af[mi],
                    sa + slab_offset(wm * 32 + mi * 16 + (lane & 15), 2 * (kk + (lane >> 4) * 8)));
      }
      for (int h = 0; h < 2; ++h) {  // B rows h·64 + wn·16 + 8·(lane / 16) + lane % 8
        int const row = h * 64 + wn * 16 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrix_x4(bf[h], sb + slab_offset(row, 2 * (kk + ((lane >> 3) & 1) * 8)));
      }
      for (int mi = 0; mi < 2; ++mi) {
        for (int nj = 0; nj < 4; ++nj) {
          int const h = nj >> 1, t = nj & 1;
          mma_bf16_16816(acc[mi][nj], af[mi], bf[h][2 * t], bf[h][2 * t + 1]);
        }
      }
    }
  }
  cp_async_wait<0>();
}

// min(n, limit) as int, n ≥ 0
__device__ inline int clamp_to(std::int64_t n, int limit) {
  return n < limit ? static_cast<int>(n) : limit;
}

// Segment s's weights: the s-th of the stack (`per` elements each), or `last` for the last
// segment when it is given (a separately stored shared expert run with the routed ones).
template <class W>
__device__ inline W const* segment_weights(W const* stack, W const* last, int s, int S,
                                           std::int64_t per) {
  return last != nullptr && s == S - 1 ? last : stack + s * per;
}

// Row tile and segment of this block, or false past the last tile.
__device__ inline bool locate_tile(std::int64_t& r0, std::int64_t& r1, int& s,
                                   std::int32_t const* offsets, std::int32_t const* tile_starts,
                                   int S) {
  auto const i = static_cast<std::int32_t>(blockIdx.x);
  if (i >= tile_starts[S]) {
    return false;
  }
  s = segment_of_tile(tile_starts, S, i);
  r0 = offsets[s] + static_cast<std::int64_t>(i - tile_starts[s]) * kMmaTileM;
  r1 = offsets[s + 1];
  return true;
}

// The epilogues. A thread's acc[mi][nj][q] is output (row, B-row) of the block tile with
//   row   = wm·32 + mi·16 + lane/4 + 8·(q/2)
//   B-row = 64·(nj/2) + wn·16 + 8·(nj%2) + 2·(lane%4) + q%2     (mma_bf16_16816's d layout)

// hidden[row, col] = bf16(silu(gate)·up) for the tile's rows < rows, cols < cols; gate in
// B-rows 0…63 (n-tiles 0, 1 of each warp), up in B-rows 64…127 (n-tiles 2, 3): the same columns.
__device__ inline void store_swiglu_tile(bfloat16* __restrict__ hidden, std::int64_t ld,
                                         float const (&acc)[2][4][4], int rows, int cols) {
  int const lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  int const wm = warp >> 2, wn = warp & 3;
  for (int mi = 0; mi < 2; ++mi) {
    for (int nj = 0; nj < 2; ++nj) {
      for (int q = 0; q < 4; ++q) {
        int const row = wm * 32 + mi * 16 + (lane >> 2) + (q >> 1) * 8;
        int const col = wn * 16 + nj * 8 + (lane & 3) * 2 + (q & 1);
        if (row < rows && col < cols) {
          hidden[row * ld + col] = bfloat16(swiglu(acc[mi][nj][q], acc[mi][nj + 2][q]));
        }
      }
    }
  }
}

// out[row, B-row] = acc (fp32) for rows < rows, B-rows < cols, as pairs of columns (cols even,
// out 8-byte aligned, ld even).
__device__ inline void store_out_tile(float* __restrict__ out, std::int64_t ld,
                                      float const (&acc)[2][4][4], int rows, int cols) {
  int const lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  int const wm = warp >> 2, wn = warp & 3;
  for (int mi = 0; mi < 2; ++mi) {
    for (int nj = 0; nj < 4; ++nj) {
      for (int q = 0; q < 4; q += 2) {
        int const row = wm * 32 + mi * 16 + (lane >> 2) + (q >> 1) * 8;
        int const col = (nj >> 1) * 64 + wn * 16 + (nj & 1) * 8 + (lane & 3) * 2;
        if (row < rows && col < cols) {
          *reinterpret_cast<float2*>(out + row * ld + col) =
              make_float2(acc[mi][nj][q], acc[mi][nj][q + 1]);
        }
      }
    }
  }
}

// hidden = bf16(silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)); grid (⌈R/64⌉ + S, ⌈I/64⌉)
__global__ inline void __launch_bounds__(kMmaThreads)
    gate_up_mma_kernel(bfloat16* __restrict__ hidden, bfloat16 const* __restrict__ x,
                       std::int32_t const* __restrict__ offsets,
                       std::int32_t const* __restrict__ tile_starts, int S,
                       DeviceSwiGluWeights<bfloat16> w, DeviceSwiGluWeights<bfloat16> last,
                       std::int64_t H, std::int64_t I) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  std::int64_t r0 = 0, r1 = 0;
  int s = 0;
  if (!locate_tile(r0, r1, s, offsets, tile_starts, S)) {
    return;  // uniform over the block, before any barrier
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * 64;
  int const rows = clamp_to(r1 - r0, kMmaTileM);
  int const cols = clamp_to(I - n0, 64);
  float acc[2][4][4] = {};
  mma_mainloop(acc, x + r0 * H, rows,
               segment_weights(w.gate_proj, last.gate_proj, s, S, I * H) + n0 * H, cols,
               segment_weights(w.up_proj, last.up_proj, s, S, I * H) + n0 * H, cols, H, smem_bytes);
  store_swiglu_tile(hidden + r0 * I + n0, I, acc, rows, cols);
}

// out = hidden·W_downᵀ (fp32); grid (⌈R/64⌉ + S, ⌈H/128⌉)
__global__ inline void __launch_bounds__(kMmaThreads)
    down_mma_kernel(float* __restrict__ out, bfloat16 const* __restrict__ hidden,
                    std::int32_t const* __restrict__ offsets,
                    std::int32_t const* __restrict__ tile_starts, int S,
                    DeviceSwiGluWeights<bfloat16> w, DeviceSwiGluWeights<bfloat16> last,
                    std::int64_t H, std::int64_t I) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  std::int64_t r0 = 0, r1 = 0;
  int s = 0;
  if (!locate_tile(r0, r1, s, offsets, tile_starts, S)) {
    return;
  }
  std::int64_t const n0 = static_cast<std::int64_t>(blockIdx.y) * kMmaTileN;
  int const rows = clamp_to(r1 - r0, kMmaTileM);
  int const cols = clamp_to(H - n0, kMmaTileN);
  float acc[2][4][4] = {};
  bfloat16 const* wd = segment_weights(w.down_proj, last.down_proj, s, S, H * I) + n0 * I;
  mma_mainloop(acc, hidden + r0 * I, rows, wd, cols < 64 ? cols : 64, wd + 64 * I, cols - 64, I,
               smem_bytes);
  store_out_tile(out + r0 * H + n0, H, acc, rows, cols);
}
#endif  // __CUDACC__
}  // namespace detail

namespace detail {
/// ok when the current device has compute capability ≥ sm/10 and the code it will run for
/// `kernel` was built for compute_sm or later (below, the tensor-core instruction `what` is a
/// trap); else invalid_argument from `fn` naming the capability or the build, with `add` the
/// DEEPMOE_CUDA_ARCHITECTURES entries that fix it. Errors of the CUDA queries as kCudaError.
template <class Kernel>
Status check_mma_target(char const* fn, Kernel* kernel, int sm, char const* what, char const* add) {
  int device = 0, major = 0, minor = 0;
  DEEPMOE_CUDA_CHECK(cudaGetDevice(&device));
  DEEPMOE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  DEEPMOE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  std::string m = fn;  // NOTES: appends, not "lit" + string (GCC 12's -Wrestrict)
  if (major * 10 + minor < sm) {
    m += ": compute capability ";
    m += std::to_string(major);
    m += '.';
    m += std::to_string(minor);
    m += " has no ";
    m += what;
    return invalid_argument(m);
  }
  cudaFuncAttributes attributes{};
  DEEPMOE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.ptxVersion < sm) {
    m += ": this device runs code built for compute_";
    m += std::to_string(attributes.ptxVersion);
    m += ", which has no ";
    m += what;
    m += "; add ";
    m += add;
    m += " to DEEPMOE_CUDA_ARCHITECTURES";
    return invalid_argument(m);
  }
  return {};
}

/// The argument checks both tensor-core entry points share (`fn` names the caller): S ≥ 1,
/// R ≥ 0; `last` all of gate/up/down_proj or none; out 8-byte aligned (pairs of fp32 stores)
/// and `operands` 16-byte aligned (cp.async); the grid within CUDA's limits. Sets `tiles` to
/// the row tiles per column tile, ⌈R/64⌉ + S.
template <class W>
Status check_grouped_operands(char const* fn, std::int64_t& tiles, int S, std::int64_t R,
                              std::int64_t H, std::int64_t I, float const* out,
                              DeviceSwiGluWeights<W> const& last,
                              std::initializer_list<void const*> operands) {
  auto error = [fn](char const* what) {
    std::string m = fn;  // NOTES: appends, not "lit" + string (GCC 12's -Wrestrict)
    m += ": ";
    m += what;
    return invalid_argument(m);
  };
  if (S < 1 || R < 0) {
    return error("S must be ≥ 1 and R ≥ 0");
  }
  bool const some =
      last.gate_proj != nullptr || last.up_proj != nullptr || last.down_proj != nullptr;
  if (some && (last.gate_proj == nullptr || last.up_proj == nullptr || last.down_proj == nullptr)) {
    return error("`last` gives all of gate/up/down_proj or none");
  }
  if (reinterpret_cast<std::uintptr_t>(out) % 8 != 0) {
    return error("out must be 8-byte aligned (pairs of fp32 stores)");
  }
  for (void const* p : operands) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) {
      return error("rows, scratch and weights must be 16-byte aligned (cp.async)");
    }
  }
  tiles = ceil_div(R, kMmaTileM) + S;
  if (tiles > 0x7fffffff || ceil_div(H, kMmaTileN) > 65535 || ceil_div(I, 64) > 65535) {
    return error("the rows or sizes exceed the grid");
  }
  return {};
}
}  // namespace detail

/// ok when the tensor-core path can run H and I on the current device: both multiples of 32,
/// compute capability ≥ 8.0, and this build has code for it from compute_80 or later; else
/// invalid_argument naming what is missing.
inline Status grouped_swiglu_mma_supported(std::int64_t H, std::int64_t I) {
  if (H < 32 || I < 32 || H % 32 != 0 || I % 32 != 0) {
    std::string m = "gpu::grouped_swiglu_mma: hidden size ";  // NOTES: not "lit" + string,
    m += std::to_string(H);                                   // GCC 12's -Wrestrict
    m += " and width ";
    m += std::to_string(I);
    m += " must be multiples of 32 (use grouped_swiglu, the SIMT path)";
    return invalid_argument(m);
  }
  return detail::check_mma_target("gpu::grouped_swiglu_mma", detail::gate_up_mma_kernel, 80,
                                  "bf16 mma.sync", "80 or later");
}

/// Runs S SwiGLU MLPs over their row segments on tensor cores, on `stream` (file comment).
/// Asynchronous.
/// @param d_out          [R, H] fp32, device, out (rows outside every segment are not written)
/// @param d_hidden       [R, I] bf16, device: scratch, the rounded SwiGLU activations
/// @param d_x            [R, H] bf16, device, in: the rows, segment after segment
/// @param d_offsets      [S + 1] int32, device: segment s is rows [offsets[s], offsets[s+1])
/// @param d_tile_starts  [S + 1] int32, device: scratch (the row-tile schedule)
/// @param S              segments (≥ 1)
/// @param R              an upper bound on offsets[S], the rows of all segments (it sizes the
///                       grid: ⌈R/64⌉ + S blocks per column tile)
/// @param w              the S stacked bf16 weights: [S, I, H], [S, I, H], [S, H, I]
/// @param H, I           hidden size and width: multiples of 32
/// @param last           weights for the last segment instead of w's (S−1)-th, when given
///                       (all of gate/up/down_proj, or none): a shared expert stored apart,
///                       run in the same launches as the routed ones
/// @returns invalid_argument for unsupported sizes or device (grouped_swiglu_mma_supported),
///          S < 1, R < 0, a grid beyond CUDA's limits, a partial `last`, or an operand not
///          16-byte aligned (out: 8-byte);
///          kCudaError for a failed launch.
/// @pre the segments are ordered and lie within [0, R); outputs overlap nothing.
inline Status grouped_swiglu_mma(float* d_out, bfloat16* d_hidden, bfloat16 const* d_x,
                                 std::int32_t const* d_offsets, std::int32_t* d_tile_starts, int S,
                                 std::int64_t R, DeviceSwiGluWeights<bfloat16> const& w,
                                 std::int64_t H, std::int64_t I, cudaStream_t stream,
                                 DeviceSwiGluWeights<bfloat16> const& last = {}) {
  DEEPMOE_RETURN_IF_ERROR(grouped_swiglu_mma_supported(H, I));
  std::int64_t tiles = 0;
  DEEPMOE_RETURN_IF_ERROR(
      detail::check_grouped_operands("gpu::grouped_swiglu_mma", tiles, S, R, H, I, d_out, last,
                                     {d_x, d_hidden, w.gate_proj, w.up_proj, w.down_proj,
                                      last.gate_proj, last.up_proj, last.down_proj}));
  if (R == 0) {
    return {};
  }
  constexpr int smem = static_cast<int>(detail::kMmaSmemBytes);
  DEEPMOE_CUDA_CHECK(cudaFuncSetAttribute(detail::gate_up_mma_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  DEEPMOE_CUDA_CHECK(cudaFuncSetAttribute(detail::down_mma_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  detail::tile_starts_kernel<<<1, detail::kScanThreads, 0, stream>>>(d_tile_starts, d_offsets, S);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  dim3 const up_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(ceil_div(I, 64)));
  detail::gate_up_mma_kernel<<<up_grid, detail::kMmaThreads, smem, stream>>>(
      d_hidden, d_x, d_offsets, d_tile_starts, S, w, last, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  dim3 const down_grid(static_cast<unsigned>(tiles),
                       static_cast<unsigned>(ceil_div(H, detail::kMmaTileN)));
  detail::down_mma_kernel<<<down_grid, detail::kMmaThreads, smem, stream>>>(
      d_out, d_hidden, d_offsets, d_tile_starts, S, w, last, H, I);
  DEEPMOE_CUDA_CHECK(cudaGetLastError());
  return {};
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
