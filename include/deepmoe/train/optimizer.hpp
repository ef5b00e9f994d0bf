// SPDX-License-Identifier: Apache-2.0
/// @file optimizer.hpp
/// @brief The optimizer side of DeepSeek-V3's training recipe (docs/model.md; spec §6): AdamW,
/// global gradient-norm clipping, the warmup / constant / cosine learning-rate schedule, and
/// the aux-loss-free balancing update of e_score_correction_bias.
///
///   AdamW (Loshchilov & Hutter, arXiv:1711.05101; PyTorch torch.optim.AdamW, step t ≥ 1):
///     θ ← θ·(1 − lr·wd)                      (decoupled decay; wd = 0 for excluded tensors)
///     m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²
///     θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
///   clipping:  n = ‖g‖₂ over every tensor; g ← g · c/(n + 1e-6) when n > c
///   schedule:  lr(s) = peak·s/warmup (s < warmup); peak until decay_start; then
///              final + (peak − final)·(1 + cos(π·u))/2, u = (s − decay_start)/decay_steps ≤ 1
///   balancing: b_i ← b_i + γ·sign(mean_j load_j − load_i) per MoE layer after each step
///              (arXiv:2412.19437 §2.1.2), loads counted over the step's real tokens
/// DeepSeek-V3: β1 0.9, β2 0.95, wd 0.1, clip 1.0, peak 2.2e-4 after 2K warmup steps, cosine to
/// 2.2e-5, γ = 0.001.
#pragma once

#include <deepmoe/core/status.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// AdamW hyper-parameters (defaults: DeepSeek-V3's).
struct AdamWParams {
  double beta1 = 0.9;         ///< first-moment decay β1
  double beta2 = 0.95;        ///< second-moment decay β2
  double eps = 1e-8;          ///< ε added to √v̂
  double weight_decay = 0.1;  ///< decoupled decay wd (tensors with ParamRef::decay)
};

/// One parameter tensor for the optimizer: its values, its gradient and whether weight decay
/// applies (the usual exclusions — norm weights, biases — are the caller's choice). Host fp32.
struct ParamRef {
  std::span<float> value;       ///< θ, updated in place
  std::span<float const> grad;  ///< g, the same size
  bool decay = true;            ///< apply weight decay
};

/// AdamW over a fixed list of tensors, with fp32 moments.
class AdamW {
 public:
  /// An optimizer for tensors of these sizes (in the order step() will receive them).
  AdamW(AdamWParams const& p, std::span<std::size_t const> sizes) : p_(p) {
    for (std::size_t n : sizes) {
      m_.emplace_back(n, 0.0f);
      v_.emplace_back(n, 0.0f);
    }
  }

  /// One update at learning rate `lr` (file comment).
  /// @returns invalid_argument when the tensors differ in number or size from construction
  ///          (checked before any tensor or the step count changes).
  Status step(std::span<ParamRef const> params, double lr) {
    if (params.size() != m_.size()) {
      return invalid_argument("AdamW::step: " + std::to_string(params.size()) +
                              " tensors, the optimizer has " + std::to_string(m_.size()));
    }
    for (std::size_t i = 0; i < params.size(); ++i) {  // all checked before anything changes
      ParamRef const& q = params[i];
      if (q.value.size() != m_[i].size() || q.grad.size() != m_[i].size()) {
        return invalid_argument("AdamW::step: tensor " + std::to_string(i) + " has " +
                                std::to_string(q.value.size()) + " values and " +
                                std::to_string(q.grad.size()) + " gradients, expected " +
                                std::to_string(m_[i].size()));
      }
    }
    ++t_;
    double const c1 = 1.0 - std::pow(p_.beta1, static_cast<double>(t_));
    double const c2 = std::sqrt(1.0 - std::pow(p_.beta2, static_cast<double>(t_)));
    for (std::size_t i = 0; i < params.size(); ++i) {
      ParamRef const& q = params[i];
      float const decay = static_cast<float>(1.0 - lr * (q.decay ? p_.weight_decay : 0.0));
      float const b1 = static_cast<float>(p_.beta1), b2 = static_cast<float>(p_.beta2);
      float const step = static_cast<float>(lr / c1), sc2 = static_cast<float>(c2);
      float const eps = static_cast<float>(p_.eps);
      float* m = m_[i].data();
      float* v = v_[i].data();
      for (std::size_t k = 0; k < q.value.size(); ++k) {
        float const g = q.grad[k];
        m[k] = b1 * m[k] + (1.0f - b1) * g;
        v[k] = b2 * v[k] + (1.0f - b2) * g * g;
        q.value[k] = q.value[k] * decay - step * m[k] / (std::sqrt(v[k]) / sc2 + eps);
      }
    }
    return {};
  }

