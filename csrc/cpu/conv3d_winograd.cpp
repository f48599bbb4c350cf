// CPU Winograd conv for the 1x3x3, stride 1, padding (0, 1, 1) convs (the bottleneck conv_b layers of
// SlowFast), fp32, over the N * T frames of channels-last (NDHWC) memory, with bias, residual and ReLU
// fused into the output transform.
//
// Why: oneDNN runs these as direct convs; F(4x4, 3x3) does 36 products per 16 outputs instead of 144.
// The products are 36 (16 for F(2x2, 3x3)) independent GEMMs M_k[tiles, C_out] = V_k[tiles, C_in] U_k.
//
// Each thread runs whole blocks of output tiles (blocks keep V and M near its core; see kDefaultBlockBytes):
//   1. input transform: V[k][tile][c_in] (16 channels per vector),
//   2. the GEMMs M_k = V_k U_k on this thread: an 8 x 32 register-blocked AVX-512 kernel (block_gemms) up to
//      256 input channels, MKL's batched GEMM (at::bmm_out) above and without AVX-512,
//   3. output transform: A^T M A + bias (+ residual), ReLU, into NDHWC.
// The filter transform U = G g G^T is computed once (conv3d_winograd_weight, in float64, rounded once).
//
// AVX-512 where the CPU has it (chosen at run time; the library is built without -march), else a portable
// 16-float loop: the transforms are written once (conv3d_winograd_tiles.h) and compiled for both.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

// The conv's sizes and strides, shared by both instantiations of the tile transforms.
struct Geometry {
  int64_t N, C, T, H, W, Co;
  int64_t tiles_h, tiles_w, tiles;  // output tiles per column / row of a frame; in all N * T frames
  int64_t xn, xt, xh, xw;           // x's strides (its channel stride is 1)
  int64_t rn, rt, rh, rw;           // residual's strides (channel stride 1), when there is one
  int64_t yn, yt, yh, yw;           // out's strides (channel stride 1)
};

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {

struct Vec {
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec load(const float* p, int n) {
    return {n == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p)};
  }
  void store(float* p, int n) const {
    if (n == 16) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
    }
  }
  // max(0, v): vmaxps returns its second operand when one is NaN, so NaN propagates as in torch.relu.
  Vec max0() const { return {_mm512_max_ps(_mm512_setzero_ps(), v)}; }
  Vec operator+(const Vec& o) const { return {_mm512_add_ps(v, o.v)}; }
  Vec operator-(const Vec& o) const { return {_mm512_sub_ps(v, o.v)}; }
  Vec operator*(float s) const { return {_mm512_mul_ps(v, _mm512_set1_ps(s))}; }
};

#include "conv3d_winograd_tiles.h"

