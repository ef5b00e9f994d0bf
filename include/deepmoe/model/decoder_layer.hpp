// SPDX-License-Identifier: Apache-2.0
/// @file decoder_layer.hpp
/// @brief One decoder layer over a batch of sequences, on the CPU:
///   h ← h + MLA(RMSNorm_in(h))          (attention within each sequence, causal by position)
///   h ← h + FFN(RMSNorm_post(h))        (dense SwiGLU, or the DeepSeekMoE layer)
/// Every norm uses the config's rms_norm_eps. The residual stream h is fp32.
/// docs/model.md §3; DeepSeek-V3 inference/model.py `Block`.
#pragma once

#include <deepmoe/core/buffer.hpp>
#include <deepmoe/model/batch.hpp>
#include <deepmoe/model/weights.hpp>
#include <deepmoe/ops/dense_mlp.hpp>

#include <cstdint>
#include <span>
#include <string>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// Scratch of decoder_layer_forward, reused across layers and calls (grows to the largest
/// batch), and the config the layers run with. Not thread-safe: one per concurrent caller.
template <config::ModelConfig C>
struct DecoderLayerScratch {
  /// Scratch for config `cfg` (omitted for compile-time configs).
  explicit DecoderLayerScratch(C const& cfg = {}) : moe(cfg) {}
  Buffer<float> x, y, mlp_hidden;  ///< [N, H], [N, H], [N, I]
  moe::MoeWorkspace<C> moe;        ///< holds the config
};

/// h[rows of sequence s] ← one decoder layer of those rows, for every sequence of `batch`; the
/// rows of h are the sequences' tokens, concatenated in batch order.
/// @param h       [N, H] fp32, in/out: the residual stream, N = Σ_s T_s
/// @param batch   the sequences (their positions; tokens are not read)
/// @param w       the layer's weights
/// @param s       scratch
/// @param form    MLA form (naive or absorbed; equal up to rounding)
/// @param name    the layer's checkpoint prefix for error messages ("model.layers.3")
/// @param cache   one sequence's cache rows for this layer per sequence of `batch`, or empty
///                for no cache (mla_attention)
/// @returns the first op's error, prefixed with `name`; kOutOfRange when scratch memory runs out
///          or a position is beyond the cache.
template <config::ModelConfig C, class KV = float>
Status decoder_layer_forward(MatrixView<float, kDyn, config::hidden_extent<C>> h,
                             std::span<Sequence const> batch, DecoderLayerWeights<C> const& w,
                             DecoderLayerScratch<C>& s, MlaForm form, std::string const& name,
                             std::span<MlaCacheRows<KV> const> cache = {}) {
  C const& cfg = s.moe.config();
  std::int64_t const H = cfg.hidden_size, I = cfg.intermediate_size;
  std::int64_t const N = h.extent(0);
  auto const n = static_cast<std::size_t>(N);
  float* const x = s.x.get(n * static_cast<std::size_t>(H));
  float* const y = s.y.get(n * static_cast<std::size_t>(H));
  float* const mh = w.is_moe ? y : s.mlp_hidden.get(n * static_cast<std::size_t>(I));  // y: unused
  if (N > 0 && (x == nullptr || y == nullptr || mh == nullptr)) {
    return Status(StatusCode::kOutOfRange, name + ": cannot allocate scratch for " +
                                               std::to_string(N) +
                                               " tokens — HINT: split the batch");
  }
  auto prefixed = [&](Status const& st) { return Status(st.code(), name + ": " + st.message()); };
  auto const hv = MatrixView<float const>(h.data(), N, H);
  auto const xv = MatrixView<float>(x, N, H), yv = MatrixView<float>(y, N, H);
  double const eps = cfg.rms_norm_eps;
  auto residual_add = [&] {
    DEEPMOE_OMP(omp parallel for schedule(static) if (N * H >= (1 << 16)))
    for (std::int64_t i = 0; i < N * H; ++i)
      h.data()[i] += y[i];
  };

  if (Status const st = rms_norm(xv, hv, w.input_layernorm, eps); !st.ok()) {
    return prefixed(Status(st.code(), "input_layernorm: " + st.message()));
  }
  std::int64_t row = 0;
  for (std::size_t q = 0; q < batch.size(); ++q) {
    Sequence const& seq = batch[q];
    std::int64_t const T = seq.tokens.extent(0);
    using HView = MatrixView<float, kDyn, config::hidden_extent<C>>;
    Status const st = mla_attention<C, KV>(
        HView::of(y + row * H, T, H), HView::of(x + row * H, T, H), seq.positions, w.self_attn,
        form, cfg, cache.empty() ? MlaCacheRows<KV>{} : cache[q]);
    if (!st.ok()) {
      return prefixed(st);
    }
    row += T;
  }
  residual_add();

  if (Status const st = rms_norm(xv, hv, w.post_attention_layernorm, eps); !st.ok()) {
    return prefixed(Status(st.code(), "post_attention_layernorm: " + st.message()));
  }
  using HView = MatrixView<float, kDyn, config::hidden_extent<C>>;
  Status const st =
      w.is_moe
          ? moe::moe_layer_forward<C, float>(HView::of(y, N, H), HView::of(x, N, H), w.moe, s.moe)
          : dense_mlp(yv, MatrixView<float>(mh, N, I), MatrixView<float const>(x, N, H), w.mlp,
                      cfg.weight_block_size, "mlp");
  if (!st.ok()) {
    return prefixed(st);
  }
  residual_add();
  return {};
}

}  // namespace model
DEEPMOE_NAMESPACE_END
