// SPDX-License-Identifier: Apache-2.0
// One DeepSeekMoE layer of a DeepSeek-V3-family model on the CPU, with synthetic weights:
// a prefill batch, then single-token decode steps; prints the routing statistics (tokens per
// expert, load imbalance, a few tokens' choices) and the timings. See README.md here.
#include <deepmoe/config/parameter_count.hpp>
#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/moe/moe_layer.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <omp.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace dm = deepmoe;

namespace {

struct Options {
  std::string config = "moonlight";
  std::int64_t tokens = 512;
  int decode_steps = 16;
  std::uint64_t seed = 1;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class T>
char const* dtype() {
  return dm::dtype_name<T>().data();
}

template <dm::config::ModelConfig C>
int run(char const* name, Options const& opt) {
  using A = typename C::act_t;
  using W = typename C::weight_t;
  constexpr std::int64_t H = C::hidden_size, E = C::n_routed_experts, K = C::num_experts_per_tok;
  constexpr std::int64_t M = C::moe_intermediate_size;
  constexpr std::int64_t SM = dm::config::Derived<C>::shared_intermediate_size;
  std::string const groups = C::n_group == 1
                                 ? std::string("no group limit")
                                 : std::to_string(C::n_group) + " groups, " +
                                       std::to_string(C::topk_group) + " kept per token";
  std::printf(
      "%s MoE layer: H=%lld, E=%lld experts of M=%lld, top-%lld, %d shared, %s,"
      " %s, %s, norm_topk_prob=%d, routed_scaling_factor=%g\n",
      name, (long long)H, (long long)E, (long long)M, (long long)K, C::n_shared_experts,
      groups.c_str(), dm::config::to_string(C::scoring_func).data(),
      dm::config::to_string(C::topk_method).data(), int(C::norm_topk_prob),
      C::routed_scaling_factor);
  auto const pc = dm::config::parameter_counts<C>();
  std::printf(
      "whole model: %.2fB parameters, %.2fB active per token; this layer %.2fB (%.2fB "
      "active)\n",
      pc.total * 1e-9, pc.active * 1e-9, pc.moe_total * 1e-9, pc.moe_active * 1e-9);
  std::printf("weights %s, activations %s, %d threads\n", dtype<W>(), dtype<A>(),
              omp_get_max_threads());

  auto t0 = std::chrono::steady_clock::now();
  dm::util::RandomMoe<C> const moe(opt.seed);
  std::printf("synthetic weights (seed %llu) built in %.1f s\n\n", (unsigned long long)opt.seed,
              seconds_since(t0));

  // prefill
  std::int64_t const T = opt.tokens;
  auto const u = dm::util::random_tokens<A>(opt.seed + 1, T, H);
  std::vector<A> y(u.size());
  dm::moe::MoeWorkspace<C> ws;
  auto forward = [&](std::int64_t first, std::int64_t n) {
    return dm::moe::moe_layer_forward<C, A>(
        dm::MatrixView<A, dm::kDyn, H>(y.data() + first * H, n),
        dm::MatrixView<A const, dm::kDyn, H>(u.data() + first * H, n), moe.weights, ws);
  };
  dm::Status st = forward(0, T);  // warm-up: first touch of the workspace and weights
  t0 = std::chrono::steady_clock::now();
  st = forward(0, T);
  double const prefill_s = seconds_since(t0);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  double const flop = 2.0 * T * (E * H + 3.0 * H * M * K + 3.0 * H * SM);
  std::printf("prefill  T=%lld: %.1f ms, %.0f tokens/s, %.1f GFLOP/s\n", (long long)T,
              prefill_s * 1e3, T / prefill_s, flop / prefill_s * 1e-9);

  // routing statistics of the prefill batch
  auto const load = ws.tokens_per_expert();
  std::int32_t lo = load(0), hi = load(0), unused = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    lo = std::min(lo, load(e));
    hi = std::max(hi, load(e));
    unused += load(e) == 0 ? 1 : 0;
  }
  double const mean = double(T * K) / E;
  std::printf(
      "routing: tokens per expert min %d / mean %.1f / max %d, imbalance max/mean %.2f, "
      "%d experts unused\n",
      lo, mean, hi, hi / mean, unused);
  std::printf("tokens per expert:");
  for (std::int64_t e = 0; e < E; ++e) {
    std::printf("%s%4d", e % 16 == 0 ? "\n  " : " ", load(e));
  }
  std::printf("\n");
  auto const ids = ws.topk_ids();
  auto const w = ws.topk_weights();
  if (C::norm_topk_prob) {
    std::printf(
        "first tokens: expert (combine weight) in selection order (score + bias); the "
        "weights are the unbiased scores renormalized to sum to %g\n",
        C::routed_scaling_factor);
  } else {
    std::printf(
        "first tokens: expert (combine weight) in selection order; the weights are the "
        "router scores times %g\n",
        C::routed_scaling_factor);
  }
  for (std::int64_t t = 0; t < std::min<std::int64_t>(T, 3); ++t) {
    std::printf("  token %lld ->", (long long)t);
    for (std::int64_t j = 0; j < K; ++j)
      std::printf(" %d (%.3f)", ids(t, j), w(t, j));
    std::printf("\n");
  }

  // decode: one token at a time
  std::vector<double> step_s;
  for (int s = 0; s < opt.decode_steps; ++s) {
    t0 = std::chrono::steady_clock::now();
    st = forward(s % T, 1);
    step_s.push_back(seconds_since(t0));
    if (!st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
      return 1;
    }
  }
  if (!step_s.empty()) {
    std::sort(step_s.begin(), step_s.end());
    double const med = step_s[step_s.size() / 2];
    // bytes a decode token reads: k routed + the shared experts + the gate
    double const bytes =
        double(K) * 3 * H * M * sizeof(W) + 3.0 * H * SM * sizeof(W) + double(E) * H * sizeof(A);
    std::printf("decode   T=1: median %.2f ms per token over %d steps, %.1f GB/s of weights\n",
                med * 1e3, opt.decode_steps, bytes / med * 1e-9);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"One DeepSeekMoE layer on the CPU with synthetic weights: routing and timings"};
  app.add_option("--config", opt.config, "model whose MoE layer to run")
      ->check(CLI::IsMember({"moonlight", "v2-lite", "deepseek-v3", "tiny"}))
      ->capture_default_str();
  app.add_option("--tokens", opt.tokens, "prefill batch size T")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--decode-steps", opt.decode_steps, "single-token steps to time")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "seed of the synthetic weights and inputs")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (opt.config == "moonlight")
    return run<dm::configs::Moonlight16BA3B>("Moonlight-16B-A3B", opt);
  if (opt.config == "v2-lite")
    return run<dm::configs::DeepSeekV2Lite>("DeepSeek-V2-Lite", opt);
  if (opt.config == "deepseek-v3")
    return run<dm::configs::DeepSeekV3>("DeepSeek-V3", opt);
  return run<dm::configs::TinyMoe>("TinyMoe", opt);
}
