// SPDX-License-Identifier: Apache-2.0
/// @file parameter_count.hpp
/// @brief Compile-time parameter, weight-byte and KV-cache accounting of a config (docs/model.md
/// §2).
#pragma once

#include <deepmoe/config/derived.hpp>

#include <cstdint>

DEEPMOE_NAMESPACE_BEGIN
namespace config {

/// Parameter counts of a model, in parameters (elements), following docs/model.md §2:
///   A = H·rq + rq + rq·nh·(dn+dr) + H·(rkv+dr) + rkv + rkv·nh·(dn+dv) + nh·dv·H   (rq > 0;
///       with rq = 0 the first three terms are H·nh·(dn+dr))
///   D = 3·H·I,  X = 3·H·M,  MoE_total = (E+S)·X + E·H + [E if noaux_tc],
///   MoE_active = (k+S)·X + E·H + [E if noaux_tc]
///   total = V·H (embed) + V·H (lm_head unless tied) + (2L+1)·H + L·A + K_dense·D + L_moe·MoE_total
/// `total` and `active` are the main model with embedding and head, without MTP (the way
/// "671B" and "37B active" are quoted); `mtp` is the unique parameters of the MTP modules.
struct ParameterCounts {
  std::int64_t embedding;   ///< V·H
  std::int64_t lm_head;     ///< V·H, 0 when tied
  std::int64_t norms;       ///< (2L+1)·H: two per layer plus the final norm
  std::int64_t attention;   ///< A, one layer
  std::int64_t dense_mlp;   ///< D, one dense layer
  std::int64_t expert;      ///< X, one routed expert
  std::int64_t moe_total;   ///< one MoE layer, all experts
  std::int64_t moe_active;  ///< one MoE layer, the k routed + S shared experts a token uses
  std::int64_t total;       ///< main model
  std::int64_t active;      ///< main model, per token, embedding and head included
  std::int64_t active_without_embedding;  ///< active − V·H (the embedding is a lookup)
  std::int64_t routed_experts;            ///< all routed experts of all layers
  std::int64_t mtp;                       ///< MTP modules: D·(2H² + 3H + A + 2H + MoE_total)
};

/// The parameter counts of C.
template <ModelConfig C>
constexpr ParameterCounts parameter_counts(C const& c = {}) noexcept {
  std::int64_t const H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  std::int64_t const nh = c.num_attention_heads, rq = c.q_lora_rank, rkv = c.kv_lora_rank;
  std::int64_t const dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  std::int64_t const E = c.n_routed_experts, S = c.n_shared_experts;
  std::int64_t const k = c.num_experts_per_tok;
  std::int64_t const bias = has_correction_bias(c) ? E : 0;

  ParameterCounts p{};
  p.embedding = V * H;
  p.lm_head = c.tie_word_embeddings ? 0 : V * H;
  p.norms = (2 * L + 1) * H;
  std::int64_t const q_path = rq > 0 ? H * rq + rq + rq * nh * (dn + dr) : H * nh * (dn + dr);
  p.attention = q_path + H * (rkv + dr) + rkv + rkv * nh * (dn + dv) + nh * dv * H;
  p.dense_mlp = 3 * H * c.intermediate_size;
  p.expert = 3 * H * c.moe_intermediate_size;
  p.moe_total = (E + S) * p.expert + E * H + bias;
  p.moe_active = (k + S) * p.expert + E * H + bias;
  std::int64_t const common = p.embedding + p.lm_head + p.norms + L * p.attention +
                              (c.num_hidden_layers - num_moe_layers(c)) * p.dense_mlp;
  p.total = common + num_moe_layers(c) * p.moe_total;
  p.active = common + num_moe_layers(c) * p.moe_active;
  p.active_without_embedding = p.active - p.embedding;
  p.routed_experts = num_moe_layers(c) * E * p.expert;
  p.mtp = c.num_nextn_predict_layers * (2 * H * H + 3 * H + p.attention + 2 * H + p.moe_total);
  return p;
}

/// Number of fp8 scale blocks of an [rows, cols] weight with square blocks of edge `block`:
/// ceil(rows/block) · ceil(cols/block) (edge blocks may be partial, docs/model.md §5).
constexpr std::int64_t scale_block_count(std::int64_t rows, std::int64_t cols,
                                         std::int64_t block) noexcept {
  return ((rows + block - 1) / block) * ((cols + block - 1) / block);
}

/// Bytes of one decoder layer's parts at C's precision [bytes] (layout of weight_bytes).
struct LayerWeightBytes {
  std::int64_t attention;  ///< MLA weights and its two inner norms
  std::int64_t dense;      ///< a dense SwiGLU MLP of width I
  std::int64_t moe;        ///< an MoE FFN: E experts, shared experts, gate and bias
  std::int64_t norms;      ///< input_layernorm + post_attention_layernorm
};

/// The LayerWeightBytes of C: linear weights in c.weight_t (plus 4-byte `weight_scale_inv`
/// blocks when fp8), norms and gate in c.act_t, e_score_correction_bias in fp32.
template <ModelConfig C>
constexpr LayerWeightBytes layer_weight_bytes(C const& c = {}) noexcept {
  std::int64_t const H = c.hidden_size;
  std::int64_t const nh = c.num_attention_heads, rq = c.q_lora_rank, rkv = c.kv_lora_rank;
  std::int64_t const dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim;
  std::int64_t const E = c.n_routed_experts, M = c.moe_intermediate_size;
  std::int64_t const SM = shared_intermediate_size(c), I = c.intermediate_size;
  std::int64_t const wsize = sizeof(typename C::weight_t);
  std::int64_t const asize = sizeof(typename C::act_t);
  std::int64_t const block = is_float8_v<typename C::weight_t> ? c.weight_block_size : 0;

  // one linear weight [rows, cols]
  auto linear = [&](std::int64_t rows, std::int64_t cols) {
    std::int64_t bytes = rows * cols * wsize;
    if (block > 0) {
      bytes += scale_block_count(rows, cols, block) * 4;
    }
    return bytes;
  };
  std::int64_t attention =
      rq > 0 ? linear(rq, H) + rq * asize + linear(nh * (dn + dr), rq) : linear(nh * (dn + dr), H);
  attention += linear(rkv + dr, H) + rkv * asize + linear(nh * (dn + dv), rkv) + linear(H, nh * dv);
  std::int64_t const expert = 2 * linear(M, H) + linear(H, M);
  std::int64_t const shared = SM > 0 ? 2 * linear(SM, H) + linear(H, SM) : 0;
  return {attention, 2 * linear(I, H) + linear(H, I),
          E * expert + shared + E * H * asize + (has_correction_bias(c) ? E * 4 : 0),
          2 * H * asize};
}

/// Bytes of the main model's weights at C's precision [bytes]: layer_weight_bytes for every
/// layer, plus embedding, lm_head (unless tied) and final norm in c.act_t.
/// This is the layout of the DeepSeek-V3 FP8 checkpoint (docs/model.md §5).
template <ModelConfig C>
constexpr std::int64_t weight_bytes(C const& c = {}) noexcept {
  LayerWeightBytes const b = layer_weight_bytes<C>(c);
  std::int64_t const H = c.hidden_size, V = c.vocab_size, L = c.num_hidden_layers;
  std::int64_t const asize = sizeof(typename C::act_t);
  std::int64_t const head = c.tie_word_embeddings ? 0 : V * H * asize;
  return V * H * asize + head + H * asize + L * (b.attention + b.norms) +
         (c.num_hidden_layers - num_moe_layers(c)) * b.dense + num_moe_layers(c) * b.moe;
}

/// Bytes of the Multi-Token-Prediction modules at C's precision [bytes]: per module an MoE
/// decoder layer, enorm/hnorm/shared_head.norm and eh_proj [H, 2H] in c.act_t, and its copies
/// of the embedding and head (docs/model.md §4).
template <ModelConfig C>
constexpr std::int64_t mtp_weight_bytes(C const& c = {}) noexcept {
  LayerWeightBytes const b = layer_weight_bytes<C>(c);
  std::int64_t const H = c.hidden_size, V = c.vocab_size;
  std::int64_t const asize = sizeof(typename C::act_t);
  return std::int64_t{c.num_nextn_predict_layers} *
         (b.attention + b.norms + b.moe + (3 * H + 2 * H * H + 2 * V * H) * asize);
}

/// Bytes the MLA KV cache needs per token [bytes]: L · (rkv + dr) · sizeof(act_t) — the
/// normalized latent and the rotated rope key of every layer (docs/model.md §2).
template <ModelConfig C>
constexpr std::int64_t kv_cache_bytes_per_token(C const& c = {}) noexcept {
  return std::int64_t{c.num_hidden_layers} * kv_cache_dim(c) *
         std::int64_t{sizeof(typename C::act_t)};
}

}  // namespace config
DEEPMOE_NAMESPACE_END
