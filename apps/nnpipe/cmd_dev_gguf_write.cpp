// nnpipe dev-gguf-write (developer command): write a GGUF file described by a JSON spec, so that
// the conformance tests can compare nnpipe's writer with gguf-py's byte for byte. Spec:
// {"metadata": [entries as printed by `gguf-info --json`],
//  "tensors": [{"name", "type": "Q8_0", "ne": [innermost first], "data_hex": "..."}]}
#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "io/gguf.h"
#include "io/gguf_json.h"

namespace {

struct DevGgufWriteArgs {
  std::string spec, out;
};

std::vector<uint8_t> from_hex(const std::string& s, const std::string& where) {
  auto nib = [&](char c) -> uint8_t {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    nnpipe::fail(nnpipe::ErrorCode::kFormat, "{}: data_hex holds a non-hex character", where);
  };
  if (s.size() % 2) nnpipe::fail(nnpipe::ErrorCode::kFormat, "{}: odd data_hex length", where);
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = (nib(s[2 * i]) << 4) | nib(s[2 * i + 1]);
  return out;
}

void write_from_spec(const DevGgufWriteArgs& a) {
  using namespace nnpipe;
  json spec = read_json_file(a.spec);
  GgufWriter w;
  if (auto m = spec.find("metadata"); m != spec.end())
    for (const json& e : *m) {
      GgufKv kv = gguf_kv_from_json(e, a.spec);
      w.add(std::move(kv.key), std::move(kv.value));
    }
  std::vector<std::vector<uint8_t>> buffers;  // kept alive until write()
  if (auto ts = spec.find("tensors"); ts != spec.end()) {
    buffers.reserve(ts->size());
    for (const json& t : *ts) {
      std::string name = require_field(t, "name", a.spec).get<std::string>();
      std::string where = fmt::format("{}: tensor '{}'", a.spec, name);
      std::string type_name = require_field(t, "type", where).get<std::string>();
      auto type = ggml_type_from_name(type_name);
      if (!type) fail(ErrorCode::kFormat, "{}: unknown ggml type \"{}\"", where, type_name);
      auto ne = require_field(t, "ne", where).get<std::vector<int64_t>>();
      buffers.push_back(from_hex(require_field(t, "data_hex", where).get<std::string>(), where));
      w.add_tensor(std::move(name), *type, std::move(ne), buffers.back());
    }
  }
  w.write(a.out);
}

int run_dev_gguf_write(const DevGgufWriteArgs& a) {
  try {
    write_from_spec(a);
  } catch (const nnpipe::json::exception& e) {  // a field of the wrong JSON type
    nnpipe::fail(nnpipe::ErrorCode::kFormat, "{}: {}", a.spec, e.what());
  }
  return 0;
}

NNPIPE_COMMAND("dev-gguf-write", "Developer: write a GGUF file from a JSON spec (for tests)",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<DevGgufWriteArgs>();
                 app.add_option("spec", a->spec, "JSON spec: metadata and tensors")->required();
                 app.add_option("out", a->out, "Output .gguf")->required();
                 return [a] { return run_dev_gguf_write(*a); };
               });

}  // namespace
