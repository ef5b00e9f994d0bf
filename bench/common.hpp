// SPDX-License-Identifier: Apache-2.0
// What every benchmark measures the same way: medians of repeated runs, and this machine's
// ceilings measured in the same run (memory read bandwidth, fp32 GEMM rate) for roofline ratios.
#pragma once

#include <deepmoe/backend/cpu/gemm_nt.hpp>

#include <omp.h>
#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <vector>

namespace bench {

namespace dm = deepmoe;
using Clock = std::chrono::steady_clock;

/// Ceilings measured in this run: memory read bandwidth [GB/s], fp32 GEMM [GFLOP/s].
struct Ceilings {
  double gbps, gflops;
};

/// Median wall time of fn() [s] over at least `min_reps` runs and about `budget` seconds.
inline double median_seconds(std::function<void()> const& fn, int min_reps, double budget) {
  std::vector<double> t;
  auto const start = Clock::now();
  while (static_cast<int>(t.size()) < min_reps ||
         (std::chrono::duration<double>(Clock::now() - start).count() < budget && t.size() < 50)) {
    auto const t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Memory read bandwidth [GB/s]: a sum over 1 GiB of floats, all threads, each thread reading
/// 8 streams at once (as the GEMM tiles read 8 weight rows) into 8 16-lane accumulators — the
/// access pattern of streaming weights (read-only; a STREAM triad, which also writes, reports
/// less).
inline double measure_bandwidth() {
  using f32x16 = dm::cpu::f32x16;
  constexpr std::size_t kStreams = 8, kChunk = 16;
  std::size_t const n = std::size_t{256} << 20;  // 256 Mi floats = 1 GiB
  std::vector<float> a(n, 1.0f);
  float volatile sink = 0;
  double const s = median_seconds(
      [&] {
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
          int const nt = omp_get_num_threads(), id = omp_get_thread_num();
          std::size_t const per = n / static_cast<std::size_t>(nt) / kStreams;
          float const* base = a.data() + static_cast<std::size_t>(id) * per * kStreams;
          f32x16 acc[kStreams] = {};
          for (std::size_t i = 0; i + kChunk <= per; i += kChunk) {
            for (std::size_t j = 0; j < kStreams; ++j) {
              f32x16 v;
              std::memcpy(&v, base + j * per + i, sizeof(v));
              acc[j] += v;
            }
          }
          f32x16 sum = {};
          for (auto const& v : acc)
            sum += v;
          for (int l = 0; l < 16; ++l)
            total += sum[l];
        }
        sink = total;
      },
      5, 2.0);
  static_cast<void>(sink);
  return sizeof(float) * static_cast<double>(n) / s * 1e-9;
}

/// fp32 GEMM rate [GFLOP/s]: Eigen SGEMM 2048 × 2048 × 2048, all threads.
inline double measure_gemm() {
  Eigen::setNbThreads(omp_get_max_threads());
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(2048, 2048), b = Eigen::MatrixXf::Random(2048, 2048);
  Eigen::MatrixXf c(2048, 2048);
  double const s = median_seconds([&] { c.noalias() = a * b; }, 3, 2.0);
  return 2.0 * 2048.0 * 2048.0 * 2048.0 / s * 1e-9;
}

}  // namespace bench
