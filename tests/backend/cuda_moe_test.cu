// SPDX-License-Identifier: Apache-2.0
/// @file cuda_moe_test.cu
/// @brief The CUDA backend's MoE stages (backend/cuda/) against the CPU backend on the same
/// seeded inputs: the router's ids exactly (the warp computes select_experts_for_token's steps;
/// the device's expf may differ from glibc's by up to two ulps, which moves a weight by ≤ 1e-6
/// relative and an id only at a tie that close — none in these inputs; exact ties on a grid are
/// broken as the CPU breaks them), the dispatch plan exactly, the gather
/// exactly (bf16 widening is exact), the combine to 1e-6 relative (fp32 sums in the same order;
/// the compilers may contract different products into FMAs); the grouped SwiGLU against a naive
/// double-precision loop to 1e-4 of the largest output (fp32 sums of ≤ 7168 products of random
/// sign err by ≈ √K·2⁻²⁴ ≈ 5e-6 relative; an indexing error is of order 1); the whole MoE layer
/// against the CPU's moe_layer_forward: outputs to 1e-5 of the largest with fp32 activations
/// (which a single misrouted row would exceed), one bf16 ulp of each value with bf16 ones, where
/// the one rounding may fall either side. The tensor-core experts (grouped_swiglu_mma) round rows
/// and SwiGLU activations to bf16 (2⁻⁹ relative each): against a double loop that rounds the same
/// activations, 1e-3 of the largest output (a rounding falling the other way moves one term by
/// 2⁻⁸ of it); the whole layer against the CPU's fp32 one, 2⁻⁶ of the largest output. Their
/// results are checked bitwise reproducible and independent of the other rows of the batch.
/// The fp8 experts (grouped_swiglu_fp8): quantization bit for bit against the host; the grouped
/// GEMM to 1e-2 against a loop over the same quantized operands; the layer against the CPU's
/// fp32 one to 0.1 of the largest output (e4m3 rows and activations, steps of up to 2⁻³).
/// Without a CUDA device the program prints SKIPPED and exits 77 (cuda_test_main.cpp).
#include <catch2/catch.hpp>

#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/backend/cuda/combine.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_fp8.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>
#include <deepmoe/backend/cuda/linear.cuh>
#include <deepmoe/backend/cuda/moe_layer.cuh>
#include <deepmoe/backend/cuda/permute.cuh>
#include <deepmoe/backend/cuda/router.cuh>
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/moe/combine.hpp>
#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/moe/permute.hpp>
#include <deepmoe/ops/fp8_block_quant.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "support/router_configs.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

using namespace deepmoe;

namespace {

template <class T>
std::span<T const> cspan(std::vector<T> const& v) {
  return std::span<T const>(v.data(), v.size());
}

// Routes T tokens of seeded logits on both backends; returns the ids (checked equal).
// quantum > 0: logits and bias on a grid of that step, so that scores, group scores and
// selection scores tie often and the tie-breaking (lower id first) decides.
template <class C>
std::vector<std::int32_t> route_both(std::int64_t T, std::uint64_t seed,
                                     std::vector<float>& weights, float quantum = 0.0f) {
  C const cfg{};
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  util::Rng rng(seed);
  std::vector<float> logits(static_cast<std::size_t>(T * E)), bias(static_cast<std::size_t>(E));
  auto grid = [&](float v) { return quantum > 0 ? quantum * std::round(v / quantum) : v; };
  for (float& z : logits)
    z = grid(4.0f * rng.uniform());
  for (float& b : bias)
    b = grid(0.1f * rng.uniform());
  std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
  weights.resize(ids.size());
  REQUIRE(moe::select_experts<C>(
              MatrixView<std::int32_t, kDyn, config::topk_extent<C>>::of(ids.data(), T, K),
              MatrixView<float, kDyn, config::topk_extent<C>>::of(weights.data(), T, K),
              MatrixView<float const, kDyn, config::experts_extent<C>>::of(logits.data(), T, E),
              VectorView<float const, config::experts_extent<C>>::of(bias.data(), E))
              .ok());
  gpu::DeviceBuffer<float> d_logits, d_bias, d_w;
  gpu::DeviceBuffer<std::int32_t> d_ids;
  gpu::DeviceBuffer<unsigned long long> d_failed;
  REQUIRE(d_logits.upload(cspan(logits)).ok());
  REQUIRE(d_bias.upload(cspan(bias)).ok());
  REQUIRE(d_ids.allocate(ids.size()).ok());
  REQUIRE(d_w.allocate(ids.size()).ok());
  REQUIRE(d_failed.allocate(1).ok());
  bool const biased = config::has_correction_bias(cfg);
  Status const st = gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(),
                                       biased ? d_bias.data() : nullptr, T, d_failed.data(), 0);
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::vector<std::int32_t> gpu_ids;
  std::vector<float> gpu_w;
  std::vector<unsigned long long> failed;
  REQUIRE(d_ids.download(gpu_ids).ok());
  REQUIRE(d_w.download(gpu_w).ok());
  REQUIRE(d_failed.download(failed).ok());
  CHECK(failed[0] == static_cast<unsigned long long>(T));
  CHECK(gpu_ids == ids);
  for (std::size_t i = 0; i < ids.size(); ++i)
    CHECK(gpu_w[i] == Approx(weights[i]).epsilon(1e-6));
  return ids;
}

