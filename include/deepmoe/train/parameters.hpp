// SPDX-License-Identifier: Apache-2.0
/// @file parameters.hpp
/// @brief The trained state of a model: every tensor of checkpoint_tensors<C>() in fp32, held
/// as one in-memory safetensors image — byte for byte the model.safetensors that save() writes
/// — and viewed in place as ModelWeights<C> through the checkpoint loader. The optimizer updates
/// the image, so the views always show the current weights, and a checkpoint is one atomic
/// write of the image (plus config.json).
///
/// Initialization (init): matrices N(0, σ²) (σ = initializer_range, 0.006 in DeepSeek-V3,
/// arXiv:2412.19437 §4.2; normals by Box–Muller from splitmix64), RMSNorm weights 1,
/// e_score_correction_bias 0; an MTP module's embedding and head mirror the main model's
/// (sync_copies). Weight
/// decay applies to tensors of rank ≥ 2 (not to the norms); the correction bias is not trained by
/// gradient (aux-loss-free balancing sets it).
#pragma once

#include <deepmoe/io/config_json.hpp>
#include <deepmoe/io/safetensors.hpp>
#include <deepmoe/io/weight_map.hpp>
#include <deepmoe/model/checkpoint.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <numbers>
#include <optional>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// How init() draws a model.
struct InitOptions {
  std::uint64_t seed = 1;  ///< of the normal draws
  double std_dev = 0.02;   ///< σ of every matrix (HF config's initializer_range)
  bool mtp = false;        ///< include the Multi-Token-Prediction modules
};

/// The fp32 parameters of a model of config C (file comment). Move-only; views stay valid
/// across moves.
template <config::ModelConfig C>
class Parameters {
  static_assert(std::is_same_v<typename C::weight_t, float> &&
                    std::is_same_v<typename C::act_t, float>,
                "train::Parameters: training keeps fp32 master weights (config::with_precision)");

 public:
  /// One tensor of the image.
  struct Tensor {
    std::string name;                 ///< checkpoint name
    std::vector<std::int64_t> shape;  ///< row-major extents
    std::span<float> value;           ///< its values in the image
    bool trained = true;              ///< updated by the optimizer (not the bias, not mirrors)
    bool decay = true;                ///< weight decay applies (rank ≥ 2)
    std::string copy_of;              ///< the tensor this one mirrors (sync_copies), or empty
  };

  Parameters() = default;
  Parameters(Parameters&&) noexcept = default;
  Parameters& operator=(Parameters&&) noexcept = default;

  /// A freshly initialized model of config `cfg` (file comment).
  /// @returns invalid_argument for a config that fails config::check.
  static Status init(InitOptions const& o, Parameters& out, C const& cfg = {}) {
    Parameters p;
    DEEPMOE_RETURN_IF_ERROR(p.layout(o.mtp, cfg));
    util::Rng rng(o.seed);
    for (Tensor& t : p.tensors_) {
      bool const norm = t.shape.size() == 1 && t.trained;
      for (float& x : t.value) {
        if (!t.trained) {
          x = 0.0f;
        } else if (norm) {
          x = 1.0f;
        } else {  // Box–Muller: √(−2 ln u1)·cos(2π u2), u1 in (0, 1]
          double const u1 = (static_cast<double>(rng.next() >> 11) + 1.0) * 0x1p-53;
          double const u2 = static_cast<double>(rng.next() >> 11) * 0x1p-53;
          x = static_cast<float>(o.std_dev * std::sqrt(-2.0 * std::log(u1)) *
                                 std::cos(2.0 * std::numbers::pi * u2));
        }
      }
    }
    p.sync_copies();
    DEEPMOE_RETURN_IF_ERROR(p.bind("init"));
    out = std::move(p);
    return {};
  }

  /// The parameters of the checkpoint in `dir` (safetensors; F32, F64, BF16 or F16 tensors,
  /// widened to fp32) — to fine-tune a model or resume a run. The MTP module's embedding and
  /// head are then set to the main model's (sync_copies).
  /// @returns WeightMap::open's errors; CheckpointLoader's message listing every missing,
  ///          misshaped and unexpected tensor; invalid_argument naming an fp8 tensor (dequantize
  ///          such a checkpoint first).
  static Status load(std::string const& dir, bool mtp, Parameters& out, C const& cfg = {}) {
    io::WeightMap map;
    DEEPMOE_RETURN_IF_ERROR(io::WeightMap::open(dir, map));
    {  // the loader's checks and its one message for every problem
      model::TensorStore store;
      model::ModelWeights<C> w;
      DEEPMOE_RETURN_IF_ERROR(
          model::CheckpointLoader<C>(map, store, dir, cfg).load(w, {.mtp = mtp}));
    }
    Parameters p;
    DEEPMOE_RETURN_IF_ERROR(p.layout(mtp, cfg));
    for (Tensor& t : p.tensors_) {
      io::SafetensorsFile const* f = map.file_of(t.name);
      io::TensorInfo const* info = f->find(t.name);
      if (info->dtype == io::Dtype::kF8E4M3 || info->dtype == io::Dtype::kF8E5M2 ||
          !model::detail::read_as_float(info->dtype, f->bytes(*info), t.value.data(),
                                        static_cast<std::int64_t>(t.value.size()))) {
        return invalid_argument(dir + ": tensor '" + t.name + "' has dtype " +
                                std::string(io::to_string(info->dtype)) +
                                "; training reads F32, F64, BF16 or F16 — HINT: dequantize an "
                                "FP8 checkpoint first");
      }
    }
    p.sync_copies();
    DEEPMOE_RETURN_IF_ERROR(p.bind(dir));
    out = std::move(p);
    return {};
  }