// M[i][0, n) (+)= sum_k A[i][k] B[k][0, n) for R rows of A (row stride lda) and n <= 32 columns of B and M
// (row strides ldb, ldm): 2R zmm accumulators, B's two vectors loaded once per k for R broadcast FMAs.
// accumulate: add to M's values (a later K block) instead of overwriting them.
template <int R>
inline void gemm_rows(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* Mrow, int64_t ldm,
                      int n, bool accumulate) {
  const __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc0[r] = accumulate ? _mm512_maskz_loadu_ps(m0, Mrow + r * ldm) : _mm512_setzero_ps();
    acc1[r] = accumulate ? _mm512_maskz_loadu_ps(m1, Mrow + r * ldm + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, B + k * ldb + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      acc0[r] = _mm512_fmadd_ps(a, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(a, b1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(Mrow + r * ldm, m0, acc0[r]);
    _mm512_mask_storeu_ps(Mrow + r * ldm + 16, m1, acc1[r]);
  }
}

// M_k = V_k U_k for the a^2 products of one block: V [a2][nb][C], U [a2][C][ldu] (columns [0, Co) used),
// M [a2][nb][Co]. Per 32-column panel, K in blocks of kKBlock: a block of the panel (8 KB) stays in L1 while
// all rows pass over it. (Sums in this order give F(4x4) on Slow res4 a max error of 1.2e-5 of the output's
// range, MKL's 6.3e-6; sequential sums over all 256 channels gave the same 1.2e-5.)
inline void block_gemms(const float* V, const float* U, int64_t ldu, float* Mt, int64_t a2, int64_t nb, int64_t C,
                        int64_t Co) {
  constexpr int kRows = 8;
  constexpr int64_t kKBlock = 64;
  for (int64_t k = 0; k < a2; ++k) {
    const float* A = V + k * nb * C;
    const float* B = U + k * C * ldu;
    float* Mk = Mt + k * nb * Co;
    for (int64_t j = 0; j < Co; j += 32) {
      const int n = static_cast<int>(std::min<int64_t>(32, Co - j));
      for (int64_t k0 = 0; k0 < C; k0 += kKBlock) {
        const int64_t kn = std::min(kKBlock, C - k0);
        const float* Ak = A + k0;
        const float* Bk = B + k0 * ldu + j;
        const bool acc = k0 > 0;
        int64_t i = 0;
        for (; i + kRows <= nb; i += kRows) gemm_rows<kRows>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc);
        switch (nb - i) {
          case 7: gemm_rows<7>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 6: gemm_rows<6>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 5: gemm_rows<5>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 4: gemm_rows<4>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 3: gemm_rows<3>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 2: gemm_rows<2>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          case 1: gemm_rows<1>(Ak + i * C, C, Bk, ldu, kn, Mk + i * Co + j, Co, n, acc); break;
          default: break;
        }
      }
    }
  }
}

}  // namespace avx512
#pragma GCC pop_options

namespace portable {

struct Vec {
  float v[16];
  static Vec zero() { return Vec{}; }
  static Vec load(const float* p, int n) {
    Vec r{};
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
  }
  void store(float* p, int n) const {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
  Vec max0() const {
    Vec r;
    for (int i = 0; i < 16; ++i) r.v[i] = std::max(v[i], 0.0f);  // (a < b ? b : a): NaN stays NaN
    return r;
  }
  Vec operator+(const Vec& o) const {
    Vec r;
    for (int i = 0; i < 16; ++i) r.v[i] = v[i] + o.v[i];
    return r;
  }
  Vec operator-(const Vec& o) const {
    Vec r;
    for (int i = 0; i < 16; ++i) r.v[i] = v[i] - o.v[i];
    return r;
  }
  Vec operator*(float s) const {
    Vec r;
    for (int i = 0; i < 16; ++i) r.v[i] = v[i] * s;
    return r;
  }
};

#include "conv3d_winograd_tiles.h"

}  // namespace portable

// Tiles per block: as many as keep V and M (a^2 * tiles * (C_in + C_out) floats) within 1 MiB (one core's L2
// here), but at least kMinBlockTiles: every block streams all of U (9.4 MB for 256 -> 256 channels), and
// blocks of 8-32 tiles ran res4 / res5 conv_b 1.3-2x slower than 32-64 (1 thread, under load).
constexpr int64_t kMinBlockTiles = 64;
// Our GEMM (block_gemms) up to this many input channels, MKL's (at::bmm_out) above. 1 thread, interleaved,
// under load: ours 7.8 / 6.8 / 10.5 ms on Slow res2 / res3 / res4 conv_b where bmm took 8.9 / 8.7 / 12.7;
// on res5 (512 channels) bmm 11.1 ms, ours 12.2.
constexpr int64_t kOwnGemmMaxCin = 256;
constexpr int64_t kDefaultBlockBytes = int64_t(1) << 20;

// G (a x 3) of F(m x m, 3 x 3): U = G g G^T.
at::Tensor filter_matrix(int64_t m) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  if (m == 4) {
    return at::tensor({1.0 / 4, 0.0, 0.0, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 24,
                       1.0 / 12, 1.0 / 6, 1.0 / 24, -1.0 / 12, 1.0 / 6, 0.0, 0.0, 1.0},
                      f64)
        .view({6, 3});
  }
  return at::tensor({1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0}, f64).view({4, 3});
}

