// quant/ggml_blocks.h: the block structs have the DType traits' sizes and ggml's field offsets,
// and the kernels read them at any address (a GGUF file's data need not be aligned).
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "backend/cpu/qmatmul.h"
#include "backend/cpu/qmatmul_kernels.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_quants.h"
#include "test_util.h"

using namespace nnpipe;
namespace qk = nnpipe::cpu::qk;

TEST(QuantBlocks, SizesEqualTheDtypeTraits) {
  struct Case {
    DType t;
    size_t size;
    int block;
  };
  const Case cases[] = {
      {DType::kQ8_0, sizeof(block_q8_0), kQK},   {DType::kQ8_1, sizeof(block_q8_1), kQK},
      {DType::kQ4_0, sizeof(block_q4_0), kQK},   {DType::kQ4_1, sizeof(block_q4_1), kQK},
      {DType::kQ5_0, sizeof(block_q5_0), kQK},   {DType::kQ5_1, sizeof(block_q5_1), kQK},
      {DType::kQ4_K, sizeof(block_q4_K), kQK_K}, {DType::kQ5_K, sizeof(block_q5_K), kQK_K},
      {DType::kQ6_K, sizeof(block_q6_K), kQK_K}, {DType::kQ8_K, sizeof(block_q8_K), kQK_K},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(dtype_size(c.t), c.size) << dtype_name(c.t);
    EXPECT_EQ(dtype_block_size(c.t), c.block) << dtype_name(c.t);
  }
}

// ggml-common.h's offsets, so that the structs read the bytes of GGUF files and llama.cpp.
TEST(QuantBlocks, FieldOffsetsAreGgmls) {
  EXPECT_EQ(offsetof(block_q8_0, qs), 2u);
  EXPECT_EQ(offsetof(block_q8_1, s), 2u);
  EXPECT_EQ(offsetof(block_q8_1, qs), 4u);
  EXPECT_EQ(offsetof(block_q4_0, qs), 2u);
  EXPECT_EQ(offsetof(block_q4_1, m), 2u);
  EXPECT_EQ(offsetof(block_q4_1, qs), 4u);
  EXPECT_EQ(offsetof(block_q5_0, qh), 2u);
  EXPECT_EQ(offsetof(block_q5_0, qs), 6u);
  EXPECT_EQ(offsetof(block_q5_1, qh), 4u);
  EXPECT_EQ(offsetof(block_q5_1, qs), 8u);
  EXPECT_EQ(offsetof(block_q4_K, dmin), 2u);
  EXPECT_EQ(offsetof(block_q4_K, scales), 4u);
  EXPECT_EQ(offsetof(block_q4_K, qs), 16u);
  EXPECT_EQ(offsetof(block_q5_K, qh), 16u);
  EXPECT_EQ(offsetof(block_q5_K, qs), 48u);
  EXPECT_EQ(offsetof(block_q6_K, qh), 128u);
  EXPECT_EQ(offsetof(block_q6_K, scales), 192u);
  EXPECT_EQ(offsetof(block_q6_K, d), 208u);
  EXPECT_EQ(offsetof(block_q8_K, qs), 4u);
  EXPECT_EQ(offsetof(block_q8_K, bsums), 260u);
}

// Fields read through a struct at an odd address equal the little-endian bytes.
TEST(QuantBlocks, FieldsReadAtAnyAddress) {
  std::vector<uint8_t> buf(1 + sizeof(block_q5_1));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(7 * i + 3);
  const auto* b = reinterpret_cast<const block_q5_1*>(buf.data() + 1);
  uint16_t d, m;
  uint32_t qh;
  std::memcpy(&d, buf.data() + 1, 2);
  std::memcpy(&m, buf.data() + 3, 2);
  std::memcpy(&qh, buf.data() + 5, 4);
  // Read into values first: EXPECT_EQ binds references, and a reference to a member of a packed
  // struct at an odd address is itself misaligned (UBSan says so); the loads are what is tested.
  const uint16_t bd = b->d, bm = b->m;
  const uint32_t bqh = b->qh;
  const uint8_t bq = b->qs[15];
  EXPECT_EQ(bd, d);
  EXPECT_EQ(bm, m);
  EXPECT_EQ(bqh, qh);
  EXPECT_EQ(bq, buf[1 + 8 + 15]);
}

// qmatmul, its row lookup and dequantize_rows give the same bits on weights at an odd address as
// on aligned ones, on every ISA.
TEST(QuantBlocks, MisalignedWeightsGiveTheSameBits) {
  const DType types[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1,
                         DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kF16,  DType::kBF16};
  std::vector<qk::Isa> isas{qk::Isa::kScalar};
  if (qk::cpu_has_avx2()) isas.push_back(qk::Isa::kAvx2);
  for (qk::Isa isa : isas) {
    qk::force_isa(isa);
    for (DType t : types) {
      const int64_t rows = 9, cols = 512, n = 5;
      const std::vector<uint8_t> q = quantize_rows(t, test::randn(rows * cols, 1), cols);
      std::vector<uint8_t> odd(q.size() + 1);
      std::memcpy(odd.data() + 1, q.data(), q.size());
      const Tensor wa = Tensor::borrow(t, {rows, cols}, q);
      const Tensor wo = Tensor::borrow(t, {rows, cols}, std::span(odd).subspan(1));
      const std::vector<float> x = test::randn(n * cols, 2);
      for (int64_t nt : {int64_t{1}, n}) {
        std::vector<float> ya(static_cast<size_t>(nt * rows)), yo(ya.size());
        cpu::qmatmul(ya.data(), x.data(), nt, wa);
        cpu::qmatmul(yo.data(), x.data(), nt, wo);
        EXPECT_EQ(0, std::memcmp(ya.data(), yo.data(), ya.size() * 4)) << dtype_name(t);
      }
      std::vector<float> ra(static_cast<size_t>(cols)), ro(ra.size());
      cpu::qmatmul_row(wa, 4, ra.data());
      cpu::qmatmul_row(wo, 4, ro.data());
      EXPECT_EQ(0, std::memcmp(ra.data(), ro.data(), ra.size() * 4)) << dtype_name(t);
    }
    qk::reset_isa();
  }
}
