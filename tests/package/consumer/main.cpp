// SPDX-License-Identifier: Apache-2.0
// Runs one MoE layer of the tiny preset with constant weights; prints "ok" on success.
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/moe/moe_layer.hpp>

#include <cstdio>
#include <vector>

int main() {
  using C = deepmoe::configs::TinyMoe;
  namespace dm = deepmoe;
  constexpr long H = C::hidden_size, M = C::moe_intermediate_size, E = C::n_routed_experts;
  std::vector<float> gate(E * H, 0.01f), bias(E, 0.0f), wi(M * H, 0.02f), wo(H * M, 0.02f);
  std::vector<float> si(M * H, 0.01f), so(H * M, 0.01f);
  auto lin = [](std::vector<float> const& v, long r, long c) {
    return dm::LinearWeight<float>{dm::MatrixView<float const>(v.data(), r, c), {}};
  };
  std::vector<dm::moe::ExpertWeights<C>> experts(E, {lin(wi, M, H), lin(wi, M, H), lin(wo, H, M)});
  dm::moe::MoeWeights<C> w{
      {dm::MatrixView<float const, E, H>(gate.data()), dm::VectorView<float const, E>(bias.data())},
      experts,
      {lin(si, M, H), lin(si, M, H), lin(so, H, M)}};
  std::vector<float> u(3 * H, 1.0f), y(3 * H);
  dm::moe::MoeWorkspace<C> ws;
  dm::Status const st = dm::moe::moe_layer_forward<C, float>(
      dm::MatrixView<float, dm::kDyn, H>(y.data(), 3),
      dm::MatrixView<float const, dm::kDyn, H>(u.data(), 3), w, ws);
  if (!st.ok()) {
    std::printf("%s\n", st.to_string().c_str());
    return 1;
  }
  std::printf("ok y[0] = %g\n", static_cast<double>(y[0]));
  return 0;
}
