// SPDX-License-Identifier: Apache-2.0
/// @file hf_gradient_test.cpp
/// @brief The whole-model loss and its gradient against PyTorch autograd on Hugging Face
/// transformers' DeepseekV3ForCausalLM in float64 (tests/fixtures/model/v3/gradients.*, made by
/// scripts/make_fixtures.py; docs/testing.md): two sequences, mean cross-entropy over their 12
/// positions, the gradient of every trained tensor under its checkpoint name.
///
/// Tolerance: deepmoe computes in fp32 (rounding 2⁻²⁴ ≈ 6e-8 per operation; sums of up to a few
/// hundred terms through 2 layers, softmax and the head) against a float64 reference: the loss
/// to 1e-5 relative, each tensor's gradient to 1e-4 · its max |entry| (measured: ≤ 2.2e-6).
#include <deepmoe/train/model_backward.hpp>
#include <deepmoe/train/parameters.hpp>

#include "support/fixture_configs.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

namespace {
using namespace deepmoe;
using C = test::FixtureV3;
}  // namespace

TEST_CASE("train::model_loss gradient equals PyTorch autograd on transformers", "[train]") {
  std::filesystem::path const dir = std::filesystem::path(DEEPMOE_FIXTURES_DIR) / "model" / "v3";
  train::Parameters<C> p;
  Status const st = train::Parameters<C>::load(dir.string(), false, p);
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::ifstream in(dir / "gradients.json");
  nlohmann::json const j = nlohmann::json::parse(in);
  std::vector<std::vector<std::int32_t>> tokens, targets;
  for (auto const& s : j.at("sequences")) {
    tokens.push_back(s.at("input_ids").get<std::vector<std::int32_t>>());
    targets.push_back(s.at("labels").get<std::vector<std::int32_t>>());
  }
  std::vector<train::Example> batch;
  for (std::size_t b = 0; b < tokens.size(); ++b) {
    auto const T = static_cast<std::int64_t>(tokens[b].size());
    batch.push_back({VectorView<std::int32_t const>(tokens[b].data(), T),
                     VectorView<std::int32_t const>(targets[b].data(), T)});
  }
  train::LossScratch<C> s;
  train::LossStats stats;
  train::ModelGrads g = train::zero_model_grads<C>();
  REQUIRE(train::model_loss<C>(stats, batch, p.weights(), s, &g).ok());
  CHECK(stats.loss == Approx(j.at("loss").get<double>()).epsilon(1e-5));

  io::SafetensorsFile ref;
  REQUIRE(io::SafetensorsFile::open((dir / "gradients.safetensors").string(), ref).ok());
  auto named = g.named();
  CHECK(named.size() + 1 == ref.tensors().size());  // every gradient and `loss`
  for (train::NamedGrad const& n : named) {
    INFO(n.name);
    io::TensorInfo const* t = ref.find(n.name);
    REQUIRE(t != nullptr);
    REQUIRE(t->dtype == io::Dtype::kF32);
    REQUIRE(static_cast<std::size_t>(t->numel()) == n.grad.size());
    std::vector<float> want(n.grad.size());
    std::memcpy(want.data(), ref.bytes(*t).data(), want.size() * sizeof(float));
    double scale = 0, err = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::fabs(double{want[i]}));
      err = std::max(err, std::fabs(double{want[i]} - n.grad[i]));
    }
    INFO("max error " << err << " of max |grad| " << scale);
    CHECK(scale > 0);
    CHECK(err <= 1e-4 * scale);
  }
}
