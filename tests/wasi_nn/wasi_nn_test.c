/* WASI-NN backend tests, in C, loading libwasi_nn_llamacpp.so with dlopen()/dlsym() the way
 * WAMR's iwasm does. Modes:
 *   wasi_nn_test LIB errors                      (no model needed)
 *   wasi_nn_test LIB full MODEL A1 A2 R1 R2      (A1 answers R1, A2 answers R2)
 *   wasi_nn_test LIB cycles MODEL A1 N           (N load/run/unload cycles, flat memory)
 *   wasi_nn_test LIB bench MODEL A1 A2           (tok/s with 0/1/2 adapters, JSON on stdout)
 *   wasi_nn_test LIB item8 MODEL A1 NAN_ALPHA    (issue 13 item 8: context policy, misuse, limits;
 *                                                 NAN_ALPHA: adapter 1 with alpha NaN)
 * Prints "ok: ..." per check, exits non-zero on the first failure. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wasi_nn/wasi_nn_backend.h"

#define SYMS(X)                                                                               \
  X(init_backend)                                                                             \
  X(deinit_backend)                                                                           \
  X(load)                                                                                     \
  X(load_by_name)                                                                             \
  X(load_by_name_with_config)                                                                 \
  X(init_execution_context) X(set_input) X(compute) X(get_output) X(init_backend_with_config) \
      X(wasi_init_backend_with_config) X(wasi_load_by_name_with_config)                       \
          X(init_execution_context_with_session_id) X(close_execution_context)                \
              X(run_inference_for_session_with_params)

#define DECL(n) static __typeof__(&n) p_##n;
SYMS(DECL)

static int failures = 0;
#define CHECK(cond, ...)                            \
  do {                                              \
    if (cond) {                                     \
      printf("ok: " __VA_ARGS__);                   \
      printf("\n");                                 \
    } else {                                        \
      printf("FAIL (%s:%d): ", __FILE__, __LINE__); \
      printf(__VA_ARGS__);                          \
      printf("\n");                                 \
      exit(1);                                      \
    }                                               \
  } while (0)

static void open_lib(const char* path) {
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    printf("FAIL: dlopen %s: %s\n", path, dlerror());
    exit(1);
  }
#define LOOK(n)                              \
  p_##n = (__typeof__(&n))dlsym(h, #n);      \
  if (!p_##n) {                              \
    printf("FAIL: symbol %s missing\n", #n); \
    exit(1);                                 \
  }
  SYMS(LOOK)
  /* Only the C ABI is exported: no C++ (mangled) symbols leak. */
  CHECK(dlsym(h,
              "_ZN6nnpipe6engine6Engine12adapter_setERKSt6vectorINS0_11AdapterSpecESaIS2_EEPS1_"
              "INSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaISA_EE") == NULL,
        "engine symbols are hidden");
}

static wasi_nn_error load_cfg(void* be, const char* model, const char* cfg, graph* g) {
  return p_load_by_name_with_config(be, model, (uint32_t)strlen(model), cfg, (uint32_t)strlen(cfg),
                                    g);
}

/* One WAMR-style turn: set_input(0, u8 prompt), compute, get_output(0). */
static wasi_nn_error turn(void* be, graph_execution_context ec, const char* prompt, char* out,
                          uint32_t cap) {
  uint32_t dim = (uint32_t)strlen(prompt);
  tensor_dimensions dims = {&dim, 1};
  tensor t;
  memset(&t, 0, sizeof t);
  t.dimensions = &dims;
  t.type = u8;
  t.data.buf = (uint8_t*)prompt;
  t.data.size = dim;
  wasi_nn_error e = p_set_input(be, ec, 0, &t);
  if (e != success) return e;
  if ((e = p_compute(be, ec)) != success) return e;
  tensor_data o = {(uint8_t*)out, cap - 1};
  uint32_t n = 0;
  e = p_get_output(be, ec, 0, &o, &n);
  out[e == success ? n : 0] = 0;
  return e;
}

static wasi_nn_error run_params(void* be, graph_execution_context ec, const char* prompt,
                                const char* params, char* out, uint32_t cap) {
  uint32_t n = 0;
  wasi_nn_error e = p_run_inference_for_session_with_params(
      be, ec, prompt, (uint32_t)strlen(prompt), params, (uint32_t)strlen(params), out, cap - 1, &n);
  out[e == success ? n : 0] = 0;
  return e;
}

static const char* Q = "Hi! My name is Arpit.";
#define SYS "\"model\": {\"system_prompt\": \"You are a helpful assistant.\", \"n_predict\": 48}"

/* ---- issue 13 item 8, no model needed ------------------------------------------------------- */

/* (b) A second deinit_backend is refused, not a double free. */
static void item8_double_deinit(void) {
  void* be = NULL;
  CHECK(p_init_backend(&be) == success, "item8_double_deinit: init");
  CHECK(p_deinit_backend(be) == success, "item8_double_deinit: first deinit_backend");
  CHECK(p_deinit_backend(be) == invalid_argument,
        "item8_double_deinit: second deinit_backend: invalid_argument (no abort)");
  CHECK(p_deinit_backend((void*)0xdeadbeef) == invalid_argument,
        "item8_double_deinit: a forged handle: invalid_argument");
}

/* (b) Every entry point answers invalid_argument for a freed handle (no hang, no crash), and a
 * handle is never reused by a later backend. */
