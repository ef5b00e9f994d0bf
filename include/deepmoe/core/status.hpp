// SPDX-License-Identifier: Apache-2.0
/// @file status.hpp
/// @brief Status: the error type of deepmoe's host API (no exceptions in ops).
#pragma once

#include <deepmoe/core/macros.hpp>

#include <string>
#include <string_view>
#include <utility>

DEEPMOE_NAMESPACE_BEGIN

/// What went wrong, coarsely; the message says exactly what.
enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  ///< a precondition on shapes, values or sizes was violated
  kNotSupported,     ///< valid input this build or backend cannot handle
  kOutOfRange,       ///< an index or count beyond a limit (token ids, capacities)
  kIoError,          ///< a file could not be read or written
  kCudaError,
  kNcclError,
};

/// Human-readable name of a StatusCode ("invalid argument", ...).
constexpr std::string_view to_string(StatusCode code) noexcept {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kNotSupported:
      return "not supported";
    case StatusCode::kOutOfRange:
      return "out of range";
    case StatusCode::kIoError:
      return "i/o error";
    case StatusCode::kCudaError:
      return "cuda error";
    case StatusCode::kNcclError:
      return "nccl error";
  }
  return "unknown";
}

/// Result of a host API call: a code plus a message that names the function, the argument or
/// field at fault, the offending values and, where useful, a `HINT:`. Ops return Status instead
/// of throwing so that hosts built with -fno-exceptions can use them (CUTLASS/CUB convention).
class [[nodiscard]] Status {
 public:
  /// Success.
  Status() = default;
  /// A failure (or, with StatusCode::kOk, success) carrying `message`.
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return code_ == StatusCode::kOk; }
  StatusCode code() const noexcept { return code_; }
  std::string const& message() const noexcept { return message_; }
  /// "invalid argument: <message>", or "ok".
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(deepmoe::to_string(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// Shorthand for `Status(StatusCode::kInvalidArgument, message)`.
inline Status invalid_argument(std::string message) {
  return Status(StatusCode::kInvalidArgument, std::move(message));
}

/// invalid_argument("<fn>: <arg> is null but must hold <n> elements") when `data` is null
/// and n > 0, or "<fn>: <arg> has a negative extent" when n < 0 (a negative run-time extent,
/// such as a token count); ok otherwise (an empty view may be null).
inline Status require_data(std::string_view fn, std::string_view arg, void const* data,
                           long long n) {
  if (n < 0) {
    return invalid_argument(std::string(fn) + ": " + std::string(arg) + " has a negative extent (" +
                            std::to_string(n) + " elements)");
  }
  if (data != nullptr || n == 0) {
    return {};
  }
  return invalid_argument(std::string(fn) + ": " + std::string(arg) + " is null but must hold " +
                          std::to_string(n) + " elements");
}

DEEPMOE_NAMESPACE_END

/// Returns early from the enclosing function when `expr` (a Status) is not ok.
#define DEEPMOE_RETURN_IF_ERROR(...)                   \
  do {                                                 \
    ::deepmoe::Status deepmoe_status_ = (__VA_ARGS__); \
    if (!deepmoe_status_.ok()) {                       \
      return deepmoe_status_;                          \
    }                                                  \
  } while (0)
