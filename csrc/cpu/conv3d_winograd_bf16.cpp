// CPU Winograd conv for the 1x3x3, stride 1, padding (0, 1, 1) convs in bf16: F(2x2, 3x3) over the N * T
// frames of channels-last (NDHWC) bf16 memory, bias, residual and ReLU fused into the output transform.
//
// The bf16 form of conv3d_winograd.cpp: 16 products per 4 outputs instead of 36. F(2x2)'s matrices hold only
// 0, +-1 and 1/2, so rounding the transformed input V to bf16 costs ~1.7x the error of oneDNN's bf16 direct
// conv on a layer; F(4x4, 3x3) (entries up to 8, in both dimensions) cost ~20x, which is why this is F(2x2).
//
// Each thread runs whole blocks of output tiles, as the fp32 kernel does:
//   1. input transform: V[k][tile][c] = (B^T d B)[k] in fp32 from the bf16 input, rounded to bf16 (nearest
//      even), row stride Cp = C rounded up to even (the pad channel is zero);
//   2. the 16 GEMMs M_k = V_k U_k with VDPBF16PS (two input channels per fp32 lane: U is packed as channel
//      pairs, [16][Cp / 2][Co][2]), fp32 accumulators and M;
//   3. output transform: A^T M A + bias (+ residual), ReLU keeping NaN, rounded to bf16 into NDHWC.
// VDPBF16PS needs AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids); elsewhere a scalar loop computes the
// same products in fp32 (slow; the plan never picks this kernel there: tests only).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../checks.h"
#include "bf16_bits.h"

