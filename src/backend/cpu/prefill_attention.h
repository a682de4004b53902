// Causal attention kernels for a batch of new queries (prompt processing), AVX2+FMA+F16C. The
// cache's K is expanded to f32 and transposed per KV head once per call, so that a tile of 4
// queries x 16 keys is 8 register accumulators fed by broadcasts (no horizontal sum per key); V is
// expanded to f32 for a P V accumulation held in registers. Numerics are attention_kv's (q
// and the probabilities rounded to f16, softmax in f32 with a double sum); only the f32 summation
// order of the dot products differs. CpuBackend::attention_kv (attention_kv.cpp) drives these
// (OpenMP) for n > 1 and keeps its per-key path for decode.
#pragma once
#include <cstdint>

namespace nnpipe::cpu {

struct PrefillShape {
  int64_t past = 0, n = 0;       // cached positions, new queries
  int64_t H = 0, KV = 0, D = 0;  // query heads, KV heads, head_dim (a multiple of 8)
  int64_t L = 0, Lp = 0;         // keys = past + n; Lp = L rounded up to 16
  float scale = 1.0f;
};

// Whether the kernels run here: AVX2+FMA+F16C and head_dim a multiple of 8.
bool prefill_attention_available(int64_t head_dim);

// kt (KV, D, Lp) and vf (L, KV*D) as f32, from cache rows [j0, j1) of K and V ((L, KV*D) f16).
// The call with j1 == L also zeroes kt's padding columns [L, Lp).
void prefill_expand_kv(const uint16_t* K, const uint16_t* V, const PrefillShape& s, float* kt,
                       float* vf, int64_t j0, int64_t j1);

// Queries i0 .. i0+nq-1 (nq <= 4) of head h: out rows of (n, H*D) from q (n, H*D).
// scratch: 4 * (Lp + D) floats, private to the calling thread.
void prefill_attention_group(float* out, const float* q, const float* kt, const float* vf,
                             const PrefillShape& s, int64_t h, int64_t i0, int nq, float* scratch);

// The attention softmax of every inference path (prompt tiles and decode rows):
// p[j] = round_f16(e_j / sum e), e_j = exp(p[j] - max p) over j < len, with one exp of our own
// (Cephes' range reduction and degree-6 polynomial with fused multiply-adds, <= 2 ulp from
// std::exp; results below e^-87.3 are 0, which the f16 rounding makes of them anyway) and the
// sum in double over 4 interleaved partial sums. The three versions give the same bits.
void softmax_f16_ref(float* p, int64_t len);
void softmax_f16_avx2(float* p, int64_t len);    // needs AVX2+FMA+F16C
void softmax_f16_avx512(float* p, int64_t len);  // needs AVX-512F

// The same on AVX-512F (prefill_attention_avx512.cpp), the same bits: for head_dim % 16 == 0.
bool prefill_attention_avx512_available(int64_t head_dim);
void prefill_attention_group_avx512(float* out, const float* q, const float* kt, const float* vf,
                                    const PrefillShape& s, int64_t h, int64_t i0, int nq,
                                    float* scratch);

}  // namespace nnpipe::cpu
