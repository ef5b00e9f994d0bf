// SPDX-License-Identifier: Apache-2.0
/// @file json_fields.hpp
/// @brief Typed reads of tokenizer.json fields whose errors name the field by its path
/// ("pre_tokenizer.pretokenizers[2].behavior") and show the offending value.
#pragma once

#include <deepmoe/core/status.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

DEEPMOE_NAMESPACE_BEGIN
namespace tokenizer::detail {

using Json = nlohmann::json;

/// `path.key`, or `key` at the top level.
inline std::string field(std::string const& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

/// `v` as JSON text, cut to 60 characters.
inline std::string show(Json const& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

/// invalid_argument("<field> is <value>, expected <what>").
inline Status wrong_type(std::string const& field, Json const& v, std::string_view what) {
  return invalid_argument(field + " is " + show(v) + ", expected " + std::string(what));
}

/// Member `key` of object `obj`, or null when absent (or JSON null).
inline Json const* member(Json const& obj, std::string_view key) {
  auto const it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

/// Reads the string member `key` of `obj` (at `path`) into `out`.
/// @returns invalid_argument naming the field when it is missing or not a string.
inline Status read_string(Json const& obj, std::string const& path, std::string_view key,
                          std::string& out) {
  Json const* v = member(obj, key);
  if (v == nullptr) {
    return invalid_argument(field(path, key) + " is missing");
  }
  if (!v->is_string()) {
    return wrong_type(field(path, key), *v, "a string");
  }
  out = v->get<std::string>();
  return {};
}

/// Reads the boolean member `key` of `obj` into `out`; `absent_as` when it is absent or null.
/// @returns invalid_argument naming the field when it is not a boolean.
inline Status read_bool(Json const& obj, std::string const& path, std::string_view key,
                        bool absent_as, bool& out) {
  Json const* v = member(obj, key);
  if (v != nullptr && !v->is_boolean()) {
    return wrong_type(field(path, key), *v, "true or false");
  }
  out = v == nullptr ? absent_as : v->get<bool>();
  return {};
}

}  // namespace tokenizer::detail
DEEPMOE_NAMESPACE_END
