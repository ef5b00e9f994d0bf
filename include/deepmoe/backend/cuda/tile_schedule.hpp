// SPDX-License-Identifier: Apache-2.0
/// @file tile_schedule.hpp
/// @brief Row tiles over expert segments, the schedule of the grouped GEMMs: segment s of
/// rows [offsets[s], offsets[s+1]) is cut into ⌈rows(s) / M⌉ tiles of M rows, numbered across
/// segments in order, tile_starts[s] = Σ_{s' < s} ⌈rows(s') / M⌉. A threadblock given tile i
/// finds its segment by binary search (segment_of_tile). Host-device: the kernels compute it,
/// tests check it on the CPU (tests/backend/mma_layout_test.cpp).
#pragma once

#include <deepmoe/core/macros.hpp>

#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// ⌈rows / M⌉: the tiles of a segment of `rows` ≥ 0 rows, M > 0.
DEEPMOE_HOST_DEVICE constexpr std::int32_t row_tiles(std::int32_t rows, std::int32_t M) {
  return (rows + M - 1) / M;
}

/// The segment s holding tile i: tile_starts[s] ≤ i < tile_starts[s + 1]. tile_starts has S + 1
/// nondecreasing entries from 0 and 0 ≤ i < tile_starts[S]; empty segments are never returned.
DEEPMOE_HOST_DEVICE inline int segment_of_tile(std::int32_t const* tile_starts, int S,
                                               std::int32_t i) {
  int lo = 0, hi = S;  // invariant: tile_starts[lo] ≤ i < tile_starts[hi]
  while (hi - lo > 1) {
    int const mid = (lo + hi) / 2;
    if (tile_starts[mid] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
