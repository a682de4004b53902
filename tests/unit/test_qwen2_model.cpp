// Qwen2Model backward against central finite differences of its own loss, on a micro model (no
// Python needed; the conformance tests compare with transformers). Tied embeddings and GQA, a
// right-padded batch with ignored labels: every parameter tensor is checked (16 sampled elements).
// The forward is fp32, so with h = 1e-2 the numeric derivative of the O(1) loss carries ~1e-5
// rounding noise; per tensor, ||analytic - numeric|| / ||numeric|| <= 2e-2 separates that from a
// wrong term (O(1)).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "arch/qwen2_weights.h"
#include "model/qwen2.h"
#include "qwen2_micro.h"

namespace nnpipe {
namespace {

using test_models::micro_batch;
using test_models::micro_config;
using test_models::micro_model;

void check_model_grads(bool tied) {
  Qwen2Model m = micro_model(tied);
  const Qwen2Batch batch = micro_batch();
  const double loss = m.forward(batch);
  ASSERT_TRUE(std::isfinite(loss));
  m.backward();
  const double h = 1e-2;
  EXPECT_EQ(m.grads().by_name.size(), m.params().by_name.size());
  for (auto& [name, param] : m.params().by_name) {
    const Tensor& g = m.grads().at(name);
    // Up to 16 spread-out elements per tensor keep the test fast (2 forwards each).
    const double rel = test_models::fd_relative_error(
        param, g, h, std::max<int64_t>(1, param.numel() / 16), [&] { return m.forward(batch); });
    ASSERT_GE(rel, 0) << name << ": zero numeric gradient";
    EXPECT_LE(rel, 2e-2) << name;
  }
}

TEST(Qwen2Model, BackwardMatchesFiniteDifferencesTied) {
  check_model_grads(true);
}
TEST(Qwen2Model, BackwardMatchesFiniteDifferencesUntied) {
  check_model_grads(false);
}

TEST(Qwen2Model, RejectsBadBatches) {
  Qwen2Model m = micro_model(true);
  Qwen2Batch b = micro_batch();
  b.input_ids[0] = 16;  // == vocab_size
  EXPECT_ANY_THROW(m.forward(b));
  b = micro_batch();
  b.lengths = {6, 3};  // longer than T
  EXPECT_ANY_THROW(m.forward(b));
  b = micro_batch();
  b.labels.clear();
  EXPECT_TRUE(std::isnan(m.forward(b)));
  EXPECT_ANY_THROW(m.backward());
}

}  // namespace
}  // namespace nnpipe
