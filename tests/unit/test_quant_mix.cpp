// llama.cpp's per-tensor type rules (export/quant_mix.h). The conformance test
// test_export_kquant.py compares whole exports with llama-quantize; these pin single rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "export/gguf_export.h"
#include "export/quant_mix.h"

using namespace nnpipe;

namespace {

using F = LlamaFtype;

QuantMixModel model(int n_layer, bool tied) {
  std::vector<std::string> names = {"token_embd.weight", "output_norm.weight"};
  if (!tied) names.push_back("output.weight");
  for (int i = 0; i < n_layer; ++i) {
    names.push_back("blk." + std::to_string(i) + ".attn_v.weight");
    names.push_back("blk." + std::to_string(i) + ".attn_v.bias");
    names.push_back("blk." + std::to_string(i) + ".ffn_down.weight");
  }
  return QuantMixModel::from_tensor_names(names, n_layer);
}

GgmlType type_of(F f, const QuantMixModel& m, const std::string& name,
                 std::vector<int64_t> ne = {256, 512}, bool pure = false) {
  return quant_mix_tensor_type({f, pure}, m, name, ne);
}

std::string blk(int i, const char* t) {
  return "blk." + std::to_string(i) + "." + t;
}

}  // namespace

TEST(QuantMix, CountsFromNames) {
  const QuantMixModel m = model(5, false);
  EXPECT_EQ(m.n_layer, 5);
  EXPECT_EQ(m.n_attention_wv, 5);  // biases are not attn_v.weight
  EXPECT_FALSE(m.tied_embeddings);
  EXPECT_TRUE(model(5, true).tied_embeddings);
}

TEST(QuantMix, OnlyMatricesNamedWeightAreQuantized) {
  const QuantMixModel m = model(2, false);
  for (F f : {F::kMostlyQ4_0, F::kMostlyQ4_K_M, F::kMostlyF16}) {
    EXPECT_EQ(type_of(f, m, "blk.0.attn_norm.weight", {256}), GgmlType::kF32);
    EXPECT_EQ(type_of(f, m, "blk.0.attn_q.bias", {256}), GgmlType::kF32);
    EXPECT_EQ(type_of(f, m, "blk.0.attn_q.weight", {256, 1}), GgmlType::kF32);  // ggml_n_dims 1
    EXPECT_EQ(type_of(f, m, "blk.0.ffn_gate_inp.weight"), GgmlType::kF32);
  }
  EXPECT_EQ(type_of(F::kMostlyF16, m, "blk.0.attn_q.weight", {100, 7}), GgmlType::kF16);
  EXPECT_EQ(type_of(F::kMostlyBF16, m, "output.weight"), GgmlType::kBF16);
  EXPECT_EQ(type_of(F::kAllF32, m, "token_embd.weight"), GgmlType::kF32);
}

TEST(QuantMix, OutputAndTiedEmbeddingGetQ6K) {
  const QuantMixModel untied = model(2, false), tied = model(2, true);
  for (F f : {F::kMostlyQ4_0, F::kMostlyQ5_1, F::kMostlyQ4_K_S, F::kMostlyQ5_K_M}) {
    EXPECT_EQ(type_of(f, untied, "output.weight"), GgmlType::kQ6_K);
    EXPECT_EQ(type_of(f, untied, "token_embd.weight"), llama_ftype_default_type(f));
    EXPECT_EQ(type_of(f, tied, "token_embd.weight"), GgmlType::kQ6_K);
  }
  EXPECT_EQ(type_of(F::kMostlyQ8_0, untied, "output.weight"), GgmlType::kQ8_0);
  // Row length not a multiple of the default type's block: Q8_0, then the Q8_0 fallback.
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, untied, "output.weight", {64, 100}), GgmlType::kQ8_0);
  EXPECT_EQ(type_of(F::kMostlyQ4_0, untied, "output.weight", {64, 100}), GgmlType::kQ8_0);
  EXPECT_EQ(type_of(F::kMostlyQ4_0, untied, "output.weight", {40, 100}), GgmlType::kF16);
}

