// SPDX-License-Identifier: Apache-2.0
// bench/train_step: one training step (forward, backward, global clipping, AdamW, bias
// balancing) of configs/train_small.json — the model of the main job — in fp32 and in bf16
// mixed precision, with gradient checkpointing (each layer recomputed in the backward) and
// without (every activation kept), against the forward pass alone on the same batch (the in-run
// baseline: a step costs about 3 forwards without recomputation, 4 with it).
//
// FLOPs, counted as 2 per multiply-add of the matrix products (norms, RoPE, softmax and the
// optimizer are not counted), per token of a sequence of T tokens:
//   F_layer = 2·[q: H·rq + rq·nh·(dn+dr) | H·nh·(dn+dr)] + 2·H·(rkv+dr) + 2·rkv·nh·(dn+dv)
//           + 2·nh·dv·H + 2·nh·(dn+dr+dv)·(T+1)/2 (causal attention)
//           + 2·3·H·I (dense) | 2·(E·H + K·3·H·M + 3·H·M_shared) (MoE)
//   F_head  = 2·H·V
//   F_mtp   = 2·H·2H (eh_proj) + F_layer(MTP layer) + F_head    (configs with an MTP module)
//   model FLOPs of a step = 3·(Σ F_layer + F_head + F_mtp) (forward + backward, the usual MFU
//   count); executed FLOPs add Σ F_layer (the MTP layer's included) with recomputation.
// Precision: fp32, or bf16 mixed precision (bf16 weights and kept streams, fp32 arithmetic,
// master weights and optimizer; train/mixed_precision.hpp) — the same FLOPs.
// Activation memory ("act MiB"): the bytes model_loss kept from the forward for the backward,
// measured (LossStats::activation_bytes): the L + 1 residual streams plus one layer's
// activations per thread with recomputation, every layer's without.
#include <deepmoe/train/trainer.hpp>

#include "common.hpp"

#include <sys/resource.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace dm = deepmoe;
using Config = dm::config::Dynamic<float, float>;

