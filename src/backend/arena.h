// Scratch memory for one forward: tensors carved out of one device block, 64-byte aligned, all
// given back at once by reset(). What did not fit this round is allocated on its own and counted,
// and the next reset() replaces the block by one that holds the whole round: from the second
// forward of a size on, a forward allocates nothing (the CUDA backend's forward makes no
// cudaMalloc per op). Views share the block's storage: one kept past reset() is never dangling,
// only overwritten by the next round.
#pragma once
#include <cstddef>
#include <vector>

#include "backend/backend.h"

namespace nnpipe {

class Arena {
 public:
  explicit Arena(Backend& be) : be_(be) {}

  // An uninitialised (dtype, shape) tensor on the backend's device.
  Tensor alloc(DType dtype, std::vector<int64_t> shape);
  void reset();

  // Scopes inside a round (a backward's layers): rewind(mark()) gives back everything allocated
  // since the mark, so the next scope reuses those bytes; the block is sized for the round's
  // high-water mark, not for the sum. Tensors allocated after the mark must not be used again.
  struct Mark {
    size_t used, round, overflow;
  };
  Mark mark() const { return {used_, round_, overflow_.size()}; }
  void rewind(const Mark& m);

  size_t capacity() const { return block_.defined() ? block_.capacity() : 0; }
  // Allocations this round that the block could not hold (0 in steady state).
  size_t overflow_allocations() const { return overflow_.size(); }

 private:
  Backend& be_;
  Tensor block_;                  // u8 (capacity)
  std::vector<Tensor> overflow_;  // this round's tensors beyond the block
  size_t used_ = 0, round_ = 0;   // bytes of the block used / asked for this round (live)
  size_t peak_ = 0;               // the round's largest `round_` before a rewind
};

}  // namespace nnpipe
