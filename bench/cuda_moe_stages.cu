// SPDX-License-Identifier: Apache-2.0
// bench/cuda_moe_stages: the CUDA backend's MoE stages at DeepSeek-V3 shapes (H 7168, 256
// experts top-8, groups 8/4), for decode (T = 1…128) and prefill (T = 4096): the router from
// fp32 logits, the dispatch plan (CUB radix sort, histogram, scan), the gather of bf16 token
// rows into fp32 expert order, and the combine back into bf16 token rows. The expert GEMMs are
// not part of the backend yet, so the whole layer is not timed here.
//
// Times: medians of 20 runs after 3 warm-ups, cudaEvent on one stream. Bytes moved (the
// roofline for these memory-bound stages), with R = T·K:
//   router   T·E·4 (logits) + T·K·8 (ids, weights)
//   plan     ≈ 4 passes over R int32 (sort in and out, histogram, inverse)  — R·16
//   gather   R·H·(2 + 4)  (bf16 in, fp32 out)
//   combine  R·H·4 + T·H·2 + T·K·8  (fp32 expert rows in, bf16 out, weights and positions)
// GB/s is over the device-to-device copy bandwidth measured in the same run (cudaMemcpy of
// 1 GiB), the baseline every memory-bound kernel is compared with.
#include <deepmoe/backend/cuda/buffer.cuh>
#include <deepmoe/backend/cuda/combine.cuh>
#include <deepmoe/backend/cuda/permute.cuh>
#include <deepmoe/backend/cuda/router.cuh>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <span>
#include <vector>

namespace dm = deepmoe;
using C = dm::configs::DeepSeekV3;

namespace {

int fail(dm::Status const& st) {
  std::fprintf(stderr, "%s\n", st.to_string().c_str());
  return 1;
}

// Median time [s] of fn on the default stream.
double median_seconds(std::function<void()> const& fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i)
    fn();
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main() {
  if (!dm::gpu::device_available()) {
    std::puts("SKIPPED: no CUDA device");
    return 77;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  constexpr int E = C::n_routed_experts, K = C::num_experts_per_tok, H = C::hidden_size;
  // the copy ceiling: 1 GiB device to device (read + write)
  std::size_t const big = std::size_t{1} << 30;
  dm::gpu::DeviceBuffer<unsigned char> src, dst;
  if (auto st = src.allocate(big); !st.ok())
    return fail(st);
  if (auto st = dst.allocate(big); !st.ok())
    return fail(st);
  cudaMemset(src.data(), 1, big);
  double const copy_s =
      median_seconds([&] { cudaMemcpy(dst.data(), src.data(), big, cudaMemcpyDeviceToDevice); });
  double const copy_gbps = 2.0 * static_cast<double>(big) / copy_s * 1e-9;
  std::printf("%s (sm_%d%d), DeepSeek-V3 MoE stages: H %d, E %d, top-%d; device copy %.0f GB/s\n\n",
              prop.name, prop.major, prop.minor, H, E, K, copy_gbps);
  std::printf("%6s | %-8s %9s %9s %7s\n", "T", "stage", "us", "GB/s", "of copy");
  for (std::int64_t T : {1, 8, 32, 128, 4096}) {
    std::int64_t const R = T * K;
    dm::util::Rng rng(static_cast<std::uint64_t>(T));
    std::vector<float> logits(static_cast<std::size_t>(T * E)), bias(E);
    for (float& z : logits)
      z = 4.0f * rng.uniform();
    for (float& b : bias)
      b = 0.1f * rng.uniform();
    std::vector<dm::bfloat16> x(static_cast<std::size_t>(T * H));
    for (auto& v : x)
      v = dm::bfloat16(rng.unit());
    dm::gpu::DeviceBuffer<float> d_logits, d_bias, d_w, d_rows;
    dm::gpu::DeviceBuffer<std::int32_t> d_ids, d_counts, d_offsets, d_p2e, d_e2p;
    dm::gpu::DeviceBuffer<unsigned long long> d_failed;
    dm::gpu::DeviceBuffer<dm::bfloat16> d_x, d_y;
    dm::gpu::DeviceBuffer<unsigned char> d_temp;
    for (dm::Status st :
         {d_logits.upload(std::span<float const>(logits)),
          d_bias.upload(std::span<float const>(bias)), d_x.upload(std::span<dm::bfloat16 const>(x)),
          d_w.allocate(static_cast<std::size_t>(R)), d_ids.allocate(static_cast<std::size_t>(R)),
          d_counts.allocate(E), d_offsets.allocate(E + 1),
          d_p2e.allocate(static_cast<std::size_t>(R)), d_e2p.allocate(static_cast<std::size_t>(R)),
          d_failed.allocate(1), d_rows.allocate(static_cast<std::size_t>(R * H)),
          d_y.allocate(static_cast<std::size_t>(T * H))})
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
    struct Stage {
      char const* name;
      double bytes;
      std::function<void()> run;
    };
    double const dR = static_cast<double>(R), dT = static_cast<double>(T);
    Stage const stages[] = {
        {"router", dT * E * 4 + dR * 8,
         [&] {
           (void)dm::gpu::route_topk<C>(d_ids.data(), d_w.data(), d_logits.data(), d_bias.data(), T,
                                        d_failed.data(), 0);
         }},
        {"plan", dR * 16,
         [&] {
           (void)dm::gpu::build_dispatch_plan<C>(d_temp.data(), bytes, plan, d_ids.data(), T, 0);
         }},
        {"gather", dR * H * 6,
         [&] { (void)dm::gpu::permute<C, dm::bfloat16>(d_rows.data(), d_x.data(), plan, T, 0); }},
        {"combine", dR * H * 4 + dT * H * 2 + dR * 8,
         [&] {
           (void)dm::gpu::combine<C, dm::bfloat16>(d_y.data(), d_rows.data(), d_w.data(), plan,
                                                   nullptr, T, 0);
         }},
    };
    for (Stage const& s : stages) {
      double const t = median_seconds(s.run);
      if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
        return fail(dm::gpu::check(e, s.name, __FILE__, __LINE__));
      double const gbps = s.bytes / t * 1e-9;
      std::printf("%6lld | %-8s %9.1f %9.1f %6.1f%%\n", static_cast<long long>(T), s.name, t * 1e6,
                  gbps, 100 * gbps / copy_gbps);
    }
  }
  return 0;
}
