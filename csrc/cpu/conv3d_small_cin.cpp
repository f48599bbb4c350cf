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
// loop. Accumulation in fp32, taps in the order (kt, kh, ci, kw). conv3d_small_cin_bf16 (below) is the same
// band loop in bf16 on AVX512_BF16, for bf16 models on CPUs without AMX.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>

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

// A register block's results [2][kCoBlock][kLanes] (two 16-column blocks) into the channels_last output row:
// the valid columns and channels of block (wo0, co0).
template <typename T>
inline void store_tile(const T (&tile)[2][kCoBlock][kLanes], const Geometry& g, int64_t wo0, int64_t co0, T* y) {
  const int64_t cols = std::min(2 * kLanes, g.Wo - wo0);
  const int64_t chans = std::min(kCoBlock, g.Co - co0);
  for (int64_t i = 0; i < cols; ++i) {
    for (int64_t k = 0; k < chans; ++k) y[(wo0 + i) * g.Co + co0 + k] = tile[i / kLanes][k][i % kLanes];
  }
}

// Columns [wo0, wo0 + kBlocks * 16) of one output row, channels [co0, co0 + kCoBlock), into tile (act applied).
// rows[(kt * KH + kh) * C + c] -> prepared row (nullptr where the input row is padding). wt: [taps][Co_padded]
// with taps ordered (kt, kh, c, kw). With two 16-column blocks each broadcast weight feeds two FMAs, so the
// loop is bound by the FMA ports (16 FMAs per 10 loads per tap) rather than by loads (8 per 9); a row's last
// 16 columns or fewer take a one-block pass (112 columns, the Fast stem's at 224: 3.5 passes, not 4).
template <int kBlocks>
__attribute__((target("avx512f"))) inline void pass_avx512(const float* const* rows, const float* wt,
                                                           const float* bias, const Geometry& g, int64_t co_padded,
                                                           int64_t co0, int64_t wo0, bool relu,
                                                           float (&tile)[2][kCoBlock][kLanes]) {
  __m512 acc[kBlocks][kCoBlock];
  for (int64_t k = 0; k < kCoBlock; ++k)
    for (int b = 0; b < kBlocks; ++b) acc[b][k] = _mm512_set1_ps(bias[co0 + k]);
  int64_t tap = 0;
  for (int64_t r = 0; r < g.KT * g.KH * g.C; ++r) {
    const float* row = rows[r];
    if (row == nullptr) {
      tap += g.KW;
      continue;
    }
    for (int64_t kw = 0; kw < g.KW; ++kw, ++tap) {
      const float* src = tap_base(row, kw, g) + wo0;
      __m512 v[kBlocks];
      for (int b = 0; b < kBlocks; ++b) v[b] = _mm512_loadu_ps(src + b * kLanes);
      const float* w = wt + tap * co_padded + co0;
      for (int64_t k = 0; k < kCoBlock; ++k) {
        const __m512 wk = _mm512_set1_ps(w[k]);
        for (int b = 0; b < kBlocks; ++b) acc[b][k] = _mm512_fmadd_ps(v[b], wk, acc[b][k]);
      }
    }
  }
  // max(0, a): vmaxps returns its second operand when one is NaN, so NaN propagates as in torch.relu.
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < kCoBlock; ++k)
    for (int b = 0; b < kBlocks; ++b) _mm512_store_ps(tile[b][k], relu ? _mm512_max_ps(zero, acc[b][k]) : acc[b][k]);
}