namespace slowfast_kernels {
namespace {

constexpr int kM = 2, kA = 4, kA2 = 16;  // output tile, input tile, products per tile

struct Geometry {
  int64_t N, C, Cp, T, H, W, Co;
  int64_t tiles_h, tiles_w, tiles;
  int64_t xn, xt, xh, xw;  // x's strides (channel stride 1)
  int64_t rn, rt, rh, rw;  // residual's
  int64_t yn, yt, yh, yw;  // out's
};

using bf16_bits::from_float;
using bf16_bits::to_float;

// 1-D B^T d and A^T m of F(2, 3), on any value type with + and -.
template <typename V>
inline void input_1d(const V* d, V* r) {
  r[0] = d[0] - d[2];
  r[1] = d[1] + d[2];
  r[2] = d[2] - d[1];
  r[3] = d[1] - d[3];
}
template <typename V>
inline void output_1d(const V* m, V* y) {
  y[0] = m[0] + m[1] + m[2];
  y[1] = m[1] - m[2] - m[3];
}

// ---- scalar (portable) ----------------------------------------------------------------------------------

namespace scalar {

void input_tiles(const uint16_t* x, const Geometry& g, int64_t p0, int64_t p1, uint16_t* V, int64_t nb) {
  const int64_t per_frame = g.tiles_h * g.tiles_w;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame;
    const int64_t h0 = in_frame / g.tiles_w * kM - 1, w0 = in_frame % g.tiles_w * kM - 1;
    const uint16_t* frame = x + f / g.T * g.xn + f % g.T * g.xt;
    uint16_t* v = V + (p - p0) * g.Cp;
    for (int64_t c = 0; c < g.Cp; ++c) {
      float d[kA][kA], t[kA][kA], col[kA], r[kA];
      for (int i = 0; i < kA; ++i) {
        for (int j = 0; j < kA; ++j) {
          const int64_t h = h0 + i, w = w0 + j;
          const bool in = c < g.C && h >= 0 && h < g.H && w >= 0 && w < g.W;
          d[i][j] = in ? to_float(frame[h * g.xh + w * g.xw + c]) : 0.0f;
        }
      }
      for (int j = 0; j < kA; ++j) {
        for (int i = 0; i < kA; ++i) col[i] = d[i][j];
        input_1d(col, r);
        for (int i = 0; i < kA; ++i) t[i][j] = r[i];
      }
      for (int i = 0; i < kA; ++i) {
        input_1d(t[i], r);
        for (int j = 0; j < kA; ++j) v[((i * kA + j) * nb) * g.Cp + c] = from_float(r[j]);
      }
    }
  }
}

// M_k[tile][o] = sum_c V_k[tile][c] U_k[c][o] in fp32, for output channels [co0, co1) (M's row stride co1 - co0).
void block_gemms(const uint16_t* V, const uint16_t* U, const Geometry& g, float* M, int64_t nb, int64_t co0,
                 int64_t co1) {
  const int64_t ldm = co1 - co0, pairs = g.Cp / 2;
  for (int64_t k = 0; k < kA2; ++k) {
    for (int64_t p = 0; p < nb; ++p) {
      const uint16_t* a = V + (k * nb + p) * g.Cp;
      float* m = M + (k * nb + p) * ldm;
      for (int64_t o = co0; o < co1; ++o) {
        float acc = 0.0f;
        for (int64_t q = 0; q < pairs; ++q) {
          const uint16_t* b = U + ((k * pairs + q) * g.Co + o) * 2;
          acc += to_float(a[2 * q]) * to_float(b[0]) + to_float(a[2 * q + 1]) * to_float(b[1]);
        }
        m[o - co0] = acc;
      }
    }
  }
}

void output_tiles(const float* M, const Geometry& g, int64_t p0, int64_t p1, int64_t nb, int64_t co0, int64_t co1,
                  const float* bias, const uint16_t* residual, bool relu, uint16_t* out) {
  const int64_t ldm = co1 - co0, per_frame = g.tiles_h * g.tiles_w;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame, n_ = f / g.T, t_ = f % g.T;
    const int64_t h0 = in_frame / g.tiles_w * kM, w0 = in_frame % g.tiles_w * kM;
    const int rows = static_cast<int>(std::min<int64_t>(kM, g.H - h0));
    const int cols = static_cast<int>(std::min<int64_t>(kM, g.W - w0));
    const float* m = M + (p - p0) * ldm;
    for (int64_t o = co0; o < co1; ++o) {
      float s[kA][kA], t[kM][kA], col[kA], r[kM];
      for (int k = 0; k < kA2; ++k) s[k / kA][k % kA] = m[(k * nb) * ldm + o - co0];
      for (int j = 0; j < kA; ++j) {
        for (int i = 0; i < kA; ++i) col[i] = s[i][j];
        output_1d(col, r);
        for (int i = 0; i < kM; ++i) t[i][j] = r[i];
      }
      const float b = bias ? bias[o] : 0.0f;
      for (int i = 0; i < rows; ++i) {
        output_1d(t[i], r);
        for (int j = 0; j < cols; ++j) {
          float y = r[j] + b;
          if (residual) y += to_float(residual[n_ * g.rn + t_ * g.rt + (h0 + i) * g.rh + (w0 + j) * g.rw + o]);
          if (relu) y = y < 0.0f ? 0.0f : y;  // NaN < 0 is false: NaN kept
          out[n_ * g.yn + t_ * g.yt + (h0 + i) * g.yh + (w0 + j) * g.yw + o] = from_float(y);
        }
      }
    }
  }
}

}  // namespace scalar

