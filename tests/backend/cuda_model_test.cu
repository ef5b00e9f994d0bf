// SPDX-License-Identifier: Apache-2.0
/// @file cuda_model_test.cu
/// @brief The whole model on the device (gpu::DeviceModel) and its new ops against the CPU:
/// - gpu::rms_norm and gpu::apply_rope against rms_norm and apply_rope: 1e-6 relative (fp32 in
///   another summation order; the device's cosf/sinf within 2 ulps of glibc's);
/// - DeviceModel on the Hugging Face fixtures (tests/fixtures/model, scripts/make_fixtures.py):
///   the logits of every reference sequence that starts at position 0, prefilled in one call, in
///   both MLA forms, to 1e-4 of the largest reference logit and the same argmax at every position —
///   hf_reference_test's tolerance for the CPU (fp32 arithmetic against a float64 reference);
/// - the cache rules: a sequence prefilled in pieces, decoded token by token, batched with
///   another or rewound gives bitwise the logits of one call (every op computes a row the same
///   way whatever else is in the batch, and the fp32 cache holds the same bits);
/// - a sequence of 530 tokens (keys across the attention core's 256-key chunks) against the CPU
///   Model to 1e-4, and split into calls bitwise equal to one call;
/// - DeepSeek-V3's head sizes (dn 128, dr 64, dv 128, rkv 512: the absorbed core's 512-wide
///   values) on a random checkpoint, against the CPU Model to 1e-4 of the largest logit; with a
///   bf16 cache on both sides to 1e-2 (a cache value rounded the other way moves a logit by
///   ~2⁻⁸ of its share);
/// - generate::Generator over the device model: greedy tokens equal the CPU Generator's;
/// - bad input: token ids, gaps, slots, capacity — refused before anything runs.
/// Without a CUDA device the program prints SKIPPED and exits 77 (cuda_test_main.cpp).
#include <catch2/catch.hpp>

#include <deepmoe/backend/cuda/model.cuh>
#include <deepmoe/generate/generator.hpp>
#include <deepmoe/util/random_checkpoint.hpp>

#include "support/compare.hpp"
#include "support/fixture_configs.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

using namespace deepmoe;
namespace fs = std::filesystem;

