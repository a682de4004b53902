/* The public header must compile as C99 (checked with -std=c99 -pedantic-errors). */
#include "wasi_nn/wasi_nn_backend.h"

int wasi_nn_header_is_c(void);
int wasi_nn_header_is_c(void) {
  tensor t = {0};
  return (int)sizeof t + (int)success + (int)ggml + (int)cpu + (int)u8;
}
