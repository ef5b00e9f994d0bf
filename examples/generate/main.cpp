// SPDX-License-Identifier: Apache-2.0
// deepmoe-generate: text generation from a Hugging Face DeepSeek-V3-family checkpoint on the
// CPU — tokenizer.json, batched generation with continuous batching through the latent KV
// cache, sampling, optional MTP speculative decoding; streams the text and reports prefill and
// decode speed, time to first token, peak memory and the experts' load. See README.md here.
#include <deepmoe/generate/generator.hpp>
#include <deepmoe/tokenizer/stream_decoder.hpp>
#include <deepmoe/tokenizer/tokenizer.hpp>

#include "../common/select_config.hpp"

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <string>
#include <vector>

namespace dm = deepmoe;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model, tokenizer, prompt_file, precision = "auto", speculative = "none";
  std::vector<std::string> prompts, stop;
  int max_new_tokens = 128, max_batch = 8, threads = 0;
  std::int64_t prefill_chunk = 512;
  double temperature = 0.0, top_p = 1.0;
  int top_k = 0;
  std::uint64_t seed = 0;
  bool no_bos = false, byte_tokenizer = false, dynamic = false;
};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// "12.3 MiB" / "1.25 GiB".
std::string human(double bytes) {
  char buf[32];
  if (bytes >= 1 << 30) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1 << 30));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1 << 20));
  }
  return buf;
}