namespace {

using test::max_rel_diff;
using test::same_bits;

/// DeepSeek-V3's attention head sizes on a small model: 2 heads, H 128, q_lora_rank 96.
struct V3Heads : test::FixtureV3 {
  static constexpr int hidden_size = 128;
  static constexpr int num_attention_heads = 2;
  static constexpr int num_key_value_heads = 2;
  static constexpr int q_lora_rank = 96;
  static constexpr int kv_lora_rank = 512;
  static constexpr int qk_nope_head_dim = 128;
  static constexpr int qk_rope_head_dim = 64;
  static constexpr int v_head_dim = 128;
  static constexpr int num_nextn_predict_layers = 0;
};

/// V3Heads in DeepSeek-V3's fp8 format, experts as wide as the fp8 kernel's tiles (M 128).
struct V3HeadsFp8 : V3Heads {
  static constexpr int moe_intermediate_size = 128;
  static constexpr int weight_block_size = 128;
  using weight_t = float8_e4m3fn;
  using act_t = bfloat16;
};

// The fixtures: $DEEPMOE_FIXTURES_DIR when set (a copy of the tree elsewhere, e.g. on a GPU
// machine), else the source tree's.
fs::path fixture(std::string const& name) {
  char const* env = std::getenv("DEEPMOE_FIXTURES_DIR");
  return fs::path(env != nullptr ? env : DEEPMOE_FIXTURES_DIR) / "model" / name;
}

std::vector<std::int64_t> iota_from(std::int64_t p0, std::size_t n) {
  std::vector<std::int64_t> p(n);
  for (std::size_t i = 0; i < n; ++i)
    p[i] = p0 + static_cast<std::int64_t>(i);
  return p;
}

model::Sequence view(std::vector<std::int32_t> const& t, std::vector<std::int64_t> const& p,
                     int slot) {
  auto const n = static_cast<std::int64_t>(t.size());
  return {VectorView<std::int32_t const>(t.data(), n), VectorView<std::int64_t const>(p.data(), n),
          slot};
}

template <class C>
model::Model<C> load_ok(fs::path const& dir) {
  model::Model<C> m;
  Status const st = model::Model<C>::load(dir.string(), m);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return m;
}

// A random checkpoint of C (util::write_random_checkpoint with `o`), loaded; its files are
// removed at once (the loaded model keeps its mapping).
template <class C>
model::Model<C> random_model(std::string const& name, util::RandomCheckpointOptions const& o) {
  fs::path const dir = fs::temp_directory_path() / name;
  fs::remove_all(dir);
  REQUIRE(util::write_random_checkpoint<C>(dir.string(), o).ok());
  auto m = load_ok<C>(dir);
  fs::remove_all(dir);
  return m;
}

// The CPU Model's logits [T, V] of one sequence, every position.
template <class C>
std::vector<float> cpu_logits(model::Model<C>& m, model::Sequence const& seq) {
  std::int64_t const T = seq.tokens.extent(0), V = m.config().vocab_size;
  std::vector<float> out(static_cast<std::size_t>(T * V));
  REQUIRE(
      m.forward(std::span(&seq, 1), MatrixView<float>(out.data(), T, V), model::LogitsRows::kAll)
          .ok());
  return out;
}

template <class C>
gpu::DeviceModel<C> upload_ok(model::Model<C> const& m) {
  gpu::DeviceModel<C> d;
  Status const st = gpu::DeviceModel<C>::upload(m, d);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return d;
}

template <class C, class KV>
gpu::DeviceKvCache<C, KV> cache_ok(C const& cfg, int slots, std::int64_t capacity) {
  gpu::DeviceKvCache<C, KV> c;
  Status const st = gpu::DeviceKvCache<C, KV>::create(cfg, slots, capacity, c);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return c;
}

// Logits [rows, V] of `batch` on the device.
template <class C, class KV>
std::vector<float> device_logits(gpu::DeviceModel<C>& d, gpu::DeviceKvCache<C, KV>& cache,
                                 std::vector<model::Sequence> const& batch,
                                 model::LogitsRows which) {
  std::int64_t rows = 0;
  for (auto const& s : batch)
    rows += which == model::LogitsRows::kAll ? s.tokens.extent(0) : 1;
  std::int64_t const V = d.config().vocab_size;
  std::vector<float> out(static_cast<std::size_t>(rows * V));
  Status const st =
      d.forward(std::span(batch), cache, MatrixView<float>(out.data(), rows, V), which);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return out;
}

// Checks DeviceModel on fixture `name` loaded as C: every reference sequence in one call, on
// `kernels` (kSimt: fp32 rows, to 1e-4; kAuto with bf16 weights: bf16 rows on tensor cores, to
// `tolerance`).
template <class C>
void check_fixture(std::string const& name, gpu::ExpertKernel kernels = gpu::ExpertKernel::kSimt,
                   double tolerance = 1e-4) {
  fs::path const dir = fixture(name);
  auto const m = load_ok<C>(dir);
  auto d = upload_ok(m);
  d.set_kernels(kernels);
  io::SafetensorsFile ref;
  REQUIRE(io::SafetensorsFile::open((dir / "reference.safetensors").string(), ref).ok());
  std::ifstream in(dir / "reference.json");
  nlohmann::json const j = nlohmann::json::parse(in);
  std::int64_t const V = m.config().vocab_size;
  auto cache = cache_ok<C, float>(m.config(), 1, 64);
  double worst = 0;
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    d.set_mla_form(form);
    std::size_t s = 0;
    for (auto const& q : j.at("sequences")) {
      auto const tokens = q.at("tokens").get<std::vector<std::int32_t>>();
      auto const positions = q.at("positions").get<std::vector<std::int64_t>>();
      if (positions.front() != 0) {  // a sequence continuing at an offset: not one call
        ++s;
        continue;
      }
      cache.release(0);
      auto const ours =
          device_logits(d, cache, {view(tokens, positions, 0)}, model::LogitsRows::kAll);
      MatrixView<float const> r;
      REQUIRE(ref.matrix<float>("logits_" + std::to_string(s), r).ok());
      REQUIRE(static_cast<std::size_t>(r.size()) == ours.size());
      std::vector<float> const want(r.data(), r.data() + r.size());
      double const e = max_rel_diff(ours, want);
      CAPTURE(name, s, static_cast<int>(form), e);
      CHECK(e <= tolerance);
      worst = std::max(worst, e);
      for (std::int64_t t = 0; t < r.extent(0); ++t) {
        auto const* a = ours.data() + t * V;
        auto const* b = want.data() + t * V;
        CHECK(std::max_element(a, a + V) - a == std::max_element(b, b + V) - b);
      }
      ++s;
    }
  }
  std::printf("DeviceModel %-10s %-5s max relative error %.2e\n", name.c_str(),
              kernels == gpu::ExpertKernel::kSimt ? "fp32" : "bf16", worst);
}

}  // namespace

