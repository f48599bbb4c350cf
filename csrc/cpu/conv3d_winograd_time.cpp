// CPU temporal conv (kernel 3x1x1, stride 1, padding (1, 0, 0)) by Winograd F(4, 3) along time.
//
// A 3x1x1 conv is three GEMMs over the time-shifted frames: 3 * T multiply-accumulates per output channel
// and input channel at every spatial position. F(4, 3) computes 4 consecutive output frames from 6 input
// frames with 6 products instead of 12: the input frames of a tile are transformed (V = B^T d), each of the
// 6 transformed planes is one GEMM with the transformed filter (M_k = V_k U_k, U = G g), and the output
// frames are A^T M. With T = 8 (the Slow pathway) two tiles cover time exactly, and the GEMMs are half
// the direct conv's. Memory layout throughout is channels-last (NDHWC), so every transform is a
// vectorizable loop over channels; the GEMMs are at::bmm (oneDNN/MKL).
//
// Matrices (Lavin & Gray 2016, interpolation points 0, +-1, +-2, infinity), fp32 error ~1e-6 relative.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

constexpr int64_t kTile = 4;    // output frames per tile
constexpr int64_t kPoints = 6;  // input frames per tile = transformed planes

// d: the tile's 6 input frames (nullptr = zero padding), each C floats; v: 6 planes, row r of each.
__attribute__((target_clones("avx512f", "avx2", "default"))) void input_transform(
    const float* const* d, int64_t C, float* const* v) {
  for (int64_t c = 0; c < C; ++c) {
    const float d0 = d[0] ? d[0][c] : 0.0f, d1 = d[1] ? d[1][c] : 0.0f, d2 = d[2] ? d[2][c] : 0.0f;
    const float d3 = d[3] ? d[3][c] : 0.0f, d4 = d[4] ? d[4][c] : 0.0f, d5 = d[5] ? d[5][c] : 0.0f;
    v[0][c] = 4.0f * d0 - 5.0f * d2 + d4;
    v[1][c] = -4.0f * (d1 + d2) + d3 + d4;
    v[2][c] = 4.0f * (d1 - d2) - d3 + d4;
    v[3][c] = 2.0f * (d3 - d1) - d2 + d4;
    v[4][c] = 2.0f * (d1 - d3) - d2 + d4;
    v[5][c] = 4.0f * d1 - 5.0f * d3 + d5;
  }
}

// The same with every frame present (the interior: no per-element null tests, so it vectorizes).
__attribute__((target_clones("avx512f", "avx2", "default"))) void input_transform_full(
    const float* __restrict d0, const float* __restrict d1, const float* __restrict d2,
    const float* __restrict d3, const float* __restrict d4, const float* __restrict d5, int64_t C,
    float* __restrict v0, float* __restrict v1, float* __restrict v2, float* __restrict v3,
    float* __restrict v4, float* __restrict v5) {
  for (int64_t c = 0; c < C; ++c) {
    v0[c] = 4.0f * d0[c] - 5.0f * d2[c] + d4[c];
    v1[c] = -4.0f * (d1[c] + d2[c]) + d3[c] + d4[c];
    v2[c] = 4.0f * (d1[c] - d2[c]) - d3[c] + d4[c];
    v3[c] = 2.0f * (d3[c] - d1[c]) - d2[c] + d4[c];
    v4[c] = 2.0f * (d1[c] - d3[c]) - d2[c] + d4[c];
    v5[c] = 4.0f * d1[c] - 5.0f * d3[c] + d5[c];
  }
}

// m: the 6 GEMM outputs of one row (Co floats each); y: up to 4 output frames (nullptr past the end);
// r: the residual's frames (nullptr: none; may alias y, read before written at the same index).
__attribute__((target_clones("avx512f", "avx2", "default"))) void output_transform(
    const float* const* m, int64_t Co, const float* bias, const float* const* r, bool relu, float* const* y) {
  for (int64_t c = 0; c < Co; ++c) {
    const float m0 = m[0][c], m1 = m[1][c], m2 = m[2][c], m3 = m[3][c], m4 = m[4][c], m5 = m[5][c];
    const float b = bias ? bias[c] : 0.0f;
    const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    float o[kTile] = {m0 + s12 + s34 + b, d12 + 2.0f * d34 + b, s12 + 4.0f * s34 + b, d12 + 8.0f * d34 + m5 + b};
    for (int64_t t = 0; t < kTile; ++t) {
      if (!y[t]) continue;
      float val = o[t] + (r[t] ? r[t][c] : 0.0f);
      y[t][c] = relu ? std::max(val, 0.0f) : val;
    }
  }
}