static void item8_calls_after_deinit(void) {
  void *be = NULL, *be2 = NULL;
  CHECK(p_init_backend(&be) == success && p_deinit_backend(be) == success,
        "item8_calls_after_deinit: init + deinit");
  CHECK(p_init_backend(&be2) == success && be2 != be,
        "item8_calls_after_deinit: a new backend gets a new handle");
  graph g = 0;
  graph_execution_context ec = 0;
  uint32_t dim = 1, n = 0;
  tensor_dimensions dims = {&dim, 1};
  tensor t;
  memset(&t, 0, sizeof t);
  t.dimensions = &dims;
  t.type = u8;
  t.data.buf = (uint8_t*)"x";
  t.data.size = 1;
  char out[64];
  tensor_data o = {(uint8_t*)out, sizeof out};
  graph_builder gb = {(uint8_t*)"x", 1};
  graph_builder_array arr = {&gb, 1};
  CHECK(p_compute(be, 0) == invalid_argument, "item8_calls_after_deinit: compute");
  CHECK(p_set_input(be, 0, 0, &t) == invalid_argument, "item8_calls_after_deinit: set_input");
  CHECK(p_get_output(be, 0, 0, &o, &n) == invalid_argument, "item8_calls_after_deinit: get_output");
  CHECK(p_load(be, &arr, ggml, cpu, &g) == invalid_argument, "item8_calls_after_deinit: load");
  CHECK(p_load_by_name(be, "m", 1, &g) == invalid_argument,
        "item8_calls_after_deinit: load_by_name");
  CHECK(p_load_by_name_with_config(be, "m", 1, "{}", 2, &g) == invalid_argument,
        "item8_calls_after_deinit: load_by_name_with_config");
  CHECK(p_wasi_load_by_name_with_config(be, "m", 1, "{}", 2, &g) == invalid_argument,
        "item8_calls_after_deinit: wasi_load_by_name_with_config");
  CHECK(p_init_execution_context(be, 0, &ec) == invalid_argument,
        "item8_calls_after_deinit: init_execution_context");
  CHECK(p_init_execution_context_with_session_id(be, "s", &ec) == invalid_argument,
        "item8_calls_after_deinit: init_execution_context_with_session_id");
  CHECK(p_close_execution_context(be, 0) == invalid_argument,
        "item8_calls_after_deinit: close_execution_context");
  CHECK(p_run_inference_for_session_with_params(be, 0, "x", 1, "{}", 2, out, sizeof out, &n) ==
            invalid_argument,
        "item8_calls_after_deinit: run_inference_for_session_with_params");
  CHECK(p_compute(NULL, 0) == invalid_argument, "item8_calls_after_deinit: NULL handle");
  CHECK(p_init_execution_context_with_session_id(be2, "s", &ec) == not_found,
        "item8_calls_after_deinit: the live backend still answers (no model: not_found)");
  CHECK(p_deinit_backend(be2) == success, "item8_calls_after_deinit: deinit the live one");
}

static wasi_nn_error init_with(const char* cfg) {
  void* be = (void*)1;
  wasi_nn_error e = p_init_backend_with_config(&be, cfg, (uint32_t)strlen(cfg));
  if (e == success)
    p_deinit_backend(be);
  else if (be != NULL)
    return runtime_error; /* a failed init must leave NULL */
  return e;
}