// ---- AVX-512 with AVX512_BF16 -----------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
namespace avx512 {

struct Vec {  // 16 fp32 lanes
  __m512 v;
  Vec operator+(const Vec& o) const { return {_mm512_add_ps(v, o.v)}; }
  Vec operator-(const Vec& o) const { return {_mm512_sub_ps(v, o.v)}; }
};

using bf16_bits::mask16;
using bf16_bits::store16;

inline Vec load16(const uint16_t* p, __mmask16 k) { return {bf16_bits::load16(p, k)}; }

void input_tiles(const uint16_t* x, const Geometry& g, int64_t p0, int64_t p1, uint16_t* V, int64_t nb) {
  const int64_t per_frame = g.tiles_h * g.tiles_w;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame;
    const int64_t h0 = in_frame / g.tiles_w * kM - 1, w0 = in_frame % g.tiles_w * kM - 1;
    const uint16_t* frame = x + f / g.T * g.xn + f % g.T * g.xt;
    const uint16_t* px[kA][kA];
    for (int i = 0; i < kA; ++i) {
      for (int j = 0; j < kA; ++j) {
        const int64_t h = h0 + i, w = w0 + j;
        px[i][j] = (h >= 0 && h < g.H && w >= 0 && w < g.W) ? frame + h * g.xh + w * g.xw : nullptr;
      }
    }
    uint16_t* v = V + (p - p0) * g.Cp;
    for (int64_t c0 = 0; c0 < g.Cp; c0 += 16) {
      const __mmask16 in = mask16(g.C - c0), k = mask16(g.Cp - c0);  // the pad channel loads as zero
      Vec d[kA][kA], t[kA][kA], col[kA], r[kA];
      for (int i = 0; i < kA; ++i) {
        for (int j = 0; j < kA; ++j) d[i][j] = px[i][j] ? load16(px[i][j] + c0, in) : Vec{_mm512_setzero_ps()};
      }
      for (int j = 0; j < kA; ++j) {
        for (int i = 0; i < kA; ++i) col[i] = d[i][j];
        input_1d(col, r);
        for (int i = 0; i < kA; ++i) t[i][j] = r[i];
      }
      for (int i = 0; i < kA; ++i) {
        input_1d(t[i], r);
        for (int j = 0; j < kA; ++j) store16(v + ((i * kA + j) * nb) * g.Cp + c0, k, r[j].v);
      }
    }
  }
}

// M[r][0, n) (+)= sum_q A[r][2q, 2q+2) . B[q][0, n)[2] for R rows (A row stride lda bf16), n <= 32 columns:
// per channel pair, B's two vectors (16 columns' pairs each) loaded once for R broadcasts and 2R VDPBF16PS.
template <int R>
inline void gemm_rows(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, int64_t pairs, float* Mrow,
                      int64_t ldm, int n, bool accumulate) {
  const __mmask16 m0 = mask16(n), m1 = n <= 16 ? 0 : mask16(n - 16);
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc0[r] = accumulate ? _mm512_maskz_loadu_ps(m0, Mrow + r * ldm) : _mm512_setzero_ps();
    acc1[r] = accumulate ? _mm512_maskz_loadu_ps(m1, Mrow + r * ldm + 16) : _mm512_setzero_ps();
  }
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, B + q * ldb);
    const __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, B + q * ldb + 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * q, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], a, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], a, b1);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(Mrow + r * ldm, m0, acc0[r]);
    _mm512_mask_storeu_ps(Mrow + r * ldm + 16, m1, acc1[r]);
  }
}

