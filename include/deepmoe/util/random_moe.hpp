// SPDX-License-Identifier: Apache-2.0
/// @file random_moe.hpp
/// @brief Seeded synthetic MoE-layer weights and inputs (owning storage), for tests, benchmarks
/// and examples that run without a checkpoint.
#pragma once

#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace util {

/// splitmix64: a small generator whose sequence is the same on every platform and compiler.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  /// The next 64 random bits.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1), on a 2^-23 grid.
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-23f - 1.0f; }
  /// Uniform in [-√3, √3): mean 0, variance 1.
  float unit() { return uniform() * 1.7320508f; }

 private:
  std::uint64_t state_;
};

/// An owned [rows, cols] linear weight of type W, entries of standard deviation `std_dev`,
/// block-quantized (with `scale`) when W is fp8.
template <class W>
struct OwnedLinear {
  std::int64_t rows = 0, cols = 0;
  int block = 0;
  std::vector<W> weight;     // [rows, cols]
  std::vector<float> scale;  // [ceil(rows/block), ceil(cols/block)], fp8 only

  /// Draws the entries from Rng(seed).
  /// @throws std::runtime_error if quantization fails (it cannot for these finite values).
  OwnedLinear(std::uint64_t seed, std::int64_t r, std::int64_t c, float std_dev, int block_size)
      : rows(r), cols(c), block(block_size), weight(static_cast<std::size_t>(r * c)) {
    Rng rng(seed);
    if constexpr (is_float8_v<W>) {
      std::vector<float> w(static_cast<std::size_t>(r * c));
      for (auto& v : w)
        v = rng.unit() * std_dev;
      std::int64_t const sr = (r + block - 1) / block, sc = (c + block - 1) / block;
      scale.resize(static_cast<std::size_t>(sr * sc));
      Status const st = quantize_fp8_block(MatrixView<W>(weight.data(), r, c),
                                           MatrixView<float>(scale.data(), sr, sc),
                                           MatrixView<float const>(w.data(), r, c), block);
      if (!st.ok())
        throw std::runtime_error(st.to_string());
    } else {
      for (auto& v : weight)
        v = from_float<W>(rng.unit() * std_dev);
    }
  }
  /// The weight as the layer takes it.
  LinearWeight<W> view() const {
    LinearWeight<W> v{MatrixView<W const>(weight.data(), rows, cols), {}};
    if constexpr (is_float8_v<W>) {
      v.weight_scale_inv = MatrixView<float const>(scale.data(), (rows + block - 1) / block,
                                                   (cols + block - 1) / block);
    }
    return v;
  }
};

/// Synthetic weights of one MoE layer of config C, owned, with `weights` viewing them.
/// Expert weights have standard deviation 1/sqrt(fan_in), so unit-scale inputs give unit-scale
/// activations; the gate has std gate_std/sqrt(H) (logits of std ≈ gate_std); the correction
/// bias is uniform in ±bias_range. Every tensor has its own seed drawn from `seed`, and they are
/// generated in parallel; the result depends only on `seed`.
template <config::ModelConfig C>
struct RandomMoe {
  using W = typename C::weight_t;
  using A = typename C::act_t;
  static constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts;
  static constexpr std::int64_t M = C::moe_intermediate_size;
  static constexpr std::int64_t SM = config::Derived<C>::shared_intermediate_size;

  std::vector<A> gate;                  // [E, H]
  std::vector<float> bias;              // [E], noaux_tc only
  std::vector<OwnedLinear<W>> linears;  // gate/up/down of expert 0, 1, …, then of the shared
  std::vector<moe::ExpertWeights<C>> experts;
  moe::MoeWeights<C> weights;

  explicit RandomMoe(std::uint64_t seed, float gate_std = 2.0f, float bias_range = 0.1f) {
    Rng rng(seed);
    gate.resize(static_cast<std::size_t>(E * H));
    float const gscale = gate_std / std::sqrt(static_cast<float>(H));
    for (auto& g : gate)
      g = from_float<A>(rng.unit() * gscale);
    if (config::Derived<C>::has_correction_bias) {
      bias.resize(static_cast<std::size_t>(E));
      for (auto& b : bias)
        b = rng.uniform() * bias_range;
    }
    struct Shape {
      std::int64_t rows, cols;
    };
    std::vector<Shape> shapes;
    for (std::int64_t e = 0; e < E + (SM > 0 ? 1 : 0); ++e) {
      std::int64_t const inter = e < E ? M : SM;
      shapes.insert(shapes.end(), {{inter, H}, {inter, H}, {H, inter}});
    }
    std::vector<std::uint64_t> seeds(shapes.size());
    for (auto& s : seeds)
      s = rng.next();
    std::vector<std::vector<OwnedLinear<W>>> parts(shapes.size());
    DEEPMOE_OMP(omp parallel for schedule(dynamic))
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      float const std_dev = 1.0f / std::sqrt(static_cast<float>(shapes[i].cols));
      parts[i].emplace_back(seeds[i], shapes[i].rows, shapes[i].cols, std_dev,
                            C::weight_block_size > 0 ? C::weight_block_size : 128);
    }
    linears.reserve(shapes.size());
    for (auto& p : parts)
      linears.push_back(std::move(p.front()));
    for (std::size_t e = 0; e < static_cast<std::size_t>(E); ++e) {
      experts.push_back(
          {linears[3 * e].view(), linears[3 * e + 1].view(), linears[3 * e + 2].view()});
    }
    weights.router.gate_weight = MatrixView<A const, E, H>(gate.data());
    if (!bias.empty()) {
      weights.router.e_score_correction_bias = VectorView<float const, E>(bias.data());
    }
    weights.experts = experts;
    if constexpr (SM > 0) {
      std::size_t const s = static_cast<std::size_t>(3 * E);
      weights.shared_experts = {linears[s].view(), linears[s + 1].view(), linears[s + 2].view()};
    }
  }
  RandomMoe(RandomMoe const&) = delete;
  RandomMoe& operator=(RandomMoe const&) = delete;
};

/// T synthetic hidden states [T, H] of type A with unit variance, from Rng(seed).
template <class A>
std::vector<A> random_tokens(std::uint64_t seed, std::int64_t T, std::int64_t H) {
  Rng rng(seed);
  std::vector<A> x(static_cast<std::size_t>(T * H));
  for (auto& v : x)
    v = from_float<A>(rng.unit());
  return x;
}

}  // namespace util
DEEPMOE_NAMESPACE_END