TEST_CASE("gpu::rms_norm and gpu::apply_rope against the CPU", "[model][ops]") {
  constexpr std::int64_t T = 5, D = 300;
  util::Rng rng(3);
  std::vector<float> x(T * D), w(D);
  for (float& v : x)
    v = 2.0f * rng.uniform();
  for (float& v : w)
    v = 1.0f + rng.uniform();
  std::vector<bfloat16> wb(w.begin(), w.end());
  std::vector<float> want(T * D);
  REQUIRE(rms_norm(MatrixView<float>(want.data(), T, D), MatrixView<float const>(x.data(), T, D),
                   VectorView<bfloat16 const>(wb.data(), D), 1e-6)
              .ok());
  gpu::DeviceBuffer<float> d_x, d_y;
  gpu::DeviceBuffer<bfloat16> d_w;
  REQUIRE(d_x.upload(std::span<float const>(x)).ok());
  REQUIRE(d_w.upload(std::span<bfloat16 const>(wb)).ok());
  REQUIRE(d_y.allocate(x.size()).ok());
  REQUIRE(gpu::rms_norm(d_y.data(), d_x.data(), d_w.data(), T, D, 1e-6, nullptr).ok());
  std::vector<float> got;
  REQUIRE(d_y.download(got).ok());
  CHECK(max_rel_diff(got, want) < 1e-6);

  // RoPE on the q_pe parts of 3 heads of [q_nope 32 | q_pe 16], YaRN, positions up to 5000
  constexpr int nh = 3, dn = 32, dr = 16, dq = dn + dr;
  std::vector<float> q(T * nh * dq);
  for (float& v : q)
    v = rng.uniform();
  std::vector<std::int64_t> const pos = {0, 1, 17, 4095, 5000};
  auto const rs = test::FixtureV3::rope_scaling;
  std::vector<float> const inv = rope_inv_freq(dr, 10000.0, rs);
  double const af = yarn_attention_factor(rs);
  std::vector<float> pe(T * nh * dr);
  for (std::int64_t t = 0; t < T; ++t)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < dr; ++i)
        pe[(t * nh + h) * dr + i] = q[t * nh * dq + h * dq + dn + i];
  REQUIRE(apply_rope(MatrixView<float>(pe.data(), T, nh * dr),
                     VectorView<std::int64_t const>(pos.data(), T),
                     VectorView<float const>(inv.data(), dr / 2), af)
              .ok());
  gpu::DeviceBuffer<float> d_q, d_inv;
  gpu::DeviceBuffer<std::int64_t> d_pos;
  REQUIRE(d_q.upload(std::span<float const>(q)).ok());
  REQUIRE(d_inv.upload(std::span<float const>(inv)).ok());
  REQUIRE(d_pos.upload(std::span<std::int64_t const>(pos)).ok());
  REQUIRE(gpu::apply_rope(d_q.data(), d_pos.data(), d_inv.data(), dr / 2,
                          {.ld = nh * dq, .first = dn, .stride = dq, .count = nh}, af, T, nullptr)
              .ok());
  REQUIRE(d_q.download(got).ok());
  double err = 0;
  for (std::int64_t t = 0; t < T; ++t)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < dq; ++i) {
        float const g = got[t * nh * dq + h * dq + i];
        float const e = i < dn ? q[t * nh * dq + h * dq + i] : pe[(t * nh + h) * dr + i - dn];
        err = std::max(err, std::fabs(double{g} - e));
      }
  CHECK(err < 1e-5);  // |x| < 1 and θ up to 5000 rad: a few ulps of the angle's sine
  // a segment that overruns the row is refused
  CHECK(!gpu::apply_rope(d_q.data(), d_pos.data(), d_inv.data(), dr / 2,
                         {.ld = nh * dq, .first = dn + 1, .stride = dq, .count = nh}, af, T,
                         nullptr)
             .ok());
}

