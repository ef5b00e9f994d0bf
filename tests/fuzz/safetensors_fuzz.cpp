// SPDX-License-Identifier: Apache-2.0
// libFuzzer target: any byte string given to SafetensorsFile::from_bytes either is rejected
// with a Status or yields tensors whose bytes lie inside the input and match their shapes.
#include <deepmoe/io/safetensors.hpp>

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  using namespace deepmoe::io;
  SafetensorsFile f;
  auto const bytes = std::span(reinterpret_cast<std::byte const*>(data), size);
  if (!SafetensorsFile::from_bytes("fuzz.safetensors", bytes, f).ok()) {
    return 0;
  }
  for (auto const& t : f.tensors()) {
    auto const b = f.bytes(t);
    if (b.data() < bytes.data() || b.data() + b.size() > bytes.data() + bytes.size() ||
        static_cast<std::int64_t>(b.size()) != t.numel() * dtype_size(t.dtype)) {
      std::abort();
    }
  }
  return 0;
}