  /// Writes `dir`/config.json and `dir`/model.safetensors (the image), each atomically
  /// (io::write_file_atomic); creates `dir`.
  /// @returns kIoError naming the file that cannot be written.
  Status save(std::string const& dir) const {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      return Status(StatusCode::kIoError, dir + ": cannot create (" + ec.message() + ")");
    }
    std::string const json = io::config_json<C>(*cfg_).dump(2) + "\n";
    std::span<std::byte const> const cj[] = {std::as_bytes(std::span(json))};
    DEEPMOE_RETURN_IF_ERROR(io::write_file_atomic((fs::path(dir) / "config.json").string(), cj));
    std::span<std::byte const> const img[] = {image()};
    return io::write_file_atomic((fs::path(dir) / "model.safetensors").string(), img);
  }

  /// Sets every mirrored tensor to its source: the MTP module's `embed_tokens` and
  /// `shared_head.head` to the main model's embedding and lm_head, which DeepSeek-V3 shares
  /// (arXiv:2412.19437 §2.2) while its checkpoints store copies. init() and load() call it; a
  /// trainer calls it after each update.
  void sync_copies() {
    for (Tensor& t : tensors_)
      if (!t.copy_of.empty()) {
        Tensor const* src = find(t.copy_of);
        std::copy(src->value.begin(), src->value.end(), t.value.begin());
      }
  }

  /// The model's weights, viewing the image.
  model::ModelWeights<C> const& weights() const noexcept { return weights_; }
  /// Every tensor, in checkpoint_tensors order.
  std::vector<Tensor> const& tensors() const noexcept { return tensors_; }
  /// The tensor named `name`, or null.
  Tensor const* find(std::string const& name) const {
    for (Tensor const& t : tensors_)
      if (t.name == name) {
        return &t;
      }
    return nullptr;
  }
  /// Number of trained parameters (elements).
  std::int64_t count() const noexcept {
    std::int64_t n = 0;
    for (Tensor const& t : tensors_)
      n += t.trained ? static_cast<std::int64_t>(t.value.size()) : 0;
    return n;
  }
  /// The bytes of model.safetensors.
  std::span<std::byte const> image() const noexcept { return std::as_bytes(std::span(image_)); }
  /// The config.
  C const& config() const noexcept { return *cfg_; }

 private:
  // The image: header for the tensors of `cfg`, values zero; tensors_ point into it.
  Status layout(bool mtp, C const& cfg) {
    DEEPMOE_RETURN_IF_ERROR(config::check(cfg));
    cfg_.emplace(cfg);
    std::vector<model::TensorSpec> const specs = model::checkpoint_tensors<C>({.mtp = mtp}, cfg);
    std::int64_t largest = 0;
    std::vector<std::int64_t> sizes;
    for (auto const& s : specs) {
      std::int64_t n = 1;
      for (auto e : s.shape)
        n *= e;
      sizes.push_back(n);
      largest = std::max(largest, n);
    }
    std::vector<float> zeros(static_cast<std::size_t>(largest));  // sizes for the header only
    std::vector<io::TensorToWrite> list;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      list.push_back({specs[i].name, io::Dtype::kF32, specs[i].shape,
                      std::as_bytes(std::span(zeros).first(static_cast<std::size_t>(sizes[i])))});
    }
    std::string header;
    DEEPMOE_RETURN_IF_ERROR(io::safetensors_header("model.safetensors", list, {}, header));
    std::size_t const head = header.size() / sizeof(float);  // a multiple of 8 bytes
    std::size_t total = head;
    for (auto n : sizes)
      total += static_cast<std::size_t>(n);
    image_.assign(total, 0.0f);
    std::memcpy(image_.data(), header.data(), header.size());
    std::size_t at = head;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      auto const n = static_cast<std::size_t>(sizes[i]);
      std::string const& name = specs[i].name;
      std::string copy_of;
      if (name.ends_with(".embed_tokens.weight") && name != "model.embed_tokens.weight") {
        copy_of = "model.embed_tokens.weight";
      } else if (name.ends_with(".shared_head.head.weight")) {
        copy_of = cfg.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
      }
      bool const trained = copy_of.empty() && !name.ends_with("e_score_correction_bias");
      tensors_.push_back({name, specs[i].shape, std::span(image_).subspan(at, n), trained,
                          specs[i].shape.size() >= 2, copy_of});
      at += n;
    }
    return {};
  }

  // Views of the image as ModelWeights, through the checkpoint loader.
  Status bind(std::string const& source) {
    io::SafetensorsFile f;
    DEEPMOE_RETURN_IF_ERROR(io::SafetensorsFile::from_bytes(source, image(), f));
    map_ = io::WeightMap::of(std::move(f));
    bool const mtp = std::any_of(tensors_.begin(), tensors_.end(), [&](Tensor const& t) {
      return t.name.starts_with("model.layers." + std::to_string(cfg_->num_hidden_layers) + ".");
    });
    DEEPMOE_RETURN_IF_ERROR(
        model::CheckpointLoader<C>(map_, store_, source, *cfg_).load(weights_, {.mtp = mtp}));
    if (store_.bytes() != 0) {  // a converted copy would not see the optimizer's updates
      return invalid_argument(source + ": a tensor of the fp32 image was not viewed in place");
    }
    return {};
  }

  std::optional<C> cfg_;      // set by layout (Dynamic configs have no default)
  std::vector<float> image_;  // header bytes, then every tensor's fp32 values
  std::vector<Tensor> tensors_;
  io::WeightMap map_;
  model::TensorStore store_;  // stays empty: every tensor is viewed in place
  model::ModelWeights<C> weights_;
};

}  // namespace train
DEEPMOE_NAMESPACE_END
