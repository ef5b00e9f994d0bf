// SPDX-License-Identifier: Apache-2.0
/// @file buffer.hpp
/// @brief Buffer<T>: grow-only, uninitialized host scratch memory for workspaces.
#pragma once

#include <deepmoe/core/macros.hpp>

#include <cstddef>
#include <memory>

DEEPMOE_NAMESPACE_BEGIN

/// Scratch storage that keeps its allocation between calls and never initializes it, so a
/// workspace reused across steps of different sizes allocates only when it must grow.
template <class T>
class Buffer {
 public:
  /// Storage for at least `n` elements; the contents are unspecified (and lost on growth).
  T* get(std::size_t n) {
    if (n > capacity_) {
      data_ = std::make_unique_for_overwrite<T[]>(n);
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
