// SPDX-License-Identifier: Apache-2.0
/// @file rope_yarn.hpp
/// @brief Rotary position embedding with YaRN scaling, on the checkpoints' interleaved pairs.
///
/// Frequencies (d = qk_rope_head_dim, b = rope_theta, s = factor, L0 =
/// original_max_position_embeddings):
///   extra[i] = b^(−2i/d), inter[i] = extra[i]/s                       for i in [0, d/2)
///   corr(r)  = d·ln(L0/(2π·r)) / (2·ln b)
///   low = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), d−1),
///   high += 0.001 if low == high; ramp[i] = clamp((i − low)/(high − low), 0, 1)
///   inv_freq[i] = inter[i]·ramp[i] + extra[i]·(1 − ramp[i])
/// so dims up to `low` keep their frequency and dims from `high` are divided by s; without
/// rope_scaling inv_freq = extra. The angle θ = position·inv_freq[i] is formed in fp32.
/// Rotation of pair i = (x[2i], x[2i+1]) (GPT-J "interleaved" layout, as stored in the
/// checkpoints and used by DeepSeek's and vLLM's code):
///   y[2i] = x[2i]·cosθ − x[2i+1]·sinθ,  y[2i+1] = x[2i]·sinθ + x[2i+1]·cosθ
/// (Hugging Face de-interleaves first and rotates halves: the same rotation in another order,
/// giving identical attention scores.) cos and sin are multiplied by attention_factor =
/// mscale(s, mscale)/mscale(s, mscale_all_dim) as Hugging Face does (1 for every released model;
/// DeepSeek's code never scales them). The attention softmax scale is
/// (dn+dr)^−0.5 · mscale(s, mscale_all_dim)², with mscale(s, m) = 1 if s ≤ 1 else 0.1·m·ln s + 1.
/// Sources: YaRN, arXiv:2309.00071; DeepSeek-V3 inference/model.py `precompute_freqs_cis`;
/// arXiv:2412.19437 §4.3; docs/model.md.
#pragma once

#include <deepmoe/config/model_config.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN

/// mscale(s, m) = 1 if s ≤ 1, else 0.1·m·ln(s) + 1 (YaRN's attention temperature).
inline double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

/// The YaRN correction range [low, high] of rotary dims for `dim` = qk_rope_head_dim (see file
/// comment). DeepSeek-V3: low 10, high 23; Kimi-K2 (β 1/1, base 50000): low 19, high 20.
struct YarnRange {
  double low;
  double high;
};
inline YarnRange yarn_range(int dim, double theta, config::RopeScaling const& rs) {
  auto corr = [&](double rotations) {
    return dim *
           std::log(rs.original_max_position_embeddings / (2.0 * std::numbers::pi * rotations)) /
           (2.0 * std::log(theta));
  };
  double const low = std::max(std::floor(corr(rs.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(rs.beta_slow)), static_cast<double>(dim - 1));
  if (low == high) {
    high += 0.001;  // NOTES: as the reference implementations do, to avoid a zero-width ramp
  }
  return {low, high};
}

/// The dim/2 rotary frequencies inv_freq[i] [radians per position], computed in double and
/// rounded to fp32 (see file comment); plain RoPE when rs.type is kNone.
/// @param dim    qk_rope_head_dim, even and ≥ 2
/// @param theta  rope_theta > 1
inline std::vector<float> rope_inv_freq(int dim, double theta, config::RopeScaling const& rs) {
  std::vector<float> inv(static_cast<std::size_t>(dim / 2));
  bool const yarn = rs.type == config::RopeScalingType::kYarn;
  YarnRange const r = yarn ? yarn_range(dim, theta, rs) : YarnRange{0, 1};
  for (int i = 0; i < dim / 2; ++i) {
    double const extra = std::pow(theta, -2.0 * i / dim);
    double f = extra;
    if (yarn) {
      double const ramp = std::clamp((i - r.low) / (r.high - r.low), 0.0, 1.0);
      f = extra / rs.factor * ramp + extra * (1.0 - ramp);
    }
    inv[static_cast<std::size_t>(i)] = static_cast<float>(f);
  }
  return inv;
}

/// Hugging Face's attention_factor: the magnitude of cos and sin, mscale(s, mscale) /
/// mscale(s, mscale_all_dim) (0.1·ln s + 1 when mscale_all_dim is absent, i.e. 0); 1 without
/// YaRN and for every released model.
inline double yarn_attention_factor(config::RopeScaling const& rs) {
  if (rs.type != config::RopeScalingType::kYarn) {
    return 1.0;
  }
  if (rs.mscale_all_dim == 0.0) {
    return yarn_mscale(rs.factor, 1.0);
  }
  return yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim);
}

