// SPDX-License-Identifier: Apache-2.0
/// @file weight_map.hpp
/// @brief A Hugging Face checkpoint directory: one model.safetensors, or shards listed by
/// model.safetensors.index.json, seen as one set of named tensors.
///
/// `model.safetensors.index.json` is `{"metadata": {"total_size": bytes}, "weight_map":
/// {tensor name: shard file}}`. A weight and its `weight_scale_inv` may live in different
/// shards (DeepSeek-V3's 163 shards do this); lookups go through the map.
#pragma once

#include <deepmoe/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace io {

/// The tensors of a checkpoint directory, each shard memory-mapped once.
class WeightMap {
 public:
  /// Opens `dir`: its model.safetensors.index.json and every shard it names, or else its
  /// model.safetensors. Checks that every tensor the index lists is in its shard.
  /// @returns kIoError when neither file exists or a shard cannot be read; invalid_argument
  ///          naming the file and tensor for a malformed index or shard.
  static Status open(std::string const& dir, WeightMap& out) {
    namespace fs = std::filesystem;
    WeightMap m;
    fs::path const index = fs::path(dir) / "model.safetensors.index.json";
    fs::path const single = fs::path(dir) / "model.safetensors";
    if (fs::exists(index)) {
      std::ifstream in(index);
      nlohmann::json const j = nlohmann::json::parse(in, nullptr, false);
      auto const wm = j.is_object() ? j.find("weight_map") : j.end();
      if (j.is_discarded() || !j.is_object() || wm == j.end() || !wm->is_object()) {
        return invalid_argument(index.string() + ": not a JSON object with a weight_map object");
      }
      std::map<std::string, std::size_t> shard_of_file;
      for (auto const& [name, file] : wm->items()) {
        if (!file.is_string()) {
          return invalid_argument(index.string() + ": weight_map['" + name + "'] is not a string");
        }
        std::string const f = file.get<std::string>();
        auto it = shard_of_file.find(f);
        if (it == shard_of_file.end()) {
          auto shard = std::make_unique<SafetensorsFile>();
          DEEPMOE_RETURN_IF_ERROR(SafetensorsFile::open((fs::path(dir) / f).string(), *shard));
          it = shard_of_file.emplace(f, m.shards_.size()).first;
          m.shards_.push_back(std::move(shard));
        }
        if (m.shards_[it->second]->find(name) == nullptr) {
          return invalid_argument(index.string() + " maps '" + name + "' to " + f +
                                  ", which does not contain it — HINT: a shard from another "
                                  "checkpoint, or an incomplete download?");
        }
        m.where_.emplace(name, it->second);
      }
    } else if (fs::exists(single)) {
      auto shard = std::make_unique<SafetensorsFile>();
      DEEPMOE_RETURN_IF_ERROR(SafetensorsFile::open(single.string(), *shard));
      for (auto const& t : shard->tensors())
        m.where_.emplace(t.name, 0);
      m.shards_.push_back(std::move(shard));
    } else {
      return Status(StatusCode::kIoError, dir +
                                              ": has neither model.safetensors nor "
                                              "model.safetensors.index.json");
    }
    out = std::move(m);
    return {};
  }

  /// A checkpoint of the one file `file` (e.g. SafetensorsFile::from_bytes over memory, as
  /// training keeps its parameters).
  static WeightMap of(SafetensorsFile file) {
    WeightMap m;
    for (auto const& t : file.tensors())
      m.where_.emplace(t.name, 0);
    m.shards_.push_back(std::make_unique<SafetensorsFile>(std::move(file)));
    return m;
  }

  /// Number of tensors.
  std::size_t size() const noexcept { return where_.size(); }
  /// The file holding `name`, or null.
  SafetensorsFile const* file_of(std::string const& name) const {
    auto const it = where_.find(name);
    return it == where_.end() ? nullptr : shards_[it->second].get();
  }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (auto const& [name, shard] : where_)
      n.push_back(name);
    return n;
  }
  /// A zero-copy [rows, cols] view of tensor `name` (SafetensorsFile::matrix).
  template <class T>
  Status matrix(std::string const& name, MatrixView<T const>& out) const {
    SafetensorsFile const* f = file_of(name);
    if (f == nullptr) {
      return invalid_argument("checkpoint has no tensor '" + name + "'");
    }
    return f->matrix<T>(name, out);
  }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, std::size_t> where_;
};

}  // namespace io
DEEPMOE_NAMESPACE_END
