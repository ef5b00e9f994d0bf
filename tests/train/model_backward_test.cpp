// SPDX-License-Identifier: Apache-2.0
/// @file model_backward_test.cpp
/// @brief The whole-model loss gradient (train/model_backward.hpp) against central finite
/// differences of the loss itself, on a two-layer model (dense, then MoE; q_lora path); the
/// parameter image (train/parameters.hpp) saved, reloaded and loaded by model::Model; mixed
/// precision (train/mixed_precision.hpp) against the fp32 mode.
///
/// Tolerance: the loss is evaluated in fp32 (≈ 3, so rounding ≈ 3·2⁻²⁴); with the step 2⁻⁸ the
/// difference quotient carries ≈ 1e-4 absolute noise, plus O(step²) curvature — well under
/// 1e-2 · max|grad| for gradients of order 0.1–1.
#include <deepmoe/model/model.hpp>
#include <deepmoe/train/mixed_precision.hpp>
#include <deepmoe/train/model_backward.hpp>
#include <deepmoe/train/parameters.hpp>

#include "support/fixture_configs.hpp"

#include <omp.h>
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <vector>

namespace {
using namespace deepmoe;

struct TinyModel : test::TinyGradCheck {
  static constexpr int num_hidden_layers = 2;
  static constexpr int first_k_dense_replace = 1;
  static constexpr int q_lora_rank = 5;
};
using C = TinyModel;

struct Batch {
  std::vector<std::vector<std::int32_t>> tokens{{3, 7, 1, 12, 9}, {5, 2, 14}};
  std::vector<std::vector<std::int32_t>> targets{{7, 1, 12, 9, 4}, {2, -100, 0}};
  std::vector<train::Example> examples() const {
    std::vector<train::Example> e;
    for (std::size_t b = 0; b < tokens.size(); ++b) {
      auto const T = static_cast<std::int64_t>(tokens[b].size());
      e.push_back({VectorView<std::int32_t const>(tokens[b].data(), T),
                   VectorView<std::int32_t const>(targets[b].data(), T)});
    }
    return e;
  }
};

train::Parameters<C> tiny_params(std::uint64_t seed) {
  train::Parameters<C> p;
  REQUIRE(train::Parameters<C>::init({.seed = seed, .std_dev = 0.4}, p).ok());
  return p;
}
}  // namespace

// The gradient of every trained tensor of config Cfg against central differences of
// CE + balance + λ·L_mtp.
template <class Cfg>
void check_gradients(double alpha, double lambda) {
  // thousands of tiny forwards: one thread (results do not depend on it, see below), so that
  // OpenMP's waiting threads do not compete with the other tests ctest runs alongside
  int const threads = omp_get_max_threads();
  omp_set_num_threads(1);
  struct Restore {
    int n;
    ~Restore() { omp_set_num_threads(n); }
  } const restore{threads};
  train::LossOptions const opt{.balance_alpha = alpha, .mtp_lambda = lambda};
  bool const mtp = Cfg::num_nextn_predict_layers > 0;
  INFO("alpha " << alpha << ", lambda " << lambda << (mtp ? ", MTP module" : ""));
  train::Parameters<Cfg> p;
  REQUIRE(train::Parameters<Cfg>::init({.seed = 5, .std_dev = 0.4, .mtp = mtp}, p).ok());
  Batch const batch;
  auto const ex = batch.examples();
  train::LossScratch<Cfg> s;
  train::LossStats st;
  train::ModelGrads g = train::zero_model_grads<Cfg>({}, mtp);
  Status const ok = train::model_loss<Cfg>(st, ex, p.weights(), s, &g, opt);
  INFO(ok.to_string());
  REQUIRE(ok.ok());
  CHECK(st.targets == 7);
  CHECK(st.tokens == 8);
  CHECK(st.expert_load[0].empty());
  std::int64_t routed = 0;
  for (auto n : st.expert_load[1])
    routed += n;
  CHECK(routed == 8 * Cfg::num_experts_per_tok);
  CHECK((alpha == 0.0 ? st.balance_loss == 0.0 : st.balance_loss > 0.1 * alpha));
  CHECK((mtp && lambda > 0 ? st.mtp_loss > 1.0 && st.expert_load.size() == 3
                           : st.mtp_loss == 0.0 && st.expert_load.size() == 2));

  auto loss = [&] {
    train::LossStats q;
    REQUIRE(train::model_loss<Cfg>(q, ex, p.weights(), s, nullptr, opt).ok());
    return q.loss + q.balance_loss + lambda * q.mtp_loss;
  };
  float const step = 0x1p-8f;
  auto grads = g.named();
  std::size_t checked = 0;
  for (auto const& t : p.tensors()) {
    if (!t.trained) {
      continue;
    }
    auto const it = std::find_if(grads.begin(), grads.end(),
                                 [&](train::NamedGrad const& n) { return n.name == t.name; });
    INFO(t.name);
    REQUIRE(it != grads.end());
    REQUIRE(it->grad.size() == t.value.size());
    double scale = 0, err = 0;
    // every entry of small tensors, a stride through big ones
    std::size_t const stride = t.value.size() > 64 ? 7 : 1;
    for (std::size_t i = 0; i < t.value.size(); i += stride) {
      float const keep = t.value[i];
      t.value[i] = keep + step;
      double const up = loss();
      t.value[i] = keep - step;
      double const down = loss();
      t.value[i] = keep;
      double const want = (up - down) / (2.0 * step);
      scale = std::max(scale, std::fabs(want));
      err = std::max(err, std::fabs(want - it->grad[i]));
    }
    INFO("max error " << err << " of max |grad| " << scale);
    CHECK(err <= 1e-2 * std::max(scale, 1e-3));
    ++checked;
  }
  CHECK(checked == grads.size());
}

