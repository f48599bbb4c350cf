// CPU temporal conv (kernel 3x1x1, stride 1, padding (1, 0, 0)) in bf16 by Winograd F(2, 3) along time.
//
// The bf16 form of conv3d_winograd_time.cpp's F(4, 3): 2 output frames from 4 transformed input frames
// with 4 products instead of 6 (1.5x fewer multiplies). F(2, 3)'s matrices hold only 0, +-1 and 1/2, so the
// extra bf16 roundings (V and the GEMM products are stored in bf16) grow the error ~2x over oneDNN's bf16
// direct conv; F(4, 3)'s (entries up to 8) grew it ~6x, which is why this is F(2, 3).
//
//   V = B^T d:   v0 = d0 - d2, v1 = d1 + d2, v2 = d2 - d1, v3 = d1 - d3   (d: frames 2i-1 .. 2i+2)
//   U = G g:     u0 = g0, u1 = (g0 + g1 + g2) / 2, u2 = (g0 - g1 + g2) / 2, u3 = g2
//   y = A^T M:   y0 = m0 + m1 + m2, y1 = m1 - m2 - m3
//
// The transforms compute in fp32 from bf16 loads and round once (to nearest even, NaN kept) on store; the
// 4 GEMMs V_k U_k run in between through oneDNN's bf16 matmul (slowfast_kernels/ops/conv3d_winograd_time.py).
// Layout: channels-last throughout, so each transform is a loop over channels: AVX-512, 16 channels a
// step, where the CPU has AVX512BW / VL (chosen at run time), else a scalar loop; both round alike.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <immintrin.h>

#include "../checks.h"
#include "bf16_bits.h"

