// SPDX-License-Identifier: Apache-2.0
/// @file checkpoint.hpp
/// @brief Fills ModelWeights<C> from a Hugging Face checkpoint (io::WeightMap): every tensor the
/// config implies is looked up by its checkpoint name, its shape checked, and it is viewed in
/// place or converted to the config's precision. All problems are reported in one message.
///
/// Conversions (source dtype → the config's type T):
///   - same dtype and aligned: a zero-copy view into the memory-mapped file;
///   - F32/BF16/F16/F64/F8 → float, bfloat16: exact widening or RNE rounding; an F8_E4M3 linear
///     weight is first dequantized with its `weight_scale_inv` (128×128 blocks, docs/model.md
///     §5.3);
///   - F8_E4M3 + `weight_scale_inv` → float8_e4m3fn config: both viewed in place;
///   - anything else → float8_e4m3fn config: quantized blockwise (quantize_fp8_block).
/// The checked set: every `model.*` and `lm_head` tensor of the config (docs/model.md §5.2);
/// `model.layers.{L..L+D−1}.*` (Multi-Token Prediction) when `LoadOptions::mtp` and the config
/// has D = num_nextn_predict_layers > 0, and deliberately ignored otherwise;
/// `*.rotary_emb.inv_freq` buffers of older checkpoints are ignored. Anything else is reported as
/// unexpected.
#pragma once

#include <deepmoe/io/weight_map.hpp>
#include <deepmoe/model/weights.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>

#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// Host memory for tensors converted at load time; pointers stay valid for its lifetime.
class TensorStore {
 public:
  /// Uninitialized storage for n elements of T (aligned for any scalar type).
  template <class T>
  T* allocate(std::int64_t n) {
    auto const bytes = static_cast<std::size_t>(n > 0 ? n : 1) * sizeof(T);
    blobs_.push_back(std::make_unique<std::byte[]>(bytes));
    bytes_ += bytes;
    return reinterpret_cast<T*>(blobs_.back().get());
  }
  /// Bytes allocated so far.
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  std::vector<std::unique_ptr<std::byte[]>> blobs_;
  std::size_t bytes_ = 0;
};

/// A tensor the config implies, as checkpoint_tensors() lists it.
struct TensorSpec {
  /// How the tensor is stored: linear weights take C::weight_t (with `weight_scale_inv` when
  /// fp8), norms, embedding, gate, lm_head and eh_proj C::act_t, the correction bias fp32.
  enum class Kind { kLinear, kAct, kF32 };
  std::string name;                 ///< checkpoint name, e.g. "model.layers.0.mlp.up_proj.weight"
  std::vector<std::int64_t> shape;  ///< row-major extents
  Kind kind = Kind::kAct;
};

/// What to load.
struct LoadOptions {
  /// Load the Multi-Token-Prediction modules when the config has them (else they are ignored).
  bool mtp = true;
  /// Read every mapped page during load (else the first forward pages the weights in).
  bool prefetch = false;
  /// Called after each tensor with the checkpoint bytes processed so far and in all.
  std::function<void(std::int64_t done, std::int64_t total)> progress = {};
};

namespace detail {

inline std::string shape_string(std::vector<std::int64_t> const& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) {
    r += (i ? ", " : "") + std::to_string(s[i]);
  }
  return r + "]";
}

/// Copies the n elements of `bytes` (dtype d) into out as fp32; false for a non-float dtype.
inline bool read_as_float(io::Dtype d, std::span<std::byte const> bytes, float* out,
                          std::int64_t n) {
  auto via = [&](auto tag) {
    using S = decltype(tag);
    std::vector<S> tmp(static_cast<std::size_t>(n));  // aligned copy of the source elements
    std::memcpy(tmp.data(), bytes.data(), static_cast<std::size_t>(n) * sizeof(S));
    if constexpr (std::is_same_v<S, double>) {
      for (std::int64_t i = 0; i < n; ++i)
        out[i] = static_cast<float>(tmp[static_cast<std::size_t>(i)]);
    } else {
      convert_to_float(out, tmp.data(), n);
    }
  };
  switch (d) {
    case io::Dtype::kF32:
      std::memcpy(out, bytes.data(), static_cast<std::size_t>(n) * sizeof(float));
      return true;
    case io::Dtype::kF64:
      via(double{});
      return true;
    case io::Dtype::kBF16:
      via(bfloat16{});
      return true;
    case io::Dtype::kF16:
      via(float16{});
      return true;
    case io::Dtype::kF8E4M3:
      via(float8_e4m3fn{});
      return true;
    case io::Dtype::kF8E5M2:
      via(float8_e5m2{});
      return true;
    default:
      return false;
  }
}

}  // namespace detail

