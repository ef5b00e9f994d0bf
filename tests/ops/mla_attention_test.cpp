// SPDX-License-Identifier: Apache-2.0
// MLA against a double-precision reference written from the math, the absorbed form against the
// naive one, causality (a token ignores later tokens, bitwise), RoPE's relative-position
// property, and errors.
#include <catch2/catch.hpp>

#include <deepmoe/config/with_precision.hpp>
#include <deepmoe/configs/tiny_moe.hpp>
#include <deepmoe/configs/tiny_v2_moe.hpp>
#include <deepmoe/ops/mla_attention.hpp>
#include <deepmoe/util/random_moe.hpp>

#include "reference/moe_reference.hpp"

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

using namespace deepmoe;

namespace {

/// Random attention weights of config C (owned), with `w` viewing them.
template <class C>
struct RandomMla {
  using W = typename C::weight_t;
  using A = typename C::act_t;
  static constexpr std::int64_t H = C::hidden_size, nh = C::num_attention_heads;
  static constexpr std::int64_t dq = C::qk_nope_head_dim + C::qk_rope_head_dim;
  static constexpr std::int64_t rq = C::q_lora_rank, rkv = C::kv_lora_rank;
  static constexpr std::int64_t dr = C::qk_rope_head_dim;
  static constexpr std::int64_t dkv = C::qk_nope_head_dim + C::v_head_dim;
  static constexpr int B = C::weight_block_size > 0 ? C::weight_block_size : 128;
  std::vector<util::OwnedLinear<W>> lin;
  std::vector<A> qn, kvn;
  MlaWeights<C> w;
  explicit RandomMla(std::uint64_t seed) {
    auto add = [&](std::int64_t r, std::int64_t c) {
      lin.emplace_back(seed + lin.size(), r, c, 1.0f / std::sqrt(float(c)), B);
    };
    add(rq > 0 ? rq : 1, H);
    add(nh * dq, rq > 0 ? rq : H);
    add(rkv + dr, H);
    add(nh * dkv, rkv);
    add(H, nh * C::v_head_dim);
    util::Rng rng(seed);
    for (std::int64_t i = 0; i < (rq > 0 ? rq : 1); ++i)
      qn.push_back(from_float<A>(1 + 0.2f * rng.uniform()));
    for (std::int64_t i = 0; i < rkv; ++i)
      kvn.push_back(from_float<A>(1 + 0.2f * rng.uniform()));
    if constexpr (rq > 0) {
      w.q_a_proj = lin[0].view();
      w.q_b_proj = lin[1].view();
      w.q_a_layernorm = VectorView<A const>(qn.data(), rq);
    } else {
      w.q_proj = lin[1].view();
    }
    w.kv_a_proj_with_mqa = lin[2].view();
    w.kv_b_proj = lin[3].view();
    w.o_proj = lin[4].view();
    w.kv_a_layernorm = VectorView<A const>(kvn.data(), rkv);
  }
};

/// y = W·x in double for a [r, c] weight.
std::vector<double> mv(std::vector<double> const& W, std::vector<double> const& x, std::int64_t r,
                       std::int64_t c) {
  std::vector<double> y(static_cast<std::size_t>(r), 0.0);
  for (std::int64_t i = 0; i < r; ++i)
    for (std::int64_t j = 0; j < c; ++j)
      y[i] += W[i * c + j] * x[j];
  return y;
}
std::vector<double> norm(std::vector<double> v, double eps, auto const& w) {
  double ss = 0;
  for (double a : v)
    ss += a * a;
  double const r = 1 / std::sqrt(ss / v.size() + eps);
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] *= r * to_float(w[i]);
  return v;
}
void rope(double* v, std::int64_t d, double pos, std::vector<float> const& f) {
  for (std::int64_t i = 0; i < d / 2; ++i) {
    double const th = static_cast<float>(pos) * f[i];
    double const a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * std::cos(th) - b * std::sin(th);
    v[2 * i + 1] = a * std::sin(th) + b * std::cos(th);
  }
}

/// The naive MLA in double.
template <class C>
std::vector<double> reference_mla(RandomMla<C> const& m, std::vector<float> const& x,
                                  std::vector<std::int64_t> const& pos) {
  using R = RandomMla<C>;
  std::int64_t const T = static_cast<std::int64_t>(pos.size());
  constexpr std::int64_t H = R::H, nh = R::nh, dq = R::dq, rq = R::rq, rkv = R::rkv, dr = R::dr;
  constexpr std::int64_t dn = C::qk_nope_head_dim, dv = C::v_head_dim;
  int const B = C::weight_block_size;
  auto W = [&](int i) {
    return reference::to_double(m.lin[static_cast<std::size_t>(i)].view(), B);
  };
  auto const wqa = W(0), wqb = W(1), wkva = W(2), wkvb = W(3), wo = W(4);
  auto const f = rope_inv_freq(dr, C::rope_theta, C::rope_scaling);
  double const scale = mla_softmax_scale(dq, C::rope_scaling);
  std::vector<std::vector<double>> q(T), c(T), kpe(T), kv(T);
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> xt(x.begin() + t * H, x.begin() + (t + 1) * H);
    q[t] = rq > 0 ? mv(wqb, norm(mv(wqa, xt, rq, H), C::rms_norm_eps, m.qn), nh * dq, rq)
                  : mv(wqb, xt, nh * dq, H);
    auto a = mv(wkva, xt, rkv + dr, H);
    c[t] = norm(std::vector<double>(a.begin(), a.begin() + rkv), C::rms_norm_eps, m.kvn);
    kpe[t].assign(a.begin() + rkv, a.end());
    rope(kpe[t].data(), dr, pos[t], f);
    for (std::int64_t h = 0; h < nh; ++h)
      rope(q[t].data() + h * dq + dn, dr, pos[t], f);
    kv[t] = mv(wkvb, c[t], nh * (dn + dv), rkv);
  }
  std::vector<double> out(static_cast<std::size_t>(T * H));
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> o(static_cast<std::size_t>(nh * dv), 0.0);
    for (std::int64_t h = 0; h < nh; ++h) {
      std::vector<double> s(T, -INFINITY);
      double mx = -INFINITY;
      for (std::int64_t u = 0; u < T; ++u) {
        if (pos[u] > pos[t])
          continue;
        double v = 0;
        for (std::int64_t i = 0; i < dn; ++i)
          v += q[t][h * dq + i] * kv[u][h * (dn + dv) + i];
        for (std::int64_t i = 0; i < dr; ++i)
          v += q[t][h * dq + dn + i] * kpe[u][i];
        s[u] = v * scale;
        mx = std::max(mx, s[u]);
      }
      double sum = 0;
      for (auto& v : s)
        sum += (v = std::isinf(v) ? 0 : std::exp(v - mx));
      for (std::int64_t u = 0; u < T; ++u)
        for (std::int64_t j = 0; j < dv; ++j)
          o[h * dv + j] += s[u] / sum * kv[u][h * (dn + dv) + dn + j];
    }
    auto const y = mv(wo, o, H, nh * dv);
    std::copy(y.begin(), y.end(), out.begin() + t * H);
  }
  return out;
}