struct TinyMtp : TinyModel {
  static constexpr int num_nextn_predict_layers = 1;
};

TEST_CASE("train::model_loss gradient matches finite differences of the loss", "[train]") {
  // α and λ exaggerated to weigh like the cross-entropy
  check_gradients<C>(0.0, 0.0);
  check_gradients<C>(0.5, 0.0);
  check_gradients<TinyMtp>(0.0, 0.5);
}

TEST_CASE("train::model_loss does not depend on the thread count", "[train]") {
  train::Parameters<C> p = tiny_params(6);
  Batch const batch;
  auto const ex = batch.examples();
  auto run = [&](int threads) {
    int const keep = omp_get_max_threads();
    omp_set_num_threads(threads);
    train::LossScratch<C> s;
    train::LossStats st;
    train::ModelGrads g = train::zero_model_grads<C>();
    REQUIRE(train::model_loss<C>(st, ex, p.weights(), s, &g).ok());
    omp_set_num_threads(keep);
    std::vector<float> all;
    for (auto const& n : g.named())
      all.insert(all.end(), n.grad.begin(), n.grad.end());
    all.push_back(static_cast<float>(st.loss));
    return all;
  };
  auto const one = run(1), two = run(2);
  REQUIRE(one.size() == two.size());
  CHECK(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)) == 0);
}

