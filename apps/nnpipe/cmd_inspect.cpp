// nnpipe inspect: list the tensors of a safetensors file or model directory, optionally dump their
// values as JSON or re-write the file through nnpipe's reader and writer (for conformance tests).
#include <cmath>
#include <cstring>
#include <iostream>

#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "tensor/convert.h"

namespace {

struct InspectArgs {
  std::string path, rewrite;
  bool as_json = false, values = false, keep_order = false;
};

template <typename T>
T load(const uint8_t* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}

// JSON number text of a double; NaN/Infinity spelled as Python's json module reads them.
void append_double(std::string& out, double d) {
  if (std::isnan(d))
    out += "NaN";
  else if (std::isinf(d))
    out += d > 0 ? "Infinity" : "-Infinity";
  else {
    // Shortest round-trip repr, kept a float for JSON readers ("-0" would parse as integer 0).
    std::string s = fmt::format("{}", d);
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    out += s;
  }
}

// Flat row-major values: floats as their exact value (float32 types via float32), ints exactly.
std::string values_json(const nnpipe::TensorView& t) {
  using nnpipe::DType;
  std::string out = "[";
  const uint8_t* p = t.data.data();
  size_t n = t.numel();
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ',';
    switch (t.dtype) {
      case DType::kI8:
        fmt::format_to(std::back_inserter(out), "{}", load<int8_t>(p, i));
        break;
      case DType::kU8:
        fmt::format_to(std::back_inserter(out), "{}", p[i]);
        break;
      case DType::kI16:
        fmt::format_to(std::back_inserter(out), "{}", load<int16_t>(p, i));
        break;
      case DType::kU16:
        fmt::format_to(std::back_inserter(out), "{}", load<uint16_t>(p, i));
        break;
      case DType::kI32:
        fmt::format_to(std::back_inserter(out), "{}", load<int32_t>(p, i));
        break;
      case DType::kU32:
        fmt::format_to(std::back_inserter(out), "{}", load<uint32_t>(p, i));
        break;
      case DType::kI64:
        fmt::format_to(std::back_inserter(out), "{}", load<int64_t>(p, i));
        break;
      case DType::kU64:
        fmt::format_to(std::back_inserter(out), "{}", load<uint64_t>(p, i));
        break;
      case DType::kBool:
        out += p[i] ? "true" : "false";
        break;
      default:
        append_double(out, nnpipe::float_element(t.dtype, p, i));
        break;
    }
  }
  return out + "]";
}

int run_inspect(const InspectArgs& a) {
  using namespace nnpipe;
  SafetensorsSet set = SafetensorsSet::open(a.path);
  std::vector<const TensorView*> tensors = set.tensors();
  uint64_t total = 0;
  for (const TensorView* t : tensors) total += t->data.size();

  if (!a.rewrite.empty()) {
    if (set.files().size() != 1)
      fail(ErrorCode::kInvalidArgument, "{}: --rewrite needs a single .safetensors file", a.path);
    const SafetensorsFile& f = set.files()[0];
    std::vector<TensorRef> refs;
    for (const TensorView& t : f.tensors()) refs.push_back({t.name, t.dtype, t.shape, t.data});
    write_safetensors(a.rewrite, refs, f.metadata(),
                      a.keep_order ? TensorOrder::kAsGiven : TensorOrder::kSafetensors);
    log::info("rewrote {} tensors ({} bytes) to {}", refs.size(), total, a.rewrite);
    return 0;
  }

  if (a.as_json || a.values) {
    // Built as text so that --values can spell NaN and infinities.
    std::string out = "{\"tensors\":[";
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorView& t = *tensors[i];
      if (i) out += ",\n";
      out += json{{"name", t.name},
                  {"dtype", dtype_name(t.dtype)},
                  {"shape", t.shape},
                  {"bytes", t.data.size()}}
                 .dump();
      if (a.values) {
        out.pop_back();
        out += ",\"values\":" + values_json(t) + "}";
      }
    }
    json meta = json::object();
    if (set.files().size() == 1)
      for (const auto& [k, v] : set.files()[0].metadata()) meta[k] = v;
    out += fmt::format("],\n\"metadata\":{},\"total_bytes\":{}}}\n", meta.dump(), total);
    std::cout << out;
    return 0;
  }
  for (const TensorView* t : tensors)
    std::cout << fmt::format("{}\t{}\t[{}]\t{}\n", t->name, dtype_name(t->dtype),
                             fmt::join(t->shape, ", "), t->data.size());
  if (set.files().size() == 1)
    for (const auto& [k, v] : set.files()[0].metadata())
      std::cout << fmt::format("metadata {}={}\n", k, v);
  std::cout << fmt::format("{} tensors, {} bytes in {} file(s)\n", tensors.size(), total,
                           set.files().size());
  return 0;
}

NNPIPE_COMMAND(
    "inspect", "List the tensors of a .safetensors file or model directory (or dump/rewrite them)",
    [](CLI::App& app) -> nnpipe::cli::RunFn {
      auto a = std::make_shared<InspectArgs>();
      app.add_option("path", a->path,
                     "A .safetensors file, or a directory with model.safetensors or "
                     "model.safetensors.index.json")
          ->required();
      app.add_flag("--json", a->as_json,
                   "Print name, dtype, shape and byte size of each tensor as JSON");
      app.add_flag(
          "--values", a->values,
          "Also print every value (JSON; floats exactly, NaN/Infinity as Python's json reads "
          "them). For small files");
      app.add_option("--rewrite", a->rewrite,
                     "Write the file again through nnpipe's reader and writer to this path "
                     "(tensors sorted like Python safetensors)");
      app.add_flag("--keep-order", a->keep_order, "With --rewrite: keep the input's tensor order");
      return [a] { return run_inspect(*a); };
    });

}  // namespace
