// SPDX-License-Identifier: Apache-2.0
// bench/generate: prefill and decode throughput of a Moonlight-shaped model that fits this
// machine — Moonlight-16B-A3B's layer shapes (H 2048, 64 experts of width 1408, top-6, 2
// shared, MLA with 16 heads and no q_lora) with 2 layers (one dense, one MoE) and a 32768-token
// vocabulary, bf16 weights (random, written to a temporary folder and memory-mapped) — at batch
// 1 and 8, through the latent KV cache and the absorbed MLA form.
//
// Per case: prefill tokens/s; decode tokens/s and time per step; and the decode roofline: the
// bytes of weights one step must read (attention, dense MLP, gate, the experts the step's tokens
// were routed to, shared experts, lm_head; counted from the router) over the memory bandwidth
// measured in this run, divided by the measured time.
#include <deepmoe/config/parameter_count.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>
#include <deepmoe/generate/sampler.hpp>
#include <deepmoe/model/model.hpp>
#include <deepmoe/util/random_checkpoint.hpp>

#include "common.hpp"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

namespace dm = deepmoe;

namespace {

/// Moonlight-16B-A3B's shapes, 2 layers, vocabulary 32768 (docs/performance.md).
struct MoonlightShaped : dm::configs::Moonlight16BA3B {
  static constexpr int vocab_size = 32768;
  static constexpr int num_hidden_layers = 2;
  static constexpr int bos_token_id = 0;
  static constexpr int eos_token_id = 1;
};

using C = MoonlightShaped;
using Model = dm::model::Model<C>;
using Cache = dm::model::KvCache<C, dm::bfloat16>;

void die(dm::Status const& st) {
  std::fprintf(stderr, "%s\n", st.to_string().c_str());
  std::exit(1);
}

/// One step: every sequence s of `tokens` continues at `start[s]` in slot s; returns the last
/// position's greedy token per sequence.
std::vector<std::int32_t> step(Model& m, Cache& cache,
                               std::vector<std::vector<std::int32_t>> const& tokens,
                               std::vector<std::int64_t> const& start) {
  std::vector<std::vector<std::int64_t>> pos;
  std::vector<dm::model::Sequence> batch;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    pos.emplace_back(tokens[s].size());
    std::iota(pos.back().begin(), pos.back().end(), start[s]);
  }
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    auto const n = static_cast<std::int64_t>(tokens[s].size());
    batch.push_back({dm::VectorView<std::int32_t const>(tokens[s].data(), n),
                     dm::VectorView<std::int64_t const>(pos[s].data(), n), static_cast<int>(s)});
  }
  auto const rows = static_cast<std::int64_t>(tokens.size());
  std::vector<float> logits(static_cast<std::size_t>(rows * C::vocab_size));
  dm::Status const st =
      m.forward(batch, cache, dm::MatrixView<float>(logits.data(), rows, C::vocab_size));
  if (!st.ok()) {
    die(st);
  }
  std::vector<std::int32_t> next;
  for (std::int64_t s = 0; s < rows; ++s)
    next.push_back(dm::generate::argmax(std::span<float const>(
        logits.data() + s * C::vocab_size, static_cast<std::size_t>(C::vocab_size))));
  return next;
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t prompt = 128;
  int decode = 16;
  CLI::App app{"bench/generate: prefill and decode of a Moonlight-shaped model, batch 1 and 8"};
  app.add_option("--prompt", prompt, "prompt tokens per sequence")->capture_default_str();
  app.add_option("--decode", decode, "decode steps timed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  namespace fs = std::filesystem;
  fs::path const dir = fs::temp_directory_path() / "deepmoe_bench_generate";
  dm::Status st = dm::util::write_random_checkpoint<C>(
      dir.string(),
      {.seed = 1, .linear_dtype = dm::io::Dtype::kBF16, .act_dtype = dm::io::Dtype::kBF16});
  if (!st.ok()) {
    die(st);
  }
  Model m;
  if (!(st = Model::load(dir.string(), m)).ok()) {
    die(st);
  }
  m.set_mla_form(dm::MlaForm::kAbsorbed);
  bench::Ceilings const ceil{bench::measure_bandwidth(), bench::measure_gemm()};
  auto const pc = dm::config::parameter_counts<C>();
  std::printf(
      "model: Moonlight-16B-A3B shapes, 2 layers (1 dense, 1 MoE), vocab 32768, bf16 weights, "
      "%.2fB parameters; KV cache %lld bytes per token\nthreads %d; measured in this run: "
      "memory read bandwidth %.1f GB/s, fp32 GEMM %.1f GFLOP/s\n\n",
      pc.total * 1e-9, (long long)dm::config::kv_cache_bytes_per_token<C>(), omp_get_max_threads(),
      ceil.gbps, ceil.gflops);
  std::printf(
      "| batch | prefill tok/s | decode tok/s | ms per decode step | weight GB per step | "
      "of roofline |\n|---|---|---|---|---|---|\n");

  // bytes every step reads whatever the routing, and one expert's
  double const expert_bytes = 2.0 * double(pc.expert);
  double const fixed_bytes =
      2.0 * double(pc.total - pc.embedding - pc.routed_experts) + 2.0 * C::n_routed_experts;
  for (int batch : {1, 8}) {
    Cache cache;
    if (!(st = Cache::create(m.config(), batch, prompt + decode + 1, cache)).ok()) {
      die(st);
    }
    std::vector<std::vector<std::int32_t>> tokens(static_cast<std::size_t>(batch));
    for (int s = 0; s < batch; ++s)
      for (std::int64_t i = 0; i < prompt; ++i)
        tokens[static_cast<std::size_t>(s)].push_back(
            static_cast<std::int32_t>((i * 7919 + s * 104729) % C::vocab_size));
    std::vector<std::int64_t> start(static_cast<std::size_t>(batch), 0);
    auto t0 = bench::Clock::now();
    auto next = step(m, cache, tokens, start);
    double const prefill_s = std::chrono::duration<double>(bench::Clock::now() - t0).count();
    std::vector<double> times;
    double bytes = 0;
    for (int d = 0; d < decode; ++d) {
      for (int s = 0; s < batch; ++s) {
        tokens[static_cast<std::size_t>(s)] = {next[static_cast<std::size_t>(s)]};
        start[static_cast<std::size_t>(s)] = prompt + d;
      }
      m.reset_expert_load();
      t0 = bench::Clock::now();
      next = step(m, cache, tokens, start);
      times.push_back(std::chrono::duration<double>(bench::Clock::now() - t0).count());
      int used = 0;
      for (auto c : m.expert_load()[1])
        used += c > 0 ? 1 : 0;
      bytes += fixed_bytes + used * expert_bytes;
    }
    std::sort(times.begin(), times.end());
    double const t = times[times.size() / 2];
    double const gb = bytes / decode * 1e-9;
    std::printf("| %d | %.0f | %.1f | %.1f | %.3f | %.0f%% |\n", batch,
                double(batch * prompt) / prefill_s, batch / t, t * 1e3, gb,
                100.0 * gb / ceil.gbps / t);
    std::fflush(stdout);
  }
  fs::remove_all(dir);
  return 0;
}
