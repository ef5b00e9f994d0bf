// SPDX-License-Identifier: Apache-2.0
/// @file kv_cache.cuh
/// @brief gpu::DeviceKvCache: the MLA latent KV cache in device memory — model::KvCache's layout
/// and rules (model/kv_cache.hpp) for gpu::DeviceModel: per slot, per decoder layer and per
/// position the normalized latent c (rkv values) and the rotated k_pe (dr values).
///
/// Layout: [slot][layer][position][rkv + dr] of KV, the L decoder layers (the Multi-Token-
/// Prediction modules run on the CPU). Lengths live on the host. A slot holds one sequence
/// from its first token until release(); positions beyond the capacity are refused.
#pragma once

#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/config/derived.hpp>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// A latent KV cache in device memory for `slots` sequences of up to `capacity` tokens each.
/// @tparam C   the model config
/// @tparam KV  element type: float or bfloat16 (C::act_t by default)
template <config::ModelConfig C, class KV = typename C::act_t>
class DeviceKvCache {
  static_assert(std::is_same_v<KV, float> || std::is_same_v<KV, bfloat16>,
                "DeviceKvCache: elements are float or bfloat16");

 public:
  using value_type = KV;
  DeviceKvCache() = default;

  /// Allocates a cache for config `cfg`: slots × num_hidden_layers × capacity × (rkv + dr)
  /// values of device memory (not initialized: a slot's rows are written before they are read).
  /// @param mtp  must be false: the MTP modules' layers are not cached on the device
  /// @returns invalid_argument for slots < 1 or capacity < 1; kNotSupported for `mtp`;
  ///          kCudaError naming the size when the device memory cannot be allocated.
  static Status create(C const& cfg, int slots, std::int64_t capacity, DeviceKvCache& out,
                       bool mtp = false) {
    if (mtp) {
      return Status(StatusCode::kNotSupported,
                    "DeviceKvCache: the MTP modules do not run on the device (mtp = false)");
    }
    if (slots < 1 || capacity < 1) {
      return invalid_argument("DeviceKvCache: slots = " + std::to_string(slots) +
                              " and capacity = " + std::to_string(capacity) + " must both be >= 1");
    }
    DeviceKvCache c;
    c.slots_ = slots;
    c.capacity_ = capacity;
    c.layers_ = cfg.num_hidden_layers;
    c.dim_ = config::kv_cache_dim(cfg);
    c.length_.assign(static_cast<std::size_t>(slots), 0);
    std::size_t const n = static_cast<std::size_t>(slots) * static_cast<std::size_t>(c.layers_) *
                          static_cast<std::size_t>(capacity) * static_cast<std::size_t>(c.dim_);
    if (Status const st = c.data_.allocate(n); !st.ok()) {
      return Status(st.code(), "DeviceKvCache: cannot allocate " +
                                   std::to_string(n * sizeof(KV) >> 20) +
                                   " MiB of device memory (" + std::to_string(slots) + " slots × " +
                                   std::to_string(capacity) + " tokens): " + st.message());
    }
    out = std::move(c);
    return {};
  }

  /// Number of sequence slots.
  int slots() const noexcept { return slots_; }
  /// Positions each slot holds [tokens].
  std::int64_t capacity() const noexcept { return capacity_; }
  /// Layers cached (num_hidden_layers).
  int layers() const noexcept { return layers_; }
  /// Values per cached token and layer: rkv + dr.
  std::int64_t dim() const noexcept { return dim_; }
  /// Bytes allocated.
  std::int64_t bytes() const noexcept {
    return static_cast<std::int64_t>(data_.size() * sizeof(KV));
  }
  /// Tokens cached in `slot`. @pre 0 ≤ slot < slots()
  std::int64_t length(int slot) const noexcept { return length_[static_cast<std::size_t>(slot)]; }
  /// Forgets `slot`'s tokens. @pre 0 ≤ slot < slots()
  void release(int slot) noexcept { length_[static_cast<std::size_t>(slot)] = 0; }
  /// Keeps the first `n` tokens of `slot`. @pre 0 ≤ slot < slots(), n ≥ 0
  void truncate(int slot, std::int64_t n) noexcept {
    auto& l = length_[static_cast<std::size_t>(slot)];
    l = n < l ? n : l;
  }
  /// Records that `slot` holds `n` tokens (DeviceModel calls this). @pre n ≤ capacity()
  void set_length(int slot, std::int64_t n) noexcept {
    length_[static_cast<std::size_t>(slot)] = n;
  }
  /// The row of position 0 of `slot` in layer 0; layer l's rows start l·capacity() later.
  std::int64_t first_row(int slot) const noexcept {
    return std::int64_t{slot} * layers_ * capacity_;
  }
  /// The cache (device memory), rows of dim() values.
  KV* data() noexcept { return data_.data(); }

 private:
  int slots_ = 0, layers_ = 0;
  std::int64_t capacity_ = 0, dim_ = 0;
  std::vector<std::int64_t> length_;
  DeviceBuffer<KV> data_;
};

}  // namespace gpu
DEEPMOE_NAMESPACE_END