/// Loads the weights of config C from `map`. On success `out` holds views into `map`'s files
/// and into `store` (both must outlive `out`); on failure `out` is unchanged.
/// @returns invalid_argument listing, in one message, every missing tensor (with the shape the
///          config implies), every misshaped one (both shapes), every unexpected one, every
///          tensor of an unusable dtype and every bad fp8 scale (naming the tensor).
template <config::ModelConfig C>
class CheckpointLoader {
  using W = typename C::weight_t;
  using A = typename C::act_t;

 public:
  /// A loader of config `cfg` (omitted for compile-time configs) from `map`; converted tensors
  /// go to `store`; `source` names the checkpoint in messages.
  CheckpointLoader(io::WeightMap const& map, TensorStore& store, std::string source,
                   C const& cfg = {})
      : map_(map),
        store_(store),
        source_(std::move(source)),
        cfg_(cfg),
        H(cfg.hidden_size),
        V(cfg.vocab_size),
        B(cfg.weight_block_size > 0 ? cfg.weight_block_size : kFp8WeightBlock) {}

  Status load(ModelWeights<C>& out, LoadOptions const& opt = {}) {
    ModelWeights<C> w;
    bool const mtp = opt.mtp && cfg_.num_nextn_predict_layers > 0;
    opt_ = &opt;
    for (std::string const& name : map_.names()) {
      io::TensorInfo const* t = map_.file_of(name)->find(name);
      total_bytes_ += t->end - t->begin;
    }
    walk(w, mtp);
    // unexpected: everything not consumed and not deliberately ignored
    for (std::string const& name : map_.names()) {
      if (used_.count(name) != 0 || name.ends_with("rotary_emb.inv_freq") ||
          (!mtp && is_mtp_name(name))) {
        continue;
      }
      unexpected_.push_back(name);
    }
    if (!missing_.empty() || !misshaped_.empty() || !unexpected_.empty() || !bad_.empty()) {
      std::string m = source_ + " does not match the config (" +
                      std::to_string(cfg_.num_hidden_layers) + " layers, H = " + std::to_string(H) +
                      ", E = " + std::to_string(cfg_.n_routed_experts) + "):";
      list(m, "missing", missing_);
      list(m, "misshaped", misshaped_);
      list(m, "unexpected", unexpected_);
      list(m, "unusable", bad_);
      m += config::is_dynamic_v<C>
               ? "\n  HINT: the tensors disagree with the checkpoint's own config.json"
               : "\n  HINT: is this checkpoint of another model? Compare its config.json with "
                 "the compiled config (io::check_config_json).";
      return invalid_argument(std::move(m));
    }
    for (auto& l : w.layers) {
      l.moe.experts = l.experts;
    }
    for (auto& k : w.mtp) {
      k.layer.moe.experts = k.layer.experts;
    }
    out = std::move(w);
    // std::vector's move keeps each buffer, so the spans set above stay valid
    return {};
  }

  /// The tensors C implies, in load order (the MTP modules' when `mtp`).
  static std::vector<TensorSpec> expected(bool mtp, C const& cfg) {
    io::WeightMap const empty;
    TensorStore store;
    CheckpointLoader l(empty, store, "", cfg);
    std::vector<TensorSpec> specs;
    l.record_ = &specs;
    ModelWeights<C> w;
    l.walk(w, mtp && cfg.num_nextn_predict_layers > 0);
    return specs;
  }