// One output row: y[n, :, to, ho, :] = act(bias + sum over taps), in passes of two 16-column blocks (one for
// the last 16 columns or fewer).
__attribute__((target("avx512f"))) void row_avx512(const float* const* rows, const float* wt, const float* bias,
                                                   const Geometry& g, int64_t co_padded, bool relu, float* y) {
  alignas(64) float tile[2][kCoBlock][kLanes];
  for (int64_t co0 = 0; co0 < co_padded; co0 += kCoBlock) {
    for (int64_t wo0 = 0; wo0 < g.Wo; wo0 += 2 * kLanes) {
      if (g.Wo - wo0 > kLanes) {
        pass_avx512<2>(rows, wt, bias, g, co_padded, co0, wo0, relu, tile);
      } else {
        pass_avx512<1>(rows, wt, bias, g, co_padded, co0, wo0, relu, tile);
      }
      store_tile(tile, g, wo0, co0, y);
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

// The checks and the geometry both launchers share: x and weight 5-d CPU tensors, 1 to 4 input channels,
// padding, activation, the output size; the row layout (plane, planes) is each launcher's own.
Geometry stem_geometry(const at::Tensor& x, const at::Tensor& weight, int64_t s, at::IntArrayRef padding,
                       c10::string_view activation) {
  SFK_CHECK(x.size(1) >= 1 && x.size(1) <= 4, "x: expected 1 to 4 input channels (the stems), got ", x.size(1));
  SFK_CHECK(weight.size(1) == x.size(1), "weight: expected ", x.size(1), " input channels, got shape ",
            weight.sizes());
  SFK_CHECK(padding.size() == 3 && padding[0] >= 0 && padding[1] >= 0 && padding[2] >= 0,
            "padding: expected 3 values >= 0, got ", padding);
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected 'relu' or 'none', got '",
            activation, "'");
  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.T = x.size(2), g.H = x.size(3), g.W = x.size(4);
  g.Co = weight.size(0), g.KT = weight.size(2), g.KH = weight.size(3), g.KW = weight.size(4);
  g.s = s, g.pt = padding[0], g.ph = padding[1], g.pw = padding[2];
  g.To = g.T + 2 * g.pt - g.KT + 1;
  g.Ho = (g.H + 2 * g.ph - g.KH) / g.s + 1;
  g.Wo = (g.W + 2 * g.pw - g.KW) / g.s + 1;
  SFK_CHECK(g.To > 0 && g.Ho > 0 && g.Wo > 0 && g.H + 2 * g.ph >= g.KH && g.W + 2 * g.pw >= g.KW,
            "x: spatial size ", x.sizes().slice(2), " is smaller than the kernel ", weight.sizes().slice(2),
            " (padding ", padding, ")");
  g.sn = x.stride(0), g.sc = x.stride(1), g.st = x.stride(2), g.sh = x.stride(3), g.sw = x.stride(4);
  return g;
}

// The bias padded with zeros to co_padded (zeros without one).
std::vector<float> padded_bias(const c10::optional<at::Tensor>& bias, const Geometry& g, int64_t co_padded) {
  std::vector<float> b(co_padded, 0.0f);
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == g.Co && bias->scalar_type() == at::kFloat,
              "bias: expected a float32 tensor of shape [", g.Co, "], got ", bias->scalar_type(), " ", bias->sizes());
    const auto ba = bias->accessor<float, 1>();
    for (int64_t co = 0; co < g.Co; ++co) b[co] = ba[co];
  }
  return b;
}

// The band loop of both precisions. A task is a band of kRowsPerTask output rows of one (n, to): it prepares
// the band's input rows once (prepare(element offset of x's row, scratch, dst): row_elems elements of Elem),
// each serving the ~3.5 output rows whose windows overlap it, then computes each output row from its
// KT * KH * C row pointers (row(rows, output row index (n * To + to) * Ho + ho); nullptr: a padding row).
template <typename Elem, typename Prepare, typename Row>
void for_each_band(const Geometry& g, int64_t row_elems, int64_t scratch_floats, const Prepare& prepare,
                   const Row& row) {
  const int64_t bands = (g.Ho + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, g.N * g.To * bands, 1, [&](int64_t begin, int64_t end) {
    // Prepared rows for one band: input rows hi in [h_lo, h_lo + span) of the KT frames, every channel.
    const int64_t span = (kRowsPerTask - 1) * g.s + g.KH;
    std::vector<Elem> prepared(g.KT * g.C * span * row_elems);
    std::vector<float> scratch(scratch_floats);
    std::vector<const Elem*> rows(g.KT * g.KH * g.C);
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
            prepare(n * g.sn + c * g.sc + ti * g.st + hi * g.sh, scratch.data(),
                    prepared.data() + ((kt * g.C + c) * span + r) * row_elems);
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
                  valid ? prepared.data() + ((kt * g.C + c) * span + r) * row_elems : nullptr;
            }
          }
        }
        row(rows.data(), (n * g.To + to) * g.Ho + ho);
      }
    }
  });
}

