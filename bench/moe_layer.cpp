// SPDX-License-Identifier: Apache-2.0
// bench/moe_layer: one MoE layer of Moonlight-16B-A3B / DeepSeek-V2-Lite shape (H = 2048,
// 64 experts of width 1408, top-6, 2 shared) on the CPU, with bf16, fp32 and fp8 (128×128
// block scales, DeepSeek-V3's format) weights, at decode
// (T = 1, 8, 32) and prefill (T = 512, 2048) sizes.
//
// Per case: median time; GB/s of weight bytes touched (experts that received a token, the
// shared experts and the gate, each read once) over the memory bandwidth measured in this run;
// GFLOP/s over the fp32 GEMM rate measured in this run (Eigen SGEMM, all threads); and the
// speedup over a naive per-token, per-expert loop measured in this run. Validation (the layer
// against the naive loop) happens outside the timed regions.
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "common.hpp"

#include <omp.h>
#include <CLI/CLI.hpp>
#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

namespace dm = deepmoe;
using Clock = std::chrono::steady_clock;

namespace {

/// The naive baseline: token by token, expert by expert, plain loops over the weights
/// (converted element by element, fp8 times its block scale), fp32 accumulation. Routing reuses the
/// layer's router.
template <class C>
void naive_layer(std::vector<float>& y, std::vector<float> const& x, std::int64_t T,
                 dm::moe::MoeWeights<C> const& w, dm::moe::MoeWorkspace<C> const& ws) {
  constexpr std::int64_t H = C::hidden_size, M = C::moe_intermediate_size;
  constexpr std::int64_t SM = dm::config::Derived<C>::shared_intermediate_size;
  using W = typename C::weight_t;
  // one weight value; fp8 times its block scale
  auto value = [](dm::LinearWeight<W> const& l, std::int64_t r, std::int64_t c) {
    float v = dm::to_float(l.weight(r, c));
    if constexpr (dm::is_float8_v<W>) {
      v *= l.weight_scale_inv(r / C::weight_block_size, c / C::weight_block_size);
    }
    return v;
  };
  auto mlp = [&](float* out, float const* xt, dm::SwiGluWeights<W> const& e, std::int64_t inter,
                 float scale) {
    std::vector<float> a(static_cast<std::size_t>(inter));
    for (std::int64_t i = 0; i < inter; ++i) {
      float g = 0, u = 0;
      for (std::int64_t h = 0; h < H; ++h) {
        g += value(e.gate_proj, i, h) * xt[h];
        u += value(e.up_proj, i, h) * xt[h];
      }
      a[i] = dm::swiglu(g, u);
    }
    for (std::int64_t h = 0; h < H; ++h) {
      float acc = 0;
      for (std::int64_t i = 0; i < inter; ++i)
        acc += value(e.down_proj, h, i) * a[i];
      out[h] += scale * acc;
    }
  };
#pragma omp parallel for schedule(static)
  for (std::int64_t t = 0; t < T; ++t) {
    float* out = y.data() + t * H;
    std::fill(out, out + H, 0.0f);
    for (int j = 0; j < C::num_experts_per_tok; ++j) {
      mlp(out, x.data() + t * H, w.experts[ws.topk_ids()(t, j)], M, ws.topk_weights()(t, j));
    }
    mlp(out, x.data() + t * H, w.shared_experts, SM, 1.0f);
  }
}

template <class C>
void bench_config(char const* precision, bench::Ceilings ceil,
                  std::vector<std::int64_t> const& sizes, double budget) {
  using A = typename C::act_t;
  using W = typename C::weight_t;
  constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts, K = C::num_experts_per_tok;
  constexpr std::int64_t M = C::moe_intermediate_size;
  constexpr std::int64_t SM = dm::config::Derived<C>::shared_intermediate_size;
  dm::util::RandomMoe<C> const moe(1);
  dm::moe::MoeWorkspace<C> ws;
  for (std::int64_t T : sizes) {
    auto const u = dm::util::random_tokens<A>(2, T, H);
    std::vector<A> y(u.size());
    auto layer = [&] {
      auto const st = dm::moe::moe_layer_forward<C, A>(
          dm::MatrixView<A, dm::kDyn, H>(y.data(), T),
          dm::MatrixView<A const, dm::kDyn, H>(u.data(), T), moe.weights, ws);
      if (!st.ok()) {
        std::fprintf(stderr, "%s\n", st.to_string().c_str());
        std::exit(1);
      }
    };
    layer();
    double const s = bench::median_seconds(layer, 3, budget);

    // bytes touched and FLOPs
    std::int64_t used = 0;
    for (std::int64_t e = 0; e < E; ++e)
      used += ws.tokens_per_expert()(e) > 0 ? 1 : 0;
    double const bytes =
        (used * 3.0 * H * M + 3.0 * H * SM) * sizeof(W) + double(E) * H * sizeof(A);
    double const flop = 2.0 * T * (E * H + 3.0 * H * M * K + 3.0 * H * SM);

    // naive baseline on up to 16 tokens, scaled to T (its cost is linear in T); validated
    std::int64_t const tn = std::min<std::int64_t>(T, 16);
    std::vector<float> x(static_cast<std::size_t>(tn * H)), yn(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      x[i] = dm::to_float(u[i]);
    layer();  // ws holds this batch's routing
    double const sn =
        bench::median_seconds([&] { naive_layer<C>(yn, x, tn, moe.weights, ws); }, 1, budget / 2) *
        double(T) / double(tn);
    double max_err = 0, max_ref = 0;
    for (std::size_t i = 0; i < yn.size(); ++i) {
      max_err = std::max(max_err, double(std::abs(dm::to_float(y[i]) - yn[i])));
      max_ref = std::max(max_ref, double(std::abs(yn[i])));
    }
    std::printf("| %-5s | %5lld | %9.3f | %6.1f | %5.0f%% | %6.1f | %5.0f%% | %6.1fx | %.1e |\n",
                precision, (long long)T, s * 1e3, bytes / s * 1e-9,
                100 * bytes / s * 1e-9 / ceil.gbps, flop / s * 1e-9,
                100 * flop / s * 1e-9 / ceil.gflops, sn / s, max_err / max_ref);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  double budget = 2.0;
  std::vector<std::int64_t> sizes{1, 8, 32, 512, 2048};
  CLI::App app{"bench/moe_layer: the MoE layer at Moonlight / V2-Lite shapes"};
  app.add_option("--seconds", budget, "time budget per case [s]")->capture_default_str();
  app.add_option("--tokens", sizes, "token counts T")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  bench::Ceilings const ceil{bench::measure_bandwidth(), bench::measure_gemm()};
  std::printf(
      "threads %d; measured in this run: memory read bandwidth %.1f GB/s (sum over 1 GiB, 8 "
      "streams a thread), "
      "fp32 GEMM %.1f GFLOP/s (Eigen SGEMM 2048³)\n\n",
      omp_get_max_threads(), ceil.gbps, ceil.gflops);
  std::printf(
      "| weights | T | ms (median) | GB/s | of bandwidth | GFLOP/s | of GEMM | vs naive | "
      "max rel. diff vs naive |\n|---|---|---|---|---|---|---|---|---|\n");
  using Moonlight = dm::configs::Moonlight16BA3B;
  bench_config<Moonlight>("bf16", ceil, sizes, budget);
  bench_config<dm::config::WithPrecision<Moonlight, float, float>>("fp32", ceil, sizes, budget);
  bench_config<dm::config::WithPrecision<Moonlight, dm::float8_e4m3fn>>("fp8", ceil, sizes, budget);
  return 0;
}
