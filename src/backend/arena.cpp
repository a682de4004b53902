#include "backend/arena.h"

namespace nnpipe {

namespace {
constexpr size_t kAlign = 64;
size_t aligned(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}
}  // namespace

Tensor Arena::alloc(DType dtype, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  // Block types are weights, not scratch: their byte size per shape is the tensor's business.
  const size_t bytes = aligned(dtype_row_bytes(dtype, numel > 0 ? numel : 0));
  round_ += bytes;
  if (block_.defined() && used_ + bytes <= block_.capacity()) {
    Tensor t = block_.view(used_, dtype, std::move(shape));
    used_ += bytes;
    return t;
  }
  overflow_.push_back(be_.zeros(dtype, std::move(shape)));
  return overflow_.back();
}

void Arena::reset() {
  if (round_ > capacity()) block_ = be_.zeros(DType::kU8, {static_cast<int64_t>(round_)});
  overflow_.clear();
  used_ = round_ = 0;
}

}  // namespace nnpipe
