// SPDX-License-Identifier: Apache-2.0
/// @file mla_attention.cuh
/// @brief Multi-head Latent Attention on the device for a batch of sequences that continue in a
/// latent KV cache — the CPU's mla_attention (ops/mla_attention.hpp), both forms:
///
///   q     = W_qb·RMSNorm_qa(W_qa·x)  (or W_q·x);  a = W_kva·x = [latent | rope part]
///   cache[pos] = [RMSNorm_kva(latent) | RoPE(rope part, pos)]     (rounded to KV)
///   q_pe[h] = RoPE(q_pe[h], pos)
///   naive (prefill):    kv_u = W_kvb·c_u for every key u of the sequence (fp32 scratch);
///                       s = scale·(q_nope[h]·k_nope[h,u] + q_pe[h]·k_pe_u), o[h] = Σ_u p_u·v[h,u]
///   absorbed (decode):  q̃[h] = W_UK[h]ᵀ·q_nope[h];  s = scale·(q̃[h]·c_u + q_pe[h]·k_pe_u);
///                       ctx[h] = Σ_u p_u·c_u;  o[h] = W_UV[h]·ctx[h]   (DeepSeek's decode form)
///   out = W_o·concat_h o[h]
/// A token at position p attends to cache rows 0..p of its sequence (written by earlier calls and
/// by this one), so its result does not depend on how the sequence was split into calls.
///
/// The attention core is one kernel for both forms (flash-decoding's split over keys): a block
/// of 4 warps per (token, head, chunk of 256 keys); warp w takes the chunk's keys w, w + 4, …
/// with an online softmax (running max m, sum l, the weighted values in registers), lanes
/// splitting each dot product (i = lane, lane + 32, …) and meeting in a fixed butterfly; the 4
/// warps' states merge in order into the chunk's state, and a second kernel merges a token's
/// chunks in order and normalizes. Splitting keeps the device busy at decode (few tokens, long
/// caches). The chunks and their order depend only on the token's own key count, so every
/// (token, head) is computed the same way whatever else is in the batch (batch invariance) and
/// runs are deterministic. Against the CPU, which takes the max first and sums in key order,
/// the difference is rounding (~1e-6 relative).
/// Projections run on gpu::linear (fp32 rows) or, with `tensor_cores`, on gpu::linear_mma (bf16
/// rows) where their sizes allow; the naive form's key expansion and the absorbed form's W_UV
/// stay on gpu::linear. Sources: arXiv:2405.04434 §2.1; DeepSeek-V3
/// inference/model.py `MLA` (its "absorb" path).
#pragma once

#include <deepmoe/backend/cuda/linear.cuh>
#include <deepmoe/backend/cuda/linear_mma.cuh>
#include <deepmoe/backend/cuda/rms_norm.cuh>
#include <deepmoe/backend/cuda/rope_yarn.cuh>
#include <deepmoe/config/derived.hpp>
#include <deepmoe/ops/mla_attention.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// One layer's attention weights (`self_attn.*`) in device memory.
/// @tparam W  linear weights: float or bfloat16;  A: norms, float or bfloat16
template <class W, class A>
struct DeviceMlaWeights {
  W const* q_a_proj = nullptr;            ///< [rq, H], q_lora_rank > 0
  A const* q_a_layernorm = nullptr;       ///< [rq], q_lora_rank > 0
  W const* q_b_proj = nullptr;            ///< [nh·(dn+dr), rq], q_lora_rank > 0
  W const* q_proj = nullptr;              ///< [nh·(dn+dr), H], q_lora_rank = 0
  W const* kv_a_proj_with_mqa = nullptr;  ///< [rkv+dr, H]
  A const* kv_a_layernorm = nullptr;      ///< [rkv]
  W const* kv_b_proj = nullptr;           ///< [nh·(dn+dv), rkv]
  W const* o_proj = nullptr;              ///< [H, nh·dv]
};