TEST_CASE("DeviceModel: the Hugging Face fixtures' logits", "[model][hf]") {
  check_fixture<test::FixtureV3>("v3");
  check_fixture<test::FixtureV2Lite>("v2_lite");
  check_fixture<test::FixtureMoonlight>("moonlight");
  check_fixture<test::FixtureKimiK2>("kimi_k2");
  // bf16 rows on tensor cores (every projection whose K is a multiple of 32, the dense MLP, the
  // head): each rounding is 2⁻⁹ relative; through 2 layers the logits move by ~1e-3 of the
  // largest, and 1e-2 leaves room
  check_fixture<test::FixtureKimiK2>("kimi_k2", gpu::ExpertKernel::kAuto, 1e-2);
  check_fixture<test::FixtureV3>("v3_fp8");  // fp8 checkpoint dequantized at load
}

namespace {
// A sequence prefilled in pieces, decoded token by token, batched with another or rewound gives
// bitwise the logits of one call, in both MLA forms.
template <class C>
void check_invariance(std::string const& name, gpu::ExpertKernel kernels) {
  auto const m = load_ok<C>(fixture(name));
  auto d = upload_ok(m);
  d.set_kernels(kernels);
  constexpr std::int64_t V = C::vocab_size;
  std::vector<std::int32_t> const a = {5, 17, 200, 3, 3, 99, 42, 7, 128, 64, 1};
  std::vector<std::int32_t> const b = {250, 2, 8, 33, 111};
  auto cache = cache_ok<C, float>(m.config(), 3, 32);
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    d.set_mla_form(form);
    CAPTURE(name, static_cast<int>(form));
    auto const pa = iota_from(0, a.size());
    cache.release(0);
    auto const whole = device_logits(d, cache, {view(a, pa, 0)}, model::LogitsRows::kAll);
    CHECK(cache.length(0) == static_cast<std::int64_t>(a.size()));
    // 4 tokens, then one at a time, in slot 1
    cache.release(1);
    std::vector<std::int32_t> const head(a.begin(), a.begin() + 4);
    auto const ph = iota_from(0, 4);
    auto got = device_logits(d, cache, {view(head, ph, 1)}, model::LogitsRows::kAll);
    for (std::size_t i = 4; i < a.size(); ++i) {
      std::vector<std::int32_t> const t = {a[i]};
      std::vector<std::int64_t> const p = {static_cast<std::int64_t>(i)};
      auto const one = device_logits(d, cache, {view(t, p, 1)}, model::LogitsRows::kLast);
      got.insert(got.end(), one.begin(), one.end());
    }
    CHECK(same_bits(got, whole));
    // with b in the same batch (slot 2), a's last row and b's are their own
    cache.release(0);
    cache.release(2);
    auto const pb = iota_from(0, b.size());
    auto const both =
        device_logits(d, cache, {view(b, pb, 2), view(a, pa, 0)}, model::LogitsRows::kLast);
    std::vector<float> const last_a(both.begin() + V, both.end());
    CHECK(same_bits(last_a, std::vector<float>(whole.end() - V, whole.end())));
    cache.release(2);
    auto const alone_b = device_logits(d, cache, {view(b, pb, 2)}, model::LogitsRows::kLast);
    CHECK(same_bits(std::vector<float>(both.begin(), both.begin() + V), alone_b));
    // rewinding slot 0 to position 6 and recomputing from there
    std::vector<std::int32_t> const tail(a.begin() + 6, a.end());
    auto const pt = iota_from(6, tail.size());
    auto const again = device_logits(d, cache, {view(tail, pt, 0)}, model::LogitsRows::kAll);
    CHECK(same_bits(again, std::vector<float>(whole.begin() + 6 * V, whole.end())));
  }
}
}  // namespace

