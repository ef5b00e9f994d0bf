// SPDX-License-Identifier: Apache-2.0
/// @file check.cuh
/// @brief CUDA runtime errors as Status, and ceil_div for launch grids.
///
/// The CUDA backend lives in namespace deepmoe::gpu (headers under backend/cuda/). NOTES: not
/// deepmoe::cuda — libcu++ (CCCL, which CUB includes) owns the global namespace ::cuda, so
/// `using namespace deepmoe;` would make every `cuda::` ambiguous.
#pragma once

#include <deepmoe/core/status.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// A Status of `code` reading "<what>: <message> (<file>:<line>)" — what the CUDA and NCCL
/// checks return for a failed call.
inline Status located_error(StatusCode code, char const* what, char const* message,
                            char const* file, int line) {
  std::string m = what;
  m += ": ";
  m += message;
  m += " (";
  m += file;
  m += ':';
  m += std::to_string(line);
  m += ')';
  return Status(code, std::move(m));
}

/// ok for cudaSuccess, else kCudaError: "<what>: <error name>: <description> (<file>:<line>)".
inline Status check(cudaError_t e, char const* what, char const* file, int line) {
  if (e == cudaSuccess) {
    return {};
  }
  std::string m = cudaGetErrorName(e);
  m += ": ";
  m += cudaGetErrorString(e);
  return located_error(StatusCode::kCudaError, what, m.c_str(), file, line);
}

/// ⌈a / b⌉ for a ≥ 0, b > 0.
DEEPMOE_HOST_DEVICE constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

namespace detail {
/// n rounded up to a multiple of 256 bytes (how workspaces align their pieces).
constexpr std::size_t align_up(std::size_t n) {
  return (n + 255) / 256 * 256;
}
}  // namespace detail

}  // namespace gpu
DEEPMOE_NAMESPACE_END

/// Returns the Status of a failed CUDA runtime call (gpu::check) from the enclosing function.
#define DEEPMOE_CUDA_CHECK(expr)                                                                  \
  do {                                                                                            \
    ::deepmoe::Status deepmoe_status_ = ::deepmoe::gpu::check((expr), #expr, __FILE__, __LINE__); \
    if (!deepmoe_status_.ok()) {                                                                  \
      return deepmoe_status_;                                                                     \
    }                                                                                             \
  } while (0)