at::Tensor conv3d_winograd_weight_cpu(const at::Tensor& weight, int64_t tile) {
  check_rank(weight, 5, "weight");
  check_device(weight, c10::DeviceType::CPU, "weight");
  SFK_CHECK(weight.size(2) == 1 && weight.size(3) == 3 && weight.size(4) == 3,
            "weight: expected a [C_out, C_in, 1, 3, 3] kernel, got shape ", weight.sizes());
  SFK_CHECK(weight.is_floating_point(), "weight: expected a floating-point tensor, got ", weight.scalar_type());
  SFK_CHECK(tile == 2 || tile == 4, "tile: expected 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)), got ", tile);
  const at::Tensor G = filter_matrix(tile);
  const int64_t a = tile + 2;
  // [C_out, C_in, 3, 3] -> G g G^T [C_out, C_in, a, a] -> [a * a, C_in, C_out]
  const at::Tensor g = weight.to(at::kDouble).squeeze(2);
  const at::Tensor u = at::matmul(at::matmul(G, g), G.t());
  return u.permute({2, 3, 1, 0}).reshape({a * a, weight.size(1), weight.size(0)}).to(at::kFloat).contiguous();
}

// A channels-innermost view of t: t itself when its channel stride is 1, else a channels_last_3d copy.
at::Tensor channels_innermost(const at::Tensor& t) {
  return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast3d);
}

bool ranges_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto span = [](const at::Tensor& t) {
    const char* lo = static_cast<const char*>(t.data_ptr());
    int64_t extent = 1;
    for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
    return std::make_pair(lo, lo + extent * static_cast<int64_t>(t.element_size()));
  };
  const auto ra = span(a), rb = span(b);
  return ra.first < rb.second && rb.first < ra.second;
}

void validate(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
              c10::string_view activation, const c10::optional<at::Tensor>& residual, int64_t tile_block) {
  check_rank(x, 5, "x");
  check_device(x, c10::DeviceType::CPU, "x");
  SFK_CHECK(x.scalar_type() == at::kFloat, "x: expected float32, got ", x.scalar_type());
  check_rank(packed, 3, "packed");
  check_device(packed, c10::DeviceType::CPU, "packed");
  SFK_CHECK(packed.scalar_type() == at::kFloat, "packed: expected float32, got ", packed.scalar_type());
  SFK_CHECK(packed.size(0) == 36 || packed.size(0) == 16,
            "packed: expected conv3d_winograd_weight's [36 or 16, C_in, C_out], got shape ", packed.sizes());
  SFK_CHECK(packed.size(1) == x.size(1), "packed: expected ", x.size(1), " input channels (x's), got shape ",
            packed.sizes());
  SFK_CHECK(packed.is_contiguous(), "packed: expected a contiguous tensor (conv3d_winograd_weight's output)");
  const int64_t Co = packed.size(2);
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == Co && bias->scalar_type() == at::kFloat && bias->is_cpu(),
              "bias: expected a float32 CPU tensor of shape [", Co, "], got ", bias->scalar_type(), " ",
              bias->sizes(), " on ", bias->device());
  }
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected 'relu' or 'none', got '",
            activation, "'");
  const std::vector<int64_t> shape = {x.size(0), Co, x.size(2), x.size(3), x.size(4)};
  if (residual.has_value() && residual->defined()) {
    SFK_CHECK(residual->sizes() == at::IntArrayRef(shape), "residual: expected shape ", at::IntArrayRef(shape),
              ", got ", residual->sizes());
    SFK_CHECK(residual->scalar_type() == at::kFloat && residual->is_cpu(), "residual: expected a float32 CPU tensor, got ",
              residual->scalar_type(), " on ", residual->device());
  }
  SFK_CHECK(tile_block >= 0, "tile_block: expected >= 0 (0: chosen from the cache budget), got ", tile_block);
}

