// SPDX-License-Identifier: Apache-2.0
// bench/cuda_moe_layer: the CUDA backend's MoE layer at DeepSeek-V3 shapes (H 7168, 256 experts
// of width 2048 top-8, groups 8/4, one shared expert), bf16 and fp8 weights, for decode (T = 1…128)
// and prefill (T = 4096), stage by stage: the gate's logits (gpu::linear, SIMT), the router from
// fp32 logits, the dispatch plan (CUB radix sort, histogram, scan), the gather of bf16 token
// rows into expert order, the routed experts (grouped SwiGLU), the shared expert, and the combine
// back into bf16 token rows. The experts run on three kernels: the fp32 SIMT tiles (rows gathered
// to fp32), the bf16 tensor-core tiles (rows gathered to bf16), and the fp8 ones (bf16 rows
// quantized per 1×128, "quant"; e4m3 weights with 128×128 scales; shr-fp8 includes the shared
// rows' quantization); the three layer lines sum the stages of each path.
//
// The tokens are random and so are the gate's weights and correction bias; every stage routes
// by the gate's logits of those tokens, as moe_layer_forward does, so the experts hit (and the
// weight bytes) are the same in the stage rows and the fwd rows.
//
// Times: medians of 20 runs after 3 warm-ups, cudaEvent on one stream. Memory-bound stages
// report GB/s over the device-to-device copy bandwidth measured in the same run (cudaMemcpy of
// 1 GiB, read + write); bytes moved, with R = T·K:
//   router   T·E·4 (logits) + T·K·8 (ids, weights)
//   plan     ≈ 4 passes over R int32 (sort in and out, histogram, inverse)  — R·16
//   gate     T·H·2 + E·H·2 + T·E·4
//   gather   R·H·(2 + 4)  (bf16 in, fp32 out); gather16 R·H·(2 + 2)
//   combine  R·H·4 + T·H·2 + T·K·8  (fp32 expert rows in, bf16 out, weights and positions)
//   experts  the weights of the experts hit (≤ min(E, R) · 3·H·I·2) + R·(2H + I)·4 (SIMT's
//            fp32 rows; the mma path's bf16 rows move less, counted the same); fp8: half the
//            weight bytes + R·(H + 2I)·2
//   quant    R·H·3 + R·H/32 (bf16 in, e4m3 and scales out)
// The expert stages report TFLOP/s, 6·rows·H·I, over cuBLAS's bf16 GEMM rate measured in the
// same run (cublasGemmEx, 8192³, bf16 in, fp32 accumulate), and the speedup over the baseline:
// cuBLAS per-expert GEMMs (gate, up, down for each expert with rows, bf16 inputs, fp32
// accumulation, an elementwise SwiGLU between), the expert counts read to the host outside the
// timed region. exp-fp8's TFLOP/s are also put over the bf16 rate (the card's dense e4m3 rate
// is about twice it). fwd-bf16 and fwd-fp8 time gpu::moe_layer_forward itself: every stage in
// one call, the shared expert run as a 257th segment of the routed experts' launches.
#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/backend/cuda/combine.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_fp8.cuh>
#include <deepmoe/backend/cuda/grouped_swiglu_mma.cuh>
#include <deepmoe/backend/cuda/linear.cuh>
#include <deepmoe/backend/cuda/moe_layer.cuh>
#include <deepmoe/backend/cuda/permute.cuh>
#include <deepmoe/backend/cuda/router.cuh>
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "cuda_bench.cuh"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <span>
#include <vector>

using C = dm::configs::DeepSeekV3;                                    // fp8 weights, bf16 act
using Cb = dm::config::WithPrecision<C, dm::bfloat16, dm::bfloat16>;  // bf16 weights

