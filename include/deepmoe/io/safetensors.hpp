// SPDX-License-Identifier: Apache-2.0
/// @file safetensors.hpp
/// @brief Reading and writing safetensors files: validated header, memory-mapped zero-copy
/// tensor views, atomic writes.
///
/// Format (huggingface/safetensors): an 8-byte little-endian u64 N, an N-byte JSON header
/// `{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
/// {string: string}}`, then the data area; offsets are relative to the data area, tensors are
/// row-major and do not overlap. Every structural property is checked when a file is opened,
/// so a view handed out later is always inside the file and of the size its shape says.
/// Errors name the file and the tensor.
#pragma once

#include <deepmoe/core/numeric_types.hpp>
#include <deepmoe/core/status.hpp>
#include <deepmoe/core/tensor_view.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace io {

/// The element types of the safetensors format.
enum class Dtype {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kF8E4M3,
  kF8E5M2
};

/// The format's name of a dtype ("BF16", "F8_E4M3", ...).
constexpr std::string_view to_string(Dtype d) noexcept {
  constexpr std::string_view names[] = {"BOOL", "U8",   "I8",  "U16",     "I16",
                                        "F16",  "BF16", "U32", "I32",     "F32",
                                        "U64",  "I64",  "F64", "F8_E4M3", "F8_E5M2"};
  return names[static_cast<int>(d)];
}
/// Bytes per element.
constexpr std::int64_t dtype_size(Dtype d) noexcept {
  constexpr std::int64_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 1, 1};
  return sizes[static_cast<int>(d)];
}
/// The dtype named `s`, or nothing for an unknown name.
inline std::optional<Dtype> parse_dtype(std::string_view s) noexcept {
  for (int i = 0; i <= static_cast<int>(Dtype::kF8E5M2); ++i) {
    if (to_string(static_cast<Dtype>(i)) == s) {
      return static_cast<Dtype>(i);
    }
  }
  return std::nullopt;
}
/// The dtype of a deepmoe element type (float, bfloat16, float8_e4m3fn, float8_e5m2).
template <class T>
constexpr Dtype dtype_of() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>)
    return Dtype::kF32;
  else if constexpr (std::is_same_v<U, bfloat16>)
    return Dtype::kBF16;
  else if constexpr (std::is_same_v<U, float16>)
    return Dtype::kF16;
  else if constexpr (std::is_same_v<U, float8_e4m3fn>)
    return Dtype::kF8E4M3;
  else if constexpr (std::is_same_v<U, float8_e5m2>)
    return Dtype::kF8E5M2;
  else
    static_assert(sizeof(T) == 0, "dtype_of: no safetensors dtype for this type");
}

/// One tensor's header entry; offsets are bytes from the start of the data area.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;  ///< row-major extents
  std::int64_t begin = 0;           ///< [bytes]
  std::int64_t end = 0;             ///< [bytes], end − begin = product(shape) · dtype_size
  /// Number of elements: the product of the shape (1 for a scalar).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape)
      n *= s;
    return n;
  }
};