template <class C>
void check_plan(std::vector<std::int32_t> const& ids) {
  C const cfg{};
  int const E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  auto const R = static_cast<std::int64_t>(ids.size()), T = R / K;
  std::vector<std::int32_t> counts(static_cast<std::size_t>(E)),
      offsets(static_cast<std::size_t>(E + 1)), p2e(ids.size()), e2p(ids.size());
  using Plan = moe::DispatchPlan<C>;
  Plan const plan{decltype(Plan::tokens_per_expert)::of(counts.data(), E),
                  decltype(Plan::expert_offsets)::of(offsets.data(), E + 1),
                  VectorView<std::int32_t>(p2e.data(), R), VectorView<std::int32_t>(e2p.data(), R)};
  REQUIRE(
      moe::build_dispatch_plan<C>(
          plan, MatrixView<std::int32_t const, kDyn, config::topk_extent<C>>::of(ids.data(), T, K))
          .ok());
  gpu::DeviceBuffer<std::int32_t> d_ids, d_counts, d_offsets, d_p2e, d_e2p;
  REQUIRE(d_ids.upload(cspan(ids)).ok());
  REQUIRE(d_counts.allocate(counts.size()).ok());
  REQUIRE(d_offsets.allocate(offsets.size()).ok());
  REQUIRE(d_p2e.allocate(ids.size()).ok());
  REQUIRE(d_e2p.allocate(ids.size()).ok());
  gpu::DeviceDispatchPlan const dplan{d_counts.data(), d_offsets.data(), d_p2e.data(),
                                      d_e2p.data()};
  std::size_t bytes = 0;
  REQUIRE(gpu::build_dispatch_plan<C>(nullptr, bytes, dplan, d_ids.data(), T, 0).ok());
  gpu::DeviceBuffer<unsigned char> temp;
  REQUIRE(temp.allocate(bytes).ok());
  std::size_t less = bytes - 1;
  CHECK(gpu::build_dispatch_plan<C>(temp.data(), less, dplan, d_ids.data(), T, 0).code() ==
        StatusCode::kInvalidArgument);
  Status const st = gpu::build_dispatch_plan<C>(temp.data(), bytes, dplan, d_ids.data(), T, 0);
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::vector<std::int32_t> g_counts, g_offsets, g_p2e, g_e2p;
  REQUIRE(d_counts.download(g_counts).ok());
  REQUIRE(d_offsets.download(g_offsets).ok());
  REQUIRE(d_p2e.download(g_p2e).ok());
  REQUIRE(d_e2p.download(g_e2p).ok());
  CHECK(g_counts == counts);
  CHECK(g_offsets == offsets);
  CHECK(g_p2e == p2e);
  CHECK(g_e2p == e2p);

  if (T == 0) {
    return;
  }
  // gather of bf16 rows, then the combine of random expert outputs, against the CPU's
  std::int64_t const H = cfg.hidden_size;
  util::Rng rng(static_cast<std::uint64_t>(T));
  std::vector<bfloat16> x(static_cast<std::size_t>(T * H));
  for (auto& v : x)
    v = bfloat16(rng.unit());
  std::vector<float> gathered(static_cast<std::size_t>(R * H));
  REQUIRE(moe::permute<C, bfloat16>(
              MatrixView<float, kDyn, config::hidden_extent<C>>::of(gathered.data(), R, H),
              MatrixView<bfloat16 const, kDyn, config::hidden_extent<C>>::of(x.data(), T, H), plan)
              .ok());
  gpu::DeviceBuffer<bfloat16> d_x;
  gpu::DeviceBuffer<float> d_gathered;
  REQUIRE(d_x.upload(cspan(x)).ok());
  REQUIRE(d_gathered.allocate(gathered.size()).ok());
  REQUIRE(gpu::permute<C, bfloat16>(d_gathered.data(), d_x.data(), dplan, T, 0).ok());
  std::vector<float> g_gathered;
  REQUIRE(d_gathered.download(g_gathered).ok());
  CHECK(g_gathered == gathered);

  std::vector<float> out(static_cast<std::size_t>(R * H)), shared(static_cast<std::size_t>(T * H)),
      wts(static_cast<std::size_t>(R)), y(static_cast<std::size_t>(T * H));
  for (float& v : out)
    v = rng.unit();
  for (float& v : shared)
    v = rng.unit();
  for (float& v : wts)
    v = 0.5f * (rng.uniform() + 1.0f);
  REQUIRE(moe::combine<C, float>(
              MatrixView<float, kDyn, config::hidden_extent<C>>::of(y.data(), T, H),
              MatrixView<float const, kDyn, config::hidden_extent<C>>::of(out.data(), R, H),
              MatrixView<float const, kDyn, config::topk_extent<C>>::of(wts.data(), T, K), plan,
              MatrixView<float const, kDyn, config::hidden_extent<C>>::of(shared.data(), T, H))
              .ok());
  gpu::DeviceBuffer<float> d_out, d_shared, d_wts, d_y;
  REQUIRE(d_out.upload(cspan(out)).ok());
  REQUIRE(d_shared.upload(cspan(shared)).ok());
  REQUIRE(d_wts.upload(cspan(wts)).ok());
  REQUIRE(d_y.allocate(y.size()).ok());
  REQUIRE(
      gpu::combine<C, float>(d_y.data(), d_out.data(), d_wts.data(), dplan, d_shared.data(), T, 0)
          .ok());
  std::vector<float> g_y;
  REQUIRE(d_y.download(g_y).ok());
  for (std::size_t i = 0; i < y.size(); ++i)
    CHECK(g_y[i] == Approx(y[i]).epsilon(1e-6).margin(1e-6));
}

using V3 = configs::DeepSeekV3;
using Small = deepmoe::testing::RouterConfig<8, 2, 4, 2>;
using Softmax =
    deepmoe::testing::RouterConfig<64, 6, 1, 1, false, 1.0, config::ScoringFunc::kSoftmax,
                                   config::TopkMethod::kGreedy>;
using GroupGreedy =  // DeepSeek-V2's group_limited_greedy, 40 groups: more groups than lanes
    deepmoe::testing::RouterConfig<160, 6, 40, 3, false, 16.0, config::ScoringFunc::kSoftmax,
                                   config::TopkMethod::kGroupLimitedGreedy>;