/// Where the N tokens of a batch sit in the latent cache, whose rows are
/// [slot][layer][position][rkv + dr] (gpu::DeviceKvCache).
struct DeviceMlaBatch {
  std::int64_t const* positions = nullptr;   ///< [N] device: absolute positions
  std::int64_t const* cache_rows = nullptr;  ///< [N] device: the row of position 0 of the token's
                                             ///< sequence in layer 0 (slot·layers·capacity)
  std::int64_t const* key_rows = nullptr;    ///< [N] device, naive form: the row of the token's
                                             ///< sequence's first key in the kv scratch
  /// Host, both forms: each sequence's cache_rows value, its key count (last position + 1)
  /// and key_rows value (the counts size the attention's chunks; the naive form expands the
  /// keys by sequence).
  struct Keys {
    std::int64_t cache_row, count, key_row;
  };
  std::span<Keys const> sequences;
  std::int64_t tokens = 0;  ///< N
};

namespace detail {
constexpr int kAttnWarps = 4;
constexpr std::int64_t kAttnChunk = 256;  // keys per block; a token's chunks merge in order

// e^(m − M) for a softmax state [m, l, …] merged under the max M; 0 for a state with no keys
// (l = 0, m = −∞), NaN for a NaN state
__device__ inline float state_factor(float const* st, float M) {
  return st[1] > 0.0f || st[1] != st[1] ? expf(st[0] - M) : 0.0f;
}
// out = [M, Σ l·f, Σ acc·f] of `count` states [m, l, acc[dv]] `stride` apart, f = e^(m − M),
// M their max, summed in order; the block's threads split the dv columns
__device__ inline void merge_states(float* __restrict__ out, float const* __restrict__ states,
                                    int stride, int count, int dv) {
  float mx = -INFINITY;
  for (int w = 0; w < count; ++w) {
    mx = fmaxf(mx, states[w * stride]);
  }
  for (int c = static_cast<int>(threadIdx.x); c < dv + 1; c += blockDim.x) {
    float sum = 0.0f;  // column c − 1 of acc, or (c = 0) l
    for (int w = 0; w < count; ++w) {
      float const* st = states + w * stride;
      sum = fmaf(st[1 + c], state_factor(st, mx), sum);
    }
    out[1 + c] = sum;
  }
  if (threadIdx.x == 0) {
    out[0] = mx;
  }
}

// Where the attention kernel finds its operands (mla_attention.cuh file comment).
struct AttentionArgs {
  float const* q;  // q_main[n, h] at q + n·q_ld + h·q_head, dk wide
  std::int64_t q_ld, q_head;
  float const* q_pe;  // rotated q_pe[n, h] at q_pe + n·q_ld_pe + h·q_head_pe, dr wide
  std::int64_t q_ld_pe, q_head_pe;
  std::int64_t const* positions;  // token n sees keys 0..positions[n]
  std::int64_t const* key_rows;   // key u of token n: row key_rows[n] + key_add + u
  std::int64_t key_add, k_ld, k_head, v_offset;
  std::int64_t const* pe_rows;  // its k_pe: row pe_rows[n] + pe_add + u, at offset pe_offset
  std::int64_t pe_add, pe_ld, pe_offset;
  int dk, dr, dv;
  float scale;
  float* out;  // o[n, h] at out + n·out_ld + h·out_head, dv wide
  std::int64_t out_ld, out_head;
};

// Chunk z of token n0 + blockIdx.x's keys, for head blockIdx.y: keys [z·kAttnChunk,
// min((z+1)·kAttnChunk, p + 1)) with an online softmax per warp, the 4 warps merged in order
// into the chunk's (max m, sum l, weighted values acc) at partial[(x·nh + h)·chunks + z].
template <class KT, class PT, int kVPerLane>
__global__ void __launch_bounds__(kAttnWarps * 32)
    mla_attention_chunk_kernel(AttentionArgs a, KT const* __restrict__ keys,
                               PT const* __restrict__ pe_keys, float* __restrict__ partial,
                               std::int64_t n0) {
  extern __shared__ float smem[];
  float* qs = smem;                   // [dk] q_main, then [dr] q_pe
  float* merge = smem + a.dk + a.dr;  // per warp: m, l, [dv] weighted values
  std::int64_t const n = n0 + blockIdx.x, h = blockIdx.y, z = blockIdx.z;
  std::int64_t const last = a.positions[n];
  std::int64_t const begin = z * kAttnChunk;
  if (begin > last) {
    return;  // past this token's keys: uniform over the block
  }
  std::int64_t const end = begin + kAttnChunk <= last + 1 ? begin + kAttnChunk : last + 1;
  int const lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  for (int i = static_cast<int>(threadIdx.x); i < a.dk + a.dr; i += kAttnWarps * 32) {
    qs[i] = i < a.dk ? a.q[n * a.q_ld + h * a.q_head + i]
                     : a.q_pe[n * a.q_ld_pe + h * a.q_head_pe + (i - a.dk)];
  }
  __syncthreads();
  KT const* kbase = keys + (a.key_rows[n] + a.key_add) * a.k_ld + h * a.k_head;
  PT const* pbase = pe_keys + (a.pe_rows[n] + a.pe_add) * a.pe_ld + a.pe_offset;
  float m = -INFINITY, l = 0.0f;
  float acc[kVPerLane] = {};
  for (std::int64_t u = begin + warp; u < end; u += kAttnWarps) {
    KT const* k = kbase + u * a.k_ld;
    PT const* pe = pbase + u * a.pe_ld;
    float s = 0.0f;
    for (int i = lane; i < a.dk; i += 32) {
      s = fmaf(qs[i], static_cast<float>(k[i]), s);
    }
    for (int i = lane; i < a.dr; i += 32) {
      s = fmaf(qs[a.dk + i], static_cast<float>(pe[i]), s);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, offset);
    }
    s *= a.scale;
    float const m_new = fmaxf(m, s);  // (a NaN score makes p, l and the output NaN)
    float const corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    KT const* v = k + a.v_offset;
#pragma unroll
    for (int j = 0; j < kVPerLane; ++j) {
      int const c = lane + 32 * j;
      float const vj = c < a.dv ? static_cast<float>(v[c]) : 0.0f;
      acc[j] = fmaf(p, vj, acc[j] * corr);
    }
    m = m_new;
  }
  float* mine = merge + warp * (a.dv + 2);
  if (lane == 0) {
    mine[0] = m;
    mine[1] = l;
  }
#pragma unroll
  for (int j = 0; j < kVPerLane; ++j) {
    if (lane + 32 * j < a.dv) {
      mine[2 + lane + 32 * j] = acc[j];
    }
  }
  __syncthreads();
  float* out = partial + ((static_cast<std::int64_t>(blockIdx.x) * gridDim.y + h) * gridDim.z + z) *
                             (a.dv + 2);
  merge_states(out, merge, a.dv + 2, kAttnWarps, a.dv);
}