// The 16 GEMMs of one block for output channels [co0, co1): V [16][nb][Cp] bf16, U [16][Cp/2][Co][2] bf16,
// M [16][nb][co1 - co0] fp32. Per 32-column panel, K in blocks of kPairBlock pairs (an 8 KB panel of U stays
// in L1 while all rows pass over it; 64 pairs measured a little faster than 32 on 128-512 channels).
void block_gemms(const uint16_t* V, const uint16_t* U, const Geometry& g, float* M, int64_t nb, int64_t co0,
                 int64_t co1) {
  constexpr int kRows = 8;
  constexpr int64_t kPairBlock = 64;
  const int64_t pairs = g.Cp / 2, ldb = g.Co * 2, ldm = co1 - co0;
  for (int64_t k = 0; k < kA2; ++k) {
    const uint16_t* A = V + k * nb * g.Cp;
    const uint16_t* Bk = U + k * pairs * ldb;
    float* Mk = M + k * nb * ldm;
    for (int64_t j = co0; j < co1; j += 32) {
      const int n = static_cast<int>(std::min<int64_t>(32, co1 - j));
      for (int64_t q0 = 0; q0 < pairs; q0 += kPairBlock) {
        const int64_t qn = std::min(kPairBlock, pairs - q0);
        const uint16_t* Aq = A + 2 * q0;
        const uint16_t* B = Bk + q0 * ldb + 2 * j;
        float* Mj = Mk + (j - co0);
        const bool acc = q0 > 0;
        int64_t i = 0;
        for (; i + kRows <= nb; i += kRows) gemm_rows<kRows>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc);
        switch (nb - i) {
          case 7: gemm_rows<7>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 6: gemm_rows<6>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 5: gemm_rows<5>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 4: gemm_rows<4>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 3: gemm_rows<3>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 2: gemm_rows<2>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          case 1: gemm_rows<1>(Aq + i * g.Cp, g.Cp, B, ldb, qn, Mj + i * ldm, ldm, n, acc); break;
          default: break;
        }
      }
    }
  }
}