at::Tensor conv3d_small_cin_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view activation,
                                bool portable) {
  check_rank(x, 5, "x");
  check_rank(weight, 5, "weight");
  check_device(x, c10::DeviceType::CPU, "x");
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(x.scalar_type() == at::kFloat, "x: expected float32, got ", x.scalar_type());
  SFK_CHECK(stride.size() == 3 && stride[0] == 1 && stride[1] == stride[2] && (stride[1] == 1 || stride[1] == 2),
            "stride: expected (1, s, s) with s 1 or 2, got ", stride);
  Geometry g = stem_geometry(x, weight, stride[1], padding, activation);
  const int64_t wo_padded = (g.Wo + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes);  // whole pairs of blocks
  g.planes = g.s == 2 ? 2 : 1;
  // Room for the last block's 16 loads at the farthest tap (stride 1: wo + kw; stride 2: wo + kw / 2).
  g.plane = (wo_padded + g.KW + kLanes) / kLanes * kLanes;
  const int64_t co_padded = (g.Co + kCoBlock - 1) / kCoBlock * kCoBlock;

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
  const std::vector<float> b = padded_bias(bias, g, co_padded);
  at::Tensor y = at::empty({g.N, g.Co, g.To, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (y.numel() == 0) return y;

  const bool relu = activation == "relu";
  const bool avx512 = !portable && __builtin_cpu_supports("avx512f");
  const float* xp = x.data_ptr<float>();
  const float* wp = wt.data();
  const float* bp = b.data();
  float* yp = y.data_ptr<float>();
  for_each_band<float>(
      g, g.plane * g.planes, 2 * g.plane + 2 * kLanes,
      [&](int64_t offset, float* scratch, float* dst) {
        if (avx512) {
          prepare_row_avx512(xp + offset, g, scratch, dst);
        } else {
          prepare_row(xp + offset, g, scratch, dst);
        }
      },
      [&](const float* const* rows, int64_t out_row) {
        float* yrow = yp + out_row * g.Wo * g.Co;
        if (avx512) {
          row_avx512(rows, wp, bp, g, co_padded, relu, yrow);
        } else {
          row_portable(rows, wp, bp, g, co_padded, relu, yrow);
        }
      });
  return y;
}

// ---- bf16 on AVX512_BF16 (a CPU without AMX: the AMX kernel runs the stems where it can) ----------------
//
// x rounded to bf16 (round to nearest even, as the model's input cast), bf16 weights, fp32 accumulation
// (VDPBF16PS: two products a lane), act, bf16 out: oneDNN's bf16 numerics. Stride 2 along H and W (the
// stems). With stride 2 the zero-padded bf16 input row already is the pair layout: output column j's taps
// kw and kw + 1 read input columns 2j + kw and 2j + kw + 1, adjacent, so the 32 bf16 at row + 2 * wo0 + kw
// are the tap pair of 16 columns. An odd KW's last pair is masked to its first element: no data value is
// multiplied by a zero weight (an inf stays inf, as in the reference). x is read as given (float32 or
// bfloat16, any strides): no separate cast-and-layout pass before the stem.

constexpr int64_t kPairLanes = 2 * kLanes;  // bf16 elements per register: 16 columns' tap pairs

// The zero-padded bf16 row of x[n, c, t, h, :] (length g.plane elements).
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void prepare_row_bf16(const T* src, const Geometry& g,
                                                                            float* scratch, uint16_t* dst) {
  std::memset(dst, 0, sizeof(uint16_t) * g.plane);
  if constexpr (std::is_same<T, c10::BFloat16>::value) {
    for (int64_t w = 0; w < g.W; ++w) dst[g.pw + w] = src[w * g.sw].x;
    return;
  } else {
    const float* row = src;
    if (g.sw != 1) {  // a strided row (channels_last_3d x): gather it first
      for (int64_t w = 0; w < g.W; ++w) scratch[w] = src[w * g.sw];
      row = scratch;
    }
    for (int64_t w = 0; w < g.W; w += kPairLanes) {
      const int64_t left = std::min(kPairLanes, g.W - w);
      const __mmask16 lo = left >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 hi = left <= kLanes ? 0 : static_cast<__mmask16>((1u << (left - kLanes)) - 1);
      const __m512 a = _mm512_maskz_loadu_ps(lo, row + w);
      const __m512 b = _mm512_maskz_loadu_ps(hi, row + w + kLanes);
      const __m512i v = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
      const __mmask32 m = left == kPairLanes ? 0xFFFFFFFFu : static_cast<__mmask32>((1ull << left) - 1);
      _mm512_mask_storeu_epi16(dst + g.pw + w, m, v);
    }
  }
}

// Columns [wo0, wo0 + kBlocks * 16) of one output row, channels [co0, co0 + kCoBlock), bf16 into tile (act
// applied): rows[(kt * KH + kh) * C + c] -> prepared bf16 row (nullptr: padding). wt: [tap pairs][Co_padded] as
// (w[kw], w[kw + 1]) bf16 pairs, pairs ordered (kt, kh, c, kw / 2).
template <int kBlocks>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void pass_bf16(
    const uint16_t* const* rows, const uint32_t* wt, const float* bias, const Geometry& g, int64_t co_padded,
    int64_t co0, int64_t wo0, bool relu, uint16_t (&tile)[2][kCoBlock][kLanes]) {
  const int64_t pairs = (g.KW + 1) / 2;
  const bool odd = g.KW % 2 == 1;
  __m512 acc[kBlocks][kCoBlock];
  for (int64_t k = 0; k < kCoBlock; ++k)
    for (int b = 0; b < kBlocks; ++b) acc[b][k] = _mm512_set1_ps(bias[co0 + k]);
  int64_t pair = 0;
  for (int64_t r = 0; r < g.KT * g.KH * g.C; ++r) {
    const uint16_t* row = rows[r];
    if (row == nullptr) {
      pair += pairs;
      continue;
    }
    for (int64_t q = 0; q < pairs; ++q, ++pair) {
      const uint16_t* src = row + 2 * wo0 + 2 * q;
      __m512i v[kBlocks];
      for (int b = 0; b < kBlocks; ++b) {
        v[b] = _mm512_loadu_si512(src + b * kPairLanes);
        // tap KW does not exist: keep each pair's first element only
        if (odd && q == pairs - 1) v[b] = _mm512_maskz_mov_epi16(0x55555555u, v[b]);
      }
      const uint32_t* w = wt + pair * co_padded + co0;
      for (int64_t k = 0; k < kCoBlock; ++k) {
        const __m512bh wk = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(w[k])));
        for (int b = 0; b < kBlocks; ++b)
          acc[b][k] = _mm512_dpbf16_ps(acc[b][k], reinterpret_cast<__m512bh>(v[b]), wk);
      }
    }
  }
  // max(0, a) keeps NaN (vmaxps returns its second operand when one is NaN), as torch.relu.
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < kCoBlock; ++k)
    for (int b = 0; b < kBlocks; ++b)
      _mm256_store_si256(reinterpret_cast<__m256i*>(tile[b][k]),
                         reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(relu ? _mm512_max_ps(zero, acc[b][k])
                                                                           : acc[b][k])));
}

