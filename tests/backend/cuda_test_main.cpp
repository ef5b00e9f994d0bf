// SPDX-License-Identifier: Apache-2.0
// The Catch2 runner of the CUDA tests, compiled by the host compiler (Catch2's implementation
// stays out of the nvcc translation units). Without a CUDA device it prints SKIPPED and exits
// 77, CTest's SKIP_RETURN_CODE.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <deepmoe/backend/cuda/buffer.cuh>

#include <cstdio>

int main(int argc, char** argv) {
  if (!deepmoe::gpu::device_available()) {
    std::puts("SKIPPED: no CUDA device — the CUDA backend's tests did not run");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
