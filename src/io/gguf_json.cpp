#include "io/gguf_json.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace nnpipe {
namespace {

template <typename F>
ordered_json float_json(F x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  return static_cast<double>(x);  // exact: every float is a double
}

ordered_json value_json(const GgufValue& v);

ordered_json array_items(const GgufArray& a) {
  ordered_json items = ordered_json::array();
  for (const GgufValue& item : a.items) {
    if (const GgufArray* inner = item.get_if<GgufArray>())
      items.push_back(
          {{"element_type", gguf_type_name(inner->type)}, {"value", array_items(*inner)}});
    else
      items.push_back(value_json(item));
  }
  return items;
}

ordered_json value_json(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> ordered_json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, GgufArray>)
          return array_items(x);
        else if constexpr (std::is_floating_point_v<T>)
          return float_json(x);
        else
          return x;
      },
      v.v);
}

template <typename T>
T int_from(const json& j, const std::string& where) {
  if (j.is_number_unsigned()) {
    auto u = j.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(u);
  } else if (j.is_number_integer()) {
    auto i = j.get<int64_t>();
    if constexpr (std::is_signed_v<T>) {
      if (i >= std::numeric_limits<T>::min() && i <= std::numeric_limits<T>::max())
        return static_cast<T>(i);
    } else if (i >= 0 && static_cast<uint64_t>(i) <= std::numeric_limits<T>::max()) {
      return static_cast<T>(i);
    }
  }
  fail(ErrorCode::kFormat, "{}: {} is not an integer in range for this type", where, j.dump());
}

double float_from(const json& j, const std::string& where) {
  if (j.is_number()) return j.get<double>();
  if (j == "NaN") return std::numeric_limits<double>::quiet_NaN();
  if (j == "Infinity") return std::numeric_limits<double>::infinity();
  if (j == "-Infinity") return -std::numeric_limits<double>::infinity();
  fail(ErrorCode::kFormat, "{}: {} is not a number", where, j.dump());
}

GgufType type_from(const json& j, const std::string& where) {
  auto t = j.is_string() ? gguf_type_from_name(j.get<std::string>()) : std::nullopt;
  if (!t) fail(ErrorCode::kFormat, "{}: unknown GGUF value type {}", where, j.dump());
  return *t;
}

GgufValue value_from(GgufType t, const json& j, const std::string& where);

GgufArray array_from(GgufType elem, const json& items, const std::string& where, int depth) {
  if (depth >= kGgufMaxArrayDepth)
    fail(ErrorCode::kFormat, "{}: arrays nested deeper than {}", where, kGgufMaxArrayDepth);
  if (!items.is_array()) fail(ErrorCode::kFormat, "{}: an array value must be a JSON list", where);
  GgufArray a;
  a.type = elem;
  for (const json& item : items) {
    if (elem == GgufType::kArray) {
      if (!item.is_object())
        fail(ErrorCode::kFormat, "{}: nested arrays are {{\"element_type\", \"value\"}} objects",
             where);
      a.items.push_back(array_from(type_from(require_field(item, "element_type", where), where),
                                   require_field(item, "value", where), where, depth + 1));
    } else {
      a.items.push_back(value_from(elem, item, where));
    }
  }
  return a;
}

GgufValue value_from(GgufType t, const json& j, const std::string& where) {
  switch (t) {
    case GgufType::kU8:
      return int_from<uint8_t>(j, where);
    case GgufType::kI8:
      return int_from<int8_t>(j, where);
    case GgufType::kU16:
      return int_from<uint16_t>(j, where);
    case GgufType::kI16:
      return int_from<int16_t>(j, where);
    case GgufType::kU32:
      return int_from<uint32_t>(j, where);
    case GgufType::kI32:
      return int_from<int32_t>(j, where);
    case GgufType::kU64:
      return int_from<uint64_t>(j, where);
    case GgufType::kI64:
      return int_from<int64_t>(j, where);
    case GgufType::kF32:
      return static_cast<float>(float_from(j, where));
    case GgufType::kF64:
      return float_from(j, where);
    case GgufType::kBool:
      if (!j.is_boolean()) fail(ErrorCode::kFormat, "{}: {} is not a bool", where, j.dump());
      return j.get<bool>();
    case GgufType::kString:
      if (!j.is_string()) fail(ErrorCode::kFormat, "{}: {} is not a string", where, j.dump());
      return j.get<std::string>();
    case GgufType::kArray:
      break;
  }
  fail(ErrorCode::kFormat, "{}: an array needs \"element_type\"", where);
}

}  // namespace

ordered_json gguf_kv_to_json(const GgufKv& kv) {
  ordered_json e;
  e["key"] = kv.key;
  e["type"] = gguf_type_name(kv.value.type());
  if (const GgufArray* a = kv.value.get_if<GgufArray>())
    e["element_type"] = gguf_type_name(a->type);
  e["value"] = value_json(kv.value);
  return e;
}

GgufKv gguf_kv_from_json(const json& entry, const std::string& where) {
  if (!entry.is_object()) fail(ErrorCode::kFormat, "{}: a metadata entry must be an object", where);
  const json& key = require_field(entry, "key", where);
  if (!key.is_string()) fail(ErrorCode::kFormat, "{}: \"key\" must be a string", where);
  std::string w = fmt::format("{}: key '{}'", where, key.get<std::string>());
  GgufType t = type_from(require_field(entry, "type", w), w);
  const json& value = require_field(entry, "value", w);
  if (t == GgufType::kArray)
    return {key.get<std::string>(),
            array_from(type_from(require_field(entry, "element_type", w), w), value, w, 0)};
  return {key.get<std::string>(), value_from(t, value, w)};
}

}  // namespace nnpipe
