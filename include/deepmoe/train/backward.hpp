// SPDX-License-Identifier: Apache-2.0
/// @file backward.hpp
/// @brief Backward passes of the dense ops training needs first, on the CPU in fp32: linear,
/// RMSNorm, SwiGLU, embedding and the cross-entropy loss. Each gives the gradients of a scalar
/// loss L with respect to the op's inputs and parameters from dL/d(output) ("dy").
///
///   linear     y = x·Wᵀ                    dx = dy·W,   dW += dyᵀ·x
///   RMSNorm    y = w ⊙ x·r, r = (mean(x²) + eps)^−½
///              dx = r·(w ⊙ dy) − x · r³/D · Σ_j w_j·dy_j·x_j,   dw += Σ_t dy ⊙ x·r
///   SwiGLU     h = silu(g)·u, silu(g) = g·σ(g)
///              dg = dh·u·σ(g)·(1 + g·(1 − σ(g))),   du = dh·silu(g)
///   embedding  h_t = E[id_t]                dE[id_t] += dh_t
///   CE         L = (1/N)·Σ_t −log softmax(z_t)[y_t] over the N targets ≠ ignore
///              dz_t = (softmax(z_t) − onehot(y_t)) / N
/// Parameter gradients accumulate (+=) so that micro-batches add up; input gradients are
/// written. Every sum runs in a fixed order, so results do not depend on the thread count.
/// Sources: the chain rule on the forward ops of docs/model.md §3; checked against finite
/// differences in double (tests/train/backward_test.cpp).
#pragma once

#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

namespace detail {
/// Configs the backward passes take: fp32 weights and activations (the fp32 mode, for checks)
/// or bf16 both (mixed precision: compute copies of fp32 master weights, read as fp32); not
/// fp8, whose training recipe (per-tile quantized GEMMs) is not built, nor mixed pairs.
template <class C>
inline constexpr bool trainable = std::is_same_v<typename C::weight_t, typename C::act_t> &&
                                  (std::is_same_v<typename C::act_t, float> ||
                                   std::is_same_v<typename C::act_t, bfloat16>);

/// Bytes held by vectors (their capacity): activation memory as measured.
template <class... V>
std::size_t bytes_of(V const&... v) {
  return (std::size_t{0} + ... + (v.capacity() * sizeof(typename V::value_type)));
}

// "<fn>: shapes <name> [a, b], ... do not agree" — built with appends (GCC 12 warns falsely,
// -Wrestrict, on "literal" + string chains).
inline Status shapes(char const* fn, bool ok,
                     std::initializer_list<std::pair<char const*, std::int64_t const*>> named,
                     std::initializer_list<int> ranks) {
  if (ok) {
    return {};
  }
  std::string m = fn;
  m += ": shapes";
  auto rank = ranks.begin();
  for (auto const& [name, dims] : named) {
    m += ' ';
    m += name;
    m += " [";
    for (int i = 0; i < *rank; ++i) {
      m += i ? ", " : "";
      m += std::to_string(dims[i]);
    }
    m += ']';
    ++rank;
  }
  m += " do not agree";
  return invalid_argument(std::move(m));
}
}  // namespace detail

