// Qwen2 backward: the forward of qwen2.cpp mirrored, layer by layer. Every backend backward op
// accumulates into its input gradients, so residual branches and the tied embedding sum naturally.
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
  auto z = [&](std::vector<int64_t> shape) { return be.zeros(DType::kF32, std::move(shape)); };

  // Loss -> logits -> final norm.
  Tensor logits = logits_.reshaped({n, V});
  Tensor dlogits = z({n, V});  // (N, V)
  be.cross_entropy_backward(dlogits, logits, targets_, 1.0f);
  Tensor dlnf = z({n, C});
  be.matmul_backward(&dlnf, lm_head_grad(), nullptr, dlogits, lnf_, lm_head());
  Tensor dres = z({n, C});  // gradient of the residual stream, (N, C)
  be.rmsnorm_backward(dres, grads_.at("model.norm.weight"), dlnf, out_,
                      params_.at("model.norm.weight"), lnf_rstd_);

  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    const LayerActs& a = layers_[static_cast<size_t>(l)];
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    auto w = [&](const char* rest) -> const Tensor& { return params_.at(pre + rest); };
    auto g = [&](const char* rest) -> Tensor& { return grads_.at(pre + rest); };

    // out = h + mlp: both branches receive dres.
    Tensor dh = z({n, C});
    be.accumulate(dh, dres);
    Tensor dact = z({n, F});
    be.matmul_backward(&dact, g("mlp.down_proj.weight"), nullptr, dres, a.act,
                       w("mlp.down_proj.weight"));
    Tensor dgate = z({n, F}), dup = z({n, F});
    be.swiglu_backward(dgate, dup, dact, a.gate, a.up);
    Tensor dln2 = z({n, C});
    be.matmul_backward(&dln2, g("mlp.gate_proj.weight"), nullptr, dgate, a.ln2,
                       w("mlp.gate_proj.weight"));
    be.matmul_backward(&dln2, g("mlp.up_proj.weight"), nullptr, dup, a.ln2,
                       w("mlp.up_proj.weight"));
    be.rmsnorm_backward(dh, g("post_attention_layernorm.weight"), dln2, a.h,
                        w("post_attention_layernorm.weight"), a.ln2_rstd);

    // h = x + o_proj(atty).
    Tensor dx = z({n, C});
    be.accumulate(dx, dh);
    Tensor datty = z({n, H * D});
    be.matmul_backward(&datty, g("self_attn.o_proj.weight"), nullptr, dh,
                       a.atty.reshaped({n, H * D}), w("self_attn.o_proj.weight"));
    Tensor dqr = z({b, t, H, D}), dkr = z({b, t, KV, D}), dv = z({b, t, KV, D});
    be.attention_backward(dqr, dkr, dv, datty.reshaped({b, t, H, D}), a.att, a.qr, a.kr, a.v);
    Tensor dq = z({b, t, H, D}), dk = z({b, t, KV, D});
    be.rope_backward(dq, dqr, positions_, c.rope_theta);
    be.rope_backward(dk, dkr, positions_, c.rope_theta);
    Tensor dln1 = z({n, C});
    be.matmul_backward(&dln1, g("self_attn.q_proj.weight"), &g("self_attn.q_proj.bias"),
                       dq.reshaped({n, H * D}), a.ln1, w("self_attn.q_proj.weight"));
    be.matmul_backward(&dln1, g("self_attn.k_proj.weight"), &g("self_attn.k_proj.bias"),
                       dk.reshaped({n, KV * D}), a.ln1, w("self_attn.k_proj.weight"));
    be.matmul_backward(&dln1, g("self_attn.v_proj.weight"), &g("self_attn.v_proj.bias"),
                       dv.reshaped({n, KV * D}), a.ln1, w("self_attn.v_proj.weight"));
    be.rmsnorm_backward(dx, g("input_layernorm.weight"), dln1, a.x, w("input_layernorm.weight"),
                        a.ln1_rstd);
    dres = dx;
  }
  // Tied: adds to the lm_head contribution already in the same gradient tensor.
  be.embedding_backward(grads_.at("model.embed_tokens.weight"), dres, ids_);
}

}  // namespace nnpipe
