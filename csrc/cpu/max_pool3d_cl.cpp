// CPU max_pool3d on channels_last_3d activations, the stems' pool where no AMX kernel fuses it.
//
// torch's CPU max_pool3d always computes the argmax (an int64 per output element, written and thrown
// away: 4x the bytes of a bf16 output) and, for the Fast stem's 8 channels, fills half a vector register.
// Here one task is an output row (n, to, ho): for each output pixel the channel vector is the running max
// over the window's input pixels (a window's taps are contiguous channel vectors of channels_last memory),
// so the input is read once from cache and the output written once. Same values as torch's: implicit
// -inf padding, NaN propagates (a window holding a NaN gives NaN), ceil_mode False, dilation 1 (of a
// window's +0 and -0 the vector paths may keep the other one). bf16 is compared as float (exact) and the
// chosen value stored as it was.
#include <cmath>
#include <cstring>
#include <limits>

// GCC 12's AVX-512 intrinsics warn of their own _mm512_undefined_* operands once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

struct PoolGeometry {
  int64_t N, C, T, H, W, To, Ho, Wo;
  int64_t k[3], s[3], p[3];
};

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const c10::BFloat16* p, int64_t i) {
  uint16_t bits;
  std::memcpy(&bits, p + i, sizeof(bits));
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(c10::BFloat16* p, int64_t i, float v) {
  // v is one of the inputs (a bf16 value widened): its low 16 bits are zero, truncation is exact.
  uint32_t wide;
  std::memcpy(&wide, &v, sizeof(wide));
  const uint16_t bits = static_cast<uint16_t>(wide >> 16);
  std::memcpy(p + i, &bits, sizeof(bits));
}

// The window of output pixel (to, ho, wo) along one axis: input indices [lo, hi).
struct Span {
  int64_t lo, hi;
};
inline Span span(int64_t o, int64_t k, int64_t s, int64_t p, int64_t size) {
  return {std::max<int64_t>(o * s - p, 0), std::min(o * s - p + k, size)};
}

// The output rows [begin, end) (row r = (n, to, ho): Wo pixels of C channels), one channel at a time:
// any C, any CPU.
template <typename T>
void pool_rows_portable(const T* x, const PoolGeometry& g, int64_t begin, int64_t end, T* y) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t ho = r % g.Ho, nt = r / g.Ho, to = nt % g.To, n = nt / g.To;
    const Span st = span(to, g.k[0], g.s[0], g.p[0], g.T), sh = span(ho, g.k[1], g.s[1], g.p[1], g.H);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const Span sw = span(wo, g.k[2], g.s[2], g.p[2], g.W);
      for (int64_t c = 0; c < g.C; ++c) {
        float acc = -std::numeric_limits<float>::infinity();
        for (int64_t ti = st.lo; ti < st.hi; ++ti)
          for (int64_t hi = sh.lo; hi < sh.hi; ++hi)
            for (int64_t wi = sw.lo; wi < sw.hi; ++wi) {
              const float v = load(x, (((n * g.T + ti) * g.H + hi) * g.W + wi) * g.C + c);
              acc = (v > acc || std::isnan(v)) ? v : acc;  // torch's rule: a NaN wins, else the larger
            }
        store(y, (r * g.Wo + wo) * g.C + c, acc);
      }
    }
  }
}

// The vector paths take one max a tap and a running sum as a NaN detector; torch's rule (a NaN wins) is
// exact in a second, scalar pass over the channels whose sum came out NaN: a window holding a NaN (or, rarely,
// one whose sum met inf - inf or overflowed and then did). MAXPS returns its second operand when either is a
// NaN, so the max alone would lose a NaN met early. Of two equal zeros the max may keep the other sign than
// torch's (the same value).
template <typename T>
void window_exact(const T* x, const PoolGeometry& g, int64_t n, Span st, Span sh, Span sw, int64_t c0,
                  int64_t count, T* out) {
  for (int64_t c = c0; c < c0 + count; ++c) {
    float acc = -std::numeric_limits<float>::infinity();
    for (int64_t ti = st.lo; ti < st.hi; ++ti)
      for (int64_t hi = sh.lo; hi < sh.hi; ++hi)
        for (int64_t wi = sw.lo; wi < sw.hi; ++wi) {
          const float v = load(x, (((n * g.T + ti) * g.H + hi) * g.W + wi) * g.C + c);
          acc = (v > acc || std::isnan(v)) ? v : acc;
        }
    store(out, c, acc);
  }
}