// Mixed precision: the bf16 copy is the masters rounded; its loss and gradients are the fp32
// mode's up to bf16 rounding. Tolerance: bf16 keeps 8 significant bits (unit roundoff 2⁻⁹ ≈
// 0.2%); weights are rounded once and every residual stream once per layer, so values move by
// a few 2⁻⁹ relative — 2% of the loss and 5% of a tensor's largest gradient leave room for
// that (measured: 0.05% of the loss, 2.5% of a tensor's largest gradient, the input norm's)
// and fail on any wrong widening, missed refresh or misrouted bias (errors of order 1).
TEST_CASE("train::Bf16Weights: model_loss in mixed precision agrees with fp32", "[train]") {
  using M = TinyMtp;
  using B = train::Bf16Weights<M>;
  train::Parameters<M> p;
  REQUIRE(train::Parameters<M>::init({.seed = 5, .std_dev = 0.4, .mtp = true}, p).ok());
  for (auto const& t : p.tensors())  // biases not all zero: the copy must keep them exactly
    if (t.name.ends_with("e_score_correction_bias")) {
      for (std::size_t e = 0; e < t.value.size(); ++e)
        t.value[e] = 1e-3f * static_cast<float>(e) + 1.2345678e-4f;
    }
  B b;
  Status const made = B::create(p, b);
  INFO(made.to_string());
  REQUIRE(made.ok());
  auto same_as_master = [&] {
    io::SafetensorsFile f;
    REQUIRE(io::SafetensorsFile::from_bytes("copy", b.image(), f).ok());
    for (auto const& t : p.tensors()) {
      INFO(t.name);
      io::TensorInfo const* info = f.find(t.name);
      REQUIRE(info != nullptr);
      bool const bias = t.name.ends_with("e_score_correction_bias");
      REQUIRE(info->dtype == (bias ? io::Dtype::kF32 : io::Dtype::kBF16));
      auto const bytes = f.bytes(*info);
      for (std::size_t i = 0; i < t.value.size(); ++i) {
        if (bias) {
          float v;
          std::memcpy(&v, bytes.data() + i * 4, 4);
          REQUIRE(v == t.value[i]);
        } else {
          std::uint16_t v;
          std::memcpy(&v, bytes.data() + i * 2, 2);
          REQUIRE(v == bfloat16(t.value[i]).bits);
        }
      }
    }
  };
  same_as_master();
  p.find("model.layers.1.self_attn.o_proj.weight")->value[3] += 0.25f;
  p.find("model.layers.1.mlp.gate.e_score_correction_bias")->value[2] = -0.5f;
  b.refresh();
  same_as_master();

  Batch const batch;
  auto const ex = batch.examples();
  train::LossOptions const opt{.balance_alpha = 0.1, .mtp_lambda = 0.5};
  train::LossScratch<M> s32;
  train::LossScratch<B::Compute> s16;
  train::LossStats a, h;
  train::ModelGrads ga = train::zero_model_grads<M>({}, true),
                    gh = train::zero_model_grads<M>({}, true);
  REQUIRE(train::model_loss<M>(a, ex, p.weights(), s32, &ga, opt).ok());
  Status const st = train::model_loss<B::Compute>(h, ex, b.weights(), s16, &gh, opt);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CHECK(h.expert_load == a.expert_load);  // the same experts chosen
  INFO("loss " << a.loss << " (fp32) vs " << h.loss << " (bf16); MTP " << a.mtp_loss << " vs "
               << h.mtp_loss);
  CHECK(std::fabs(h.loss - a.loss) <= 2e-2 * a.loss);
  CHECK(std::fabs(h.mtp_loss - a.mtp_loss) <= 2e-2 * a.mtp_loss);
  CHECK(std::fabs(h.balance_loss - a.balance_loss) <= 2e-2 * a.balance_loss);
  CHECK(h.loss != a.loss);  // bf16 rounding did happen
  auto const na = ga.named(), nh = gh.named();
  REQUIRE(na.size() == nh.size());
  double worst = 0;
  for (std::size_t i = 0; i < na.size(); ++i) {
    INFO(na[i].name);
    double scale = 0, err = 0;
    for (std::size_t j = 0; j < na[i].grad.size(); ++j) {
      scale = std::max(scale, double{std::fabs(na[i].grad[j])});
      err = std::max(err, double{std::fabs(na[i].grad[j] - nh[i].grad[j])});
    }
    CHECK(err <= 5e-2 * scale);
    worst = std::max(worst, err / std::max(scale, 1e-30));
  }
  WARN("mixed precision: largest gradient error " << worst << " of the tensor's max |grad|");
}

// The loss and every gradient, flattened; `bytes`: the activations kept
template <class Cfg, class Weights>
std::vector<float> loss_and_grads(Weights const& w, Cfg const& cfg, bool recompute,
                                  std::size_t& bytes) {
  Batch const batch;
  auto const ex = batch.examples();
  train::LossScratch<Cfg> s(cfg);
  train::LossStats st;
  train::ModelGrads g = train::zero_model_grads<Cfg>(cfg, !w.mtp.empty());
  Status const ok = train::model_loss<Cfg>(
      st, ex, w, s, &g, {.balance_alpha = 0.1, .mtp_lambda = 0.5, .recompute = recompute});
  INFO(ok.to_string());
  REQUIRE(ok.ok());
  bytes = st.activation_bytes;
  std::vector<float> all;
  for (auto const& n : g.named())
    all.insert(all.end(), n.grad.begin(), n.grad.end());
  for (double v : {st.loss, st.balance_loss, st.mtp_loss})
    all.push_back(static_cast<float>(v));
  return all;
}

