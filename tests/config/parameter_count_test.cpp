// SPDX-License-Identifier: Apache-2.0
// Compile-time parameter accounting (docs/model.md §2), weight bytes and KV-cache bytes per token.
#include <catch2/catch.hpp>

#include <deepmoe/config/parameter_count.hpp>
#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/deepseek_v2_lite.hpp>
#include <deepmoe/configs/deepseek_v3.hpp>
#include <deepmoe/configs/kimi_k2.hpp>
#include <deepmoe/configs/moonlight_16b_a3b.hpp>

using namespace deepmoe;
using config::parameter_counts;

namespace {
/// n rounded to `digits` decimals of a billion, e.g. round_b(37'552'297'472, 2) == 3755.
constexpr std::int64_t round_b(std::int64_t n, int digits) {
  std::int64_t div = 1'000'000'000;
  for (int i = 0; i < digits; ++i)
    div /= 10;
  return (n + div / 2) / div;
}
}  // namespace

// DeepSeek-V3: the worked arithmetic of docs/model.md §2.
constexpr auto kV3 = parameter_counts<configs::DeepSeekV3>();
static_assert(kV3.attention == 187'107'328);
static_assert(kV3.dense_mlp == 396'361'728);
static_assert(kV3.expert == 44'040'192);
static_assert(kV3.moe_total == 11'320'164'608);
static_assert(kV3.moe_active == 398'196'992);
static_assert(kV3.total == 671'026'419'200);
static_assert(round_b(kV3.active, 2) == 3755);                    // 37.55B with embed and head
static_assert(round_b(kV3.active_without_embedding, 2) == 3663);  // 36.63B
static_assert(round_b(kV3.routed_experts, 1) == 6539);            // 653.9B
static_assert(round_b(kV3.mtp, 2) == 1161);                       // 11.61B unique MTP
// the other presets (docs/model.md §2, same formula)
constexpr auto kV2Lite = parameter_counts<configs::DeepSeekV2Lite>();
static_assert(round_b(kV2Lite.total, 2) == 1571 && round_b(kV2Lite.active, 2) == 266);
static_assert(round_b(kV2Lite.active_without_embedding, 2) == 245);
constexpr auto kMoonlight = parameter_counts<configs::Moonlight16BA3B>();
static_assert(round_b(kMoonlight.total, 2) == 1596 && round_b(kMoonlight.active, 2) == 291);
constexpr auto kKimi = parameter_counts<configs::KimiK2>();
static_assert(round_b(kKimi.total, 1) == 10264 && round_b(kKimi.active, 2) == 3286);

// KV cache per token: L · (rkv + dr) values of act_t; DeepSeek-V3 61·576·2 = 70,272 bytes.
static_assert(config::kv_cache_bytes_per_token<configs::DeepSeekV3>() == 70'272);
static_assert(config::kv_cache_bytes_per_token<configs::Moonlight16BA3B>() == 27 * 576 * 2);

// Weight bytes: fp32 = 4 bytes a parameter; bf16 = 2 (the fp32 correction bias excepted).
using V3Fp32 = config::WithPrecision<configs::DeepSeekV3, float, float>;
using V3Bf16 = config::WithPrecision<configs::DeepSeekV3, bfloat16, bfloat16>;
static_assert(config::weight_bytes<V3Fp32>() == 4 * kV3.total);
static_assert(config::weight_bytes<V3Bf16>() == 2 * kV3.total + 2 * 58 * 256);
static_assert(config::weight_bytes<configs::Moonlight16BA3B>() ==
              2 * kMoonlight.total + 2 * 26 * 64);

TEST_CASE("config::parameter_counts: DeepSeek-V3 FP8 checkpoint bytes", "[config]") {
  // fp8 linears (1 byte) + one fp32 scale per 128×128 block; the rest BF16. The checkpoint's scale
  // shapes: kv_a_proj_with_mqa [576, 7168] → [5, 56], q_b_proj [24576, 1536] → [192, 12].
  STATIC_REQUIRE(config::scale_block_count(576, 7168, 128) == 5 * 56);
  STATIC_REQUIRE(config::scale_block_count(24576, 1536, 128) == 192 * 12);
  constexpr std::int64_t bytes = config::weight_bytes<configs::DeepSeekV3>();
  // linear parameters: everything but embed, head, norms, gate and bias
  constexpr std::int64_t unquantized = kV3.embedding + kV3.lm_head + (2 * 61 + 1) * 7168 +
                                       61 * (1536 + 512) + 58 * (256 * 7168 + 256);
  constexpr std::int64_t quantized = kV3.total - unquantized;
  STATIC_REQUIRE(bytes > quantized + 2 * (unquantized - 58 * 256));
  // scales add about 1/4096 of a byte per quantized parameter (plus edge blocks)
  double const scale_bytes =
      static_cast<double>(bytes - quantized - 2 * (unquantized - 58 * 256) - 4 * 58 * 256);
  CHECK(scale_bytes / static_cast<double>(quantized) == Approx(4.0 / 16384).epsilon(0.02));
  // 673 GB for the 671B main model (MTP excluded): ~1 byte a parameter plus the BF16 tensors
  CHECK(round_b(bytes, 0) == 673);
}