// o[n, h] = the merge of token n's chunks (in order), normalized: Σ acc·e^(m−M) / Σ l·e^(m−M)
__global__ inline void __launch_bounds__(kAttnWarps * 32)
    mla_attention_combine_kernel(AttentionArgs a, float const* __restrict__ partial,
                                 std::int64_t n0, int chunks) {
  std::int64_t const n = n0 + blockIdx.x, h = blockIdx.y;
  int used = static_cast<int>(a.positions[n] / kAttnChunk) + 1;
  used = used < chunks ? used : chunks;  // (the host sizes chunks for the longest sequence)
  float const* st =
      partial + (static_cast<std::int64_t>(blockIdx.x) * gridDim.y + h) * chunks * (a.dv + 2);
  float mx = -INFINITY;
  for (int z = 0; z < used; ++z) {
    mx = fmaxf(mx, st[z * (a.dv + 2)]);
  }
  for (int c = static_cast<int>(threadIdx.x); c < a.dv; c += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int z = 0; z < used; ++z) {
      float const* p = st + z * (a.dv + 2);
      float const f = state_factor(p, mx);
      num = fmaf(p[2 + c], f, num);
      den = fmaf(p[1], f, den);
    }
    a.out[n * a.out_ld + h * a.out_head + c] = num / den;
  }
}

// c = RMSNorm(a[:rkv]) and the (already rotated) k_pe = a[rkv:], rounded into the token's row
template <class KV, class A>
__global__ void __launch_bounds__(kRowThreads)
    mla_cache_write_kernel(KV* __restrict__ cache, float const* __restrict__ kva,
                           A const* __restrict__ norm, std::int64_t const* __restrict__ positions,
                           std::int64_t const* __restrict__ cache_rows, std::int64_t layer_add,
                           std::int64_t rkv, std::int64_t dr, float eps) {
  __shared__ float scratch[kRowThreads / 32];
  std::int64_t const n = blockIdx.x, dc = rkv + dr;
  float const* a = kva + n * dc;
  KV* row = cache + (cache_rows[n] + layer_add + positions[n]) * dc;
  float const r = row_inv_rms(a, rkv, eps, scratch);
  for (std::int64_t i = threadIdx.x; i < dc; i += kRowThreads) {
    row[i] = KV(i < rkv ? static_cast<float>(norm[i]) * (a[i] * r) : a[i]);
  }
}

