#include "engine/model.h"

#include <cstring>
#include <map>
#include <set>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "core/log.h"
#include "model/gguf_model.h"

namespace nnpipe::engine {

namespace {

bool is_float(DType d) {
  return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16;
}

}  // namespace

bool Model::is_eog(int32_t id) const {
  for (int32_t e : eog_)
    if (e == id) return true;
  return false;
}

std::shared_ptr<const Model> Model::load(const fs::path& path, Backend& backend) {
  std::shared_ptr<Model> m(new Model());
  m->backend_ = &backend;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    m->load_hf(path);
  } else if (!fs::exists(path, ec)) {
    fail(ErrorCode::kNotFound, "{}: no such model file or directory", path.string());
  } else if (is_gguf_file(path)) {
    m->load_gguf(path);
  } else {
    fail(ErrorCode::kFormat,
         "{}: not a GGUF file (no GGUF magic) and not a Hugging Face model directory",
         path.string());
  }
  m->finish();
  return m;
}

void Model::load_gguf(const fs::path& path) {
  auto f = std::make_shared<GgufFile>(GgufFile::open(path));
  origin_ = path.string();
  gguf_ = true;
  arch_ = f->get_string("general.architecture");
  if (const GgufValue* t = f->find_value("general.type"))
    if (const std::string* s = t->get_if<std::string>(); s && *s != "model")
      fail(ErrorCode::kFormat,
           "{}: general.type is \"{}\": a model file is needed (a LoRA adapter "
           "goes to --lora)",
           origin_, *s);
  config_ = qwen2_config_from_gguf(*f);
  assets_ = std::make_shared<ChatAssets>(chat_assets_from_gguf(*f));
  const ModelConfig& c = config_;

  auto dtype_of = [&](const GgufTensor& t, const std::string& name) {
    const auto d = dtype_of_ggml(t.type);
    if (!d || !backend_->supports("matmul", *d))
      fail(ErrorCode::kUnsupported, "{}: tensor {}: type {} is not supported by the engine",
           origin_, name, ggml_traits(t.type).name);
    return *d;
  };
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    const GgufTensor& t = f->get(name);
    if (t.ne.size() != 2 || t.ne[0] != cols || t.ne[1] != rows)
      fail(ErrorCode::kFormat, "{}: tensor {}: shape [{}], expected [{}, {}]", origin_, name,
           fmt::join(t.ne, ", "), cols, rows);
    const DType d = dtype_of(t, name);
    weight_bytes_ += t.nbytes;
    return Tensor::borrow(d, {rows, cols}, t.data);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    const GgufTensor& t = f->get(name);
    if (t.ne.size() != 1 || t.ne[0] != n)
      fail(ErrorCode::kFormat, "{}: tensor {}: shape [{}], expected [{}]", origin_, name,
           fmt::join(t.ne, ", "), n);
    const DType d = dtype_of(t, name);
    weight_bytes_ += t.nbytes;
    return backend_->to_f32(Tensor::borrow(d, {1, n}, t.data)).reshaped({n});
  };

  token_embd_ = mat("token_embd.weight", c.vocab_size, c.hidden_size);
  const std::string output_name = std::string(linear_gguf_name(Linear::kLmHead)) + ".weight";
  output_ = f->find(output_name) ? mat(output_name, c.vocab_size, c.hidden_size) : token_embd_;
  output_norm_ = vec("output_norm.weight", c.hidden_size);
  layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = layers_[static_cast<size_t>(i)];
    const std::string p = fmt::format("blk.{}.", i);
    for (int l = 0; l < kNumLinear; ++l) {
      auto [o, in] = qwen2_linear_shape(c, static_cast<Linear>(l));
      L.lin[l] = mat(p + linear_gguf_name(static_cast<Linear>(l)) + ".weight", o, in);
    }
    L.q_bias = vec(p + linear_gguf_name(Linear::kQ) + ".bias", c.q_dim());
    L.k_bias = vec(p + linear_gguf_name(Linear::kK) + ".bias", c.kv_dim());
    L.v_bias = vec(p + linear_gguf_name(Linear::kV) + ".bias", c.kv_dim());
    L.attn_norm = vec(p + "attn_norm.weight", c.hidden_size);
    L.ffn_norm = vec(p + "ffn_norm.weight", c.hidden_size);
  }
  gguf_holder_ = std::move(f);
}