// AVX2: 8 channels a vector (C a multiple of 8).
__attribute__((target("avx2"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2"))) inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
__attribute__((target("avx2"))) inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
__attribute__((target("avx2"))) inline void store8(c10::BFloat16* p, __m256 v) {
  // v holds bf16 values widened (low halves zero): the high halves are the bf16 bits.
  const __m256i hi = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

template <typename T>
__attribute__((target("avx2"))) void pool_rows_avx2(const T* x, const PoolGeometry& g, int64_t begin, int64_t end,
                                                     T* y) {
  const int64_t C = g.C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t ho = r % g.Ho, nt = r / g.Ho, to = nt % g.To, n = nt / g.To;
    const Span st = span(to, g.k[0], g.s[0], g.p[0], g.T), sh = span(ho, g.k[1], g.s[1], g.p[1], g.H);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const Span sw = span(wo, g.k[2], g.s[2], g.p[2], g.W);
      T* out = y + (r * g.Wo + wo) * C;
      for (int64_t c = 0; c < C; c += 8) {
        __m256 acc = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), sum = _mm256_setzero_ps();
        for (int64_t ti = st.lo; ti < st.hi; ++ti)
          for (int64_t hi = sh.lo; hi < sh.hi; ++hi) {
            const T* px = x + (((n * g.T + ti) * g.H + hi) * g.W + sw.lo) * C + c;
            for (int64_t wi = sw.lo; wi < sw.hi; ++wi, px += C) {
              const __m256 v = load8(px);
              acc = _mm256_max_ps(acc, v);
              sum = _mm256_add_ps(sum, v);
            }
          }
        store8(out + c, acc);
        if (_mm256_movemask_ps(_mm256_cmp_ps(sum, sum, _CMP_UNORD_Q)) != 0)
          window_exact(x, g, n, st, sh, sw, c, 8, out);
      }
    }
  }
}

// AVX-512: 16 channels a vector (C a multiple of 16: the Slow stem's 64). The Fast stem's 8 take AVX2.
__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
__attribute__((target("avx512f"))) inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
__attribute__((target("avx512f"))) inline void store16(c10::BFloat16* p, __m512 v) {
  // v holds bf16 values widened (low halves zero): the high halves are the bf16 bits.
  const __m512i hi = _mm512_srli_epi32(_mm512_castps_si512(v), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(hi));
}

template <typename T>
__attribute__((target("avx512f"))) void pool_rows_avx512(const T* x, const PoolGeometry& g, int64_t begin,
                                                         int64_t end, T* y) {
  const int64_t C = g.C;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t ho = r % g.Ho, nt = r / g.Ho, to = nt % g.To, n = nt / g.To;
    const Span st = span(to, g.k[0], g.s[0], g.p[0], g.T), sh = span(ho, g.k[1], g.s[1], g.p[1], g.H);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const Span sw = span(wo, g.k[2], g.s[2], g.p[2], g.W);
      T* out = y + (r * g.Wo + wo) * C;
      for (int64_t c = 0; c < C; c += 16) {
        __m512 acc = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), sum = _mm512_setzero_ps();
        for (int64_t ti = st.lo; ti < st.hi; ++ti)
          for (int64_t hi = sh.lo; hi < sh.hi; ++hi) {
            const T* px = x + (((n * g.T + ti) * g.H + hi) * g.W + sw.lo) * C + c;
            for (int64_t wi = sw.lo; wi < sw.hi; ++wi, px += C) {
              const __m512 v = load16(px);
              acc = _mm512_max_ps(acc, v);
              sum = _mm512_add_ps(sum, v);
            }
          }
        store16(out + c, acc);
        if (_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q) != 0) window_exact(x, g, n, st, sh, sw, c, 16, out);
      }
    }
  }
}

template <typename T>
void pool(const T* x, const PoolGeometry& g, T* y) {
  const bool avx512 = g.C % 16 == 0 && __builtin_cpu_supports("avx512f");
  const bool avx2 = g.C % 8 == 0 && __builtin_cpu_supports("avx2");
  // A row is Wo * C * (window) loads: a few rows per task amortize the scheduling.
  at::parallel_for(0, g.N * g.To * g.Ho, 8, [&](int64_t begin, int64_t end) {
    if (avx512) {
      pool_rows_avx512(x, g, begin, end, y);
    } else if (avx2) {
      pool_rows_avx2(x, g, begin, end, y);
    } else {
      pool_rows_portable(x, g, begin, end, y);
    }
  });
}

// 0 where the padded input is shorter than the kernel (C++ division truncates toward zero: test first).
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p) {
  return in + 2 * p < k ? 0 : (in + 2 * p - k) / s + 1;
}

at::Tensor max_pool3d_cl_cpu(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef stride,
                             at::IntArrayRef padding) {
  check_rank(x_in, 5, "x");
  check_device(x_in, c10::DeviceType::CPU, "x");
  SFK_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
            "x: expected a float32 or bfloat16 tensor, got ", x_in.scalar_type());
  SFK_CHECK(kernel.size() == 3 && stride.size() == 3 && padding.size() == 3,
            "kernel, stride, padding: expected 3 ints each, got ", kernel, ", ", stride, ", ", padding);
  PoolGeometry g{};
  g.N = x_in.size(0), g.C = x_in.size(1), g.T = x_in.size(2), g.H = x_in.size(3), g.W = x_in.size(4);
  const int64_t in[3] = {g.T, g.H, g.W};
  int64_t out[3];
  for (int d = 0; d < 3; ++d) {
    g.k[d] = kernel[d], g.s[d] = stride[d], g.p[d] = padding[d];
    SFK_CHECK(g.k[d] >= 1 && g.s[d] >= 1, "kernel, stride: expected positive values, got ", kernel, ", ", stride);
    SFK_CHECK(g.p[d] >= 0 && 2 * g.p[d] <= g.k[d], "padding: expected at most half the kernel (", kernel, "), got ",
              padding);
    out[d] = pooled_size(in[d], g.k[d], g.s[d], g.p[d]);
    SFK_CHECK(out[d] >= 1, "x: spatial size ", x_in.sizes(), " is too small for kernel ", kernel, " and padding ",
              padding);
  }
  g.To = out[0], g.Ho = out[1], g.Wo = out[2];
  const auto cl = at::MemoryFormat::ChannelsLast3d;
  const at::Tensor x = x_in.contiguous(cl);
  at::Tensor y = at::empty({g.N, g.C, g.To, g.Ho, g.Wo}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  if (x.scalar_type() == at::kFloat) {
    pool(x.data_ptr<float>(), g, y.data_ptr<float>());
  } else {
    pool(x.data_ptr<c10::BFloat16>(), g, y.data_ptr<c10::BFloat16>());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) { m.impl("max_pool3d_cl", &max_pool3d_cl_cpu); }

}  // namespace slowfast_kernels
