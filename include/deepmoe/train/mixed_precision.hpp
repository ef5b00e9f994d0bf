// SPDX-License-Identifier: Apache-2.0
/// @file mixed_precision.hpp
/// @brief Bf16Weights<C>: the bf16 copy of a model's fp32 master weights that mixed-precision
/// training computes with.
///
/// DeepSeek-V3 trains with low-precision compute copies of fp32 master weights: the optimizer
/// updates the fp32 masters (small updates are not lost to bf16's 8-bit mantissa), and the
/// forward and backward read the copy, accumulating in fp32 (arXiv:2412.19437 §3.3; its GEMM
/// inputs are FP8, ours bf16). The copy is one in-memory safetensors image laid out like a bf16
/// checkpoint: every tensor BF16 except `e_score_correction_bias`, which stays F32 (the router
/// selects with it in fp32, as DeepSeek-V3's checkpoints store it). It is viewed in place as
/// ModelWeights<WithPrecision<C, bfloat16, bfloat16>> through the checkpoint loader, so
/// refresh() — rounding every master value to nearest even — is all a step needs.
#pragma once

#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/train/parameters.hpp>

#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// The bf16 compute copy of Parameters<C> (file comment). Move-only; views stay valid across
/// moves.
template <config::ModelConfig C>
class Bf16Weights {
 public:
  /// The config the copy is computed with: C's shapes, bf16 weights and activations.
  using Compute = config::WithPrecision<C, bfloat16, bfloat16>;

  Bf16Weights() = default;
  Bf16Weights(Bf16Weights&&) noexcept = default;
  Bf16Weights& operator=(Bf16Weights&&) noexcept = default;

  /// A copy of `master`, rounded (refresh).
  /// @pre `master` outlives the copy and keeps its image (Parameters never reallocates it;
  ///      moving it keeps the buffer): refresh() reads the master tensors through spans.
  /// @returns invalid_argument when the image cannot be viewed in place (a loader change that
  ///          would make refresh() miss a tensor).
  static Status create(Parameters<C> const& master, Bf16Weights& out) {
    Bf16Weights b;
    b.cfg_ = Compute{master.config()};
    // the F32 tensors first, so that every tensor starts aligned for its type
    std::vector<io::TensorToWrite> list;
    std::vector<typename Parameters<C>::Tensor const*> order;
    for (int f32 = 1; f32 >= 0; --f32)
      for (auto const& t : master.tensors())
        if (is_f32(t) == (f32 == 1)) {
          order.push_back(&t);
        }
    std::size_t largest = 0;
    for (auto const* t : order)
      largest = std::max(largest, t->value.size() * sizeof(float));
    std::vector<std::byte> zeros(largest);  // sizes for the header only
    for (auto const* t : order) {
      std::size_t const bytes = t->value.size() * (is_f32(*t) ? sizeof(float) : sizeof(bfloat16));
      list.push_back({t->name, is_f32(*t) ? io::Dtype::kF32 : io::Dtype::kBF16, t->shape,
                      std::span<std::byte const>(zeros).first(bytes)});
    }
    std::string header;
    DEEPMOE_RETURN_IF_ERROR(io::safetensors_header("model.safetensors", list, {}, header));
    std::size_t total = header.size();
    for (auto const& t : list)
      total += t.data.size();
    b.image_.assign((total + 7) / 8, 0);
    auto* bytes = reinterpret_cast<std::byte*>(b.image_.data());
    std::memcpy(bytes, header.data(), header.size());
    std::size_t at = header.size();
    for (std::size_t i = 0; i < order.size(); ++i) {
      b.copies_.push_back({order[i]->value, bytes + at, is_f32(*order[i])});
      at += list[i].data.size();
    }
    b.size_ = total;
    b.refresh();
    io::SafetensorsFile f;
    DEEPMOE_RETURN_IF_ERROR(io::SafetensorsFile::from_bytes("bf16 copy", b.image(), f));
    b.map_ = io::WeightMap::of(std::move(f));
    bool const mtp = !master.weights().mtp.empty();
    DEEPMOE_RETURN_IF_ERROR(model::CheckpointLoader<Compute>(b.map_, b.store_, "bf16 copy", *b.cfg_)
                                .load(b.weights_, {.mtp = mtp}));
    if (b.store_.bytes() != 0) {
      return invalid_argument("Bf16Weights: a tensor of the bf16 image was not viewed in place");
    }
    out = std::move(b);
    return {};
  }

  /// Sets the copy to the masters it was created from: bf16 values rounded to nearest even,
  /// F32 tensors copied. Call after every update of the masters.
  void refresh() {
    for (Copy const& c : copies_) {
      auto const n = static_cast<std::int64_t>(c.from.size());
      if (c.f32) {
        std::memcpy(c.to, c.from.data(), c.from.size() * sizeof(float));
        continue;
      }
      auto* to = reinterpret_cast<bfloat16*>(c.to);
      DEEPMOE_OMP(omp parallel for schedule(static) if (n >= (1 << 16)))
      for (std::int64_t i = 0; i < n; ++i)
        to[i] = bfloat16(c.from[static_cast<std::size_t>(i)]);
    }
  }

  /// The weights, viewing the image.
  model::ModelWeights<Compute> const& weights() const noexcept { return weights_; }
  /// The compute config.
  Compute const& config() const noexcept { return *cfg_; }
  /// The image's bytes (a bf16 model.safetensors).
  std::span<std::byte const> image() const noexcept {
    return {reinterpret_cast<std::byte const*>(image_.data()), size_};
  }

 private:
  struct Copy {
    std::span<float const> from;  // the master tensor
    std::byte* to;                // its place in the image
    bool f32;                     // copied, not rounded
  };
  static bool is_f32(typename Parameters<C>::Tensor const& t) {
    return t.name.ends_with("e_score_correction_bias");
  }

  std::optional<Compute> cfg_;        // (Dynamic configs have no default)
  std::vector<std::uint64_t> image_;  // 8-byte aligned: header, F32 tensors, BF16 tensors
  std::size_t size_ = 0;              // bytes of the image
  std::vector<Copy> copies_;
  io::WeightMap map_;
  model::TensorStore store_;  // stays empty: every tensor is viewed in place
  model::ModelWeights<Compute> weights_;
};

}  // namespace train
DEEPMOE_NAMESPACE_END
