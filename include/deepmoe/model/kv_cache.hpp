// SPDX-License-Identifier: Apache-2.0
/// @file kv_cache.hpp
/// @brief The MLA latent KV cache: per sequence slot, per layer and per position, the normalized
/// latent c (rkv values) and the rotated rope key k_pe (dr values) — 576 values for
/// DeepSeek-V3, instead of nh·(dn + dv) = 32768 for a per-head cache (arXiv:2405.04434 §2.1).
///
/// Layout: [slot][layer][position][rkv + dr], element type KV (the activation type by default).
/// Layers are the L decoder layers, then the D Multi-Token-Prediction modules (each keeps its
/// own cache, docs/model.md §4). A slot holds one sequence from its first token until release();
/// its length is the number of positions cached. Positions beyond the capacity are refused
/// (kOutOfRange), never written.
#pragma once

#include <deepmoe/config/derived.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/ops/mla_attention.hpp>

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// The sequence slots of a KV cache: how many, the positions each holds, and how many tokens
/// each holds now (host bookkeeping shared by KvCache and gpu::DeviceKvCache).
class CacheSlots {
 public:
  /// Number of sequence slots.
  int slots() const noexcept { return static_cast<int>(length_.size()); }
  /// Positions each slot holds [tokens].
  std::int64_t capacity() const noexcept { return capacity_; }
  /// Tokens cached in `slot` (positions 0 .. length − 1). @pre 0 ≤ slot < slots()
  std::int64_t length(int slot) const noexcept { return length_[static_cast<std::size_t>(slot)]; }
  /// Forgets `slot`'s tokens, making it free for a new sequence. @pre 0 ≤ slot < slots()
  void release(int slot) noexcept { length_[static_cast<std::size_t>(slot)] = 0; }
  /// Keeps the first `n` tokens of `slot` (e.g. after rejected speculative tokens).
  /// @pre 0 ≤ slot < slots(), n ≥ 0
  void truncate(int slot, std::int64_t n) noexcept {
    auto& l = length_[static_cast<std::size_t>(slot)];
    l = n < l ? n : l;
  }
  /// Records that `slot` now holds `n` tokens (the model calls this after a step).
  /// @pre n ≤ capacity()
  void set_length(int slot, std::int64_t n) noexcept {
    length_[static_cast<std::size_t>(slot)] = n;
  }

 protected:
  CacheSlots() = default;
  CacheSlots(int slots, std::int64_t capacity)
      : capacity_(capacity), length_(static_cast<std::size_t>(slots), 0) {}

 private:
  std::int64_t capacity_ = 0;
  std::vector<std::int64_t> length_;
};

/// A latent KV cache for `slots` sequences of up to `capacity` tokens each.
/// @tparam C   the model config
/// @tparam KV  element type: float or bfloat16 (C::act_t by default)
template <config::ModelConfig C, class KV = typename C::act_t>
class KvCache : public CacheSlots {
  static_assert(std::is_same_v<KV, float> || std::is_same_v<KV, bfloat16>,
                "KvCache: elements are float or bfloat16");

 public:
  using value_type = KV;
  KvCache() = default;

  /// Allocates a cache for config `cfg`: `slots` sequences × `capacity` positions × (L + D)
  /// layers (D = num_nextn_predict_layers when `mtp`, else 0) × (rkv + dr) values.
  /// @returns invalid_argument for slots < 1 or capacity < 1; kOutOfRange naming the size when
  ///          the memory cannot be allocated.
  static Status create(C const& cfg, int slots, std::int64_t capacity, KvCache& out,
                       bool mtp = true) {
    if (slots < 1 || capacity < 1) {
      return invalid_argument("KvCache: slots = " + std::to_string(slots) +
                              " and capacity = " + std::to_string(capacity) + " must both be >= 1");
    }
    KvCache c(slots, capacity);
    c.layers_ = cfg.num_hidden_layers + (mtp ? cfg.num_nextn_predict_layers : 0);
    c.dim_ = config::kv_cache_dim(cfg);
    std::size_t const n = static_cast<std::size_t>(slots) * static_cast<std::size_t>(c.layers_) *
                          static_cast<std::size_t>(capacity) * static_cast<std::size_t>(c.dim_);
    c.data_.reset(new (std::nothrow) KV[n]);
    if (c.data_ == nullptr) {
      return Status(StatusCode::kOutOfRange,
                    "KvCache: cannot allocate " + std::to_string(n * sizeof(KV) >> 20) + " MiB (" +
                        std::to_string(slots) + " slots × " + std::to_string(capacity) +
                        " tokens × " + std::to_string(c.bytes_per_token()) + " bytes per token)");
    }
    out = std::move(c);
    return {};
  }

  /// Layers cached: L, plus the MTP modules' when created with `mtp`.
  int layers() const noexcept { return layers_; }
  /// Bytes one token takes in one slot: layers · (rkv + dr) · sizeof(KV).
  std::int64_t bytes_per_token() const noexcept {
    return std::int64_t{layers_} * dim_ * std::int64_t{sizeof(KV)};
  }
  /// Bytes allocated.
  std::int64_t bytes() const noexcept { return bytes_per_token() * slots() * capacity(); }

  /// The rows of `slot` for `layer` (MlaCacheRows, row p = position p). @pre indices in range
  MlaCacheRows<KV> rows(int slot, int layer) noexcept {
    std::size_t const off = ((static_cast<std::size_t>(slot) * static_cast<std::size_t>(layers_) +
                              static_cast<std::size_t>(layer)) *
                             static_cast<std::size_t>(capacity())) *
                            static_cast<std::size_t>(dim_);
    return {data_.get() + off, capacity()};
  }

 private:
  KvCache(int slots, std::int64_t capacity) : CacheSlots(slots, capacity) {}
  int layers_ = 0;
  std::int64_t dim_ = 0;
  std::unique_ptr<KV[]> data_;
};

}  // namespace model
DEEPMOE_NAMESPACE_END