  /// Steps taken.
  std::int64_t steps() const noexcept { return t_; }
  /// The first moment m of tensor i (for checkpoints).
  std::span<float const> first_moment(std::size_t i) const { return m_[i]; }
  /// The second moment v of tensor i (for checkpoints).
  std::span<float const> second_moment(std::size_t i) const { return v_[i]; }
  /// Restores a saved state: the step count and every tensor's moments, in construction order.
  /// @returns invalid_argument when the number or the sizes of the tensors differ.
  Status restore(std::int64_t steps, std::span<std::span<float const> const> m,
                 std::span<std::span<float const> const> v) {
    if (m.size() != m_.size() || v.size() != v_.size()) {
      return invalid_argument("AdamW::restore: " + std::to_string(m.size()) + " tensors, the " +
                              "optimizer has " + std::to_string(m_.size()));
    }
    for (std::size_t i = 0; i < m_.size(); ++i) {
      if (m[i].size() != m_[i].size() || v[i].size() != v_[i].size()) {
        return invalid_argument("AdamW::restore: tensor " + std::to_string(i) + " has " +
                                std::to_string(m[i].size()) + " moments, expected " +
                                std::to_string(m_[i].size()));
      }
    }
    for (std::size_t i = 0; i < m_.size(); ++i) {
      std::copy(m[i].begin(), m[i].end(), m_[i].begin());
      std::copy(v[i].begin(), v[i].end(), v_[i].begin());
    }
    t_ = steps;
    return {};
  }

 private:
  AdamWParams p_;
  std::int64_t t_ = 0;
  std::vector<std::vector<float>> m_, v_;
};

/// Scales every gradient so that their global L2 norm is at most `max_norm` (norm summed in
/// double, tensors and elements in order).
/// @param grads     the gradients, scaled in place
/// @param max_norm  c > 0; a value ≤ 0 or NaN disables clipping
/// @returns the norm before clipping.
inline double clip_grad_norm(std::span<std::span<float> const> grads, double max_norm) {
  double ss = 0;
  for (auto g : grads)
    for (float x : g)
      ss += double{x} * x;
  double const norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    auto const scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (auto g : grads)
      for (float& x : g)
        x *= scale;
  }
  return norm;
}

/// The learning rate at a step: linear warmup, constant, cosine decay, then constant.
struct LrSchedule {
  double peak = 2.2e-4;              ///< after warmup
  double final = 2.2e-5;             ///< at the end of the decay
  std::int64_t warmup = 2000;        ///< steps from 0 to peak
  std::int64_t decay_start = 2000;   ///< first step of the cosine decay (≥ warmup)
  std::int64_t decay_steps = 10000;  ///< steps from peak to final
  /// lr at step s (0-based).
  double operator()(std::int64_t s) const {
    if (s < warmup) {
      return peak * static_cast<double>(s) / static_cast<double>(warmup);
    }
    if (s < decay_start) {
      return peak;
    }
    double const u = std::min(1.0, static_cast<double>(s - decay_start) /
                                       static_cast<double>(decay_steps > 0 ? decay_steps : 1));
    return final + (peak - final) * 0.5 * (1.0 + std::cos(std::numbers::pi * u));
  }
};

/// Aux-loss-free balancing of one MoE layer: bias_i += γ·sign(mean(load) − load_i), with
/// sign(0) = 0 (an expert at exactly the mean keeps its bias).
/// @param bias   [E] fp32 e_score_correction_bias, updated
/// @param loads  [E] tokens routed to each expert in the step (real tokens only)
/// @param gamma  the bias update speed γ (0.001 in DeepSeek-V3)
/// @returns invalid_argument when the sizes differ.
inline Status update_correction_bias(std::span<float> bias, std::span<std::int64_t const> loads,
                                     double gamma) {
  if (bias.size() != loads.size() || bias.empty()) {
    return invalid_argument("update_correction_bias: " + std::to_string(bias.size()) + " biases, " +
                            std::to_string(loads.size()) + " loads");
  }
  // compare E·load_i with the total: exact in integers, no rounding of the mean
  std::int64_t total = 0;
  for (std::int64_t l : loads)
    total += l;
  auto const E = static_cast<std::int64_t>(loads.size());
  for (std::size_t i = 0; i < bias.size(); ++i) {
    std::int64_t const diff = total - E * loads[i];  // E·(mean − load_i)
    bias[i] += static_cast<float>(gamma * static_cast<double>((diff > 0) - (diff < 0)));
  }
  return {};
}

}  // namespace train
DEEPMOE_NAMESPACE_END