/// A safetensors file opened read-only: its validated header and a view of its bytes
/// (memory-mapped by open(); borrowed by from_bytes()). Move-only.
class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      tensors_ = std::move(o.tensors_);
      metadata_ = std::move(o.metadata_);
      bytes_ = std::exchange(o.bytes_, {});
      data_offset_ = o.data_offset_;
      mapped_ = std::exchange(o.mapped_, false);
    }
    return *this;
  }
  SafetensorsFile(SafetensorsFile const&) = delete;
  SafetensorsFile& operator=(SafetensorsFile const&) = delete;
  ~SafetensorsFile() { unmap(); }

  /// Opens and memory-maps `path`, then validates it (from_bytes). kIoError if the file cannot
  /// be opened or mapped; invalid_argument naming the file (and tensor) if it is malformed.
  static Status open(std::string const& path, SafetensorsFile& out) {
    int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return Status(StatusCode::kIoError, path + ": cannot open (" + std::strerror(errno) + ")");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return Status(StatusCode::kIoError, path + ": cannot stat (" + std::strerror(errno) + ")");
    }
    std::size_t const size = static_cast<std::size_t>(st.st_size);
    void* p = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
    ::close(fd);
    if (p == MAP_FAILED) {
      return Status(StatusCode::kIoError, path + ": cannot mmap (" + std::strerror(errno) + ")");
    }
    SafetensorsFile f;
    f.mapped_ = size > 0;
    Status const s = f.parse(path, {static_cast<std::byte const*>(p), size});
    if (!s.ok()) {
      return s;
    }
    out = std::move(f);
    return {};
  }

  /// Validates the bytes of a whole file held in memory (not copied: they must outlive the
  /// object). `path` names it in messages.
  static Status from_bytes(std::string const& path, std::span<std::byte const> bytes,
                           SafetensorsFile& out) {
    SafetensorsFile f;
    DEEPMOE_RETURN_IF_ERROR(f.parse(path, bytes));
    out = std::move(f);
    return {};
  }

  std::string const& path() const noexcept { return path_; }
  /// Tensors, in name order.
  std::vector<TensorInfo> const& tensors() const noexcept { return tensors_; }
  /// `__metadata__` (string to string).
  std::map<std::string, std::string> const& metadata() const noexcept { return metadata_; }
  /// The entry of tensor `name`, or null.
  TensorInfo const* find(std::string_view name) const noexcept {
    auto const it = std::find_if(tensors_.begin(), tensors_.end(),
                                 [&](TensorInfo const& t) { return t.name == name; });
    return it == tensors_.end() ? nullptr : &*it;
  }
  /// The raw bytes of a tensor of this file.
  std::span<std::byte const> bytes(TensorInfo const& t) const noexcept {
    return bytes_.subspan(static_cast<std::size_t>(data_offset_ + t.begin),
                          static_cast<std::size_t>(t.end - t.begin));
  }

  /// A zero-copy [rows, cols] view of tensor `name` as T (its dtype must be dtype_of<T>()); a
  /// rank-1 tensor [n] is viewed as [1, n], a rank-0 one as [1, 1].
  /// @returns invalid_argument naming file and tensor when it is missing, of another dtype, of
  ///          rank > 2, or misaligned for T.
  template <class T>
  Status matrix(std::string_view name, MatrixView<T const>& out) const {
    TensorInfo const* t = find(name);
    if (t == nullptr) {
      return invalid_argument(path_ + ": no tensor '" + std::string(name) + "'");
    }
    if (t->dtype != dtype_of<T>()) {
      return invalid_argument(path_ + ": tensor '" + t->name + "' is " +
                              std::string(to_string(t->dtype)) + ", expected " +
                              std::string(to_string(dtype_of<T>())));
    }
    if (t->shape.size() > 2) {
      return invalid_argument(path_ + ": tensor '" + t->name + "' has rank " +
                              std::to_string(t->shape.size()) + ", expected 1 or 2");
    }
    auto const b = bytes(*t);
    if (reinterpret_cast<std::uintptr_t>(b.data()) % alignof(T) != 0) {
      return invalid_argument(path_ + ": tensor '" + t->name + "' is not aligned to " +
                              std::to_string(alignof(T)) + " bytes");
    }
    std::int64_t const rows = t->shape.size() == 2 ? t->shape[0] : 1;
    std::int64_t const cols = t->shape.empty() ? 1 : t->shape.back();
    out = MatrixView<T const>(reinterpret_cast<T const*>(b.data()), rows, cols);
    return {};
  }

 private:
  void unmap() noexcept {
    if (mapped_) {
      ::munmap(const_cast<std::byte*>(bytes_.data()), bytes_.size());
      mapped_ = false;
    }
  }

  Status parse(std::string const& path, std::span<std::byte const> bytes) {
    path_ = path;
    bytes_ = bytes;
    auto fail = [&](std::string const& what) { return invalid_argument(path + ": " + what); };
    if (bytes.size() < 8) {
      return fail("truncated: " + std::to_string(bytes.size()) +
                  " bytes, shorter than the 8-byte header length");
    }
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) {
      n = (n << 8) | static_cast<std::uint8_t>(bytes[static_cast<std::size_t>(i)]);
    }
    if (n > bytes.size() - 8) {
      return fail("header length " + std::to_string(n) + " exceeds the " +
                  std::to_string(bytes.size() - 8) + " bytes after it — HINT: truncated file?");
    }
    data_offset_ = 8 + static_cast<std::int64_t>(n);
    std::int64_t const data_size = static_cast<std::int64_t>(bytes.size()) - data_offset_;
    auto const* h = reinterpret_cast<char const*>(bytes.data() + 8);
    nlohmann::json const header = nlohmann::json::parse(h, h + n, nullptr, false);
    if (header.is_discarded() || !header.is_object()) {
      return fail("the header is not a JSON object");
    }
    for (auto const& item : header.items()) {
      // (no structured binding: clang before 16 cannot capture one in the lambdas below)
      std::string const key = item.key();
      nlohmann::json const& value = item.value();
      if (key == "__metadata__") {
        if (!value.is_object()) {
          return fail("__metadata__ is not an object");
        }
        for (auto const& [k, v] : value.items()) {
          if (!v.is_string()) {
            return fail("__metadata__['" + k + "'] is not a string");
          }
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      auto bad = [&](std::string const& what) { return fail("tensor '" + key + "': " + what); };
      if (!value.is_object()) {
        return bad("entry is not an object");
      }
      auto const dt = value.find("dtype");
      auto const sh = value.find("shape");
      auto const off = value.find("data_offsets");
      if (dt == value.end() || !dt->is_string()) {
        return bad("missing or non-string dtype");
      }
      TensorInfo t;
      t.name = key;
      auto const d = parse_dtype(dt->get<std::string>());
      if (!d) {
        return bad("unknown dtype '" + dt->get<std::string>() + "'");
      }
      t.dtype = *d;
      if (sh == value.end() || !sh->is_array()) {
        return bad("missing or non-array shape");
      }
      // element count, guarded against overflow: every extent < 2^40 and the product < 2^62
      long double numel = 1;
      for (auto const& e : *sh) {
        if (!e.is_number_unsigned() || e.get<std::uint64_t>() >= (std::uint64_t{1} << 40)) {
          return bad("shape " + sh->dump() + " has an extent that is not an integer in [0, 2^40)");
        }
        t.shape.push_back(static_cast<std::int64_t>(e.get<std::uint64_t>()));
        numel *= static_cast<long double>(t.shape.back());
      }
      if (numel * dtype_size(t.dtype) >= 0x1p62L) {
        return bad("shape " + sh->dump() + " is too large");
      }
      if (off == value.end() || !off->is_array() || off->size() != 2 ||
          !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
        return bad("data_offsets must be two unsigned integers");
      }
      std::uint64_t const b = (*off)[0].get<std::uint64_t>(), e = (*off)[1].get<std::uint64_t>();
      if (b > e || e > static_cast<std::uint64_t>(data_size)) {
        return bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                   ") are outside the data area of " + std::to_string(data_size) + " bytes");
      }
      t.begin = static_cast<std::int64_t>(b);
      t.end = static_cast<std::int64_t>(e);
      std::int64_t const want = t.numel() * dtype_size(t.dtype);
      if (t.end - t.begin != want) {
        return bad("holds " + std::to_string(t.end - t.begin) + " bytes but its shape " +
                   sh->dump() + " of " + std::string(to_string(t.dtype)) + " needs " +
                   std::to_string(want));
      }
      tensors_.push_back(std::move(t));
    }
    // no two tensors share a byte: sorted by start, each non-empty tensor starts at or after
    // the furthest end so far
    std::vector<TensorInfo const*> order;
    for (auto const& t : tensors_) {
      if (t.end > t.begin)
        order.push_back(&t);
    }
    std::sort(order.begin(), order.end(),
              [](auto const* a, auto const* b) { return a->begin < b->begin; });
    TensorInfo const* furthest = nullptr;
    for (auto const* t : order) {
      if (furthest != nullptr && t->begin < furthest->end) {
        return fail("tensors '" + furthest->name + "' and '" + t->name +
                    "' overlap in the data area");
      }
      if (furthest == nullptr || t->end > furthest->end)
        furthest = t;
    }
    return {};
  }

  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::span<std::byte const> bytes_;
  std::int64_t data_offset_ = 0;
  bool mapped_ = false;
};

