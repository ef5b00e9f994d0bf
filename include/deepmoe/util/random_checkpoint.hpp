// SPDX-License-Identifier: Apache-2.0
/// @file random_checkpoint.hpp
/// @brief Writes a random Hugging Face-format checkpoint of a config (config.json +
/// safetensors): every tensor checkpoint_tensors<C>() lists, in a chosen dtype — for tests,
/// benchmarks and trying a config without downloading weights.
#pragma once

#include <deepmoe/io/config_json.hpp>
#include <deepmoe/io/safetensors.hpp>
#include <deepmoe/model/checkpoint.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace util {

/// One tensor to write, with its bytes.
struct OwnedTensor {
  std::string name;
  io::Dtype dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> bytes;
};

/// How to write a random checkpoint.
struct RandomCheckpointOptions {
  std::uint64_t seed = 1;
  io::Dtype linear_dtype = io::Dtype::kF32;  ///< F32, BF16 or F8_E4M3 (with 128² block scales)
  io::Dtype act_dtype = io::Dtype::kF32;     ///< F32 or BF16: norms, embedding, gate, head
  bool mtp = true;                           ///< write the MTP modules
  bool shard = false;  ///< MTP tensors in a second shard, with model.safetensors.index.json
  /// Edits the tensor list before writing (to make broken checkpoints).
  std::function<void(std::vector<OwnedTensor>&)> edit = {};
};

namespace detail {
template <class T>
std::vector<std::byte> to_bytes(std::vector<float> const& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  for (std::size_t i = 0; i < v.size(); ++i) {
    T const x = from_float<T>(v[i]);
    std::memcpy(b.data() + i * sizeof(T), &x, sizeof(T));
  }
  return b;
}

inline std::vector<std::byte> encode(std::vector<float> const& v, io::Dtype d) {
  return d == io::Dtype::kBF16 ? to_bytes<bfloat16>(v) : to_bytes<float>(v);
}
}  // namespace detail

/// The tensors of a random checkpoint of config `cfg`: uniform entries, linear weights (and
/// gate, head) with std 1/√fan_in, norms 1 + 0.1·U, embedding std 1, correction bias std 0.1.
/// @returns invalid_argument if an fp8 quantization fails (it cannot for these values).
template <config::ModelConfig C>
Status random_tensors(std::vector<OwnedTensor>& out, RandomCheckpointOptions const& o,
                      C const& cfg = {}) {
  Rng rng(o.seed);
  out.clear();
  for (model::TensorSpec const& s : model::checkpoint_tensors<C>({.mtp = o.mtp}, cfg)) {
    std::int64_t n = 1;
    for (auto e : s.shape)
      n *= e;
    std::int64_t const cols = s.shape.back();  // fan-in
    std::vector<float> v(static_cast<std::size_t>(n));
    bool const norm = s.shape.size() == 1 && s.kind == model::TensorSpec::Kind::kAct;
    bool const embed = s.name.ends_with("embed_tokens.weight");
    float const std_dev = norm    ? 0.1f
                          : embed ? 1.0f
                          : s.kind == model::TensorSpec::Kind::kF32
                              ? 0.1f
                              : 1.0f / std::sqrt(static_cast<float>(cols));
    for (float& x : v)
      x = (norm ? 1.0f : 0.0f) + std_dev * rng.unit();
    if (s.kind == model::TensorSpec::Kind::kLinear && o.linear_dtype == io::Dtype::kF8E4M3) {
      std::int64_t const r = s.shape[0], br = (r + 127) / 128, bc = (cols + 127) / 128;
      std::vector<float8_e4m3fn> q(v.size());
      std::vector<float> scale(static_cast<std::size_t>(br * bc));
      Status const st = quantize_fp8_block(MatrixView<float8_e4m3fn>(q.data(), r, cols),
                                           MatrixView<float>(scale.data(), br, bc),
                                           MatrixView<float const>(v.data(), r, cols), 128);
      DEEPMOE_RETURN_IF_ERROR(st);
      std::vector<std::byte> qb(q.size());
      std::memcpy(qb.data(), q.data(), q.size());
      out.push_back({s.name, io::Dtype::kF8E4M3, s.shape, std::move(qb)});
      out.push_back(
          {s.name + "_scale_inv", io::Dtype::kF32, {br, bc}, detail::to_bytes<float>(scale)});
      continue;
    }
    io::Dtype const d = s.kind == model::TensorSpec::Kind::kF32      ? io::Dtype::kF32
                        : s.kind == model::TensorSpec::Kind::kLinear ? o.linear_dtype
                                                                     : o.act_dtype;
    out.push_back({s.name, d, s.shape, detail::encode(v, d)});
  }
  return {};
}

/// Writes `tensors` and the config.json of `cfg` into `dir` (created): one model.safetensors,
/// or two shards (MTP tensors in the second) with model.safetensors.index.json.
/// @returns kIoError naming the file that cannot be written.
template <config::ModelConfig C>
Status write_checkpoint(std::string const& dir, std::vector<OwnedTensor> const& tensors, bool shard,
                        C const& cfg = {}) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  auto write_text = [](fs::path const& p, std::string const& text) -> Status {
    std::ofstream f(p);
    f << text;
    if (!f) {
      return Status(StatusCode::kIoError, p.string() + ": cannot write");
    }
    return {};
  };
  DEEPMOE_RETURN_IF_ERROR(
      write_text(fs::path(dir) / "config.json", io::config_json<C>(cfg).dump(2)));
  std::string const mtp_prefix = "model.layers." + std::to_string(cfg.num_hidden_layers) + ".";
  std::vector<io::TensorToWrite> a, b;
  nlohmann::json map = nlohmann::json::object();
  for (OwnedTensor const& t : tensors) {
    bool const second = shard && t.name.starts_with(mtp_prefix);
    (second ? b : a).push_back({t.name, t.dtype, t.shape, t.bytes});
    map[t.name] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  if (!shard) {
    return io::write_safetensors((fs::path(dir) / "model.safetensors").string(), a);
  }
  DEEPMOE_RETURN_IF_ERROR(
      io::write_safetensors((fs::path(dir) / "model-00001-of-00002.safetensors").string(), a));
  DEEPMOE_RETURN_IF_ERROR(
      io::write_safetensors((fs::path(dir) / "model-00002-of-00002.safetensors").string(), b));
  std::int64_t total = 0;
  for (OwnedTensor const& t : tensors)
    total += static_cast<std::int64_t>(t.bytes.size());
  return write_text(
      fs::path(dir) / "model.safetensors.index.json",
      nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", map}}.dump(2));
}

/// A random checkpoint of config `cfg` in `dir` (random_tensors, then o.edit, then
/// write_checkpoint).
/// @returns kIoError naming a file that cannot be written.
template <config::ModelConfig C>
Status write_random_checkpoint(std::string const& dir, RandomCheckpointOptions const& o = {},
                               C const& cfg = {}) {
  std::vector<OwnedTensor> t;
  DEEPMOE_RETURN_IF_ERROR(random_tensors<C>(t, o, cfg));
  if (o.edit) {
    o.edit(t);
  }
  return write_checkpoint<C>(dir, t, o.shard, cfg);
}

}  // namespace util
DEEPMOE_NAMESPACE_END
