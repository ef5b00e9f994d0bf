// SPDX-License-Identifier: Apache-2.0
/// @file kv_cache.cuh
/// @brief gpu::DeviceKvCache: the MLA latent KV cache in device memory — model::KvCache's layout
/// and rules (model/kv_cache.hpp) for gpu::DeviceModel: per slot, per decoder layer and per
/// position the normalized latent c (rkv values) and the rotated k_pe (dr values).
///
/// Layout: [slot][layer][position][rkv + dr] of KV, the L decoder layers (the Multi-Token-
/// Prediction modules run on the CPU). Lengths live on the host (model::CacheSlots). A slot holds
/// one sequence from its first token until release(); positions beyond the capacity are refused.
#pragma once

#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/model/kv_cache.hpp>

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
class DeviceKvCache : public model::CacheSlots {
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
    DeviceKvCache c(slots, capacity);
    c.layers_ = cfg.num_hidden_layers;
    c.dim_ = config::kv_cache_dim(cfg);
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

  /// Layers cached (num_hidden_layers).
  int layers() const noexcept { return layers_; }
  /// Values per cached token and layer: rkv + dr.
  std::int64_t dim() const noexcept { return dim_; }
  /// Bytes allocated.
  std::int64_t bytes() const noexcept {
    return static_cast<std::int64_t>(data_.size() * sizeof(KV));
  }
  /// The row of position 0 of `slot` in layer 0; layer l's rows start l·capacity() later.
  std::int64_t first_row(int slot) const noexcept {
    return std::int64_t{slot} * layers_ * capacity();
  }
  /// The cache (device memory), rows of dim() values.
  KV* data() noexcept { return data_.data(); }

 private:
  DeviceKvCache(int slots, std::int64_t capacity) : CacheSlots(slots, capacity) {}
  int layers_ = 0;
  std::int64_t dim_ = 0;
  DeviceBuffer<KV> data_;
};

}  // namespace gpu
DEEPMOE_NAMESPACE_END