namespace {

// v[i] = e4m3(224·u(i)), u uniform in [−1, 1) from a hash of (seed, i)
__global__ void fill_fp8_kernel(dm::float8_e4m3fn* v, std::size_t n, std::uint64_t seed) {
  std::size_t const i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    std::uint64_t z = (seed + i) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31;
    v[i] = dm::float8_e4m3fn(224.0f * (static_cast<float>(z >> 40) * 0x1p-23f - 1.0f));
  }
}
__global__ void to_bf16_kernel(bf16* out, float const* in, std::size_t n) {
  std::size_t const i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = bf16(in[i]);
  }
}
// h = bf16(silu(g)·u) over n values, g and u fp32 (the baseline's elementwise step)
__global__ void swiglu_kernel(bf16* h, float const* g, float const* u, std::size_t n) {
  std::size_t const i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    h[i] = bf16(dm::swiglu(g[i], u[i]));
  }
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  if (!device_or_skip(prop))
    return 77;
  constexpr int E = C::n_routed_experts, K = C::num_experts_per_tok, H = C::hidden_size;
  constexpr int I = C::moe_intermediate_size;
  cublasHandle_t blas = nullptr;
  if (auto s = cublasCreate(&blas); s != CUBLAS_STATUS_SUCCESS)
    return fail_cublas(s, "cublasCreate");
  // ceilings: the device copy, cuBLAS's bf16 GEMM
  double const copy_gbps = copy_bandwidth_gbps();
  double const peak_tflops = bf16_gemm_peak_tflops(blas);
  // DeepSeek-V3's experts, stacked: 256 × 3 × 2048 × 7168 bf16 (22 GB), and one shared expert
  std::size_t const per = std::size_t{I} * H;
  dm::gpu::DeviceBuffer<bf16> w_gate, w_up, w_down, s_gate, s_up, s_down, router;
  for (dm::Status st : {w_gate.allocate(E * per), w_up.allocate(E * per), w_down.allocate(E * per),
                        s_gate.allocate(per), s_up.allocate(per), s_down.allocate(per),
                        router.allocate(std::size_t{E} * H)})
    if (!st.ok())
      return fail(st);
  float const sh = 1.0f / std::sqrt(static_cast<float>(H)),
              si = 1.0f / std::sqrt(static_cast<float>(I));
  fill_kernel<<<blocks(E * per), 256>>>(w_gate.data(), E * per, sh, 3);
  fill_kernel<<<blocks(E * per), 256>>>(w_up.data(), E * per, sh, 4);
  fill_kernel<<<blocks(E * per), 256>>>(w_down.data(), E * per, si, 5);
  fill_kernel<<<blocks(per), 256>>>(s_gate.data(), per, sh, 6);
  fill_kernel<<<blocks(per), 256>>>(s_up.data(), per, sh, 7);
  fill_kernel<<<blocks(per), 256>>>(s_down.data(), per, si, 8);
  fill_kernel<<<blocks(std::size_t{E} * H), 256>>>(router.data(), std::size_t{E} * H, sh, 9);
  // the same shapes in fp8: e4m3 codes of 224·u, every 128×128 block scaled by 1/224 of the bf16
  // weights' scale
  std::size_t const per_scales = std::size_t{I / 128} * (H / 128);
  dm::gpu::DeviceBuffer<dm::float8_e4m3fn> q_gate, q_up, q_down, qs_gate, qs_up, qs_down;
  dm::gpu::DeviceBuffer<float> sc_h, sc_i;  // the scales of gate/up ([I/128, H/128]) and down
  std::vector<float> const scale_h(E * per_scales, sh / 224.0f),
      scale_i(E * per_scales, si / 224.0f);
  for (dm::Status st :
       {q_gate.allocate(E * per), q_up.allocate(E * per), q_down.allocate(E * per),
        qs_gate.allocate(per), qs_up.allocate(per), qs_down.allocate(per),
        sc_h.upload(std::span<float const>(scale_h)), sc_i.upload(std::span<float const>(scale_i))})
    if (!st.ok())
      return fail(st);
  fill_fp8_kernel<<<blocks(E * per), 256>>>(q_gate.data(), E * per, 10);
  fill_fp8_kernel<<<blocks(E * per), 256>>>(q_up.data(), E * per, 11);
  fill_fp8_kernel<<<blocks(E * per), 256>>>(q_down.data(), E * per, 12);
  fill_fp8_kernel<<<blocks(per), 256>>>(qs_gate.data(), per, 13);
  fill_fp8_kernel<<<blocks(per), 256>>>(qs_up.data(), per, 14);
  fill_fp8_kernel<<<blocks(per), 256>>>(qs_down.data(), per, 15);
  if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess)
    return fail(dm::gpu::check(e, "weights", __FILE__, __LINE__));
  std::printf(
      "%s (sm_%d%d), DeepSeek-V3 MoE layer (bf16 and fp8 weights): H %d, E %d of width %d, top-%d, "
      "1 shared\nceilings in this run: device copy %.0f GB/s, cuBLAS bf16 GEMM %.0f TFLOP/s\n\n",
      prop.name, prop.major, prop.minor, H, E, I, K, copy_gbps, peak_tflops);
  std::printf("%6s | %-8s %10s %9s %8s %9s %8s %11s\n", "T", "stage", "us", "GB/s", "of copy",
              "TFLOP/s", "of peak", "vs cuBLAS");
  for (std::int64_t T : {1, 8, 32, 128, 4096}) {
    std::int64_t const R = T * K;
    dm::util::Rng rng(static_cast<std::uint64_t>(T));
    std::vector<float> bias(E);
    for (float& b : bias)
      b = 0.1f * rng.uniform();
    std::vector<bf16> x(static_cast<std::size_t>(T * H));
    for (auto& v : x)
      v = bf16(rng.unit());
    std::vector<float> xf(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      xf[i] = static_cast<float>(x[i]);
    std::vector<std::int32_t> const shared_offsets{0, static_cast<std::int32_t>(T)};
    dm::gpu::DeviceBuffer<float> d_logits, d_bias, d_w, d_rows, d_out, d_hidden, d_xf, d_sout,
        d_shidden, d_g, d_u;
    dm::gpu::DeviceBuffer<std::int32_t> d_ids, d_counts, d_offsets, d_p2e, d_e2p, d_soff, d_tiles,
        d_stiles;
    dm::gpu::DeviceBuffer<float> d_gate_logits, d_rows8_scale;
    dm::gpu::DeviceBuffer<dm::float8_e4m3fn> d_rows8;
    dm::gpu::DeviceBuffer<unsigned char> d_fp8_ws;
    dm::gpu::DeviceBuffer<unsigned long long> d_failed;
    dm::gpu::DeviceBuffer<bf16> d_x, d_y, d_rows16, d_h16;
    dm::gpu::DeviceBuffer<unsigned char> d_temp;
    auto const uR = static_cast<std::size_t>(R), uT = static_cast<std::size_t>(T);
    for (dm::Status st : {d_logits.allocate(uT * E),
                          d_bias.upload(std::span<float const>(bias)),
                          d_x.upload(std::span<bf16 const>(x)),
                          d_xf.upload(std::span<float const>(xf)),
                          d_soff.upload(std::span<std::int32_t const>(shared_offsets)),
                          d_w.allocate(uR),
                          d_ids.allocate(uR),
                          d_counts.allocate(E),
                          d_offsets.allocate(E + 1),
                          d_p2e.allocate(uR),
                          d_e2p.allocate(uR),
                          d_failed.allocate(1),
                          d_rows.allocate(uR * H),
                          d_out.allocate(uR * H),
                          d_hidden.allocate(uR * I),
                          d_sout.allocate(uT * H),
                          d_shidden.allocate(uT * I),
                          d_y.allocate(uT * H),
                          d_rows16.allocate(uR * H),
                          d_h16.allocate(uR * I),
                          d_g.allocate(uR * I),
                          d_u.allocate(uR * I),
                          d_tiles.allocate(E + 1),
                          d_stiles.allocate(2),
                          d_gate_logits.allocate(uT * E),
                          d_rows8.allocate(uR * H),
                          d_rows8_scale.allocate(uR * H / 128),
                          d_fp8_ws.allocate(dm::gpu::grouped_swiglu_fp8_workspace_bytes(R, I))})
      if (!st.ok())
        return fail(st);
    dm::gpu::DeviceDispatchPlan const plan{d_counts.data(), d_offsets.data(), d_p2e.data(),
                                           d_e2p.data()};
    std::size_t bytes = 0;
    if (auto st = dm::gpu::build_dispatch_plan<C>(nullptr, bytes, plan, d_ids.data(), T, 0);
        !st.ok())
      return fail(st);
    if (auto st = d_temp.allocate(bytes); !st.ok())
      return fail(st);
    // route and plan once, for the expert stages and the baseline's host-side counts
    // the gate's logits of these tokens: the routing moe_layer_forward (fwd-*) computes too
    if (auto st = dm::gpu::linear(d_logits.data(), d_x.data(), router.data(), T, E, H, 0); !st.ok())
      return fail(st);
    if (auto st = dm::gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), d_bias.data(),
                                         T, d_failed.data(), 0);
        !st.ok())
      return fail(st);
    if (auto st = dm::gpu::build_dispatch_plan<C>(d_temp.data(), bytes, plan, d_ids.data(), T, 0);
        !st.ok())
      return fail(st);
    if (auto st = dm::gpu::permute<C, bf16>(d_rows.data(), d_x.data(), plan, T, 0); !st.ok())
      return fail(st);
    std::vector<std::int32_t> offsets;
    if (auto st = d_offsets.download(offsets); !st.ok())
      return fail(st);
    int hit = 0;
    for (int e = 0; e < E; ++e)
      hit += offsets[e + 1] > offsets[e];
    to_bf16_kernel<<<blocks(uR * H), 256>>>(d_rows16.data(), d_rows.data(), uR * H);

    dm::gpu::DeviceSwiGluWeights<bf16> const routed{w_gate.data(), w_up.data(), w_down.data()};
    dm::gpu::DeviceSwiGluWeights<bf16> const shared{s_gate.data(), s_up.data(), s_down.data()};
    dm::gpu::DeviceSwiGluWeights<dm::float8_e4m3fn> const routed8{
        q_gate.data(), q_up.data(), q_down.data(), sc_h.data(), sc_h.data(), sc_i.data()};
    dm::gpu::DeviceSwiGluWeights<dm::float8_e4m3fn> const shared8{
        qs_gate.data(), qs_up.data(), qs_down.data(), sc_h.data(), sc_h.data(), sc_i.data()};
    // the whole layer as moe_layer_forward runs it (the shared expert merged into the routed
    // launches), bf16 and fp8 experts
    dm::gpu::DeviceMoeWeights<Cb> const layer16{router.data(), d_bias.data(), routed, shared};
    dm::gpu::DeviceMoeWeights<C> const layer8{router.data(), d_bias.data(), routed8, shared8};
    std::size_t layer_ws_bytes = 0, layer16_ws_bytes = 0;  // one buffer for both layers
    if (auto st = dm::gpu::moe_layer_workspace_bytes<C>(T, layer_ws_bytes); !st.ok())
      return fail(st);
    if (auto st = dm::gpu::moe_layer_workspace_bytes<Cb>(T, layer16_ws_bytes); !st.ok())
      return fail(st);
    layer_ws_bytes = std::max(layer_ws_bytes, layer16_ws_bytes);
    dm::gpu::DeviceBuffer<unsigned char> d_layer_ws;
    if (auto st = d_layer_ws.allocate(layer_ws_bytes); !st.ok())
      return fail(st);
    auto cublas_experts = [&] {  // the baseline
      for (int e = 0; e < E; ++e) {
        int const r0 = offsets[e], n = offsets[e + 1] - r0;
        if (n == 0)
          continue;
        std::size_t const o = std::size_t{static_cast<unsigned>(e)} * per;
        bf16 const* xe = d_rows16.data() + std::size_t{static_cast<unsigned>(r0)} * H;
        float* ge = d_g.data() + std::size_t{static_cast<unsigned>(r0)} * I;
        float* ue = d_u.data() + std::size_t{static_cast<unsigned>(r0)} * I;
        (void)gemm_nt(blas, ge, xe, w_gate.data() + o, n, I, H);
        (void)gemm_nt(blas, ue, xe, w_up.data() + o, n, I, H);
      }
      swiglu_kernel<<<blocks(uR * I), 256>>>(d_h16.data(), d_g.data(), d_u.data(), uR * I);
      for (int e = 0; e < E; ++e) {
        int const r0 = offsets[e], n = offsets[e + 1] - r0;
        if (n == 0)
          continue;
        std::size_t const o = std::size_t{static_cast<unsigned>(e)} * per;
        (void)gemm_nt(blas, d_out.data() + std::size_t{static_cast<unsigned>(r0)} * H,
                      d_h16.data() + std::size_t{static_cast<unsigned>(r0)} * I, w_down.data() + o,
                      n, H, I);
      }
    };
    double const baseline = median_seconds(cublas_experts);

    dm::Status failed;  // the first stage call that failed, reported after the timing
    auto note = [&](dm::Status const& st) {
      if (failed.ok() && !st.ok())
        failed = st;
    };
    struct Stage {
      char const* name;
      int path;  // bits: 1 SIMT, 2 bf16 tensor cores, 4 fp8 tensor cores
      double bytes, flops;
      std::function<void()> run;
    };
    double const dR = static_cast<double>(R), dT = static_cast<double>(T);
    double const wbytes = 3.0 * H * I * 2;
    Stage const stages[] = {
        {"gate", 7, dT * H * 2 + E * H * 2.0 + dT * E * 4, 2.0 * dT * H * E,
         [&] {
           note(dm::gpu::linear(d_gate_logits.data(), d_x.data(), router.data(), T, E, H, 0));
         }},
        {"router", 7, dT * E * 4 + dR * 8, 0,
         [&] {
           note(dm::gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), d_bias.data(), T,
                                       d_failed.data(), 0));
         }},
        {"plan", 7, dR * 16, 0,
         [&] {
           note(dm::gpu::build_dispatch_plan<C>(d_temp.data(), bytes, plan, d_ids.data(), T, 0));
         }},
        {"gather", 1, dR * H * 6, 0,
         [&] { note(dm::gpu::permute<C, bf16>(d_rows.data(), d_x.data(), plan, T, 0)); }},
        {"experts", 1, hit * wbytes + dR * (2.0 * H + I) * 4, 6.0 * dR * H * I,
         [&] {
           note(dm::gpu::grouped_swiglu<bf16>(d_out.data(), d_hidden.data(), d_rows.data(),
                                              d_offsets.data(), E, T, routed, H, I, 0));
         }},
        {"shared", 1, wbytes + dT * (2.0 * H + I) * 4, 6.0 * dT * H * I,
         [&] {
           note(dm::gpu::grouped_swiglu<bf16>(d_sout.data(), d_shidden.data(), d_xf.data(),
                                              d_soff.data(), 1, T, shared, H, I, 0));
         }},
        {"gather16", 6, dR * H * 4, 0,
         [&] { note(dm::gpu::permute<C, bf16>(d_rows16.data(), d_x.data(), plan, T, 0)); }},
        {"exp-mma", 2, hit * wbytes + dR * (2.0 * H + I) * 4, 6.0 * dR * H * I,
         [&] {
           note(dm::gpu::grouped_swiglu_mma(d_out.data(), d_h16.data(), d_rows16.data(),
                                            d_offsets.data(), d_tiles.data(), E, R, routed, H, I,
                                            0));
         }},
        {"shr-mma", 2, wbytes + dT * (2.0 * H + I) * 4, 6.0 * dT * H * I,
         [&] {
           note(dm::gpu::grouped_swiglu_mma(d_sout.data(), d_h16.data(), d_x.data(), d_soff.data(),
                                            d_stiles.data(), 1, T, shared, H, I, 0));
         }},
        {"quant", 4, dR * H * 3 + dR * H / 32, 0,
         [&] {
           note(dm::gpu::quantize_rows_fp8(d_rows8.data(), d_rows8_scale.data(), d_rows16.data(), R,
                                           H, 0));
         }},
        {"exp-fp8", 4, hit * wbytes / 2 + dR * (H + 2.0 * I) * 2, 6.0 * dR * H * I,
         [&] {
           note(dm::gpu::grouped_swiglu_fp8(d_out.data(), d_rows8.data(), d_rows8_scale.data(),
                                            d_offsets.data(), d_tiles.data(), E, R, routed8, H, I,
                                            d_fp8_ws.data(), 0));
         }},
        {"shr-fp8", 4, wbytes / 2 + dT * (H + 2.0 * I) * 2, 6.0 * dT * H * I,
         [&] {
           note(dm::gpu::quantize_rows_fp8(d_rows8.data(), d_rows8_scale.data(), d_x.data(), T, H,
                                           0));
           note(dm::gpu::grouped_swiglu_fp8(d_sout.data(), d_rows8.data(), d_rows8_scale.data(),
                                            d_soff.data(), d_stiles.data(), 1, T, shared8, H, I,
                                            d_fp8_ws.data(), 0));
         }},
        {"fwd-bf16", 0, (hit + 1) * wbytes, 6.0 * (dR + dT) * H * I,
         [&] {
           note(dm::gpu::moe_layer_forward<Cb, bf16>(d_y.data(), d_x.data(), layer16,
                                                     d_layer_ws.data(), layer_ws_bytes,
                                                     d_failed.data(), T, 0));
         }},
        {"fwd-fp8", 0, (hit + 1) * wbytes / 2, 6.0 * (dR + dT) * H * I,
         [&] {
           note(dm::gpu::moe_layer_forward<C, bf16>(d_y.data(), d_x.data(), layer8,
                                                    d_layer_ws.data(), layer_ws_bytes,
                                                    d_failed.data(), T, 0));
         }},
        {"combine", 7, dR * H * 4 + dT * H * 2 + dR * 8, 0,
         [&] {
           note(dm::gpu::combine<C, bf16>(d_y.data(), d_out.data(), d_w.data(), plan, d_sout.data(),
                                          T, 0));
         }},
    };
    double total[8] = {};
    for (Stage const& s : stages) {
      double const t = median_seconds(s.run);
      if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
        return fail(dm::gpu::check(e, s.name, __FILE__, __LINE__));
      if (!failed.ok())
        return fail(failed);
      for (int p : {1, 2, 4})
        total[p] += (s.path & p) ? t : 0.0;
      double const gbps = s.bytes / t * 1e-9;
      std::printf("%6lld | %-8s %10.1f %9.1f %7.1f%%", static_cast<long long>(T), s.name, t * 1e6,
                  gbps, 100 * gbps / copy_gbps);
      if (s.flops > 0) {
        double const tf = s.flops / t * 1e-12;
        std::printf(" %9.2f %7.1f%%", tf, 100 * tf / peak_tflops);
        if (s.name[0] == 'e') {  // the routed experts, against cuBLAS per-expert bf16 GEMMs
          std::printf(" %10.2fx", baseline / t);
        }
      }
      std::printf("\n");
    }
    std::printf("%6lld | %-8s %10.1f   (SIMT experts)\n", static_cast<long long>(T), "layer",
                total[1] * 1e6);
    std::printf(
        "%6lld | %-8s %10.1f   (tensor-core experts; cuBLAS per-expert experts: %.1f us, "
        "%d experts hit)\n",
        static_cast<long long>(T), "layer", total[2] * 1e6, baseline * 1e6, hit);
    std::printf("%6lld | %-8s %10.1f   (fp8 experts)\n", static_cast<long long>(T), "layer",
                total[4] * 1e6);
  }
  cublasDestroy(blas);
  return 0;
}