namespace {

double layer_flops(Config const& c, int l, double T) {
  double const H = c.hidden_size, nh = c.num_attention_heads, dn = c.qk_nope_head_dim;
  double const dr = c.qk_rope_head_dim, dv = c.v_head_dim, rq = c.q_lora_rank;
  double const rkv = c.kv_lora_rank;
  double f = rq > 0 ? H * rq + rq * nh * (dn + dr) : H * nh * (dn + dr);
  f += H * (rkv + dr) + rkv * nh * (dn + dv) + nh * dv * H + nh * (dn + dr + dv) * (T + 1) / 2;
  if (dm::config::is_moe_layer(c, l)) {
    f += c.n_routed_experts * H + c.num_experts_per_tok * 3 * H * c.moe_intermediate_size +
         3 * H * static_cast<double>(dm::config::shared_intermediate_size(c));
  } else {
    f += 3 * H * c.intermediate_size;
  }
  return 2 * f;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench/train_step: a training step of configs/train_small.json"};
  std::string config = std::string(DEEPMOE_CONFIGS_DIR) + "/train_small.json";
  std::int64_t batch = 8;
  std::vector<std::int64_t> lens{128, 256};
  app.add_option("--config", config, "config.json")->capture_default_str();
  app.add_option("--batch", batch, "sequences per step")->capture_default_str();
  app.add_option("--seq-len", lens, "sequence lengths")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  std::optional<Config> cfg;
  if (auto st = dm::io::read_dynamic_config<float, float>(config, cfg); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    return 1;
  }
  Config const& c = *cfg;
  // text: random printable bytes, so every window is valid
  namespace fs = std::filesystem;
  fs::path const dir = fs::temp_directory_path() / "deepmoe_bench_train";
  fs::create_directories(dir);
  {
    dm::util::Rng rng(1);
    std::ofstream f(dir / "text.txt");
    for (int i = 0; i < 1 << 20; ++i)
      f << static_cast<char>(32 + rng.next() % 95);
  }
  auto const tok = dm::tokenizer::Tokenizer::byte_level();
  dm::train::TextDataset data;
  if (auto st = dm::train::TextDataset::build({{"text", {dir.string()}, {}, 1.0}}, tok,
                                              *tok.eos_id(), 0.0, 1, data);
      !st.ok()) {
    std::fprintf(stderr, "%s\n", st.to_string().c_str());
    return 1;
  }
  double const peak = bench::measure_gemm();
  std::printf(
      "train step of %s: %d layers, H %d, E %d top-%d, %d threads; fp32 GEMM peak "
      "(Eigen, this run) %.1f GFLOP/s\n\n",
      config.c_str(), c.num_hidden_layers, c.hidden_size, c.n_routed_experts, c.num_experts_per_tok,
      omp_get_max_threads(), peak);
  std::printf("%6s %6s %5s %6s | %9s %9s %9s | %10s %10s %7s | %7s | %8s\n", "batch", "T", "prec",
              "recomp", "step ms", "fwd ms", "step/fwd", "tokens/s", "model GF/s", "of peak",
              "exec%", "act MiB");
  using Precision = dm::train::Precision;
  for (std::int64_t T : lens) {
    // the forward alone over one batch of the shape
    std::vector<std::vector<std::int32_t>> w(static_cast<std::size_t>(batch));
    std::vector<dm::train::Example> ex;
    for (std::int64_t b = 0; b < batch; ++b) {
      std::size_t src = 0;
      auto& row = w[static_cast<std::size_t>(b)];
      (void)data.window(0, b, T, row, src);
      ex.push_back({dm::VectorView<std::int32_t const>(row.data(), T),
                    dm::VectorView<std::int32_t const>(row.data() + 1, T)});
    }
    double fl = 0;
    for (int l = 0; l < c.num_hidden_layers; ++l)
      fl += layer_flops(c, l, static_cast<double>(T));
    double head = 2.0 * c.hidden_size * c.vocab_size, mtp = 0, mtp_layer = 0;
    if (c.num_nextn_predict_layers > 0) {
      mtp_layer = layer_flops(c, c.num_hidden_layers, static_cast<double>(T));
      mtp = 2.0 * c.hidden_size * 2 * c.hidden_size + mtp_layer + head;
    }
    double const N = static_cast<double>(batch * T);
    double const model_flops = 3 * (fl + head + mtp) * N;
    for (Precision const prec : {Precision::kFp32, Precision::kBf16})
      for (bool const recompute : {true, false}) {
        bool const bf16 = prec == Precision::kBf16;
        dm::train::Parameters<Config> p;
        if (auto st = dm::train::Parameters<Config>::init(
                {.seed = 1, .mtp = c.num_nextn_predict_layers > 0}, p, c);
            !st.ok()) {
          std::fprintf(stderr, "%s\n", st.to_string().c_str());
          return 1;
        }
        dm::train::TrainOptions o;
        o.batch_size = batch;
        o.seq_len = T;
        o.precision = prec;
        o.recompute = recompute;
        dm::train::Trainer<Config> t;
        if (auto st = dm::train::Trainer<Config>::create(std::move(p), o, t); !st.ok()) {
          std::fprintf(stderr, "%s\n", st.to_string().c_str());
          return 1;
        }
        dm::train::StepReport r;
        dm::Status failed;
        double const step = bench::median_seconds(
            [&] {
              if (dm::Status st = t.step(data, r); !st.ok())
                failed = st;
            },
            3, 4.0);
        if (!failed.ok()) {
          std::fprintf(stderr, "%s\n", failed.to_string().c_str());
          return 1;
        }
        dm::train::LossStats ls;
        dm::train::LossOptions const lo{.mtp_lambda = o.mtp_lambda};
        double fwd = 0;
        if (bf16) {
          using B = dm::train::Bf16Weights<Config>;
          B bw;
          (void)B::create(t.parameters(), bw);
          dm::train::LossScratch<B::Compute> s(bw.config());
          fwd = bench::median_seconds(
              [&] {
                (void)dm::train::model_loss<B::Compute>(ls, ex, bw.weights(), s, nullptr, lo);
              },
              3, 2.0);
        } else {
          dm::train::LossScratch<Config> s(c);
          fwd = bench::median_seconds(
              [&] {
                (void)dm::train::model_loss<Config>(ls, ex, t.parameters().weights(), s, nullptr,
                                                    lo);
              },
              3, 2.0);
        }
        double const exec_flops = model_flops + (recompute ? (fl + mtp_layer) * N : 0.0);
        std::printf(
            "%6lld %6lld %5s %6s | %9.1f %9.1f %9.2f | %10.0f %10.2f %6.1f%% | %6.1f%% | %8.1f\n",
            static_cast<long long>(batch), static_cast<long long>(T), bf16 ? "bf16" : "fp32",
            recompute ? "yes" : "no", step * 1e3, fwd * 1e3, step / fwd, N / step,
            model_flops / step * 1e-9, 100 * model_flops / step * 1e-9 / peak,
            100 * exec_flops / step * 1e-9 / peak,
            static_cast<double>(r.activation_bytes) / (1 << 20));
      }
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\npeak memory (whole process) %.1f MiB\n", static_cast<double>(ru.ru_maxrss) / 1024);
  fs::remove_all(dir);
  return 0;
}
