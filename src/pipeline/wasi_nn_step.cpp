#include "pipeline/wasi_nn_step.h"

#include <dlfcn.h>

#include <memory>

#include "core/error.h"
#include "core/log.h"
#include "pipeline/reply_margin.h"
#include "wasi_nn/wasi_nn_backend.h"

namespace nnpipe {
namespace {

// The backend's entry points, looked up by name as a runtime does (dlsym).
struct Api {
  decltype(&::init_backend_with_config) init;
  decltype(&::deinit_backend) deinit;
  decltype(&::load_by_name_with_config) load;
  decltype(&::init_execution_context_with_session_id) open;
  decltype(&::set_input) set_input;
  decltype(&::compute) compute;
  decltype(&::get_output) get_output;
  decltype(&::run_inference_for_session_with_params) run;
  decltype(&::close_execution_context) close;
};

template <typename T>
void lookup(void* h, const fs::path& lib, const char* name, T& out) {
  out = reinterpret_cast<T>(dlsym(h, name));
  if (!out) fail(ErrorCode::kFormat, "{}: symbol {} missing", lib.string(), name);
}

void check(wasi_nn_error e, const char* call, const fs::path& lib) {
  if (e != ::success)
    fail(ErrorCode::kInternal, "{}: {} returned wasi_nn_error {} (see the [wasi_nn] log above)",
         lib.filename().string(), call, static_cast<int>(e));
}

json adapters_json(const std::vector<engine::AdapterSpec>& set) {
  json a = json::array();
  for (const engine::AdapterSpec& s : set) a.push_back({{"path", s.path}, {"scale", s.scale}});
  return a;
}

std::string output(const Api& api, void* be, graph_execution_context ec, uint32_t index,
                   const fs::path& lib) {
  std::string buf(1 << 16, '\0');
  tensor_data d{reinterpret_cast<uint8_t*>(buf.data()), static_cast<uint32_t>(buf.size())};
  uint32_t n = 0;
  check(api.get_output(be, ec, index, &d, &n), "get_output", lib);
  buf.resize(n);
  return buf;
}

}  // namespace

fs::path find_wasi_nn_library() {
  const char* name = "libwasi_nn_llamacpp.so";
  if (const char* e = std::getenv("NNPIPE_WASI_NN_LIB"); e && *e) return e;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (const fs::path& p : {exe.parent_path() / name, exe.parent_path() / ".." / "lib" / name})
      if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec);
  fail(ErrorCode::kNotFound,
       "{} not found beside {} or in ../lib (build target wasi_nn_llamacpp, or set "
       "NNPIPE_WASI_NN_LIB)",
       name, exe.string());
}

