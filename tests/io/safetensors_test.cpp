// SPDX-License-Identifier: Apache-2.0
// safetensors reading and writing: round trips, sharded checkpoints, and each kind of malformed
// file giving an error that names the file and tensor.
#include <catch2/catch.hpp>

#include <deepmoe/io/safetensors.hpp>
#include <deepmoe/io/weight_map.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace deepmoe;
using namespace deepmoe::io;
namespace fs = std::filesystem;

namespace {

/// A fresh temporary directory, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("deepmoe_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

template <class T>
std::span<std::byte const> as_bytes(std::vector<T> const& v) {
  return std::as_bytes(std::span(v));
}

/// A file made of an 8-byte length, `header` and `data_size` zero bytes.
std::vector<std::byte> raw_file(std::string const& header, std::size_t data_size,
                                std::uint64_t length_override = ~std::uint64_t{0}) {
  std::uint64_t const n = length_override == ~std::uint64_t{0} ? header.size() : length_override;
  std::vector<std::byte> f(8 + header.size() + data_size, std::byte{0});
  for (int i = 0; i < 8; ++i)
    f[static_cast<std::size_t>(i)] = static_cast<std::byte>(n >> (8 * i));
  std::memcpy(f.data() + 8, header.data(), header.size());
  return f;
}

std::string error_of(std::vector<std::byte> const& bytes) {
  SafetensorsFile f;
  Status const s = SafetensorsFile::from_bytes("bad.safetensors", bytes, f);
  return s.ok() ? std::string("ok") : s.message();
}

}  // namespace

TEST_CASE("io::safetensors: write, map and view", "[io][safetensors]") {
  TempDir dir;
  std::vector<float> a{1, 2, 3, 4, 5, 6};
  std::vector<bfloat16> b{bfloat16(0.5f), bfloat16(-1.0f), bfloat16(2.0f)};
  std::vector<float8_e4m3fn> q(15);
  for (std::size_t i = 0; i < q.size(); ++i)
    q[i].bits = static_cast<std::uint8_t>(i);
  std::vector<TensorToWrite> const t{{"a", Dtype::kF32, {2, 3}, as_bytes(a)},
                                     {"b", Dtype::kBF16, {3}, as_bytes(b)},
                                     {"q", Dtype::kF8E4M3, {3, 5}, as_bytes(q)}};
  std::string const path = (dir.path / "x.safetensors").string();
  REQUIRE(write_safetensors(path, t, {{"format", "pt"}}).ok());
  CHECK_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));
  SafetensorsFile f;
  REQUIRE(SafetensorsFile::open(path, f).ok());
  CHECK(f.tensors().size() == 3);
  CHECK(f.metadata().at("format") == "pt");
  MatrixView<float const> va;
  REQUIRE(f.matrix<float>("a", va).ok());
  CHECK(va.extent(0) == 2);
  CHECK(va(1, 2) == 6.0f);
  MatrixView<bfloat16 const> vb;
  REQUIRE(f.matrix<bfloat16>("b", vb).ok());
  CHECK(vb.extent(0) == 1);
  CHECK(to_float(vb(0, 1)) == -1.0f);
  MatrixView<float8_e4m3fn const> vq;
  REQUIRE(f.matrix<float8_e4m3fn>("q", vq).ok());
  CHECK(vq(2, 4).bits == 14);
  // wrong type, missing name
  CHECK_THAT(f.matrix<bfloat16>("a", vb).message(), Catch::Contains("'a' is F32, expected BF16"));
  CHECK_THAT(f.matrix<float>("nope", va).message(), Catch::Contains("no tensor 'nope'"));
  // rewriting replaces the file atomically
  std::vector<float> c{7};
  std::vector<TensorToWrite> const t2{{"c", Dtype::kF32, {1}, as_bytes(c)}};
  REQUIRE(write_safetensors(path, t2).ok());
  SafetensorsFile g;
  REQUIRE(SafetensorsFile::open(path, g).ok());
  CHECK(g.tensors().size() == 1);
}