void run(const at::Tensor& x_in, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
         c10::string_view activation, const c10::optional<at::Tensor>& residual_in, int64_t tile_block,
         bool force_portable, const at::Tensor& out) {
  if (out.numel() == 0) return;
  const at::Tensor x = channels_innermost(x_in);
  const bool has_residual = residual_in.has_value() && residual_in->defined();
  // residual may be out itself (accumulate in place): each element is read, then written, by one thread.
  const at::Tensor residual = has_residual ? channels_innermost(*residual_in) : at::Tensor();
  const int64_t m = packed.size(0) == 36 ? 4 : 2, a2 = packed.size(0);

  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.T = x.size(2), g.H = x.size(3), g.W = x.size(4), g.Co = packed.size(2);
  g.tiles_h = (g.H + m - 1) / m, g.tiles_w = (g.W + m - 1) / m;
  g.tiles = g.N * g.T * g.tiles_h * g.tiles_w;
  g.xn = x.stride(0), g.xt = x.stride(2), g.xh = x.stride(3), g.xw = x.stride(4);
  g.yn = out.stride(0), g.yt = out.stride(2), g.yh = out.stride(3), g.yw = out.stride(4);
  if (has_residual) g.rn = residual.stride(0), g.rt = residual.stride(2), g.rh = residual.stride(3), g.rw = residual.stride(4);

  // Tasks of tb tiles x a range of output channels, each run start to end by one thread (transform, GEMMs,
  // output): one parallel region per call. Under load (2 cores shared by several jobs) every extra barrier
  // cost milliseconds. Layers with fewer than kMinBlockTiles tiles per thread (Slow res4, res5) split the
  // output channels between threads instead, each thread transforming all tiles: each then streams its part
  // of U (37.7 MB for 512 -> 512 channels) rather than all of it.
  const int64_t threads = at::get_num_threads();
  const int64_t per_tile_bytes = a2 * (g.C + g.Co) * static_cast<int64_t>(sizeof(float));
  int64_t tb, splits = 1;
  if (tile_block > 0) {
    tb = std::min(tile_block, g.tiles);
  } else if (g.tiles < threads * kMinBlockTiles && g.Co >= 16 * threads) {
    tb = g.tiles, splits = threads;
  } else {
    tb = std::max(kMinBlockTiles, kDefaultBlockBytes / per_tile_bytes);
    tb = std::max<int64_t>(1, std::min(tb, (g.tiles + threads - 1) / threads));
  }
  const int64_t co_step = ((g.Co + 15) / 16 + splits - 1) / splits * 16;  // whole vectors per split
  splits = (g.Co + co_step - 1) / co_step;
  const int64_t blocks = (g.tiles + tb - 1) / tb;
  const int64_t workers = std::min(threads, blocks * splits);
  at::Tensor scratch = at::empty({workers, a2 * tb * (g.C + std::min(co_step, g.Co))}, x.options());

  const bool avx = !force_portable && __builtin_cpu_supports("avx512f");
  const bool own_gemm = avx && g.C <= kOwnGemmMaxCin;
  const float* up = packed.data_ptr<float>();
  const bool relu = activation == "relu";
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.has_value() && bias->defined() ? bias->data_ptr<float>() : nullptr;
  const float* rp = has_residual ? residual.data_ptr<float>() : nullptr;
  float* yp = out.data_ptr<float>();

  at::parallel_for(0, blocks * splits, 1, [&](int64_t begin, int64_t end) {
    const int64_t worker = std::min<int64_t>(at::get_thread_num(), workers - 1);
    float* vp = scratch.data_ptr<float>() + worker * scratch.size(1);
    float* mp = vp + a2 * tb * g.C;
    int64_t transformed = -1;  // the block whose V this thread holds
    for (int64_t task = begin; task < end; ++task) {
      const int64_t blk = task / splits, co0 = task % splits * co_step, co1 = std::min(g.Co, co0 + co_step);
      const int64_t p0 = blk * tb, p1 = std::min(g.tiles, p0 + tb), nb = p1 - p0;
      if (blk != transformed) {
        if (m == 4) {
          avx ? avx512::input_tiles<4>(xp, g, p0, p1, vp, nb) : portable::input_tiles<4>(xp, g, p0, p1, vp, nb);
        } else {
          avx ? avx512::input_tiles<2>(xp, g, p0, p1, vp, nb) : portable::input_tiles<2>(xp, g, p0, p1, vp, nb);
        }
        transformed = blk;
      }
      if (own_gemm) {
        avx512::block_gemms(vp, up + co0, g.Co, mp, a2, nb, g.C, co1 - co0);
      } else {  // inside the parallel region bmm runs on this thread alone
        at::Tensor Mb = at::from_blob(mp, {a2, nb, co1 - co0}, x.options());
        const at::Tensor Ub = splits == 1 ? packed : packed.narrow(2, co0, co1 - co0);
        at::bmm_out(Mb, at::from_blob(vp, {a2, nb, g.C}, x.options()), Ub);
      }
      if (m == 4) {
        avx ? avx512::output_tiles<4>(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp)
            : portable::output_tiles<4>(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp);
      } else {
        avx ? avx512::output_tiles<2>(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp)
            : portable::output_tiles<2>(mp, g, p0, p1, nb, co0, co1, bp, rp, relu, yp);
      }
    }
  });
}

