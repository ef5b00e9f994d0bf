// SPDX-License-Identifier: Apache-2.0
/// @file sampler.hpp
/// @brief Next-token sampling from logits: greedy, temperature, top-k, top-p, with a seeded
/// per-sequence generator, so that a run is reproducible and a sequence's tokens do not depend
/// on the other sequences of its batch.
///
///   greedy (temperature 0):  argmax_v z_v, ties to the lowest id
///   otherwise:  p = softmax(z / temperature) in double; keep the top_k most likely (top_k > 0),
///               then the smallest prefix, in (p desc, id asc) order, whose mass reaches top_p;
///               renormalize; draw by inverse CDF in increasing id order with u ∈ [0, 1)
///               from the sequence's splitmix64 generator (53 random bits).
/// Sources: Holtzman et al. 2019 (nucleus sampling, arXiv:1904.09751); the filter order (top-k,
/// then top-p) is that of Hugging Face transformers' logits warpers.
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace generate {

/// How to pick the next token.
struct SamplingParams {
  double temperature = 0.0;  ///< 0: greedy; > 0: softmax(z / temperature)
  int top_k = 0;             ///< keep the k most likely tokens (0: all)
  double top_p = 1.0;        ///< keep the smallest set of mass ≥ top_p (1: all)
  std::uint64_t seed = 0;    ///< the sequence's generator seed
};

/// Checks the parameters. @returns invalid_argument naming the field.
inline Status check(SamplingParams const& p) {
  if (!(p.temperature >= 0.0) || !std::isfinite(p.temperature)) {
    return invalid_argument("sampling: temperature = " + std::to_string(p.temperature) +
                            " must be finite and >= 0 (0 = greedy)");
  }
  if (p.top_k < 0) {
    return invalid_argument("sampling: top_k = " + std::to_string(p.top_k) +
                            " must be >= 0 (0 = no limit)");
  }
  if (!(p.top_p > 0.0 && p.top_p <= 1.0)) {
    return invalid_argument("sampling: top_p = " + std::to_string(p.top_p) + " must be in (0, 1]");
  }
  return {};
}

/// The id of the largest logit, the lowest id among equals.
inline std::int32_t argmax(std::span<float const> logits) {
  std::size_t best = 0;
  for (std::size_t v = 1; v < logits.size(); ++v) {
    best = logits[v] > logits[best] ? v : best;
  }
  return static_cast<std::int32_t>(best);
}

/// The distribution sampling draws from: probs[v] for every id (zero outside the kept set),
/// in double. Greedy puts all mass on argmax.
/// @param logits  [V] fp32, finite
/// @param p       the parameters (checked)
/// @param probs   out, resized to V
inline void sampling_distribution(std::span<float const> logits, SamplingParams const& p,
                                  std::vector<double>& probs) {
  std::size_t const V = logits.size();
  probs.assign(V, 0.0);
  if (p.temperature == 0.0) {
    probs[static_cast<std::size_t>(argmax(logits))] = 1.0;
    return;
  }
  double const mx = logits[static_cast<std::size_t>(argmax(logits))];
  double z = 0;
  for (std::size_t v = 0; v < V; ++v) {
    probs[v] = std::exp((logits[v] - mx) / p.temperature);
    z += probs[v];
  }
  std::vector<std::int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return probs[static_cast<std::size_t>(a)] > probs[static_cast<std::size_t>(b)];
  });
  std::size_t keep = p.top_k > 0 ? std::min<std::size_t>(V, static_cast<std::size_t>(p.top_k)) : V;
  double mass = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    mass += probs[static_cast<std::size_t>(order[i])] / z;
    if (mass >= p.top_p) {
      keep = i + 1;
      break;
    }
  }
  double kept = 0;
  for (std::size_t i = 0; i < keep; ++i)
    kept += probs[static_cast<std::size_t>(order[i])];
  for (std::size_t i = keep; i < V; ++i)
    probs[static_cast<std::size_t>(order[i])] = 0.0;
  for (std::size_t i = 0; i < keep; ++i)
    probs[static_cast<std::size_t>(order[i])] /= kept;
}

/// A draw from `probs` (which sums to 1): the first id, in increasing id order, at which the
/// cumulative mass exceeds u ∈ [0, 1) from `rng`; the last id with mass if rounding leaves u
/// uncovered.
inline std::int32_t draw(std::span<double const> probs, util::Rng& rng) {
  double const u = static_cast<double>(rng.next() >> 11) * 0x1p-53;
  double c = 0;
  std::int32_t last = 0;
  for (std::size_t v = 0; v < probs.size(); ++v) {
    if (probs[v] > 0) {
      c += probs[v];
      last = static_cast<std::int32_t>(v);
      if (u < c) {
        return last;
      }
    }
  }
  return last;
}

/// The next token from `logits` under `p` (greedy needs no generator draw).
inline std::int32_t sample(std::span<float const> logits, SamplingParams const& p, util::Rng& rng,
                           std::vector<double>& scratch) {
  if (p.temperature == 0.0) {
    return argmax(logits);
  }
  sampling_distribution(logits, p, scratch);
  return draw(scratch, rng);
}

}  // namespace generate
DEEPMOE_NAMESPACE_END
