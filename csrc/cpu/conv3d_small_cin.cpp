// CPU conv3d for a tiny input-channel count (C_in <= 4: the stems), with bias and ReLU, fp32.
//
// Why: oneDNN runs SlowFast's Fast stem (3 -> 8 channels, 5x7x7, stride (1,2,2)) at ~180 GFLOP/s, 26 ms of a
// ~320 ms R50 8x8 forward (batch 1, 2 cores), and takes no longer for 16 output channels than for 8: its
// kernels vectorize over output channels, and 8 fill half an AVX-512 register. Here the vector runs along
// the output row instead (16 output columns per register, one register per output channel), so 8 channels
// cost half of 16.
//
// Layout: x in any strides (rows of W pixels of one channel are gathered once into a prepared row); y is
// written channels_last_3d, the fused model's layout. With stride 2 along W, each prepared row holds the
// input row's even and odd columns (zero-padded) apart, so a tap's 16 input pixels are one contiguous load;
// each prepared row serves the ~3.5 output rows whose windows overlap it (a task covers kRowsPerTask output
// rows of one frame).
//
// AVX-512 where the CPU has it (chosen at run time; the library is built without -march), else a portable
// loop. Accumulation in fp32, taps in the order (kt, kh, ci, kw).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

constexpr int64_t kLanes = 16;        // output columns per AVX-512 register
constexpr int64_t kCoBlock = 8;       // output channels per register block (C_out is padded to a multiple)
constexpr int64_t kRowsPerTask = 16;  // output rows sharing prepared input rows (each input row serves ~3.5)

struct Geometry {
  int64_t N, C, T, H, W, Co, KT, KH, KW, To, Ho, Wo, s, pt, ph, pw;
  int64_t sn, sc, st, sh, sw;  // x's strides (any layout: NCDHW rows are contiguous, NDHWC rows step by C)
  int64_t plane;   // floats per prepared row plane (a multiple of kLanes, with room for the last block's taps)
  int64_t planes;  // planes per prepared row: 2 (even, odd columns) for stride 2, 1 for stride 1
};

// Prepared input row: the zero-padded row of x[n, c, t, h, :], as even/odd column planes (stride 2) or as is.
// scratch: 2 * plane + 2 * kLanes floats.
void copy_row(const float* src, const Geometry& g, float* dst) {
  if (g.sw == 1) {
    std::memcpy(dst, src, sizeof(float) * g.W);
  } else {
    for (int64_t w = 0; w < g.W; ++w) dst[w] = src[w * g.sw];
  }
}

void prepare_row(const float* src, const Geometry& g, float* scratch, float* dst) {
  float* padded = g.s == 2 ? scratch : dst;
  const int64_t length = g.s == 2 ? 2 * g.plane + 2 * kLanes : g.plane;  // scratch, or the prepared row itself
  std::memset(padded, 0, sizeof(float) * g.pw);
  copy_row(src, g, padded + g.pw);
  std::memset(padded + g.pw + g.W, 0, sizeof(float) * (length - g.pw - g.W));
  if (g.s == 1) return;
  for (int64_t i = 0; i < g.plane; ++i) {
    dst[i] = padded[2 * i];
    dst[g.plane + i] = padded[2 * i + 1];
  }
}

__attribute__((target("avx512f"))) void prepare_row_avx512(const float* src, const Geometry& g, float* scratch,
                                                           float* dst) {
  if (g.s == 1) {
    prepare_row(src, g, scratch, dst);
    return;
  }
  std::memset(scratch, 0, sizeof(float) * g.pw);
  copy_row(src, g, scratch + g.pw);
  std::memset(scratch + g.pw + g.W, 0, sizeof(float) * (2 * g.plane + 2 * kLanes - g.pw - g.W));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t i = 0; i < g.plane; i += kLanes) {
    const __m512 lo = _mm512_loadu_ps(scratch + 2 * i);
    const __m512 hi = _mm512_loadu_ps(scratch + 2 * i + kLanes);
    _mm512_storeu_ps(dst + i, _mm512_permutex2var_ps(lo, even, hi));
    _mm512_storeu_ps(dst + g.plane + i, _mm512_permutex2var_ps(lo, odd, hi));
  }
}

// The prepared-row pointer and in-plane offset of tap kw for output column 0.
inline const float* tap_base(const float* row, int64_t kw, const Geometry& g) {
  if (g.s == 2) return row + (kw & 1) * g.plane + (kw >> 1);
  return row + kw;
}