template <class C>
std::vector<float> run(RandomMla<C> const& m, std::vector<float> const& x,
                       std::vector<std::int64_t> const& pos, MlaForm form) {
  std::int64_t const T = static_cast<std::int64_t>(pos.size());
  std::vector<float> out(static_cast<std::size_t>(T * C::hidden_size));
  Status const s = mla_attention<C>(MatrixView<float, kDyn, C::hidden_size>(out.data(), T),
                                    MatrixView<float const, kDyn, C::hidden_size>(x.data(), T),
                                    VectorView<std::int64_t const>(pos.data(), T), m.w, form);
  REQUIRE(s.ok());
  return out;
}

using TinyFp8 = config::WithPrecision<configs::TinyMoe, float8_e4m3fn, float>;

}  // namespace

TEMPLATE_TEST_CASE("ops::mla_attention: naive and absorbed forms match the double reference",
                   "[ops][mla]", configs::TinyMoe, configs::TinyV2Moe, TinyFp8) {
  using C = TestType;
  RandomMla<C> const m(31);
  std::int64_t const T = 9;
  auto const x = util::random_tokens<float>(32, T, C::hidden_size);
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 3);  // a chunk that starts at position 3
  auto const ref = reference_mla(m, x, pos);
  double scale = 0;
  for (double v : ref)
    scale = std::max(scale, std::abs(v));
  for (MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    auto const y = run(m, x, pos, form);
    for (std::size_t i = 0; i < y.size(); ++i) {
      // fp32 sums of a few hundred unit-scale products: ~1e-6 relative; 1e-5 leaves margin
      REQUIRE(std::abs(y[i] - ref[i]) <= 1e-5 * scale);
    }
  }
}

TEST_CASE("ops::mla_attention: causal, and invariant to where the sequence starts", "[ops][mla]") {
  using C = configs::TinyMoe;
  constexpr std::int64_t H = C::hidden_size;
  RandomMla<C> const m(41);
  std::int64_t const T = 12;
  auto const x = util::random_tokens<float>(42, T, H);
  std::vector<std::int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 0);
  auto const full = run(m, x, pos, MlaForm::kNaive);
  // the first 5 tokens alone: later tokens never influenced them, to the bit
  std::vector<float> const head(x.begin(), x.begin() + 5 * H);
  auto const first5 =
      run(m, head, std::vector<std::int64_t>(pos.begin(), pos.begin() + 5), MlaForm::kNaive);
  CHECK(std::memcmp(first5.data(), full.data(), first5.size() * sizeof(float)) == 0);
  // RoPE makes scores depend on relative positions only: shifting all by 1000 changes rounding
  std::vector<std::int64_t> shifted(pos);
  for (auto& p : shifted)
    p += 1000;
  auto const far = run(m, x, shifted, MlaForm::kNaive);
  double scale = 0;
  for (float v : full)
    scale = std::max(scale, double(std::abs(v)));
  for (std::size_t i = 0; i < far.size(); ++i)
    CHECK(std::abs(far[i] - full[i]) <= 1e-4 * scale);
}

TEST_CASE("ops::mla_attention: bad input is named", "[ops][mla]") {
  using C = configs::TinyMoe;
  constexpr std::int64_t H = C::hidden_size;
  RandomMla<C> m(51);
  auto const x = util::random_tokens<float>(52, 2, H);
  std::vector<float> out(2 * H);
  std::vector<std::int64_t> pos{0, -1};
  auto call = [&] {
    return mla_attention<C>(MatrixView<float, kDyn, H>(out.data(), 2),
                            MatrixView<float const, kDyn, H>(x.data(), 2),
                            VectorView<std::int64_t const>(pos.data(), 2), m.w);
  };
  CHECK_THAT(call().message(), Catch::Contains("positions[1] = -1"));
  pos[1] = 1;
  m.w.kv_b_proj.weight = MatrixView<float const>(m.w.kv_b_proj.weight.data(), 32, 128);
  CHECK_THAT(call().message(),
             Catch::Contains("self_attn.kv_b_proj.weight has shape [32, 128], expected [128, 32]"));
  m.w.kv_a_layernorm = VectorView<float const>(m.kvn.data(), 31);
  CHECK_THAT(call().message(), Catch::Contains("kv_a_layernorm.weight has 31 elements"));
}
