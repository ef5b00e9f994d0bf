// SPDX-License-Identifier: Apache-2.0
/// @file buffer.cuh
/// @brief DeviceBuffer<T>: an owning, move-only array in device memory, with host copies.
#pragma once

#include <deepmoe/backend/cuda/check.cuh>

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// n elements of a trivially copyable T in device memory (cudaMalloc), freed on destruction.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceBuffer() {
    if (p_ != nullptr) {
      static_cast<void>(cudaFree(p_));
    }
  }

  /// Replaces the contents with `n` uninitialized elements.
  /// @returns kCudaError when the allocation fails.
  Status allocate(std::size_t n) {
    *this = DeviceBuffer();
    if (n > 0) {
      DEEPMOE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    }
    n_ = n;
    return {};
  }
  /// Allocates host.size() elements and copies `host` into them (synchronously).
  Status upload(std::span<T const> host) {
    DEEPMOE_RETURN_IF_ERROR(allocate(host.size()));
    if (!host.empty()) {
      DEEPMOE_CUDA_CHECK(cudaMemcpy(p_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
    }
    return {};
  }
  /// Copies every element to `host` (resized; synchronously).
  Status download(std::vector<T>& host) const {
    host.resize(n_);
    if (n_ > 0) {
      DEEPMOE_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return {};
  }

  T* data() noexcept { return p_; }                 ///< device pointer
  T const* data() const noexcept { return p_; }     ///< device pointer
  std::size_t size() const noexcept { return n_; }  ///< elements

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Whether a CUDA device is usable (cudaGetDeviceCount succeeds with ≥ 1 device).
inline bool device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
