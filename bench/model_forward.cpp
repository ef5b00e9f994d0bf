// SPDX-License-Identifier: Apache-2.0
// bench/model_forward: the whole model's forward pass with a compiled config against the same
// model with the Dynamic config (sizes read from config.json at run time) — what compile-time
// specialization buys. A random 2-layer checkpoint (one dense layer, one MoE layer of
// Moonlight's routing: 64 experts, top-6, 2 shared; H = 1024, bf16 weights) is written to a
// temporary folder and loaded both ways; both compute the same bits (checked here).
//
// Per case: median time of forward() over T tokens of one sequence (logits of the last
// position), GFLOP/s over the fp32 GEMM rate measured in this run, GB/s of weight bytes touched
// over the read bandwidth measured in this run, and the Dynamic / compiled time ratio.
#include <deepmoe/config/parameter_count.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/model/model.hpp>
#include <deepmoe/util/random_checkpoint.hpp>

#include "common.hpp"

#include <CLI/CLI.hpp>

#include <bit>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

namespace dm = deepmoe;

namespace {

/// The benchmarked model: Moonlight-16B-A3B's routing (64 experts, top-6, 2 shared, sigmoid
/// with bias) at H 1024, experts of width 512, MLA with 8 heads (dn 64, dr 32, dv 64, rkv 256,
/// rq 384), 2 layers (K = 1), vocab 16384, bf16 weights.
struct BenchModel : dm::configs::Moonlight16BA3B {
  static constexpr int vocab_size = 16384;
  static constexpr int hidden_size = 1024;
  static constexpr int intermediate_size = 2816;
  static constexpr int num_hidden_layers = 2;
  static constexpr int bos_token_id = 0;
  static constexpr int eos_token_id = 1;
  static constexpr int moe_intermediate_size = 512;
  static constexpr int num_attention_heads = 8;
  static constexpr int num_key_value_heads = 8;
  static constexpr int q_lora_rank = 384;
  static constexpr int kv_lora_rank = 256;
  static constexpr int qk_nope_head_dim = 64;
  static constexpr int qk_rope_head_dim = 32;
  static constexpr int v_head_dim = 64;
};

template <class C>
std::vector<float> run(dm::model::Model<C>& m, std::vector<std::int32_t> const& tokens,
                       std::vector<std::int64_t> const& positions) {
  auto const T = static_cast<std::int64_t>(tokens.size());
  std::int64_t const V = m.config().vocab_size;
  dm::model::Sequence const seq{dm::VectorView<std::int32_t const>(tokens.data(), T),
                                dm::VectorView<std::int64_t const>(positions.data(), T)};
  std::vector<float> logits(static_cast<std::size_t>(V));
  dm::Status const st = m.forward(std::span(&seq, 1), dm::MatrixView<float>(logits.data(), 1, V));
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    std::exit(1);
  }
  return logits;
}

template <class C>
dm::model::Model<C> load(std::string const& dir) {
  dm::model::Model<C> m;
  dm::Status const st = dm::model::Model<C>::load(dir, m);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    std::exit(1);
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  double budget = 2.0;
  std::vector<std::int64_t> sizes{1, 8, 64, 256};
  CLI::App app{"bench/model_forward: compiled vs Dynamic config, whole forward pass"};
  app.add_option("--seconds", budget, "time budget per case [s]")->capture_default_str();
  app.add_option("--tokens", sizes, "sequence lengths T")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  namespace fs = std::filesystem;
  using C = BenchModel;
  using D = dm::config::Dynamic<dm::bfloat16, dm::bfloat16>;
  fs::path const dir = fs::temp_directory_path() / "deepmoe_bench_model_forward";
  dm::Status st = dm::util::write_random_checkpoint<C>(
      dir.string(),
      {.seed = 1, .linear_dtype = dm::io::Dtype::kBF16, .act_dtype = dm::io::Dtype::kBF16});
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    return 1;
  }
  auto compiled = load<C>(dir.string());
  auto dynamic = load<D>(dir.string());

  bench::Ceilings const ceil{bench::measure_bandwidth(), bench::measure_gemm()};
  auto const pc = dm::config::parameter_counts<C>();
  std::printf(
      "model: 2 layers (1 dense, 1 MoE: 64 experts, top-6, 2 shared), H 1024, bf16, %.0fM "
      "parameters (%.0fM active per token)\nthreads %d; measured in this run: memory read "
      "bandwidth %.1f GB/s, fp32 GEMM %.1f GFLOP/s (Eigen SGEMM 2048³)\n\n",
      pc.total * 1e-6, pc.active * 1e-6, omp_get_max_threads(), ceil.gbps, ceil.gflops);
  std::printf(
      "| T | compiled ms | GFLOP/s | of GEMM | GB/s | of bandwidth | Dynamic ms | Dynamic / "
      "compiled |\n|---|---|---|---|---|---|---|---|\n");
  for (std::int64_t T : sizes) {
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(T));
    for (std::int64_t i = 0; i < T; ++i)
      tokens[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % C::vocab_size);
    std::vector<std::int64_t> positions(tokens.size());
    std::iota(positions.begin(), positions.end(), 0);
    auto const a = run(compiled, tokens, positions), b = run(dynamic, tokens, positions);
    bool const same = std::equal(a.begin(), a.end(), b.begin(), [](float x, float y) {
      return std::bit_cast<std::uint32_t>(x) == std::bit_cast<std::uint32_t>(y);
    });
    if (!same) {
      std::fprintf(stderr, "compiled and Dynamic logits differ at T = %lld\n", (long long)T);
      return 1;
    }
    double const sc = bench::median_seconds([&] { run(compiled, tokens, positions); }, 3, budget);
    double const sd = bench::median_seconds([&] { run(dynamic, tokens, positions); }, 3, budget);
    // FLOPs: 2 per active weight per token (attention and FFN linears, gate), the last
    // position's head, and attention's scores and values (causal: T(T+1)/2 pairs per head)
    double const nh = C::num_attention_heads, dq = C::qk_nope_head_dim + C::qk_rope_head_dim;
    double const flop = 2.0 * T * double(pc.active_without_embedding - pc.lm_head) +
                        2.0 * double(pc.lm_head) +
                        C::num_hidden_layers * 2.0 * nh * (dq + C::v_head_dim) * T * (T + 1) / 2;
    // weight bytes touched: everything but the embedding, with each MoE expert counted when it
    // could be used (all 64 once T·k ≥ 64; fewer below): a lower bound at small T
    double const experts_used = std::min<double>(64.0, 6.0 * double(T));
    double const bytes = 2.0 * double(pc.total - pc.embedding - (64 - experts_used) * pc.expert);
    std::printf("| %4lld | %8.2f | %6.1f | %4.0f%% | %5.1f | %4.0f%% | %8.2f | %.3f |\n",
                (long long)T, sc * 1e3, flop / sc * 1e-9, 100 * flop / sc * 1e-9 / ceil.gflops,
                bytes / sc * 1e-9, 100 * bytes / sc * 1e-9 / ceil.gbps, sd * 1e3, sd / sc);
    std::fflush(stdout);
  }
  fs::remove_all(dir);
  return 0;
}
