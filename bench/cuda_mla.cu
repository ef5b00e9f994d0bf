// SPDX-License-Identifier: Apache-2.0
// bench/cuda_mla: one layer of Multi-head Latent Attention (gpu::mla_attention) at DeepSeek-V3's
// shapes (H 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, dn 128, dr 64, dv 128), bf16
// weights and a bf16 latent cache, in both forms:
//   decode   B sequences × 1 new token after L − 1 cached ones (B = 1, 8, 32; L = 1024, 4096)
//   prefill  one sequence of T tokens from position 0 (T = 1024, 4096)
// Everything a layer's attention does is timed: the projections (gpu::linear), the RoPE, the
// cache write, the attention core, and for the naive form the expansion of every key by kv_b_proj.
//
// Decode is memory-bound: bytes = the projection weights (187.1 M bf16 values, 374 MB) + the
// cache rows read (B·L·576·2), over the device-to-device copy bandwidth measured in the same run
// (cudaMemcpy of 1 GiB, read + write). Prefill is counted in FLOP: projections 2·T·(weights),
// the naive form's kv expansion 2·T·nh·(dn+dv)·rkv, and the core 2·nh·(T²/2)·(width of a score +
// width of a value): (dn+dr) + dv naive, (rkv+dr) + rkv absorbed, plus the absorbed form's
// 2·T·nh·(dn + dv)·rkv for W_UK and W_UV — over cuBLAS's bf16 GEMM rate from the same run. The
// projections run on tensor cores (linear_mma, rows rounded to bf16); the baselines of each row
// are the same call with the projections on gpu::linear (fp32 SIMT; "ratio" = its time over
// the tensor-core one) and, for decode, the naive form (its time over the absorbed one: > 1 means
// the absorbed form is faster, skipped where the expanded keys would pass 2^15 rows).
// Times: medians of 20 runs after 3 warm-ups (5 after 1 for prefill), cudaEvent, one stream.
#include <deepmoe/backend/cuda/mla_attention.cuh>
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>

#include <deepmoe/util/random_moe.hpp>

#include "cuda_bench.cuh"

#include <cmath>
#include <cstdio>
#include <span>
#include <tuple>
#include <vector>

using C = dm::config::WithPrecision<dm::configs::DeepSeekV3, bf16, bf16>;

namespace {

constexpr std::int64_t H = C::hidden_size, nh = C::num_attention_heads;
constexpr std::int64_t dn = C::qk_nope_head_dim, dr = C::qk_rope_head_dim, dv = C::v_head_dim;
constexpr std::int64_t rq = C::q_lora_rank, rkv = C::kv_lora_rank, dc = rkv + dr;

// Device weights of one layer: random bf16 with the scale 1/√fan_in.
struct Weights {
  dm::gpu::DeviceBuffer<bf16> q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o;
  std::int64_t values = 0;  // projection weights
  dm::Status allocate() {
    struct Piece {
      dm::gpu::DeviceBuffer<bf16>* buf;
      std::int64_t rows, cols;
    };
    Piece const pieces[] = {{&q_a, rq, H},   {&q_a_norm, 1, rq},   {&q_b, nh * (dn + dr), rq},
                            {&kv_a, dc, H},  {&kv_a_norm, 1, rkv}, {&kv_b, nh * (dn + dv), rkv},
                            {&o, H, nh * dv}};
    std::uint64_t seed = 100;
    for (Piece const& p : pieces) {
      auto const n = static_cast<std::size_t>(p.rows * p.cols);
      DEEPMOE_RETURN_IF_ERROR(p.buf->allocate(n));
      bool const norm = p.rows == 1;
      fill_kernel<<<blocks(n), 256>>>(
          p.buf->data(), n, norm ? 1.0f : 1.0f / std::sqrt(static_cast<float>(p.cols)), seed++);
      values += norm ? 0 : p.rows * p.cols;
    }
    return {};
  }
  dm::gpu::DeviceMlaWeights<bf16, bf16> view() const {
    dm::gpu::DeviceMlaWeights<bf16, bf16> w;
    w.q_a_proj = q_a.data();
    w.q_a_layernorm = q_a_norm.data();
    w.q_b_proj = q_b.data();
    w.kv_a_proj_with_mqa = kv_a.data();
    w.kv_a_layernorm = kv_a_norm.data();
    w.kv_b_proj = kv_b.data();
    w.o_proj = o.data();
    return w;
  }
};

// One batch: B sequences in slots 0..B−1 of a cache of capacity L per slot, each running T tokens
// ending at position L − 1.
struct Batch {
  std::vector<std::int64_t> positions, cache_rows, key_rows;
  std::vector<dm::gpu::DeviceMlaBatch::Keys> keys;
  dm::gpu::DeviceBuffer<std::int64_t> d_pos, d_crow, d_krow;
  dm::Status make(std::int64_t B, std::int64_t L, std::int64_t T) {
    for (std::int64_t b = 0; b < B; ++b) {
      keys.push_back({b * L, L, b * L});
      for (std::int64_t t = 0; t < T; ++t) {
        positions.push_back(L - T + t);
        cache_rows.push_back(b * L);
        key_rows.push_back(b * L);
      }
    }
    DEEPMOE_RETURN_IF_ERROR(d_pos.upload(std::span<std::int64_t const>(positions)));
    DEEPMOE_RETURN_IF_ERROR(d_crow.upload(std::span<std::int64_t const>(cache_rows)));
    return d_krow.upload(std::span<std::int64_t const>(key_rows));
  }
  dm::gpu::DeviceMlaBatch view() const {
    return {d_pos.data(), d_crow.data(), d_krow.data(),
            std::span<dm::gpu::DeviceMlaBatch::Keys const>(keys),
            static_cast<std::int64_t>(positions.size())};
  }
};

}  // namespace