template <class C>
int run(std::string const& label, Options const& opt, dm::tokenizer::Tokenizer const& tok,
        std::vector<std::string> const& prompts) {
  namespace model = dm::model;
  namespace gen = dm::generate;
  std::printf("config: %s, %s weights\n", label.c_str(), examples::precision_of<C>().c_str());
  if (dm::config::is_dynamic_v<C>) {
    std::printf(
        "  (to compile a specialized one: add %s/config.json to the CMake list "
        "DEEPMOE_GENERATE_CONFIGS and rebuild deepmoe-generate)\n",
        fs::absolute(opt.model).c_str());
  }
  std::optional<C> cfg;
  dm::Status st = examples::config_of<C>(opt.model, cfg);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  // prompts → token ids (BOS first, as transformers does for DeepSeek's tokenizer)
  std::vector<std::vector<std::int32_t>> ids(prompts.size());
  std::int64_t longest = 0, total = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    if (!(st = tok.encode(prompts[i], ids[i])).ok()) {
      std::fprintf(stderr, "error: prompt %zu: %s\n", i, st.to_string().c_str());
      return 1;
    }
    if (!opt.no_bos && !opt.byte_tokenizer) {
      ids[i].insert(ids[i].begin(), tok.bos_id().value_or(cfg->bos_token_id));
    }
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(ids[i].size()));
    total += static_cast<std::int64_t>(ids[i].size());
  }
  std::int64_t const max_sequence = longest + opt.max_new_tokens + 1;
  int const batch = std::min<int>(opt.max_batch, static_cast<int>(prompts.size()));
  auto const plan = model::memory_plan<C>(batch * std::min(opt.prefill_chunk, longest),
                                          std::min(opt.prefill_chunk, longest), *cfg);
  std::printf(
      "memory plan: weights %s (+ MTP %s), activations %s, KV cache %s (%lld bytes per "
      "token)\n",
      human(double(plan.weights)).c_str(), human(double(plan.mtp_weights)).c_str(),
      human(double(plan.activations)).c_str(),
      human(double(dm::config::kv_cache_bytes_per_token<C>(*cfg)) * batch * max_sequence).c_str(),
      static_cast<long long>(dm::config::kv_cache_bytes_per_token<C>(*cfg)));

  // load with a progress bar (the pages are read now, not at the first token)
  auto const t_load = Clock::now();
  model::Model<C> m;
  int shown = -1;
  bool const tty = isatty(fileno(stderr)) != 0;
  model::LoadOptions lo{.mtp = opt.speculative == "mtp",
                        .prefetch = true,
                        .progress = [&](std::int64_t done, std::int64_t all) {
                          int const pct = all > 0 ? static_cast<int>(100 * done / all) : 100;
                          if (tty && pct != shown) {
                            shown = pct;
                            std::fprintf(stderr, "\rloading [%-40.*s] %3d%%", pct * 40 / 100,
                                         "########################################", pct);
                          }
                        }};
  st = model::Model<C>::load(opt.model, m, lo);
  if (tty) {
    std::fprintf(stderr, "\n");
  }
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  std::printf("loaded in %.1f s\n\n", since(t_load));
  m.set_mla_form(dm::MlaForm::kAbsorbed);

  gen::Generator<C> g;
  st = gen::Generator<C>::create(m,
                                 {.max_batch = batch,
                                  .max_sequence = max_sequence,
                                  .prefill_chunk = opt.prefill_chunk,
                                  .speculative_mtp = opt.speculative == "mtp"},
                                 g);
  if (!st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  std::vector<std::int32_t> stop_ids{cfg->eos_token_id};
  if (auto e = tok.eos_id(); e && *e != cfg->eos_token_id) {
    stop_ids.push_back(*e);
  }
  std::map<int, std::size_t> index;  // request id → prompt index
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    int id = -1;
    st = g.add({ids[i],
                {.temperature = opt.temperature,
                 .top_k = opt.top_k,
                 .top_p = opt.top_p,
                 .seed = opt.seed + i},
                opt.max_new_tokens,
                stop_ids},
               id);
    if (!st.ok()) {
      std::fprintf(stderr, "error: prompt %zu: %s\n", i, st.to_string().c_str());
      return 1;
    }
    index[id] = i;
  }

  // generate: one prompt streams its text; several print each text when it ends
  bool const stream = prompts.size() == 1;
  std::vector<dm::tokenizer::StreamDecoder> decoders;
  std::vector<std::string> text(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i)
    decoders.emplace_back(tok, true);
  if (stream) {
    std::printf("%s", prompts[0].c_str());
    std::fflush(stdout);
  }
  auto const t0 = Clock::now();
  double ttft = -1;
  std::size_t printed = 0;  // streamed bytes of text[0]
  std::vector<bool> finished(prompts.size(), false);
  std::int64_t first_tokens = 0;
  while (!g.done()) {
    std::vector<gen::Event> events;
    if (!(st = g.step(events)).ok()) {
      std::fprintf(stderr, "\nerror: %s\n", st.to_string().c_str());
      return 1;
    }
    for (auto const& e : events) {
      std::size_t const i = index.at(e.request);
      if (finished[i]) {
        continue;  // a stop string ended it earlier in this step
      }
      if (ttft < 0) {
        ttft = since(t0);
      }
      if (text[i].empty()) {
        ++first_tokens;
      }
      std::string piece;
      if (!decoders[i].feed(e.token, piece).ok()) {
        continue;
      }
      if (e.finished != gen::FinishReason::kNone) {
        piece += decoders[i].flush();
      }
      text[i] += piece;
      bool ended = e.finished != gen::FinishReason::kNone;
      for (std::string const& s : opt.stop) {  // a stop string ends the text before it
        if (auto at = text[i].find(s); !s.empty() && at != std::string::npos) {
          text[i].resize(at);
          if (!ended) {
            g.cancel(e.request);
          }
          ended = true;
        }
      }
      finished[i] = ended;
      if (stream) {
        // hold back a tail that may still become a stop string
        std::size_t hold = 0;
        if (!ended) {
          for (std::string const& s : opt.stop)
            for (std::size_t k = std::min(s.empty() ? 0 : s.size() - 1, text[i].size()); k > hold;
                 --k)
              if (text[i].compare(text[i].size() - k, k, s, 0, k) == 0) {
                hold = k;
                break;
              }
        }
        std::size_t const upto = text[i].size() - hold;
        if (upto > printed) {
          std::printf("%s", text[i].substr(printed, upto - printed).c_str());
          std::fflush(stdout);
          printed = upto;
        }
      } else if (ended) {
        std::printf("--- [%zu] %s%s\n", i, prompts[i].c_str(), text[i].c_str());
      }
    }
  }
  double const total_s = since(t0);
  auto const& stats = g.stats();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\n\n%lld prompt tokens, %lld generated, %d sequences, %d threads\n",
              static_cast<long long>(stats.prefill_tokens),
              static_cast<long long>(stats.generated_tokens), static_cast<int>(prompts.size()),
              omp_get_max_threads());
  std::printf("time to first token %.3f s; prefill %.1f tokens/s; decode %.1f tokens/s\n", ttft,
              ttft > 0 ? stats.prefill_tokens / ttft : 0.0,
              total_s > ttft ? (stats.generated_tokens - first_tokens) / (total_s - ttft) : 0.0);
  if (opt.speculative == "mtp" && stats.drafted > 0) {
    std::printf("MTP speculation: %lld of %lld drafts accepted (%.0f%%)\n",
                static_cast<long long>(stats.accepted), static_cast<long long>(stats.drafted),
                100.0 * stats.accepted / stats.drafted);
  }
  std::printf("peak memory %.1f MiB\n", ru.ru_maxrss / 1024.0);
  std::printf("expert load (max/mean tokens per expert):");
  for (std::size_t l = 0; l < m.expert_load().size(); ++l) {
    auto const& load = m.expert_load()[l];
    if (load.empty()) {
      continue;
    }
    std::int64_t const sum = std::accumulate(load.begin(), load.end(), std::int64_t{0});
    std::int64_t const mx = *std::max_element(load.begin(), load.end());
    std::printf(" L%zu %.2f", l, sum > 0 ? double(mx) * double(load.size()) / double(sum) : 0.0);
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"deepmoe-generate: text from a DeepSeek-V3-family Hugging Face checkpoint"};
  Options opt;
  app.add_option("--model", opt.model,
                 "checkpoint directory (config.json, tokenizer.json, "
                 "safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--prompt", opt.prompts, "a prompt (quote it); repeat for a batch")
      ->allow_extra_args(false);
  app.add_option("--prompt-file", opt.prompt_file, "one prompt per line (a batch)")
      ->check(CLI::ExistingFile);
  app.add_option("--tokenizer", opt.tokenizer, "tokenizer.json (default: MODEL/tokenizer.json)");
  app.add_flag("--byte-tokenizer", opt.byte_tokenizer,
               "bytes as tokens 0-255, no BOS (models trained without a tokenizer.json)");
  app.add_option("--max-new-tokens", opt.max_new_tokens)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--temperature", opt.temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", opt.top_k, "0 = off")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", opt.top_p, "in (0, 1]")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  app.add_option("--seed", opt.seed, "sequence i uses seed + i")->capture_default_str();
  app.add_option("--stop", opt.stop, "stop string (repeatable); the text ends before it")
      ->allow_extra_args(false);
  app.add_flag("--no-bos", opt.no_bos, "do not prepend the BOS token");
  app.add_option("--speculative", opt.speculative, "mtp: draft with the MTP module and verify")
      ->check(CLI::IsMember({"none", "mtp"}));
  app.add_option("--threads", opt.threads, "OpenMP threads (default: all)");
  app.add_option("--max-batch", opt.max_batch, "sequences at once")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--prefill-chunk", opt.prefill_chunk, "prompt tokens per sequence per step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--precision", opt.precision, "weights: auto (the checkpoint's), fp32, bf16, fp8")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp8"}));
  app.add_flag("--dynamic", opt.dynamic, "use the Dynamic config even if a compiled one matches");
  CLI11_PARSE(app, argc, argv);
  if (opt.threads > 0) {
    omp_set_num_threads(opt.threads);
  }

  std::vector<std::string> prompts = opt.prompts;
  if (!opt.prompt_file.empty()) {
    std::ifstream in(opt.prompt_file);
    for (std::string line; std::getline(in, line);)
      if (!line.empty())
        prompts.push_back(line);
  }
  if (prompts.empty()) {
    std::fprintf(stderr, "error: no prompt (--prompt TEXT or --prompt-file FILE)\n");
    return 2;
  }
  dm::tokenizer::Tokenizer tok;
  if (opt.byte_tokenizer) {
    tok = dm::tokenizer::Tokenizer::byte_level();
  } else {
    std::string const path =
        opt.tokenizer.empty() ? (fs::path(opt.model) / "tokenizer.json").string() : opt.tokenizer;
    if (dm::Status const st = dm::tokenizer::Tokenizer::load(path, tok); !st.ok()) {
      std::fprintf(stderr, "error: %s\n  HINT: --tokenizer FILE, or --byte-tokenizer\n",
                   st.to_string().c_str());
      return 1;
    }
  }
  nlohmann::json j;
  if (dm::Status const st =
          dm::io::read_json_file((fs::path(opt.model) / "config.json").string(), j);
      !st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
    return 1;
  }
  return examples::with_config(j, opt.precision, opt.dynamic,
                               [&]<class C>(std::type_identity<C>, std::string const& label) {
                                 return run<C>(label, opt, tok, prompts);
                               });
}
