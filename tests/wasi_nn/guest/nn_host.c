/* The native half of the Node.js bridge: dlopen()s libwasi_nn_llamacpp.so like WAMR does and
 * serves the wasi_ephemeral_nn calls that run_guest.mjs forwards over two FIFOs.
 *   nn_host LIB REQUEST_FIFO REPLY_FIFO
 * Request: u32 op, u32 a, u32 b, u32 len1, bytes1, u32 len2, bytes2 (little endian).
 * Reply: u32 err, u32 value, u32 len, bytes. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn/wasi_nn_backend.h"

enum {
  OP_LOAD_CFG = 1,
  OP_INIT_CTX = 2,
  OP_SET_INPUT = 3,
  OP_COMPUTE = 4,
  OP_GET_OUTPUT = 5,
  OP_LOAD = 6
};

static int rd(FILE* f, void* p, size_t n) {
  return n == 0 || fread(p, 1, n, f) == n;
}

static char* rd_bytes(FILE* f, uint32_t* len) {
  if (!rd(f, len, 4)) return NULL;
  char* b = malloc(*len + 1);
  if (!b || !rd(f, b, *len)) {
    free(b);
    return NULL;
  }
  b[*len] = 0;
  return b;
}

static void reply(FILE* f, uint32_t err, uint32_t value, const void* data, uint32_t len) {
  fwrite(&err, 4, 1, f);
  fwrite(&value, 4, 1, f);
  fwrite(&len, 4, 1, f);
  if (len) fwrite(data, 1, len, f);
  fflush(f);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: nn_host LIB REQUEST_FIFO REPLY_FIFO\n");
    return 2;
  }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "nn_host: %s\n", dlerror());
    return 1;
  }
  __typeof__(&init_backend) p_init = (__typeof__(&init_backend))dlsym(h, "init_backend");
  __typeof__(&deinit_backend) p_deinit = (__typeof__(&deinit_backend))dlsym(h, "deinit_backend");
  __typeof__(&load_by_name_with_config) p_load_cfg =
      (__typeof__(&load_by_name_with_config))dlsym(h, "load_by_name_with_config");
  __typeof__(&load_by_name) p_load = (__typeof__(&load_by_name))dlsym(h, "load_by_name");
  __typeof__(&init_execution_context) p_init_ctx =
      (__typeof__(&init_execution_context))dlsym(h, "init_execution_context");
  __typeof__(&set_input) p_set_input = (__typeof__(&set_input))dlsym(h, "set_input");
  __typeof__(&compute) p_compute = (__typeof__(&compute))dlsym(h, "compute");
  __typeof__(&get_output) p_get_output = (__typeof__(&get_output))dlsym(h, "get_output");
  if (!p_init || !p_deinit || !p_load_cfg || !p_load || !p_init_ctx || !p_set_input || !p_compute ||
      !p_get_output) {
    fprintf(stderr, "nn_host: %s lacks the WASI-NN backend symbols\n", argv[1]);
    return 1;
  }
  FILE* in = fopen(argv[2], "rb");
  FILE* out = fopen(argv[3], "wb");
  if (!in || !out) {
    fprintf(stderr, "nn_host: cannot open the FIFOs\n");
    return 1;
  }
  void* be = NULL;
  if (p_init(&be) != success) return 1;
  for (;;) {
    uint32_t hdr[3], l1 = 0, l2 = 0;
    if (!rd(in, hdr, sizeof hdr)) break; /* the guest exited */
    char *b1 = rd_bytes(in, &l1), *b2 = rd_bytes(in, &l2);
    if (!b1 || !b2) break;
    uint32_t v = 0, err = invalid_argument;
    switch (hdr[0]) {
      case OP_LOAD_CFG:
        err = p_load_cfg(be, b1, l1, b2, l2, &v);
        break;
      case OP_LOAD:
        err = p_load(be, b1, l1, &v);
        break;
      case OP_INIT_CTX:
        err = p_init_ctx(be, hdr[1], &v);
        break;
      case OP_SET_INPUT: {
        uint32_t dim = l1;
        tensor_dimensions dims = {&dim, 1};
        tensor t;
        memset(&t, 0, sizeof t);
        t.dimensions = &dims;
        t.type = (uint8_t)hdr[2];
        t.data.buf = (uint8_t*)b1;
        t.data.size = l1;
        err = p_set_input(be, hdr[1], 0, &t);
        break;
      }
      case OP_COMPUTE:
        err = p_compute(be, hdr[1]);
        break;
      case OP_GET_OUTPUT: {
        uint32_t max = 0, n = 0;
        if (l2 == 4) memcpy(&max, b2, 4);
        uint8_t* buf = malloc(max ? max : 1);
        tensor_data d = {buf, max};
        err = p_get_output(be, hdr[1], hdr[2], &d, &n);
        reply(out, err, n, buf, err == success ? n : 0);
        free(buf);
        free(b1);
        free(b2);
        continue;
      }
      default:
        break;
    }
    reply(out, err, v, NULL, 0);
    free(b1);
    free(b2);
  }
  p_deinit(be);
  return 0;
}
