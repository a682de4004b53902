// TEMPORARY stub, replaced by the LoRA branch.
#include "core/error.h"
#include "model/qwen2.h"
namespace nnpipe {
void Qwen2Model::attach_lora(const LoraAdapter&, const std::string&) {
  fail(ErrorCode::kUnsupported, "LoRA not merged yet");
}
bool Qwen2Model::has_lora() const { return false; }
LoraAdapter Qwen2Model::lora_adapter() const { fail(ErrorCode::kUnsupported, "LoRA"); }
std::map<std::string, Tensor>& Qwen2Model::trainable() { return params_.by_name; }
const std::map<std::string, Tensor>& Qwen2Model::trainable_grads() const { return grads_.by_name; }
void Qwen2Model::set_training(bool, Rng*) {}
}  // namespace nnpipe