// The same for a tile whose 4 frames are all inside the clip (r: all 4 residual frames, or nullptr).
__attribute__((target_clones("avx512f", "avx2", "default"))) void output_transform_full(
    const float* const* m, int64_t Co, const float* __restrict bias, const float* const* r, bool relu,
    float* const* y) {
  const float *m0 = m[0], *m1 = m[1], *m2 = m[2], *m3 = m[3], *m4 = m[4], *m5 = m[5];
  float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
  const float lo = relu ? 0.0f : -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < Co; ++c) {
    const float b = bias ? bias[c] : 0.0f;
    const float s12 = m1[c] + m2[c], d12 = m1[c] - m2[c], s34 = m3[c] + m4[c], d34 = m3[c] - m4[c];
    float o0 = m0[c] + s12 + s34 + b, o1 = d12 + 2.0f * d34 + b, o2 = s12 + 4.0f * s34 + b;
    float o3 = d12 + 8.0f * d34 + m5[c] + b;
    if (r) {
      o0 += r[0][c], o1 += r[1][c], o2 += r[2][c], o3 += r[3][c];
    }
    y0[c] = std::max(o0, lo), y1[c] = std::max(o1, lo), y2[c] = std::max(o2, lo), y3[c] = std::max(o3, lo);
  }
}

void check_x(const at::Tensor& x, const char* op) {
  check_device(x, c10::DeviceType::CPU, "x");
  check_rank(x, 5, "x");
  SFK_CHECK(x.scalar_type() == at::kFloat, op, ": x: expected float32, got ", x.scalar_type());
}

}  // namespace

// [C_out, C_in, 3, 1, 1] -> U [6, C_in, C_out] (fp32): the transformed filter, computed once per layer.
at::Tensor conv3d_winograd_time_weight(const at::Tensor& weight) {
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(weight.dim() == 5 && weight.size(2) == 3 && weight.size(3) == 1 && weight.size(4) == 1,
            "conv3d_winograd_time_weight: weight: expected [C_out, C_in, 3, 1, 1], got ", weight.sizes());
  SFK_CHECK(weight.is_floating_point(), "conv3d_winograd_time_weight: weight: expected a float tensor, got ",
            weight.scalar_type());
  // G (6 x 3) in float64, so U carries no rounding beyond the final cast.
  const double G[kPoints][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  const at::Tensor g = weight.to(at::kDouble).select(4, 0).select(3, 0);  // [Co, C, 3]
  const at::Tensor gm = at::tensor(at::ArrayRef<double>(&G[0][0], kPoints * 3), g.options()).view({kPoints, 3});
  // U[k, c, o] = sum_j G[k, j] g[o, c, j]
  return at::einsum("kj,ocj->kco", {gm, g}).to(at::kFloat).contiguous();
}

// x [N, C, T, H, W] float32 (any layout; read as channels_last_3d) -> V [6, N * ceil(T / 4) * H * W, C]:
// V[k, (n, i, p), :] = (B^T d)[k], d the frames 4i-1 .. 4i+4 at position p (zero outside [0, T)).
at::Tensor winograd_time_input(const at::Tensor& x_in) {
  check_x(x_in, "winograd_time_input");
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast3d);
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), P = x.size(3) * x.size(4);
  const int64_t tiles = (T + kTile - 1) / kTile;
  const int64_t R = N * tiles * P;  // GEMM rows
  at::Tensor V = at::empty({kPoints, R, C}, x.options());
  if (V.numel() == 0) return V;
  const float* xp = x.data_ptr<float>();
  float* vp = V.data_ptr<float>();
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ni = begin; ni < end; ++ni) {
      const int64_t n = ni / tiles, i = ni % tiles;
      const float* frames[kPoints];
      bool full = true;
      for (int64_t j = 0; j < kPoints; ++j) {
        const int64_t t = i * kTile + j - 1;
        frames[j] = (t >= 0 && t < T) ? xp + (n * T + t) * P * C : nullptr;
        full = full && frames[j];
      }
      for (int64_t p = 0; p < P; ++p) {
        const int64_t row = ni * P + p;
        float* v[kPoints];
        for (int64_t k = 0; k < kPoints; ++k) v[k] = vp + (k * R + row) * C;
        if (full) {
          input_transform_full(frames[0] + p * C, frames[1] + p * C, frames[2] + p * C, frames[3] + p * C,
                               frames[4] + p * C, frames[5] + p * C, C, v[0], v[1], v[2], v[3], v[4], v[5]);
        } else {
          const float* d[kPoints];
          for (int64_t j = 0; j < kPoints; ++j) d[j] = frames[j] ? frames[j] + p * C : nullptr;
          input_transform(d, C, v);
        }
      }
    }
  });
  return V;
}

