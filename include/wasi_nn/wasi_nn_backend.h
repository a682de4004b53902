/* nnpipe's WASI-NN backend (libwasi_nn_llamacpp.so): WAMR's backend plugin ABI plus a
 * session-aware extended API with LoRA adapters. Types and error numbers are WAMR's
 * (core/iwasm/libraries/wasi-nn/include/wasi_nn_types.h). Every function returns a wasi_nn_error;
 * no C++ exception ever crosses this boundary. Plain C99. The backend handle (void* ctx) is opaque
 * and never reused: every function answers invalid_argument for one that is not live (NULL, forged
 * or already freed by deinit_backend). */
#ifndef WASI_NN_BACKEND_H
#define WASI_NN_BACKEND_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define WASI_NN_EXPORT __attribute__((visibility("default")))
#else
#define WASI_NN_EXPORT
#endif

typedef enum {
  success = 0,
  invalid_argument = 1,
  invalid_encoding = 2,
  missing_memory = 3,
  busy = 4,
  runtime_error = 5,
  unsupported_operation = 6,
  too_large = 7,
  not_found = 8,
  end_of_sequence = 100,
  context_full = 101,
  prompt_tool_long = 102, /* (sic, WAMR's spelling) */
  model_not_found = 103
} wasi_nn_error;

typedef enum {
  openvino = 0,
  onnx = 1,
  tensorflow = 2,
  pytorch = 3,
  tensorflowlite = 4,
  ggml = 5,
  autodetect = 6,
  unknown_backend = 7
} graph_encoding;

typedef enum { cpu = 0, gpu = 1, tpu = 2 } execution_target;
typedef enum { fp16 = 0, fp32 = 1, fp64 = 2, u8 = 3, i32 = 4, i64 = 5 } tensor_type;

typedef uint32_t graph;
typedef uint32_t graph_execution_context;

typedef struct {
  uint8_t* buf;
  uint32_t size;
} tensor_data;

typedef struct {
  uint32_t* buf;
  uint32_t size;
} tensor_dimensions;

typedef struct {
  tensor_dimensions* dimensions;
  uint8_t type; /* tensor_type */
  uint8_t _pad[3];
  tensor_data data;
} tensor;

typedef struct {
  uint8_t* buf;
  uint32_t size;
} graph_builder;

typedef struct {
  graph_builder* buf;
  uint32_t size;
} graph_builder_array;

/* ---- WAMR's backend plugin ABI (dlsym()ed by iwasm) ---------------------------------------- */
/* Config-less init: the config is {} plus WASI_NN_LOG_LEVEL / WASI_NN_LOG_FILE. */
WASI_NN_EXPORT wasi_nn_error init_backend(void** ctx);
/* Frees every graph, execution context, session and adapter of the backend. A second call with
 * the same handle is invalid_argument (nothing freed twice). */
WASI_NN_EXPORT wasi_nn_error deinit_backend(void* ctx);
/* builder->buf[0] holds a model file path (GGUF or HF directory) or the GGUF bytes. */
WASI_NN_EXPORT wasi_nn_error load(void* ctx, graph_builder_array* builder, graph_encoding enc,
                                  execution_target target, graph* g);
WASI_NN_EXPORT wasi_nn_error load_by_name(void* ctx, const char* name, uint32_t namelen, graph* g);
/* config: the JSON object of the README (model/sampling/stopping/lora_adapters...). */
WASI_NN_EXPORT wasi_nn_error load_by_name_with_config(void* ctx, const char* name, uint32_t namelen,
                                                      const char* config, uint32_t config_len,
                                                      graph* g);
WASI_NN_EXPORT wasi_nn_error init_execution_context(void* ctx, graph g,
                                                    graph_execution_context* exec_ctx);
/* index 0: the user's message, a u8 tensor of UTF-8 bytes. */
WASI_NN_EXPORT wasi_nn_error set_input(void* ctx, graph_execution_context exec_ctx, uint32_t index,
                                       tensor* input);
/* One chat turn (history and KV cache kept in the context); invalid_argument before any
 * set_input. When the turn does not fit the context the oldest turns are dropped (the system
 * prompt kept; output 1 says "context_shifted"/"dropped_turns"); a message that cannot fit alone
 * is prompt_tool_long. */
WASI_NN_EXPORT wasi_nn_error compute(void* ctx, graph_execution_context exec_ctx);
/* index 0: the reply (UTF-8); index 1: JSON metadata. out->buf/out->size is the caller's buffer
 * and its capacity; *out_size receives the bytes written (too_large if it does not fit). */
WASI_NN_EXPORT wasi_nn_error get_output(void* ctx, graph_execution_context exec_ctx, uint32_t index,
                                        tensor_data* out, uint32_t* out_size);

/* ---- extended API ---------------------------------------------------------------------------- */
/* Init with a config JSON (its lora_adapters are the global set: every later model uses them unless
 * its load config has its own lora_adapters). */
WASI_NN_EXPORT wasi_nn_error init_backend_with_config(void** ctx, const char* config,
                                                      uint32_t config_len);
WASI_NN_EXPORT wasi_nn_error wasi_init_backend_with_config(void** ctx, const char* config,
                                                           uint32_t config_len);
WASI_NN_EXPORT wasi_nn_error wasi_load_by_name_with_config(void* ctx, const char* name,
                                                           uint32_t namelen, const char* config,
                                                           uint32_t config_len, graph* g);
/* The execution context of `session_id` (at most 256 bytes of UTF-8, no control bytes) on the most
 * recently loaded graph: created on first use (evicting the least recently used session beyond
 * backend.max_sessions; past backend.max_sessions_memory_mb of KV cache after a turn), the same one
 * after. */
WASI_NN_EXPORT wasi_nn_error init_execution_context_with_session_id(void* ctx,
                                                                    const char* session_id,
                                                                    graph_execution_context* out);
/* Frees the context (history, KV cache, its adapter set). */
WASI_NN_EXPORT wasi_nn_error close_execution_context(void* ctx, graph_execution_context exec_ctx);
/* One chat turn with a runtime JSON (sampling/stopping keys, max_tokens, system_prompt,
 * lora_adapters: this session's adapter set from now on, [] = the base model, null = back to the
 * model's set). Writes the reply (not NUL-terminated) into out[0..out_max), its length to
 * *out_size. */
WASI_NN_EXPORT wasi_nn_error run_inference_for_session_with_params(
    void* ctx, graph_execution_context exec_ctx, const char* prompt, uint32_t prompt_len,
    const char* params, uint32_t params_len, char* out, uint32_t out_max, uint32_t* out_size);

#ifdef __cplusplus
}
#endif
#endif /* WASI_NN_BACKEND_H */
