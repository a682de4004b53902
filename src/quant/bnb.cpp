#include "quant/bnb.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

#include "core/error.h"
#include "core/half.h"

namespace nnpipe {

namespace {

// bitsandbytes.functional.get_4bit_type("nf4"): quantiles of N(0, 1), hardcoded there too.
constexpr std::array<float, 16> kNF4 = {-1.0f,
                                        -0.6961928009986877f,
                                        -0.5250730514526367f,
                                        -0.39491748809814453f,
                                        -0.28444138169288635f,
                                        -0.18477343022823334f,
                                        -0.09105003625154495f,
                                        0.0f,
                                        0.07958029955625534f,
                                        0.16093020141124725f,
                                        0.24611230194568634f,
                                        0.33791524171829224f,
                                        0.44070982933044434f,
                                        0.5626170039176941f,
                                        0.7229568362236023f,
                                        1.0f};

// get_4bit_type("fp4"): e2m1 values in bit-pattern order divided by their max (12) in f32.
std::array<float, 16> make_fp4() {
  constexpr float raw[16] = {0, 0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                             0, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
  std::array<float, 16> c{};
  for (int i = 0; i < 16; ++i) c[static_cast<size_t>(i)] = raw[i] / 12.0f;
  return c;
}

// create_dynamic_map() (signed, 7 exponent bits), generated with bitsandbytes 0.50.2 and checked
// against it by tests/conformance/test_hf_quantize.py (the nested_quant_map bytes).
constexpr std::array<float, 256> kDynamicMap = {
    -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.eep-1f,      -0x1.e6ccccp-1f,  -0x1.df999ap-1f,
    -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.cap-1f,      -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,
    -0x1.b46666p-1f,  -0x1.ad3334p-1f,  -0x1.a6p-1f,      -0x1.9eccccp-1f,  -0x1.97999ap-1f,
    -0x1.906666p-1f,  -0x1.893334p-1f,  -0x1.82p-1f,      -0x1.7accccp-1f,  -0x1.73999ap-1f,
    -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5ep-1f,      -0x1.56ccccp-1f,  -0x1.4f999ap-1f,
    -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3ap-1f,      -0x1.32ccccp-1f,  -0x1.2b999ap-1f,
    -0x1.246668p-1f,  -0x1.1d3334p-1f,  -0x1.16p-1f,      -0x1.0eccccp-1f,  -0x1.079998p-1f,
    -0x1.006666p-1f,  -0x1.f26664p-2f,  -0x1.e4p-2f,      -0x1.d59998p-2f,  -0x1.c73334p-2f,
    -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9cp-2f,      -0x1.8d9998p-2f,  -0x1.7f3334p-2f,
    -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.54p-2f,      -0x1.459998p-2f,  -0x1.373334p-2f,
    -0x1.28ccccp-2f,  -0x1.1a6668p-2f,  -0x1.0cp-2f,      -0x1.fb3332p-3f,  -0x1.de6666p-3f,
    -0x1.c1999ap-3f,  -0x1.a4ccccp-3f,  -0x1.88p-3f,      -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
    -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,  -0x1.93d70ap-4f,
    -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,  -0x1.65c29p-4f,   -0x1.5a3d7p-4f,
    -0x1.4eb854p-4f,  -0x1.433334p-4f,  -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,
    -0x1.151ebap-4f,  -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
    -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,  -0x1.5ae146p-5f,
    -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c29p-5f,   -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,
    -0x1.a147aep-6f,  -0x1.733334p-6f,  -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,
    -0x1.75c29p-7f,   -0x1.3e76c8p-7f,  -0x1.2c083p-7f,   -0x1.19999ap-7f,  -0x1.072b02p-7f,
    -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,  -0x1.56041ap-8f,
    -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,  -0x1.851eb8p-9f,  -0x1.3b645ap-9f,
    -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f,
    -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f,
    -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,          0x1.27476ep-21f,  0x1.b43528p-19f,
    0x1.040bfep-17f,  0x1.64840cp-16f,  0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,
    0x1.47ae16p-13f,  0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
    0x1.78d5p-11f,    0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,  0x1.e353f8p-10f,
    0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,   0x1.0c49bap-8f,   0x1.3126e8p-8f,
    0x1.56041ap-8f,   0x1.7ae148p-8f,   0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,
    0x1.072b02p-7f,   0x1.19999ap-7f,   0x1.2c083p-7f,    0x1.3e76c8p-7f,   0x1.75c29p-7f,
    0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,   0x1.a147aep-6f,
    0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c29p-5f,    0x1.2ccccep-5f,   0x1.43d70ap-5f,
    0x1.5ae146p-5f,   0x1.71eb86p-5f,   0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,
    0x1.ce147ap-5f,   0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
    0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,   0x1.4eb854p-4f,
    0x1.5a3d7p-4f,    0x1.65c29p-4f,    0x1.7147aep-4f,   0x1.7ccccep-4f,   0x1.8851eep-4f,
    0x1.93d70ap-4f,   0x1.b66668p-4f,   0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,
    0x1.4e6666p-3f,   0x1.6b3334p-3f,   0x1.88p-3f,       0x1.a4ccccp-3f,   0x1.c1999ap-3f,
    0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0cp-2f,       0x1.1a6668p-2f,   0x1.28ccccp-2f,
    0x1.373334p-2f,   0x1.459998p-2f,   0x1.54p-2f,       0x1.626666p-2f,   0x1.70ccccp-2f,
    0x1.7f3334p-2f,   0x1.8d9998p-2f,   0x1.9cp-2f,       0x1.aa6666p-2f,   0x1.b8ccccp-2f,
    0x1.c73334p-2f,   0x1.d59998p-2f,   0x1.e4p-2f,       0x1.f26664p-2f,   0x1.006666p-1f,
    0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.16p-1f,       0x1.1d3334p-1f,   0x1.246668p-1f,
    0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3ap-1f,       0x1.413334p-1f,   0x1.486668p-1f,
    0x1.4f999ap-1f,   0x1.56ccccp-1f,   0x1.5ep-1f,       0x1.653334p-1f,   0x1.6c6668p-1f,
    0x1.73999ap-1f,   0x1.7accccp-1f,   0x1.82p-1f,       0x1.893334p-1f,   0x1.906666p-1f,
    0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a6p-1f,       0x1.ad3334p-1f,   0x1.b46666p-1f,
    0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.cap-1f,       0x1.d13334p-1f,   0x1.d86666p-1f,
    0x1.df999ap-1f,   0x1.e6ccccp-1f,   0x1.eep-1f,       0x1.f53334p-1f,   0x1.fc6666p-1f,
    0x1p+0f};

// The quantizer's view of a 4-bit code: midpoints between the sorted codes and the code index of
// each sorted position (torch.argsort; FP4 has two zeros, +0 at index 0 sorts before index 8).
struct Code4 {
  std::array<float, 15> bounds;
  std::array<uint8_t, 16> order;
};

Code4 make_code4(const std::array<float, 16>& code) {
  Code4 c{};
  for (int i = 0; i < 16; ++i) c.order[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  std::stable_sort(c.order.begin(), c.order.end(),
                   [&](uint8_t a, uint8_t b) { return code[a] < code[b]; });
  for (size_t i = 0; i < 15; ++i) c.bounds[i] = (code[c.order[i]] + code[c.order[i + 1]]) / 2.0f;
  return c;
}

const Code4& code4(Bnb4bitType t) {
  static const Code4 nf4 = make_code4(kNF4), fp4 = make_code4(bnb4bit_code(Bnb4bitType::kFP4));
  return t == Bnb4bitType::kNF4 ? nf4 : fp4;
}

// torch.bucketize(x, bounds, right=False): the number of bounds strictly below x.
uint8_t bucket4(const Code4& c, float x) {
  const auto pos = std::lower_bound(c.bounds.begin(), c.bounds.end(), x) - c.bounds.begin();
  return c.order[static_cast<size_t>(pos)];
}

// torch.clamp(min=1e-38): the bound is the f32 (subnormal) nearest to 1e-38.
constexpr float kAbsmaxFloor = 1e-38f;

// ---- torch's cascade sum (aten/src/ATen/native/cpu/SumKernel.cpp) ----
constexpr int kLanes = 8;  // Vectorized<float> under AVX2
using Vec = std::array<float, kLanes>;

template <typename T>
void add_to(T& a, const T& b) {
  if constexpr (std::is_same_v<T, float>) {
    a += b;
  } else {
    for (int l = 0; l < kLanes; ++l) a[static_cast<size_t>(l)] += b[static_cast<size_t>(l)];
  }
}

int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  return std::bit_width(static_cast<uint64_t>(x) - 1);
}

// multi_row_sum with nrows = 4: load(i, k) is element k of row i.
template <typename T, typename Load>
std::array<T, 4> multi_row_sum(const Load& load, int64_t size) {
  constexpr int64_t kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  std::array<std::array<T, 4>, kLevels> acc{};
  int64_t i = 0;
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int64_t k = 0; k < 4; ++k) add_to(acc[0][static_cast<size_t>(k)], load(i, k));
    for (int64_t j = 1; j < kLevels; ++j) {
      for (size_t k = 0; k < 4; ++k) {
        add_to(acc[static_cast<size_t>(j)][k], acc[static_cast<size_t>(j - 1)][k]);
        acc[static_cast<size_t>(j - 1)][k] = T{};
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int64_t k = 0; k < 4; ++k) add_to(acc[0][static_cast<size_t>(k)], load(i, k));
  for (size_t j = 1; j < kLevels; ++j)
    for (size_t k = 0; k < 4; ++k) add_to(acc[0][k], acc[j][k]);
  return acc[0];
}

// row_sum: `size` elements load(i), summed as a (-1, 4) array plus the tail.
template <typename T, typename Load>
T row_sum(const Load& load, int64_t size) {
  const int64_t size_ilp = size / 4;
  auto partial = multi_row_sum<T>([&](int64_t i, int64_t k) { return load(i * 4 + k); }, size_ilp);
  for (int64_t i = size_ilp * 4; i < size; ++i) add_to(partial[0], load(i));
  for (size_t k = 1; k < 4; ++k) add_to(partial[0], partial[k]);
  return partial[0];
}

}  // namespace

const char* bnb4bit_type_name(Bnb4bitType t) {
  return t == Bnb4bitType::kNF4 ? "nf4" : "fp4";
}

const std::array<float, 16>& bnb4bit_code(Bnb4bitType t) {
  static const std::array<float, 16> fp4 = make_fp4();
  return t == Bnb4bitType::kNF4 ? kNF4 : fp4;
}

const std::array<float, 256>& bnb_dynamic_map() {
  return kDynamicMap;
}

bool bnb4bit_valid_blocksize(int64_t b) {
  return b == 32 || b == 64 || b == 128 || b == 256 || b == 512 || b == 1024 || b == 2048 ||
         b == 4096;
}

float torch_sum_f32(std::span<const float> x) {
  const auto n = static_cast<int64_t>(x.size());
  const float* p = x.data();
  float total = 0;
  if (n < kLanes) {  // too short for the vector path: scalar row_sum
    total = row_sum<float>([&](int64_t i) { return p[i]; }, n);
  } else {  // vectorized_inner_sum
    const int64_t vec_size = n / kLanes;
    const Vec v = row_sum<Vec>(
        [&](int64_t i) {
          Vec r;
          std::copy_n(p + i * kLanes, kLanes, r.begin());
          return r;
        },
        vec_size);
    float acc = 0;
    for (int64_t k = vec_size * kLanes; k < n; ++k) acc += p[k];
    for (float lane : v) acc += lane;
    total = acc;
  }
  return 0.0f + total;  // accumulated into the zero-filled output
}

float torch_mean_f32(std::span<const float> x) {
  return torch_sum_f32(x) / static_cast<float>(x.size());
}

BnbInt8 bnb_quantize_int8(std::span<const float> w, int64_t rows, int64_t cols) {
  if (rows < 0 || cols <= 0 || static_cast<uint64_t>(rows * cols) != w.size())
    fail(ErrorCode::kInvalidArgument, "int8 quantization: {} values are not {} x {}", w.size(),
         rows, cols);
  BnbInt8 r;
  r.cb.resize(w.size());
  r.scb.resize(static_cast<size_t>(rows));
  std::vector<float> h(static_cast<size_t>(cols));
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = w.data() + i * cols;
    float m = 0;
    for (int64_t j = 0; j < cols; ++j) {
      h[static_cast<size_t>(j)] = f16_to_f32(f32_to_f16(src[j]));  // B.to(float16)
      const float a = std::fabs(h[static_cast<size_t>(j)]);
      if (!std::isfinite(a))
        fail(ErrorCode::kUnsupported,
             "int8 quantization: row {} column {}: {} is not finite in float16", i, j, src[j]);
      m = std::max(m, a);
    }
    r.scb[static_cast<size_t>(i)] = m;
    // torch: 127.0 / t is t.reciprocal() * 127.0; an all-zero row gives 0 * inf = NaN -> 0.
    const float scale = (1.0f / m) * 127.0f;
    int8_t* dst = r.cb.data() + i * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float v = std::nearbyint(h[static_cast<size_t>(j)] * scale);
      dst[j] = std::isnan(v) ? int8_t{0} : static_cast<int8_t>(v);
    }
  }
  return r;
}

