// nnpipe dev-forward (developer command): run the Qwen2 training forward (and backward) on one
// batch and dump logits, loss and parameter gradients as safetensors, so that the conformance
// tests can compare them with transformers.
#include <cstdint>
#include <cstring>

#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/qwen2.h"

namespace {

struct DevForwardArgs {
  std::string model, batch, out, lora, save_lora;
  bool backward = false, frozen_base = false;
};

// A JSON array of equal-length int rows -> flat row-major vector; returns the row length.
int64_t read_rows(const nnpipe::json& j, const char* key, const std::string& origin,
                  std::vector<int32_t>& out) {
  using namespace nnpipe;
  if (!j.is_array() || j.empty())
    fail(ErrorCode::kFormat, "{}: \"{}\" must be a non-empty list of lists", origin, key);
  int64_t width = -1;
  for (const auto& row : j) {
    if (!row.is_array()) fail(ErrorCode::kFormat, "{}: \"{}\" rows must be lists", origin, key);
    if (width >= 0 && static_cast<int64_t>(row.size()) != width)
      fail(ErrorCode::kFormat, "{}: \"{}\" rows differ in length", origin, key);
    width = static_cast<int64_t>(row.size());
    for (const auto& v : row) {
      if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
        fail(ErrorCode::kFormat, "{}: \"{}\" holds a non-integer or out-of-range value", origin,
             key);
      out.push_back(v.get<int32_t>());
    }
  }
  return width;
}

int run_dev_forward(const DevForwardArgs& a) {
  using namespace nnpipe;
  const json j = read_json_file(a.batch);
  Qwen2Batch batch;
  batch.seq =
      read_rows(require_field(j, "input_ids", a.batch), "input_ids", a.batch, batch.input_ids);
  batch.batch = static_cast<int64_t>(batch.input_ids.size()) / std::max<int64_t>(batch.seq, 1);
  if (j.contains("lengths")) {
    const json& l = j["lengths"];
    if (!l.is_array()) fail(ErrorCode::kFormat, "{}: \"lengths\" must be a list", a.batch);
    for (const auto& v : l) {
      if (!v.is_number_integer())
        fail(ErrorCode::kFormat, "{}: \"lengths\" holds a non-integer", a.batch);
      batch.lengths.push_back(v.get<int32_t>());
    }
  }
  if (j.contains("labels") && !j["labels"].is_null()) {
    if (read_rows(j["labels"], "labels", a.batch, batch.labels) != batch.seq ||
        batch.labels.size() != batch.input_ids.size())
      fail(ErrorCode::kFormat, "{}: labels and input_ids differ in shape", a.batch);
  }
  if (a.backward && batch.labels.empty())
    fail(ErrorCode::kInvalidArgument, "--backward needs \"labels\" in {}", a.batch);

  Qwen2LoadOptions opt;
  opt.frozen_base = a.frozen_base;
  Qwen2Model model = Qwen2Model::load(a.model, cpu_backend(), opt);
  if (!a.lora.empty()) model.attach_lora(PeftAdapter::load(a.lora), a.lora);
  if (!a.save_lora.empty()) {
    if (!model.has_lora()) fail(ErrorCode::kInvalidArgument, "--save-lora needs --lora");
    model.lora_adapter().save(a.save_lora);
  }
  const double loss = model.forward(batch);
  if (a.backward) model.backward();

  std::vector<TensorRef> refs;
  const Tensor& logits = model.logits();
  refs.push_back({"logits", DType::kF32, logits.shape(), logits.bytes()});
  refs.push_back(
      {"loss", DType::kF64, {1}, {reinterpret_cast<const uint8_t*>(&loss), sizeof(loss)}});
  if (a.backward)
    for (const auto& [name, g] : model.trainable_grads())
      refs.push_back({"grad." + name, DType::kF32, g.shape(), g.bytes()});
  write_safetensors(a.out, refs);
  return 0;
}

NNPIPE_COMMAND("dev-forward",
               "[developer] Qwen2 forward/backward on one batch, dumped as safetensors for the "
               "conformance tests",
               [](CLI::App& app) -> nnpipe::cli::RunFn {
                 auto a = std::make_shared<DevForwardArgs>();
                 app.add_option("--model", a->model, "Hugging Face model directory")->required();
                 app.add_option("--batch", a->batch,
                                "JSON {\"input_ids\": [[...]], \"lengths\": [...], \"labels\": "
                                "[[...]]}: right-padded rows; labels unshifted, -100 = ignored")
                     ->required();
                 app.add_option("--out", a->out,
                                "Output .safetensors: logits (B, T, V), loss (f64), and with "
                                "--backward grad.<name> for every trainable tensor (HF parameter "
                                "names, or the PEFT lora_A/lora_B names with --lora)")
                     ->required();
                 app.add_flag("--backward", a->backward, "Also compute parameter gradients");
                 app.add_option("--lora", a->lora,
                                "PEFT LoRA adapter directory to attach (freezes the base)");
                 app.add_flag("--frozen-base", a->frozen_base,
                              "Keep f16/bf16 weight matrices in their stored dtype (LoRA base)");
                 app.add_option("--save-lora", a->save_lora,
                                "Write the attached adapter (as loaded by nnpipe) to this "
                                "directory");
                 return [a] { return run_dev_forward(*a); };
               });

}  // namespace
