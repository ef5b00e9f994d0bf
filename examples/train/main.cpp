// SPDX-License-Identifier: Apache-2.0
// deepmoe-train: trains a DeepSeek-V3-architecture model on text files on the CPU — weighted
// sources, byte-level or tokenizer.json tokens, AdamW with warmup + cosine decay, aux-loss-free
// expert balancing, validation against the unigram baseline, atomic checkpoints with exact
// --resume, JSON-lines metrics, a per-source expert-activation report, and a generated sample
// at the end. See README.md here and docs/training.md.
#include <deepmoe/generate/generator.hpp>
#include <deepmoe/tokenizer/stream_decoder.hpp>
#include <deepmoe/train/trainer.hpp>

#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace dm = deepmoe;
namespace fs = std::filesystem;
using Config = dm::config::Dynamic<float, float>;

namespace {

std::atomic<bool> g_interrupted{false};

struct Options {
  std::vector<std::string> sources, stages;
  std::string config = "tiny", tokenizer, out = "deepmoe-run", init_from, prompt = "The ";
  std::string precision = "fp32";
  std::int64_t steps = 1000, batch = 8, seq_len = 128, warmup = 50, ramp_from = 0, ramp_steps = 0;
  std::int64_t save_every = 200, eval_every = 100, eval_windows = 16, sample_tokens = 200;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, clip = 1.0, gamma = 0.001, init_std = 0.02;
  double alpha = 1e-4, lambda = 0.3;
  double validation = 0.05, temperature = 0.8;
  std::uint64_t seed = 1;
  int threads = 0;
  bool resume = false;
  bool keep_activations = false;
};

/// The whole of `text` as a number (std::stod/stoll accept trailing junk; this does not).
double number(std::string const& text) {
  std::size_t used = 0;
  double const v = std::stod(text, &used);
  if (used != text.size()) {
    throw std::invalid_argument(text);
  }
  return v;
}

/// "NAME:WEIGHT:PATH[,PATH...][:GLOB[,GLOB...]]" → Source.
std::optional<dm::train::Source> parse_source(std::string const& spec, std::string& error) {
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');)
    parts.push_back(p);
  auto split = [](std::string const& s) {
    std::vector<std::string> v;
    std::stringstream in(s);
    for (std::string p; std::getline(in, p, ',');)
      if (!p.empty()) {
        v.push_back(p);
      }
    return v;
  };
  dm::train::Source s;
  if (parts.size() < 3 || parts.size() > 4 || parts[0].empty()) {
    error = "--source '" + spec + "': expected NAME:WEIGHT:PATH[,PATH...][:GLOB[,GLOB...]]";
    return std::nullopt;
  }
  s.name = parts[0];
  try {
    s.weight = number(parts[1]);
  } catch (...) {
    error = "--source '" + spec + "': weight '" + parts[1] + "' is not a number";
    return std::nullopt;
  }
  s.paths = split(parts[2]);
  if (parts.size() == 4) {
    s.include = split(parts[3]);
  }
  return s;
}

/// "START:LR_SCALE[:SEQ_LEN[:W1,W2,...]]" → Stage (SEQ_LEN 0 or absent: --seq-len).
std::optional<dm::train::Stage> parse_stage(std::string const& spec, std::string& error) {
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');)
    parts.push_back(p);
  dm::train::Stage st;
  try {
    if (parts.size() < 2 || parts.size() > 4) {
      throw std::invalid_argument("parts");
    }
    st.start = static_cast<std::int64_t>(number(parts[0]));
    st.lr_scale = number(parts[1]);
    if (parts.size() >= 3 && !parts[2].empty()) {
      st.seq_len = static_cast<std::int64_t>(number(parts[2]));
    }
    if (parts.size() == 4) {
      std::stringstream ws(parts[3]);
      for (std::string w; std::getline(ws, w, ',');)
        st.weights.push_back(number(w));
    }
  } catch (...) {
    error = "--stage '" + spec + "': expected START:LR_SCALE[:SEQ_LEN[:W1,W2,...]] (numbers)";
    return std::nullopt;
  }
  return st;
}

std::string config_path(std::string const& name) {
  if (name == "tiny" || name == "small") {
    return std::string(DEEPMOE_CONFIGS_DIR) + "/train_" + name + ".json";
  }
  return name;
}

std::string clock(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return buf;
}

// Keeps the lines of `path` whose "step" (steps completed when written) is at most `step`, the
// resumed checkpoint's: the resumed run writes the rest again. Rewritten atomically.
dm::Status truncate_metrics(std::string const& path, std::int64_t step) {
  std::ifstream in(path);
  if (!in) {
    return {};
  }
  std::string kept, line;
  while (std::getline(in, line)) {
    auto const j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", std::int64_t{0}) <= step) {
      kept += line + "\n";
    }
  }
  std::span<std::byte const> const piece[] = {std::as_bytes(std::span(kept))};
  return dm::io::write_file_atomic(path, piece);
}

