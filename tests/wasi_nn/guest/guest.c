/* A WebAssembly (wasm32-wasi) guest that chats through wasi_ephemeral_nn imports only.
 *   guest.wasm MODEL PROMPT [ADAPTER[:SCALE]...]
 * loads MODEL with the adapters stacked in order (load_by_name_with_config's lora_adapters),
 * sends PROMPT as input 0 (u8 bytes), computes and prints output 0 (the reply).
 * Build: clang --target=wasm32-wasi --sysroot=/usr -O2 guest.c -o guest.wasm */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NN(name) __attribute__((import_module("wasi_ephemeral_nn"), import_name(#name)))

/* wasm32 layout: dimensions {buf, size} at 0, type at 8, data {buf, size} at 12. */
typedef struct {
  uint32_t* buf;
  uint32_t size;
} dims_t;
typedef struct {
  uint8_t* buf;
  uint32_t size;
} data_t;
typedef struct {
  dims_t dimensions;
  uint8_t type;
  data_t data;
} tensor_t;
_Static_assert(sizeof(void*) == 4 && __builtin_offsetof(tensor_t, type) == 8 &&
                   __builtin_offsetof(tensor_t, data) == 12,
               "wasm32 tensor layout");

NN(load_by_name_with_config)
uint32_t nn_load_by_name_with_config(const char* name, uint32_t name_len, const char* config,
                                     uint32_t config_len, uint32_t* graph);
NN(init_execution_context) uint32_t nn_init_execution_context(uint32_t graph, uint32_t* ctx);
NN(set_input) uint32_t nn_set_input(uint32_t ctx, uint32_t index, tensor_t* t);
NN(compute) uint32_t nn_compute(uint32_t ctx);
NN(get_output)
uint32_t nn_get_output(uint32_t ctx, uint32_t index, uint8_t* buf, uint32_t max, uint32_t* written);

static char config[16384];

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: guest.wasm MODEL PROMPT [ADAPTER[:SCALE]...]\n");
    return 2;
  }
  size_t n = (size_t)snprintf(config, sizeof config,
                              "{\"model\": {\"system_prompt\": \"You are a helpful assistant.\", "
                              "\"n_predict\": 64}, \"sampling\": {\"temperature\": 0}, "
                              "\"lora_adapters\": [");
  for (int i = 3; i < argc; ++i) {
    char path[4096];
    snprintf(path, sizeof path, "%s", argv[i]);
    const char* scale = "1.0";
    char* colon = strrchr(path, ':');
    if (colon && colon[1] && strspn(colon + 1, "0123456789.") == strlen(colon + 1)) {
      *colon = 0;
      scale = colon + 1;
    }
    n += (size_t)snprintf(config + n, sizeof config - n, "%s{\"path\": \"%s\", \"scale\": %s}",
                          i > 3 ? ", " : "", path, scale);
  }
  n += (size_t)snprintf(config + n, sizeof config - n, "]}");
  if (n >= sizeof config) return 2;

  uint32_t graph = 0, ctx = 0, err;
  if ((err = nn_load_by_name_with_config(argv[1], (uint32_t)strlen(argv[1]), config, (uint32_t)n,
                                         &graph))) {
    fprintf(stderr, "load_by_name_with_config: error %u\n", err);
    return 1;
  }
  if ((err = nn_init_execution_context(graph, &ctx))) {
    fprintf(stderr, "init_execution_context: error %u\n", err);
    return 1;
  }
  uint32_t dim = (uint32_t)strlen(argv[2]);
  tensor_t t = {{&dim, 1}, 3 /* u8 */, {(uint8_t*)argv[2], dim}};
  if ((err = nn_set_input(ctx, 0, &t))) {
    fprintf(stderr, "set_input: error %u\n", err);
    return 1;
  }
  if ((err = nn_compute(ctx))) {
    fprintf(stderr, "compute: error %u\n", err);
    return 1;
  }
  static uint8_t out[8192];
  uint32_t written = 0;
  if ((err = nn_get_output(ctx, 0, out, sizeof out - 1, &written))) {
    fprintf(stderr, "get_output: error %u\n", err);
    return 1;
  }
  out[written] = 0;
  printf("%s\n", (char*)out);
  return 0;
}