using Kimi = deepmoe::testing::RouterConfig<384, 8, 1, 1, true, 2.827>;  // 12 experts per lane

}  // namespace

TEST_CASE("gpu::route_topk: the CPU's ids and weights", "[moe][router][cuda]") {
  std::vector<float> w;
  for (std::int64_t T : {1, 7, 1000}) {
    CAPTURE(T);
    route_both<V3>(T, 11, w);
    route_both<Small>(T, 12, w);
    route_both<Softmax>(T, 13, w);
    route_both<GroupGreedy>(T, 14, w);
    route_both<Kimi>(T, 15, w);
  }
}

TEST_CASE("gpu::route_topk: ties are broken as the CPU breaks them", "[moe][router][cuda]") {
  std::vector<float> w;
  for (float quantum : {0.5f, 0.25f}) {
    CAPTURE(quantum);
    route_both<V3>(300, 16, w, quantum);
    route_both<Small>(300, 17, w, quantum);
    route_both<Softmax>(300, 18, w, quantum);
    route_both<GroupGreedy>(300, 19, w, quantum);
    route_both<Kimi>(300, 20, w, quantum);
  }
}

TEST_CASE("gpu::linear: a double loop, and a row's bits do not depend on the batch",
          "[linear][cuda]") {
  for (std::int64_t K : {7168, 100}) {  // 16-byte chunks; a ragged last chunk, unaligned rows
    constexpr std::int64_t N = 37, T = 21;
    CAPTURE(K);
    util::Rng rng(50);
    std::vector<bfloat16> x(static_cast<std::size_t>(T * K)), w(static_cast<std::size_t>(N * K));
    for (auto& v : x)
      v = bfloat16(rng.unit());
    for (auto& v : w)
      v = bfloat16(rng.unit());
    gpu::DeviceBuffer<bfloat16> d_x, d_w;
    gpu::DeviceBuffer<float> d_y;
    REQUIRE(d_x.upload(cspan(x)).ok());
    REQUIRE(d_w.upload(cspan(w)).ok());
    REQUIRE(d_y.allocate(static_cast<std::size_t>(T * N)).ok());
    REQUIRE(gpu::linear(d_y.data(), d_x.data(), d_w.data(), T, N, K, nullptr).ok());
    std::vector<float> y;
    REQUIRE(d_y.download(y).ok());
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t n = 0; n < N; ++n) {
        double want = 0, mag = 0;
        for (std::int64_t k = 0; k < K; ++k) {
          double const p = static_cast<double>(static_cast<float>(x[t * K + k])) *
                           static_cast<float>(w[n * K + k]);
          want += p;
          mag += std::fabs(p);
        }
        // fp32 sums of K products: |error| ≤ ~K·2⁻²⁴·Σ|p| at worst, far less in practice
        CHECK(std::fabs(y[t * N + n] - want) <= 1e-5 * mag);
      }
    // row 13 alone (at the start of x) gives the bits it had as row 13 of 21
    std::vector<float> alone;
    REQUIRE(gpu::linear(d_y.data(), d_x.data() + 13 * K, d_w.data(), 1, N, K, nullptr).ok());
    REQUIRE(d_y.download(alone).ok());
    CHECK(std::memcmp(alone.data(), y.data() + 13 * N, N * sizeof(float)) == 0);
  }
}

TEST_CASE("gpu::build_dispatch_plan, permute, combine: the CPU's results", "[moe][permute][cuda]") {
  std::vector<float> w;
  for (std::int64_t T : {1, 5, 4096}) {
    CAPTURE(T);
    check_plan<V3>(route_both<V3>(T, 21, w));
    check_plan<Small>(route_both<Small>(T, 22, w));
  }
  SECTION("edge cases: no tokens, every row on one expert, the last expert only") {
    check_plan<Small>({});
    check_plan<Small>(std::vector<std::int32_t>(2 * 300, 0));
    check_plan<V3>(std::vector<std::int32_t>(8 * 3, 255));
  }
}

TEST_CASE("gpu::route_topk: a NaN logit names the first failing token", "[moe][router][cuda]") {
  using C = Small;
  std::vector<float> logits(5 * 8, 0.5f);
  logits[3 * 8 + 2] = std::nanf("");
  logits[4 * 8] = std::nanf("");
  std::vector<float> bias(8, 0.0f);
  gpu::DeviceBuffer<float> d_logits, d_bias, d_w;
  gpu::DeviceBuffer<std::int32_t> d_ids;
  gpu::DeviceBuffer<unsigned long long> d_failed;
  REQUIRE(d_logits.upload(cspan(logits)).ok());
  REQUIRE(d_bias.upload(cspan(bias)).ok());
  REQUIRE(d_ids.allocate(10).ok());
  REQUIRE(d_w.allocate(10).ok());
  REQUIRE(d_failed.allocate(1).ok());
  REQUIRE(gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), d_bias.data(), 5,
                             d_failed.data(), 0)
              .ok());
  std::vector<unsigned long long> failed;
  REQUIRE(d_failed.download(failed).ok());
  CHECK(failed[0] == 3);
  // the failed tokens get ids 0, 1 with weights 0: the dispatch plan stays consistent
  std::vector<std::int32_t> ids;
  std::vector<float> w;
  REQUIRE(d_ids.download(ids).ok());
  REQUIRE(d_w.download(w).ok());
  for (std::size_t i : {6u, 7u, 8u, 9u}) {
    CHECK(ids[i] == static_cast<std::int32_t>(i % 2));
    CHECK(w[i] == 0.0f);
  }
  // a NaN correction bias fails every token
  bias[5] = std::nanf("");
  logits[3 * 8 + 2] = logits[4 * 8] = 0.5f;
  REQUIRE(d_logits.upload(cspan(logits)).ok());
  REQUIRE(d_bias.upload(cspan(bias)).ok());
  REQUIRE(gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), d_bias.data(), 5,
                             d_failed.data(), 0)
              .ok());
  REQUIRE(d_failed.download(failed).ok());
  CHECK(failed[0] == 0);
  CHECK(
      gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), nullptr, 5, d_failed.data(), 0)
          .code() == StatusCode::kInvalidArgument);
}

