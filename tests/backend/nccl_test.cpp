// SPDX-License-Identifier: Apache-2.0
/// @file nccl_test.cpp
/// @brief gpu::Communicator on one rank (every GPU machine has one device): all-reduce is the
/// identity, all-to-all with counts copies to itself, bad arguments are named. Multi-rank runs
/// need several devices or processes and are not part of this test. Without a CUDA device the
/// program prints SKIPPED and exits 77, CTest's SKIP_RETURN_CODE.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/backend/cuda/communicator.cuh>

#include <cstdio>
#include <span>
#include <vector>

using namespace deepmoe;

TEST_CASE("gpu::Communicator: one rank", "[nccl]") {
  ncclUniqueId id;
  REQUIRE(gpu::Communicator::unique_id(id).ok());
  gpu::Communicator c;
  CHECK(gpu::Communicator::init(id, 1, 1, c).code() == StatusCode::kInvalidArgument);
  Status const st = gpu::Communicator::init(id, 1, 0, c);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(c.size() == 1);
  std::vector<float> const x{1.0f, -2.5f, 3.0f, 0.25f, 7.0f};
  gpu::DeviceBuffer<float> d_x, d_y;
  REQUIRE(d_x.upload(std::span<float const>(x)).ok());
  REQUIRE(d_y.allocate(x.size()).ok());
  REQUIRE(c.all_reduce_sum(d_x.data(), d_y.data(), x.size(), nullptr).ok());
  std::vector<float> y;
  REQUIRE(d_y.download(y).ok());
  CHECK(y == x);
  std::size_t const counts[] = {x.size()};
  REQUIRE(c.all_to_all<float>(d_x.data(), counts, d_y.data(), counts, nullptr).ok());
  REQUIRE(d_y.download(y).ok());
  CHECK(y == x);
  std::size_t const two[] = {2, 3};
  CHECK(c.all_to_all<float>(d_x.data(), two, d_y.data(), counts, nullptr).code() ==
        StatusCode::kInvalidArgument);
}

int main(int argc, char** argv) {
  if (!gpu::device_available()) {
    std::puts("SKIPPED: no CUDA device — the NCCL test did not run");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
