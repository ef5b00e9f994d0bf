// SPDX-License-Identifier: Apache-2.0
/// @file tensor_view.hpp
/// @brief Extents and TensorView: non-owning, row-major views with static and dynamic extents.
///
/// An extent is either a compile-time number or the sentinel kDyn (known at run time), in the
/// manner of std::mdspan's extents, Eigen's Dynamic and CuTe's Int<N>/int. A layer's views put
/// the config's sizes in the type — `TensorView<float const, Extents<kDyn, C::hidden_size>>` is a
/// [T, H] matrix whose H is fixed by the config — so a view of the wrong width does not compile,
/// and only the token count T is checked at run time.
#pragma once

#include <deepmoe/core/macros.hpp>

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

DEEPMOE_NAMESPACE_BEGIN

/// Sentinel for an extent known only at run time.
inline constexpr std::int64_t kDyn = -1;

/// The sizes of a row-major tensor; each of `Es` is a size >= 0 or kDyn.
template <std::int64_t... Es>
class Extents {
 public:
  static_assert(((Es >= 0 || Es == kDyn) && ...), "Extents: each extent is >= 0 or kDyn");
  static constexpr int rank = sizeof...(Es);
  static constexpr int rank_dynamic = ((Es == kDyn ? 1 : 0) + ... + 0);
  static constexpr std::array<std::int64_t, sizeof...(Es)> static_extents{Es...};

  /// Takes the run-time extents, in order, one per kDyn.
  template <std::integral... Ints>
  requires(sizeof...(Ints) == rank_dynamic) constexpr explicit Extents(Ints... dynamic) noexcept
      : dynamic_{static_cast<std::int64_t>(dynamic)...} {}

  /// Extent of dimension i.
  constexpr std::int64_t extent(int i) const noexcept {
    int d = 0;
    for (int j = 0; j < i; ++j) {
      d += static_extents[static_cast<std::size_t>(j)] == kDyn ? 1 : 0;
    }
    std::int64_t const s = static_extents[static_cast<std::size_t>(i)];
    return s == kDyn ? dynamic_[static_cast<std::size_t>(d)] : s;
  }
  /// Number of elements: the product of the extents.
  constexpr std::int64_t size() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank; ++i) {
      n *= extent(i);
    }
    return n;
  }

 private:
  std::array<std::int64_t, static_cast<std::size_t>(rank_dynamic)> dynamic_{};
};

/// A non-owning view of a contiguous row-major tensor of `T` with extents `E`.
/// @tparam T element type; `T const` for read-only views.
/// @tparam E an Extents<...>.
/// Host memory here; the CUDA backend uses the same type over device pointers.
template <class T, class E>
class TensorView {
 public:
  using element_type = T;
  using extents_type = E;
  static constexpr int rank = E::rank;

  constexpr TensorView() noexcept : data_(nullptr), extents_(make_zero_extents()) {}
  /// View of `data` with the run-time extents `dynamic...`, one per kDyn of E.
  template <std::integral... Ints>
  requires(sizeof...(Ints) ==
           E::rank_dynamic) constexpr explicit TensorView(T* data, Ints... dynamic) noexcept
      : data_(data), extents_(dynamic...) {}
  constexpr TensorView(T* data, E extents) noexcept : data_(data), extents_(extents) {}
  /// View of `data` given every extent in order, static ones included (they are not stored;
  /// the caller guarantees they equal E's). Generic code over configs whose sizes may be
  /// static or dynamic builds its views with this.
  template <std::integral... Ints>
  requires(sizeof...(Ints) == E::rank) static constexpr TensorView
      of(T* data, Ints... all) noexcept {
    std::array<std::int64_t, sizeof...(Ints)> const a{static_cast<std::int64_t>(all)...};
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return TensorView(data, E(a[dynamic_dim(I)]...));
    }
    (std::make_index_sequence<static_cast<std::size_t>(E::rank_dynamic)>{});
  }
  /// A view of non-const elements converts to a view of const ones.
  template <class U>
  requires(std::is_same_v<T, U const> && !std::is_const_v<U>) constexpr TensorView(
      TensorView<U, E> other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr E const& extents() const noexcept { return extents_; }
  constexpr std::int64_t extent(int i) const noexcept { return extents_.extent(i); }
  constexpr std::int64_t size() const noexcept { return extents_.size(); }
  constexpr bool empty() const noexcept { return size() == 0; }
  /// All elements as one span.
  constexpr std::span<T> span() const noexcept { return {data_, static_cast<std::size_t>(size())}; }

  /// Element at (i0, i1, ...), row-major; no bounds check.
  template <std::integral... Is>
  requires(sizeof...(Is) == E::rank) constexpr T& operator()(Is... is) const noexcept {
    std::array<std::int64_t, sizeof...(Is)> const idx{static_cast<std::int64_t>(is)...};
    std::int64_t off = 0;
    for (int d = 0; d < rank; ++d) {
      off = off * extent(d) + idx[static_cast<std::size_t>(d)];
    }
    return data_[off];
  }

  /// Row i of a rank-2 view as a span of extent(1) elements.
  constexpr std::span<T> row(std::int64_t i) const noexcept requires(E::rank == 2) {
    std::int64_t const n = extent(1);
    return {data_ + i * n, static_cast<std::size_t>(n)};
  }

 private:
  // the dimension of the k-th dynamic extent
  static constexpr std::size_t dynamic_dim(std::size_t k) noexcept {
    for (std::size_t d = 0; d < E::static_extents.size(); ++d) {
      if (E::static_extents[d] == kDyn && k-- == 0) {
        return d;
      }
    }
    return 0;
  }
  static constexpr E make_zero_extents() noexcept {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return E((static_cast<void>(I), std::int64_t{0})...);
    }
    (std::make_index_sequence<static_cast<std::size_t>(E::rank_dynamic)>{});
  }

  T* data_;
  E extents_;
};

/// Rank-1 view of `n` elements (or of the static N).
template <class T, std::int64_t N = kDyn>
using VectorView = TensorView<T, Extents<N>>;
/// Rank-2 row-major view [R, C].
template <class T, std::int64_t R = kDyn, std::int64_t C = kDyn>
using MatrixView = TensorView<T, Extents<R, C>>;

DEEPMOE_NAMESPACE_END