TEST_CASE("DeviceModel: pieces, decode, batches and rewinds give one call's bits",
          "[model][cache]") {
  check_invariance<test::FixtureV3>("v3", gpu::ExpertKernel::kSimt);
  check_invariance<test::FixtureKimiK2>("kimi_k2", gpu::ExpertKernel::kAuto);  // tensor cores
}

TEST_CASE("DeviceModel: DeepSeek-V3's head sizes against the CPU Model", "[model][v3]") {
  auto m = random_model<V3Heads>("deepmoe_cuda_model_v3heads", {.seed = 21, .mtp = false});
  auto d = upload_ok(m);
  constexpr std::int64_t V = V3Heads::vocab_size;
  std::vector<std::int32_t> const a = {9, 8, 7, 250, 1, 0, 77, 31, 5};
  auto const pa = iota_from(0, a.size());
  model::Sequence const seq = view(a, pa, 0);
  auto const cpu = cpu_logits(m, seq);
  auto cache = cache_ok<V3Heads, float>(m.config(), 1, 16);
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    d.set_mla_form(form);
    cache.release(0);
    auto const got = device_logits(d, cache, {seq}, model::LogitsRows::kAll);
    double const e = max_rel_diff(got, cpu);
    CAPTURE(static_cast<int>(form), e);
    CHECK(e < 1e-4);
    std::printf("DeviceModel V3 heads, form %d: max relative error %.2e\n", static_cast<int>(form),
                e);
  }
  // a bf16 cache on both sides: prefill 5, then decode the rest
  model::KvCache<V3Heads, bfloat16> host_cache;
  REQUIRE(model::KvCache<V3Heads, bfloat16>::create(m.config(), 1, 16, host_cache, false).ok());
  auto dev_cache = cache_ok<V3Heads, bfloat16>(m.config(), 1, 16);
  m.set_mla_form(MlaForm::kAbsorbed);
  d.set_mla_form(MlaForm::kAbsorbed);
  std::vector<float> want, got;
  for (std::int64_t p0 : {0, 5, 6, 7, 8}) {
    std::int64_t const n = p0 == 0 ? 5 : 1;
    std::vector<std::int32_t> const t(a.begin() + p0, a.begin() + p0 + n);
    auto const p = iota_from(p0, static_cast<std::size_t>(n));
    model::Sequence const s = view(t, p, 0);
    std::vector<float> w(static_cast<std::size_t>(V));
    REQUIRE(m.forward(std::span(&s, 1), host_cache, MatrixView<float>(w.data(), 1, V)).ok());
    want.insert(want.end(), w.begin(), w.end());
    auto const g = device_logits(d, dev_cache, {s}, model::LogitsRows::kLast);
    got.insert(got.end(), g.begin(), g.end());
  }
  double const e = max_rel_diff(got, want);
  CAPTURE(e);
  CHECK(e < 1e-2);
  std::printf("DeviceModel V3 heads, bf16 cache: max relative error %.2e\n", e);
}

