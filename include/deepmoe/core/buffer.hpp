// SPDX-License-Identifier: Apache-2.0
/// @file buffer.hpp
/// @brief Buffer<T>: grow-only, uninitialized host scratch memory for workspaces.
#pragma once

#include <deepmoe/core/macros.hpp>

#include <cstddef>
#include <memory>
#include <new>

DEEPMOE_NAMESPACE_BEGIN

/// Scratch storage that keeps its allocation between calls and never initializes it, so a
/// workspace reused across steps of different sizes allocates only when it must grow.
template <class T>
class Buffer {
 public:
  /// Storage for at least `n` elements, or nullptr if it cannot be allocated (no exception);
  /// the contents are unspecified (and lost on growth). The old block is freed before the new
  /// one is allocated, so growing never needs both at once.
  T* get(std::size_t n) {
    if (n > capacity_) {
      data_.reset();
      capacity_ = 0;
      data_.reset(new (std::nothrow) T[n]);
      if (!data_) {
        return nullptr;
      }
      capacity_ = n;
    }
    return data_.get();
  }
  /// Elements allocated.
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::unique_ptr<T[]> data_;
  std::size_t capacity_ = 0;
};

DEEPMOE_NAMESPACE_END
