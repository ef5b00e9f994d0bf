// SPDX-License-Identifier: Apache-2.0
// The host-device layout arithmetic of the tensor-core kernels, on the CPU: the shared-memory
// slab swizzle (mma_sm80.cuh) and the row-tile schedule over expert segments (tile_schedule.hpp).
#include <deepmoe/backend/cuda/mma_sm80.cuh>
#include <deepmoe/backend/cuda/tile_schedule.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <set>
#include <vector>

using namespace deepmoe;

TEST_CASE("slab_offset: a bijection, chunks whole, every ldmatrix phase conflict free",
          "[cuda][layout]") {
  std::set<int> seen;
  for (int r = 0; r < 192; ++r)
    for (int k = 0; k < gpu::detail::kSlabBytes; ++k) {
      int const o = gpu::detail::slab_offset(r, k);
      CHECK(o / gpu::detail::kSlabBytes == r);
      CHECK(o % 16 == k % 16);
      seen.insert(o);
    }
  CHECK(seen.size() == 192u * gpu::detail::kSlabBytes);
  for (int r0 = 0; r0 < 192; r0 += 8)
    for (int chunk = 0; chunk < 8; ++chunk) {
      std::set<int> groups;
      for (int r = r0; r < r0 + 8; ++r)
        groups.insert((gpu::detail::slab_offset(r, 16 * chunk) / 16) % 8);
      CHECK(groups.size() == 8);
    }
}

TEST_CASE("segment_of_tile: tiles over segments, empty ones skipped", "[cuda][layout]") {
  constexpr std::int32_t M = 64;
  std::vector<std::int32_t> const rows{0, 1, 64, 65, 0, 0, 200, 0};
  std::vector<std::int32_t> starts{0};
  std::vector<int> owner;  // the segment of each tile, by construction
  for (std::size_t s = 0; s < rows.size(); ++s) {
    std::int32_t const n = gpu::row_tiles(rows[s], M);
    for (std::int32_t t = 0; t < n; ++t)
      owner.push_back(static_cast<int>(s));
    starts.push_back(starts.back() + n);
  }
  CHECK(starts.back() == 0 + 1 + 1 + 2 + 0 + 0 + 4 + 0);
  int const S = static_cast<int>(rows.size());
  for (std::int32_t i = 0; i < starts.back(); ++i) {
    CAPTURE(i);
    CHECK(gpu::segment_of_tile(starts.data(), S, i) == owner[static_cast<std::size_t>(i)]);
  }
  std::int32_t const one[] = {0, 3};
  CHECK(gpu::segment_of_tile(one, 1, 2) == 0);
}