int main() {
  cudaDeviceProp prop{};
  if (!device_or_skip(prop))
    return 77;
  cublasHandle_t blas = nullptr;
  if (auto s = cublasCreate(&blas); s != CUBLAS_STATUS_SUCCESS)
    return fail_cublas(s, "cublasCreate");
  double const copy_gbps = copy_bandwidth_gbps();
  double const peak_tflops = bf16_gemm_peak_tflops(blas);
  std::printf(
      "%s (sm_%d%d): MLA at DeepSeek-V3 shapes, bf16 weights and cache; copy %.0f GB/s, "
      "cuBLAS bf16 %.0f TFLOP/s\n",
      prop.name, prop.major, prop.minor, copy_gbps, peak_tflops);
  Weights w;
  if (auto st = w.allocate(); !st.ok())
    return fail(st);
  std::vector<float> const inv =
      dm::rope_inv_freq(static_cast<int>(dr), C::rope_theta, C::rope_scaling);
  dm::gpu::DeviceBuffer<float> d_inv;
  if (auto st = d_inv.upload(std::span<float const>(inv)); !st.ok())
    return fail(st);
  // the cache: 32 slots × 4096 rows of random bf16, and the input rows
  std::int64_t const max_rows = 32 * 4096;
  dm::gpu::DeviceBuffer<bf16> cache;
  dm::gpu::DeviceBuffer<float> x, out;
  dm::gpu::DeviceBuffer<unsigned char> ws;
  if (auto st = cache.allocate(static_cast<std::size_t>(max_rows * dc)); !st.ok())
    return fail(st);
  fill_kernel<<<blocks(static_cast<std::size_t>(max_rows * dc)), 256>>>(
      cache.data(), static_cast<std::size_t>(max_rows * dc), 1.0f, 7);
  std::vector<float> xs(static_cast<std::size_t>(4096 * H));
  dm::util::Rng rng(1);
  for (float& v : xs)
    v = rng.uniform();
  if (auto st = x.upload(std::span<float const>(xs)); !st.ok())
    return fail(st);
  if (auto st = out.allocate(xs.size()); !st.ok())
    return fail(st);

  auto run = [&](Batch const& b, dm::MlaForm form, bool tc, int reps,
                 double& seconds) -> dm::Status {
    std::int64_t keys = 0, max_keys = 0;
    for (auto const& k : b.keys) {
      keys += k.count;
      max_keys = std::max(max_keys, k.count);
    }
    std::size_t const bytes =
        dm::gpu::mla_attention_workspace_bytes<C>(b.view().tokens, keys, max_keys, form);
    if (ws.size() < bytes)
      DEEPMOE_RETURN_IF_ERROR(ws.allocate(bytes));
    std::vector<dm::Status> failed;
    auto call = [&] {
      if (dm::Status st =
              dm::gpu::mla_attention<C>(out.data(), x.data(), w.view(), b.view(), cache.data(), 0,
                                        d_inv.data(), form, tc, ws.data(), ws.size(), nullptr);
          !st.ok() && failed.empty())
        failed.push_back(st);
    };
    seconds = median_seconds(call, reps);
    if (!failed.empty())
      return failed.front();
    DEEPMOE_CUDA_CHECK(cudaDeviceSynchronize());
    return {};
  };
  using dm::MlaForm;

  std::printf("\n%-7s %3s %5s | %10s %7s %6s | %10s %7s | %10s %7s\n", "decode", "B", "L",
              "absorbed", "GB/s", "%copy", "SIMT proj", "ratio", "naive", "ratio");
  for (std::int64_t L : {1024, 4096}) {
    for (std::int64_t B : {1, 8, 32}) {
      Batch b;
      if (auto st = b.make(B, L, 1); !st.ok())
        return fail(st);
      double ta = 0, ts = 0, tn = 0;
      bool const naive = B * L <= (1 << 15);
      for (auto [form, tc, t] :
           {std::tuple{MlaForm::kAbsorbed, true, &ta}, std::tuple{MlaForm::kAbsorbed, false, &ts},
            std::tuple{MlaForm::kNaive, true, &tn}}) {
        if (form == MlaForm::kNaive && !naive)
          continue;
        if (auto st = run(b, form, tc, 20, *t); !st.ok())
          return fail(st);
      }
      double const bytes = 2.0 * static_cast<double>(w.values) + 2.0 * B * L * dc;
      double const gbps = bytes / ta * 1e-9;
      std::printf("%-7s %3lld %5lld | %7.1f µs %7.0f %5.0f%% | %7.1f µs %6.2f× | ", "",
                  static_cast<long long>(B), static_cast<long long>(L), ta * 1e6, gbps,
                  100 * gbps / copy_gbps, ts * 1e6, ts / ta);
      if (naive)
        std::printf("%7.1f µs %6.2f×\n", tn * 1e6, tn / ta);
      else
        std::printf("%10s %7s\n", "—", "—");
    }
  }
  std::printf("\n%-7s %5s | %10s %7s %6s | %10s %7s %6s | %10s %7s\n", "prefill", "T", "absorbed",
              "TFLOP/s", "%peak", "naive", "TFLOP/s", "%peak", "SIMT proj", "ratio");
  for (std::int64_t T : {1024, 4096}) {
    Batch b;
    if (auto st = b.make(1, T, T); !st.ok())
      return fail(st);
    double ta = 0, tn = 0, ts = 0;
    for (auto [form, tc, t] :
         {std::tuple{MlaForm::kAbsorbed, true, &ta}, std::tuple{MlaForm::kNaive, true, &tn},
          std::tuple{MlaForm::kNaive, false, &ts}})
      if (auto st = run(b, form, tc, 5, *t); !st.ok())
        return fail(st);
    double const proj = 2.0 * T * static_cast<double>(w.values - nh * (dn + dv) * rkv);
    double const pairs = static_cast<double>(nh) * T * (T + 1) / 2.0;
    double const fa = proj + 2.0 * T * nh * (dn + dv) * rkv + 2.0 * pairs * (rkv + dr + rkv);
    double const fn = proj + 2.0 * T * nh * (dn + dv) * rkv + 2.0 * pairs * (dn + dr + dv);
    double const ra = fa / ta * 1e-12, rn = fn / tn * 1e-12;
    std::printf("%-7s %5lld | %7.2f ms %7.1f %5.1f%% | %7.2f ms %7.1f %5.1f%% | %7.2f ms %6.2f×\n",
                "", static_cast<long long>(T), ta * 1e3, ra, 100 * ra / peak_tflops, tn * 1e3, rn,
                100 * rn / peak_tflops, ts * 1e3, ts / tn);
  }
  cublasDestroy(blas);
  return 0;
}