void output_tiles(const float* M, const Geometry& g, int64_t p0, int64_t p1, int64_t nb, int64_t co0, int64_t co1,
                  const float* bias, const uint16_t* residual, bool relu, uint16_t* out) {
  const int64_t ldm = co1 - co0, per_frame = g.tiles_h * g.tiles_w;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame, n_ = f / g.T, t_ = f % g.T;
    const int64_t h0 = in_frame / g.tiles_w * kM, w0 = in_frame % g.tiles_w * kM;
    const int rows = static_cast<int>(std::min<int64_t>(kM, g.H - h0));
    const int cols = static_cast<int>(std::min<int64_t>(kM, g.W - w0));
    const float* m = M + (p - p0) * ldm - co0;  // indexed by the output channel
    for (int64_t c0 = co0; c0 < co1; c0 += 16) {
      const __mmask16 k = mask16(co1 - c0);
      Vec s[kA][kA], t[kM][kA], col[kA], r[kM];
      for (int q = 0; q < kA2; ++q) s[q / kA][q % kA] = {_mm512_maskz_loadu_ps(k, m + (q * nb) * ldm + c0)};
      for (int j = 0; j < kA; ++j) {
        for (int i = 0; i < kA; ++i) col[i] = s[i][j];
        output_1d(col, r);
        for (int i = 0; i < kM; ++i) t[i][j] = r[i];
      }
      const __m512 b = bias ? _mm512_maskz_loadu_ps(k, bias + c0) : zero;
      for (int i = 0; i < rows; ++i) {
        output_1d(t[i], r);
        for (int j = 0; j < cols; ++j) {
          __m512 y = _mm512_add_ps(r[j].v, b);
          if (residual) {
            y = _mm512_add_ps(
                y, load16(residual + n_ * g.rn + t_ * g.rt + (h0 + i) * g.rh + (w0 + j) * g.rw + c0, k).v);
          }
          if (relu) y = _mm512_max_ps(zero, y);  // vmaxps returns its second operand when one is NaN
          store16(out + n_ * g.yn + t_ * g.yt + (h0 + i) * g.yh + (w0 + j) * g.yw + c0, k, y);
        }
      }
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

// Tiles per block: V (bf16) and M (fp32) of a block within kBlockBytes, at least kMinBlockTiles; layers with
// fewer tiles per thread split the output channels between the threads instead (each transforms all tiles),
// as conv3d_winograd.cpp does. Smaller blocks than the fp32 kernel's 1 MiB won although each block streams
// all of U (2-core EPYC, 2 threads, ms, 1 MiB / 64 tiles -> 256 KiB / 8 tiles, noise ~0.3): Slow res2 3.44 ->
// 3.51, res3 2.90 -> 2.53, res4 3.18 -> 2.58, res5 3.66 -> 2.92 (oneDNN's bf16 conv: 4.1, 3.9, 3.8, 3.4).
constexpr int64_t kMinBlockTiles = 8;
constexpr int64_t kBlockBytes = int64_t(256) << 10;

const uint16_t* bf16_data(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

at::Tensor conv3d_winograd_bf16_weight_cpu(const at::Tensor& weight) {
  check_rank(weight, 5, "weight");
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(weight.size(2) == 1 && weight.size(3) == 3 && weight.size(4) == 3,
            "weight: expected a [C_out, C_in, 1, 3, 3] kernel, got shape ", weight.sizes());
  SFK_CHECK(weight.is_floating_point(), "weight: expected a floating-point tensor, got ", weight.scalar_type());
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor G = at::tensor({1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0}, f64).view({4, 3});
  const int64_t Co = weight.size(0), C = weight.size(1), Cp = (C + 1) / 2 * 2;
  const at::Tensor g = weight.to(at::kDouble).squeeze(2);           // [Co, C, 3, 3]
  at::Tensor u = at::matmul(at::matmul(G, g), G.t());               // [Co, C, 4, 4]
  u = u.permute({2, 3, 1, 0}).reshape({kA2, C, Co});                // [16, C, Co]
  if (Cp != C) u = at::cat({u, at::zeros({kA2, 1, Co}, u.options())}, 1);
  // [16, Cp, Co] -> channel pairs innermost: [16, Cp / 2, Co, 2]
  return u.view({kA2, Cp / 2, 2, Co}).permute({0, 1, 3, 2}).to(at::kBFloat16).contiguous();
}

void validate(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
              c10::string_view activation, const c10::optional<at::Tensor>& residual) {
  check_rank(x, 5, "x");
  check_device(x, c10::DeviceType::CPU, "x");
  SFK_CHECK(x.scalar_type() == at::kBFloat16, "x: expected bfloat16, got ", x.scalar_type());
  check_rank(packed, 4, "packed");
  SFK_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_cpu() && packed.is_contiguous() &&
                packed.size(0) == kA2 && packed.size(1) == (x.size(1) + 1) / 2 && packed.size(3) == 2,
            "packed: expected conv3d_winograd_bf16_weight's contiguous bfloat16 CPU [16, ", (x.size(1) + 1) / 2,
            ", C_out, 2] for x's ", x.size(1), " channels, got ", packed.scalar_type(), " ", packed.sizes());
  const int64_t Co = packed.size(2);
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == Co && bias->scalar_type() == at::kFloat && bias->is_cpu() &&
                  bias->is_contiguous(),
              "bias: expected a contiguous float32 CPU tensor of shape [", Co, "], got ", bias->scalar_type(), " ",
              bias->sizes(), " on ", bias->device());
  }
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected 'relu' or 'none', got '",
            activation, "'");
  if (residual.has_value() && residual->defined()) {
    const std::vector<int64_t> shape = {x.size(0), Co, x.size(2), x.size(3), x.size(4)};
    SFK_CHECK(residual->sizes() == at::IntArrayRef(shape) && residual->scalar_type() == at::kBFloat16 &&
                  residual->is_cpu(),
              "residual: expected a bfloat16 CPU tensor of shape ", at::IntArrayRef(shape), ", got ",
              residual->scalar_type(), " ", residual->sizes());
  }
}

at::Tensor channels_innermost(const at::Tensor& t) {
  return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast3d);
}

bool native_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}