json wasi_nn_inference(const RunSession& session, const WasiNnStepParams& p) {
  json params = {{"model", p.model.string()},
                 {"question", p.question},
                 {"global_lora_adapters", adapters_json(p.global_set)},
                 {"session_lora_adapters", adapters_json(p.session_set)}};
  return run_step(session, "wasi_nn_inference", params, [&](StepContext& c) {
    const fs::path lib = find_wasi_nn_library();
    std::unique_ptr<void, int (*)(void*)> h(dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL), dlclose);
    if (!h) fail(ErrorCode::kFormat, "dlopen {}: {}", lib.string(), dlerror());
    Api api{};
    lookup(h.get(), lib, "init_backend_with_config", api.init);
    lookup(h.get(), lib, "deinit_backend", api.deinit);
    lookup(h.get(), lib, "load_by_name_with_config", api.load);
    lookup(h.get(), lib, "init_execution_context_with_session_id", api.open);
    lookup(h.get(), lib, "set_input", api.set_input);
    lookup(h.get(), lib, "compute", api.compute);
    lookup(h.get(), lib, "get_output", api.get_output);
    lookup(h.get(), lib, "run_inference_for_session_with_params", api.run);
    lookup(h.get(), lib, "close_execution_context", api.close);

    const std::string init_cfg = json{
        {"lora_adapters", adapters_json(p.global_set)},
        {"logging",
         {{"level", "warn"}}}}.dump();
    void* be = nullptr;
    check(api.init(&be, init_cfg.data(), static_cast<uint32_t>(init_cfg.size())),
          "init_backend_with_config", lib);
    // The backend is freed (with its models, adapters and sessions) on every path out.
    std::unique_ptr<void, decltype(api.deinit)> backend(be, api.deinit);
    const std::string load_cfg =
        json{{"model", {{"n_predict", p.max_tokens}}}, {"system_prompt", p.system}}.dump();
    const std::string model = p.model.string();
    graph g = 0;
    check(api.load(be, model.data(), static_cast<uint32_t>(model.size()), load_cfg.data(),
                   static_cast<uint32_t>(load_cfg.size()), &g),
          "load_by_name_with_config", lib);
    json replies = json::object();
    log::info("user: {}", p.question);

    // Session "global": WAMR's set_input / compute / get_output under the global set.
    graph_execution_context ec = 0;
    check(api.open(be, "global", &ec), "init_execution_context_with_session_id", lib);
    uint32_t dim = static_cast<uint32_t>(p.question.size());
    tensor_dimensions dims{&dim, 1};
    tensor t{};
    t.dimensions = &dims;
    t.type = ::u8;
    t.data.buf = reinterpret_cast<uint8_t*>(const_cast<char*>(p.question.data()));
    t.data.size = dim;
    check(api.set_input(be, ec, 0, &t), "set_input", lib);
    check(api.compute(be, ec), "compute", lib);
    replies["global"] = {{"text", output(api, be, ec, 0, lib)},
                         {"meta", json::parse(output(api, be, ec, 1, lib))}};
    check(api.close(be, ec), "close_execution_context", lib);

    // Session "override": the runtime parameters' lora_adapters replace the set for it alone.
    check(api.open(be, "override", &ec), "init_execution_context_with_session_id", lib);
    const std::string run_params = json{{"lora_adapters", adapters_json(p.session_set)}}.dump();
    std::string out(1 << 16, '\0');
    uint32_t n = 0;
    check(api.run(be, ec, p.question.data(), static_cast<uint32_t>(p.question.size()),
                  run_params.data(), static_cast<uint32_t>(run_params.size()), out.data(),
                  static_cast<uint32_t>(out.size()), &n),
          "run_inference_for_session_with_params", lib);
    out.resize(n);
    replies["session_override"] = {{"text", out},
                                   {"meta", json::parse(output(api, be, ec, 1, lib))}};
    check(api.close(be, ec), "close_execution_context", lib);

    // How clearly each reply was chosen: the backend's text scored on nnpipe's engine with the
    // same GGUF, adapters and messages (system prompt + question).
    ordered_json msgs = ordered_json::array();
    if (!p.system.empty()) msgs.push_back({{"role", "system"}, {"content", p.system}});
    msgs.push_back({{"role", "user"}, {"content", p.question}});
    replies["global"]["top1_margin"] =
        chat_reply_margin(p.model, p.global_set, msgs, replies["global"]["text"].get<std::string>())
            .to_json();
    replies["session_override"]["top1_margin"] =
        chat_reply_margin(p.model, p.session_set, msgs, out).to_json();
    for (const char* k : {"global", "session_override"}) {
      std::string adapters;
      for (const json& a : replies[k]["meta"]["adapters"])
        adapters += fmt::format("{}{}:{}", adapters.empty() ? "" : " + ",
                                fs::path(a["path"].get<std::string>()).filename().string(),
                                a["scale"].get<double>());
      log::info("{:>16} ({}): {}  (top-1 margin min {:.2f}, mean {:.2f})", k, adapters,
                replies[k]["text"].get<std::string>(),
                replies[k]["top1_margin"]["min"].get<double>(),
                replies[k]["top1_margin"]["mean"].get<double>());
    }
    c.set_metric("library", lib.string());
    c.set_metric("replies", replies);
    c.set_output("reply", replies["session_override"]["text"]);
  });
}

}  // namespace nnpipe
