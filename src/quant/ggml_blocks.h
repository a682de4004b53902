// ggml's quantized block layouts as plain structs, shared by the quantizers (quant/) and the
// kernels of every backend (backend/cpu today, a CUDA one later): code names a field
// (`b->qs[j]`, `y[ib].d`) instead of a byte offset (`x + ib * 34 + 2`).
//
// The layouts are ggml's (ggml-common.h), byte for byte: the GGUF files and llama.cpp's
// activation buffers are these bytes. Half-precision scales are uint16_t f16 bits. All multi-byte
// values are little-endian.
//
// Alignment: the structs are packed (alignof 1) because their bytes may sit anywhere: a GGUF file
// may declare general.alignment = 1, and a row of 22-byte Q5_0 blocks puts every other block at
// an odd multiple of 2. Reading a member through a block pointer (`b->d`, `b->qh`,
// `b->bsums[j]`) is therefore valid at any address; never take the address of a multi-byte member
// (an int16_t* to `bsums` may be misaligned): vector loads take the block's bytes + offsetof.
//
// Only <cstdint>, plain structs and NNPIPE_HOST_DEVICE helpers: the header compiles as C++ and as
// CUDA (tests/unit/test_ggml_blocks.cpp checks the sizes against the DType traits).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define NNPIPE_HOST_DEVICE __host__ __device__
#else
#define NNPIPE_HOST_DEVICE
#endif

namespace nnpipe {

// Elements per block: the legacy types and Q8_0/Q8_1 (kQK), the K-quants and Q8_K (kQK_K).
inline constexpr int kQK = 32;
inline constexpr int kQK_K = 256;

#pragma pack(push, 1)

// Q8_0: x = d * qs[j].
struct block_q8_0 {
  uint16_t d;
  int8_t qs[kQK];
};

// Q8_1 (activations of Q4_1/Q5_1): as Q8_0 plus s = d * sum(qs) in f16.
struct block_q8_1 {
  uint16_t d;
  uint16_t s;
  int8_t qs[kQK];
};

// Q4_0: x = d * (q - 8); element j < 16 is the low nibble of qs[j], element j + 16 the high one.
struct block_q4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};

// Q4_1: x = d * q + m, nibbles as Q4_0.
struct block_q4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQK / 2];
};

// Q5_0: x = d * (q - 16); the nibbles as Q4_0, bit j of qh the fifth bit of element j.
struct block_q5_0 {
  uint16_t d;
  uint32_t qh;
  uint8_t qs[kQK / 2];
};

// Q5_1: x = d * q + m, bits as Q5_0.
struct block_q5_1 {
  uint16_t d;
  uint16_t m;
  uint32_t qh;
  uint8_t qs[kQK / 2];
};

// Q4_K: 8 sub-blocks of 32, x = d * sc[s] * q - dmin * m[s] with 6-bit sc/m packed in `scales`
// (scale_min_k4). qs byte 32*p + l: element 64*p + l in the low nibble, 64*p + 32 + l high.
struct block_q4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[kQK_K / 2];
};

// Q5_K: Q4_K plus qh, whose bit s of byte l is the fifth bit of element 32*s + l.
struct block_q5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};

// Q6_K: 16 groups of 16, x = d * scales[g] * (q - 32); q's low 4 bits in ql, high 2 in qh.
struct block_q6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};

// Q8_K (activations of the K-quants): f32 scale, bsums[g] = sum of qs[16g .. 16g + 16).
struct block_q8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};

#pragma pack(pop)

static_assert(sizeof(block_q8_0) == 34 && alignof(block_q8_0) == 1);
static_assert(sizeof(block_q8_1) == 36 && alignof(block_q8_1) == 1);
static_assert(sizeof(block_q4_0) == 18 && alignof(block_q4_0) == 1);
static_assert(sizeof(block_q4_1) == 20 && alignof(block_q4_1) == 1);
static_assert(sizeof(block_q5_0) == 22 && alignof(block_q5_0) == 1);
static_assert(sizeof(block_q5_1) == 24 && alignof(block_q5_1) == 1);
static_assert(sizeof(block_q4_K) == 144 && alignof(block_q4_K) == 1);
static_assert(sizeof(block_q5_K) == 176 && alignof(block_q5_K) == 1);
static_assert(sizeof(block_q6_K) == 210 && alignof(block_q6_K) == 1);
static_assert(sizeof(block_q8_K) == 292 && alignof(block_q8_K) == 1);

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K `scales` array (ggml's
// get_scale_min_k4): j < 4 in the low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte
// j + 4 with the top 2 bits from bytes j - 4 and j.
NNPIPE_HOST_DEVICE inline void scale_min_k4(int j, const uint8_t* scales, int& sc, int& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

}  // namespace nnpipe
