// SPDX-License-Identifier: Apache-2.0
/// @file layer_backward.hpp
/// @brief One decoder layer for training (one sequence; fp32 or bf16 weights, fp32 arithmetic;
/// naive MLA form): a forward that keeps its activations (LayerActivations), and the backward
/// from them — or from the layer input alone, recomputing the forward (gradient checkpointing,
/// so that training keeps only each layer's input):
///   x1 = RMSNorm_in(h);  m = h + MLA(x1);  x2 = RMSNorm_post(m);  out = m + FFN(x2)
///   dm = dout + RMSNorm_postᵀ(FFNᵀ(dout));  dh = dm + RMSNorm_inᵀ(MLAᵀ(dm))
/// where ᵀ stands for each op's backward (train/backward.hpp, mla_backward.hpp,
/// moe_backward.hpp). docs/model.md §3.
#pragma once

#include <deepmoe/model/weights.hpp>
#include <deepmoe/train/mla_backward.hpp>
#include <deepmoe/train/moe_backward.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// Gradients of one decoder layer's weights.
struct LayerGrads {
  std::vector<float> input_layernorm, post_attention_layernorm;  ///< [H] each
  MlaGrads self_attn;                                            ///< `self_attn.*`
  SwiGluGrads mlp;                                               ///< dense layers
  MoeGrads moe;                                                  ///< MoE layers
};

/// Zeroed gradients for layer `layer` of config `cfg`.
template <config::ModelConfig C>
LayerGrads zero_layer_grads(int layer, C const& cfg = {}) {
  LayerGrads g;
  auto const H = static_cast<std::size_t>(cfg.hidden_size);
  g.input_layernorm.assign(H, 0.0f);
  g.post_attention_layernorm.assign(H, 0.0f);
  g.self_attn = zero_mla_grads<C>(cfg);
  if (config::is_moe_layer(cfg, layer)) {
    g.moe = zero_moe_grads<C>(cfg);
  } else {
    detail::zero_grads(g.mlp, cfg.hidden_size, cfg.intermediate_size);
  }
  return g;
}

/// A gradient tensor and its checkpoint name.
struct NamedGrad {
  std::string name;       ///< the weight's checkpoint name
  std::span<float> grad;  ///< its gradient, shaped as the weight (row-major)
};

/// Every gradient tensor of `g` named as its weight in a checkpoint (`prefix` is the layer's,
/// e.g. "model.layers.3."), in a fixed order; tensors the config lacks (empty) are left out.
inline std::vector<NamedGrad> named_grads(LayerGrads& g, std::string const& prefix) {
  std::vector<NamedGrad> out;
  auto add = [&](std::string const& name, std::vector<float>& v) {
    if (!v.empty()) {
      out.push_back({prefix + name, v});
    }
  };
  auto mlp = [&](std::string const& p, SwiGluGrads& m) {
    add(p + "gate_proj.weight", m.gate_proj);
    add(p + "up_proj.weight", m.up_proj);
    add(p + "down_proj.weight", m.down_proj);
  };
  add("input_layernorm.weight", g.input_layernorm);
  add("post_attention_layernorm.weight", g.post_attention_layernorm);
  MlaGrads& a = g.self_attn;
  add("self_attn.q_a_proj.weight", a.q_a_proj);
  add("self_attn.q_a_layernorm.weight", a.q_a_layernorm);
  add("self_attn.q_b_proj.weight", a.q_b_proj);
  add("self_attn.q_proj.weight", a.q_proj);
  add("self_attn.kv_a_proj_with_mqa.weight", a.kv_a_proj_with_mqa);
  add("self_attn.kv_a_layernorm.weight", a.kv_a_layernorm);
  add("self_attn.kv_b_proj.weight", a.kv_b_proj);
  add("self_attn.o_proj.weight", a.o_proj);
  mlp("mlp.", g.mlp);
  add("mlp.gate.weight", g.moe.gate);
  for (std::size_t e = 0; e < g.moe.experts.size(); ++e)
    mlp("mlp.experts." + std::to_string(e) + ".", g.moe.experts[e]);
  mlp("mlp.shared_experts.", g.moe.shared);
  return out;
}