/// The attention softmax scale (dn+dr)^−0.5 · mscale(s, mscale_all_dim)² (with YaRN; without
/// it, (dn+dr)^−0.5). DeepSeek-V3 0.1352338, V2-Lite 0.1147214, Kimi-K2 0.1308608, Moonlight
/// 0.0721688. The absorbed 576-wide attention must use this scale too, not 576^−0.5.
inline double mla_softmax_scale(int qk_head_dim, config::RopeScaling const& rs) {
  double const m =
      rs.type == config::RopeScalingType::kYarn ? yarn_mscale(rs.factor, rs.mscale_all_dim) : 1.0;
  return m * m / std::sqrt(static_cast<double>(qk_head_dim));
}

/// Rotates, in place, every `dim`-wide segment of each row of x by its row's position:
/// segment j of row t is x[t, j·dim, (j+1)·dim), rotated pairwise by θ = positions[t]·inv_freq
/// (interleaved layout, fp32; cos/sin times `attention_factor`).
/// @param x                 [T, n·dim] fp32, in/out (e.g. the q_pe of n heads, or one k_pe)
/// @param positions         [T] absolute positions ≥ 0 [tokens]
/// @param inv_freq          [dim/2] from rope_inv_freq
/// @param attention_factor  from yarn_attention_factor
/// @returns invalid_argument for a row width that is not a multiple of dim, mismatched lengths,
///          null views or a negative position (naming the row).
inline Status apply_rope(MatrixView<float> x, VectorView<std::int64_t const> positions,
                         VectorView<float const> inv_freq, double attention_factor = 1.0) {
  std::int64_t const T = x.extent(0), W = x.extent(1), half = inv_freq.extent(0);
  std::int64_t const dim = 2 * half;
  if (half < 1 || W % dim != 0 || positions.extent(0) != T) {
    return invalid_argument("apply_rope: x is [" + std::to_string(T) + ", " + std::to_string(W) +
                            "], positions [" + std::to_string(positions.extent(0)) +
                            "], inv_freq [" + std::to_string(half) +
                            "]; the row width must be a multiple of 2·" + std::to_string(half) +
                            " and there must be one position per row");
  }
  DEEPMOE_RETURN_IF_ERROR(require_data("apply_rope", "x", x.data(), x.size()));
  DEEPMOE_RETURN_IF_ERROR(require_data("apply_rope", "positions", positions.data(), T));
  DEEPMOE_RETURN_IF_ERROR(require_data("apply_rope", "inv_freq", inv_freq.data(), half));
  for (std::int64_t t = 0; t < T; ++t) {
    if (positions(t) < 0) {
      return invalid_argument("apply_rope: positions[" + std::to_string(t) +
                              "] = " + std::to_string(positions(t)) + " is negative");
    }
  }
  float const af = static_cast<float>(attention_factor);
  DEEPMOE_OMP(omp parallel for schedule(static) if (T * W >= (1 << 16)))
  for (std::int64_t t = 0; t < T; ++t) {
    float const pos = static_cast<float>(positions(t));
    float* row = x.data() + t * W;
    for (std::int64_t i = 0; i < half; ++i) {
      float const theta = pos * inv_freq(i);
      float const c = std::cos(theta) * af, s = std::sin(theta) * af;
      for (std::int64_t j = 0; j < W; j += dim) {
        float const a = row[j + 2 * i], b = row[j + 2 * i + 1];
        row[j + 2 * i] = a * c - b * s;
        row[j + 2 * i + 1] = a * s + b * c;
      }
    }
  }
  return {};
}

DEEPMOE_NAMESPACE_END