void bnb_dequantize_int8(std::span<const int8_t> cb, std::span<const float> scb, int64_t cols,
                         std::span<float> out) {
  if (cols <= 0 || cb.size() != out.size() || cb.size() != scb.size() * static_cast<size_t>(cols))
    fail(ErrorCode::kInvalidArgument, "int8 dequantization: {} values, {} row scales, {} columns",
         cb.size(), scb.size(), cols);
  // A * stats * 7.874015718698502e-3 (the Python float becomes an f32 scalar).
  const float inv127 = static_cast<float>(7.874015718698502e-3);
  for (size_t i = 0; i < cb.size(); ++i)
    out[i] = (static_cast<float>(cb[i]) * scb[i / static_cast<size_t>(cols)]) * inv127;
}

Bnb4bit bnb_quantize_4bit(std::span<const float> x, int64_t blocksize, Bnb4bitType type) {
  if (!bnb4bit_valid_blocksize(blocksize))
    fail(ErrorCode::kInvalidArgument,
         "4-bit quantization: blocksize {} (bitsandbytes accepts 32, 64, ..., 4096)", blocksize);
  const auto n = static_cast<int64_t>(x.size());
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[static_cast<size_t>(i)]))
      fail(ErrorCode::kInvalidArgument, "4-bit quantization: value {} is {}", i,
           x[static_cast<size_t>(i)]);
  const Code4& c = code4(type);
  const int64_t blocks = (n + blocksize - 1) / blocksize, full = n / blocksize;
  Bnb4bit r;
  r.absmax.resize(static_cast<size_t>(blocks));
  std::vector<uint8_t> q(static_cast<size_t>(n + (n & 1)), bucket4(c, 0.0f));  // pad: code of 0
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float m = 0;
    for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(x[static_cast<size_t>(i)]));
    r.absmax[static_cast<size_t>(b)] = m;
    const float d = std::max(m, kAbsmaxFloor);
    // Full blocks multiply by the reciprocal, the partial last block divides (as torch does).
    const float inv = 1.0f / d;
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[static_cast<size_t>(i)];
      const float s = std::clamp(b < full ? v * inv : v / d, -1.0f, 1.0f);
      q[static_cast<size_t>(i)] = bucket4(c, s);
    }
  }
  r.packed.resize(q.size() / 2);
  for (size_t i = 0; i < r.packed.size(); ++i)
    r.packed[i] = static_cast<uint8_t>(q[2 * i] << 4 | q[2 * i + 1]);
  return r;
}