int fail(dm::Status const& st) {
  std::fprintf(stderr, "\nerror: %s\n", st.to_string().c_str());
  return 1;
}

int run(Options const& opt) {
  if (opt.threads > 0) {
    omp_set_num_threads(opt.threads);
  }
  std::vector<dm::train::Source> sources;
  for (std::string const& spec : opt.sources) {
    std::string error;
    auto s = parse_source(spec, error);
    if (!s) {
      std::fprintf(stderr, "error: %s\n", error.c_str());
      return 2;
    }
    for (auto const& other : sources)
      if (other.name == s->name) {
        std::fprintf(stderr, "error: --source '%s': the name is used twice\n", spec.c_str());
        return 2;
      }
    sources.push_back(*s);
  }
  std::vector<dm::train::Stage> stages;
  for (std::string const& spec : opt.stages) {
    std::string error;
    auto st = parse_stage(spec, error);
    if (!st) {
      std::fprintf(stderr, "error: %s\n", error.c_str());
      return 2;
    }
    stages.push_back(*st);
  }
  // the tokenizer
  dm::tokenizer::Tokenizer tok = dm::tokenizer::Tokenizer::byte_level();
  if (!opt.tokenizer.empty()) {
    if (auto st = dm::tokenizer::Tokenizer::load(opt.tokenizer, tok); !st.ok()) {
      return fail(st);
    }
  }
  // the config: the checkpoint's when resuming or fine-tuning
  fs::path const out = opt.out;
  std::string const latest = dm::train::Trainer<Config>::latest_checkpoint(out.string());
  bool const resuming = opt.resume && !latest.empty();
  if (opt.resume && latest.empty()) {
    std::printf("--resume: no checkpoint in %s, starting a new run\n", out.c_str());
  }
  if (!opt.resume && !latest.empty()) {
    return fail(dm::invalid_argument(out.string() + " holds a run (" + latest +
                                     ") — HINT: --resume to continue it, or another --out"));
  }
  if (resuming || !opt.init_from.empty()) {
    std::printf("config: %s's (--config is not used)\n",
                resuming ? latest.c_str() : opt.init_from.c_str());
  }
  std::string const cfg_file = resuming ? (fs::path(latest) / "config.json").string()
                               : !opt.init_from.empty()
                                   ? (fs::path(opt.init_from) / "config.json").string()
                                   : config_path(opt.config);
  std::optional<Config> cfg;
  if (auto st = dm::io::read_dynamic_config<float, float>(cfg_file, cfg); !st.ok()) {
    return fail(st);
  }
  auto const eos = tok.eos_id();
  if (!eos) {
    return fail(dm::invalid_argument("the tokenizer has no EOS token to join documents with"));
  }
  std::int64_t const V = cfg->vocab_size;
  if (*eos >= V || tok.vocab_size() > V) {
    return fail(dm::invalid_argument(cfg_file + ": vocab_size " + std::to_string(V) +
                                     " does not cover the tokenizer's " +
                                     std::to_string(tok.vocab_size()) +
                                     " ids — HINT: a config whose vocab_size fits the "
                                     "tokenizer"));
  }
  // the data
  auto const t_data = std::chrono::steady_clock::now();
  dm::train::TextDataset data;
  if (auto st = dm::train::TextDataset::build(sources, tok, *eos, opt.validation, opt.seed, data);
      !st.ok()) {
    return fail(st);
  }
  // everything that decides the batches and the updates: a resume compares it
  nlohmann::json const run_desc = {
      {"tokenizer", opt.tokenizer.empty() ? "byte-level" : opt.tokenizer},
      {"seed", opt.seed},
      {"validation", opt.validation},
      {"sources", opt.sources},
      {"stages", opt.stages},
      {"seq_len", opt.seq_len},
      {"batch", opt.batch},
      {"batch_ramp", {opt.ramp_from, opt.ramp_steps}},
      {"steps", opt.steps},
      {"lr", {opt.lr, opt.min_lr, opt.warmup}},
      {"weight_decay", opt.weight_decay},
      {"clip", opt.clip},
      {"bias_update_speed", opt.gamma},
      {"balance_alpha", opt.alpha},
      {"mtp_lambda", opt.lambda},
      {"precision", opt.precision}};  // (not --keep-activations: the same bits either way)
  std::printf("data (%.1f s):\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_data).count());
  for (std::size_t i = 0; i < data.sources(); ++i) {
    std::printf(
        "  %-8s weight %-5g %6lld train docs %10zu tokens | %5lld validation docs %9zu "
        "tokens (unigram baseline %.3f nats)\n",
        data.name(i).c_str(), sources[i].weight, static_cast<long long>(data.documents(i)),
        data.tokens(i).size(), static_cast<long long>(data.documents(i, true)),
        data.tokens(i, true).size(), data.unigram_baseline(i, V));
  }

  // every window the run will draw must fit in every source it can come from
  for (std::size_t i = 0; i < data.sources(); ++i) {
    std::int64_t longest = opt.seq_len;
    for (auto const& st : stages)
      longest = std::max(longest, st.seq_len);
    if (static_cast<std::int64_t>(data.tokens(i).size()) < longest + 1) {
      return fail(dm::invalid_argument(
          "source '" + data.name(i) + "': " + std::to_string(data.tokens(i).size()) +
          " training tokens cannot fill a sequence of " + std::to_string(longest + 1) +
          " — HINT: more text, or a shorter --seq-len"));
    }
  }
  for (auto const& st : stages)
    if (!st.weights.empty() && st.weights.size() != data.sources()) {
      return fail(dm::invalid_argument("--stage at step " + std::to_string(st.start) + ": " +
                                       std::to_string(st.weights.size()) + " weights for " +
                                       std::to_string(data.sources()) + " sources"));
    }
  dm::train::TrainOptions to;
  to.batch_size = opt.batch;
  to.batch_ramp_start = opt.ramp_from;
  to.batch_ramp_steps = opt.ramp_steps;
  to.seq_len = opt.seq_len;
  to.lr = {.peak = opt.lr,
           .final = opt.min_lr,
           .warmup = opt.warmup,
           .decay_start = opt.warmup,
           .decay_steps = std::max<std::int64_t>(1, opt.steps - opt.warmup)};
  to.adamw.weight_decay = opt.weight_decay;
  to.clip = opt.clip;
  to.bias_update_speed = opt.gamma;
  to.balance_alpha = opt.alpha;
  to.mtp_lambda = opt.lambda;
  to.recompute = !opt.keep_activations;
  to.precision =
      opt.precision == "bf16" ? dm::train::Precision::kBf16 : dm::train::Precision::kFp32;
  to.stages = stages;

  dm::train::Trainer<Config> trainer;
  if (resuming) {
    nlohmann::json saved;
    if (auto st = dm::train::Trainer<Config>::resume(out.string(), to, trainer, saved, *cfg);
        !st.ok()) {
      return fail(st);
    }
    if (saved != run_desc) {
      std::printf(
          "warning: the run was saved with other data or options:\n  saved: %s\n  now:   "
          "%s\n  the batches after the resume differ from the original run's\n",
          saved.dump().c_str(), run_desc.dump().c_str());
    }
    std::printf("resumed %s at step %lld\n", latest.c_str(),
                static_cast<long long>(trainer.steps()));
  } else {
    bool const mtp = cfg->num_nextn_predict_layers > 0;
    dm::train::Parameters<Config> p;
    auto const st = opt.init_from.empty()
                        ? dm::train::Parameters<Config>::init(
                              {.seed = opt.seed, .std_dev = opt.init_std, .mtp = mtp}, p, *cfg)
                        : dm::train::Parameters<Config>::load(opt.init_from, mtp, p, *cfg);
    if (!st.ok()) {
      return fail(st);
    }
    if (auto s2 = dm::train::Trainer<Config>::create(std::move(p), to, trainer); !s2.ok()) {
      return fail(s2);
    }
  }
  Config const& c = trainer.parameters().config();
  std::printf(
      "model: %s — %d layers (%d dense), H %d, %d routed experts (top-%d, %d shared), "
      "vocab %d%s: %.2f M parameters\n",
      cfg_file.c_str(), c.num_hidden_layers, c.first_k_dense_replace, c.hidden_size,
      c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.vocab_size,
      trainer.parameters().weights().mtp.empty() ? "" : ", MTP module (λ-weighted loss)",
      static_cast<double>(trainer.parameters().count()) / 1e6);
  std::printf(
      "training: %lld steps of %lld x %lld tokens, lr %g → %g (warmup %lld), %s, %d threads; "
      "checkpoints every %lld steps in %s\n",
      static_cast<long long>(opt.steps), static_cast<long long>(opt.batch),
      static_cast<long long>(opt.seq_len), opt.lr, opt.min_lr, static_cast<long long>(opt.warmup),
      opt.precision == "bf16" ? "bf16 compute, fp32 master weights" : "fp32", omp_get_max_threads(),
      static_cast<long long>(opt.save_every), out.c_str());

  fs::create_directories(out);
  std::string const metrics = (out / "metrics.jsonl").string();
  if (auto st = truncate_metrics(metrics, trainer.steps()); !st.ok()) {
    return fail(st);
  }
  std::ofstream log(metrics, std::ios::app);
  std::int64_t saved = resuming ? trainer.steps() : -1;  // the step of the newest checkpoint
  auto save = [&]() -> dm::Status {
    if (saved == trainer.steps()) {
      return {};
    }
    log.flush();  // the metrics of every step the checkpoint holds
    std::vector<std::string> extra;
    if (!opt.tokenizer.empty()) {  // deepmoe-generate finds MODEL/tokenizer.json
      extra.push_back(opt.tokenizer);
    }
    DEEPMOE_RETURN_IF_ERROR(trainer.save(out.string(), run_desc, extra));
    saved = trainer.steps();
    return {};
  };
  // "step" in metrics.jsonl: the optimizer steps completed when the line was written
  auto evaluate = [&](bool final, dm::train::EvalReport& ev) -> dm::Status {
    DEEPMOE_RETURN_IF_ERROR(trainer.evaluate(data, opt.eval_windows, ev));
    nlohmann::json j = {{"step", trainer.steps()}, {"val_loss", ev.mean()}};
    for (std::size_t i = 0; i < data.sources(); ++i) {
      if (ev.tokens[i] > 0) {
        j["val_loss_" + data.name(i)] = ev.loss[i];
        j["unigram_" + data.name(i)] = data.unigram_baseline(i, V);
      }
    }
    if (final) {
      j["final"] = true;
    }
    log << j.dump() << "\n" << std::flush;
    bool any = false;
    for (std::size_t i = 0; i < data.sources(); ++i) {
      if (ev.tokens[i] > 0) {
        std::printf(" | %s %.4f (unigram %.4f)", data.name(i).c_str(), ev.loss[i],
                    data.unigram_baseline(i, V));
        any = true;
      } else {
        std::printf(" | %s: no validation text", data.name(i).c_str());
      }
    }
    if (any) {
      std::printf(" | mean %.4f nats/token", ev.mean());
    }
    std::printf("\n");
    return {};
  };

  std::signal(SIGINT, [](int) { g_interrupted = true; });
  std::signal(SIGTERM, [](int) { g_interrupted = true; });
  bool const tty = isatty(fileno(stdout));
  auto const t0 = std::chrono::steady_clock::now();
  std::int64_t tokens = 0, start = trainer.steps();
  double loss_avg = 0;
  while (trainer.steps() < opt.steps && !g_interrupted) {
    dm::train::StepReport r;
    if (auto st = trainer.step(data, r); !st.ok()) {
      if (auto saved_st = save(); saved_st.ok()) {  // a failed step leaves the weights as they were
        std::fprintf(stderr, "\nsaved %s/checkpoint-%lld before the error\n", out.c_str(),
                     static_cast<long long>(trainer.steps()));
      }
      return fail(st);
    }
    tokens += r.tokens;
    loss_avg = r.step == start ? r.loss : 0.9 * loss_avg + 0.1 * r.loss;
    double const el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double const tps = static_cast<double>(tokens) / el;
    log << nlohmann::json{{"step", r.step + 1},
                          {"loss", r.loss},
                          {"balance_loss", r.balance_loss},
                          {"mtp_loss", r.mtp_loss},
                          {"lr", r.lr},
                          {"grad_norm", r.grad_norm},
                          {"tokens", r.tokens},
                          {"seconds", r.seconds},
                          {"imbalance", r.imbalance},
                          {"sequences", r.sequences},
                          {"expert_load", r.expert_load}}
               .dump()
        << "\n";
    std::int64_t const done = trainer.steps();
    if (tty || done % 10 == 0 || done == opt.steps) {
      int const width = 24;
      int const fill = static_cast<int>(width * done / opt.steps);
      double const eta =
          static_cast<double>(opt.steps - done) * el / static_cast<double>(done - start);
      std::printf(
          "%sstep %5lld/%lld [%s%s] loss %.3f | %.0f tok/s | lr %.2e | experts max/mean "
          "%.2f | %s < %s%s",
          tty ? "\r" : "", static_cast<long long>(done), static_cast<long long>(opt.steps),
          std::string(static_cast<std::size_t>(fill), '#').c_str(),
          std::string(static_cast<std::size_t>(width - fill), '.').c_str(), loss_avg, tps, r.lr,
          r.imbalance, clock(el).c_str(), clock(eta).c_str(), tty ? "" : "\n");
      std::fflush(stdout);
    }
    if (opt.eval_every > 0 && done % opt.eval_every == 0 && done < opt.steps) {
      dm::train::EvalReport ev;
      std::printf("\nvalidation at step %lld", static_cast<long long>(done));
      if (auto st = evaluate(false, ev); !st.ok()) {
        return fail(st);
      }
    }
    if (opt.save_every > 0 && done % opt.save_every == 0 && done < opt.steps) {
      if (auto st = save(); !st.ok()) {
        return fail(st);
      }
    }
  }
  log.flush();
  if (auto st = save(); !st.ok()) {
    return fail(st);
  }
  std::string const ckpt = (out / ("checkpoint-" + std::to_string(trainer.steps()))).string();
  if (g_interrupted) {
    std::printf("\ninterrupted: saved %s — continue with --resume\n", ckpt.c_str());
    return 130;
  }
  double const el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\ntrained %lld steps, %lld tokens in %s (%.0f tokens/s); saved %s\n",
              static_cast<long long>(trainer.steps() - start), static_cast<long long>(tokens),
              clock(el).c_str(), el > 0 ? static_cast<double>(tokens) / el : 0.0, ckpt.c_str());

  // validation and the expert-activation report
  dm::train::EvalReport ev;
  std::printf("validation at step %lld", static_cast<long long>(trainer.steps()));
  if (auto st = evaluate(true, ev); !st.ok()) {
    return fail(st);
  }
  std::ofstream csv(out / "expert_activation.csv");
  csv << "source,layer,expert,tokens,share\n";
  for (std::size_t i = 0; i < data.sources(); ++i)
    for (std::size_t l = 0; l < ev.expert_load[i].size(); ++l) {
      auto const& load = ev.expert_load[i][l];
      std::int64_t total = 0;
      for (auto n : load)
        total += n;
      for (std::size_t e = 0; e < load.size(); ++e)
        csv << data.name(i) << ',' << l << ',' << e << ',' << load[e] << ','
            << (total > 0 ? static_cast<double>(load[e]) / static_cast<double>(total) : 0.0)
            << '\n';
    }
  std::printf("expert activation per source: %s (draw it: scripts/plot_experts.py)\n",
              (out / "expert_activation.csv").c_str());

  // a sample from the saved checkpoint, through deepmoe-generate's engine
  if (opt.sample_tokens > 0) {
    dm::model::Model<Config> m;
    if (auto st = dm::model::Model<Config>::load(ckpt, m); !st.ok()) {
      return fail(st);
    }
    dm::generate::Generator<Config, float> g;
    if (auto st = dm::generate::Generator<Config, float>::create(
            m,
            {.max_batch = 1,
             .max_sequence = c.max_position_embeddings,
             .speculative_mtp = !m.weights().mtp.empty()},
            g);
        !st.ok()) {
      return fail(st);
    }
    std::vector<std::int32_t> prompt;
    if (auto st = tok.encode(opt.prompt, prompt, false); !st.ok() || prompt.empty()) {
      return fail(st.ok() ? dm::invalid_argument("--prompt is empty") : st);
    }
    int id = 0;
    int const room = static_cast<int>(c.max_position_embeddings) - static_cast<int>(prompt.size());
    if (auto st = g.add({prompt,
                         {.temperature = opt.temperature, .top_k = 40, .seed = opt.seed},
                         std::min(static_cast<int>(opt.sample_tokens), room),
                         {*eos}},
                        id);
        !st.ok()) {
      return fail(st);
    }
    std::printf("\nsample (temperature %.2f, top-k 40):\n%s", opt.temperature, opt.prompt.c_str());
    dm::tokenizer::StreamDecoder dec(tok, true);
    while (!g.done()) {
      std::vector<dm::generate::Event> events;
      if (auto st = g.step(events); !st.ok()) {
        return fail(st);
      }
      for (auto const& e : events) {
        std::string piece;
        if (dec.feed(e.token, piece).ok()) {
          std::printf("%s", piece.c_str());
        }
      }
      std::fflush(stdout);
    }
    if (g.stats().drafted > 0) {
      std::printf("%s\n\n(MTP speculative decoding: %lld of %lld drafts accepted)",
                  dec.flush().c_str(), static_cast<long long>(g.stats().accepted),
                  static_cast<long long>(g.stats().drafted));
    }
    std::printf("%s\n\ncontinue: deepmoe-generate --model %s%s --prompt '...'\n",
                dec.flush().c_str(), ckpt.c_str(),
                opt.tokenizer.empty() ? " --byte-tokenizer" : "");
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("peak memory %.1f MiB\n", static_cast<double>(ru.ru_maxrss) / 1024.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"deepmoe-train: train a DeepSeek-V3-architecture model on text files"};
  // a repeated option takes its last value (scripts/main.sh's defaults can be overridden);
  // --source and --stage collect every value
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  Options opt;
  app.add_option("--source", opt.sources,
                 "NAME:WEIGHT:PATH[,PATH...][:GLOB[,GLOB...]] — text files or folders "
                 "(recursive), file-name patterns; repeat for weighted sources")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
  app.add_option("--config", opt.config, "tiny, small (configs/train_*.json) or a config.json")
      ->capture_default_str();
  app.add_option("--init-from", opt.init_from, "start from this checkpoint (fine-tuning)")
      ->check(CLI::ExistingDirectory);
  app.add_option("--tokenizer", opt.tokenizer, "tokenizer.json (default: byte-level, 259 ids)")
      ->check(CLI::ExistingFile);
  app.add_option("--out", opt.out, "run folder: checkpoints, metrics.jsonl, reports")
      ->capture_default_str();
  app.add_flag("--resume", opt.resume, "continue the newest checkpoint in --out");
  app.add_option("--steps", opt.steps, "optimizer steps in all")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", opt.batch, "sequences per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch-ramp", opt.ramp_from, "sequences per step at step 0, growing linearly")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-ramp-steps", opt.ramp_steps, "steps of the batch-size ramp")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seq-len", opt.seq_len, "tokens per sequence")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--stage", opt.stages,
                 "START:LR_SCALE[:SEQ_LEN[:W1,W2,...]] — from step START on: the learning rate "
                 "times LR_SCALE, sequences of SEQ_LEN, the sources drawn with weights W (a "
                 "curriculum; repeatable; SEQ_LEN 0 or empty keeps --seq-len)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
  app.add_option("--lr", opt.lr, "peak learning rate")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--min-lr", opt.min_lr, "learning rate at the end of the cosine decay")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", opt.warmup, "linear warmup steps")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--weight-decay", opt.weight_decay)
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--clip", opt.clip, "global gradient-norm bound")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--bias-update-speed", opt.gamma, "γ of aux-loss-free balancing")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--balance-alpha", opt.alpha, "α of the sequence-wise balance loss")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--mtp-lambda", opt.lambda, "λ of the MTP loss (configs with an MTP module)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--precision", opt.precision,
                 "fp32, or bf16: mixed precision (bf16 weights and activations, fp32 master "
                 "weights, gradients and optimizer)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_flag("--keep-activations", opt.keep_activations,
               "keep every layer's activations instead of recomputing them in the backward "
               "(gradient checkpointing off: faster, more memory)");
  app.add_option("--init-std", opt.init_std, "σ of the initial weights")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--validation", opt.validation, "share of documents held out")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--eval-every", opt.eval_every, "steps between validations (0: only at the end)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--eval-windows", opt.eval_windows, "validation sequences per source")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--save-every", opt.save_every, "steps between checkpoints (and at the end)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", opt.seed, "initialization, split and batches")->capture_default_str();
  app.add_option("--threads", opt.threads, "OpenMP threads (default: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--prompt", opt.prompt, "the sample's prompt")->capture_default_str();
  app.add_option("--sample-tokens", opt.sample_tokens, "tokens to generate at the end (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", opt.temperature, "the sample's temperature")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  return run(opt);
}