// The grouped SwiGLU of segments `offsets` (rows of x) against a double loop. kMma: the
// tensor-core path, with bf16 rows and the reference's SwiGLU activation rounded to bf16 as the
// kernel's is (a rounding that falls the other way moves one product by 2⁻⁸ of it).
template <class W, bool kMma = false>
void check_grouped_swiglu(std::int64_t H, std::int64_t I, std::vector<std::int32_t> const& offsets,
                          std::uint64_t seed) {
  int const S = static_cast<int>(offsets.size()) - 1;
  std::int64_t const R = offsets.back();
  CAPTURE(H, I, S, R, kMma);
  util::Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(R * H));
  for (float& v : x)
    v = kMma ? static_cast<float>(bfloat16(rng.unit())) : rng.unit();
  float const sh = 1.0f / std::sqrt(static_cast<float>(H)),
              si = 1.0f / std::sqrt(static_cast<float>(I));
  std::vector<W> gate(static_cast<std::size_t>(S * I * H)), up(gate.size()), down(gate.size());
  for (auto& v : gate)
    v = W(sh * rng.unit());
  for (auto& v : up)
    v = W(sh * rng.unit());
  for (auto& v : down)
    v = W(si * rng.unit());
  std::vector<double> want(static_cast<std::size_t>(R * H)), h(static_cast<std::size_t>(I));
  double scale = 0;
  for (int s = 0; s < S; ++s)
    for (std::int64_t r = offsets[s]; r < offsets[s + 1]; ++r) {
      for (std::int64_t n = 0; n < I; ++n) {
        double g = 0, u = 0;
        for (std::int64_t k = 0; k < H; ++k) {
          double const xv = x[static_cast<std::size_t>(r * H + k)];
          g += xv * static_cast<double>(
                        static_cast<float>(gate[static_cast<std::size_t>((s * I + n) * H + k)]));
          u += xv * static_cast<double>(
                        static_cast<float>(up[static_cast<std::size_t>((s * I + n) * H + k)]));
        }
        double const a = g / (1.0 + std::exp(-g)) * u;
        h[static_cast<std::size_t>(n)] =
            kMma ? static_cast<float>(bfloat16(static_cast<float>(a))) : a;
      }
      for (std::int64_t n = 0; n < H; ++n) {
        double o = 0;
        for (std::int64_t k = 0; k < I; ++k)
          o += h[static_cast<std::size_t>(k)] *
               static_cast<double>(
                   static_cast<float>(down[static_cast<std::size_t>((s * H + n) * I + k)]));
        want[static_cast<std::size_t>(r * H + n)] = o;
        scale = std::max(scale, std::fabs(o));
      }
    }
  using In = std::conditional_t<kMma, bfloat16, float>;
  std::vector<In> xin(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    xin[i] = In(x[i]);
  gpu::DeviceBuffer<In> d_x, d_hidden;
  gpu::DeviceBuffer<float> d_out;
  gpu::DeviceBuffer<W> d_gate, d_up, d_down;
  gpu::DeviceBuffer<std::int32_t> d_offsets, d_tile_starts;
  REQUIRE(d_x.upload(cspan(xin)).ok());
  REQUIRE(d_tile_starts.allocate(offsets.size()).ok());
  REQUIRE(d_gate.upload(cspan(gate)).ok());
  REQUIRE(d_up.upload(cspan(up)).ok());
  REQUIRE(d_down.upload(cspan(down)).ok());
  REQUIRE(d_offsets.upload(cspan(offsets)).ok());
  REQUIRE(d_out.allocate(static_cast<std::size_t>(R * H)).ok());
  REQUIRE(d_hidden.allocate(static_cast<std::size_t>(R * I)).ok());
  std::int64_t max_rows = 0;
  for (int s = 0; s < S; ++s)
    max_rows = std::max<std::int64_t>(max_rows, offsets[s + 1] - offsets[s]);
  auto run = [&] {
    if constexpr (kMma) {
      return gpu::grouped_swiglu_mma(d_out.data(), d_hidden.data(), d_x.data(), d_offsets.data(),
                                     d_tile_starts.data(), S, R,
                                     {d_gate.data(), d_up.data(), d_down.data()}, H, I, nullptr);
    } else {
      return gpu::grouped_swiglu<W>(d_out.data(), d_hidden.data(), d_x.data(), d_offsets.data(), S,
                                    max_rows, {d_gate.data(), d_up.data(), d_down.data()}, H, I,
                                    nullptr);
    }
  };
  Status const st = run();
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::vector<float> got;
  REQUIRE(d_out.download(got).ok());
  double err = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    err = std::max(err, std::fabs(got[i] - want[i]));
  INFO("max error " << err << " of max |out| " << scale);
  CHECK(err <= (kMma ? 1e-3 : 1e-4) * scale);
  if constexpr (kMma) {  // the same bits again
    std::vector<float> again;
    REQUIRE(d_out.upload(cspan(std::vector<float>(got.size(), -1.0f))).ok());
    REQUIRE(run().ok());
    REQUIRE(d_out.download(again).ok());
    CHECK(std::memcmp(again.data(), got.data(), got.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("gpu::grouped_swiglu: a naive double loop", "[moe][expert][cuda]") {
  check_grouped_swiglu<bfloat16>(64, 40, {0, 5, 5, 37, 38}, 31);  // an empty segment
  check_grouped_swiglu<float>(64, 40, {0, 70}, 32);               // one segment, 3 row tiles
  check_grouped_swiglu<bfloat16>(7168, 2048, {0, 3, 20}, 33);     // DeepSeek-V3's H and I
  check_grouped_swiglu<bfloat16>(64, 40, {0, 0}, 34);             // no rows
}

TEST_CASE("gpu::grouped_swiglu_mma: a naive double loop", "[moe][expert][cuda][mma]") {
  // empty segments, partial row tiles (1, 63, 65 rows), partial column tiles (I = 96 < 128)
  check_grouped_swiglu<bfloat16, true>(256, 96, {0, 1, 1, 64, 129, 129}, 35);
  check_grouped_swiglu<bfloat16, true>(64, 32, {0, 200}, 36);        // one segment, 4 row tiles
  check_grouped_swiglu<bfloat16, true>(7168, 2048, {0, 3, 70}, 37);  // DeepSeek-V3's H and I
  check_grouped_swiglu<bfloat16, true>(160, 64, {0, 0, 0}, 38);      // no rows
}

TEST_CASE("gpu::grouped_swiglu_mma: a row's result does not depend on the batch",
          "[moe][expert][cuda][mma]") {
  constexpr std::int64_t H = 256, I = 96;
  util::Rng rng(39);
  std::vector<bfloat16> x(static_cast<std::size_t>(130 * H)), w(static_cast<std::size_t>(I * H));
  for (auto& v : x)
    v = bfloat16(rng.unit());
  for (auto& v : w)
    v = bfloat16(0.0625f * rng.unit());
  gpu::DeviceBuffer<bfloat16> d_x, d_w, d_hidden;
  gpu::DeviceBuffer<float> d_out;
  gpu::DeviceBuffer<std::int32_t> d_off, d_tiles;
  REQUIRE(d_x.upload(cspan(x)).ok());
  REQUIRE(d_w.upload(cspan(w)).ok());
  REQUIRE(d_hidden.allocate(static_cast<std::size_t>(130 * I)).ok());
  REQUIRE(d_out.allocate(static_cast<std::size_t>(130 * H)).ok());
  REQUIRE(d_tiles.allocate(2).ok());
  gpu::DeviceSwiGluWeights<bfloat16> const one{d_w.data(), d_w.data(), d_w.data()};
  // row 37 alone (row 0 of its tile), then in a segment of 130 rows (row 37 of the first tile,
  // other warps and fragment lanes): the same bits
  std::vector<float> alone, batch;
  for (std::int32_t rows : {1, 130}) {
    std::vector<std::int32_t> const off{0, rows};
    REQUIRE(d_off.upload(cspan(off)).ok());
    bfloat16 const* x = rows == 1 ? d_x.data() + 37 * H : d_x.data();
    REQUIRE(gpu::grouped_swiglu_mma(d_out.data(), d_hidden.data(), x, d_off.data(), d_tiles.data(),
                                    1, rows, one, H, I, nullptr)
                .ok());
    REQUIRE(d_out.download(rows == 1 ? alone : batch).ok());
  }
  CHECK(std::memcmp(alone.data(), batch.data() + 37 * H, H * sizeof(float)) == 0);
}

TEST_CASE("gpu::grouped_swiglu_mma: sizes it cannot run are refused", "[moe][expert][cuda][mma]") {
  CHECK(gpu::grouped_swiglu_mma_supported(7168, 2048).ok());
  CHECK(gpu::grouped_swiglu_mma_supported(100, 64).code() == StatusCode::kInvalidArgument);
  CHECK(gpu::grouped_swiglu_mma_supported(64, 40).code() == StatusCode::kInvalidArgument);
}

// e4m3 copy of v [rows, cols] with 128×128 block scales (ops/fp8_block_quant.hpp), and its
// dequantized values.
struct Fp8Matrix {
  std::vector<float8_e4m3fn> q;
  std::vector<float> scale, value;
};
Fp8Matrix quantize_weight(std::vector<float> const& v, std::int64_t rows, std::int64_t cols) {
  Fp8Matrix m;
  m.q.resize(v.size());
  m.scale.resize(static_cast<std::size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
  m.value.resize(v.size());
  REQUIRE(
      quantize_fp8_block(MatrixView<float8_e4m3fn>(m.q.data(), rows, cols),
                         MatrixView<float>(m.scale.data(), (rows + 127) / 128, (cols + 127) / 128),
                         MatrixView<float const>(v.data(), rows, cols))
          .ok());
  REQUIRE(dequantize_fp8_block(
              MatrixView<float>(m.value.data(), rows, cols),
              MatrixView<float8_e4m3fn const>(m.q.data(), rows, cols),
              MatrixView<float const>(m.scale.data(), (rows + 127) / 128, (cols + 127) / 128))
              .ok());
  return m;
}
// A row quantized per 1×128 as quantize_rows_fp8 does: q, scales, dequantized values.
void quantize_row(float const* x, std::int64_t K, float8_e4m3fn* q, float* scales, double* value) {
  for (std::int64_t b = 0; b < K / 128; ++b) {
    float amax = 0;
    for (std::int64_t k = 128 * b; k < 128 * (b + 1); ++k)
      amax = std::max(amax, std::fabs(x[k]));
    float const s = gpu::fp8_activation_scale(amax);
    scales[b] = s;
    for (std::int64_t k = 128 * b; k < 128 * (b + 1); ++k) {
      q[k] = float8_e4m3fn(x[k] / s);
      value[k] = static_cast<double>(static_cast<float>(q[k])) * s;
    }
  }
}

TEST_CASE("gpu::quantize_rows_fp8: the host's quantization, bit for bit", "[fp8][cuda]") {
  constexpr std::int64_t rows = 9, K = 384;
  util::Rng rng(60);
  std::vector<bfloat16> x(static_cast<std::size_t>(rows * K));
  for (auto& v : x)
    v = bfloat16(3.0f * rng.unit());
  for (std::int64_t k = 128; k < 256; ++k)  // an all-zero block: scale 1e-4/448, zeros
    x[static_cast<std::size_t>(2 * K + k)] = bfloat16(0.0f);
  gpu::DeviceBuffer<bfloat16> d_x;
  gpu::DeviceBuffer<float8_e4m3fn> d_q;
  gpu::DeviceBuffer<float> d_s;
  REQUIRE(d_x.upload(cspan(x)).ok());
  REQUIRE(d_q.allocate(x.size()).ok());
  REQUIRE(d_s.allocate(static_cast<std::size_t>(rows * K / 128)).ok());
  REQUIRE(gpu::quantize_rows_fp8(d_q.data(), d_s.data(), d_x.data(), rows, K, nullptr).ok());
  std::vector<float8_e4m3fn> q;
  std::vector<float> s;
  REQUIRE(d_q.download(q).ok());
  REQUIRE(d_s.download(s).ok());
  std::vector<float8_e4m3fn> want_q(x.size());
  std::vector<float> want_s(s.size()), xf(x.size());
  std::vector<double> unused(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    xf[i] = static_cast<float>(x[i]);
  for (std::int64_t r = 0; r < rows; ++r)
    quantize_row(xf.data() + r * K, K, want_q.data() + r * K, want_s.data() + r * K / 128,
                 unused.data() + r * K);
  CHECK(s == want_s);
  for (std::size_t i = 0; i < q.size(); ++i)
    CHECK(q[i].bits == want_q[i].bits);
  CHECK(gpu::quantize_rows_fp8(d_q.data(), d_s.data(), d_x.data(), rows, 100, nullptr).code() ==
        StatusCode::kInvalidArgument);
}

// The fp8 grouped SwiGLU against a double loop over the same quantized operands: weights
// dequantized from their blocks, rows and hidden activations quantized per 1×128 as the kernels
// do (hidden rounded to bf16 first). The kernels' fp32 sums err by ~2⁻²⁴·√K relative; where
// they move a hidden value across a bf16 or e4m3 rounding boundary, that element of the down
// projection's input moves by up to an e4m3 step (2⁻³ of it), and if it is its block's largest,
// the block's scale moves and its 128 elements re-round. Such crossings are rare; 1e-2 of the
// largest output bounds them here. An indexing or scaling error is of order 1.
void check_grouped_swiglu_fp8(std::int64_t H, std::int64_t I,
                              std::vector<std::int32_t> const& offsets, std::uint64_t seed) {
  int const S = static_cast<int>(offsets.size()) - 1;
  std::int64_t const R = offsets.back();
  CAPTURE(H, I, S, R);
  util::Rng rng(seed);
  std::vector<float> x(static_cast<std::size_t>(R * H));
  for (float& v : x)
    v = rng.unit();
  float const sh = 1.0f / std::sqrt(static_cast<float>(H)),
              si = 1.0f / std::sqrt(static_cast<float>(I));
  std::vector<Fp8Matrix> gate, up, down;
  std::vector<float8_e4m3fn> gq, uq, dq;
  std::vector<float> gs, us, ds;
  for (int s = 0; s < S; ++s) {
    std::vector<float> g(static_cast<std::size_t>(I * H)), u(g.size()), d(g.size());
    for (float& v : g)
      v = sh * rng.unit();
    for (float& v : u)
      v = sh * rng.unit();
    for (float& v : d)
      v = si * rng.unit();
    gate.push_back(quantize_weight(g, I, H));
    up.push_back(quantize_weight(u, I, H));
    down.push_back(quantize_weight(d, H, I));
    gq.insert(gq.end(), gate.back().q.begin(), gate.back().q.end());
    uq.insert(uq.end(), up.back().q.begin(), up.back().q.end());
    dq.insert(dq.end(), down.back().q.begin(), down.back().q.end());
    gs.insert(gs.end(), gate.back().scale.begin(), gate.back().scale.end());
    us.insert(us.end(), up.back().scale.begin(), up.back().scale.end());
    ds.insert(ds.end(), down.back().scale.begin(), down.back().scale.end());
  }
  std::vector<float8_e4m3fn> xq(x.size());
  std::vector<float> xs(static_cast<std::size_t>(R * H / 128));
  std::vector<double> xv(x.size());
  for (std::int64_t r = 0; r < R; ++r)
    quantize_row(x.data() + r * H, H, xq.data() + r * H, xs.data() + r * H / 128,
                 xv.data() + r * H);
  std::vector<double> want(static_cast<std::size_t>(R * H));
  std::vector<float> h(static_cast<std::size_t>(I));
  std::vector<float8_e4m3fn> hq(h.size());
  std::vector<float> hs(static_cast<std::size_t>(I / 128));
  std::vector<double> hv(h.size());
  double scale = 0;
  for (int s = 0; s < S; ++s)
    for (std::int64_t r = offsets[s]; r < offsets[s + 1]; ++r) {
      for (std::int64_t n = 0; n < I; ++n) {
        double g = 0, u = 0;
        for (std::int64_t k = 0; k < H; ++k) {
          g += xv[r * H + k] * gate[s].value[n * H + k];
          u += xv[r * H + k] * up[s].value[n * H + k];
        }
        h[n] = static_cast<float>(bfloat16(static_cast<float>(g / (1.0 + std::exp(-g)) * u)));
      }
      quantize_row(h.data(), I, hq.data(), hs.data(), hv.data());
      for (std::int64_t n = 0; n < H; ++n) {
        double o = 0;
        for (std::int64_t k = 0; k < I; ++k)
          o += hv[k] * down[s].value[n * I + k];
        want[r * H + n] = o;
        scale = std::max(scale, std::fabs(o));
      }
    }
  gpu::DeviceBuffer<float8_e4m3fn> d_xq, d_g, d_u, d_d;
  gpu::DeviceBuffer<float> d_xs, d_gs, d_us, d_ds, d_out;
  gpu::DeviceBuffer<std::int32_t> d_offsets, d_tiles;
  gpu::DeviceBuffer<unsigned char> d_ws;
  for (Status const& st :
       {d_xq.upload(cspan(xq)), d_xs.upload(cspan(xs)), d_g.upload(cspan(gq)),
        d_u.upload(cspan(uq)), d_d.upload(cspan(dq)), d_gs.upload(cspan(gs)),
        d_us.upload(cspan(us)), d_ds.upload(cspan(ds)), d_offsets.upload(cspan(offsets)),
        d_tiles.allocate(offsets.size()), d_out.allocate(static_cast<std::size_t>(R * H)),
        d_ws.allocate(gpu::grouped_swiglu_fp8_workspace_bytes(R, I))})
    REQUIRE(st.ok());
  gpu::DeviceSwiGluWeights<float8_e4m3fn> const w{d_g.data(),  d_u.data(),  d_d.data(),
                                                  d_gs.data(), d_us.data(), d_ds.data()};
  auto run = [&] {
    return gpu::grouped_swiglu_fp8(d_out.data(), d_xq.data(), d_xs.data(), d_offsets.data(),
                                   d_tiles.data(), S, R, w, H, I, d_ws.data(), nullptr);
  };
  Status const st = run();
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::vector<float> got, again;
  REQUIRE(d_out.download(got).ok());
  double err = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    err = std::max(err, std::fabs(got[i] - want[i]));
  INFO("max error " << err << " of max |out| " << scale);
  CHECK(err <= 1e-2 * scale);
  REQUIRE(d_out.upload(cspan(std::vector<float>(got.size(), -1.0f))).ok());
  REQUIRE(run().ok());
  REQUIRE(d_out.download(again).ok());
  CHECK(std::memcmp(again.data(), got.data(), got.size() * sizeof(float)) == 0);
}

TEST_CASE("gpu::grouped_swiglu_fp8: a double loop over the same quantized operands",
          "[moe][expert][cuda][fp8]") {
  check_grouped_swiglu_fp8(256, 384, {0, 1, 1, 64, 129}, 61);  // partial tiles, an empty one
  check_grouped_swiglu_fp8(7168, 2048, {0, 3, 40}, 62);        // DeepSeek-V3's H and I
  check_grouped_swiglu_fp8(128, 128, {0, 0}, 63);              // no rows
  CHECK(gpu::grouped_swiglu_fp8_supported(7168, 2048).ok());
  CHECK(gpu::grouped_swiglu_fp8_supported(7168, 96).code() == StatusCode::kInvalidArgument);
}

// The device layer against moe::moe_layer_forward on RandomMoe<C> weights.
template <class C, class Act>
void check_moe_layer(std::int64_t T, std::uint64_t seed,
                     gpu::ExpertKernel kernel = gpu::ExpertKernel::kSimt) {
  using W = typename C::weight_t;
  constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts;
  constexpr std::int64_t SM = config::Derived<C>::shared_intermediate_size;
  CAPTURE(T, sizeof(Act), static_cast<int>(kernel));
  util::RandomMoe<C> const moe(seed);
  std::vector<Act> const x = util::random_tokens<Act>(seed + 1, T, H);
  std::vector<Act> y(static_cast<std::size_t>(T * H));
  moe::MoeWorkspace<C> ws;
  using HView = MatrixView<Act, kDyn, config::hidden_extent<C>>;
  using HCView = MatrixView<Act const, kDyn, config::hidden_extent<C>>;
  REQUIRE(moe::moe_layer_forward<C, Act>(HView::of(y.data(), T, H), HCView::of(x.data(), T, H),
                                         moe.weights, ws)
              .ok());
  // the weights stacked per expert, as the device takes them
  std::vector<W> gate, up, down, sgate, sup, sdown;
  std::vector<float> scales[6];  // fp8: gate, up, down, shared gate, up, down weight_scale_inv
  for (std::int64_t e = 0; e < E + (SM > 0 ? 1 : 0); ++e) {
    auto const& l = moe.linears;
    auto const i = static_cast<std::size_t>(3 * e);
    std::vector<W>& g = e < E ? gate : sgate;
    std::vector<W>& u = e < E ? up : sup;
    std::vector<W>& d = e < E ? down : sdown;
    g.insert(g.end(), l[i].weight.begin(), l[i].weight.end());
    u.insert(u.end(), l[i + 1].weight.begin(), l[i + 1].weight.end());
    d.insert(d.end(), l[i + 2].weight.begin(), l[i + 2].weight.end());
    for (std::size_t p = 0; p < 3; ++p) {
      std::vector<float>& to = scales[(e < E ? 0 : 3) + p];
      to.insert(to.end(), l[i + p].scale.begin(), l[i + p].scale.end());
    }
  }
  gpu::DeviceBuffer<float> d_scales[6];
  for (int p = 0; p < 6; ++p)
    if (!scales[p].empty())
      REQUIRE(d_scales[p].upload(cspan(scales[p])).ok());
  gpu::DeviceBuffer<W> d_gate, d_up, d_down, d_sgate, d_sup, d_sdown;
  gpu::DeviceBuffer<typename C::act_t> d_router;
  gpu::DeviceBuffer<float> d_bias;
  gpu::DeviceBuffer<Act> d_x, d_y;
  gpu::DeviceBuffer<unsigned char> d_ws;
  gpu::DeviceBuffer<unsigned long long> d_failed;
  for (Status const& st :
       {d_gate.upload(cspan(gate)), d_up.upload(cspan(up)), d_down.upload(cspan(down)),
        d_sgate.upload(cspan(sgate)), d_sup.upload(cspan(sup)), d_sdown.upload(cspan(sdown)),
        d_router.upload(cspan(moe.gate)), d_bias.upload(cspan(moe.bias)), d_x.upload(cspan(x)),
        d_y.allocate(y.size()), d_failed.allocate(1)})
    REQUIRE(st.ok());
  std::size_t bytes = 0;
  REQUIRE(gpu::moe_layer_workspace_bytes<C>(T, bytes).ok());
  REQUIRE(d_ws.allocate(bytes).ok());
  gpu::DeviceMoeWeights<C> const w{d_router.data(),
                                   moe.bias.empty() ? nullptr : d_bias.data(),
                                   {d_gate.data(), d_up.data(), d_down.data(), d_scales[0].data(),
                                    d_scales[1].data(), d_scales[2].data()},
                                   {d_sgate.data(), d_sup.data(), d_sdown.data(),
                                    d_scales[3].data(), d_scales[4].data(), d_scales[5].data()}};
  Status const st = gpu::moe_layer_forward<C, Act>(d_y.data(), d_x.data(), w, d_ws.data(), bytes,
                                                   d_failed.data(), T, nullptr, kernel);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(gpu::moe_layer_forward<C, Act>(d_y.data(), d_x.data(), w, d_ws.data(), bytes - 1,
                                       d_failed.data(), T, nullptr)
            .code() == StatusCode::kInvalidArgument);
  std::vector<Act> got;
  std::vector<unsigned long long> failed;
  REQUIRE(d_y.download(got).ok());
  REQUIRE(d_failed.download(failed).ok());
  CHECK(failed[0] == static_cast<unsigned long long>(T));
  double scale = 0, err = 0, err_ulp = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    double const a = static_cast<float>(y[i]), b = static_cast<float>(got[i]);
    scale = std::max(scale, std::fabs(a));
    err = std::max(err, std::fabs(a - b));
    // a's bf16 ulp, 2^(⌊log2 |a|⌋ − 7), taken at 1e-3 for smaller values
    double const ulp = std::ldexp(1.0, std::ilogb(std::max(std::fabs(a), 1e-3)) - 7);
    err_ulp = std::max(err_ulp, std::fabs(a - b) / ulp);
  }
  INFO("max error " << err << " of max |y| " << scale << "; max bf16 ulps " << err_ulp);
  if constexpr (is_float8_v<W>) {
    // e4m3 rows and hidden activations (steps of 2⁻⁴ relative) against the CPU's fp32 ones:
    // errors of a few percent of the largest output; a layout or scale error is of order 1
    CHECK(err <= 0.1 * scale);
  } else if (kernel != gpu::ExpertKernel::kSimt) {  // kMma, or kAuto choosing it
    CHECK(err <= 0x1p-6 * scale);  // bf16 rows and SwiGLU activations: a few 2⁻⁹ roundings
  } else if constexpr (std::is_same_v<Act, float>) {
    CHECK(err <= 1e-5 * scale);
  } else {  // the one rounding of y may fall either side: one bf16 ulp, ≤ 2⁻⁷ of the value
    CHECK(err_ulp <= 1.0);
  }
}

struct TwoShared : configs::TinyMoe {
  static constexpr int n_shared_experts = 2;
};

TEST_CASE("gpu::moe_layer_forward: the CPU's layer", "[moe][layer][cuda]") {
  using Bf16W = config::WithPrecision<configs::TinyMoe, bfloat16, float>;
  using Bf16WA = config::WithPrecision<configs::TinyMoe, bfloat16, bfloat16>;
  for (std::int64_t T : {1, 9, 300}) {
    check_moe_layer<Bf16W, float>(T, 41);
    check_moe_layer<Bf16WA, bfloat16>(T, 42);
    check_moe_layer<Bf16W, float>(T, 43, gpu::ExpertKernel::kMma);
    check_moe_layer<Bf16WA, bfloat16>(T, 44, gpu::ExpertKernel::kMma);
    check_moe_layer<Bf16WA, bfloat16>(T, 50, gpu::ExpertKernel::kAuto);
    // two shared experts: twice an expert's width, so launched on their own
    check_moe_layer<config::WithPrecision<TwoShared, bfloat16, bfloat16>, bfloat16>(
        T, 47, gpu::ExpertKernel::kMma);
    check_moe_layer<config::WithPrecision<TwoShared, bfloat16, float>, float>(
        T, 48, gpu::ExpertKernel::kMma);
  }
}

// TinyMoe with expert widths of 128 (the fp8 path quantizes activations in 1×128 tiles)
struct Fp8Moe : configs::TinyMoe {
  static constexpr int moe_intermediate_size = 128;
};
struct Fp8TwoShared : Fp8Moe {  // shared experts twice as wide: launched on their own
  static constexpr int n_shared_experts = 2;
};

TEST_CASE("gpu::moe_layer_forward: fp8 experts against the CPU's layer",
          "[moe][layer][cuda][fp8]") {
  using Fp8W = config::WithPrecision<Fp8Moe, float8_e4m3fn, bfloat16>;
  using Fp8WF = config::WithPrecision<Fp8Moe, float8_e4m3fn, float>;
  for (std::int64_t T : {1, 9, 300}) {
    check_moe_layer<Fp8W, bfloat16>(T, 45, gpu::ExpertKernel::kAuto);
    check_moe_layer<Fp8WF, float>(T, 46, gpu::ExpertKernel::kMma);
    check_moe_layer<config::WithPrecision<Fp8TwoShared, float8_e4m3fn, bfloat16>, bfloat16>(
        T, 49, gpu::ExpertKernel::kAuto);
  }
}