void bnb_dequantize_4bit(std::span<const uint8_t> packed, std::span<const float> absmax,
                         int64_t blocksize, Bnb4bitType type, std::span<float> out) {
  const auto n = static_cast<int64_t>(out.size());
  if (blocksize <= 0 || packed.size() != static_cast<size_t>((n + 1) / 2) ||
      absmax.size() != static_cast<size_t>((n + blocksize - 1) / blocksize))
    fail(ErrorCode::kInvalidArgument,
         "4-bit dequantization: {} values need {} bytes and {} absmax, got {} and {}", n,
         (n + 1) / 2, blocksize > 0 ? (n + blocksize - 1) / blocksize : 0, packed.size(),
         absmax.size());
  const auto& code = bnb4bit_code(type);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = packed[static_cast<size_t>(i / 2)];
    const int nib = (i & 1) ? byte & 0xF : byte >> 4;
    out[static_cast<size_t>(i)] =
        code[static_cast<size_t>(nib)] * absmax[static_cast<size_t>(i / blocksize)];
  }
}

BnbNested bnb_quantize_nested(std::span<const float> absmax, int64_t blocksize) {
  if (absmax.empty() || blocksize <= 0)
    fail(ErrorCode::kInvalidArgument, "nested quantization: {} values, blocksize {}", absmax.size(),
         blocksize);
  const auto& code = kDynamicMap;
  BnbNested r;
  r.offset = torch_mean_f32(absmax);
  const auto n = static_cast<int64_t>(absmax.size());
  std::vector<float> v(absmax.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = absmax[i] - r.offset;
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  r.absmax.resize(static_cast<size_t>(blocks));
  r.q.resize(v.size());
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float m = 0;
    for (int64_t i = begin; i < end; ++i) m = std::max(m, std::fabs(v[static_cast<size_t>(i)]));
    r.absmax[static_cast<size_t>(b)] = m;
    for (int64_t i = begin; i < end; ++i) {
      // An all-equal block (m == 0) has only zeros: code of 0.
      const float z = m > 0 ? v[static_cast<size_t>(i)] / m : 0.0f;
      // Largest code <= z, then the right neighbour if strictly closer.
      auto it = std::upper_bound(code.begin(), code.end(), z);
      size_t idx = it == code.begin() ? 0 : static_cast<size_t>(it - code.begin() - 1);
      if (idx + 1 < code.size() && std::fabs(z - code[idx + 1]) < std::fabs(z - code[idx])) ++idx;
      r.q[static_cast<size_t>(i)] = static_cast<uint8_t>(idx);
    }
  }
  return r;
}

void bnb_dequantize_nested(std::span<const uint8_t> q, std::span<const float> nested_absmax,
                           std::span<const float> code, int64_t blocksize, float offset,
                           std::span<float> out) {
  const auto n = static_cast<int64_t>(q.size());
  if (blocksize <= 0 || out.size() != q.size() || code.size() != 256 ||
      nested_absmax.size() != static_cast<size_t>((n + blocksize - 1) / blocksize))
    fail(ErrorCode::kInvalidArgument,
         "nested dequantization: {} codes, {} block maxima, blocksize {}, {} map entries", n,
         nested_absmax.size(), blocksize, code.size());
  for (int64_t i = 0; i < n; ++i)
    out[static_cast<size_t>(i)] =
        code[q[static_cast<size_t>(i)]] * nested_absmax[static_cast<size_t>(i / blocksize)] +
        offset;
}

}  // namespace nnpipe