// q̃[n, h, r] = Σ_i q_nope[n, h, i] · W_kvb[h·(dn+dv) + i, r], i ascending
template <class W>
__global__ void __launch_bounds__(128)
    mla_absorb_query_kernel(float* __restrict__ qt, float const* __restrict__ q,
                            W const* __restrict__ kv_b, std::int64_t nh, std::int64_t dn,
                            std::int64_t dq, std::int64_t dv, std::int64_t rkv) {
  extern __shared__ float qn[];
  std::int64_t const n = blockIdx.x, h = blockIdx.y;
  for (std::int64_t i = threadIdx.x; i < dn; i += 128) {
    qn[i] = q[(n * nh + h) * dq + i];
  }
  __syncthreads();
  W const* wk = kv_b + h * (dn + dv) * rkv;
  for (std::int64_t r = threadIdx.x; r < rkv; r += 128) {
    float s = 0.0f;
    for (std::int64_t i = 0; i < dn; ++i) {
      s = fmaf(qn[i], static_cast<float>(wk[i * rkv + r]), s);
    }
    qt[(n * nh + h) * rkv + r] = s;
  }
}

// The workspace's pieces (floats), in order, each 256-byte aligned.
struct MlaScratch {
  std::size_t cq, q, kva, qt, ctx, o, kv, partial, x16, total;
  std::int64_t chunks, slice;  // chunks of the longest sequence; tokens per attention launch
};
constexpr std::size_t kPartialBytes = std::size_t{256} << 20;  // bound on the chunk states
template <config::ModelConfig C>
MlaScratch mla_scratch(std::int64_t N, std::int64_t keys, std::int64_t max_keys, MlaForm form,
                       C const& cfg) {
  auto const n = static_cast<std::size_t>(N);
  std::size_t const nh = static_cast<std::size_t>(cfg.num_attention_heads);
  std::size_t const dn = static_cast<std::size_t>(cfg.qk_nope_head_dim);
  std::size_t const dr = static_cast<std::size_t>(cfg.qk_rope_head_dim);
  std::size_t const dv = static_cast<std::size_t>(cfg.v_head_dim);
  std::size_t const rkv = static_cast<std::size_t>(cfg.kv_lora_rank);
  bool const absorbed = form == MlaForm::kAbsorbed;
  MlaScratch s{};
  std::size_t at = 0;
  auto take = [&](std::size_t floats) {
    std::size_t const here = at;
    at += align_up(floats * 4);
    return here;
  };
  s.cq = take(n * static_cast<std::size_t>(cfg.q_lora_rank));
  s.q = take(n * nh * (dn + dr));
  s.kva = take(n * (rkv + dr));
  s.qt = take(absorbed ? n * nh * rkv : 0);
  s.ctx = take(absorbed ? n * nh * rkv : 0);
  s.o = take(n * nh * dv);
  s.kv = take(absorbed ? 0 : static_cast<std::size_t>(keys) * nh * (dn + dv));
  // the attention core's chunk states [m, l, acc], for `slice` tokens at a time
  std::size_t const width = (absorbed ? rkv : dv) + 2;
  s.chunks = ceil_div(max_keys > 0 ? max_keys : 1, kAttnChunk);
  std::size_t const per_token = nh * static_cast<std::size_t>(s.chunks) * width * 4;
  s.slice = static_cast<std::int64_t>(kPartialBytes / per_token);
  s.slice = s.slice < 1 ? 1 : (s.slice > N ? N : s.slice);
  s.partial = take(static_cast<std::size_t>(s.slice) * per_token / 4);
  // bf16 copies of a projection's input rows (tensor cores): [N, max(H, rq, nh·dv)]
  std::size_t const widest = std::max({static_cast<std::size_t>(cfg.hidden_size),
                                       static_cast<std::size_t>(cfg.q_lora_rank), nh * dv});
  s.x16 = take((n * widest + 1) / 2);
  s.total = at;
  return s;
}
}  // namespace detail