/// Backward of y = x·Wᵀ (W [N, K]): dx = dy·W (written), dW += dyᵀ·x (accumulated), in fp32.
/// @tparam WT the weight's storage type: float, or bfloat16 (mixed precision; widened exactly)
/// @param dx  [T, K] fp32, out (may be empty to skip)
/// @param dW  [N, K] fp32, accumulated
/// @param dy  [T, N] fp32
/// @param x   [T, K] fp32, the forward input
/// @param W   [N, K] WT, the weight
/// @returns invalid_argument when the shapes disagree.
template <class WT>
Status linear_backward(MatrixView<float> dx, MatrixView<float> dW, MatrixView<float const> dy,
                       MatrixView<float const> x, MatrixView<WT const> W) {
  std::int64_t const T = x.extent(0), K = x.extent(1), N = W.extent(0);
  bool const ok = W.extent(1) == K && dy.extent(0) == T && dy.extent(1) == N && dW.extent(0) == N &&
                  dW.extent(1) == K &&
                  (dx.data() == nullptr || (dx.extent(0) == T && dx.extent(1) == K));
  std::int64_t const sdy[] = {dy.extent(0), dy.extent(1)}, sx[] = {T, K}, sw[] = {N, W.extent(1)},
                     sdw[] = {dW.extent(0), dW.extent(1)};
  DEEPMOE_RETURN_IF_ERROR(detail::shapes(
      "linear_backward", ok, {{"dy", sdy}, {"x", sx}, {"W", sw}, {"dW", sdw}}, {2, 2, 2, 2}));
  if (dx.data() != nullptr) {
    DEEPMOE_OMP(omp parallel for schedule(static) if (T * N * K >= (1 << 16)))
    for (std::int64_t t = 0; t < T; ++t) {
      float* out = dx.data() + t * K;
      for (std::int64_t k = 0; k < K; ++k)
        out[k] = 0.0f;
      for (std::int64_t n = 0; n < N; ++n) {
        float const g = dy.data()[t * N + n];
        WT const* w = W.data() + n * K;
        for (std::int64_t k = 0; k < K; ++k)
          out[k] += g * static_cast<float>(w[k]);
      }
    }
  }
  DEEPMOE_OMP(omp parallel for schedule(static) if (T * N * K >= (1 << 16)))
  for (std::int64_t n = 0; n < N; ++n) {
    float* g = dW.data() + n * K;
    for (std::int64_t t = 0; t < T; ++t) {
      float const d = dy.data()[t * N + n];
      float const* xt = x.data() + t * K;
      for (std::int64_t k = 0; k < K; ++k)
        g[k] += d * xt[k];
    }
  }
  return {};
}

/// Backward of RMSNorm y = w ⊙ x·r (file comment) for each of T rows of width D.
/// @param dx   [T, D] fp32, out
/// @param dw   [D] fp32, accumulated
/// @param dy   [T, D] fp32
/// @param x    [T, D] fp32, the forward input
/// @param w    [D] AT (float or bfloat16), the weight
/// @param eps  the forward's eps (> 0)
/// @returns invalid_argument when the shapes disagree or eps ≤ 0.
template <class AT>
Status rms_norm_backward(MatrixView<float> dx, VectorView<float> dw, MatrixView<float const> dy,
                         MatrixView<float const> x, VectorView<AT const> w, double eps) {
  std::int64_t const T = x.extent(0), D = x.extent(1);
  bool const ok = dx.extent(0) == T && dx.extent(1) == D && dy.extent(0) == T &&
                  dy.extent(1) == D && w.extent(0) == D && dw.extent(0) == D;
  std::int64_t const sx[] = {T, D}, sdy[] = {dy.extent(0), dy.extent(1)}, sw[] = {w.extent(0)},
                     sdw[] = {dw.extent(0)};
  DEEPMOE_RETURN_IF_ERROR(detail::shapes(
      "rms_norm_backward", ok, {{"x", sx}, {"dy", sdy}, {"w", sw}, {"dw", sdw}}, {2, 2, 1, 1}));
  if (!(eps > 0)) {
    return invalid_argument("rms_norm_backward: eps must be > 0");
  }
  for (std::int64_t t = 0; t < T; ++t) {
    float const* xt = x.data() + t * D;
    float const* gt = dy.data() + t * D;
    float ss = 0.0f, dot = 0.0f;
    for (std::int64_t i = 0; i < D; ++i) {
      ss += xt[i] * xt[i];
      dot += static_cast<float>(w(i)) * gt[i] * xt[i];
    }
    float const r = 1.0f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
    float const c = r * r * r / static_cast<float>(D) * dot;
    for (std::int64_t i = 0; i < D; ++i) {
      dx.data()[t * D + i] = r * static_cast<float>(w(i)) * gt[i] - xt[i] * c;
      dw.data()[i] += gt[i] * xt[i] * r;
    }
  }
  return {};
}

/// Backward of the SwiGLU gate h = silu(g)·u, elementwise over n values.
/// @param dg, du  [n] fp32, out
/// @param dh      [n] fp32
/// @param g, u    [n] fp32, the forward inputs
inline void swiglu_backward(float* dg, float* du, float const* dh, float const* g, float const* u,
                            std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    float const s = 1.0f / (1.0f + std::exp(-g[i]));
    du[i] = dh[i] * g[i] * s;
    dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
  }
}