// The 6 GEMM products m[k] = V[k] U[k] ([R, C_out] each, rows as winograd_time_input's) ->
// out [N, C_out, T, H, W] (channels_last_3d) = act((A^T M) + bias + residual); residual may be out itself.
void winograd_time_output(at::TensorList m, const c10::optional<at::Tensor>& bias, c10::string_view activation,
                          const c10::optional<at::Tensor>& residual, const at::Tensor& out) {
  SFK_CHECK(activation == "relu" || activation == "none",
            "winograd_time_output: activation: expected relu or none, got ", activation);
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  SFK_CHECK(out.dim() == 5 && out.scalar_type() == at::kFloat && out.device().is_cpu() && out.is_contiguous(cl),
            "winograd_time_output: out: expected a channels_last_3d float32 CPU [N, C_out, T, H, W] tensor, got ",
            out.scalar_type(), " ", out.sizes());
  const int64_t N = out.size(0), Co = out.size(1), T = out.size(2), P = out.size(3) * out.size(4);
  const int64_t tiles = (T + kTile - 1) / kTile, R = N * tiles * P;
  SFK_CHECK(static_cast<int64_t>(m.size()) == kPoints, "winograd_time_output: m: expected 6 tensors, got ", m.size());
  for (const auto& mk : m) {
    SFK_CHECK(mk.dim() == 2 && mk.size(0) == R && mk.size(1) == Co && mk.scalar_type() == at::kFloat &&
                  mk.device().is_cpu() && mk.is_contiguous(),
              "winograd_time_output: m: expected 6 contiguous float32 CPU tensors of shape [", R, ", ", Co,
              "], got ", mk.scalar_type(), " ", mk.sizes());
  }
  const float* bias_p = nullptr;
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == Co && bias->scalar_type() == at::kFloat && bias->is_contiguous()
                  && bias->device().is_cpu(),
              "winograd_time_output: bias: expected a contiguous float32 CPU tensor of shape [", Co, "], got ",
              bias->scalar_type(), " ", bias->sizes());
    bias_p = bias->data_ptr<float>();
  }
  at::Tensor res;
  if (residual.has_value() && residual->defined()) {
    SFK_CHECK(residual->sizes() == out.sizes() && residual->scalar_type() == at::kFloat &&
                  residual->device().is_cpu(),
              "winograd_time_output: residual: expected a float32 CPU tensor of shape ", out.sizes(), ", got ",
              residual->scalar_type(), " ", residual->sizes());
    res = residual->contiguous(cl);
  }
  const at::Tensor& y = out;
  if (y.numel() == 0) return;
  const float* mp[kPoints];
  for (int64_t k = 0; k < kPoints; ++k) mp[k] = m[k].data_ptr<float>();
  const float* rp = res.defined() ? res.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const bool relu = activation == "relu";
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row % P, ni = row / P;
      const int64_t n = ni / tiles, i = ni % tiles;
      const float* mr[kPoints];
      for (int64_t k = 0; k < kPoints; ++k) mr[k] = mp[k] + row * Co;
      float* yt[kTile];
      const float* rt[kTile];
      for (int64_t t = 0; t < kTile; ++t) {
        const int64_t frame = i * kTile + t;
        const int64_t off = ((n * T + frame) * P + p) * Co;
        yt[t] = frame < T ? yp + off : nullptr;
        rt[t] = (frame < T && rp) ? rp + off : nullptr;
      }
      if (yt[kTile - 1]) {  // all 4 frames inside the clip
        output_transform_full(mr, Co, bias_p, rp ? rt : nullptr, relu, yt);
      } else {
        output_transform(mr, Co, bias_p, rt, relu, yt);
      }
    }
  });
}

// The whole conv in one call, GEMMs by at::bmm: act(conv3d(x, weight, bias, padding=(1, 0, 0)) + residual)
// with packed = conv3d_winograd_time_weight(weight). (The fused model's runner does the GEMMs with oneDNN's
// packed-weight matmul between the two transforms instead: slowfast_kernels/ops/conv3d_winograd_time.py.)
at::Tensor conv3d_winograd_time(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                                c10::string_view activation, const c10::optional<at::Tensor>& residual) {
  check_x(x, "conv3d_winograd_time");
  SFK_CHECK(packed.dim() == 3 && packed.size(0) == kPoints && packed.size(1) == x.size(1) &&
                packed.scalar_type() == at::kFloat && packed.device().is_cpu(),
            "conv3d_winograd_time: packed: expected a float32 CPU [6, ", x.size(1),
            ", C_out] tensor from conv3d_winograd_time_weight, got ", packed.scalar_type(), " ", packed.sizes());
  const at::Tensor M = at::bmm(winograd_time_input(x), packed);
  at::Tensor y = at::empty({x.size(0), packed.size(2), x.size(2), x.size(3), x.size(4)},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  winograd_time_output(M.unbind(0), bias, activation, residual, y);
  return y;
}

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("conv3d_winograd_time_weight", &conv3d_winograd_time_weight);
  m.impl("conv3d_winograd_time", &conv3d_winograd_time);
  m.impl("winograd_time_input", &winograd_time_input);
  m.impl("winograd_time_output", &winograd_time_output);
}

}  // namespace slowfast_kernels