namespace slowfast_kernels {
namespace {

constexpr int64_t kTile = 2;    // output frames per tile
constexpr int64_t kPoints = 4;  // input frames per tile = transformed planes

using bf16_bits::from_float;
using bf16_bits::to_float;

// One GEMM row of V for the 4 planes: d[0..3] the tile's input frames at one position (nullptr: outside the
// clip, zero), C channels each.
void input_transform_scalar(const uint16_t* const* d, int64_t C, uint16_t* const* v) {
  for (int64_t c = 0; c < C; ++c) {
    const float a = d[0] ? to_float(d[0][c]) : 0.0f, b = d[1] ? to_float(d[1][c]) : 0.0f;
    const float e = d[2] ? to_float(d[2][c]) : 0.0f, f = d[3] ? to_float(d[3][c]) : 0.0f;
    v[0][c] = from_float(a - e);
    v[1][c] = from_float(b + e);
    v[2][c] = from_float(e - b);
    v[3][c] = from_float(b - f);
  }
}

// One output row: m[0..3] the 4 products at this row (Co each), y[0..1] the tile's 2 output frames (y[1]
// nullptr past the clip's end), r[0..1] the residual's (nullptr: none; may alias y, read before written).
// ReLU as (v < 0 ? 0 : v): NaN stays NaN (torch.relu's semantics).
void output_transform_scalar(const uint16_t* const* m, int64_t Co, const float* bias, const uint16_t* const* r,
                             bool relu, uint16_t* const* y) {
  for (int64_t c = 0; c < Co; ++c) {
    const float a = to_float(m[0][c]), b = to_float(m[1][c]), e = to_float(m[2][c]), f = to_float(m[3][c]);
    const float bc = bias ? bias[c] : 0.0f;
    float o[kTile] = {a + b + e + bc, b - e - f + bc};
    for (int t = 0; t < kTile; ++t) {
      if (!y[t]) continue;
      float val = o[t] + (r[t] ? to_float(r[t][c]) : 0.0f);
      if (relu) val = val < 0.0f ? 0.0f : val;
      y[t][c] = from_float(val);
    }
  }
}

// The same two transforms with AVX-512, 16 channels a step (masked tail); bit-identical to the scalar ones.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
namespace avx512 {

using bf16_bits::mask16;
using bf16_bits::store16;

inline __m512 load16(const uint16_t* p, __mmask16 k) {  // nullptr -> zeros
  return p ? bf16_bits::load16(p, k) : _mm512_setzero_ps();
}

void input_transform(const uint16_t* const* d, int64_t C, uint16_t* const* v) {
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = mask16(C - c);
    const __m512 a = load16(d[0] ? d[0] + c : nullptr, k), b = load16(d[1] ? d[1] + c : nullptr, k);
    const __m512 e = load16(d[2] ? d[2] + c : nullptr, k), f = load16(d[3] ? d[3] + c : nullptr, k);
    store16(v[0] + c, k, _mm512_sub_ps(a, e));
    store16(v[1] + c, k, _mm512_add_ps(b, e));
    store16(v[2] + c, k, _mm512_sub_ps(e, b));
    store16(v[3] + c, k, _mm512_sub_ps(b, f));
  }
}

void output_transform(const uint16_t* const* m, int64_t Co, const float* bias, const uint16_t* const* r, bool relu,
                      uint16_t* const* y) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < Co; c += 16) {
    const __mmask16 k = mask16(Co - c);
    const __m512 a = load16(m[0] + c, k), b = load16(m[1] + c, k), e = load16(m[2] + c, k), f = load16(m[3] + c, k);
    const __m512 bc = bias ? _mm512_maskz_loadu_ps(k, bias + c) : zero;
    __m512 o[kTile] = {_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), e), bc),  // the scalar order
                       _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(b, e), f), bc)};
    for (int t = 0; t < kTile; ++t) {
      if (!y[t]) continue;
      __m512 val = r[t] ? _mm512_add_ps(o[t], load16(r[t] + c, k)) : o[t];
      if (relu) val = _mm512_max_ps(zero, val);  // vmaxps returns its second operand (val) when one is NaN
      store16(y[t] + c, k, val);
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

const uint16_t* bf16_ptr(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* bf16_mut_ptr(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

}  // namespace

// [C_out, C_in, 3, 1, 1] -> U [4, C_in, C_out] float32 (computed in float64, rounded once): F(2, 3)'s G g.
at::Tensor winograd_time_f2_weight(const at::Tensor& weight) {
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(weight.dim() == 5 && weight.size(2) == 3 && weight.size(3) == 1 && weight.size(4) == 1,
            "winograd_time_f2_weight: weight: expected [C_out, C_in, 3, 1, 1], got ", weight.sizes());
  SFK_CHECK(weight.is_floating_point(), "winograd_time_f2_weight: weight: expected a float tensor, got ",
            weight.scalar_type());
  const double G[kPoints][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  const at::Tensor g = weight.to(at::kDouble).select(4, 0).select(3, 0);  // [Co, C, 3]
  const at::Tensor gm = at::tensor(at::ArrayRef<double>(&G[0][0], kPoints * 3), g.options()).view({kPoints, 3});
  return at::einsum("kj,ocj->kco", {gm, g}).to(at::kFloat).contiguous();
}

// x [N, C, T, H, W] bfloat16 (any layout; read as channels_last_3d) -> V [4, N * ceil(T / 2) * H * W, C]
// bfloat16: V[k, (n, i, p), :] = (B^T d)[k], d the frames 2i-1 .. 2i+2 at position p (zero outside [0, T)).
at::Tensor winograd_time_input_bf16(const at::Tensor& x_in, bool portable) {
  check_device(x_in, c10::DeviceType::CPU, "x");
  check_rank(x_in, 5, "x");
  SFK_CHECK(x_in.scalar_type() == at::kBFloat16, "winograd_time_input_bf16: x: expected bfloat16, got ",
            x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast3d);
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), P = x.size(3) * x.size(4);
  const int64_t tiles = (T + kTile - 1) / kTile, R = N * tiles * P;
  at::Tensor V = at::empty({kPoints, R, C}, x.options());
  if (V.numel() == 0) return V;
  const uint16_t* xp = bf16_ptr(x);
  uint16_t* vp = bf16_mut_ptr(V);
  const bool avx = !portable && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  // Grain: a (sample, tile)'s rows; one parallel region per call.
  at::parallel_for(0, N * tiles * P, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ni = row / P, p = row % P, n = ni / tiles, i = ni % tiles;
      const uint16_t* d[kPoints];
      for (int64_t j = 0; j < kPoints; ++j) {
        const int64_t t = i * kTile + j - 1;
        d[j] = (t >= 0 && t < T) ? xp + ((n * T + t) * P + p) * C : nullptr;
      }
      uint16_t* v[kPoints];
      for (int64_t k = 0; k < kPoints; ++k) v[k] = vp + (k * R + row) * C;
      avx ? avx512::input_transform(d, C, v) : input_transform_scalar(d, C, v);
    }
  });
  return V;
}