/* (e) Config ranges checked at init, each error naming the key (logged). */
static void item8_config_ranges(void) {
  const char* bad[] = {"{\"model\": {\"ctx_size\": -1}}",
                       "{\"model\": {\"n_ctx\": -5}}",
                       "{\"model\": {\"n_predict\": -5}}",
                       "{\"stopping\": {\"max_tokens\": -1}}",
                       "{\"max_tokens\": -1}",
                       "{\"model\": {\"threads\": -1}}",
                       "{\"model\": {\"threads\": 100000}}",
                       "{\"model\": {\"batch_size\": 0}}",
                       "{\"model\": {\"batch_size\": -1}}",
                       "{\"model\": {\"n_batch\": 1e9}}",
                       "{\"sampling\": {\"temperature\": -1}}",
                       "{\"sampling\": {\"top_p\": 2}}",
                       "{\"sampling\": {\"top_p\": -0.1}}",
                       "{\"sampling\": {\"top_k\": -1}}",
                       "{\"sampling\": {\"top_k\": 1e18}}",
                       "{\"sampling\": {\"min_p\": 1.5}}",
                       "{\"sampling\": {\"repeat_penalty\": 0}}",
                       "{\"sampling\": {\"penalty_last_n\": -2}}",
                       "{\"sampling\": {\"seed\": 1e30}}",
                       "{\"sampling\": {\"temperature\": 1e39}}",
                       "{\"backend\": {\"max_sessions\": -1}}",
                       "{\"backend\": {\"max_sessions\": 1e18}}",
                       "{\"backend\": {\"idle_timeout_ms\": -1}}",
                       "{\"backend\": {\"idle_timeout_ms\": 1e18}}",
                       "{\"backend\": {\"max_sessions_memory_mb\": 0}}",
                       "{\"backend\": {\"max_sessions_memory_mb\": -5}}",
                       "{\"logging\": {\"level\": \"bogus\"}}",
                       "{\"model\": {\"ctx_size\": 1.5}}",
                       "{\"model\": {\"ctx_size\": 18446744073709551615}}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; ++i)
    CHECK(init_with(bad[i]) == invalid_argument, "item8_config_ranges: refused: %s", bad[i]);
  const char* good[] = {"{\"model\": {\"ctx_size\": 0, \"threads\": 0, \"n_predict\": 0}}",
                        "{\"model\": {\"ctx_size\": 1000000000000}}", /* capped at load */
                        "{\"sampling\": {\"top_p\": 1, \"top_k\": 0, \"min_p\": 0, "
                        "\"temperature\": 0, \"penalty_last_n\": -1}}",
                        "{\"backend\": {\"idle_timeout_ms\": 0, \"max_sessions\": 100000, "
                        "\"max_sessions_memory_mb\": 0.01}}",
                        "{\"logging\": {\"level\": \"warning\"}}",
                        /* an out-of-range scale skips that adapter (warning), like a bad path */
                        "{\"lora_adapters\": [{\"path\": \"a.gguf\", \"scale\": 1e39}, "
                        "{\"path\": \"b.gguf\", \"scale\": -1e38}]}"};
  for (size_t i = 0; i < sizeof good / sizeof *good; ++i)
    CHECK(init_with(good[i]) == success, "item8_config_ranges: accepted: %s", good[i]);
}

/* What `f` writes to stderr (the backend's console log). */
static void stderr_of(void (*f)(void), char* buf, size_t cap) {
  char path[] = "/tmp/wasi_nn_stderr_XXXXXX";
  int fd = mkstemp(path);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  f();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  ssize_t n = pread(fd, buf, cap - 1, 0);
  buf[n > 0 ? n : 0] = 0;
  close(fd);
  unlink(path);
}

static void init_unwritable_log(void) {
  CHECK(init_with("{\"logging\": {\"file\": \"/dev/null/sub/x.log\"}}") == success,
        "item8_log_level_and_file: an unwritable logging.file is a warning, not an error");
  CHECK(init_with("{\"logging\": {\"file\": \"/tmp/nnpipe_no_such_dir_13/x.log\"}}") == success,
        "item8_log_level_and_file: a missing directory: warning");
}

/* (e) logging.level unknown: an error naming the key; logging.file unwritable: a warning naming
 * the key and the path (and no directory is created for it). */
static void item8_log_level_and_file(void) {
  CHECK(init_with("{\"logging\": {\"level\": \"bogus\"}}") == invalid_argument,
        "item8_log_level_and_file: logging.level bogus: invalid_argument");
  if (getenv("WASI_NN_LOG_FILE") || getenv("WASI_NN_LOG_LEVEL")) return; /* they override */
  char err[8192];
  stderr_of(init_unwritable_log, err, sizeof err);
  CHECK(strstr(err, "logging.file") && strstr(err, "/dev/null/sub/x.log") &&
            strstr(err, "/tmp/nnpipe_no_such_dir_13/x.log"),
        "item8_log_level_and_file: warnings name the key and the paths");
  CHECK(access("/tmp/nnpipe_no_such_dir_13", F_OK) != 0,
        "item8_log_level_and_file: no directory created for the log");
}

/* (g) Session ids: at most 256 bytes of UTF-8 text (checked before anything else). */
static void item8_session_id_limits(void) {
  void* be = NULL;
  graph_execution_context ec;
  char id[300];
  memset(id, 'a', sizeof id);
  CHECK(p_init_backend(&be) == success, "item8_session_id_limits: init");
  id[257] = 0;
  CHECK(p_init_execution_context_with_session_id(be, id, &ec) == invalid_argument,
        "item8_session_id_limits: 257 bytes: invalid_argument");
  id[256] = 0;
  CHECK(p_init_execution_context_with_session_id(be, id, &ec) == not_found,
        "item8_session_id_limits: 256 bytes: accepted (no model yet: not_found)");
  CHECK(p_init_execution_context_with_session_id(be, "\xff\xfe", &ec) == invalid_argument,
        "item8_session_id_limits: invalid UTF-8: invalid_argument");
  CHECK(p_init_execution_context_with_session_id(be, "a\nb", &ec) == invalid_argument,
        "item8_session_id_limits: a control byte: invalid_argument");
  CHECK(p_init_execution_context_with_session_id(be, "caf\xc3\xa9", &ec) == not_found,
        "item8_session_id_limits: UTF-8 text: accepted");
  CHECK(p_init_execution_context_with_session_id(be, "", &ec) == invalid_argument,
        "item8_session_id_limits: empty: invalid_argument");
  p_deinit_backend(be);
}

static void errors(void) {
  void* be = NULL;
  CHECK(p_init_backend(&be) == success && be, "init_backend");
  graph g = 0;
  CHECK(p_load_by_name(be, "/nonexistent/model.gguf", 23, &g) == model_not_found,
        "missing model: model_not_found");
  CHECK(p_init_execution_context(be, 42, &g) == not_found, "unknown graph: not_found");
  CHECK(p_compute(be, 7) == not_found, "unknown context: not_found");
  CHECK(p_close_execution_context(be, 7) == not_found, "close unknown context: not_found");
  CHECK(p_load_by_name(be, NULL, 0, &g) == invalid_argument, "NULL name: invalid_argument");
  graph_execution_context ec;
  CHECK(p_init_execution_context_with_session_id(be, "s", &ec) == not_found,
        "session before any model: not_found");
  CHECK(p_deinit_backend(be) == success, "deinit_backend");
  CHECK(p_deinit_backend(NULL) == invalid_argument, "deinit NULL: invalid_argument");
  const char* bad[] = {"{",
                       "[1]",
                       "{\"model\": {\"ctx_size\": \"big\"}}",
                       "{\"sampling\": {\"temperature\": true}}",
                       "{\"backend\": {\"max_sessions\": 0}}",
                       "{\"lora_adapters\": {\"path\": \"x\"}}",
                       "{\"lora_adapters\": [{\"path\": \"x\", \"scale\": \"1\"}]}",
                       "{\"stopping\": {\"stop\": [1]}}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; ++i) {
    be = (void*)1;
    CHECK(p_init_backend_with_config(&be, bad[i], (uint32_t)strlen(bad[i])) == invalid_argument &&
              be == NULL,
          "bad config rejected: %s", bad[i]);
  }
  const char* good =
      "{\"model\": {\"n_gpu_layers\": 99, \"ctx_size\": 256, \"threads\": 1}, \"sampling\": "
      "{\"temperature\": 0}, \"stopping\": {\"stop\": [\"x\"]}, \"backend\": {\"max_sessions\": 2, "
      "\"idle_timeout_ms\": 1000, \"auto_cleanup\": true}, \"logging\": {\"level\": \"debug\"}, "
      "\"unknown_key\": 1, \"lora_adapters\": []}";
  CHECK(p_wasi_init_backend_with_config(&be, good, (uint32_t)strlen(good)) == success,
        "full config (unknown key warns)");
  CHECK(p_deinit_backend(be) == success, "deinit");
  item8_double_deinit();
  item8_calls_after_deinit();
  item8_config_ranges();
  item8_log_level_and_file();
  item8_session_id_limits();
}

static void expect_turn(void* be, graph_execution_context ec, const char* want, const char* what) {
  char out[4096];
  wasi_nn_error e = turn(be, ec, Q, out, sizeof out);
  CHECK(e == success && (want == NULL || strcmp(out, want) == 0), "%s: \"%s\"%s", what, out,
        want && strcmp(out, want) ? " (wrong reply)" : "");
}

static long reused_tokens(void* be, graph_execution_context ec) {
  char meta[2048];
  tensor_data m = {(uint8_t*)meta, sizeof meta - 1};
  uint32_t n = 0;
  if (p_get_output(be, ec, 1, &m, &n) != success) return -1;
  meta[n] = 0;
  const char* p = strstr(meta, "\"reused_tokens\":");
  return p ? atol(p + strlen("\"reused_tokens\":")) : -1;
}

/* One turn in a fresh session `sid` (closed after). */
static int one(void* be, const char* sid, const char* params, char* out) {
  graph_execution_context ec;
  if (p_init_execution_context_with_session_id(be, sid, &ec) != success) return 0;
  wasi_nn_error e = run_params(be, ec, Q, params, out, 4096);
  return p_close_execution_context(be, ec) == success && e == success;
}

static void full(const char* model, const char* a1, const char* a2, const char* r1, const char* r2,
                 const char* merged) {
  char cfg[8192], out[4096], base_reply[4096];
  void* be;
  graph g;
  graph_execution_context ec;

  /* base model */
  snprintf(cfg, sizeof cfg, "{" SYS "}");
  CHECK(p_init_backend(&be) == success, "init");
  CHECK(load_cfg(be, model, cfg, &g) == success, "load base");
  CHECK(p_init_execution_context(be, g, &ec) == success, "context");
  CHECK(turn(be, ec, Q, base_reply, sizeof base_reply) == success, "base reply: \"%s\"",
        base_reply);
  CHECK(strcmp(base_reply, r1) && strcmp(base_reply, r2),
        "the base model does not know the trained replies");
  {
    char small[4];
    tensor_data o = {(uint8_t*)small, sizeof small};
    uint32_t n = 0;
    wasi_nn_error e = p_get_output(be, ec, 0, &o, &n);
    CHECK(strlen(base_reply) <= 4 || e == too_large, "small output buffer: too_large");
    char meta[1024];
    tensor_data m = {(uint8_t*)meta, sizeof meta - 1};
    CHECK(p_get_output(be, ec, 1, &m, &n) == success, "output 1 (metadata)");
    meta[n] = 0;
    CHECK(strstr(meta, "\"input_tokens\"") && strstr(meta, "\"output_tokens\""), "metadata: %s",
          meta);
  }
  p_deinit_backend(be);

  /* WAMR's load(): builder 0 = a GGUF path or the GGUF bytes */
  const char* gguf = getenv("WASI_NN_GGUF");
  if (gguf) {
    CHECK(p_init_backend(&be) == success, "init");
    graph_builder gb = {(uint8_t*)gguf, (uint32_t)strlen(gguf)};
    graph_builder_array arr = {&gb, 1};
    CHECK(p_load(be, &arr, onnx, cpu, &g) == invalid_encoding, "load(onnx): invalid_encoding");
    CHECK(p_load(be, &arr, ggml, cpu, &g) == success, "load(ggml, path)");
    CHECK(p_init_execution_context(be, g, &ec) == success, "context");
    expect_turn(be, ec, NULL, "GGUF by path");
    FILE* f = fopen(gguf, "rb");
    CHECK(f != NULL, "open %s", gguf);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t* bytes = malloc((size_t)size);
    CHECK(bytes && fread(bytes, 1, (size_t)size, f) == (size_t)size, "read GGUF");
    fclose(f);
    graph_builder gb2 = {bytes, (uint32_t)size};
    graph_builder_array arr2 = {&gb2, 1};
    CHECK(p_load(be, &arr2, autodetect, cpu, &g) == success, "load(autodetect, GGUF bytes)");
    free(bytes);
    CHECK(p_init_execution_context(be, g, &ec) == success, "context");
    expect_turn(be, ec, NULL, "GGUF from bytes");
    p_deinit_backend(be);
  }

  /* basic single adapter at load */
  snprintf(cfg, sizeof cfg, "{" SYS ", \"lora_adapters\": [{\"path\": \"%s\"}]}", a1);
  CHECK(p_init_backend(&be) == success, "init");
  CHECK(load_cfg(be, model, cfg, &g) == success, "load with adapter 1");
  CHECK(p_init_execution_context(be, g, &ec) == success, "context");
  expect_turn(be, ec, r1, "single adapter");
  p_deinit_backend(be);

  /* global adapters (init config) apply to later models; a load config's own set replaces them;
   * invalid entries are skipped and the others still apply */
  /* no path, missing file, not GGUF, not a LoRA (a model dir, a GGUF model), wrong shapes */
  const char* gguf_model = getenv("WASI_NN_GGUF") ? getenv("WASI_NN_GGUF") : "/etc/hostname";
  const char* wrong_shape =
      getenv("WASI_NN_WRONG_SHAPE") ? getenv("WASI_NN_WRONG_SHAPE") : "/etc/hostname";
  const char* other_arch =
      getenv("WASI_NN_OTHER_ARCH") ? getenv("WASI_NN_OTHER_ARCH") : "/etc/hostname";
  snprintf(cfg, sizeof cfg,
           "{\"lora_adapters\": [{\"scale\": 1.0}, {\"path\": \"/nonexistent/a.gguf\"}, "
           "{\"path\": \"%s\"}, {\"path\": \"/etc/hostname\"}, {\"path\": \"%s\"}, "
           "{\"path\": \"%s\"}, {\"path\": \"%s\"}, {\"path\": \"%s\", \"scale\": 1.0}]}",
           model, gguf_model, wrong_shape, other_arch, a2);
  CHECK(p_init_backend_with_config(&be, cfg, (uint32_t)strlen(cfg)) == success,
        "init with global adapters (7 invalid + adapter 2)");
  CHECK(load_cfg(be, model, "{" SYS "}", &g) == success, "load without lora_adapters");
  CHECK(p_init_execution_context(be, g, &ec) == success, "context");
  expect_turn(be, ec, r2, "global adapter 2 (invalid entries skipped)");
  graph g2;
  snprintf(cfg, sizeof cfg, "{" SYS ", \"lora_adapters\": [{\"path\": \"%s\"}]}", a1);
  CHECK(load_cfg(be, model, cfg, &g2) == success, "second model with its own adapter 1");
  graph_execution_context ec2;
  CHECK(p_init_execution_context(be, g2, &ec2) == success, "context");
  expect_turn(be, ec2, r1, "per-model set replaces the global one");
  graph g3;
  CHECK(load_cfg(be, model, "{" SYS ", \"lora_adapters\": []}", &g3) == success,
        "third model with []");
  graph_execution_context ec3;
  CHECK(p_init_execution_context(be, g3, &ec3) == success, "context");
  expect_turn(be, ec3, base_reply, "[] = the base model");
  expect_turn(be, ec, NULL, "first model's context still works (second turn)");

  /* sessions (on the last loaded model, adapter 1): runtime override for one session only,
   * dynamic load/unload, scales */
  graph g4;
  CHECK(load_cfg(be, model, cfg, &g4) == success, "fourth model with adapter 1");
  graph_execution_context s1, s2, s1b;
  CHECK(p_init_execution_context_with_session_id(be, "alice", &s1) == success, "session alice");
  CHECK(p_init_execution_context_with_session_id(be, "bob", &s2) == success, "session bob");
  CHECK(p_init_execution_context_with_session_id(be, "alice", &s1b) == success && s1b == s1,
        "same id, same context");
  char params[8192];
  snprintf(params, sizeof params, "{\"lora_adapters\": [{\"path\": \"%s\"}]}", a2);
  CHECK(run_params(be, s1, Q, params, out, sizeof out) == success && !strcmp(out, r2),
        "alice overrides with adapter 2: \"%s\"", out);
  CHECK(run_params(be, s2, Q, "{}", out, sizeof out) == success && !strcmp(out, r1),
        "bob keeps the model's adapter 1 (unaffected): \"%s\"", out);
  /* the second turn reuses the KV cache of the first; a different adapter set never does */
  long reused = -1;
  CHECK(run_params(be, s1, "And again?", "{}", out, sizeof out) == success &&
            (reused = reused_tokens(be, s1)) > 0,
        "alice's second turn reuses %ld cached tokens", reused);
  CHECK(run_params(be, s1, "Once more.", "{\"lora_adapters\": []}", out, sizeof out) == success &&
            (reused = reused_tokens(be, s1)) == 0,
        "adapter set changed: KV cache dropped (reused %ld)", reused);
  /* dynamic load/unload and scales at run time, each in a fresh session (single-turn replies) */
  CHECK(one(be, "t1", "{\"lora_adapters\": []}", out) && !strcmp(out, base_reply),
        "every adapter unloaded at run time: base reply");
  snprintf(params, sizeof params, "{\"lora_adapters\": [{\"path\": \"%s\", \"scale\": 0.0}]}", a1);
  CHECK(one(be, "t2", params, out) && !strcmp(out, base_reply), "scale 0 == base output");
  snprintf(params, sizeof params, "{\"lora_adapters\": [{\"path\": \"%s\", \"scale\": 1.0}]}", a2);
  CHECK(one(be, "t3", params, out) && !strcmp(out, r2), "adapter 2 loaded at run time: \"%s\"",
        out);
  snprintf(params, sizeof params,
           "{\"lora_adapters\": [{\"path\": \"%s\", \"scale\": 1.0}, {\"path\": \"%s\", \"scale\": "
           "0.0}]}",
           a1, a2);
  CHECK(one(be, "t4", params, out) && !strcmp(out, r1), "stack [A1:1, A2:0] == A1");
  snprintf(params, sizeof params,
           "{\"lora_adapters\": [{\"path\": \"%s\", \"scale\": 0.0}, {\"path\": \"%s\", \"scale\": "
           "1.0}]}",
           a1, a2);
  CHECK(one(be, "t5", params, out) && !strcmp(out, r2), "stack [A1:0, A2:1] == A2");
  snprintf(params, sizeof params,
           "{\"lora_adapters\": [{\"path\": \"%s\"}, {\"path\": \"%s\", \"scale\": 0.5}]}", a1, a2);
  CHECK(one(be, "t6", params, out) && (!merged || !strcmp(out, merged)),
        "stack [A1:1, A2:0.5] == the merged model's reply (nnpipe infer --merge): \"%s\"", out);
  CHECK(run_params(be, s2, Q, "{}", out, sizeof out) == success,
        "bob still on adapter 1 after the others changed");
  CHECK(run_params(be, s1, Q, "{\"lora_adapters\": null}", out, sizeof out) == success,
        "back to the model's set");
  CHECK(run_params(be, s2, Q, "{\"temperature\": \"hot\"}", out, sizeof out) == invalid_argument,
        "wrong runtime param type: invalid_argument");
  CHECK(p_close_execution_context(be, s1) == success, "close alice");
  CHECK(p_compute(be, s1) == not_found, "closed context: not_found");
  CHECK(p_init_execution_context_with_session_id(be, "alice", &s1) == success && s1 != s1b,
        "alice reopened fresh");
  CHECK(p_deinit_backend(be) == success, "deinit with open sessions frees all");

  /* max_sessions LRU eviction and idle timeout */
  const char* bcfg = "{\"backend\": {\"max_sessions\": 2, \"idle_timeout_ms\": 300}}";
  CHECK(p_init_backend_with_config(&be, bcfg, (uint32_t)strlen(bcfg)) == success,
        "init max_sessions 2");
  CHECK(load_cfg(be, model, "{" SYS ", \"n_predict\": 4}", &g) == success, "load");
  graph_execution_context a, b, c, x;
  p_init_execution_context_with_session_id(be, "a", &a);
  usleep(1000);
  p_init_execution_context_with_session_id(be, "b", &b);
  usleep(1000);
  CHECK(p_init_execution_context_with_session_id(be, "a", &x) == success && x == a, "a touched");
  usleep(1000);
  p_init_execution_context_with_session_id(be, "c", &c);
  CHECK(p_compute(be, b) == not_found, "b (least recently used) evicted");
  CHECK(p_init_execution_context_with_session_id(be, "a", &x) == success && x == a, "a kept");
  usleep(400 * 1000);
  /* Any call closes what has been idle past the timeout (here: compute itself). */
  CHECK(p_compute(be, a) == not_found && p_compute(be, c) == not_found,
        "idle sessions closed at the next call");
  CHECK(p_init_execution_context_with_session_id(be, "d", &x) == success,
        "d after the idle timeout");
  p_deinit_backend(be);
}

static long rss_kb(void) {
  FILE* f = fopen("/proc/self/statm", "r");
  long pages = 0, res = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
  }
  return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void cycles(const char* model, const char* a1, int n) {
  char cfg[4096], out[4096];
  snprintf(cfg, sizeof cfg, "{" SYS ", \"n_predict\": 4, \"lora_adapters\": [{\"path\": \"%s\"}]}",
           a1);
  long at10 = 0;
  for (int i = 0; i < n; ++i) {
    void* be;
    graph g;
    graph_execution_context ec;
    if (p_init_backend(&be) != success || load_cfg(be, model, cfg, &g) != success ||
        p_init_execution_context_with_session_id(be, "s", &ec) != success ||
        run_params(be, ec, Q, "{}", out, sizeof out) != success ||
        p_close_execution_context(be, ec) != success || p_deinit_backend(be) != success) {
      printf("FAIL: cycle %d\n", i);
      exit(1);
    }
    if (i == 9) at10 = rss_kb();
  }
  long end = rss_kb();
  printf("rss after 10 cycles: %ld kB, after %d: %ld kB\n", at10, n, end);
#if defined(NNPIPE_ASAN)
  /* ASan's quarantine keeps freed memory mapped, so RSS grows by design here; LeakSanitizer
   * checks at exit that nothing leaked, and the Release build runs the RSS check. */
  printf("ok: %d cycles under ASan (RSS check in the Release build, leaks by LSan at exit)\n", n);
#else
  /* A leak of even one model or adapter per cycle would add n * (its size): far above 8 MB. */
  CHECK(n < 100 || end - at10 < 8 * 1024, "%d load/run/unload cycles: memory flat", n);
#endif
}

/* Decode speed through the backend with 0, 1 and 2 adapters (median of 5 runs of 64 tokens). */
static double meta_num(void* be, graph_execution_context ec, const char* key) {
  char meta[2048], k[64];
  tensor_data m = {(uint8_t*)meta, sizeof meta - 1};
  uint32_t n = 0;
  if (p_get_output(be, ec, 1, &m, &n) != success) return -1;
  meta[n] = 0;
  snprintf(k, sizeof k, "\"%s\":", key);
  const char* p = strstr(meta, k);
  return p ? atof(p + strlen(k)) : -1;
}

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static void bench(const char* model, const char* a1, const char* a2) {
  void* be;
  graph g;
  CHECK(p_init_backend(&be) == success && load_cfg(be, model, "{" SYS "}", &g) == success, "load");
  char sets[3][8192], out[8192];
  snprintf(sets[0], sizeof sets[0],
           "{\"lora_adapters\": [], \"ignore_eos\": true, \"max_tokens\": 64}");
  snprintf(sets[1], sizeof sets[1],
           "{\"lora_adapters\": [{\"path\": \"%s\"}], \"ignore_eos\": true, \"max_tokens\": 64}",
           a1);
  snprintf(sets[2], sizeof sets[2],
           "{\"lora_adapters\": [{\"path\": \"%s\"}, {\"path\": \"%s\"}], \"ignore_eos\": true, "
           "\"max_tokens\": 64}",
           a1, a2);
  printf("{");
  for (int s = 0; s < 3; ++s) {
    double gen[5], pp[5];
    for (int r = 0; r < 5; ++r) {
      graph_execution_context ec;
      p_init_execution_context_with_session_id(be, "bench", &ec);
      CHECK(run_params(be, ec, Q, sets[s], out, sizeof out) == success, "run");
      gen[r] = meta_num(be, ec, "gen_tok_s");
      pp[r] = meta_num(be, ec, "prompt_tok_s");
      p_close_execution_context(be, ec);
    }
    qsort(gen, 5, sizeof gen[0], cmp_d);
    qsort(pp, 5, sizeof pp[0], cmp_d);
    printf("%s\"%d_adapters\": {\"gen_tok_s\": %.1f, \"prompt_tok_s\": %.1f}", s ? ", " : "", s,
           gen[2], pp[2]);
  }
  printf("}\n");
  p_deinit_backend(be);
}

/* ---- issue 13 item 8, with a model ---------------------------------------------------------- */

static void meta_of(void* be, graph_execution_context ec, char* meta, size_t cap) {
  tensor_data m = {(uint8_t*)meta, (uint32_t)cap - 1};
  uint32_t n = 0;
  if (p_get_output(be, ec, 1, &m, &n) != success) n = 0;
  meta[n] = 0;
}

/* A reply with a NUL byte inside (NaN logits) is garbage. */
static wasi_nn_error run_exact(void* be, graph_execution_context ec, const char* prompt,
                               const char* params, char* out, uint32_t cap, uint32_t* n) {
  *n = 0;
  wasi_nn_error e = p_run_inference_for_session_with_params(
      be, ec, prompt, (uint32_t)strlen(prompt), params, (uint32_t)strlen(params), out, cap - 1, n);
  out[e == success ? *n : 0] = 0;
  return e;
}

#define CTX128                                                                           \
  "\"model\": {\"system_prompt\": \"You are a helpful assistant.\", \"ctx_size\": 128, " \
  "\"n_predict\": 24}"

/* (a) Turns past a full context drop the oldest turns (system prompt kept) and say so. */
static void item8_context_full_drops_oldest_turns(const char* model) {
  void* be;
  graph g;
  graph_execution_context ec;
  char out[4096], meta[2048];
  CHECK(p_init_backend(&be) == success && load_cfg(be, model, "{" CTX128 "}", &g) == success,
        "item8_context_full_drops_oldest_turns: load with ctx_size 128");
  CHECK(p_init_execution_context_with_session_id(be, "long", &ec) == success,
        "item8_context_full_drops_oldest_turns: session");
  int shifted = 0;
  for (int i = 0; i < 12; ++i) {
    CHECK(turn(be, ec, Q, out, sizeof out) == success,
          "item8_context_full_drops_oldest_turns: turn %d succeeds", i + 1);
    meta_of(be, ec, meta, sizeof meta);
    const char* d = strstr(meta, "\"dropped_turns\":");
    if (strstr(meta, "\"context_shifted\":true")) {
      ++shifted;
      CHECK(d && atol(d + strlen("\"dropped_turns\":")) >= 1,
            "item8_context_full_drops_oldest_turns: turn %d: %s", i + 1, meta);
    }
    const char* it = strstr(meta, "\"input_tokens\":");
    CHECK(it && atol(it + strlen("\"input_tokens\":")) <= 128,
          "item8_context_full_drops_oldest_turns: the prompt fits the context");
  }
  CHECK(shifted > 0, "item8_context_full_drops_oldest_turns: the context shifted %d time(s)",
        shifted);
  p_deinit_backend(be);
}

/* (a) The probe: a reply that fills the context, then any turn (even empty) still works; a
 * message that cannot fit alone is prompt_tool_long and the session is not wedged by it. */
static void item8_filled_context_recovers(const char* model) {
  void* be;
  graph g;
  graph_execution_context ec;
  char out[65536], meta[2048], big[8192];
  uint32_t n;
  CHECK(p_init_backend(&be) == success && load_cfg(be, model, "{" CTX128 "}", &g) == success,
        "item8_filled_context_recovers: load with ctx_size 128");
  CHECK(p_init_execution_context_with_session_id(be, "fill", &ec) == success,
        "item8_filled_context_recovers: session");
  CHECK(run_exact(be, ec, Q, "{\"max_tokens\": 5000, \"ignore_eos\": true}", out, sizeof out, &n) ==
            success,
        "item8_filled_context_recovers: max_tokens 5000, ignore_eos: success");
  meta_of(be, ec, meta, sizeof meta);
  CHECK(strstr(meta, "\"stop_reason\":\"context\""), "item8_filled_context_recovers: filled: %s",
        meta);
  CHECK(run_exact(be, ec, Q, "{}", out, sizeof out, &n) == success,
        "item8_filled_context_recovers: the next turn succeeds");
  meta_of(be, ec, meta, sizeof meta);
  CHECK(strstr(meta, "\"context_shifted\":true") && strstr(meta, "\"dropped_turns\":1"),
        "item8_filled_context_recovers: the full turn was dropped: %s", meta);
  CHECK(run_exact(be, ec, "", "{}", out, sizeof out, &n) == success,
        "item8_filled_context_recovers: an empty message succeeds");
  big[0] = 0;
  for (int i = 0; i < 300; ++i) strcat(big, "word ");
  CHECK(run_exact(be, ec, big, "{}", out, sizeof out, &n) == prompt_tool_long,
        "item8_message_too_long: a message that cannot fit alone: prompt_tool_long");
  CHECK(run_exact(be, ec, Q, "{}", out, sizeof out, &n) == success,
        "item8_message_too_long: the session goes on after it");
  p_deinit_backend(be);
}

/* (c) compute before any set_input is an error; (d) a NUL inside namelen is refused. */
static void item8_order_and_names(const char* model) {
  void* be;
  graph g;
  graph_execution_context ec;
  char out[4096], name[4096];
  CHECK(p_init_backend(&be) == success, "init");
  size_t len = strlen(model);
  CHECK(len + 6 < sizeof name, "model path length");
  memcpy(name, model, len);
  memcpy(name + len, "\0junk", 5);
  CHECK(p_load_by_name(be, name, (uint32_t)(len + 5), &g) == invalid_argument,
        "item8_model_name_with_nul: a NUL within namelen: invalid_argument");
  CHECK(p_load_by_name(be, name, (uint32_t)len, &g) == success,
        "item8_model_name_with_nul: the same name without it loads");
  CHECK(p_init_execution_context(be, g, &ec) == success, "context");
  CHECK(p_compute(be, ec) == invalid_argument,
        "item8_compute_before_set_input: invalid_argument (no input set)");
  CHECK(turn(be, ec, Q, out, sizeof out) == success,
        "item8_compute_before_set_input: after set_input it runs");
  p_deinit_backend(be);
}

/* (e) ctx_size beyond the model's context is capped at load (a warning), not allocated. */
static void item8_ctx_size_capped(const char* model) {
  void* be;
  graph g;
  graph_execution_context ec;
  char out[4096], meta[2048];
  CHECK(p_init_backend(&be) == success &&
            load_cfg(be, model, "{\"model\": {\"ctx_size\": 2000000, \"n_predict\": 4}}", &g) ==
                success,
        "item8_ctx_size_capped: load with ctx_size 2000000");
  CHECK(p_init_execution_context(be, g, &ec) == success &&
            turn(be, ec, Q, out, sizeof out) == success,
        "item8_ctx_size_capped: a turn");
  meta_of(be, ec, meta, sizeof meta);
  const char* c = strstr(meta, "\"n_ctx\":");
  long n_ctx = c ? atol(c + strlen("\"n_ctx\":")) : -1;
  CHECK(n_ctx > 0 && n_ctx < 2000000, "item8_ctx_size_capped: n_ctx %ld (the model's)", n_ctx);
  p_deinit_backend(be);
}

static long meta_long(const char* meta, const char* key) {
  char k[64];
  snprintf(k, sizeof k, "\"%s\":", key);
  const char* p = strstr(meta, k);
  return p ? atol(p + strlen(k)) : -1;
}

/* (f) The KV memory of all sessions is bounded: past backend.max_sessions_memory_mb the least
 * recently used idle session is evicted (max_sessions alone would allow all of them). */
static void item8_sessions_memory_bound(const char* model) {
  void* be;
  graph g;
  graph_execution_context s[3];
  char out[4096], meta[2048], cfg[256];
  CHECK(p_init_backend(&be) == success && load_cfg(be, model, "{" SYS "}", &g) == success &&
            p_init_execution_context_with_session_id(be, "probe", &s[0]) == success &&
            run_params(be, s[0], Q, "{}", out, sizeof out) == success,
        "item8_sessions_memory_bound: one turn");
  meta_of(be, s[0], meta, sizeof meta);
  long kv = meta_long(meta, "kv_bytes");
  CHECK(kv > 0, "item8_sessions_memory_bound: one session's KV: %ld bytes", kv);
  p_deinit_backend(be);
  /* room for two such sessions, not three */
  snprintf(cfg, sizeof cfg, "{\"backend\": {\"max_sessions_memory_mb\": %.9f}}",
           2.5 * (double)kv / (1024.0 * 1024.0));
  CHECK(p_init_backend_with_config(&be, cfg, (uint32_t)strlen(cfg)) == success &&
            load_cfg(be, model, "{" SYS "}", &g) == success,
        "item8_sessions_memory_bound: %s", cfg);
  const char* ids[3] = {"m0", "m1", "m2"};
  for (int i = 0; i < 3; ++i) {
    CHECK(p_init_execution_context_with_session_id(be, ids[i], &s[i]) == success &&
              run_params(be, s[i], Q, "{}", out, sizeof out) == success,
          "item8_sessions_memory_bound: session %s, one turn", ids[i]);
    usleep(1000);
  }
  CHECK(p_close_execution_context(be, s[0]) == not_found,
        "item8_sessions_memory_bound: m0 (least recently used) evicted");
  CHECK(p_close_execution_context(be, s[1]) == success &&
            p_close_execution_context(be, s[2]) == success,
        "item8_sessions_memory_bound: m1 and m2 kept");
  p_deinit_backend(be);
}

/* (h) LoRA scales 1e39 / -1e38 and an adapter whose alpha is NaN are skipped with a warning: the
 * reply is the base model's, never NUL bytes. */
static void item8_lora_non_finite(const char* model, const char* a1, const char* nan_alpha) {
  void* be;
  graph g;
  graph_execution_context ec;
  char base[4096], out[4096], cfg[8192];
  uint32_t n;
  CHECK(p_init_backend(&be) == success && load_cfg(be, model, "{" SYS "}", &g) == success &&
            p_init_execution_context_with_session_id(be, "base", &ec) == success &&
            run_exact(be, ec, Q, "{}", base, sizeof base, &n) == success,
        "item8_lora_non_finite: base reply \"%s\"", base);
  const char* scales[] = {"1e39", "-1e38", "1000"};
  for (int i = 0; i < 3; ++i) {
    snprintf(cfg, sizeof cfg, "{\"lora_adapters\": [{\"path\": \"%s\", \"scale\": %s}]}", a1,
             scales[i]);
    CHECK(p_init_execution_context_with_session_id(be, scales[i], &ec) == success &&
              run_exact(be, ec, Q, cfg, out, sizeof out, &n) == success && strlen(out) == n &&
              !strcmp(out, base),
          "item8_lora_scale_out_of_range: scale %s skipped: \"%s\"", scales[i], out);
  }
  snprintf(cfg, sizeof cfg, "{" SYS ", \"lora_adapters\": [{\"path\": \"%s\"}]}", nan_alpha);
  CHECK(load_cfg(be, model, cfg, &g) == success, "item8_lora_nan_alpha: load with it");
  CHECK(p_init_execution_context(be, g, &ec) == success, "context");
  CHECK(turn(be, ec, Q, out, sizeof out) == success, "turn");
  tensor_data o = {(uint8_t*)out, sizeof out - 1};
  CHECK(p_get_output(be, ec, 0, &o, &n) == success && memchr(out, 0, n) == NULL &&
            (out[n] = 0, !strcmp(out, base)),
        "item8_lora_nan_alpha: skipped, no NUL bytes: \"%s\"", out);
  p_deinit_backend(be);
}

static void item8(const char* model, const char* a1, const char* nan_alpha) {
  item8_context_full_drops_oldest_turns(model);
  item8_filled_context_recovers(model);
  item8_order_and_names(model);
  item8_ctx_size_capped(model);
  item8_sessions_memory_bound(model);
  item8_lora_non_finite(model, a1, nan_alpha);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s LIB errors|full|cycles|bench|item8 ...\n", argv[0]);
    return 2;
  }
  open_lib(argv[1]);
  if (!strcmp(argv[2], "errors")) {
    errors();
  } else if (!strcmp(argv[2], "full") && (argc == 8 || argc == 9)) {
    full(argv[3], argv[4], argv[5], argv[6], argv[7], argc == 9 ? argv[8] : NULL);
  } else if (!strcmp(argv[2], "bench") && argc == 6) {
    bench(argv[3], argv[4], argv[5]);
  } else if (!strcmp(argv[2], "item8") && argc == 6) {
    item8(argv[3], argv[4], argv[5]);
  } else if (!strcmp(argv[2], "cycles") && argc == 6) {
    cycles(argv[3], argv[4], atoi(argv[5]));
  } else {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  printf("all checks passed\n");
  return failures;
}
