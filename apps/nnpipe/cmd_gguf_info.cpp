// nnpipe gguf-info: print a GGUF file's version, alignment, metadata and (with --tensors) its
// tensor table; --json prints everything, exactly typed, for scripts and the conformance tests.
#include <iostream>

#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "io/gguf.h"
#include "io/gguf_json.h"

namespace {

struct GgufInfoArgs {
  std::string path;
  bool as_json = false, tensors = false;
};

// Arrays longer than this print as "[N strings]" in text mode (a vocabulary has 150k entries).
constexpr size_t kShortArray = 8;

std::string text_value(const nnpipe::GgufValue& v) {
  using namespace nnpipe;
  if (const GgufArray* a = v.get_if<GgufArray>()) {
    if (a->items.size() > kShortArray)
      return a->type == GgufType::kString
                 ? fmt::format("[{} strings]", a->items.size())
                 : fmt::format("[{} x {}]", a->items.size(), gguf_type_name(a->type));
    std::vector<std::string> items;
    for (const GgufValue& item : a->items) items.push_back(text_value(item));
    return fmt::format("[{}]", fmt::join(items, ", "));
  }
  // Shortest spelling that reads back as the same float (JSON would print the double expansion).
  if (const float* x = v.get_if<float>()) return fmt::format("{}", *x);
  // JSON spelling for other scalars: strings quoted and escaped, invalid UTF-8 replaced.
  return gguf_kv_to_json({"", v})["value"].dump(-1, ' ', false, json::error_handler_t::replace);
}

int run_gguf_info(const GgufInfoArgs& a) {
  using namespace nnpipe;
  GgufFile f = GgufFile::open(a.path);
  uint64_t total = 0;
  for (const GgufTensor& t : f.tensors()) total += t.nbytes;

  if (a.as_json) {
    ordered_json out;
    out["file"] = a.path;
    out["version"] = f.version();
    out["alignment"] = f.alignment();
    out["data_offset"] = f.data_offset();
    out["metadata"] = ordered_json::array();
    for (const GgufKv& kv : f.metadata()) out["metadata"].push_back(gguf_kv_to_json(kv));
    out["tensors"] = ordered_json::array();
    for (const GgufTensor& t : f.tensors())
      out["tensors"].push_back({{"name", t.name},
                                {"type", ggml_traits(t.type).name},
                                {"type_id", static_cast<uint32_t>(t.type)},
                                {"ne", t.ne},
                                {"offset", t.offset},
                                {"bytes", t.nbytes}});
    out["tensor_bytes"] = total;
    std::cout << out.dump(1, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }

  std::cout << fmt::format("GGUF v{}, alignment {}, {} key/values, {} tensors ({} bytes)\n",
                           f.version(), f.alignment(), f.metadata().size(), f.tensors().size(),
                           total);
  for (const GgufKv& kv : f.metadata()) {
    std::string type = gguf_type_name(kv.value.type());
    if (const GgufArray* arr = kv.value.get_if<GgufArray>())
      type += fmt::format("[{}]", gguf_type_name(arr->type));
    std::cout << fmt::format("{}\t{}\t{}\n", kv.key, type, text_value(kv.value));
  }
  if (a.tensors) {
    std::cout << "tensors (ne innermost first; offsets relative to data at " << f.data_offset()
              << "):\n";
    for (const GgufTensor& t : f.tensors())
      std::cout << fmt::format("{}\t{}\t[{}]\t{}\t{}\n", t.name, ggml_traits(t.type).name,
                               fmt::join(t.ne, ", "), t.offset, t.nbytes);
  }
  return 0;
}

NNPIPE_COMMAND("gguf-info", "Print a GGUF file's metadata (and tensors)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<GgufInfoArgs>();
                 app.add_option("file", a->path, "A .gguf file")->required();
                 app.add_flag("--json", a->as_json,
                              "Print everything (metadata with exact types, tensors) as JSON");
                 app.add_flag("--tensors", a->tensors,
                              "Also list each tensor: name, type, ne, offset, bytes");
                 return [a] { return run_gguf_info(*a); };
               });

}  // namespace
