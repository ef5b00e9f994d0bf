// SPDX-License-Identifier: Apache-2.0
// Compile-must-fail cases for config::validate (routing case B03 and friends). Exactly one
// DEEPMOE_CASE_* macro is defined per ctest case; the test passes when the compiler stops with
// the static_assert message that names the field (see CMakeLists.txt here).
#include <deepmoe/config/validate.hpp>
#include <deepmoe/configs/tiny_moe.hpp>

using namespace deepmoe;

struct Case : configs::TinyMoe {  // TinyMoe: E = 8, G = 4, TG = 2, k = 2, noaux_tc
#if defined(DEEPMOE_CASE_GROUP_OF_ONE)
  static constexpr int n_group = 8;  // one expert per group: no top-2 sum
  static constexpr int topk_group = 1;
#elif defined(DEEPMOE_CASE_TOO_FEW_ELIGIBLE)
  static constexpr int topk_group = 1;  // 2 eligible experts < k = 3
  static constexpr int num_experts_per_tok = 3;
#elif defined(DEEPMOE_CASE_NOT_DIVISIBLE)
  static constexpr int n_group = 3;
  static constexpr int topk_group = 1;
#elif defined(DEEPMOE_CASE_TOPK_GROUP_ABOVE_N_GROUP)
  static constexpr int topk_group = 5;
#elif defined(DEEPMOE_CASE_TOPK_GROUP_ZERO)
  static constexpr int topk_group = 0;
#elif defined(DEEPMOE_CASE_GREEDY_WITH_GROUPS)
  static constexpr config::TopkMethod topk_method = config::TopkMethod::kGreedy;
#elif defined(DEEPMOE_CASE_FP8_WITHOUT_BLOCKS)
  using weight_t = float8_e4m3fn;
#elif defined(DEEPMOE_CASE_ODD_ROPE_DIM)
  static constexpr int qk_rope_head_dim = 7;
#elif defined(DEEPMOE_CASE_E5M2_WEIGHTS)
  using weight_t = float8_e5m2;
  static constexpr int weight_block_size = 128;
#elif defined(DEEPMOE_CASE_ACCEPTED)
  static constexpr int num_experts_per_tok = 4;  // E = 8, G = 4, TG = 2, k = 4 is valid
#endif
};

#if defined(DEEPMOE_CASE_WORKSPACE_OF_INVALID_CONFIG)
#include <deepmoe/moe/moe_layer.hpp>
struct BadGroups : configs::TinyMoe {
  static constexpr int n_group = 3;
};
deepmoe::moe::MoeWorkspace<BadGroups> workspace;  // declaring one is enough to fail
#elif defined(DEEPMOE_CASE_NOT_A_CONFIG)
struct NotAConfig {
  static constexpr int hidden_size = 64;
};
static_assert(config::validate<NotAConfig>());
#else
static_assert(config::validate<Case>());
#endif

int main() {
  return 0;
}