// The 4 GEMM products m[k] = V[k] U[k] (bfloat16 [R, C_out] each, rows as winograd_time_input_bf16's) ->
// out [N, C_out, T, H, W] bfloat16 channels_last_3d = act(A^T M + bias + residual); residual (bfloat16) may
// be out itself.
void winograd_time_output_bf16(at::TensorList m, const c10::optional<at::Tensor>& bias, c10::string_view activation,
                               const c10::optional<at::Tensor>& residual, bool portable, const at::Tensor& out) {
  SFK_CHECK(activation == "relu" || activation == "none",
            "winograd_time_output_bf16: activation: expected relu or none, got ", activation);
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  SFK_CHECK(out.dim() == 5 && out.scalar_type() == at::kBFloat16 && out.device().is_cpu() && out.is_contiguous(cl),
            "winograd_time_output_bf16: out: expected a channels_last_3d bfloat16 CPU [N, C_out, T, H, W] tensor, "
            "got ", out.scalar_type(), " ", out.sizes());
  const int64_t N = out.size(0), Co = out.size(1), T = out.size(2), P = out.size(3) * out.size(4);
  const int64_t tiles = (T + kTile - 1) / kTile, R = N * tiles * P;
  SFK_CHECK(static_cast<int64_t>(m.size()) == kPoints, "winograd_time_output_bf16: m: expected 4 tensors, got ",
            m.size());
  for (const auto& mk : m) {
    SFK_CHECK(mk.dim() == 2 && mk.size(0) == R && mk.size(1) == Co && mk.scalar_type() == at::kBFloat16 &&
                  mk.device().is_cpu() && mk.is_contiguous(),
              "winograd_time_output_bf16: m: expected 4 contiguous bfloat16 CPU tensors of shape [", R, ", ", Co,
              "], got ", mk.scalar_type(), " ", mk.sizes());
  }
  const float* bias_p = nullptr;
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == Co && bias->scalar_type() == at::kFloat && bias->is_contiguous()
                  && bias->device().is_cpu(),
              "winograd_time_output_bf16: bias: expected a contiguous float32 CPU tensor of shape [", Co, "], got ",
              bias->scalar_type(), " ", bias->sizes());
    bias_p = bias->data_ptr<float>();
  }
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    SFK_CHECK(residual->sizes() == out.sizes() && residual->scalar_type() == at::kBFloat16 &&
                  residual->device().is_cpu(),
              "winograd_time_output_bf16: residual: expected a bfloat16 CPU tensor of shape ", out.sizes(), ", got ",
              residual->scalar_type(), " ", residual->sizes());
    res = residual->contiguous(cl);
  }
  if (out.numel() == 0) return;
  const uint16_t* mp[kPoints];
  for (int64_t k = 0; k < kPoints; ++k) mp[k] = bf16_ptr(m[k]);
  const uint16_t* rp = res.defined() ? bf16_ptr(res) : nullptr;
  uint16_t* yp = bf16_mut_ptr(out);
  const bool avx = !portable && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  const bool relu = activation == "relu";
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row % P, ni = row / P, n = ni / tiles, i = ni % tiles;
      const int64_t f0 = i * kTile, f1 = f0 + 1;
      const int64_t o0 = ((n * T + f0) * P + p) * Co, o1 = ((n * T + f1) * P + p) * Co;
      const bool second = f1 < T;
      const uint16_t* mr[kPoints] = {mp[0] + row * Co, mp[1] + row * Co, mp[2] + row * Co, mp[3] + row * Co};
      const uint16_t* rt[kTile] = {rp ? rp + o0 : nullptr, (rp && second) ? rp + o1 : nullptr};
      uint16_t* yt[kTile] = {yp + o0, second ? yp + o1 : nullptr};
      avx ? avx512::output_transform(mr, Co, bias_p, rt, relu, yt) : output_transform_scalar(mr, Co, bias_p, rt, relu, yt);
    }
  });
}

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("winograd_time_f2_weight", &winograd_time_f2_weight);
  m.impl("winograd_time_input_bf16", &winograd_time_input_bf16);
  m.impl("winograd_time_output_bf16", &winograd_time_output_bf16);
}

}  // namespace slowfast_kernels