// One output row: y[n, :, to, ho, :] = act(bias + sum over taps). rows[(kt * KH + kh) * C + c] -> prepared row
// (nullptr where the input row is padding). wt: [taps][Co_padded] with taps ordered (kt, kh, c, kw).
// Two 16-column blocks per pass: each broadcast weight feeds two FMAs, so the loop is bound by the FMA ports
// (16 FMAs per 10 loads per tap) rather than by loads (8 per 9).
__attribute__((target("avx512f"))) void row_avx512(const float* const* rows, const float* wt, const float* bias,
                                                   const Geometry& g, int64_t co_padded, bool relu, float* y) {
  alignas(64) float tile[2][kCoBlock][kLanes];
  for (int64_t co0 = 0; co0 < co_padded; co0 += kCoBlock) {
    for (int64_t wo0 = 0; wo0 < g.Wo; wo0 += 2 * kLanes) {
      __m512 a0[kCoBlock], a1[kCoBlock];
      for (int64_t k = 0; k < kCoBlock; ++k) a0[k] = a1[k] = _mm512_set1_ps(bias[co0 + k]);
      int64_t tap = 0;
      for (int64_t r = 0; r < g.KT * g.KH * g.C; ++r) {
        const float* row = rows[r];
        if (row == nullptr) {
          tap += g.KW;
          continue;
        }
        for (int64_t kw = 0; kw < g.KW; ++kw, ++tap) {
          const float* src = tap_base(row, kw, g) + wo0;
          const __m512 v0 = _mm512_loadu_ps(src);
          const __m512 v1 = _mm512_loadu_ps(src + kLanes);
          const float* w = wt + tap * co_padded + co0;
          for (int64_t k = 0; k < kCoBlock; ++k) {
            const __m512 wk = _mm512_set1_ps(w[k]);
            a0[k] = _mm512_fmadd_ps(v0, wk, a0[k]);
            a1[k] = _mm512_fmadd_ps(v1, wk, a1[k]);
          }
        }
      }
      // max(0, a): vmaxps returns its second operand when one is NaN, so NaN propagates as in torch.relu.
      const __m512 zero = _mm512_setzero_ps();
      for (int64_t k = 0; k < kCoBlock; ++k) {
        _mm512_store_ps(tile[0][k], relu ? _mm512_max_ps(zero, a0[k]) : a0[k]);
        _mm512_store_ps(tile[1][k], relu ? _mm512_max_ps(zero, a1[k]) : a1[k]);
      }
      const int64_t cols = std::min(2 * kLanes, g.Wo - wo0);
      const int64_t chans = std::min(kCoBlock, g.Co - co0);
      for (int64_t i = 0; i < cols; ++i) {
        for (int64_t k = 0; k < chans; ++k) y[(wo0 + i) * g.Co + co0 + k] = tile[i / kLanes][k][i % kLanes];
      }
    }
  }
}

void row_portable(const float* const* rows, const float* wt, const float* bias, const Geometry& g,
                  int64_t co_padded, bool relu, float* y) {
  std::vector<float> acc(co_padded);
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    std::copy(bias, bias + co_padded, acc.begin());
    int64_t tap = 0;
    for (int64_t r = 0; r < g.KT * g.KH * g.C; ++r) {
      const float* row = rows[r];
      for (int64_t kw = 0; kw < g.KW; ++kw, ++tap) {
        if (row == nullptr) continue;
        const float v = tap_base(row, kw, g)[wo];
        const float* w = wt + tap * co_padded;
        for (int64_t k = 0; k < co_padded; ++k) acc[k] += v * w[k];
      }
    }
    for (int64_t k = 0; k < g.Co; ++k) y[wo * g.Co + k] = relu ? std::max(acc[k], 0.0f) : acc[k];
  }
}

