// SPDX-License-Identifier: Apache-2.0
// Logits of a Hugging Face DeepSeek-V3-family checkpoint for given token ids, on the CPU.
// Runs the compiled config that matches the checkpoint's config.json (the presets, and the
// configs CMake generated with deepmoe_add_model_config), or else the Dynamic config; prints
// the top-5 next tokens of each sequence and can dump every position's logits to safetensors.
// See README.md here.
#include <deepmoe/io/safetensors.hpp>
#include <deepmoe/model/model.hpp>

#include "../common/select_config.hpp"

#include <omp.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace dm = deepmoe;

namespace {

struct Options {
  std::string model;
  std::vector<std::string> tokens;
  std::int64_t start = 0;
  std::string dump;
  std::string precision = "auto";
  std::string mla = "naive";
  bool dynamic = false;
};

double mib(std::int64_t bytes) {
  return static_cast<double>(bytes) / (1 << 20);
}

template <dm::config::ModelConfig C>
int run(std::string const& label, Options const& opt,
        std::vector<std::vector<std::int32_t>> const& tokens) {
  namespace model = dm::model;
  // positions start + i; the plan before loading
  std::vector<std::vector<std::int64_t>> positions;
  std::int64_t total = 0, longest = 0;
  for (auto const& t : tokens) {
    positions.emplace_back(t.size());
    std::iota(positions.back().begin(), positions.back().end(), opt.start);
    total += static_cast<std::int64_t>(t.size());
    longest = std::max(longest, static_cast<std::int64_t>(t.size()));
  }
  std::printf("config: %s, %s weights\n", label.c_str(), examples::precision_of<C>().c_str());
  // the config (read from config.json for a Dynamic one) and the memory plan, before loading
  std::optional<C> config;
  dm::Status st = examples::config_of<C>(opt.model, config);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  C const& cfg = *config;
  auto const plan = model::memory_plan<C>(total, longest, cfg);
  std::printf(
      "model: %d layers (%d dense), H %d, %d experts (top-%d, %d shared), %d heads, "
      "vocab %d%s\n",
      cfg.num_hidden_layers, cfg.num_hidden_layers - dm::config::num_moe_layers(cfg),
      cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts,
      cfg.num_attention_heads, cfg.vocab_size,
      cfg.num_nextn_predict_layers > 0 ? ", MTP module" : "");
  std::printf(
      "memory plan: weights %.1f MiB (+ MTP %.1f MiB), activations %.1f MiB for %lld "
      "tokens\n",
      mib(plan.weights), mib(plan.mtp_weights), mib(plan.activations),
      static_cast<long long>(total));
  std::fflush(stdout);
  auto const t0 = std::chrono::steady_clock::now();
  model::Model<C> m;
  st = model::Model<C>::load(opt.model, m);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  double const load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("loaded in %.2f s: %.1f MiB converted to %s, the rest mapped in place\n", load_s,
              mib(static_cast<std::int64_t>(m.converted_bytes())),
              examples::precision_of<C>().c_str());
  m.set_mla_form(opt.mla == "absorbed" ? dm::MlaForm::kAbsorbed : dm::MlaForm::kNaive);

  std::vector<model::Sequence> batch;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    auto const n = static_cast<std::int64_t>(tokens[s].size());
    batch.push_back({dm::VectorView<std::int32_t const>(tokens[s].data(), n),
                     dm::VectorView<std::int64_t const>(positions[s].data(), n)});
  }
  std::int64_t const V = cfg.vocab_size;
  std::vector<float> logits(static_cast<std::size_t>(total * V));
  auto const t1 = std::chrono::steady_clock::now();
  st = m.forward(batch, dm::MatrixView<float>(logits.data(), total, V), model::LogitsRows::kAll);
  double const fwd_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  std::printf("forward: %lld tokens in %.3f s (%d threads)\n\n", static_cast<long long>(total),
              fwd_s, omp_get_max_threads());

