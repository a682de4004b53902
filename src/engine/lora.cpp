#include "engine/lora.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <span>

#include "core/error.h"
#include "io/gguf.h"
#include "io/peft_adapter.h"
#include "model/gguf_model.h"

namespace nnpipe::engine {

namespace {

// (layer, linear) of a GGUF base name "blk.N.attn_q.weight"; nullopt otherwise.
std::optional<std::pair<int64_t, Linear>> block_linear(std::string_view name) {
  constexpr std::string_view kBlk = "blk.";
  if (!name.starts_with(kBlk)) return std::nullopt;
  const size_t dot = name.find('.', kBlk.size());
  if (dot == std::string_view::npos) return std::nullopt;
  const std::string num(name.substr(kBlk.size(), dot - kBlk.size()));
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const std::string_view rest = name.substr(dot + 1);
  for (int l = 0; l < kNumLinear; ++l)
    if (rest == std::string(linear_gguf_name(static_cast<Linear>(l))) + ".weight")
      return std::make_pair(std::stoll(num), static_cast<Linear>(l));
  return std::nullopt;
}

bool is_norm_tensor(std::string_view name) {
  return name.find("_norm") != std::string_view::npos;
}

}  // namespace

std::string LoraAdapter::name() const {
  return fs::path(origin_).filename().string();
}

std::shared_ptr<const LoraAdapter> LoraAdapter::load(const fs::path& path, const Model& model) {
  std::shared_ptr<LoraAdapter> a(new LoraAdapter());
  a->origin_ = path.string();
  a->layers_.resize(static_cast<size_t>(model.config().num_hidden_layers));
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    a->load_peft(path, model);
  } else if (!fs::exists(path, ec)) {
    fail(ErrorCode::kNotFound, "{}: no such adapter file or directory", a->origin_);
  } else if (is_gguf_file(path)) {
    a->load_gguf(path, model);
  } else {
    fail(ErrorCode::kFormat, "{}: not a GGUF LoRA file (no GGUF magic) and not a PEFT directory",
         a->origin_);
  }
  if (a->num_pairs_ == 0)
    fail(ErrorCode::kFormat, "{}: the adapter has no LoRA tensors", a->origin_);
  return a;
}

namespace {

// p.bt = B^T as f32 for the float types of B (LoraPair::bt).
void build_bt(LoraPair& p, Backend& be) {
  const DType t = p.b.dtype();
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16) return;
  const int64_t out = p.b.dim(0), r = p.b.dim(1);
  const std::vector<float> b = be.to_f32(p.b).to_f32();  // (out, r)
  std::vector<float> bt(static_cast<size_t>(r * out));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < r; ++k)
      bt[static_cast<size_t>(k * out + o)] = b[static_cast<size_t>(o * r + k)];
  p.bt = Tensor::from_f32(bt, {r, out});
}

}  // namespace

void LoraAdapter::load_gguf(const fs::path& path, const Model& model) {
  auto f = std::make_shared<GgufFile>(GgufFile::open(path));
  auto str_kv = [&](std::string_view key) -> std::string {
    const GgufValue* v = f->find_value(key);
    if (!v) return {};
    const std::string* s = v->get_if<std::string>();
    if (!s) fail(ErrorCode::kFormat, "{}: {} is not a string", origin_, key);
    return *s;
  };
  if (const std::string t = str_kv("general.type"); t != "adapter")
    fail(ErrorCode::kFormat, "{}: general.type is \"{}\", expected \"adapter\" (not a LoRA file)",
         origin_, t);
  if (const std::string t = str_kv("adapter.type"); t != "lora")
    fail(ErrorCode::kUnsupported, "{}: adapter.type is \"{}\", expected \"lora\"", origin_, t);
  if (const std::string arch = str_kv("general.architecture"); arch != model.architecture())
    fail(ErrorCode::kFormat, "{}: adapter architecture \"{}\" does not match the model's \"{}\"",
         origin_, arch, model.architecture());
  if (const GgufValue* v = f->find_value("adapter.lora.alpha")) {
    if (const float* x = v->get_if<float>())
      alpha_ = *x;
    else
      fail(ErrorCode::kFormat, "{}: adapter.lora.alpha is not FLOAT32", origin_);
    if (!std::isfinite(alpha_) || std::fabs(alpha_) > kMaxLoraAlpha)
      fail(ErrorCode::kFormat, "{}: adapter.lora.alpha {} is not a finite number in [-{}, {}]",
           origin_, alpha_, kMaxLoraAlpha, kMaxLoraAlpha);
  }

  std::map<std::string, std::pair<const GgufTensor*, const GgufTensor*>> pairs;
  for (const GgufTensor& t : f->tensors()) {
    const std::string& n = t.name;
    if (n.ends_with(".lora_a"))
      pairs[n.substr(0, n.size() - 7)].first = &t;
    else if (n.ends_with(".lora_b"))
      pairs[n.substr(0, n.size() - 7)].second = &t;
    else if (!is_norm_tensor(n))
      fail(ErrorCode::kFormat, "{}: tensor {} is neither .lora_a nor .lora_b", origin_, n);
  }
  const std::string output_weight = std::string(linear_gguf_name(Linear::kLmHead)) + ".weight";
  for (auto& [base, ab] : pairs) {
    auto [ta, tb] = ab;
    if (!ta || !tb)
      fail(ErrorCode::kFormat, "{}: {}: lora_a/lora_b pair is incomplete", origin_, base);
    const Tensor* w = model.matrix(base);
    if (!w)
      fail(ErrorCode::kFormat, "{}: {}: the model has no such tensor ({})", origin_, base,
           base == output_weight ? "the model ties its output to token_embd"
                                 : "adapter for another model?");
    const int64_t w_rows = w->dim(0), w_cols = w->dim(1);
    if (ta->ne.size() != 2 || tb->ne.size() != 2 || ta->ne[0] != w_cols || tb->ne[1] != w_rows ||
        ta->ne[1] != tb->ne[0])
      fail(ErrorCode::kFormat,
           "{}: {}: lora_a [{}] / lora_b [{}] do not fit the model's [{}, {}] (adapter for "
           "another model?)",
           origin_, base, fmt::join(ta->ne, ", "), fmt::join(tb->ne, ", "), w_cols, w_rows);
    for (const GgufTensor* t : {ta, tb})
      if (auto d = dtype_of_ggml(t->type); !d || !model.backend().supports("lora_apply", *d))
        fail(ErrorCode::kUnsupported, "{}: {}: type {} is not supported", origin_, t->name,
             ggml_traits(t->type).name);
    auto p = std::make_unique<LoraPair>();
    const int64_t r = tb->ne[0];
    p->a = Tensor::borrow(*dtype_of_ggml(ta->type), {r, ta->ne[0]}, ta->data);
    p->b = Tensor::borrow(*dtype_of_ggml(tb->type), {tb->ne[1], r}, tb->data);
    p->factor = alpha_ != 0 ? static_cast<float>(alpha_) / static_cast<float>(r) : 1.0f;
    build_bt(*p, model.backend());
    rank_ = std::max(rank_, r);
    if (base == "token_embd.weight")
      fail(ErrorCode::kUnsupported, "{}: token_embd adapters are not supported by the engine",
           origin_);
    if (base == output_weight) {
      output_ = std::move(p);
    } else {
      auto bl = block_linear(base);
      layers_[static_cast<size_t>(bl->first)][static_cast<int>(bl->second)] = std::move(p);
    }
    ++num_pairs_;
  }
  holder_ = std::move(f);
}