at::Tensor conv3d_small_cin_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view activation,
                                bool portable) {
  check_rank(x, 5, "x");
  check_rank(weight, 5, "weight");
  check_device(x, c10::DeviceType::CPU, "x");
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(x.scalar_type() == at::kFloat, "x: expected float32, got ", x.scalar_type());
  SFK_CHECK(x.size(1) >= 1 && x.size(1) <= 4, "x: expected 1 to 4 input channels (the stems), got ", x.size(1));
  SFK_CHECK(weight.size(1) == x.size(1), "weight: expected ", x.size(1), " input channels, got shape ",
            weight.sizes());
  SFK_CHECK(stride.size() == 3 && stride[0] == 1 && stride[1] == stride[2] && (stride[1] == 1 || stride[1] == 2),
            "stride: expected (1, s, s) with s 1 or 2, got ", stride);
  SFK_CHECK(padding.size() == 3 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0,
            "padding: expected 3 values >= 0, got ", padding);
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected 'relu' or 'none', got '",
            activation, "'");
  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.T = x.size(2), g.H = x.size(3), g.W = x.size(4);
  g.Co = weight.size(0), g.KT = weight.size(2), g.KH = weight.size(3), g.KW = weight.size(4);
  g.s = stride[1], g.pt = padding[0], g.ph = padding[1], g.pw = padding[2];
  g.To = g.T + 2 * g.pt - g.KT + 1;
  g.Ho = (g.H + 2 * g.ph - g.KH) / g.s + 1;
  g.Wo = (g.W + 2 * g.pw - g.KW) / g.s + 1;
  SFK_CHECK(g.To > 0 && g.Ho > 0 && g.Wo > 0 && g.H + 2 * g.ph >= g.KH && g.W + 2 * g.pw >= g.KW,
            "x: spatial size ", x.sizes().slice(2), " is smaller than the kernel ", weight.sizes().slice(2),
            " (padding ", padding, ")");
  const int64_t wo_padded = (g.Wo + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes);  // whole pairs of blocks
  g.planes = g.s == 2 ? 2 : 1;
  // Room for the last block's 16 loads at the farthest tap (stride 1: wo + kw; stride 2: wo + kw / 2).
  g.plane = (wo_padded + g.KW + kLanes) / kLanes * kLanes;
  const int64_t co_padded = (g.Co + kCoBlock - 1) / kCoBlock * kCoBlock;

  g.sn = x.stride(0), g.sc = x.stride(1), g.st = x.stride(2), g.sh = x.stride(3), g.sw = x.stride(4);
  // Weights as [taps][Co_padded], taps ordered (kt, kh, c, kw); bias padded with zeros.
  // (A few thousand floats: rearranged here on every call rather than cached.)
  SFK_CHECK(weight.scalar_type() == at::kFloat, "weight: expected float32, got ", weight.scalar_type());
  std::vector<float> wt(g.KT * g.KH * g.C * g.KW * co_padded, 0.0f);
  const auto wa = weight.accessor<float, 5>();
  for (int64_t co = 0; co < g.Co; ++co)
    for (int64_t kt = 0; kt < g.KT; ++kt)
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t kw = 0; kw < g.KW; ++kw)
            wt[(((kt * g.KH + kh) * g.C + c) * g.KW + kw) * co_padded + co] = wa[co][c][kt][kh][kw];
  std::vector<float> b(co_padded, 0.0f);
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == g.Co && bias->scalar_type() == at::kFloat,
              "bias: expected a float32 tensor of shape [", g.Co, "], got ", bias->scalar_type(), " ", bias->sizes());
    const auto ba = bias->accessor<float, 1>();
    for (int64_t co = 0; co < g.Co; ++co) b[co] = ba[co];
  }
  at::Tensor y = at::empty({g.N, g.Co, g.To, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (y.numel() == 0) return y;

  const bool relu = activation == "relu";
  const bool avx512 = !portable && __builtin_cpu_supports("avx512f");
  const float* xp = x.data_ptr<float>();
  const float* wp = wt.data();
  const float* bp = b.data();
  float* yp = y.data_ptr<float>();
  const int64_t row_floats = g.plane * g.planes;
  const int64_t bands = (g.Ho + kRowsPerTask - 1) / kRowsPerTask;

  at::parallel_for(0, g.N * g.To * bands, 1, [&](int64_t begin, int64_t end) {
    // Prepared rows for one band: input rows hi in [h_lo, h_lo + span) of the KT frames, every channel.
    const int64_t span = (kRowsPerTask - 1) * g.s + g.KH;
    std::vector<float> prepared(g.KT * g.C * span * row_floats);
    std::vector<float> scratch(2 * g.plane + 2 * kLanes);
    std::vector<const float*> rows(g.KT * g.KH * g.C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t band = task % bands, nt = task / bands;
      const int64_t to = nt % g.To, n = nt / g.To;
      const int64_t ho0 = band * kRowsPerTask, ho1 = std::min(g.Ho, ho0 + kRowsPerTask);
      const int64_t h_lo = ho0 * g.s - g.ph;
      for (int64_t kt = 0; kt < g.KT; ++kt) {
        const int64_t ti = to + kt - g.pt;
        for (int64_t c = 0; c < g.C; ++c) {
          for (int64_t r = 0; r < (ho1 - 1 - ho0) * g.s + g.KH; ++r) {
            const int64_t hi = h_lo + r;
            if (ti < 0 || ti >= g.T || hi < 0 || hi >= g.H) continue;  // padding: the row pointer is null
            const float* src = xp + n * g.sn + c * g.sc + ti * g.st + hi * g.sh;
            float* dst = prepared.data() + ((kt * g.C + c) * span + r) * row_floats;
            if (avx512) {
              prepare_row_avx512(src, g, scratch.data(), dst);
            } else {
              prepare_row(src, g, scratch.data(), dst);
            }
          }
        }
      }
      for (int64_t ho = ho0; ho < ho1; ++ho) {
        for (int64_t kt = 0; kt < g.KT; ++kt) {
          const int64_t ti = to + kt - g.pt;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            const int64_t r = (ho - ho0) * g.s + kh;
            const int64_t hi = h_lo + r;
            const bool valid = ti >= 0 && ti < g.T && hi >= 0 && hi < g.H;
            for (int64_t c = 0; c < g.C; ++c) {
              rows[(kt * g.KH + kh) * g.C + c] =
                  valid ? prepared.data() + ((kt * g.C + c) * span + r) * row_floats : nullptr;
            }
          }
        }
        float* yrow = yp + ((n * g.To + to) * g.Ho + ho) * g.Wo * g.Co;
        if (avx512) {
          row_avx512(rows.data(), wp, bp, g, co_padded, relu, yrow);
        } else {
          row_portable(rows.data(), wp, bp, g, co_padded, relu, yrow);
        }
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) { m.impl("conv3d_small_cin", &conv3d_small_cin_cpu); }

}  // namespace slowfast_kernels