  std::int64_t row = 0;
  std::vector<dm::io::TensorToWrite> dump;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    auto const T = static_cast<std::int64_t>(tokens[s].size());
    float const* last = logits.data() + (row + T - 1) * V;
    // softmax over the vocabulary in double, then the 5 most likely next tokens
    float const mx = *std::max_element(last, last + V);
    double z = 0;
    for (std::int64_t v = 0; v < V; ++v)
      z += std::exp(double{last[v]} - mx);
    std::vector<std::int32_t> order(static_cast<std::size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + std::min<std::int64_t>(5, V), order.end(),
                      [&](std::int32_t a, std::int32_t b) {
                        return last[a] > last[b] || (last[a] == last[b] && a < b);
                      });
    std::printf("sequence %zu (%lld tokens, positions %lld..%lld): next token\n", s,
                static_cast<long long>(T), static_cast<long long>(opt.start),
                static_cast<long long>(opt.start + T - 1));
    for (std::int64_t i = 0; i < std::min<std::int64_t>(5, V); ++i) {
      std::int32_t const v = order[static_cast<std::size_t>(i)];
      std::printf("  %8d  p = %.4f  (logit %.4f)\n", v, std::exp(double{last[v]} - mx) / z,
                  last[v]);
    }
    dump.push_back(
        {"logits_" + std::to_string(s),
         dm::io::Dtype::kF32,
         {T, V},
         std::as_bytes(std::span(logits.data() + row * V, static_cast<std::size_t>(T * V)))});
    row += T;
  }
  if (!opt.dump.empty()) {
    st = dm::io::write_safetensors(opt.dump, dump);
    if (!st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
      return 1;
    }
    std::printf("\nwrote %zu logits tensors [T, %lld] float32 to %s\n", dump.size(),
                static_cast<long long>(V), opt.dump.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Logits of a DeepSeek-V3-family Hugging Face checkpoint for given token ids"};
  Options opt;
  app.add_option("--model", opt.model, "checkpoint directory (config.json + safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--tokens", opt.tokens,
                 "token ids of one sequence, comma-separated; repeat for a batch")
      ->required()
      ->allow_extra_args(false);
  app.add_option("--start", opt.start, "position of each sequence's first token")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dump-logits", opt.dump,
                 "write logits_<i> [T, vocab] float32 per sequence to this safetensors file");
  app.add_option("--precision", opt.precision,
                 "weight precision: auto (the checkpoint's), fp32, bf16, fp8")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp8"}));
  app.add_option("--mla", opt.mla, "MLA form: naive or absorbed")
      ->check(CLI::IsMember({"naive", "absorbed"}));
  app.add_flag("--dynamic", opt.dynamic, "use the Dynamic config even if a compiled one matches");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::vector<std::int32_t>> tokens;
  for (std::string const& list : opt.tokens) {
    std::vector<std::int32_t> seq;
    std::size_t pos = 0;
    while (pos <= list.size()) {
      std::size_t const comma = std::min(list.find(',', pos), list.size());
      std::string const item = list.substr(pos, comma - pos);
      char* end = nullptr;
      long const v = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || v < 0 || v > INT32_MAX) {
        std::fprintf(stderr, "error: --tokens '%s': '%s' is not a token id\n", list.c_str(),
                     item.c_str());
        return 2;
      }
      seq.push_back(static_cast<std::int32_t>(v));
      pos = comma + 1;
    }
    tokens.push_back(std::move(seq));
  }

  nlohmann::json j;
  dm::Status const st =
      dm::io::read_json_file((std::filesystem::path(opt.model) / "config.json").string(), j);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  std::printf("checkpoint: %s (model_type %s)\n", opt.model.c_str(),
              j.value("model_type", std::string("?")).c_str());
  return examples::with_config(j, opt.precision, opt.dynamic,
                               [&]<class C>(std::type_identity<C>, std::string const& label) {
                                 return run<C>(label, opt, tokens);
                               });
}