TEST_CASE("DeviceModel: keys across the attention core's 256-key chunks", "[model][chunks]") {
  auto m = random_model<V3Heads>("deepmoe_cuda_model_chunks", {.seed = 23, .mtp = false});
  auto d = upload_ok(m);
  d.set_kernels(gpu::ExpertKernel::kSimt);
  constexpr std::int64_t V = V3Heads::vocab_size, T = 530;  // past positions 255/256, 511/512
  util::Rng rng(5);
  std::vector<std::int32_t> a(T);
  for (auto& t : a)
    t = static_cast<std::int32_t>(rng.next() % V);
  auto const pa = iota_from(0, a.size());
  model::Sequence const seq = view(a, pa, 0);
  auto const cpu = cpu_logits(m, seq);
  auto cache = cache_ok<V3Heads, float>(m.config(), 1, 600);
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    d.set_mla_form(form);
    cache.release(0);
    auto const whole = device_logits(d, cache, {seq}, model::LogitsRows::kAll);
    double const e = max_rel_diff(whole, cpu);
    CAPTURE(static_cast<int>(form), e);
    CHECK(e < 1e-4);
    std::printf("DeviceModel over %lld keys, form %d: max relative error %.2e\n",
                static_cast<long long>(T), static_cast<int>(form), e);
    // 250 tokens, 10 more, then one at a time: the same bits as one call
    cache.release(0);
    std::vector<float> got;
    for (std::int64_t p0 = 0; p0 < T;) {
      std::int64_t const n = p0 == 0 ? 250 : p0 == 250 ? 10 : 1;
      std::vector<std::int32_t> const t(a.begin() + p0, a.begin() + p0 + n);
      auto const p = iota_from(p0, static_cast<std::size_t>(n));
      auto const g = device_logits(d, cache, {view(t, p, 0)}, model::LogitsRows::kAll);
      got.insert(got.end(), g.begin(), g.end());
      p0 += n;
    }
    CHECK(same_bits(got, whole));
  }
}

TEST_CASE("DeviceModel: an fp8 checkpoint, e4m3 experts on tensor cores", "[model][fp8]") {
  auto m = random_model<V3HeadsFp8>("deepmoe_cuda_model_fp8", {.seed = 22,
                                                               .linear_dtype = io::Dtype::kF8E4M3,
                                                               .act_dtype = io::Dtype::kBF16,
                                                               .mtp = false});
  auto d = upload_ok(m);
  std::vector<std::int32_t> const a = {9, 8, 7, 250, 1, 0, 77, 31, 5};
  auto const pa = iota_from(0, a.size());
  model::Sequence const seq = view(a, pa, 0);
  auto const cpu = cpu_logits(m, seq);
  auto cache = cache_ok<V3HeadsFp8, float>(m.config(), 1, 16);
  auto const got = device_logits(d, cache, {seq}, model::LogitsRows::kAll);
  // the CPU keeps activations in fp32; the device quantizes the experts' rows and SwiGLU
  // activations to e4m3 per 1×128 (steps of up to 2⁻³ relative), as in the MoE layer test
  double const e = max_rel_diff(got, cpu);
  CAPTURE(e);
  CHECK(e < 0.1);
  std::printf("DeviceModel fp8 (e4m3 experts): max relative error %.2e against the CPU's fp32\n",
              e);
}