at::Tensor conv3d_winograd_bf16_cpu(const at::Tensor& x_in, const at::Tensor& packed,
                                    const c10::optional<at::Tensor>& bias, c10::string_view activation,
                                    const c10::optional<at::Tensor>& residual_in, bool portable) {
  validate(x_in, packed, bias, activation, residual_in);
  const at::Tensor x = channels_innermost(x_in);
  const bool has_residual = residual_in.has_value() && residual_in->defined();
  const at::Tensor residual = has_residual ? channels_innermost(*residual_in) : at::Tensor();
  at::Tensor out = at::empty({x.size(0), packed.size(2), x.size(2), x.size(3), x.size(4)},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (out.numel() == 0) return out;

  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.Cp = packed.size(1) * 2, g.T = x.size(2), g.H = x.size(3), g.W = x.size(4);
  g.Co = packed.size(2);
  g.tiles_h = (g.H + kM - 1) / kM, g.tiles_w = (g.W + kM - 1) / kM;
  g.tiles = g.N * g.T * g.tiles_h * g.tiles_w;
  g.xn = x.stride(0), g.xt = x.stride(2), g.xh = x.stride(3), g.xw = x.stride(4);
  g.yn = out.stride(0), g.yt = out.stride(2), g.yh = out.stride(3), g.yw = out.stride(4);
  if (has_residual) g.rn = residual.stride(0), g.rt = residual.stride(2), g.rh = residual.stride(3), g.rw = residual.stride(4);

  const int64_t threads = at::get_num_threads();
  const int64_t per_tile_bytes = kA2 * (g.Cp * 2 + g.Co * 4);
  int64_t tb, splits = 1;
  if (g.tiles < threads * kMinBlockTiles && g.Co >= 16 * threads) {
    tb = g.tiles, splits = threads;
  } else {
    tb = std::max(kMinBlockTiles, kBlockBytes / per_tile_bytes);
    tb = std::max<int64_t>(1, std::min(tb, (g.tiles + threads - 1) / threads));
  }
  const int64_t co_step = ((g.Co + 15) / 16 + splits - 1) / splits * 16;  // whole vectors per split
  splits = (g.Co + co_step - 1) / co_step;
  const int64_t blocks = (g.tiles + tb - 1) / tb;
  const int64_t workers = std::min(threads, blocks * splits);
  const int64_t v_elems = kA2 * tb * g.Cp, m_elems = kA2 * tb * std::min(co_step, g.Co);
  // Per worker: V (bf16, padded to whole floats) then M (fp32).
  at::Tensor scratch = at::empty({workers, (v_elems + 1) / 2 + m_elems}, x.options().dtype(at::kFloat));

  const bool avx = !portable && native_bf16();
  const uint16_t* up = bf16_data(packed);
  const uint16_t* xp = bf16_data(x);
  const float* bp = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
  const uint16_t* rp = has_residual ? bf16_data(residual) : nullptr;
  uint16_t* yp = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const bool relu = activation == "relu";

  at::parallel_for(0, blocks * splits, 1, [&](int64_t begin, int64_t end) {
    const int64_t worker = std::min<int64_t>(at::get_thread_num(), workers - 1);
    float* base = scratch.data_ptr<float>() + worker * scratch.size(1);
    uint16_t* vp = reinterpret_cast<uint16_t*>(base);
    float* mp = base + (v_elems + 1) / 2;
    int64_t transformed = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task / splits, co0 = task % splits * co_step, co1 = std::min(g.Co, co0 + co_step);
      const int64_t p0 = blk * tb, p1 = std::min(g.tiles, p0 + tb), nb = p1 - p0;
      if (blk != transformed) {
        avx ? avx512::input_tiles(xp, g, p0, p1, vp, nb) : scalar::input_tiles(xp, g, p0, p1, vp, nb);
        transformed = blk;
      }
      if (avx) {
        avx512::block_gemms(vp, up, g, mp, nb, co0, co1);
        avx512::output_tiles(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp);
      } else {
        scalar::block_gemms(vp, up, g, mp, nb, co0, co1);
        scalar::output_tiles(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("conv3d_winograd_bf16_weight", &conv3d_winograd_bf16_weight_cpu);
  m.impl("conv3d_winograd_bf16", &conv3d_winograd_bf16_cpu);
}

}  // namespace slowfast_kernels
