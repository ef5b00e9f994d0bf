// SPDX-License-Identifier: Apache-2.0
/// @file trainer_test.cpp
/// @brief A training run (train/trainer.hpp) on text files: the loss falls below the unigram
/// baseline, the correction biases move against the load, a resumed run continues bit for bit
/// as the uninterrupted one (in fp32 and in mixed precision), checkpoints are pruned, serve
/// model::Model, and bad resumes are reported.
#include <deepmoe/model/model.hpp>
#include <deepmoe/train/trainer.hpp>

#include "support/fixture_configs.hpp"

#include <omp.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {
namespace fs = std::filesystem;
using namespace deepmoe;

// a two-layer model over the byte-level tokenizer's 259 ids
struct ByteModel : test::TinyGradCheck {
  static constexpr int vocab_size = 259;
  static constexpr int hidden_size = 16;
  static constexpr int num_hidden_layers = 2;
  static constexpr int first_k_dense_replace = 1;
  static constexpr int intermediate_size = 24;
  static constexpr int moe_intermediate_size = 8;
  static constexpr int eos_token_id = 257;
};
using C = ByteModel;

struct Run {
  // tiny steps: one thread, so that OpenMP's waiting threads do not compete with the other
  // tests ctest runs alongside (results do not depend on the thread count)
  struct OneThread {
    int n = omp_get_max_threads();
    OneThread() { omp_set_num_threads(1); }
    ~OneThread() { omp_set_num_threads(n); }
  } one_thread;
  fs::path root;  // one per test case: ctest runs them as concurrent processes
  train::TextDataset data;
  train::TrainOptions opt;
  explicit Run(std::string const& name) : root(fs::temp_directory_path() / name) {
    fs::remove_all(root);
    fs::create_directories(root / "text");
    for (int i = 0; i < 12; ++i) {
      std::string body;
      for (int k = 0; k < 30; ++k) {
        body += "the cat sat on the mat. ";
      }
      std::string name = "f";  // (appends: GCC 12 warns falsely on "literal" + string)
      name += std::to_string(i);
      name += ".txt";
      std::ofstream(root / "text" / name) << body;
    }
    auto const tok = tokenizer::Tokenizer::byte_level();
    REQUIRE(train::TextDataset::build({{"text", {(root / "text").string()}, {}, 1.0}}, tok,
                                      *tok.eos_id(), 0.2, 7, data)
                .ok());
    opt.batch_size = 4;
    opt.batch_ramp_start = 2;
    opt.batch_ramp_steps = 3;
    opt.seq_len = 24;
    opt.lr = {.peak = 1e-2, .final = 1e-3, .warmup = 2, .decay_start = 2, .decay_steps = 20};
    opt.keep_checkpoints = 2;
  }
  train::Trainer<C> fresh() const {
    train::Parameters<C> p;
    REQUIRE(train::Parameters<C>::init({.seed = 3}, p).ok());
    train::Trainer<C> t;
    REQUIRE(train::Trainer<C>::create(std::move(p), opt, t).ok());
    return t;
  }
};

std::vector<double> run_steps(train::Trainer<C>& t, train::TextDataset const& d, int n) {
  std::vector<double> losses;
  for (int i = 0; i < n; ++i) {
    train::StepReport r;
    Status const st = t.step(d, r);
    INFO(st.to_string());
    REQUIRE(st.ok());
    losses.push_back(r.loss);
  }
  return losses;
}
// The resumed run `c` (losses `resumed`) is bit for bit the uninterrupted `a` (losses `full`):
// every loss, and the final fp32 parameters.
void same_run(std::vector<double> const& resumed, std::vector<double> const& full,
              train::Trainer<C> const& a, train::Trainer<C> const& c) {
  REQUIRE(resumed.size() == full.size());
  for (std::size_t i = 0; i < full.size(); ++i) {
    INFO("step " << i);
    CHECK(std::memcmp(&resumed[i], &full[i], sizeof(double)) == 0);
  }
  auto const ia = a.parameters().image(), ic = c.parameters().image();
  REQUIRE(ia.size() == ic.size());
  CHECK(std::memcmp(ia.data(), ic.data(), ia.size()) == 0);
}
}  // namespace

