// SPDX-License-Identifier: Apache-2.0
/// @file macros.hpp
/// @brief The few macros deepmoe needs: the versioned namespace and host/device markers.
#pragma once

#define DEEPMOE_VERSION_MAJOR 0
#define DEEPMOE_VERSION_MINOR 1
#define DEEPMOE_VERSION_PATCH 0

/// Opens `deepmoe` with an inline namespace named after the major version, so that two
/// incompatible versions of these headers linked into one program do not violate the ODR
/// (the scheme nlohmann/json and CUB use).
#define DEEPMOE_NAMESPACE_BEGIN \
  namespace deepmoe {           \
  inline namespace v0 {
#define DEEPMOE_NAMESPACE_END \
  }                           \
  }

/// Marks functions that are compiled for both host and device when the translation unit is
/// compiled by nvcc; a no-op for host compilers.
#if defined(__CUDACC__)
#define DEEPMOE_HOST_DEVICE __host__ __device__
#else
#define DEEPMOE_HOST_DEVICE
#endif

/// Forces inlining of the small per-element helpers of the numeric types and kernels.
#if defined(__GNUC__) || defined(__clang__)
#define DEEPMOE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DEEPMOE_ALWAYS_INLINE inline
#endif

/// An OpenMP directive that exists only when OpenMP is on: `DEEPMOE_OMP(omp parallel for)`.
/// Without -fopenmp the code runs on one thread and compilers see no unknown pragma.
#if defined(_OPENMP)
#define DEEPMOE_OMP(directive) _Pragma(#directive)
#else
#define DEEPMOE_OMP(directive)
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif
DEEPMOE_NAMESPACE_BEGIN
/// The threads a parallel region would use: omp_get_max_threads(), or 1 without OpenMP.
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}
DEEPMOE_NAMESPACE_END