TEST_CASE("train::model_loss keeps or recomputes activations with the same bits", "[train]") {
  train::Parameters<TinyMtp> p;
  REQUIRE(train::Parameters<TinyMtp>::init({.seed = 9, .std_dev = 0.4, .mtp = true}, p).ok());
  train::Bf16Weights<TinyMtp> b;
  REQUIRE(train::Bf16Weights<TinyMtp>::create(p, b).ok());
  for (bool const bf16 : {false, true}) {
    INFO((bf16 ? "bf16" : "fp32"));
    std::size_t kept = 0, recomputed = 0;
    auto const a = bf16 ? loss_and_grads(b.weights(), b.config(), true, recomputed)
                        : loss_and_grads(p.weights(), p.config(), true, recomputed);
    auto const c = bf16 ? loss_and_grads(b.weights(), b.config(), false, kept)
                        : loss_and_grads(p.weights(), p.config(), false, kept);
    REQUIRE(a.size() == c.size());
    CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0);
    INFO("activations kept: " << kept << " B, with recomputation " << recomputed << " B");
    CHECK(kept > recomputed);
  }
}

TEST_CASE("train::model_loss rejects bad batches with the sequence and position", "[train]") {
  train::Parameters<C> p = tiny_params(7);
  train::LossScratch<C> s;
  train::LossStats st;
  std::vector<std::int32_t> tok{1, 2, 99}, tgt{2, 3, 4}, shorter{2};
  train::Example const bad[] = {{VectorView<std::int32_t const>(tok.data(), 3),
                                 VectorView<std::int32_t const>(tgt.data(), 3)}};
  Status const a = train::model_loss<C>(st, bad, p.weights(), s);
  CHECK(a.code() == StatusCode::kOutOfRange);
  CHECK_THAT(a.message(), Catch::Contains("sequence 0 position 2"));
  train::Example const uneven[] = {{VectorView<std::int32_t const>(tok.data(), 2),
                                    VectorView<std::int32_t const>(shorter.data(), 1)}};
  CHECK(train::model_loss<C>(st, uneven, p.weights(), s).code() == StatusCode::kInvalidArgument);
  CHECK(train::model_loss<C>(st, {}, p.weights(), s).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("train::Parameters save, load and serve model::Model", "[train]") {
  namespace fs = std::filesystem;
  train::Parameters<C> p = tiny_params(8);
  CHECK(p.count() > 0);
  fs::path const dir = fs::temp_directory_path() / "deepmoe_parameters_test";
  fs::remove_all(dir);
  REQUIRE(p.save(dir.string()).ok());
  train::Parameters<C> q;
  Status const st = train::Parameters<C>::load(dir.string(), false, q);
  INFO(st.to_string());
  REQUIRE(st.ok());
  REQUIRE(q.image().size() == p.image().size());
  CHECK(std::memcmp(q.image().data(), p.image().data(), p.image().size()) == 0);

  // inference on the saved checkpoint gives the training forward's logits
  model::Model<C> m;
  REQUIRE(model::Model<C>::load(dir.string(), m).ok());
  std::vector<std::int32_t> tok{3, 7, 1};
  std::vector<std::int64_t> pos{0, 1, 2};
  model::Sequence const seq[] = {{VectorView<std::int32_t const>(tok.data(), 3),
                                  VectorView<std::int64_t const>(pos.data(), 3)}};
  std::vector<float> logits(3 * C::vocab_size);
  REQUIRE(
      m.forward(seq, MatrixView<float>(logits.data(), 3, C::vocab_size), model::LogitsRows::kAll)
          .ok());
  train::LossScratch<C> s;
  train::LossStats a, b;
  std::vector<std::int32_t> tgt{7, 1, 12};
  train::Example const ex[] = {{VectorView<std::int32_t const>(tok.data(), 3),
                                VectorView<std::int32_t const>(tgt.data(), 3)}};
  REQUIRE(train::model_loss<C>(a, ex, p.weights(), s).ok());
  double want = 0;  // the mean cross-entropy from the inference logits
  for (std::int64_t t = 0; t < 3; ++t) {
    double mx = -1e30, sum = 0;
    for (std::int64_t v = 0; v < C::vocab_size; ++v)
      mx = std::max(mx, double{logits[t * C::vocab_size + v]});
    for (std::int64_t v = 0; v < C::vocab_size; ++v)
      sum += std::exp(logits[t * C::vocab_size + v] - mx);
    want += (mx + std::log(sum) - logits[t * C::vocab_size + tgt[t]]) / 3;
  }
  CHECK(a.loss == Approx(want).epsilon(1e-6));

  // a checkpoint of another config: every tensor that disagrees is named
  train::Parameters<test::TinyGradCheck> other;
  Status const bad = train::Parameters<test::TinyGradCheck>::load(dir.string(), false, other);
  CHECK(bad.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(bad.message(), Catch::Contains("unexpected") && Catch::Contains("model.layers.1."));
  fs::remove_all(dir);
}