TEST_CASE("io::safetensors: malformed files are named errors", "[io][safetensors]") {
  CHECK_THAT(error_of(std::vector<std::byte>(5)), Catch::Contains("truncated"));
  CHECK_THAT(error_of(raw_file("{}", 0, 1000)), Catch::Contains("header length 1000 exceeds"));
  CHECK_THAT(error_of(raw_file("{not json", 0)), Catch::Contains("not a JSON object"));
  CHECK(error_of(raw_file("{}", 0)) == "ok");
  auto entry = [](std::string const& body) { return "{\"w\": {" + body + "}}"; };
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"Q4","shape":[1],"data_offsets":[0,1])"), 1)),
             Catch::Contains("tensor 'w': unknown dtype 'Q4'"));
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"), 4)),
             Catch::Contains("outside the data area of 4 bytes"));
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), 8)),
             Catch::Contains("holds 8 bytes but its shape [3] of F32 needs 12"));
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), 8)),
             Catch::Contains("not an integer"));
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), 8)),
             Catch::Contains("outside the data area"));
  CHECK_THAT(error_of(raw_file(entry(R"("dtype":"F32","shape":[2])"), 8)),
             Catch::Contains("data_offsets must be two unsigned integers"));
  CHECK_THAT(error_of(raw_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                               R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                               R"("b":{"dtype":"U8","shape":[4],"data_offsets":[12,16]}})",
                               16)),
             Catch::Contains("tensors 'a' and 'b' overlap"));
  CHECK_THAT(error_of(raw_file(R"({"__metadata__": {"k": 3}})", 0)),
             Catch::Contains("__metadata__['k'] is not a string"));
  SafetensorsFile f;
  Status const missing = SafetensorsFile::open("/nonexistent/x.safetensors", f);
  CHECK(missing.code() == StatusCode::kIoError);
  CHECK_THAT(missing.message(), Catch::Contains("/nonexistent/x.safetensors: cannot open"));
}

TEST_CASE("io::WeightMap: sharded checkpoints through model.safetensors.index.json",
          "[io][safetensors]") {
  TempDir dir;
  std::vector<float8_e4m3fn> w(4);
  std::vector<float> s{0.5f}, n{1, 1};
  std::vector<TensorToWrite> const shard1{{"layer.w.weight", Dtype::kF8E4M3, {2, 2}, as_bytes(w)},
                                          {"norm.weight", Dtype::kF32, {2}, as_bytes(n)}};
  std::vector<TensorToWrite> const shard2{
      {"layer.w.weight_scale_inv", Dtype::kF32, {1, 1}, as_bytes(s)}};
  REQUIRE(
      write_safetensors((dir.path / "model-00001-of-000002.safetensors").string(), shard1).ok());
  REQUIRE(
      write_safetensors((dir.path / "model-00002-of-000002.safetensors").string(), shard2).ok());
  auto write_index = [&](std::string const& body) {
    std::ofstream(dir.path / "model.safetensors.index.json") << body;
  };
  write_index(R"({"metadata": {"total_size": 24}, "weight_map": {
      "layer.w.weight": "model-00001-of-000002.safetensors",
      "norm.weight": "model-00001-of-000002.safetensors",
      "layer.w.weight_scale_inv": "model-00002-of-000002.safetensors"}})");
  WeightMap m;
  REQUIRE(WeightMap::open(dir.path.string(), m).ok());
  CHECK(m.size() == 3);
  MatrixView<float const> scale;
  REQUIRE(m.matrix<float>("layer.w.weight_scale_inv", scale).ok());  // in the other shard
  CHECK(scale(0, 0) == 0.5f);
  CHECK_THAT(m.matrix<float>("absent", scale).message(), Catch::Contains("no tensor 'absent'"));

  write_index(R"({"weight_map": {"ghost": "model-00002-of-000002.safetensors"}})");
  Status const ghost = WeightMap::open(dir.path.string(), m);
  CHECK_THAT(ghost.message(), Catch::Contains("maps 'ghost' to model-00002-of-000002.safetensors, "
                                              "which does not contain it"));
  write_index(R"({"weight_map": {"x": "model-00009-of-000009.safetensors"}})");
  CHECK(WeightMap::open(dir.path.string(), m).code() == StatusCode::kIoError);
  TempDir empty;
  CHECK_THAT(WeightMap::open(empty.path.string(), m).message(),
             Catch::Contains("neither model.safetensors nor model.safetensors.index.json"));
}
