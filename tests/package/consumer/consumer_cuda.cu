// SPDX-License-Identifier: Apache-2.0
// Compiles the CUDA backend's tensor-core experts through deepmoe::cuda and calls their host
// side, which refuses sizes it cannot run before touching a device (none is needed); prints
// "ok cuda" on success.
#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>

#include <cstdio>

int main() {
  deepmoe::Status const st = deepmoe::gpu::grouped_swiglu_mma_supported(100, 64);
  if (st.code() != deepmoe::StatusCode::kInvalidArgument) {
    std::printf("expected invalid_argument, got: %s\n", st.to_string().c_str());
    return 1;
  }
  std::printf("ok cuda: %s\n", st.message().c_str());
  return 0;
}