TEST_CASE("train::Trainer learns, balances, and resumes bit for bit", "[train]") {
  Run run("deepmoe_trainer_test_resume");
  CHECK(run.opt.batch_at(0) == 2);
  CHECK(run.opt.batch_at(2) == 3);
  CHECK(run.opt.batch_at(3) == 4);

  train::Trainer<C> a = run.fresh();
  auto const full = run_steps(a, run.data, 30);

  // interrupted at step 12, resumed from its checkpoint
  fs::path const out = run.root / "run";
  train::Trainer<C> b = run.fresh();
  auto first = run_steps(b, run.data, 4);
  REQUIRE(b.save(out.string(), {{"note", "first"}}).ok());
  auto more = run_steps(b, run.data, 8);
  REQUIRE(b.save(out.string()).ok());
  REQUIRE(b.save(out.string()).ok());  // same step again: replaced
  CHECK(fs::exists(out / "checkpoint-4"));
  CHECK(fs::exists(out / "checkpoint-12"));
  run_steps(b, run.data, 1);
  REQUIRE(b.save(out.string()).ok());
  CHECK_FALSE(fs::exists(out / "checkpoint-4"));  // keep_checkpoints = 2
  fs::remove_all(out / "checkpoint-13");
  CHECK(train::Trainer<C>::latest_checkpoint(out.string()) == (out / "checkpoint-12").string());

  train::Trainer<C> c;
  nlohmann::json desc;
  Status const st = train::Trainer<C>::resume(out.string(), run.opt, c, desc);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(c.steps() == 12);
  auto rest = run_steps(c, run.data, 18);
  first.insert(first.end(), more.begin(), more.end());
  first.insert(first.end(), rest.begin(), rest.end());
  same_run(first, full, a, c);

  // training on: below the unigram baseline, biases moved
  auto const later = run_steps(a, run.data, 90);
  train::EvalReport ev;
  REQUIRE(a.evaluate(run.data, 8, ev).ok());
  REQUIRE(ev.tokens[0] > 0);
  double const unigram = run.data.unigram_baseline(0, C::vocab_size);
  INFO("loss " << full.front() << " → " << later.back() << ", validation " << ev.loss[0]
               << ", unigram " << unigram);
  CHECK(later.back() < 0.5 * full.front());
  CHECK(ev.loss[0] < unigram);  // the repeated sentence is predictable beyond frequencies
  // one more step moves each correction bias by γ·sign(mean load − its load)
  auto const* bias = a.parameters().find("model.layers.1.mlp.gate.e_score_correction_bias");
  REQUIRE(bias != nullptr);
  std::vector<float> const before(bias->value.begin(), bias->value.end());
  train::StepReport r;
  REQUIRE(a.step(run.data, r).ok());
  auto const& load = r.expert_load[1];
  REQUIRE(load.size() == before.size());
  std::int64_t total = 0;
  for (auto n : load)
    total += n;
  int moved = 0;
  for (std::size_t e = 0; e < load.size(); ++e) {
    std::int64_t const d = total - static_cast<std::int64_t>(load.size()) * load[e];
    moved += d != 0;
    CHECK(bias->value[e] == before[e] + static_cast<float>(run.opt.bias_update_speed *
                                                           static_cast<double>((d > 0) - (d < 0))));
  }
  CHECK(moved > 0);  // the step's load was not exactly even
  CHECK(ev.expert_load[0][0].empty());
  CHECK(ev.expert_load[0][1].size() == C::n_routed_experts);

  // the checkpoint is a model for inference
  model::Model<C> m;
  CHECK(model::Model<C>::load((out / "checkpoint-12").string(), m).ok());

  // nothing to resume, or a damaged optimizer file: named
  train::Trainer<C> d;
  CHECK(train::Trainer<C>::resume((run.root / "none").string(), run.opt, d, desc).code() ==
        StatusCode::kIoError);
  std::ofstream(out / "checkpoint-12" / "optimizer.safetensors") << "garbage";
  Status const bad = train::Trainer<C>::resume(out.string(), run.opt, d, desc);
  CHECK_FALSE(bad.ok());
  CHECK_THAT(bad.message(), Catch::Contains("optimizer.safetensors"));
  fs::remove_all(run.root);
}