/// Bytes of device scratch mla_attention needs for N tokens whose sequences have `keys` cache
/// rows in all (Σ_s last position + 1) and `max_keys` in the longest.
template <config::ModelConfig C>
std::size_t mla_attention_workspace_bytes(std::int64_t N, std::int64_t keys, std::int64_t max_keys,
                                          MlaForm form, C const& cfg = {}) {
  return detail::mla_scratch<C>(N, keys, max_keys, form, cfg).total;
}

/// MLA of one layer for the N tokens of `batch` (file comment), on `stream`; asynchronous.
/// Writes the tokens' [c | k_pe] rows into the cache, then attends over it.
/// @tparam C   the config (sizes, eps, RoPE)
/// @tparam KV  the cache's element type: float or bfloat16
/// @tparam W   the weights' element type on the device: float or bfloat16
/// @param d_out        [N, H] fp32, device, out
/// @param d_x          [N, H] fp32, device: the input-normalized hidden states
/// @param w            this layer's weights (device)
/// @param batch        where the tokens' keys are (DeviceMlaBatch)
/// @param d_cache      the cache (device), rows [slot][layer][position][rkv + dr]
/// @param layer_rows   this layer's offset in rows: layer · capacity
/// @param d_inv_freq   [dr/2] fp32, device: rope_inv_freq(dr, rope_theta, rope_scaling)
/// @param form         naive (prefill) or absorbed (decode)
/// @param tensor_cores  bf16 weights: q_a/q_b/q/kv_a/o_proj on tensor cores (linear_mma, rows
///                      rounded to bf16) where their sizes allow, else on gpu::linear (fp32
///                      rows); weights 16-byte and d_out 8-byte aligned
/// @param d_workspace  mla_attention_workspace_bytes(N, Σ keys, max keys, form) bytes, device
/// @returns invalid_argument, before anything is enqueued, for N < 0, a null weight or batch
///          array, misaligned operands (tensor_cores), more than 65535 chunks of keys, or too
///          small a workspace; the kernels' errors (kCudaError for a failed launch).
/// @pre positions are consecutive per sequence, within the cache (model::check_slots), and the
///      cache rows below each sequence's first position hold its earlier tokens.
template <config::ModelConfig C, class KV, class W>
Status mla_attention(float* d_out, float const* d_x,
                     DeviceMlaWeights<W, typename C::act_t> const& w, DeviceMlaBatch const& batch,
                     KV* d_cache, std::int64_t layer_rows, float const* d_inv_freq, MlaForm form,
                     bool tensor_cores, void* d_workspace, std::size_t workspace_bytes,
                     cudaStream_t stream, C const& cfg = {}) {
  static_assert(std::is_same_v<W, float> || std::is_same_v<W, bfloat16>,
                "gpu::mla_attention: fp32 or bf16 weights (dequantize fp8 ones: "
                "dequantize_fp8_block)");
  static_assert(std::is_same_v<KV, float> || std::is_same_v<KV, bfloat16>,
                "gpu::mla_attention: the cache holds float or bfloat16");
  std::int64_t const H = cfg.hidden_size, nh = cfg.num_attention_heads;
  std::int64_t const dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim, dv = cfg.v_head_dim;
  std::int64_t const rq = cfg.q_lora_rank, rkv = cfg.kv_lora_rank, dq = dn + dr, dc = rkv + dr;
  std::int64_t const N = batch.tokens;
  bool const absorbed = form == MlaForm::kAbsorbed;
  std::int64_t keys = 0, max_keys = 0;
  for (auto const& s : batch.sequences) {
    keys += s.count;
    max_keys = s.count > max_keys ? s.count : max_keys;
  }
  detail::MlaScratch const s = detail::mla_scratch<C>(N, keys, max_keys, form, cfg);
  if ((rq > 0 ? w.q_a_proj == nullptr || w.q_a_layernorm == nullptr || w.q_b_proj == nullptr
              : w.q_proj == nullptr) ||
      w.kv_a_proj_with_mqa == nullptr || w.kv_a_layernorm == nullptr || w.kv_b_proj == nullptr ||
      w.o_proj == nullptr) {
    return invalid_argument("gpu::mla_attention: a self_attn weight is null");
  }
  if (N < 0 || (N > 0 && (batch.positions == nullptr || batch.cache_rows == nullptr ||
                          (!absorbed && batch.key_rows == nullptr) || d_cache == nullptr))) {
    return invalid_argument(
        "gpu::mla_attention: N ≥ 0, and the batch's positions, cache_rows, key_rows (naive) and "
        "the cache must not be null");
  }
  if (s.chunks > 65535) {
    return invalid_argument("gpu::mla_attention: " + std::to_string(max_keys) +
                            " keys in one sequence exceed 65535 chunks of " +
                            std::to_string(detail::kAttnChunk));
  }
  if constexpr (std::is_same_v<W, bfloat16>) {
    auto misaligned = [](void const* p, std::uintptr_t a) {
      return reinterpret_cast<std::uintptr_t>(p) % a != 0;
    };
    if (tensor_cores && (misaligned(d_out, 8) || misaligned(w.q_a_proj, 16) ||
                         misaligned(w.q_b_proj, 16) || misaligned(w.q_proj, 16) ||
                         misaligned(w.kv_a_proj_with_mqa, 16) || misaligned(w.o_proj, 16))) {
      return invalid_argument(
          "gpu::mla_attention: with tensor_cores the weights must be 16-byte and out 8-byte "
          "aligned");
    }
  }
  if (d_workspace == nullptr || workspace_bytes < s.total) {
    return invalid_argument("gpu::mla_attention: workspace of " + std::to_string(workspace_bytes) +
                            " bytes, need " + std::to_string(s.total) +
                            " (mla_attention_workspace_bytes)");
  }
  std::int64_t const width = absorbed ? rkv : dv;  // values per (token, head) of the core
  if (width > 512) {
    return invalid_argument("gpu::mla_attention: value width " + std::to_string(width) +
                            " > 512 is not supported");
  }
  if (N == 0) {
    return {};
  }
  auto* base = static_cast<unsigned char*>(d_workspace);
  auto f32 = [&](std::size_t at) { return reinterpret_cast<float*>(base + at); };
  float* q = f32(s.q);
  float* kva = f32(s.kva);
  auto* x16 = reinterpret_cast<bfloat16*>(base + s.x16);
  auto proj = [&](float* y, float const* x, W const* wt, std::int64_t n_out, std::int64_t k) {
    bool const mma =
        tensor_cores && std::is_same_v<W, bfloat16> && linear_mma_supported(n_out, k).ok();
    return project(y, x, wt, N, n_out, k, mma, x16, stream);
  };
  if (rq > 0) {
    DEEPMOE_RETURN_IF_ERROR(proj(f32(s.cq), d_x, w.q_a_proj, rq, H));
    DEEPMOE_RETURN_IF_ERROR(
        rms_norm(f32(s.cq), f32(s.cq), w.q_a_layernorm, N, rq, cfg.rms_norm_eps, stream));
    DEEPMOE_RETURN_IF_ERROR(proj(q, f32(s.cq), w.q_b_proj, nh * dq, rq));
  } else {
    DEEPMOE_RETURN_IF_ERROR(proj(q, d_x, w.q_proj, nh * dq, H));
  }
  DEEPMOE_RETURN_IF_ERROR(proj(kva, d_x, w.kv_a_proj_with_mqa, dc, H));
  double const af = yarn_attention_factor(cfg.rope_scaling);
  int const half = static_cast<int>(dr / 2);
  DEEPMOE_RETURN_IF_ERROR(apply_rope(
      q, batch.positions, d_inv_freq, half,
      {.ld = nh * dq, .first = dn, .stride = dq, .count = static_cast<int>(nh)}, af, N, stream));
  DEEPMOE_RETURN_IF_ERROR(apply_rope(kva, batch.positions, d_inv_freq, half,
                                     {.ld = dc, .first = rkv, .stride = 0, .count = 1}, af, N,
                                     stream));
  detail::mla_cache_write_kernel<KV, typename C::act_t>
      <<<static_cast<unsigned>(N), detail::kRowThreads, 0, stream>>>(
          d_cache, kva, w.kv_a_layernorm, batch.positions, batch.cache_rows, layer_rows, rkv, dr,
          static_cast<float>(cfg.rms_norm_eps));
  DEEPMOE_CUDA_CHECK(cudaGetLastError());

  detail::AttentionArgs a{};
  a.positions = batch.positions;
  a.q_pe = q + dn;
  a.q_ld_pe = nh * dq;
  a.q_head_pe = dq;
  a.pe_rows = batch.cache_rows;
  a.pe_add = layer_rows;
  a.pe_ld = dc;
  a.pe_offset = rkv;
  a.dr = static_cast<int>(dr);
  a.scale = static_cast<float>(mla_softmax_scale(static_cast<int>(dq), cfg.rope_scaling));
  auto launch = [&](auto const* keys_ptr) -> Status {  // the core, `slice` tokens at a time
    using KT = std::remove_cv_t<std::remove_pointer_t<decltype(keys_ptr)>>;
    std::size_t const smem =
        static_cast<std::size_t>(a.dk + a.dr + detail::kAttnWarps * (a.dv + 2)) * sizeof(float);
    float* partial = f32(s.partial);
    for (std::int64_t n0 = 0; n0 < N; n0 += s.slice) {
      auto const ns = static_cast<unsigned>(N - n0 < s.slice ? N - n0 : s.slice);
      dim3 const grid(ns, static_cast<unsigned>(nh), static_cast<unsigned>(s.chunks));
      if (a.dv <= 128) {
        detail::mla_attention_chunk_kernel<KT, KV, 4>
            <<<grid, detail::kAttnWarps * 32, smem, stream>>>(a, keys_ptr, d_cache, partial, n0);
      } else {
        detail::mla_attention_chunk_kernel<KT, KV, 16>
            <<<grid, detail::kAttnWarps * 32, smem, stream>>>(a, keys_ptr, d_cache, partial, n0);
      }
      DEEPMOE_CUDA_CHECK(cudaGetLastError());
      detail::mla_attention_combine_kernel<<<dim3(ns, static_cast<unsigned>(nh)),
                                             detail::kAttnWarps * 32, 0, stream>>>(
          a, partial, n0, static_cast<int>(s.chunks));
      DEEPMOE_CUDA_CHECK(cudaGetLastError());
    }
    return {};
  };
  float* o = f32(s.o);
  if (!absorbed) {  // kv = W_kvb·c over each sequence's cache rows, then per-head keys
    float* kv = f32(s.kv);
    for (auto const& seq : batch.sequences) {
      DEEPMOE_RETURN_IF_ERROR(linear(kv + seq.key_row * nh * (dn + dv),
                                     d_cache + (seq.cache_row + layer_rows) * dc, w.kv_b_proj,
                                     seq.count, nh * (dn + dv), rkv, stream, {.ldx = dc}));
    }
    a.q = q;
    a.q_ld = nh * dq;
    a.q_head = dq;
    a.key_rows = batch.key_rows;
    a.key_add = 0;
    a.k_ld = nh * (dn + dv);
    a.k_head = dn + dv;
    a.v_offset = dn;
    a.dk = static_cast<int>(dn);
    a.dv = static_cast<int>(dv);
    a.out = o;
    a.out_ld = nh * dv;
    a.out_head = dv;
    DEEPMOE_RETURN_IF_ERROR(launch(static_cast<float const*>(kv)));
  } else {  // q̃ = W_UKᵀ q_nope; attend over the latent; o = W_UV ctx
    float* qt = f32(s.qt);
    float* ctx = f32(s.ctx);
    detail::mla_absorb_query_kernel<W>
        <<<dim3(static_cast<unsigned>(N), static_cast<unsigned>(nh)), 128,
           static_cast<std::size_t>(dn) * sizeof(float), stream>>>(qt, q, w.kv_b_proj, nh, dn, dq,
                                                                   dv, rkv);
    DEEPMOE_CUDA_CHECK(cudaGetLastError());
    a.q = qt;
    a.q_ld = nh * rkv;
    a.q_head = rkv;
    a.key_rows = batch.cache_rows;
    a.key_add = layer_rows;
    a.k_ld = dc;
    a.k_head = 0;
    a.v_offset = 0;
    a.dk = static_cast<int>(rkv);
    a.dv = static_cast<int>(rkv);
    a.out = ctx;
    a.out_ld = nh * rkv;
    a.out_head = rkv;
    DEEPMOE_RETURN_IF_ERROR(launch(static_cast<KV const*>(d_cache)));
    DEEPMOE_RETURN_IF_ERROR(linear(o, ctx, w.kv_b_proj + dn * rkv, N, dv, rkv, stream,
                                   {.ldx = nh * rkv,
                                    .ldy = nh * dv,
                                    .batch = static_cast<int>(nh),
                                    .x_stride = rkv,
                                    .w_stride = (dn + dv) * rkv,
                                    .y_stride = dv}));
  }
  return proj(d_out, o, w.o_proj, H, nh * dv);
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END
