// SPDX-License-Identifier: Apache-2.0
/// @file model.cuh
/// @brief gpu::DeviceModel<C>: a whole DeepSeek-V3-family network on one GPU, its weights
/// uploaded from a loaded model::Model<C> (the same checkpoint loader), computing logits for a
/// batch of sequences that continue in a gpu::DeviceKvCache — prefill, decode or any mix — as
/// model::Model::forward does on the CPU:
///
///   h = Embed[t]                                       [N, H] fp32 residual stream
///   for l < L:  h += MLA(RMSNorm_in(h))                 gpu::mla_attention (latent cache)
///               h += FFN(RMSNorm_post(h))               dense: one SwiGLU segment
///                                                       MoE:   gpu::moe_layer_forward
///   logits = RMSNorm_final(h[rows]) · lm_headᵀ
///
/// Activations are fp32 between the ops, as on the CPU. The matrix products run on the kernels
/// set_kernels() chooses: kSimt keeps every row in fp32 (gpu::linear, gpu::grouped_swiglu: the
/// CPU's arithmetic); kAuto (the default) puts bf16 weights on tensor cores with rows rounded to
/// bf16 (linear_mma, grouped_swiglu_mma: DeepSeek-V3's bf16 inference) wherever the sizes allow.
/// The choice depends on the model and the device, never on the batch: every op computes a row
/// the same way whatever the rest of the batch, so a sequence's logits do not depend on the
/// batch, nor on how it was split into calls (bitwise with a float cache). One stream; a call
/// ends with the logits copied to the host.
/// fp8 checkpoints keep e4m3 experts (grouped_swiglu_fp8); their attention projections and dense
/// MLPs are dequantized to bf16 at upload. Not on the device yet: the MTP modules (mtp_forward
/// stays on the CPU) and a tensor-core attention core (the SIMT one of mla_attention.cuh).
#pragma once

#include <deepmoe/backend/cuda/kv_cache.cuh>
#include <deepmoe/backend/cuda/linear_mma.cuh>
#include <deepmoe/backend/cuda/mla_attention.cuh>
#include <deepmoe/backend/cuda/moe_layer.cuh>
#include <deepmoe/model/model.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

namespace detail {
// h[n, :] = float(table[tokens[n], :])
template <class A>
__global__ void embed_kernel(float* __restrict__ h, A const* __restrict__ table,
                             std::int32_t const* __restrict__ tokens, std::int64_t H) {
  std::int64_t const n = blockIdx.x;
  A const* e = table + std::int64_t{tokens[n]} * H;
  for (std::int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    h[n * H + j] = static_cast<float>(e[j]);
  }
}
// h += y, n values
__global__ inline void residual_add_kernel(float* __restrict__ h, float const* __restrict__ y,
                                           std::int64_t n) {
  std::int64_t const i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    h[i] += y[i];
  }
}
// out[r, :] = in[rows[r], :]
__global__ inline void gather_rows_kernel(float* __restrict__ out, float const* __restrict__ in,
                                          std::int64_t const* __restrict__ rows, std::int64_t H) {
  std::int64_t const r = blockIdx.x;
  for (std::int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    out[r * H + j] = in[rows[r] * H + j];
  }
}
}  // namespace detail

/// A model of config C on one GPU (file comment). Move-only; one caller at a time (scratch and
/// the stream are reused across calls).
/// @tparam C  a compile-time config (preset or generated from config.json by
///            deepmoe_add_model_config) with fp32, bf16 or fp8-e4m3 weights; fp8
///            ones keep e4m3 and their 128×128 block scales for the experts (grouped_swiglu_fp8:
///            H and moe_intermediate_size multiples of 128, SM89+) and are dequantized to bf16 at
///            upload for the attention projections and dense MLPs (DeepSeek-V3's
///            inference/model.py does the same for kv_b_proj's absorbed path)
template <config::ModelConfig C>
class DeviceModel {
  using W = typename C::weight_t;
  using A = typename C::act_t;
  // the projections' and dense MLPs' weights on the device: fp8 ones dequantized to bf16
  using Wd = std::conditional_t<is_float8_v<W>, bfloat16, W>;
  static_assert(!config::is_dynamic_v<C>,
                "DeviceModel: a compile-time config (the router sizes shared memory by E): "
                "generate one from config.json with deepmoe_add_model_config");