 private:
  void walk(ModelWeights<C>& w, bool mtp) {
    matrix("model.embed_tokens.weight", V, H, w.embed_tokens);
    w.layers.resize(cfg_.num_hidden_layers);
    for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
      layer("model.layers." + std::to_string(l) + ".", l, w.layers[static_cast<std::size_t>(l)]);
    }
    vector("model.norm.weight", H, w.norm);
    if (cfg_.tie_word_embeddings) {
      w.lm_head.weight = w.embed_tokens;
    } else {
      matrix("lm_head.weight", V, H, w.lm_head.weight);
    }
    if (mtp) {
      w.mtp.resize(cfg_.num_nextn_predict_layers);
      for (int k = 0; k < cfg_.num_nextn_predict_layers; ++k) {
        int const l = cfg_.num_hidden_layers + k;
        std::string const p = "model.layers." + std::to_string(l) + ".";
        MtpWeights<C>& m = w.mtp[static_cast<std::size_t>(k)];
        matrix(p + "embed_tokens.weight", V, H, m.embed_tokens);
        vector(p + "enorm.weight", H, m.enorm);
        vector(p + "hnorm.weight", H, m.hnorm);
        matrix(p + "eh_proj.weight", H, 2 * H, m.eh_proj.weight);
        layer(p, l, m.layer);
        vector(p + "shared_head.norm.weight", H, m.shared_head_norm);
        matrix(p + "shared_head.head.weight", V, H, m.shared_head_head.weight);
      }
    }
  }

  bool is_mtp_name(std::string const& name) const {
    for (int k = 0; k < cfg_.num_nextn_predict_layers; ++k) {
      if (name.starts_with("model.layers." + std::to_string(cfg_.num_hidden_layers + k) + ".")) {
        return true;
      }
    }
    return false;
  }

  static void list(std::string& m, char const* what, std::vector<std::string> const& v) {
    if (v.empty()) {
      return;
    }
    m += "\n  ";
    m += what;
    m += " (" + std::to_string(v.size()) + "):";
    for (std::size_t i = 0; i < v.size() && i < 12; ++i) {
      m += "\n    " + v[i];
    }
    if (v.size() > 12) {
      m += "\n    ... and " + std::to_string(v.size() - 12) + " more";
    }
  }

  void layer(std::string const& p, int l, DecoderLayerWeights<C>& w) {
    std::int64_t const nh = cfg_.num_attention_heads, dn = cfg_.qk_nope_head_dim;
    std::int64_t const dr = cfg_.qk_rope_head_dim, dv = cfg_.v_head_dim;
    std::int64_t const rq = cfg_.q_lora_rank, rkv = cfg_.kv_lora_rank;
    vector(p + "input_layernorm.weight", H, w.input_layernorm);
    vector(p + "post_attention_layernorm.weight", H, w.post_attention_layernorm);
    std::string const a = p + "self_attn.";
    if (rq > 0) {
      linear(a + "q_a_proj", rq, H, w.self_attn.q_a_proj);
      vector(a + "q_a_layernorm.weight", rq, w.self_attn.q_a_layernorm);
      linear(a + "q_b_proj", nh * (dn + dr), rq, w.self_attn.q_b_proj);
    } else {
      linear(a + "q_proj", nh * (dn + dr), H, w.self_attn.q_proj);
    }
    linear(a + "kv_a_proj_with_mqa", rkv + dr, H, w.self_attn.kv_a_proj_with_mqa);
    vector(a + "kv_a_layernorm.weight", rkv, w.self_attn.kv_a_layernorm);
    linear(a + "kv_b_proj", nh * (dn + dv), rkv, w.self_attn.kv_b_proj);
    linear(a + "o_proj", H, nh * dv, w.self_attn.o_proj);
    // MTP layers (l ≥ L) are MoE layers: is_moe_layer applies to every index
    w.is_moe = config::is_moe_layer(cfg_, l);
    std::string const f = p + "mlp.";
    if (!w.is_moe) {
      swiglu(f, cfg_.intermediate_size, w.mlp);
      return;
    }
    std::int64_t const E = cfg_.n_routed_experts, M = cfg_.moe_intermediate_size;
    MatrixView<A const> gate;
    matrix(f + "gate.weight", E, H, gate);
    w.moe.router.gate_weight = decltype(w.moe.router.gate_weight)::of(gate.data(), E, H);
    if (config::has_correction_bias(cfg_)) {
      VectorView<float const> bias;
      vector(f + "gate.e_score_correction_bias", E, bias);
      w.moe.router.e_score_correction_bias =
          decltype(w.moe.router.e_score_correction_bias)::of(bias.data(), E);
    }
    w.experts.resize(static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e) {
      swiglu(f + "experts." + std::to_string(e) + ".", M, w.experts[static_cast<std::size_t>(e)]);
    }
    if (cfg_.n_shared_experts > 0) {
      swiglu(f + "shared_experts.", config::shared_intermediate_size(cfg_), w.moe.shared_experts);
    }
  }

  void swiglu(std::string const& p, std::int64_t inter, SwiGluWeights<W>& w) {
    linear(p + "gate_proj", inter, H, w.gate_proj);
    linear(p + "up_proj", inter, H, w.up_proj);
    linear(p + "down_proj", H, inter, w.down_proj);
  }

  // The tensor `name` if present with the expected shape (else recorded as missing/misshaped).
  io::TensorInfo const* find(std::string const& name, std::vector<std::int64_t> const& shape,
                             TensorSpec::Kind kind) {
    if (record_ != nullptr) {
      record_->push_back({name, shape, kind});
      return nullptr;
    }
    io::SafetensorsFile const* f = map_.file_of(name);
    if (f == nullptr) {
      missing_.push_back(name + " " + detail::shape_string(shape));
      return nullptr;
    }
    used_.insert(name);
    io::TensorInfo const* t = f->find(name);
    if (opt_ != nullptr) {
      auto const b = f->bytes(*t);
      if (opt_->prefetch) {  // one read per page brings the tensor in
        unsigned char sum = 0;
        for (std::size_t i = 0; i < b.size(); i += 4096)
          sum = static_cast<unsigned char>(sum + static_cast<unsigned char>(b[i]));
        prefetched_ = static_cast<unsigned char>(prefetched_ + sum);
      }
      done_bytes_ += static_cast<std::int64_t>(b.size());
      if (opt_->progress) {
        opt_->progress(done_bytes_, total_bytes_);
      }
    }
    if (t->shape != shape) {
      misshaped_.push_back(name + " is " + detail::shape_string(t->shape) + ", expected " +
                           detail::shape_string(shape));
      return nullptr;
    }
    return t;
  }

  std::span<std::byte const> bytes(std::string const& name, io::TensorInfo const& t) const {
    return map_.file_of(name)->bytes(t);
  }

  // fp32 copy of tensor `name` (an fp8 one dequantized with its scale `scale_name`), or null.
  float* as_float(std::string const& name, io::TensorInfo const& t, std::int64_t rows,
                  std::int64_t cols, std::string const& scale_name) {
    float* v = store_.allocate<float>(rows * cols);
    if (t.dtype == io::Dtype::kF8E4M3 && !scale_name.empty()) {
      float const* s = scale(scale_name, rows, cols);
      if (s == nullptr) {
        return nullptr;
      }
      std::vector<float8_e4m3fn> q(static_cast<std::size_t>(rows * cols));
      std::memcpy(q.data(), bytes(name, t).data(), q.size());
      Status const st = dequantize_fp8_block(
          MatrixView<float>(v, rows, cols), MatrixView<float8_e4m3fn const>(q.data(), rows, cols),
          MatrixView<float const>(s, (rows + B - 1) / B, (cols + B - 1) / B), B);
      if (!st.ok()) {
        bad_.push_back(name + ": " + st.message());
        return nullptr;
      }
      return v;
    }
    if (!detail::read_as_float(t.dtype, bytes(name, t), v, rows * cols)) {
      bad_.push_back(name + " has dtype " + std::string(io::to_string(t.dtype)) +
                     ", which is not a floating-point type");
      return nullptr;
    }
    return v;
  }

  // The fp32 weight_scale_inv [⌈rows/B⌉, ⌈cols/B⌉] of an fp8 weight, or null.
  float const* scale(std::string const& name, std::int64_t rows, std::int64_t cols) {
    std::int64_t const br = (rows + B - 1) / B, bc = (cols + B - 1) / B;
    io::TensorInfo const* t = find(name, {br, bc}, TensorSpec::Kind::kF32);
    if (t == nullptr) {
      return nullptr;
    }
    if (t->dtype == io::Dtype::kF32 &&
        reinterpret_cast<std::uintptr_t>(bytes(name, *t).data()) % alignof(float) == 0) {
      return reinterpret_cast<float const*>(bytes(name, *t).data());
    }
    return as_float(name, *t, br, bc, "");
  }

  // A [rows, cols] (or [cols] when rows < 0) tensor of type T: viewed or converted.
  template <class T>
  T const* fetch(std::string const& name, std::int64_t rows, std::int64_t cols,
                 TensorSpec::Kind kind, std::string const& scale_name = "") {
    std::vector<std::int64_t> shape;
    if (rows >= 0) {
      shape.push_back(rows);
    }
    shape.push_back(cols);
    io::TensorInfo const* t = find(name, shape, kind);
    if (t == nullptr) {
      return nullptr;
    }
    std::int64_t const r = rows >= 0 ? rows : 1;
    auto const b = bytes(name, *t);
    bool const fp8_in = t->dtype == io::Dtype::kF8E4M3 && !scale_name.empty();
    if (t->dtype == io::dtype_of<T>() && !fp8_in &&
        reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) == 0) {
      return reinterpret_cast<T const*>(b.data());
    }
    float const* v = as_float(name, *t, r, cols, fp8_in ? scale_name : "");
    if (v == nullptr) {
      return nullptr;
    }
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else {
      T* out = store_.allocate<T>(r * cols);
      for (std::int64_t i = 0; i < r * cols; ++i)
        out[i] = from_float<T>(v[i]);
      return out;
    }
  }

  template <class T>
  void matrix(std::string const& name, std::int64_t rows, std::int64_t cols,
              MatrixView<T const>& out) {
    if (T const* p = fetch<T>(name, rows, cols, TensorSpec::Kind::kAct,
                              name.ends_with(".weight") ? scale_name_of(name) : std::string())) {
      out = MatrixView<T const>(p, rows, cols);
    }
  }

  template <class T>
  void vector(std::string const& name, std::int64_t n, VectorView<T const>& out) {
    auto const kind = std::is_same_v<T, A> ? TensorSpec::Kind::kAct : TensorSpec::Kind::kF32;
    if (T const* p = fetch<T>(name, -1, n, kind)) {
      out = VectorView<T const>(p, n);
    }
  }

  static std::string scale_name_of(std::string const& weight_name) {
    return weight_name + "_scale_inv";  // "x.weight" → "x.weight_scale_inv"
  }

  // `<prefix>.weight` [rows, cols] (+ `<prefix>.weight_scale_inv` for fp8).
  void linear(std::string const& prefix, std::int64_t rows, std::int64_t cols,
              LinearWeight<W>& out) {
    std::string const name = prefix + ".weight", sname = scale_name_of(name);
    if constexpr (!std::is_same_v<W, float8_e4m3fn>) {
      if (W const* p = fetch<W>(name, rows, cols, TensorSpec::Kind::kLinear, sname)) {
        out.weight = MatrixView<W const>(p, rows, cols);
      }
    } else {
      io::TensorInfo const* t = find(name, {rows, cols}, TensorSpec::Kind::kLinear);
      if (t == nullptr) {
        return;
      }
      std::int64_t const br = (rows + B - 1) / B, bc = (cols + B - 1) / B;
      if (t->dtype == io::Dtype::kF8E4M3) {  // DeepSeek's format: view both in place
        float const* s = scale(sname, rows, cols);
        if (s == nullptr) {
          return;
        }
        out.weight =
            MatrixView<W const>(reinterpret_cast<W const*>(bytes(name, *t).data()), rows, cols);
        out.weight_scale_inv = MatrixView<float const>(s, br, bc);
        Status const st = validate_fp8_block_scales(out.weight, out.weight_scale_inv, B);
        if (!st.ok()) {
          bad_.push_back(sname + ": " + st.message());
        }
        return;
      }
      float const* v = as_float(name, *t, rows, cols, "");
      if (v == nullptr) {
        return;
      }
      W* q = store_.allocate<W>(rows * cols);
      float* s = store_.allocate<float>(br * bc);
      Status const st =
          quantize_fp8_block(MatrixView<W>(q, rows, cols), MatrixView<float>(s, br, bc),
                             MatrixView<float const>(v, rows, cols), B);
      if (!st.ok()) {
        bad_.push_back(name + ": " + st.message());
        return;
      }
      out.weight = MatrixView<W const>(q, rows, cols);
      out.weight_scale_inv = MatrixView<float const>(s, br, bc);
    }
  }

  io::WeightMap const& map_;
  TensorStore& store_;
  std::string source_;
  std::set<std::string> used_;
  std::vector<std::string> missing_, misshaped_, unexpected_, bad_;
  std::vector<TensorSpec>* record_ = nullptr;  // set: list the tensors instead of loading them
  LoadOptions const* opt_ = nullptr;
  std::int64_t done_bytes_ = 0, total_bytes_ = 0;
  unsigned char volatile prefetched_ = 0;  // keeps the prefetch reads
  [[no_unique_address]] C cfg_;
  std::int64_t H, V;  // hidden_size, vocab_size
  int B;              // fp8 block: C's, or DeepSeek's 128 when C's weights are not fp8
};

/// Every tensor a checkpoint of config C holds (with the MTP modules' when `opt.mtp`), in load
/// order, with its shape and storage kind.
template <config::ModelConfig C>
std::vector<TensorSpec> checkpoint_tensors(LoadOptions const& opt = {}, C const& cfg = {}) {
  return CheckpointLoader<C>::expected(opt.mtp, cfg);
}

}  // namespace model
DEEPMOE_NAMESPACE_END