TEST(QuantMix, MediumMixesUseMoreBitsInChosenLayers) {
  const QuantMixModel m = model(16, false);
  // use_more_bits(i, 16): i < 2, i >= 14, or (i - 2) % 3 == 2.
  const std::vector<int> more = {0, 1, 4, 7, 10, 13, 14, 15};
  for (int i = 0; i < 16; ++i) {
    const bool hi = std::find(more.begin(), more.end(), i) != more.end();
    EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(i, "attn_v.weight")),
              hi ? GgmlType::kQ6_K : GgmlType::kQ4_K)
        << i;
    EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(i, "ffn_down.weight")),
              hi ? GgmlType::kQ6_K : GgmlType::kQ4_K)
        << i;
    EXPECT_EQ(type_of(F::kMostlyQ5_K_M, m, blk(i, "ffn_down.weight")),
              hi ? GgmlType::kQ6_K : GgmlType::kQ5_K)
        << i;
    for (const char* t : {"attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_gate.weight",
                          "ffn_up.weight"})
      EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(i, t)), GgmlType::kQ4_K) << t;
  }
}

TEST(QuantMix, SmallMixBumpsTheFirstLayers) {
  const QuantMixModel m = model(16, false);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(type_of(F::kMostlyQ4_K_S, m, blk(i, "attn_v.weight")),
              i < 4 ? GgmlType::kQ5_K : GgmlType::kQ4_K)
        << i;
    EXPECT_EQ(type_of(F::kMostlyQ4_K_S, m, blk(i, "ffn_down.weight")),
              i < 2 ? GgmlType::kQ5_K : GgmlType::kQ4_K)
        << i;
    EXPECT_EQ(type_of(F::kMostlyQ5_K_S, m, blk(i, "attn_v.weight")), GgmlType::kQ5_K) << i;
  }
}

TEST(QuantMix, SeventyBModelsGiveAttnVQ5K) {
  QuantMixModel m = model(80, false);
  m.type_70b = true;
  EXPECT_EQ(type_of(F::kMostlyQ4_K_S, m, blk(10, "attn_v.weight")), GgmlType::kQ5_K);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(11, "attn_v.weight")), GgmlType::kQ5_K);
  EXPECT_EQ(type_of(F::kMostlyQ4_0, m, blk(11, "attn_v.weight")), GgmlType::kQ4_0);
}

TEST(QuantMix, RowLengthFallbacks) {
  const QuantMixModel m = model(4, false);
  const std::vector<int64_t> r320 = {320, 64}, r176 = {176, 64};
  EXPECT_EQ(type_of(F::kMostlyQ4_K_S, m, "blk.1.ffn_up.weight", r320), GgmlType::kQ5_0);
  EXPECT_EQ(type_of(F::kMostlyQ5_K_S, m, "blk.1.ffn_up.weight", r320), GgmlType::kQ5_1);
  EXPECT_EQ(type_of(F::kMostlyQ6_K, m, "blk.1.ffn_up.weight", r320), GgmlType::kQ8_0);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, "blk.3.ffn_down.weight", r320), GgmlType::kQ8_0);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, "blk.1.ffn_down.weight", r320), GgmlType::kQ5_0);
  for (F f : {F::kMostlyQ4_0, F::kMostlyQ8_0, F::kMostlyQ4_K_M, F::kMostlyQ6_K})
    EXPECT_EQ(type_of(f, m, "blk.1.ffn_down.weight", r176), GgmlType::kF16);
}

TEST(QuantMix, PureSkipsTheRulesButNotTheFallback) {
  const QuantMixModel m = model(8, true);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, "token_embd.weight", {256, 100}, true), GgmlType::kQ4_K);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(0, "attn_v.weight"), {256, 64}, true),
            GgmlType::kQ4_K);
  EXPECT_EQ(type_of(F::kMostlyQ4_K_M, m, blk(0, "attn_v.weight"), {64, 64}, true), GgmlType::kQ5_0);
}

TEST(QuantMix, ExportTypeNames) {
  const auto q4km = gguf_export_type_from_name("q4_k_m");
  ASSERT_TRUE(q4km);
  EXPECT_EQ(q4km->ftype, F::kMostlyQ4_K_M);
  EXPECT_FALSE(q4km->pure);
  const auto q4k = gguf_export_type_from_name("q4_k");
  ASSERT_TRUE(q4k);
  EXPECT_EQ(q4k->ftype, F::kMostlyQ4_K_S);
  EXPECT_TRUE(q4k->pure);
  EXPECT_FALSE(gguf_export_type_from_name("Q4_K_M"));
  EXPECT_FALSE(gguf_export_type_from_name("q3_k_m"));
  EXPECT_EQ(quant_mix_for_type(GgmlType::kQ6_K)->ftype, F::kMostlyQ6_K);
  EXPECT_TRUE(quant_mix_for_type(GgmlType::kQ5_K)->pure);
  EXPECT_FALSE(quant_mix_for_type(GgmlType::kQ3_K));
  EXPECT_EQ(llama_ftype_name(F::kMostlyQ5_K_M), "Q5_K_M");
}
