#include "backend/arena.h"

#include <algorithm>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/error.h"

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

void Arena::rewind(const Mark& m) {
  if (m.round > round_ || m.used > used_ || m.overflow > overflow_.size())
    fail(ErrorCode::kInvalidArgument, "arena: rewind to a mark of another round");
  peak_ = std::max(peak_, round_);
  used_ = m.used;
  round_ = m.round;
  overflow_.resize(m.overflow);
}

void Arena::reset() {
  const size_t need = std::max(peak_, round_);
  if (need > capacity()) {
    overflow_.clear();  // before the new block: the old pieces need not coexist with it
    block_ = Tensor();
#if defined(__GLIBC__)
    // The pieces just freed stay in the heap (nnpipe keeps big blocks there between steps) but
    // cannot hold the larger block: give their pages back, or they stay resident beside it.
    malloc_trim(0);
#endif
    block_ = be_.zeros(DType::kU8, {static_cast<int64_t>(need)});
  }
  overflow_.clear();
  used_ = round_ = peak_ = 0;
}

}  // namespace nnpipe