/// A tensor to write: its name, dtype, shape and bytes (product(shape)·dtype_size of them).
struct TensorToWrite {
  std::string name;
  Dtype dtype;
  std::vector<std::int64_t> shape;
  std::span<std::byte const> data;
};

/// The first bytes of a safetensors file holding `tensors` in order: the 8-byte header length
/// and the JSON header, padded with spaces to a multiple of 8 bytes (so every tensor starts
/// 8-aligned); the tensors' bytes follow it back to back.
/// @returns invalid_argument naming `path` and the tensor for a byte count that disagrees with
///          its shape or a repeated name.
inline Status safetensors_header(std::string const& path, std::span<TensorToWrite const> tensors,
                                 std::map<std::string, std::string> const& metadata,
                                 std::string& out) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::int64_t offset = 0;
  for (auto const& t : tensors) {
    std::int64_t n = 1;
    for (auto s : t.shape)
      n *= s;
    if (static_cast<std::int64_t>(t.data.size()) != n * dtype_size(t.dtype)) {
      return invalid_argument(path + ": tensor '" + t.name + "' has " +
                              std::to_string(t.data.size()) + " bytes, its shape needs " +
                              std::to_string(n * dtype_size(t.dtype)));
    }
    if (header.contains(t.name)) {
      return invalid_argument(path + ": tensor '" + t.name + "' is given twice");
    }
    header[t.name] = {{"dtype", to_string(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + n * dtype_size(t.dtype)}}};
    offset += n * dtype_size(t.dtype);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  out.assign(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<char>(std::uint64_t{h.size()} >> (8 * i));
  out += h;
  return {};
}

/// Writes the concatenation of `pieces` to `path` atomically: into `path`.tmp.<pid> beside it,
/// fsync, rename over `path`, fsync of the folder — so a crash leaves either the old file or
/// the new one, never half of one.
/// @returns kIoError naming the file if writing fails (the temporary file is removed).
inline Status write_file_atomic(std::string const& path,
                                std::span<std::span<std::byte const> const> pieces) {
  std::string const tmp = path + ".tmp." + std::to_string(::getpid());
  int const fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status(StatusCode::kIoError, tmp + ": cannot create (" + std::strerror(errno) + ")");
  }
  auto write_all = [&](std::span<std::byte const> b) {
    auto const* c = reinterpret_cast<char const*>(b.data());
    std::size_t n = b.size();
    while (n > 0) {
      ssize_t const w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        return false;
      c += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  };
  bool ok = true;
  for (auto const& p : pieces)
    ok = ok && write_all(p);
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string const why = std::strerror(errno);
    ::unlink(tmp.c_str());
    return Status(StatusCode::kIoError, path + ": cannot write (" + why + ")");
  }
  std::string dir = path.substr(0, path.find_last_of('/') + 1);
  if (int const dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      dfd >= 0) {
    ::fsync(dfd);  // the rename itself survives a crash
    ::close(dfd);
  }
  return {};
}

/// Writes a safetensors file (safetensors_header, then the tensors' bytes) atomically
/// (write_file_atomic).
/// @returns safetensors_header's errors; kIoError naming the file if writing fails.
inline Status write_safetensors(std::string const& path, std::span<TensorToWrite const> tensors,
                                std::map<std::string, std::string> const& metadata = {}) {
  std::string h;
  DEEPMOE_RETURN_IF_ERROR(safetensors_header(path, tensors, metadata, h));
  std::vector<std::span<std::byte const>> pieces{std::as_bytes(std::span(h))};
  for (auto const& t : tensors)
    pieces.push_back(t.data);
  return write_file_atomic(path, pieces);
}

}  // namespace io
DEEPMOE_NAMESPACE_END