 public:
  using config_type = C;

  DeviceModel() = default;
  DeviceModel(DeviceModel&&) noexcept = default;
  DeviceModel& operator=(DeviceModel&&) noexcept = default;

  /// Copies the weights of a loaded model to the current device (synchronously): every tensor
  /// of the main model, the routed experts of a layer into one [E, …] array per projection.
  /// @returns invalid_argument when `host` is not loaded; kCudaError when device memory runs
  ///          out (naming the tensor).
  static Status upload(model::Model<C> const& host, DeviceModel& out) {
    if (!host.loaded()) {
      return invalid_argument("DeviceModel::upload: the model has no checkpoint loaded");
    }
    DeviceModel d;
    d.cfg_ = std::make_unique<C>(host.config());
    C const& cfg = *d.cfg_;
    model::ModelWeights<C> const& w = host.weights();
    cudaStream_t stream = nullptr;
    DEEPMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    d.stream_.reset(stream);
    d.embed_ = d.put(w.embed_tokens.data(), w.embed_tokens.size(), "model.embed_tokens");
    d.norm_ = d.put(w.norm.data(), w.norm.size(), "model.norm");
    d.lm_head_ = d.put(w.lm_head.weight.data(), w.lm_head.weight.size(), "lm_head");
    std::vector<float> const inv =
        rope_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling);
    d.inv_freq_ = d.put(inv.data(), static_cast<std::int64_t>(inv.size()), "rope inv_freq");
    for (std::size_t l = 0; l < w.layers.size() && d.failed_.empty(); ++l) {
      model::DecoderLayerWeights<C> const& lw = w.layers[l];
      std::string const p = "model.layers." + std::to_string(l);
      Layer L;
      L.is_moe = lw.is_moe;
      L.input_layernorm = d.put(lw.input_layernorm, p + ".input_layernorm");
      L.post_attention_layernorm =
          d.put(lw.post_attention_layernorm, p + ".post_attention_layernorm");
      MlaWeights<C> const& a = lw.self_attn;
      std::string const ap = p + ".self_attn.";
      L.attn.q_a_proj = d.put_linear(a.q_a_proj, ap + "q_a_proj");
      L.attn.q_a_layernorm = d.put(a.q_a_layernorm, ap + "q_a_layernorm");
      L.attn.q_b_proj = d.put_linear(a.q_b_proj, ap + "q_b_proj");
      L.attn.q_proj = d.put_linear(a.q_proj, ap + "q_proj");
      L.attn.kv_a_proj_with_mqa = d.put_linear(a.kv_a_proj_with_mqa, ap + "kv_a_proj_with_mqa");
      L.attn.kv_a_layernorm = d.put(a.kv_a_layernorm, ap + "kv_a_layernorm");
      L.attn.kv_b_proj = d.put_linear(a.kv_b_proj, ap + "kv_b_proj");
      L.attn.o_proj = d.put_linear(a.o_proj, ap + "o_proj");
      if (lw.is_moe) {
        moe::MoeWeights<C> const& m = lw.moe;
        L.moe.gate_weight =
            d.put(m.router.gate_weight.data(), m.router.gate_weight.size(), p + ".mlp.gate");
        if (m.router.e_score_correction_bias.data() != nullptr) {
          L.moe.e_score_correction_bias = d.put(m.router.e_score_correction_bias.data(),
                                                m.router.e_score_correction_bias.size(),
                                                p + ".mlp.gate.e_score_correction_bias");
        }
        L.moe.experts = d.put_experts(m.experts, p + ".mlp.experts");
        if (config::shared_intermediate_size(cfg) > 0) {
          L.moe.shared_experts =
              d.put_experts(std::span(&m.shared_experts, 1), p + ".mlp.shared_experts");
        }
      } else {
        L.mlp = d.put_mlp(lw.mlp, p + ".mlp");
      }
      d.layers_.push_back(L);
    }
    if (!d.failed_.empty()) {
      return d.failed_.front();
    }
    // a pageable cudaMemcpy may return before its DMA lands: wait, as forward() runs on a
    // non-blocking stream
    DEEPMOE_CUDA_CHECK(cudaDeviceSynchronize());
    out = std::move(d);
    return {};
  }

  /// The KV cache type of forward() (what generate::Generator allocates).
  template <class KV>
  using cache_type = DeviceKvCache<C, KV>;

  /// Whether weights are uploaded.
  bool loaded() const noexcept { return cfg_ != nullptr; }
  /// false: the Multi-Token-Prediction modules do not run on the device (yet).
  bool has_mtp() const noexcept { return false; }
  /// The config. @pre uploaded
  C const& config() const noexcept { return *cfg_; }
  /// Bytes of device memory the weights take.
  std::int64_t weight_bytes() const noexcept { return weight_bytes_; }
  /// Which MLA form forward() uses (default kAbsorbed: attention over the latent cache, no
  /// per-key scratch; kNaive expands every key of the sequence, the prefill form).
  void set_mla_form(MlaForm f) noexcept { form_ = f; }
  /// Which kernels run the matrix products (kAuto by default): kSimt keeps every row in fp32
  /// (the CPU's arithmetic, gpu::linear and gpu::grouped_swiglu); kAuto and kMma put bf16
  /// weights on tensor cores, rows rounded to bf16 (linear_mma, grouped_swiglu_mma), wherever
  /// a product's sizes allow — the experts as moe_layer_forward's ExpertKernel (kMma: an error
  /// where they cannot). fp8 experts always run on tensor cores.
  void set_kernels(ExpertKernel k) noexcept { kernels_ = k; }
  /// The stream forward() runs on.
  cudaStream_t stream() const noexcept { return stream_.get(); }

  /// Logits of a batch of sequences that continue in `cache`, with model::Model::forward's rules
  /// (model::check_batch, model::check_slots): each sequence names its slot, its positions are
  /// consecutive and start at most at the slot's length (a start below it rewinds the slot). On
  /// success each slot's length becomes its last position + 1; on failure (also a token that
  /// could not be routed, found after the pass) a rewound slot stays rewound.
  /// @param logits  [rows, V] fp32, host, out: rows = batch.size() (kLast) or Σ T_s (kAll)
  /// @param hidden  must be empty: the final hidden states (the MTP modules' input) stay on the
  ///                device
  /// @returns kNotSupported for a `hidden` output; the batch errors of model::Model::forward;
  /// invalid_argument naming layer, sequence
  ///          and position when a token could not be routed (a NaN or inf hidden state: its
  ///          logits are meaningless); the kernels' errors (kCudaError).
  template <class KV>
  Status forward(std::span<model::Sequence const> batch, DeviceKvCache<C, KV>& cache,
                 MatrixView<float> logits, model::LogitsRows which = model::LogitsRows::kLast,
                 MatrixView<float> hidden = {}) {
    if (cfg_ == nullptr) {
      return invalid_argument("DeviceModel::forward: no model uploaded (DeviceModel::upload)");
    }
    if (hidden.data() != nullptr) {
      return Status(
          StatusCode::kNotSupported,
          "DeviceModel::forward: no hidden-state output (the MTP modules run on the CPU)");
    }
    C const& cfg = *cfg_;
    cudaStream_t const stream = stream_.get();
    std::int64_t N = 0;
    DEEPMOE_RETURN_IF_ERROR(model::check_batch(batch, which, logits, {}, cfg, N));
    if (cache.layers() != cfg.num_hidden_layers || cache.dim() != config::kv_cache_dim(cfg)) {
      return invalid_argument(
          "DeviceModel::forward: the KV cache was created for another "
          "config (DeviceKvCache::create with config())");
    }
    DEEPMOE_RETURN_IF_ERROR(model::check_slots(batch, cache, true));
    if (N == 0) {
      return {};
    }
    std::int64_t const H = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
    std::int64_t const rows = logits.extent(0), L = cfg.num_hidden_layers;

    // per token: id, position, its sequence's first cache row and first kv-scratch row; the
    // rows that get logits; per sequence, its keys
    std::vector<std::int32_t> tokens;
    std::vector<std::int64_t> positions, cache_rows, key_rows, out_rows;
    std::vector<DeviceMlaBatch::Keys> keys;
    std::int64_t total_keys = 0;
    for (model::Sequence const& s : batch) {
      std::int64_t const T = s.tokens.extent(0), count = s.positions(0) + T;
      keys.push_back({cache.first_row(s.slot), count, total_keys});
      for (std::int64_t i = 0; i < T; ++i) {
        tokens.push_back(s.tokens(i));
        positions.push_back(s.positions(i));
        cache_rows.push_back(cache.first_row(s.slot));
        key_rows.push_back(total_keys);
        if (which == model::LogitsRows::kAll || i == T - 1) {
          out_rows.push_back(static_cast<std::int64_t>(positions.size()) - 1);
        }
      }
      total_keys += count;
    }

    // workspace: index arrays, residual h, x, y, the largest op scratch, head rows, logits
    std::size_t moe_bytes = 0;
    DEEPMOE_RETURN_IF_ERROR(moe_layer_workspace_bytes<C>(N, moe_bytes, cfg));
    std::int64_t max_keys = 0;
    for (auto const& k : keys)
      max_keys = std::max(max_keys, k.count);
    std::size_t const mla_bytes =
        mla_attention_workspace_bytes<C>(N, total_keys, max_keys, form_, cfg);
    auto const n = static_cast<std::size_t>(N);
    auto const uH = static_cast<std::size_t>(H);
    // dense MLP: fp32 SwiGLU activations (SIMT), or bf16 rows, activations and the tile
    // schedule (tensor cores)
    std::size_t const dense_bytes = detail::align_up(n * static_cast<std::size_t>(I) * 4) +
                                    detail::align_up(n * uH * 2) + detail::align_up(16);
    std::size_t at = 0;
    auto take = [&](std::size_t bytes) {
      std::size_t const here = at;
      at += detail::align_up(bytes);
      return here;
    };
    std::size_t const o_tokens = take(n * 4), o_pos = take(n * 8), o_crow = take(n * 8),
                      o_krow = take(n * 8), o_out = take(static_cast<std::size_t>(rows) * 8),
                      o_failed = take(static_cast<std::size_t>(L) * 8), o_seg = take(2 * 4),
                      o_h = take(n * uH * 4), o_x = take(n * uH * 4), o_y = take(n * uH * 4),
                      o_x16 = take(n * uH * 2),
                      o_op = take(std::max({moe_bytes, mla_bytes, dense_bytes})),
                      o_rows = take(static_cast<std::size_t>(rows) * uH * 4),
                      o_logits = take(static_cast<std::size_t>(rows * V) * 4);
    if (workspace_.size() < at) {
      DEEPMOE_RETURN_IF_ERROR(workspace_.allocate(at));
    }
    unsigned char* base = workspace_.data();
    auto f32 = [&](std::size_t o) { return reinterpret_cast<float*>(base + o); };
    auto i64 = [&](std::size_t o) { return reinterpret_cast<std::int64_t*>(base + o); };
    auto* d_tokens = reinterpret_cast<std::int32_t*>(base + o_tokens);
    auto* d_failed = reinterpret_cast<unsigned long long*>(base + o_failed);
    auto* d_seg = reinterpret_cast<std::int32_t*>(base + o_seg);
    auto upload = [&](void* to, void const* from, std::size_t bytes) {
      return cudaMemcpyAsync(to, from, bytes, cudaMemcpyHostToDevice, stream);
    };
    DEEPMOE_CUDA_CHECK(upload(d_tokens, tokens.data(), n * 4));
    DEEPMOE_CUDA_CHECK(upload(i64(o_pos), positions.data(), n * 8));
    DEEPMOE_CUDA_CHECK(upload(i64(o_crow), cache_rows.data(), n * 8));
    DEEPMOE_CUDA_CHECK(upload(i64(o_krow), key_rows.data(), n * 8));
    DEEPMOE_CUDA_CHECK(upload(i64(o_out), out_rows.data(), out_rows.size() * 8));
    std::int32_t const seg[2] = {0, static_cast<std::int32_t>(N)};
    DEEPMOE_CUDA_CHECK(upload(d_seg, seg, sizeof seg));
    std::vector<unsigned long long> failed(static_cast<std::size_t>(L),
                                           static_cast<unsigned long long>(N));
    DEEPMOE_CUDA_CHECK(upload(d_failed, failed.data(), failed.size() * 8));

    float* h = f32(o_h);
    float* x = f32(o_x);
    float* y = f32(o_y);
    void* op = base + o_op;
    std::size_t const op_bytes = std::max({moe_bytes, mla_bytes, dense_bytes});
    auto const blocks = static_cast<unsigned>(ceil_div(N * H, 256));
    detail::embed_kernel<A><<<static_cast<unsigned>(N), 256, 0, stream>>>(h, embed_, d_tokens, H);
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
    DeviceMlaBatch const mb{i64(o_pos), i64(o_crow), i64(o_krow),
                            std::span<DeviceMlaBatch::Keys const>(keys), N};
    double const eps = cfg.rms_norm_eps;
    for (std::int64_t l = 0; l < L; ++l) {
      Layer const& lw = layers_[static_cast<std::size_t>(l)];
      std::string const p = "model.layers." + std::to_string(l) + ": ";
      auto prefixed = [&](Status const& st) { return Status(st.code(), p + st.message()); };
      if (Status st = rms_norm(x, h, lw.input_layernorm, N, H, eps, stream); !st.ok()) {
        return prefixed(st);
      }
      if (Status st = mla_attention<C, KV>(y, x, lw.attn, mb, cache.data(), l * cache.capacity(),
                                           inv_freq_, form_, kernels_ != ExpertKernel::kSimt, op,
                                           op_bytes, stream, cfg);
          !st.ok()) {
        return prefixed(st);
      }
      detail::residual_add_kernel<<<blocks, 256, 0, stream>>>(h, y, N * H);
      DEEPMOE_CUDA_CHECK(cudaGetLastError());
      if (Status st = rms_norm(x, h, lw.post_attention_layernorm, N, H, eps, stream); !st.ok()) {
        return prefixed(st);
      }
      Status const st = lw.is_moe
                            ? moe_layer_forward<C, float>(y, x, lw.moe, op, op_bytes, d_failed + l,
                                                          N, stream, kernels_, cfg)
                            : dense_mlp(y, x, lw.mlp, N, d_seg, op, stream);
      if (!st.ok()) {
        return prefixed(st);
      }
      detail::residual_add_kernel<<<blocks, 256, 0, stream>>>(h, y, N * H);
      DEEPMOE_CUDA_CHECK(cudaGetLastError());
    }
    detail::gather_rows_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(f32(o_rows), h,
                                                                                i64(o_out), H);
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
    if (Status st = rms_norm(f32(o_rows), f32(o_rows), norm_, rows, H, eps, stream); !st.ok()) {
      return Status(st.code(), "model.norm: " + st.message());
    }
    bool const mma_head = std::is_same_v<A, bfloat16> && kernels_ != ExpertKernel::kSimt &&
                          linear_mma_supported(V, H).ok();
    DEEPMOE_RETURN_IF_ERROR(project(f32(o_logits), f32(o_rows), lm_head_, rows, V, H, mma_head,
                                    reinterpret_cast<bfloat16*>(base + o_x16), stream));
    DEEPMOE_CUDA_CHECK(cudaMemcpyAsync(logits.data(), f32(o_logits),
                                       static_cast<std::size_t>(rows * V) * 4,
                                       cudaMemcpyDeviceToHost, stream));
    DEEPMOE_CUDA_CHECK(cudaMemcpyAsync(failed.data(), d_failed, failed.size() * 8,
                                       cudaMemcpyDeviceToHost, stream));
    DEEPMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (std::int64_t l = 0; l < L; ++l) {
      auto const t = static_cast<std::int64_t>(failed[static_cast<std::size_t>(l)]);
      if (t < N) {
        std::size_t s = 0;
        std::int64_t first = 0;
        while (first + batch[s].tokens.extent(0) <= t) {
          first += batch[s].tokens.extent(0);
          ++s;
        }
        return invalid_argument("forward: model.layers." + std::to_string(l) + ": sequence " +
                                std::to_string(s) + ", position " +
                                std::to_string(positions[static_cast<std::size_t>(t)]) +
                                " could not be routed (a NaN or inf hidden state, or too few "
                                "eligible experts)");
      }
    }
    for (model::Sequence const& s : batch)
      cache.set_length(s.slot, s.positions(0) + s.tokens.extent(0));
    return {};
  }

 private:
  struct Layer {
    bool is_moe = false;
    A const* input_layernorm = nullptr;
    A const* post_attention_layernorm = nullptr;
    DeviceMlaWeights<Wd, A> attn;
    DeviceSwiGluWeights<Wd> mlp;  // dense layers
    DeviceMoeWeights<C> moe;      // MoE layers
  };

  // y = the dense SwiGLU MLP of the N rows x (one segment, d_seg = {0, N}): on tensor cores
  // (rows rounded to bf16) where kernels_ and the sizes allow, else the fp32 SIMT tiles
  Status dense_mlp(float* y, float const* x, DeviceSwiGluWeights<Wd> const& w, std::int64_t N,
                   std::int32_t const* d_seg, void* scratch, cudaStream_t stream) const {
    std::int64_t const H = cfg_->hidden_size, I = cfg_->intermediate_size;
    auto* base = static_cast<unsigned char*>(scratch);
    std::size_t const hidden = detail::align_up(static_cast<std::size_t>(N * I) * 4);
    if constexpr (std::is_same_v<Wd, bfloat16>) {
      if (kernels_ != ExpertKernel::kSimt && grouped_swiglu_mma_supported(H, I).ok()) {
        auto* x16 = reinterpret_cast<bfloat16*>(base + hidden);
        auto* tiles = reinterpret_cast<std::int32_t*>(
            base + hidden + detail::align_up(static_cast<std::size_t>(N * H) * 2));
        detail::to_bf16_kernel<<<static_cast<unsigned>(ceil_div(N * H, 256)), 256, 0, stream>>>(
            x16, x, N * H);
        DEEPMOE_CUDA_CHECK(cudaGetLastError());
        return grouped_swiglu_mma(y, reinterpret_cast<bfloat16*>(base), x16, d_seg, tiles, 1, N, w,
                                  H, I, stream);
      }
    }
    return grouped_swiglu<Wd, float>(y, reinterpret_cast<float*>(base), x, d_seg, 1, N, w, H, I,
                                     stream);
  }

  // Device copy of n host values (null for none); the first failure is kept in failed_.
  template <class T>
  T const* put(T const* host, std::int64_t count, std::string const& name) {
    if (host == nullptr || count <= 0 || !failed_.empty()) {
      return nullptr;
    }
    DeviceBuffer<unsigned char> b;
    auto const bytes = static_cast<std::size_t>(count) * sizeof(T);
    Status const st = [&]() -> Status {
      DEEPMOE_RETURN_IF_ERROR(b.allocate(bytes));
      DEEPMOE_CUDA_CHECK(cudaMemcpy(b.data(), host, bytes, cudaMemcpyHostToDevice));
      return {};
    }();
    if (!st.ok()) {
      failed_.push_back(Status(st.code(), "DeviceModel::upload: " + name + ": " + st.message()));
      return nullptr;
    }
    weight_bytes_ += static_cast<std::int64_t>(bytes);
    auto const* p = reinterpret_cast<T const*>(b.data());
    buffers_.push_back(std::move(b));
    return p;
  }
  template <class T, class E>
  T const* put(TensorView<T const, E> v, std::string const& name) {
    return put(v.data(), v.data() != nullptr ? v.size() : 0, name);
  }
  // a linear layer's weight: as it is, or (fp8) dequantized with its block scales to bf16
  Wd const* put_linear(LinearWeight<W> const& lw, std::string const& name) {
    if constexpr (is_float8_v<W>) {
      if (lw.weight.data() == nullptr || !failed_.empty()) {
        return nullptr;
      }
      std::vector<float> wide(static_cast<std::size_t>(lw.weight.size()));
      Status const st = dequantize_fp8_block(
          MatrixView<float>(wide.data(), lw.weight.extent(0), lw.weight.extent(1)), lw.weight,
          lw.weight_scale_inv, cfg_->weight_block_size);
      if (!st.ok()) {
        failed_.push_back(Status(st.code(), "DeviceModel::upload: " + name + ": " + st.message()));
        return nullptr;
      }
      std::vector<bfloat16> const narrow(wide.begin(), wide.end());
      return put(narrow.data(), static_cast<std::int64_t>(narrow.size()), name);
    } else {
      return put(lw.weight, name);
    }
  }
  DeviceSwiGluWeights<Wd> put_mlp(SwiGluWeights<W> const& m, std::string const& p) {
    DeviceSwiGluWeights<Wd> d;
    d.gate_proj = put_linear(m.gate_proj, p + ".gate_proj");
    d.up_proj = put_linear(m.up_proj, p + ".up_proj");
    d.down_proj = put_linear(m.down_proj, p + ".down_proj");
    return d;
  }
  // S experts' gate, up and down weights, each into one [S, …] array at C's precision (fp8:
  // with their scales, [S, ⌈I/B⌉, ⌈H/B⌉] and [S, ⌈H/B⌉, ⌈I/B⌉])
  DeviceSwiGluWeights<W> put_experts(std::span<moe::ExpertWeights<C> const> experts,
                                     std::string const& p) {
    auto stage = [&](auto proj, std::string const& name) {
      using T = std::remove_cvref_t<decltype(*proj(experts.front()).data())>;
      std::vector<T> staged;
      for (moe::ExpertWeights<C> const& e : experts) {
        auto const v = proj(e);
        if (v.data() == nullptr || v.size() == 0) {
          failed_.push_back(
              invalid_argument("DeviceModel::upload: " + p + "." + name + " is missing"));
          return static_cast<T const*>(nullptr);
        }
        staged.insert(staged.end(), v.data(), v.data() + v.size());
      }
      return put(staged.data(), static_cast<std::int64_t>(staged.size()), p + "." + name);
    };
    DeviceSwiGluWeights<W> d;
    d.gate_proj = stage([](auto const& e) { return e.gate_proj.weight; }, "gate_proj");
    d.up_proj = stage([](auto const& e) { return e.up_proj.weight; }, "up_proj");
    d.down_proj = stage([](auto const& e) { return e.down_proj.weight; }, "down_proj");
    if constexpr (is_float8_v<W>) {
      d.gate_scale_inv = stage([](auto const& e) { return e.gate_proj.weight_scale_inv; },
                               "gate_proj.weight_scale_inv");
      d.up_scale_inv = stage([](auto const& e) { return e.up_proj.weight_scale_inv; },
                             "up_proj.weight_scale_inv");
      d.down_scale_inv = stage([](auto const& e) { return e.down_proj.weight_scale_inv; },
                               "down_proj.weight_scale_inv");
    }
    return d;
  }

  struct StreamDeleter {
    void operator()(cudaStream_t s) const noexcept { static_cast<void>(cudaStreamDestroy(s)); }
  };
  std::unique_ptr<C> cfg_;
  std::unique_ptr<CUstream_st, StreamDeleter> stream_;
  std::vector<DeviceBuffer<unsigned char>> buffers_;
  std::int64_t weight_bytes_ = 0;
  std::vector<Status> failed_;  // the first upload that failed, if any
  A const* embed_ = nullptr;
  A const* norm_ = nullptr;
  A const* lm_head_ = nullptr;
  float const* inv_freq_ = nullptr;
  std::vector<Layer> layers_;
  DeviceBuffer<unsigned char> workspace_;
  MlaForm form_ = MlaForm::kAbsorbed;
  ExpertKernel kernels_ = ExpertKernel::kAuto;
};

}  // namespace gpu
DEEPMOE_NAMESPACE_END
