// Qwen2 backward: the forward of qwen2.cpp mirrored, layer by layer. Every backend backward op
// accumulates into its input gradients, so residual branches and the tied embedding sum naturally.
#include <utility>

#include "arch/qwen2_weights.h"
#include "core/error.h"
#include "model/qwen2.h"

namespace nnpipe {

void Qwen2Model::backward() {
  if (!logits_.defined()) fail(ErrorCode::kInvalidArgument, "qwen2: backward before forward");
  if (!have_labels_) fail(ErrorCode::kInvalidArgument, "qwen2: backward needs labels");
  const ModelConfig& c = config_;
  const int64_t b = b_, t = t_, n = b * t;
  const int64_t C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                D = c.head_dim, F = c.intermediate_size, V = c.vocab_size;
  Backend& be = *be_;
  zero_grads();
  bwd_arena_->reset();
  auto z = [&](std::vector<int64_t> shape) { return bwd_zeros(std::move(shape)); };

  // Loss -> logits -> final norm.
  Tensor dlnf = z({n, C});
  const bool frozen = lora_.has_value();
  if (loss_rows_.defined()) {  // lm_head on the M target rows only; scatter back to (N, C)
    const int64_t m = loss_rows_.dim(0);
    Tensor logits = logits_.reshaped({m, V});
    Tensor dlogits = z({m, V});  // (M, V)
    be.cross_entropy_backward(dlogits, logits, targets_sel_, 1.0f);
    Tensor dsel = z({m, C});
    be.matmul_backward(&dsel, frozen ? nullptr : &lm_head_grad(), nullptr, dlogits, lnf_sel_,
                       lm_head(), matmul_num_);
    be.embedding_backward(dlnf, dsel, loss_rows_);
  } else {
    Tensor logits = logits_.reshaped({n, V});
    Tensor dlogits = z({n, V});  // (N, V)
    be.cross_entropy_backward(dlogits, logits, targets_, 1.0f);
    be.matmul_backward(&dlnf, frozen ? nullptr : &lm_head_grad(), nullptr, dlogits, lnf_, lm_head(),
                       matmul_num_);
  }
  // The residual stream's gradient alternates between two buffers that outlive the layers; each
  // layer's scratch is given back to the arena after it (one layer's worth, not 24).
  Tensor dres = z({n, C}), dnext = z({n, C});  // (N, C)
  // Frozen base: rmsnorm_backward still needs a dw to write; one (C) scratch serves every norm.
  Tensor norm_scratch = frozen ? z({C}) : Tensor();
  auto norm_grad = [&](const std::string& name) -> Tensor& {
    return frozen ? norm_scratch : grads_.at(name);
  };
  be.rmsnorm_backward(dres, norm_grad("model.norm.weight"), dlnf, out_,
                      params_.at("model.norm.weight"), lnf_rstd_);

  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    const LayerActs& a = layers_[static_cast<size_t>(l)];
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const Arena::Mark scope = bwd_arena_->mark();
    auto w = [&](const char* rest) -> const Tensor& { return params_.at(pre + rest); };
    auto g = [&](const char* rest) -> Tensor& { return norm_grad(pre + rest); };

    // out = h + mlp: both branches receive dres.
    Tensor dh = z({n, C});
    be.accumulate(dh, dres);
    Tensor dact = z({n, F});
    linear_backward(dact, dres, a.act, l, 6, a.lin[6]);
    Tensor dgate = z({n, F}), dup = z({n, F});
    be.swiglu_backward(dgate, dup, dact, a.gate, a.up);
    Tensor dln2 = z({n, C});
    linear_backward(dln2, dgate, a.ln2, l, 4, a.lin[4]);
    linear_backward(dln2, dup, a.ln2, l, 5, a.lin[5]);
    be.rmsnorm_backward(dh, g("post_attention_layernorm.weight"), dln2, a.h,
                        w("post_attention_layernorm.weight"), a.ln2_rstd);

    // h = x + o_proj(atty).
    Tensor& dx = dnext;
    be.zero(dx);
    be.accumulate(dx, dh);
    Tensor datty = z({n, H * D});
    linear_backward(datty, dh, a.atty.reshaped({n, H * D}), l, 3, a.lin[3]);
    Tensor dqr = z({b, t, H, D}), dkr = z({b, t, KV, D}), dv = z({b, t, KV, D});
    be.attention_backward(dqr, dkr, dv, datty.reshaped({b, t, H, D}), a.att, a.qr, a.kr, a.v);
    Tensor dq = z({b, t, H, D}), dk = z({b, t, KV, D});
    be.rope_backward(dq, dqr, positions_, c.rope_theta);
    be.rope_backward(dk, dkr, positions_, c.rope_theta);
    Tensor dln1 = z({n, C});
    linear_backward(dln1, dq.reshaped({n, H * D}), a.ln1, l, 0, a.lin[0]);
    linear_backward(dln1, dk.reshaped({n, KV * D}), a.ln1, l, 1, a.lin[1]);
    linear_backward(dln1, dv.reshaped({n, KV * D}), a.ln1, l, 2, a.lin[2]);
    be.rmsnorm_backward(dx, g("input_layernorm.weight"), dln1, a.x, w("input_layernorm.weight"),
                        a.ln1_rstd);
    bwd_arena_->rewind(scope);
    std::swap(dres, dnext);
    if (grad_ready_) grad_ready_(l);
  }
  // Tied: adds to the lm_head contribution already in the same gradient tensor.
  if (!frozen) be.embedding_backward(grads_.at("model.embed_tokens.weight"), dres, ids_);
}

void Qwen2Model::linear_backward(Tensor& dx, const Tensor& dout, const Tensor& x, int64_t layer,
                                 int module, const LinearActs& acts) {
  const std::string pre = qwen2_hf_module(layer, static_cast<qwen2::Linear>(module));
  const Tensor& w = params_.at(pre + ".weight");
  Backend& be = *be_;
  if (!lora_) {
    be.matmul_backward(
        &dx, &grads_.at(pre + ".weight"),
        qwen2::kLinears[static_cast<size_t>(module)].bias ? &grads_.at(pre + ".bias") : nullptr,
        dout, x, w, matmul_num_);
    return;
  }
  be.matmul_backward(&dx, nullptr, nullptr, dout, x, w, matmul_num_);  // frozen W: dx only
  const auto l = static_cast<size_t>(layer);
  const auto m = static_cast<size_t>(module);
  const std::string& an = lora_->a_name[l][m];
  if (an.empty()) return;
  const std::string& bn = lora_->b_name[l][m];
  be.lora_backward(&dx, lora_->grads.at(an), lora_->grads.at(bn), dout, x,
                   acts.keep.defined() ? &acts.keep : nullptr, keep_scale(), acts.xa,
                   lora_->ab.at(an), lora_->ab.at(bn), lora_->scaling);
}

}  // namespace nnpipe
