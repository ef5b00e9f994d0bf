// SPDX-License-Identifier: Apache-2.0
/// @file mma_sm80.cuh
/// @brief The warp-level tensor-core pieces the backend's mma kernels share (SM80 and later:
/// Ampere, and Hopper through its mma.sync path): asynchronous global → shared copies
/// (cp.async), shared → register fragments (ldmatrix), the bf16 m16n8k16 and (SM89+) e4m3
/// m16n8k32 products with fp32 accumulation (mma.sync), and the shared-memory swizzle of their
/// 128-byte k-slabs.
///
/// Source: PTX ISA §9.7.13 (mma.sync m16n8k16 fragment layouts), §9.7.9.25 (ldmatrix),
/// §9.7.9.25.3 (cp.async). The layouts a thread's registers hold are stated where used.
/// The layout arithmetic (swizzle) is host-device and tested on the CPU (tests/backend/
/// mma_layout_test.cpp); the instructions themselves only run on a GPU.
#pragma once

#include <deepmoe/core/macros.hpp>

#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {
namespace detail {

/// A shared-memory slab of 128-byte rows — a k-slice of 64 bf16 or 128 e4m3 values per row,
/// eight 16-byte chunks. Chunk c of row r lives at chunk c ^ (r & 7) of that row: the eight
/// 16-byte rows one ldmatrix phase reads (rows r0…r0+7, r0 a multiple of 8, one logical chunk)
/// fall in eight distinct 16-byte bank groups, so no bank conflicts (tested on the CPU). Rows
/// of 128 bytes also make every global read of a stage a 128-byte run of one weight row.
constexpr int kSlabBytes = 128;
/// Byte offset of (row, byte) in a slab, byte in [0, 128).
DEEPMOE_HOST_DEVICE constexpr int slab_offset(int row, int byte) {
  return row * kSlabBytes + (((byte >> 4) ^ (row & 7)) << 4) + (byte & 15);
}

#if defined(__CUDACC__)
__device__ inline unsigned shared_address(void const* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

/// 16 bytes global → shared, asynchronously; zero-filled when !valid (src is then not read).
__device__ inline void cp_async_16(void* smem, void const* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
#elif defined(__CUDA_ARCH__)
  __trap();  // NOTES: code built below SM80; grouped_swiglu_mma_supported refuses to launch it
#endif
}
__device__ inline void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
/// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ inline void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/// Four 8×8 b16 matrices shared → registers: lanes 8i…8i+7 give the row addresses of matrix
/// i, and r[i] holds, in lane l, that matrix's elements (l / 4, 2·(l % 4) + {0, 1}).
__device__ inline void ldmatrix_x4(unsigned (&r)[4], void const* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(smem)));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

/// d += a·b for one m16n8k16 tile, bf16 inputs, fp32 accumulation. Lane l holds
///   a: (l/4, 2(l%4)+{0,1}), (l/4+8, ·), (l/4, 2(l%4)+8+{0,1}), (l/4+8, ·+8)   [row m, col k]
///   b: (k = 2(l%4)+{0,1}, n = l/4), (k + 8, n)                                 [k, n]
///   d: (l/4, 2(l%4)+{0,1}), (l/4+8, 2(l%4)+{0,1})                              [m, n]
__device__ inline void mma_bf16_16816(float (&d)[4], unsigned const (&a)[4], unsigned b0,
                                      unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

/// d += a·b for one m16n8k32 tile of float8_e4m3fn inputs, fp32 accumulation (SM89 and later:
/// Ada, Hopper). Lane l holds, four e4m3 values per register (k ascending in the bytes),
///   a: (l/4, 4(l%4)+{0…3}), (l/4+8, ·), (l/4, 16+4(l%4)+{0…3}), (l/4+8, ·+16)   [m, k]
///   b: (k = 4(l%4)+{0…3}, n = l/4), (k + 16, n)                                  [k, n]
///   d: as mma_bf16_16816's.
__device__ inline void mma_e4m3_16832(float (&d)[4], unsigned const (&a)[4], unsigned b0,
                                      unsigned b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
  __trap();  // NOTES: code built below SM89; grouped_swiglu_fp8_supported refuses to launch it
#endif
}
#endif  // __CUDACC__

}  // namespace detail
}  // namespace gpu
DEEPMOE_NAMESPACE_END