/// What the backward of one sequence's decoder layer reads from its forward
/// (decoder_layer_train_forward fills it; the buffers are reused across calls).
struct LayerActivations {
  std::vector<float> x1, m, x2;  ///< [T, H] the normed input, the mid residual, its norm
  MlaActivations attn;           ///< the attention's
  MoeActivations moe;            ///< an MoE layer's FFN
  detail::MlpRows mlp;           ///< a dense layer's FFN
  /// Bytes held.
  std::size_t bytes() const {
    return detail::bytes_of(x1, m, x2) + attn.bytes() + moe.bytes() + mlp.bytes();
  }
};

/// One decoder layer's forward for one sequence of T tokens (file comment), keeping its
/// activations: the math of model::decoder_layer_forward, through the training ops
/// (mla_train_forward, moe_train_forward), so that a recomputation gives the same bits.
/// @param out        [T, H] fp32, out: the layer output (may alias h)
/// @param a          out: the activations decoder_layer_backward reads
/// @param h          [T, H] fp32: the layer input (the residual stream)
/// @param positions  [T] absolute positions
/// @param w          the layer's weights (fp32 or bf16)
/// @returns the ops' errors.
template <config::ModelConfig C>
Status decoder_layer_train_forward(MatrixView<float> out, LayerActivations& a,
                                   MatrixView<float const> h,
                                   VectorView<std::int64_t const> positions,
                                   model::DecoderLayerWeights<C> const& w, C const& cfg = {}) {
  std::int64_t const T = h.extent(0), H = cfg.hidden_size;
  auto const n = static_cast<std::size_t>(T * H);
  double const eps = cfg.rms_norm_eps;
  if (h.extent(1) != H || out.extent(0) != T || out.extent(1) != H) {
    return invalid_argument("decoder_layer_train_forward: h and out must be [T, " +
                            std::to_string(H) + "]");
  }
  a.x1.resize(n);
  a.m.resize(n);
  a.x2.resize(n);
  auto const view = [&](std::vector<float>& v) { return MatrixView<float>(v.data(), T, H); };
  auto const cview = [&](std::vector<float> const& v) {
    return MatrixView<float const>(v.data(), T, H);
  };
  DEEPMOE_RETURN_IF_ERROR(rms_norm(view(a.x1), h, w.input_layernorm, eps));
  DEEPMOE_RETURN_IF_ERROR(
      mla_train_forward<C>(view(a.m), a.attn, cview(a.x1), positions, w.self_attn, cfg));
  for (std::size_t i = 0; i < n; ++i)
    a.m[i] += h.data()[i];
  // h is not read below, so out may alias it
  DEEPMOE_RETURN_IF_ERROR(rms_norm(view(a.x2), cview(a.m), w.post_attention_layernorm, eps));
  if (w.is_moe) {
    DEEPMOE_RETURN_IF_ERROR(moe_train_forward<C>(out, a.moe, cview(a.x2), w.moe, cfg));
  } else {
    a.mlp.x = a.x2;
    DEEPMOE_RETURN_IF_ERROR(a.mlp.forward(w.mlp, T, H, cfg.intermediate_size));
    std::copy_n(a.mlp.o.data(), n, out.data());
  }
  for (std::size_t i = 0; i < n; ++i)
    out.data()[i] += a.m[i];
  return {};
}