TEST_CASE("DeviceModel: greedy generation equals the CPU's, token for token", "[model][generate]") {
  using C = test::FixtureV3;
  auto m = load_ok<C>(fixture("v3"));
  auto d = upload_ok(m);
  d.set_kernels(gpu::ExpertKernel::kSimt);  // the CPU's arithmetic: the same argmax everywhere
  auto run = [](auto& model, auto& gen) {
    std::vector<std::vector<std::int32_t>> out(3);
    generate::GeneratorOptions const opt{.max_batch = 2, .max_sequence = 40, .prefill_chunk = 3};
    REQUIRE(std::remove_cvref_t<decltype(gen)>::create(model, opt, gen).ok());
    std::vector<std::vector<std::int32_t>> const prompts = {
        {5, 17, 200, 3, 3, 99, 42}, {250, 2, 8}, {9, 9, 9, 9, 9, 9, 9, 9, 9, 9}};
    for (auto const& p : prompts) {
      int id = -1;
      REQUIRE(gen.add({p, {}, 12, {}}, id).ok());
    }
    while (!gen.done()) {
      std::vector<generate::Event> events;
      Status const st = gen.step(events);
      INFO(st.to_string());
      REQUIRE(st.ok());
      for (auto const& e : events)
        out[static_cast<std::size_t>(e.request)].push_back(e.token);
    }
    return out;
  };
  generate::Generator<C, float> cpu;
  generate::Generator<C, float, gpu::DeviceModel<C>> gpu_gen;
  auto const want = run(m, cpu);
  auto const got = run(d, gpu_gen);
  CHECK(got == want);
  CHECK(want[0].size() == 12);
  // speculation needs the MTP modules, which stay on the CPU
  generate::Generator<C, float, gpu::DeviceModel<C>> spec;
  CHECK(
      generate::Generator<C, float, gpu::DeviceModel<C>>::create(d, {.speculative_mtp = true}, spec)
          .code() == StatusCode::kInvalidArgument);
}

TEST_CASE("DeviceModel: bad input gets a clear error", "[model][errors]") {
  fs::path const dir = fixture("moonlight");
  auto const m = load_ok<test::FixtureMoonlight>(dir);
  auto d = upload_ok(m);
  auto cache = cache_ok<test::FixtureMoonlight, float>(m.config(), 2, 8);
  constexpr std::int64_t V = test::FixtureMoonlight::vocab_size;
  std::vector<float> out(2 * V);
  auto run = [&](std::vector<model::Sequence> const& batch) {
    return d.forward(std::span(batch), cache,
                     MatrixView<float>(out.data(), static_cast<std::int64_t>(batch.size()), V));
  };
  std::vector<std::int32_t> const bad = {3, 256};
  std::vector<std::int64_t> const p01 = {0, 1};
  Status const st = run({view(bad, p01, 0)});
  CHECK(st.code() == StatusCode::kOutOfRange);
  CHECK(st.message().find("token id 256") != std::string::npos);
  std::vector<std::int32_t> const ok = {3, 4};
  std::vector<std::int64_t> const p23 = {2, 3};
  Status const gap = run({view(ok, p23, 0)});  // slot 0 is empty: positions 0..1 are missing
  CHECK(gap.code() == StatusCode::kInvalidArgument);
  CHECK(gap.message().find("missing") != std::string::npos);
  Status const twice = run({view(ok, p01, 1), view(ok, p01, 1)});
  CHECK(twice.message().find("another sequence") != std::string::npos);
  std::vector<std::int64_t> const p_gap = {0, 2};
  Status const jump = run({view(ok, p_gap, 0)});
  CHECK(jump.message().find("consecutive") != std::string::npos);
  std::vector<std::int32_t> const many(9, 5);
  auto const p9 = iota_from(0, 9);
  Status const full = run({view(many, p9, 0)});
  CHECK(full.code() == StatusCode::kOutOfRange);
  CHECK(cache.length(0) == 0);  // nothing ran
  REQUIRE(run({view(ok, p01, 0)}).ok());
  CHECK(cache.length(0) == 2);
}
