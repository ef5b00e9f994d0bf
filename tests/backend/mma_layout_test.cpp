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

TEST_CASE("slab_offset: a bijection, 16-byte chunks kept whole", "[cuda][layout]") {
  constexpr int rows = 128;
  std::set<int> seen;
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < gpu::detail::kSlabK; ++k) {
      int const o = gpu::detail::slab_offset(r, k);
      CHECK(o / gpu::detail::kSlabK == r);                     // stays in its row
      CHECK(o % 8 == k % 8);                                   // chunks whole
      CHECK(gpu::detail::slab_offset(r, k - k % 8) % 8 == 0);  // 16-byte aligned
      seen.insert(o);
    }
  CHECK(seen.size() == static_cast<std::size_t>(rows * gpu::detail::kSlabK));
  CHECK(*seen.rbegin() == rows * gpu::detail::kSlabK - 1);
}

TEST_CASE("slab_offset: every ldmatrix phase and cp.async row group is bank-conflict free",
          "[cuda][layout]") {
  // An ldmatrix phase reads eight 16-byte rows r0…r0+7 (r0 % 8 == 0) at one logical chunk; the
  // eight must land in eight distinct 16-byte groups of the 128-byte bank window.
  for (int r0 = 0; r0 < 128; r0 += 8)
    for (int chunk = 0; chunk < 4; ++chunk) {
      std::set<int> groups;
      for (int r = r0; r < r0 + 8; ++r) {
        int const byte = 2 * gpu::detail::slab_offset(r, 8 * chunk);
        groups.insert((byte / 16) % 8);
      }
      CHECK(groups.size() == 8);
    }
}

TEST_CASE("slab8_offset: a bijection, chunks whole, every ldmatrix phase conflict free",
          "[cuda][layout]") {
  std::set<int> seen;
  for (int r = 0; r < 192; ++r)
    for (int k = 0; k < gpu::detail::kSlab8K; ++k) {
      int const o = gpu::detail::slab8_offset(r, k);
      CHECK(o / gpu::detail::kSlab8K == r);
      CHECK(o % 16 == k % 16);
      seen.insert(o);
    }
  CHECK(seen.size() == 192u * gpu::detail::kSlab8K);
  for (int r0 = 0; r0 < 192; r0 += 8)
    for (int chunk = 0; chunk < 8; ++chunk) {
      std::set<int> groups;
      for (int r = r0; r < r0 + 8; ++r)
        groups.insert((gpu::detail::slab8_offset(r, 16 * chunk) / 16) % 8);
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
