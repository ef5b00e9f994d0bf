// SPDX-License-Identifier: Apache-2.0
#include <catch2/catch.hpp>

#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <vector>

using namespace deepmoe;

TEST_CASE("core::TensorView: static and dynamic extents, row-major indexing", "[core]") {
  std::vector<float> v(24);
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(i);
  TensorView<float, Extents<kDyn, 3, 4>> const t(v.data(), 2);
  STATIC_REQUIRE(decltype(t)::rank == 3);
  STATIC_REQUIRE(Extents<kDyn, 3, 4>::rank_dynamic == 1);
  CHECK(t.extent(0) == 2);
  CHECK(t.extent(2) == 4);
  CHECK(t.size() == 24);
  CHECK(t(1, 2, 3) == 23.0f);
  MatrixView<float const, kDyn, 4> const m(v.data(), 6);  // read-only view
  CHECK(m.row(5)[1] == 21.0f);
  MatrixView<float, kDyn, 4> const w(v.data(), 6);
  MatrixView<float const, kDyn, 4> const c = w;  // non-const converts to const
  CHECK(c.data() == v.data());
  MatrixView<float> const empty;
  CHECK(empty.empty());
  CHECK(empty.data() == nullptr);
}

TEST_CASE("core::Status: codes and messages", "[core]") {
  Status const ok;
  CHECK(ok.ok());
  CHECK(ok.to_string() == "ok");
  Status const bad = invalid_argument("x has 3 rows");
  CHECK_FALSE(bad.ok());
  CHECK(bad.to_string() == "invalid argument: x has 3 rows");
}

TEST_CASE("core::TensorView::of takes every extent and keeps the dynamic ones", "[core]") {
  float data[12] = {};
  auto const a = deepmoe::MatrixView<float, deepmoe::kDyn, 4>::of(data, 3, 4);
  STATIC_REQUIRE(decltype(a)::extents_type::rank_dynamic == 1);
  CHECK(a.extent(0) == 3);
  CHECK(a.extent(1) == 4);
  auto const b = deepmoe::MatrixView<float, 2, deepmoe::kDyn>::of(data, 2, 6);
  CHECK(b.extent(0) == 2);
  CHECK(b.extent(1) == 6);
  CHECK(&b(1, 0) == data + 6);
  auto const c = deepmoe::MatrixView<float>::of(data, 6, 2);
  CHECK(c.size() == 12);
  auto const d = deepmoe::VectorView<float, 12>::of(data, 12);
  CHECK(d.size() == 12);
}