std::vector<int64_t> output_shape(const at::Tensor& x, const at::Tensor& packed) {
  return {x.size(0), packed.size(2), x.size(2), x.size(3), x.size(4)};
}

at::Tensor conv3d_winograd_cpu(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                               c10::string_view activation, const c10::optional<at::Tensor>& residual,
                               int64_t tile_block, bool force_portable) {
  validate(x, packed, bias, activation, residual, tile_block);
  at::Tensor out = at::empty(output_shape(x, packed), x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  run(x, packed, bias, activation, residual, tile_block, force_portable, out);
  return out;
}

void conv3d_winograd_out_cpu(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                             c10::string_view activation, const c10::optional<at::Tensor>& residual,
                             int64_t tile_block, bool force_portable, const at::Tensor& out) {
  validate(x, packed, bias, activation, residual, tile_block);
  const auto shape = output_shape(x, packed);
  SFK_CHECK(out.sizes() == at::IntArrayRef(shape), "out: expected shape ", at::IntArrayRef(shape), ", got ",
            out.sizes());
  SFK_CHECK(out.scalar_type() == at::kFloat && out.is_cpu(), "out: expected a float32 CPU tensor, got ",
            out.scalar_type(), " on ", out.device());
  SFK_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast3d),
            "out: expected a channels_last_3d contiguous tensor, got strides ", out.strides());
  SFK_CHECK(!ranges_overlap(out, x), "out: must not overlap x (border tiles read x after others wrote out)");
  if (residual.has_value() && residual->defined() && ranges_overlap(out, *residual)) {
    SFK_CHECK(residual->data_ptr() == out.data_ptr() && residual->strides() == out.strides(),
              "residual: may be out itself, but must not partly overlap it");
  }
  run(x, packed, bias, activation, residual, tile_block, force_portable, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("conv3d_winograd_weight", &conv3d_winograd_weight_cpu);
  m.impl("conv3d_winograd", &conv3d_winograd_cpu);
  m.impl("conv3d_winograd_out", &conv3d_winograd_out_cpu);
}

}  // namespace slowfast_kernels