/// Backward of the embedding lookup: dE[id_t] += dh_t, tokens in order.
/// @param dE   [V, H] fp32, accumulated
/// @param dh   [T, H] fp32
/// @param ids  [T] token ids in [0, V)
/// @returns kOutOfRange naming the position of an id outside [0, V).
inline Status embedding_backward(MatrixView<float> dE, MatrixView<float const> dh,
                                 VectorView<std::int32_t const> ids) {
  std::int64_t const V = dE.extent(0), H = dE.extent(1), T = dh.extent(0);
  std::int64_t const se[] = {V, H}, sdh[] = {T, dh.extent(1)}, sid[] = {ids.extent(0)};
  DEEPMOE_RETURN_IF_ERROR(detail::shapes("embedding_backward",
                                         dh.extent(1) == H && ids.extent(0) == T,
                                         {{"dE", se}, {"dh", sdh}, {"ids", sid}}, {2, 2, 1}));
  for (std::int64_t t = 0; t < T; ++t) {
    std::int32_t const id = ids(t);
    if (id < 0 || id >= V) {
      return Status(StatusCode::kOutOfRange, "embedding_backward: token " + std::to_string(t) +
                                                 " has id " + std::to_string(id) + " outside [0, " +
                                                 std::to_string(V) + ")");
    }
    for (std::int64_t h = 0; h < H; ++h)
      dE.data()[id * H + h] += dh.data()[t * H + h];
  }
  return {};
}

/// Mean cross-entropy of logits against targets, and its gradient (file comment).
/// @param dz       [T, V] fp32, out: dL/dz (zero rows for ignored targets)
/// @param loss     out: L, the mean over the counted targets (0 when none)
/// @param z        [T, V] fp32 logits
/// @param targets  [T] ids in [0, V), or `ignore`
/// @param ignore   the id of targets that do not count (padding), e.g. −100
/// @returns kOutOfRange naming the position of a target outside [0, V) that is not `ignore`.
inline Status cross_entropy(MatrixView<float> dz, double& loss, MatrixView<float const> z,
                            VectorView<std::int32_t const> targets, std::int32_t ignore = -100) {
  std::int64_t const T = z.extent(0), V = z.extent(1);
  std::int64_t const sz[] = {T, V}, sdz[] = {dz.extent(0), dz.extent(1)},
                     st[] = {targets.extent(0)};
  DEEPMOE_RETURN_IF_ERROR(detail::shapes(
      "cross_entropy", dz.extent(0) == T && dz.extent(1) == V && targets.extent(0) == T,
      {{"z", sz}, {"dz", sdz}, {"targets", st}}, {2, 2, 1}));
  std::int64_t n = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    std::int32_t const y = targets(t);
    if (y == ignore) {
      continue;
    }
    if (y < 0 || y >= V) {
      return Status(StatusCode::kOutOfRange, "cross_entropy: target " + std::to_string(t) + " = " +
                                                 std::to_string(y) + " is outside [0, " +
                                                 std::to_string(V) + ")");
    }
    ++n;
  }
  double total = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    float const* zt = z.data() + t * V;
    float* gt = dz.data() + t * V;
    std::int32_t const y = targets(t);
    if (y == ignore) {
      for (std::int64_t v = 0; v < V; ++v)
        gt[v] = 0.0f;
      continue;
    }
    double mx = zt[0];
    for (std::int64_t v = 1; v < V; ++v)
      mx = zt[v] > mx ? zt[v] : mx;
    double s = 0;
    for (std::int64_t v = 0; v < V; ++v)
      s += std::exp(zt[v] - mx);
    double const lse = mx + std::log(s);
    total += lse - zt[y];
    for (std::int64_t v = 0; v < V; ++v)
      gt[v] = static_cast<float>((std::exp(zt[v] - lse) - (v == y ? 1.0 : 0.0)) /
                                 static_cast<double>(n));
  }
  loss = n > 0 ? total / static_cast<double>(n) : 0.0;
  return {};
}

}  // namespace train
DEEPMOE_NAMESPACE_END