void Model::load_hf(const fs::path& dir) {
  auto d = std::make_shared<HfModelDir>(HfModelDir::open(dir));
  origin_ = dir.string();
  config_ = d->config();
  assets_ = std::make_shared<ChatAssets>(load_chat_assets(dir));
  const ModelConfig& c = config_;
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorView& t = d->tensor(name);
    if (!is_float(t.dtype))
      fail(ErrorCode::kUnsupported,
           "{}: tensor {}: dtype {} (the engine runs f32/f16/bf16 HF "
           "weights; export a quantized GGUF instead)",
           origin_, name, dtype_name(t.dtype));
    if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
      fail(ErrorCode::kFormat, "{}: tensor {}: shape [{}], expected [{}, {}]", origin_, name,
           fmt::join(t.shape, ", "), rows, cols);
    weight_bytes_ += t.data.size();
    return Tensor::borrow(t.dtype, {rows, cols}, t.data);
  };
  auto vec = [&](const std::string& name, int64_t n) {
    const TensorView& t = d->tensor(name);
    if (!is_float(t.dtype) || t.shape.size() != 1 || t.shape[0] != n)
      fail(ErrorCode::kFormat, "{}: tensor {}: expected a float vector of {}", origin_, name, n);
    weight_bytes_ += t.data.size();
    return backend_->to_f32(Tensor::borrow(t.dtype, {n}, t.data));
  };
  token_embd_ = mat("model.embed_tokens.weight", c.vocab_size, c.hidden_size);
  output_ = mat(qwen2_hf_module(0, Linear::kLmHead) + ".weight", c.vocab_size, c.hidden_size);
  output_norm_ = vec("model.norm.weight", c.hidden_size);
  layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& L = layers_[static_cast<size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    for (int l = 0; l < kNumLinear; ++l) {
      auto [o, in] = qwen2_linear_shape(c, static_cast<Linear>(l));
      L.lin[l] = mat(qwen2_hf_module(i, static_cast<Linear>(l)) + ".weight", o, in);
    }
    L.q_bias = vec(qwen2_hf_module(i, Linear::kQ) + ".bias", c.q_dim());
    L.k_bias = vec(qwen2_hf_module(i, Linear::kK) + ".bias", c.kv_dim());
    L.v_bias = vec(qwen2_hf_module(i, Linear::kV) + ".bias", c.kv_dim());
    L.attn_norm = vec(p + "input_layernorm.weight", c.hidden_size);
    L.ffn_norm = vec(p + "post_attention_layernorm.weight", c.hidden_size);
  }
  hf_holder_ = std::move(d);
}

void Model::finish() {
  auto add = [&](int64_t id) {
    if (id < 0 || id >= config_.vocab_size) return;
    for (int32_t e : eog_)
      if (e == id) return;
    eog_.push_back(static_cast<int32_t>(id));
  };
  for (int64_t e : config_.eos_token_id) add(e);
  for (const char* t : {"<|im_end|>", "<|endoftext|>"})
    if (auto id = assets_->tokenizer.token_to_id(t)) add(*id);
}

std::string Model::weight_types() const {
  std::map<std::string, int> n;
  auto count = [&](const Tensor& m) { ++n[std::string(dtype_name(m.dtype()))]; };
  count(token_embd_);
  if (output_.raw() != token_embd_.raw()) count(output_);
  for (const LayerWeights& L : layers_)
    for (const Tensor& m : L.lin) count(m);
  std::string s;
  for (auto& [k, v] : n) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", k, v);
  return s;
}

const Tensor* Model::matrix(std::string_view name) const {
  if (name == "token_embd.weight") return &token_embd_;
  if (name == std::string(linear_gguf_name(Linear::kLmHead)) + ".weight")
    return config_.tie_word_embeddings ? nullptr : &output_;
  constexpr std::string_view kBlk = "blk.";
  if (!name.starts_with(kBlk)) return nullptr;
  const size_t dot = name.find('.', kBlk.size());
  if (dot == std::string_view::npos) return nullptr;
  const std::string_view num = name.substr(kBlk.size(), dot - kBlk.size());
  if (num.empty() || num.size() > 6 ||
      num.find_first_not_of("0123456789") != std::string_view::npos)
    return nullptr;
  const int64_t layer = std::stoll(std::string(num));
  if (layer >= static_cast<int64_t>(layers_.size())) return nullptr;
  const std::string_view rest = name.substr(dot + 1);
  for (int l = 0; l < kNumLinear; ++l)
    if (rest == std::string(linear_gguf_name(static_cast<Linear>(l))) + ".weight")
      return &layers_[static_cast<size_t>(layer)].lin[l];
  return nullptr;
}

std::shared_ptr<const Model> Model::merged(const std::vector<MergeTerm>& terms) const {
  std::shared_ptr<Model> m(new Model(*this));
  // The copy shares the file holders and every unmerged matrix with this model; a merged matrix
  // becomes an owned f32 tensor.
  std::set<std::pair<int64_t, int>> done;
  for (const MergeTerm& t : terms) {
    auto key = std::make_pair(t.layer, static_cast<int>(t.lin));
    Tensor& w = m->layers_[static_cast<size_t>(t.layer)].lin[static_cast<int>(t.lin)];
    if (done.insert(key).second) w = backend_->to_f32(w);
    // W (out, in) += s * B (out, r) A (r, in): a one-time weight edit, not model compute.
    const Tensor ta = backend_->to_f32(*t.a), tb = backend_->to_f32(*t.b);
    const float* a = reinterpret_cast<const float*>(ta.raw());
    const float* b = reinterpret_cast<const float*>(tb.raw());
    const int64_t r = t.a->dim(0), in = w.dim(1), out = w.dim(0);
    float* wd = reinterpret_cast<float*>(w.raw());
#pragma omp parallel for
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < r; ++k) {
        const float s = t.scale * b[o * r + k];
        const float* ak = a + k * in;
        float* wo = wd + o * in;
        for (int64_t i = 0; i < in; ++i) wo[i] += s * ak[i];
      }
  }
  return m;
}

}  // namespace nnpipe::engine
