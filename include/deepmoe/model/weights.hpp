// SPDX-License-Identifier: Apache-2.0
/// @file weights.hpp
/// @brief The parameters of a whole DeepSeek-V3-family model, as views at the config's
/// precision: embedding, decoder layers (MLA + dense or MoE FFN), final norm, lm_head and the
/// Multi-Token-Prediction modules.
///
/// Views do not own memory: Model<C> keeps the memory-mapped checkpoint and any converted
/// tensors alive (checkpoint.hpp fills these structs). Names in the comments are the Hugging
/// Face checkpoint's (docs/model.md §5); W = C::weight_t (linear weights), A = C::act_t
/// (embedding, norms, router gate, lm_head, eh_proj — BF16 in DeepSeek-V3's FP8 checkpoint).
#pragma once

#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/ops/mla_attention.hpp>
#include <deepmoe/ops/swiglu.hpp>

#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace model {

/// One decoder layer `model.layers.{l}`: h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h)).
template <config::ModelConfig C>
struct DecoderLayerWeights {
  static_assert(config::validate<C>());
  using W = typename C::weight_t;
  using A = typename C::act_t;
  bool is_moe = false;                           ///< MoE FFN (else dense SwiGLU of width I)
  VectorView<A const> input_layernorm;           ///< [H]
  MlaWeights<C> self_attn;                       ///< `self_attn.*`
  VectorView<A const> post_attention_layernorm;  ///< [H]
  SwiGluWeights<W> mlp;                          ///< `mlp.{gate,up,down}_proj`, dense layers
  moe::MoeWeights<C> moe;                        ///< `mlp.gate`, `mlp.experts.*`, ...; MoE layers
  std::vector<moe::ExpertWeights<C>> experts;    ///< the E routed experts moe.experts points to
};

/// One Multi-Token-Prediction module `model.layers.{L + k}` (arXiv:2412.19437 §2.2):
/// h' = eh_proj·[enorm(Emb(t_{i+k+1})); hnorm(h_i)] (embedding first, as the released weights),
/// then a decoder layer, then shared_head.norm and shared_head.head.
template <config::ModelConfig C>
struct MtpWeights {
  static_assert(config::validate<C>());
  using A = typename C::act_t;
  MatrixView<A const> embed_tokens;      ///< [V, H] (a copy of the main embedding)
  VectorView<A const> enorm;             ///< [H]
  VectorView<A const> hnorm;             ///< [H]
  LinearWeight<A> eh_proj;               ///< [H, 2H]; unquantized (BF16) in DeepSeek-V3
  DecoderLayerWeights<C> layer;          ///< its transformer block (an MoE layer in V3)
  VectorView<A const> shared_head_norm;  ///< `shared_head.norm.weight` [H]
  LinearWeight<A> shared_head_head;      ///< `shared_head.head.weight` [V, H]
};

/// The whole model.
template <config::ModelConfig C>
struct ModelWeights {
  static_assert(config::validate<C>());
  using A = typename C::act_t;
  MatrixView<A const> embed_tokens;            ///< `model.embed_tokens.weight` [V, H]
  std::vector<DecoderLayerWeights<C>> layers;  ///< num_hidden_layers of them
  VectorView<A const> norm;                    ///< `model.norm.weight` [H]
  LinearWeight<A> lm_head;                     ///< `lm_head.weight` [V, H] (embed when tied)
  std::vector<MtpWeights<C>> mtp;              ///< num_nextn_predict_layers, or none
};

}  // namespace model
DEEPMOE_NAMESPACE_END
