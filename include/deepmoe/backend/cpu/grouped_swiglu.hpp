// SPDX-License-Identifier: Apache-2.0
/// @file grouped_swiglu.hpp
/// @brief CPU grouped SwiGLU: many row segments, each through its own MLP, in one parallel pass.
///
/// For each segment s with rows X_s [n_s, H] and weights (W_g, W_u [I, H], W_d [H, I]):
///   A_s = silu(X_s·W_gᵀ) ⊙ (X_s·W_uᵀ)   [n_s, I]   (phase 1)
///   Y_s = A_s · W_dᵀ                     [n_s, H]   (phase 2)
/// Work items are (segment, panel of panel_rows(K) weight rows); OpenMP threads take them
/// dynamically. Each output element is written by exactly one item and computed by
/// cpu::gemm_nt, so results are bitwise independent of the thread count and of the other
/// segments and rows (batch invariance).
#pragma once

#include <deepmoe/backend/cpu/gemm_nt.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <cstdint>
#include <span>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace cpu {

/// Weight rows per work item for weights K wide: as many as keep the fp32 panel within
/// 128 KiB (so the gate and up panels stay in a 1 MiB L2 while a segment's rows stream past),
/// a multiple of 4 in [4, 16]: 16 for K = 2048, 8 for K = 2816, 4 for K = 7168.
constexpr std::int64_t panel_rows(std::int64_t kd) noexcept {
  std::int64_t const fit = (std::int64_t{128} << 10) / (4 * (kd > 0 ? kd : 1));
  std::int64_t const rows = fit < 4 ? 4 : fit > 16 ? 16 : fit;
  return rows / 4 * 4;
}
inline constexpr std::int64_t kMaxPanelRows = 16;

/// One segment of a grouped SwiGLU: n rows through one MLP of width `inter`.
template <class W>
struct SwiGluSegment {
  SwiGluWeights<W> const* weights;  ///< the MLP's three weights
  float const* x;                   ///< [n, H] fp32, in
  float* hidden;                    ///< [n, inter] fp32, scratch: the SwiGLU activations A
  float* y;                         ///< [n, H] fp32, out
  std::int64_t n;                   ///< rows [tokens]
  std::int64_t inter;               ///< I: the MLP's intermediate size
};

/// Runs every segment: seg.hidden = swiglu(seg.x·W_gᵀ, seg.x·W_uᵀ), seg.y = seg.hidden·W_dᵀ.
/// @param segments     the segments; empty ones (n = 0) are skipped
/// @param hidden_size  H [elements]
/// @param block        fp8 scale-block edge B (ignored for other weight types)
/// @pre shapes and weights already checked (check_swiglu_weights); every segment's hidden holds
///      n·inter floats and y n·H; no output overlaps another segment's buffers or any input.
template <class W>
void grouped_swiglu(std::span<SwiGluSegment<W> const> segments, std::int64_t hidden_size,
                    int block) {
  std::int64_t const H = hidden_size;
  // Items of phase 1 (panels over I) and phase 2 (panels over H), segment by segment.
  std::vector<std::int64_t> first1(segments.size() + 1, 0), first2(segments.size() + 1, 0);
  for (std::size_t s = 0; s < segments.size(); ++s) {
    bool const active = segments[s].n > 0;
    std::int64_t const r1 = panel_rows(H), r2 = panel_rows(segments[s].inter);
    first1[s + 1] = first1[s] + (active ? (segments[s].inter + r1 - 1) / r1 : 0);
    first2[s + 1] = first2[s] + (active ? (H + r2 - 1) / r2 : 0);
  }
  std::int64_t max_n = 0, max_inter = 0;
  for (auto const& seg : segments) {
    max_n = seg.n > max_n ? seg.n : max_n;
    max_inter = seg.inter > max_inter ? seg.inter : max_inter;
  }
  if (max_n == 0) {
    return;
  }
  // The segment owning item `i` of a phase (first[s] <= i < first[s+1]).
  auto owner = [](std::vector<std::int64_t> const& first, std::int64_t i) {
    std::size_t lo = 0, hi = first.size() - 1;
    while (hi - lo > 1) {
      std::size_t const mid = (lo + hi) / 2;
      (first[mid] <= i ? lo : hi) = mid;
    }
    return lo;
  };
  std::int64_t const items1 = first1.back(), items2 = first2.back();

  DEEPMOE_OMP(omp parallel)
  {
    std::int64_t const kmax = H > max_inter ? H : max_inter;
    std::vector<float> panel_g(static_cast<std::size_t>(kMaxPanelRows * kmax));
    std::vector<float> panel_u(static_cast<std::size_t>(kMaxPanelRows * H));
    std::vector<float> up(static_cast<std::size_t>(max_n * kMaxPanelRows));

    DEEPMOE_OMP(omp for schedule(dynamic))
    for (std::int64_t item = 0; item < items1; ++item) {
      SwiGluSegment<W> const& seg = segments[owner(first1, item)];
      std::int64_t const rows = panel_rows(H);
      std::int64_t const r0 = (item - first1[owner(first1, item)]) * rows;
      std::int64_t const r1 = r0 + rows < seg.inter ? r0 + rows : seg.inter;
      std::int64_t const nr = r1 - r0;
      linear_rows(seg.hidden + r0, seg.inter, seg.x, H, seg.n, seg.weights->gate_proj, r0, r1,
                  block, panel_g.data());
      linear_rows(up.data(), nr, seg.x, H, seg.n, seg.weights->up_proj, r0, r1, block,
                  panel_u.data());
      for (std::int64_t i = 0; i < seg.n; ++i) {
        float* a = seg.hidden + i * seg.inter + r0;
        float const* u = up.data() + i * nr;
        for (std::int64_t c = 0; c < nr; ++c) {
          a[c] = swiglu(a[c], u[c]);
        }
      }
    }
    // (implicit barrier: phase 2 reads every column of A)
    DEEPMOE_OMP(omp for schedule(dynamic))
    for (std::int64_t item = 0; item < items2; ++item) {
      SwiGluSegment<W> const& seg = segments[owner(first2, item)];
      std::int64_t const rows = panel_rows(seg.inter);
      std::int64_t const r0 = (item - first2[owner(first2, item)]) * rows;
      std::int64_t const r1 = r0 + rows < H ? r0 + rows : H;
      linear_rows(seg.y + r0, H, seg.hidden, seg.inter, seg.n, seg.weights->down_proj, r0, r1,
                  block, panel_g.data());
    }
  }
}

}  // namespace cpu
DEEPMOE_NAMESPACE_END