/// dL/dh for one sequence through one decoder layer (file comment), from the activations its
/// decoder_layer_train_forward kept (their backward scratch is reused, hence non-const).
/// @param dh         [T, H] fp32, out
/// @param g          the layer's weight gradients, accumulated (zero_layer_grads to start)
/// @param dout       [T, H] fp32: dL/d(layer output)
/// @param a          the forward's activations
/// @param h          [T, H] fp32: the layer input (the residual stream)
/// @param positions  [T] absolute positions
/// @param w          the layer's weights (fp32 or bf16)
/// @param balance_alpha  the weight of this sequence's balance loss in an MoE layer
///                       (moe_layer_backward); 0: none
/// @returns the ops' errors; invalid_argument for activations of another input.
template <config::ModelConfig C>
Status decoder_layer_backward(MatrixView<float> dh, LayerGrads& g, MatrixView<float const> dout,
                              LayerActivations& a, MatrixView<float const> h,
                              VectorView<std::int64_t const> positions,
                              model::DecoderLayerWeights<C> const& w, C const& cfg = {},
                              double balance_alpha = 0.0) {
  std::int64_t const T = h.extent(0), H = cfg.hidden_size;
  auto const n = static_cast<std::size_t>(T * H);
  double const eps = cfg.rms_norm_eps;
  if (a.x2.size() != n || dh.extent(0) != T || dout.extent(0) != T) {
    return invalid_argument("decoder_layer_backward: the activations are not this input's");
  }
  auto const cview = [&](std::vector<float> const& v) {
    return MatrixView<float const>(v.data(), T, H);
  };
  // FFN backward, then the post-attention norm's
  std::vector<float> dx2(n, 0.0f), dm(n), dx1(n), dn(n);
  if (w.is_moe) {
    DEEPMOE_RETURN_IF_ERROR(moe_layer_backward<C>(MatrixView<float>(dx2.data(), T, H), g.moe, dout,
                                                  a.moe, cview(a.x2), w.moe, cfg, balance_alpha));
  } else {
    a.mlp.dout.assign(dout.data(), dout.data() + n);
    DEEPMOE_RETURN_IF_ERROR(a.mlp.backward(w.mlp, g.mlp, T, H, cfg.intermediate_size));
    dx2 = a.mlp.dx;
  }
  DEEPMOE_RETURN_IF_ERROR(rms_norm_backward(
      MatrixView<float>(dn.data(), T, H), VectorView<float>(g.post_attention_layernorm.data(), H),
      cview(dx2), cview(a.m), w.post_attention_layernorm, eps));
  for (std::size_t i = 0; i < n; ++i)
    dm[i] = dout.data()[i] + dn[i];
  // attention backward, then the input norm's
  DEEPMOE_RETURN_IF_ERROR(mla_attention_backward<C>(MatrixView<float>(dx1.data(), T, H),
                                                    g.self_attn, cview(dm), a.attn, cview(a.x1),
                                                    positions, w.self_attn, cfg));
  DEEPMOE_RETURN_IF_ERROR(rms_norm_backward(MatrixView<float>(dn.data(), T, H),
                                            VectorView<float>(g.input_layernorm.data(), H),
                                            cview(dx1), h, w.input_layernorm, eps));
  for (std::size_t i = 0; i < n; ++i)
    dh.data()[i] = dm[i] + dn[i];
  return {};
}

/// dL/dh for one sequence through one decoder layer, recomputing its forward
/// (decoder_layer_train_forward) from the input: gradient checkpointing's form. Parameters as
/// above, without the activations; `scratch` (optional) holds them, reused across calls.
template <config::ModelConfig C>
Status decoder_layer_backward(MatrixView<float> dh, LayerGrads& g, MatrixView<float const> dout,
                              MatrixView<float const> h, VectorView<std::int64_t const> positions,
                              model::DecoderLayerWeights<C> const& w, C const& cfg = {},
                              double balance_alpha = 0.0, LayerActivations* scratch = nullptr) {
  LayerActivations local;
  LayerActivations& a = scratch != nullptr ? *scratch : local;
  std::vector<float> out(static_cast<std::size_t>(h.extent(0) * cfg.hidden_size));
  DEEPMOE_RETURN_IF_ERROR(decoder_layer_train_forward<C>(
      MatrixView<float>(out.data(), h.extent(0), cfg.hidden_size), a, h, positions, w, cfg));
  return decoder_layer_backward<C>(dh, g, dout, a, h, positions, w, cfg, balance_alpha);
}

}  // namespace train
DEEPMOE_NAMESPACE_END
