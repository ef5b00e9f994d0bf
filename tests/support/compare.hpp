// SPDX-License-Identifier: Apache-2.0
/// @file compare.hpp
/// @brief How the model tests compare logits: max relative difference and bitwise equality.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace deepmoe::test {

/// max_i |a_i − b_i| / max_i |b_i| (b is the reference).
inline double max_rel_diff(std::vector<float> const& a, std::vector<float> const& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double{a[i]} - double{b[i]}));
    den = std::max(den, std::fabs(double{b[i]}));
  }
  return num / den;
}

/// The same length and the same bits (so −0 ≠ +0 and NaN payloads count).
inline bool same_bits(std::vector<float> const& a, std::vector<float> const& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
           return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
         });
}

}  // namespace deepmoe::test