// One output row, bf16 out, in passes of two 16-column blocks (one for the last 16 columns or fewer).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void row_bf16(const uint16_t* const* rows, const uint32_t* wt,
                                                                    const float* bias, const Geometry& g,
                                                                    int64_t co_padded, bool relu, uint16_t* y) {
  alignas(64) uint16_t tile[2][kCoBlock][kLanes];
  for (int64_t co0 = 0; co0 < co_padded; co0 += kCoBlock) {
    for (int64_t wo0 = 0; wo0 < g.Wo; wo0 += 2 * kLanes) {
      if (g.Wo - wo0 > kLanes) {
        pass_bf16<2>(rows, wt, bias, g, co_padded, co0, wo0, relu, tile);
      } else {
        pass_bf16<1>(rows, wt, bias, g, co_padded, co0, wo0, relu, tile);
      }
      store_tile(tile, g, wo0, co0, y);
    }
  }
}

uint16_t to_bf16_bits(float v) { return c10::BFloat16(v).x; }  // round to nearest even

at::Tensor conv3d_small_cin_bf16_cpu(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, c10::string_view activation) {
  check_rank(x, 5, "x");
  check_rank(weight, 5, "weight");
  check_device(x, c10::DeviceType::CPU, "x");
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"),
            "conv3d_small_cin_bf16: this CPU has no AVX512_BF16 (needed for its dot products)");
  SFK_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
            "x: expected float32 or bfloat16, got ", x.scalar_type());
  SFK_CHECK(weight.scalar_type() == at::kFloat, "weight: expected float32, got ", weight.scalar_type());
  SFK_CHECK(stride.size() == 3 && stride[0] == 1 && stride[1] == 2 && stride[2] == 2,
            "stride: expected (1, 2, 2), got ", stride);
  Geometry g = stem_geometry(x, weight, 2, padding, activation);
  const int64_t wo_padded = (g.Wo + 2 * kLanes - 1) / (2 * kLanes) * (2 * kLanes);
  const int64_t pairs = (g.KW + 1) / 2;
  g.planes = 1;
  // bf16 elements a prepared row: the last block's second load at the last pair ends before
  // 2 * wo_padded + 2 * pairs; the padded input row itself is pw + W long.
  g.plane = (std::max(2 * wo_padded + 2 * pairs, g.pw + g.W) + kPairLanes) / kPairLanes * kPairLanes;
  const int64_t co_padded = (g.Co + kCoBlock - 1) / kCoBlock * kCoBlock;

  std::vector<uint32_t> wt(g.KT * g.KH * g.C * pairs * co_padded, 0u);
  const auto wa = weight.accessor<float, 5>();
  for (int64_t co = 0; co < g.Co; ++co)
    for (int64_t kt = 0; kt < g.KT; ++kt)
      for (int64_t kh = 0; kh < g.KH; ++kh)
        for (int64_t c = 0; c < g.C; ++c)
          for (int64_t q = 0; q < pairs; ++q) {
            const uint32_t lo = to_bf16_bits(wa[co][c][kt][kh][2 * q]);
            const uint32_t hi = 2 * q + 1 < g.KW ? to_bf16_bits(wa[co][c][kt][kh][2 * q + 1]) : 0u;
            wt[(((kt * g.KH + kh) * g.C + c) * pairs + q) * co_padded + co] = lo | (hi << 16);
          }
  const std::vector<float> b = padded_bias(bias, g, co_padded);
  at::Tensor y = at::empty({g.N, g.Co, g.To, g.Ho, g.Wo},
                           x.options().dtype(at::kBFloat16).memory_format(at::MemoryFormat::ChannelsLast3d));
  if (y.numel() == 0) return y;
  const bool relu = activation == "relu";
  const bool is_bf16 = x.scalar_type() == at::kBFloat16;
  const float* xf = is_bf16 ? nullptr : x.data_ptr<float>();
  const c10::BFloat16* xb = is_bf16 ? x.data_ptr<c10::BFloat16>() : nullptr;
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.data_ptr<c10::BFloat16>());
  for_each_band<uint16_t>(
      g, g.plane, g.W,
      [&](int64_t offset, float* scratch, uint16_t* dst) {
        if (is_bf16) {
          prepare_row_bf16(xb + offset, g, scratch, dst);
        } else {
          prepare_row_bf16(xf + offset, g, scratch, dst);
        }
      },
      [&](const uint16_t* const* rows, int64_t out_row) {
        row_bf16(rows, wt.data(), b.data(), g, co_padded, relu, yp + out_row * g.Wo * g.Co);
      });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("conv3d_small_cin", &conv3d_small_cin_cpu);
  m.impl("conv3d_small_cin_bf16", &conv3d_small_cin_bf16_cpu);
}

}  // namespace slowfast_kernels