void LoraAdapter::load_peft(const fs::path& dir, const Model& model) {
  auto ad = std::make_shared<::nnpipe::PeftAdapter>(::nnpipe::PeftAdapter::load(dir));
  ad->validate(model.config(), origin_);
  rank_ = ad->config.r;
  alpha_ = ad->config.lora_alpha;
  const float factor = static_cast<float>(ad->config.scaling());
  for (const LoraModule& m : ad->modules) {
    int lin = -1;
    for (int l = 0; l < kNumLinear; ++l)
      if (m.module == linear_hf_name(static_cast<Linear>(l))) lin = l;
    if (lin < 0 || m.layer < 0 || m.layer >= model.config().num_hidden_layers)
      fail(ErrorCode::kFormat, "{}: layer {} module {} is not in the model", origin_, m.layer,
           m.module);
    const int64_t r = static_cast<int64_t>(m.A.size()) / m.in;
    auto p = std::make_unique<LoraPair>();
    p->a = Tensor::borrow(DType::kF32, {r, m.in},
                          {reinterpret_cast<const uint8_t*>(m.A.data()), m.A.size() * 4});
    p->b = Tensor::borrow(DType::kF32, {m.out, r},
                          {reinterpret_cast<const uint8_t*>(m.B.data()), m.B.size() * 4});
    p->factor = factor;
    build_bt(*p, model.backend());
    layers_[static_cast<size_t>(m.layer)][lin] = std::move(p);
    ++num_pairs_;
  }
  holder_ = std::move(ad);
}

bool same_adapters(const AdapterSet& a, const AdapterSet& b) {
  auto live = [](const AdapterSet& s) {
    std::vector<std::pair<const LoraAdapter*, float>> v;
    for (const AdapterRef& r : s)
      if (r.adapter && r.scale != 0.0f) v.emplace_back(r.adapter.get(), r.scale);
    return v;
  };
  return live(a) == live(b);
}

void check_lora_scale(double scale, std::string_view what) {
  if (!std::isfinite(scale) || std::fabs(scale) > kMaxLoraScale)
    fail(ErrorCode::kInvalidArgument,
         "{}: LoRA scale {} is not a finite number in [-{}, {}] (0 disables the adapter)", what,
         scale, kMaxLoraScale, kMaxLoraScale);
}

std::pair<std::string, float> parse_lora_arg(const std::string& arg) {
  const size_t colon = arg.rfind(':');
  if (colon != std::string::npos && colon + 1 < arg.size()) {
    const std::string tail = arg.substr(colon + 1);
    char* end = nullptr;
    // strtod: "1e39" stays 1e39 here (strtof would already have made it inf).
    const double s = std::strtod(tail.c_str(), &end);
    if (end && *end == '\0') {
      check_lora_scale(s, "--lora " + arg);
      return {arg.substr(0, colon), static_cast<float>(s)};
    }
  }
  return {arg, 1.0f};
}

std::vector<Model::MergeTerm> merge_terms(const AdapterSet& set, const Model& model) {
  std::vector<Model::MergeTerm> terms;
  for (const AdapterRef& r : set) {
    if (!r.adapter || r.scale == 0.0f) continue;
    if (r.adapter->output())
      fail(ErrorCode::kUnsupported, "{}: merging an output.weight adapter is not supported",
           r.adapter->origin());
    for (int64_t l = 0; l < model.config().num_hidden_layers; ++l)
      for (int k = 0; k < kNumLinear; ++k)
        if (const LoraPair* p = r.adapter->find(l, static_cast<Linear>(k)))
          terms.push_back({l, static_cast<Linear>(k), &p->a, &p->b, r.scale * p->factor});
  }
  return terms;
}

}  // namespace nnpipe::engine