TEST_CASE("train::Trainer in mixed precision learns and resumes bit for bit", "[train]") {
  Run run("deepmoe_trainer_test_bf16");
  train::Trainer<C> f32 = run.fresh();
  run.opt.precision = train::Precision::kBf16;
  train::Trainer<C> a = run.fresh();
  auto const l32 = run_steps(f32, run.data, 1);
  auto const full = run_steps(a, run.data, 12);
  INFO("first loss " << l32[0] << " (fp32) vs " << full[0] << " (bf16)");
  CHECK(full[0] != l32[0]);
  CHECK(std::fabs(full[0] - l32[0]) <= 2e-2 * l32[0]);  // bf16 rounding (model_backward_test)

  fs::path const out = run.root / "run";
  train::Trainer<C> b = run.fresh();
  auto first = run_steps(b, run.data, 5);
  REQUIRE(b.save(out.string()).ok());
  train::Trainer<C> c;
  nlohmann::json desc;
  REQUIRE(train::Trainer<C>::resume(out.string(), run.opt, c, desc).ok());
  auto const rest = run_steps(c, run.data, 7);
  first.insert(first.end(), rest.begin(), rest.end());
  same_run(first, full, a, c);

  auto const later = run_steps(a, run.data, 60);
  INFO("loss " << full.front() << " → " << later.back());
  CHECK(later.back() < 0.5 * full.front());
  fs::remove_all(run.root);
}

TEST_CASE("train::Trainer follows a curriculum: learning rate, data mix, sequence length",
          "[train]") {
  Run run("deepmoe_trainer_test_curriculum");
  fs::create_directories(run.root / "other");
  std::ofstream(run.root / "other" / "a.txt") << std::string(400, 'x');
  std::ofstream(run.root / "other" / "b.txt") << std::string(400, 'y');
  auto const tok = tokenizer::Tokenizer::byte_level();
  train::TextDataset two;
  REQUIRE(train::TextDataset::build({{"text", {(run.root / "text").string()}, {}, 1.0},
                                     {"other", {(run.root / "other").string()}, {}, 1.0}},
                                    tok, *tok.eos_id(), 0.2, 7, two)
              .ok());
  run.opt.batch_ramp_start = 0;
  run.opt.stages = {{.start = 2, .lr_scale = 0.5, .weights = {0.0, 1.0}, .seq_len = 12},
                    {.start = 4, .lr_scale = 1.0, .weights = {1.0, 0.0}}};
  train::Trainer<C> t = run.fresh();
  std::vector<train::StepReport> r(6);
  for (auto& x : r)
    REQUIRE(t.step(two, x).ok());
  CHECK(r[1].tokens == 4 * 24);
  CHECK(r[2].tokens == 4 * 12);  // stage 1: shorter sequences, half the learning rate, "other"
  CHECK(r[2].lr == Approx(0.5 * run.opt.lr(2)));
  CHECK(r[3].sequences == std::vector<std::int64_t>{0, 4});
  CHECK(r[4].tokens == 4 * 24);  // stage 2: back to L, only "text"
  CHECK(r[5].sequences == std::vector<std::int64_t>{4, 0});
  CHECK(r[5].lr == Approx(run.opt.lr(5)));

  // bad curricula are refused at creation
  run.opt.stages = {{.start = 3}, {.start = 3}};
  train::Parameters<C> p;
  REQUIRE(train::Parameters<C>::init({}, p).ok());
  train::Trainer<C> bad;
  CHECK(train::Trainer<C>::create(std::move(p), run.opt, bad).code() ==
        StatusCode::kInvalidArgument);
  fs::remove_all(run.root);
}
