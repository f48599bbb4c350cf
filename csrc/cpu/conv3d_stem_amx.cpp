// The stems on AMX: conv3d for a tiny input-channel count (C_in <= 4) + bias + ReLU (+ the stem's max pool),
// one pass from the raw float32 (or bfloat16) clip to the pooled channels_last_3d output, on Intel AMX-BF16.
//
// Why: oneDNN's AMX kernels run the Fast stem (3 -> 8 channels, 5x7x7, stride (1, 2, 2)) at ~260 GFLOP/s in
// bf16, 18 ms of a ~100 ms R50 8x8 forward (batch 1, 2 cores of a Xeon with AMX; OpenVINO runs the same
// oneDNN kernel as long), because 3 input channels give each 32-deep AMX tile product 3 useful values: the
// channel is its reduction axis. Here the reduction axis is a whole row of the window instead: each packed
// pixel holds its F = KT + TP - 1 frames x C channels (TP output frames per pass), so the KW pixels of a
// window row are KW * F * C consecutive values, and the 16 output pixels of an A tile are 16 rows of one
// strided tile load (row stride s pixels). For the Fast stem (TP 2, F 6, 18 values a pixel) a window row is
// 126 values: 4 tile products of 32, 98% of them used; the 16 output columns are 8 channels x 2 frames, so
// no column is wasted either. The Slow stem (3 -> 64, 1x7x7) packs 3 values a pixel, 21 of 32 used.
//
// Per task (n, a band of output rows, a run of consecutive passes of TP output frames): the input rows the
// band needs are converted to bf16 and packed ([row][pixel][F * C], zero padding included), the conv rows
// are computed into a ring of fp32 rows (bias, ReLU), and each pooled row is taken from the ring as soon as
// its window is there, so the unpooled conv output never reaches memory. A pixel's F frame slots are a ring
// too (frame t in slot t mod F, the weight packed once per rotation): consecutive passes share F - TP
// frames, so after a run's first pass each packs only its TP new frames (the Fast stem: 2 of 6).
//
// precision "bf16": x and the weight rounded to bf16, fp32 accumulation, bf16 output (what a bf16 conv
// computes). "bf16x3": float32 accuracy from three bf16 products per tap (x = x_hi + x_lo and w = w_hi +
// w_lo, each part bf16: x_hi w_hi + x_hi w_lo + x_lo w_hi, the x_lo w_lo term below fp32's rounding of the
// sum), float32 output.
//
// Only finite inputs: a zero weight column still multiplies the neighbouring pixel's value (inf * 0 is
// NaN), so callers route non-finite inputs elsewhere. The packing sees every value the windows read, so it
// says whether one was NaN or inf (the nonfinite flag): the fused model runs the stems first and takes
// that as the forward's finiteness check, redoing the stems by the exact path when it is set.
// Built without -march: the AMX functions carry their own target attribute and run only where the CPU and
// the OS allow AMX (amx_available()).
#include <ATen/Parallel.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

#define SFK_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

constexpr int64_t kTileRows = 16;   // output pixels per A tile
constexpr int64_t kTileK = 32;      // bf16 values per A tile row (64 bytes)
constexpr int64_t kTileCols = 16;   // fp32 output columns per C tile
constexpr int64_t kBandRows = 14;   // pooled (or conv) output rows per task

// The CPU has AMX-TILE and AMX-BF16 and the kernel let this process use the tile data (Linux asks each
// process to request it: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)).
bool amx_available_impl() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool amx_available() {
  static const bool ok = amx_available_impl();
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

struct Geometry {
  int64_t N, C, T, H, W, Co, KT, KH, KW, s, pt, ph, pw, To, Ho, Wo;
  int64_t sn, sc, st, sh, sw;           // x's strides
  bool pool;
  int64_t pk, ps, pp, Hq, Wq;           // pool (1, pk, pk), stride (1, ps, ps), padding (0, pp, pp); pooled size
  int64_t TP, F, L, chunk, ktiles;      // output frames per pass, frames and values per packed pixel, K per row
  int64_t ncols, ntiles, mtiles, Wbuf;  // TP * Co padded to whole tiles; A tiles per row; packed row pixels
  bool split;                           // bf16x3
  bool slide;                           // later passes of a task pack only their TP new frames (see run)
};

inline int64_t mod(int64_t a, int64_t m) { return (a % m + m) % m; }

// 8 tiles of 16 rows x 64 bytes: C 0-3, A 4-5, B 6-7 (the thread's tile state; released after each chunk).
SFK_AMX void tiles_configure() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.rows[i] = kTileRows, cfg.colsb[i] = 64;
  // gcc's _tile_loadconfig tells the compiler it reads 8 bytes: make the whole config reach memory first.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

SFK_AMX void tiles_release() { _tile_release(); }

inline uint16_t bf16_bits(float v) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// The weight as B tiles: [rotation][part][kh][ktile][ntile][16 K pairs][16 columns][2], bf16 bits. Column n
// is output frame n / Co of the pass, channel n % Co; K value k is pixel k / L of the window row, frame slot
// (k % L) / C, channel k % C. A packed pixel's F frame slots are a ring: the pass whose window starts at
// frame tw keeps frame tw + f in slot (tw + f) mod F, so rotation r = tw mod F maps slot s to window frame
// (s - r) mod F (one weight per rotation: the next pass rewrites only the slots of the frames it adds).
// part 1 (bf16x3) holds w - bf16(w).
std::vector<uint16_t> pack_weight(const at::Tensor& weight, const Geometry& g) {
  const int64_t per_tile = kTileK * kTileCols;
  const int64_t parts = g.split ? 2 : 1;
  const int64_t per_part = g.KH * g.ktiles * g.ntiles * per_tile;
  std::vector<uint16_t> out(g.F * parts * per_part, 0);
  const auto w = weight.accessor<float, 5>();
  for (int64_t rot = 0; rot < g.F; ++rot)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kt = 0; kt < g.ktiles; ++kt)
        for (int64_t nt = 0; nt < g.ntiles; ++nt)
          for (int64_t kk = 0; kk < kTileK; ++kk)
            for (int64_t col = 0; col < kTileCols; ++col) {
              const int64_t k = kt * kTileK + kk, n = nt * kTileCols + col;
              if (k >= g.chunk || n >= g.TP * g.Co) continue;
              const int64_t kw = k / g.L, slot = k % g.L, ft = mod(slot / g.C - rot, g.F), c = slot % g.C;
              if (slot >= g.F * g.C) continue;  // the padding slot of an odd F * C
              const int64_t tp = n / g.Co, co = n % g.Co, dt = ft - tp;
              if (dt < 0 || dt >= g.KT) continue;
              const float v = w[co][c][dt][kh][kw];
              const uint16_t hi = bf16_bits(v);
              const int64_t at = rot * parts * per_part
                                 + (((kh * g.ktiles + kt) * g.ntiles + nt) * kTileK / 2 + kk / 2) * kTileCols * 2
                                 + col * 2 + kk % 2;
              out[at] = hi;
              if (g.split) out[per_part + at] = bf16_bits(v - bf16_value(hi));
            }
  return out;
}

// The packed weight of the last few (weight, geometry) pairs: packing walks every B tile entry of every
// rotation (the Fast stem: 86k, ~1 ms, serial), the same work each forward. An entry is found by the
// geometry the packing depends on and the weight's values themselves (a copy compared bytewise: a freed
// weight's memory reused by another tensor cannot hit a stale entry).
// B tiles 64-byte aligned: a tile row split over two cache lines costs the tile load twice the lines (the
// Slow stem measured 2.3 vs 3.3 ms with the heap's 16-byte alignment).
struct AlignedPack {
  uint16_t* data;
  explicit AlignedPack(const std::vector<uint16_t>& v)
      : data(static_cast<uint16_t*>(std::aligned_alloc(64, (v.size() * sizeof(uint16_t) + 63) / 64 * 64))) {
    SFK_CHECK(data != nullptr, "conv3d_stem_amx: out of memory packing the weight");
    std::memcpy(data, v.data(), v.size() * sizeof(uint16_t));
  }
  ~AlignedPack() { std::free(data); }
  AlignedPack(const AlignedPack&) = delete;
  AlignedPack& operator=(const AlignedPack&) = delete;
};

class WeightPackCache {
 public:
  std::shared_ptr<const AlignedPack> get(const at::Tensor& w32, const Geometry& g) {
    const std::vector<int64_t> key{g.Co, g.C, g.KT, g.KH, g.KW, g.TP, g.F, g.L, g.chunk, g.ktiles, g.ntiles,
                                   g.split ? 1 : 0};
    const float* values = w32.data_ptr<float>();
    const size_t n = static_cast<size_t>(w32.numel());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->key == key && it->weight.size() == n && std::memcmp(it->weight.data(), values, n * sizeof(float)) == 0) {
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          return entries_.front().pack;
        }
      }
    }
    const std::vector<uint16_t> v = pack_weight(w32, g);
    auto pack = std::make_shared<AlignedPack>(v);
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_front(Entry{key, std::vector<float>(values, values + n), pack});
    if (entries_.size() > kEntries) entries_.pop_back();
    return pack;
  }

 private:
  static constexpr size_t kEntries = 8;  // the stems of a few models
  struct Entry {
    std::vector<int64_t> key;
    std::vector<float> weight;
    std::shared_ptr<const AlignedPack> pack;
  };
  std::mutex mutex_;
  std::list<Entry> entries_;
};

WeightPackCache& weight_pack_cache() {
  static WeightPackCache* cache = new WeightPackCache();  // never destroyed: no exit-order hazards
  return *cache;
}

// Packed input rows [hp0, hp1) (padded row coordinates) of the pass whose window starts at frame tw (output
// frame tw + pt): hi[(hp - hp0) * Wbuf + wp][s * C + c] = bf16(x[n, c, ti, hp - ph, wp - pw]) for the window
// frame ti = tw + ((s - tw) mod F) of slot s, 0 outside x (and in the odd slot of an odd F * C); lo (bf16x3)
// the rounding remainder. full: every slot, the buffers zeroed first; else only slots [s0, s1) (whole pairs
// of values), the rest (the other frames, the padding) kept from the earlier passes. Values j, j + 1 of 16 pixels are
// converted together and stored as one scatter of 32-bit words. Returns whether a packed value is NaN or
// inf (its bf16 exponent all ones: a float32 beyond bf16's range counts too).
template <typename scalar_t>
SFK_AMX inline __m512 load16(const scalar_t* src, int64_t stride, __mmask16 k) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stride == 1) return _mm512_maskz_loadu_ps(k, src);
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, src, 4);
  } else {
    alignas(64) uint16_t bits[16] = {};
    for (int i = 0; i < 16; ++i)
      if (k & (1u << i)) bits[i] = src[i * stride].x;
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i*)bits)), 16));
  }
}

SFK_AMX inline __m512i bf16_words(__m512 v) {  // 16 floats -> their bf16 bits (RNE) in the low half of each word
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

SFK_AMX inline __m512 bf16_back(__m512i words) { return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16)); }

template <typename scalar_t>
SFK_AMX bool pack_rows(const scalar_t* x, const Geometry& g, int64_t n, int64_t tw, bool full, int64_t s0,
                       int64_t s1, int64_t hp0, int64_t hp1, uint16_t* hi, uint16_t* lo) {
  const __m512i exponent = _mm512_set1_epi32(0x7f80);
  __mmask16 nonfinite = 0;
  const int64_t row = g.Wbuf * g.L;
  if (full) {
    std::memset(hi, 0, sizeof(uint16_t) * row * (hp1 - hp0));
    if (lo != nullptr) std::memset(lo, 0, sizeof(uint16_t) * row * (hp1 - hp0));
  }
  const int64_t j0 = full ? 0 : s0 * g.C, j1 = full ? g.L : s1 * g.C;
  const __m512i pixel = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(g.L / 2)));  // in 32-bit words
  for (int64_t hp = hp0; hp < hp1; ++hp) {
    const int64_t h = hp - g.ph;
    if (h < 0 || h >= g.H) continue;
    uint16_t* dst_hi = hi + (hp - hp0) * row + g.pw * g.L;
    uint16_t* dst_lo = lo == nullptr ? nullptr : lo + (hp - hp0) * row + g.pw * g.L;
    for (int64_t j = j0; j < j1; j += 2) {  // values j (low half) and j + 1 (high half) of each pixel
      const scalar_t* src[2] = {nullptr, nullptr};
      for (int e = 0; e < 2; ++e) {
        const int64_t v = j + e, c = v % g.C, ti = tw + mod(v / g.C - tw, g.F);
        if (v < g.F * g.C && ti >= 0 && ti < g.T) src[e] = x + n * g.sn + c * g.sc + ti * g.st + h * g.sh;
      }
      if (full && src[0] == nullptr && src[1] == nullptr) continue;  // zero already
      for (int64_t w = 0; w < g.W; w += 16) {
        const __mmask16 k = g.W - w >= 16 ? __mmask16(0xffff) : __mmask16((1u << (g.W - w)) - 1);
        const __m512 a = src[0] ? load16(src[0] + w * g.sw, g.sw, k) : _mm512_setzero_ps();
        const __m512 b = src[1] ? load16(src[1] + w * g.sw, g.sw, k) : _mm512_setzero_ps();
        const __m512i ha = bf16_words(a), hb = bf16_words(b);
        nonfinite |= _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(ha, exponent), exponent) |
                     _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(hb, exponent), exponent);
        _mm512_mask_i32scatter_epi32(dst_hi + w * g.L + j, k, pixel, _mm512_or_si512(ha, _mm512_slli_epi32(hb, 16)), 4);
        if (dst_lo != nullptr) {
          const __m512i la = bf16_words(_mm512_sub_ps(a, bf16_back(ha))), lb = bf16_words(_mm512_sub_ps(b, bf16_back(hb)));
          _mm512_mask_i32scatter_epi32(dst_lo + w * g.L + j, k, pixel, _mm512_or_si512(la, _mm512_slli_epi32(lb, 16)), 4);
        }
      }
    }
  }
  return nonfinite != 0;
}

// Where each C tile column goes: its bias, and the tile's runs of columns of one output frame of the pass.
// Column n is frame tp = n / Co, channel n % Co, at ring offset tp * Wo * Co + n % Co (pixel 0), i.e.
// n + tp * (Wo - 1) * Co: the lanes of one frame are consecutive in the ring row, so a tile pixel's
// columns go out as one masked store per frame it spans (one for TP = 1, TP for Co < 16) instead of a
// scatter. Padding columns are in no run.
struct Columns {
  std::vector<float> bias_v;
  std::vector<__mmask16> run_mask;   // [tile][run]
  std::vector<int32_t> run_shift;    // [tile][run]: tp * (Wo - 1) * Co
  std::vector<int32_t> runs;         // [tile]
  const float* bias;
  Columns(const Geometry& g, const float* b)
      : bias_v(g.ncols, 0.0f), run_mask(g.ntiles * kTileCols, 0), run_shift(g.ntiles * kTileCols, 0),
        runs(g.ntiles, 0) {
    for (int64_t n = 0; n < g.TP * g.Co; ++n) {
      bias_v[n] = b[n % g.Co];
      const int64_t nt = n / kTileCols, tp = n / g.Co;
      const int32_t shift = static_cast<int32_t>(tp * (g.Wo - 1) * g.Co);
      int32_t& r = runs[nt];
      if (r == 0 || run_shift[nt * kTileCols + r - 1] != shift) run_shift[nt * kTileCols + r++] = shift;
      run_mask[nt * kTileCols + r - 1] |= __mmask16(1u << (n % kTileCols));
    }
    bias = bias_v.data();
  }
};

// A C tile (M tile m, column tile nt of a conv row) into the row's ring slot: + bias, ReLU, each pixel's
// columns as one masked store per output frame (Columns).
SFK_AMX inline void finish_tile(const Geometry& g, const float* staged, int64_t m, int64_t nt, const Columns& cols,
                                bool relu, float* ring) {
  const __m512 b = _mm512_loadu_ps(cols.bias + nt * kTileCols);
  const __mmask16* run_mask = cols.run_mask.data() + nt * kTileCols;
  const int32_t* run_shift = cols.run_shift.data() + nt * kTileCols;
  const int32_t runs = cols.runs[nt];
  const __m512 zero = _mm512_setzero_ps();
  const int64_t px_end = std::min(kTileRows, g.Wo - m * kTileRows);
  for (int64_t px = 0; px < px_end; ++px) {
    __m512 v = _mm512_add_ps(_mm512_load_ps(staged + px * kTileCols), b);
    if (relu) v = _mm512_max_ps(zero, v);  // the second operand when either is NaN: NaN stays, as torch.relu
    float* at = ring + (m * kTileRows + px) * g.Co + nt * kTileCols;
    for (int32_t j = 0; j < runs; ++j) _mm512_mask_storeu_ps(at + run_shift[j], run_mask[j], v);
  }
}

// One conv output row r of the pass: ring[tp][wo][co] = act(conv + bias), fp32, for every A tile of the row.
// a_parts / b_parts: the (packed input, weight) part pairs whose products are summed (1 pair, or 3 for bf16x3).
SFK_AMX void conv_row(const Geometry& g, int64_t r, int64_t hp0, const uint16_t* const* a_parts,
                      const uint16_t* const* b_parts, int64_t products, const Columns& cols, bool relu, float* ring) {
  alignas(64) float staged[4][kTileRows * kTileCols];
  const int64_t row = g.Wbuf * g.L;
  const int64_t a_stride = g.s * g.L * 2;  // bytes between the A tile's rows (output pixels s apart)
  const int64_t b_tile = kTileK * kTileCols;
  // Blocks of 4 M tiles x 1 N tile (one column tile) or 2 x 2; C tiles 0-3, A tiles 4-5, B tiles 6-7.
  const int64_t mb = g.ntiles == 1 ? 4 : 2, nb = g.ntiles == 1 ? 1 : 2;
  for (int64_t m0 = 0; m0 < g.mtiles; m0 += mb) {
    const int64_t mc = std::min(mb, g.mtiles - m0);
    for (int64_t n0 = 0; n0 < g.ntiles; n0 += nb) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t p = 0; p < products; ++p) {
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const uint16_t* arow = a_parts[p] + (r * g.s + kh - hp0) * row;
          for (int64_t kt = 0; kt < g.ktiles; ++kt) {
            const uint16_t* b = b_parts[p] + ((kh * g.ktiles + kt) * g.ntiles + n0) * b_tile;
            const auto a_at = [&](int64_t m) { return arow + (m0 + m) * kTileRows * g.s * g.L + kt * kTileK; };
            if (nb == 1) {
              _tile_loadd(6, b, 64);
              _tile_loadd(4, a_at(0), a_stride);
              _tile_dpbf16ps(0, 4, 6);
              if (mc > 1) { _tile_loadd(5, a_at(1), a_stride); _tile_dpbf16ps(1, 5, 6); }
              if (mc > 2) { _tile_loadd(4, a_at(2), a_stride); _tile_dpbf16ps(2, 4, 6); }
              if (mc > 3) { _tile_loadd(5, a_at(3), a_stride); _tile_dpbf16ps(3, 5, 6); }
            } else {
              _tile_loadd(6, b, 64);
              _tile_loadd(7, b + b_tile, 64);
              _tile_loadd(4, a_at(0), a_stride);
              _tile_dpbf16ps(0, 4, 6);
              _tile_dpbf16ps(1, 4, 7);
              if (mc > 1) {
                _tile_loadd(5, a_at(1), a_stride);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
              }
            }
          }
        }
      }
      _tile_stored(0, staged[0], 64);
      _tile_stored(1, staged[1], 64);
      _tile_stored(2, staged[2], 64);
      _tile_stored(3, staged[3], 64);
      for (int64_t i = 0; i < 4; ++i) {
        const int64_t m = m0 + (nb == 1 ? i : i / 2), nt = n0 + (nb == 1 ? 0 : i % 2);
        if (m < g.mtiles && nt < g.ntiles) finish_tile(g, staged[i], m, nt, cols, relu, ring);
      }
    }
  }
}

// Two consecutive conv rows r, r + 1 of a one-column-tile pass (the Fast stem's 16 columns: TP 2 x 8
// channels). Row r reads input rows r * s + kh and row r + 1 rows r * s + s + kh: KH - s of them are the
// same, so each A tile (an input row's 16 output pixels) loaded once feeds both rows' products, the weight
// row kh for row r and kh - s for row r + 1. Blocks of 2 M tiles x 2 rows (C tiles 0-1: row r, 2-3: row
// r + 1) load 2 A and 2 B tiles per 4 products, the 2 x 2 register blocking the one-row loop (4 M tiles x
// 1 B tile: each A tile used once) cannot have with a single column tile.
SFK_AMX void conv_row_pair(const Geometry& g, int64_t r, int64_t hp0, const uint16_t* const* a_parts,
                           const uint16_t* const* b_parts, int64_t products, const Columns& cols, bool relu,
                           float* ring0, float* ring1) {
  alignas(64) float staged[4][kTileRows * kTileCols];
  const int64_t row = g.Wbuf * g.L;
  const int64_t a_stride = g.s * g.L * 2;
  const int64_t b_tile = kTileK * kTileCols;
  const int64_t b_row = g.ktiles * b_tile;  // one kh of the weight (ntiles == 1)
  for (int64_t m0 = 0; m0 < g.mtiles; m0 += 2) {
    const bool two = m0 + 1 < g.mtiles;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t p = 0; p < products; ++p) {
      for (int64_t rho = 0; rho < g.KH + g.s; ++rho) {  // input row r * s + rho
        const bool first = rho < g.KH, second = rho >= g.s;  // row r's kh = rho, row r + 1's kh = rho - s
        const uint16_t* arow = a_parts[p] + (r * g.s + rho - hp0) * row;
        for (int64_t kt = 0; kt < g.ktiles; ++kt) {
          const uint16_t* a0 = arow + m0 * kTileRows * g.s * g.L + kt * kTileK;
          const uint16_t* a1 = a0 + kTileRows * g.s * g.L;
          if (first) _tile_loadd(6, b_parts[p] + rho * b_row + kt * b_tile, 64);
          if (second) _tile_loadd(7, b_parts[p] + (rho - g.s) * b_row + kt * b_tile, 64);
          _tile_loadd(4, a0, a_stride);
          if (two) _tile_loadd(5, a1, a_stride);
          if (first) _tile_dpbf16ps(0, 4, 6);
          if (second) _tile_dpbf16ps(2, 4, 7);
          if (two && first) _tile_dpbf16ps(1, 5, 6);
          if (two && second) _tile_dpbf16ps(3, 5, 7);
        }
      }
    }
    _tile_stored(0, staged[0], 64);
    _tile_stored(1, staged[1], 64);
    _tile_stored(2, staged[2], 64);
    _tile_stored(3, staged[3], 64);
    finish_tile(g, staged[0], m0, 0, cols, relu, ring0);
    finish_tile(g, staged[2], m0, 0, cols, relu, ring1);
    if (two) {
      finish_tile(g, staged[1], m0 + 1, 0, cols, relu, ring0);
      finish_tile(g, staged[3], m0 + 1, 0, cols, relu, ring1);
    }
  }
}

// max(acc, v) over n lanes, NaN in v or acc kept (as max_pool3d).
SFK_AMX inline void nan_max_into(float* acc, const float* v, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(k, acc + i), x = _mm512_maskz_loadu_ps(k, v + i);
    __m512 m = _mm512_max_ps(x, a);  // a when either is NaN
    m = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
    _mm512_mask_storeu_ps(acc + i, k, m);
  }
}

// The pool along a row: output lane o = wq * Co + co takes the max of vmax[(wq * ps - pp + j) * Co + co], j < pk,
// over the positions inside the row (index vectors and masks per j, 16 lanes a chunk).
struct PoolWindow {
  int64_t chunks = 0;
  std::vector<int32_t> index;    // [chunk][j][16]
  std::vector<__mmask16> valid;  // [chunk][j]
  explicit PoolWindow(const Geometry& g) {
    if (!g.pool) return;
    const int64_t lanes = g.Wq * g.Co;
    chunks = (lanes + 15) / 16;
    index.assign(chunks * g.pk * 16, 0);
    valid.assign(chunks * g.pk, 0);
    for (int64_t o = 0; o < lanes; ++o) {
      const int64_t wq = o / g.Co, co = o % g.Co;
      for (int64_t j = 0; j < g.pk; ++j) {
        const int64_t wo = wq * g.ps - g.pp + j;
        if (wo < 0 || wo >= g.Wo) continue;
        index[((o / 16) * g.pk + j) * 16 + o % 16] = static_cast<int32_t>(wo * g.Co + co);
        valid[(o / 16) * g.pk + j] |= __mmask16(1u << (o % 16));
      }
    }
  }
};

SFK_AMX void pool_columns(const Geometry& g, const PoolWindow& win, const float* vmax, float* out) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  if (g.Co % kTileCols == 0) {
    // Whole 16-lane chunks of one pooled pixel: its window's pixels are plain loads, no gathers.
    for (int64_t wq = 0; wq < g.Wq; ++wq) {
      const int64_t w0 = std::max<int64_t>(0, wq * g.ps - g.pp), w1 = std::min(g.Wo, wq * g.ps - g.pp + g.pk);
      for (int64_t c0 = 0; c0 < g.Co; c0 += kTileCols) {
        __m512 acc = ninf;
        for (int64_t wo = w0; wo < w1; ++wo) {
          const __m512 v = _mm512_loadu_ps(vmax + wo * g.Co + c0);
          acc = _mm512_mask_mov_ps(_mm512_max_ps(v, acc), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);  // NaN kept
        }
        _mm512_storeu_ps(out + wq * g.Co + c0, acc);
      }
    }
    return;
  }
  for (int64_t ch = 0; ch < win.chunks; ++ch) {
    __m512 acc = ninf;
    for (int64_t j = 0; j < g.pk; ++j) {
      const __m512i idx = _mm512_loadu_si512(win.index.data() + (ch * g.pk + j) * 16);
      const __m512 v = _mm512_mask_i32gather_ps(ninf, win.valid[ch * g.pk + j], idx, vmax, 4);
      acc = _mm512_mask_mov_ps(_mm512_max_ps(v, acc), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);  // NaN kept
    }
    _mm512_storeu_ps(out + ch * 16, acc);
  }
}

// n fp32 values to dst: a copy, or bf16 rounded to nearest even 16 lanes at a time (NaN stays NaN).
SFK_AMX inline void store(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, sizeof(float) * n); }

SFK_AMX inline void store(c10::BFloat16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, src + i));
    _mm256_mask_storeu_epi16(dst + i, k, h);
  }
}

template <typename scalar_t, typename out_t>
SFK_AMX bool run(const Geometry& g, const scalar_t* x, const uint16_t* wpack, const float* bias, bool relu,
                 out_t* y) {
  std::atomic<bool> nonfinite{false};
  const int64_t groups = (g.To + g.TP - 1) / g.TP;
  const int64_t out_rows = g.pool ? g.Hq : g.Ho;
  const int64_t bands = (out_rows + kBandRows - 1) / kBandRows;
  const int64_t Ho_out = g.pool ? g.Hq : g.Ho, Wo_out = g.pool ? g.Wq : g.Wo;
  const int64_t b_part = g.KH * g.ktiles * g.ntiles * kTileK * kTileCols;
  const int64_t parts = g.split ? 2 : 1;
  const Columns cols(g, bias);
  const PoolWindow window(g);
  // A task: one sample's band of output rows over a run of consecutive passes. Sliding, the run's first pass
  // packs all F frames and each later one only the TP frames it adds (the Fast stem: 2 of 6), so runs are
  // long: ~4 tasks a thread. Otherwise every pass is a task.
  const int64_t runs_per_band = !g.slide ? groups : std::min(groups, std::max<int64_t>(1,
      (4 * at::get_num_threads() + g.N * bands - 1) / (g.N * bands)));
  const int64_t run_len = (groups + runs_per_band - 1) / runs_per_band;
  const int64_t runs = (groups + run_len - 1) / run_len;
  at::parallel_for(0, g.N * runs * bands, 1, [&](int64_t begin, int64_t end) {
    tiles_configure();
    // Largest band: conv rows needed for kBandRows output rows, then their input rows.
    const int64_t conv_span = g.pool ? (kBandRows - 1) * g.ps + g.pk : kBandRows;
    const int64_t in_span = (conv_span - 1) * g.s + g.KH;
    const int64_t row = g.Wbuf * g.L;
    std::vector<uint16_t> hi(in_span * row + kTileK), lo(g.split ? in_span * row + kTileK : 0);
    const int64_t ring_rows = g.pool ? g.pk + g.ps : 1;
    const int64_t ring_row = g.TP * g.Wo * g.Co;
    std::vector<float> ring(ring_rows * ring_row);
    std::vector<float> pooled(g.pool ? g.Wq * g.Co + kTileCols : 0), vmax(g.pool ? g.Wo * g.Co : 0);
    const uint16_t* a_parts[3] = {hi.data(), hi.data(), lo.data()};
    const int64_t products = g.split ? 3 : 1;
    const bool pairs = g.ntiles == 1;  // one column tile: two conv rows share their A tiles (conv_row_pair)
    for (int64_t task = begin; task < end; ++task) {
      const int64_t band = task % bands, nr = task / bands;
      const int64_t n = nr / runs, grp0 = (nr % runs) * run_len, grp1 = std::min(groups, grp0 + run_len);
      const int64_t q0 = band * kBandRows, q1 = std::min(out_rows, q0 + kBandRows);
      const int64_t r_lo = g.pool ? std::max<int64_t>(0, q0 * g.ps - g.pp) : q0;
      const int64_t r_hi = g.pool ? std::min(g.Ho, (q1 - 1) * g.ps - g.pp + g.pk) : q1;
      const int64_t hp0 = r_lo * g.s, hp1 = (r_hi - 1) * g.s + g.KH;
      for (int64_t grp = grp0; grp < grp1; ++grp) {
        const int64_t t0 = grp * g.TP, tw = t0 - g.pt;
        const bool full = grp == grp0 || !g.slide;
        const int64_t s0 = mod(tw + g.F - g.TP, g.F);  // the slots of the TP frames this pass adds
        if (pack_rows(x, g, n, tw, full, s0, s0 + g.TP, hp0, hp1, hi.data(), g.split ? lo.data() : nullptr))
          nonfinite.store(true, std::memory_order_relaxed);
        const uint16_t* wrot = wpack + mod(tw, g.F) * parts * b_part;
        const uint16_t* b_parts[3] = {wrot, wrot + b_part, wrot};
        const int64_t frames = std::min(g.TP, g.To - t0);
        auto out_row = [&](int64_t tp, int64_t q) {
          return y + (((n * g.To + t0 + tp) * Ho_out + q) * Wo_out) * g.Co;  // channels_last_3d
        };
        if (!g.pool) {
          for (int64_t r = r_lo; r < r_hi; ++r) {
            conv_row(g, r, hp0, a_parts, b_parts, products, cols, relu, ring.data());
            for (int64_t tp = 0; tp < frames; ++tp) store(out_row(tp, r), ring.data() + tp * g.Wo * g.Co, g.Wo * g.Co);
          }
          continue;
        }
        int64_t next = r_lo;  // the next conv row to compute
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t a = std::max<int64_t>(0, q * g.ps - g.pp), b = std::min(g.Ho, q * g.ps - g.pp + g.pk);
          for (; next < b; ++next) {
            float* slot = ring.data() + (next % ring_rows) * ring_row;
            if (pairs && next + 1 < b) {
              conv_row_pair(g, next, hp0, a_parts, b_parts, products, cols, relu, slot,
                            ring.data() + ((next + 1) % ring_rows) * ring_row);
              ++next;
            } else {
              conv_row(g, next, hp0, a_parts, b_parts, products, cols, relu, slot);
            }
          }
          for (int64_t tp = 0; tp < frames; ++tp) {
            // Rows first (whole rows of Wo * Co values), then each pooled column's window (pool_columns).
            const int64_t rowlen = g.Wo * g.Co;
            std::memcpy(vmax.data(), ring.data() + (a % ring_rows) * ring_row + tp * rowlen, sizeof(float) * rowlen);
            for (int64_t rr = a + 1; rr < b; ++rr)
              nan_max_into(vmax.data(), ring.data() + (rr % ring_rows) * ring_row + tp * rowlen, rowlen);
            pool_columns(g, window, vmax.data(), pooled.data());
            store(out_row(tp, q), pooled.data(), g.Wq * g.Co);
          }
        }
      }
    }
    tiles_release();
  });
  return nonfinite.load();
}

std::vector<int64_t> ints(c10::IntArrayRef v, const char* name, size_t n) {
  SFK_CHECK(v.size() == n, name, ": expected ", n, " ints, got ", v.size());
  return v.vec();
}

at::Tensor conv3d_stem_amx_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
                               c10::IntArrayRef pool_stride, c10::IntArrayRef pool_padding, c10::string_view activation,
                               c10::string_view precision, const std::optional<at::Tensor>& nonfinite) {
  SFK_CHECK(amx_available(), "conv3d_stem_amx: this CPU (or its OS) offers no AMX-BF16 tiles");
  check_device(x, c10::DeviceType::CPU, "x");
  check_rank(x, 5, "x");
  check_rank(weight, 5, "weight");
  SFK_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
            "x: expected float32 or bfloat16, got ", x.scalar_type());
  SFK_CHECK(weight.scalar_type() == at::kFloat, "weight: expected float32, got ", weight.scalar_type());
  SFK_CHECK(weight.size(1) == x.size(1) && x.size(1) >= 1 && x.size(1) <= 4,
            "weight: expected 1 to 4 input channels matching x's ", x.size(1), ", got shape ", weight.sizes());
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected 'relu' or 'none', got '",
            std::string(activation), "'");
  SFK_CHECK(precision == "bf16" || precision == "bf16x3", "precision: expected 'bf16' or 'bf16x3', got '",
            std::string(precision), "'");
  if (nonfinite.has_value()) {
    SFK_CHECK(nonfinite->device().is_cpu() && nonfinite->scalar_type() == at::kInt && nonfinite->numel() == 1,
              "nonfinite: expected an int32 CPU tensor of one element, got ", nonfinite->scalar_type(), " ",
              nonfinite->sizes(), " on ", nonfinite->device());
  }
  const auto st = ints(stride, "stride", 3), pd = ints(padding, "padding", 3);
  SFK_CHECK(st[0] == 1 && st[1] == st[2] && (st[1] == 1 || st[1] == 2),
            "stride: expected (1, s, s) with s 1 or 2, got ", stride);
  Geometry g{};
  g.N = x.size(0), g.C = x.size(1), g.T = x.size(2), g.H = x.size(3), g.W = x.size(4);
  g.Co = weight.size(0), g.KT = weight.size(2), g.KH = weight.size(3), g.KW = weight.size(4);
  g.s = st[1], g.pt = pd[0], g.ph = pd[1], g.pw = pd[2];
  SFK_CHECK(g.Co >= 1 && g.Co <= 256, "weight: expected 1 to 256 output channels, got ", g.Co);
  SFK_CHECK(pd[0] >= 0 && pd[1] >= 0 && pd[2] >= 0 && pd[0] < g.KT && pd[1] < g.KH && pd[2] < g.KW,
            "padding: expected 0 <= padding < kernel size, got ", padding, " for kernel ", weight.sizes().slice(2));
  g.To = g.T + 2 * g.pt - g.KT + 1;
  g.Ho = (g.H + 2 * g.ph - g.KH) / g.s + 1;
  g.Wo = (g.W + 2 * g.pw - g.KW) / g.s + 1;
  SFK_CHECK(g.T + 2 * g.pt >= g.KT && g.H + 2 * g.ph >= g.KH && g.W + 2 * g.pw >= g.KW,
            "x: expected at least the kernel's extent (with padding), got shape ", x.sizes(), " for kernel ",
            weight.sizes().slice(2));
  g.pool = !pool_kernel.empty();
  if (g.pool) {
    const auto pk = ints(pool_kernel, "pool_kernel", 3), ps = ints(pool_stride, "pool_stride", 3),
               pp = ints(pool_padding, "pool_padding", 3);
    SFK_CHECK(pk[0] == 1 && ps[0] == 1 && pp[0] == 0 && pk[1] == pk[2] && ps[1] == ps[2] && pp[1] == pp[2] &&
                  pk[1] >= 1 && ps[1] >= 1 && 2 * pp[1] <= pk[1],
              "pool: expected kernel (1, k, k), stride (1, s, s), padding (0, p, p) with 2p <= k, got ", pool_kernel,
              ", ", pool_stride, ", ", pool_padding);
    g.pk = pk[1], g.ps = ps[1], g.pp = pp[1];
    g.Hq = (g.Ho + 2 * g.pp - g.pk) / g.ps + 1;
    g.Wq = (g.Wo + 2 * g.pp - g.pk) / g.ps + 1;
    SFK_CHECK(g.Ho + 2 * g.pp >= g.pk && g.Wo + 2 * g.pp >= g.pk, "pool_kernel: larger than the conv output ",
              g.Ho, "x", g.Wo);
  }
  g.sn = x.stride(0), g.sc = x.stride(1), g.st = x.stride(2), g.sh = x.stride(3), g.sw = x.stride(4);
  g.split = precision == "bf16x3";
  g.TP = g.Co < kTileCols && kTileCols % g.Co == 0 ? kTileCols / g.Co : 1;
  g.F = g.KT + g.TP - 1, g.L = (g.F * g.C + 1) / 2 * 2, g.chunk = g.KW * g.L;  // L even: pairs pack as 32-bit words
  g.ktiles = (g.chunk + kTileK - 1) / kTileK;
  // Sliding passes need the TP new frames' slots to be whole pairs of values in one piece of the ring:
  // TP * C even, the window start tw = t0 - pt a multiple of TP, and F a multiple of TP.
  g.slide = g.F > g.TP && (g.TP * g.C) % 2 == 0 && g.pt % g.TP == 0 && g.F % g.TP == 0;
  g.ncols = g.TP * g.Co <= kTileCols ? kTileCols : (g.TP * g.Co + 2 * kTileCols - 1) / (2 * kTileCols) * 2 * kTileCols;
  g.ntiles = g.ncols / kTileCols;
  g.mtiles = (g.Wo + kTileRows - 1) / kTileRows;
  // The last A tile's last row reads ktiles * 32 values from pixel s * (16 * mtiles - 1) on.
  g.Wbuf = std::max(g.W + 2 * g.pw, g.s * (kTileRows * g.mtiles - 1) + (g.ktiles * kTileK + g.L - 1) / g.L + 1);

  const at::Tensor w32 = weight.contiguous();
  const std::shared_ptr<const AlignedPack> packed = weight_pack_cache().get(w32, g);
  const uint16_t* wpack = packed->data;
  std::vector<float> b(g.Co, 0.0f);
  if (bias.has_value() && bias->defined()) {
    SFK_CHECK(bias->dim() == 1 && bias->size(0) == g.Co && bias->scalar_type() == at::kFloat,
              "bias: expected a float32 tensor of shape [", g.Co, "], got ", bias->scalar_type(), " ", bias->sizes());
    const at::Tensor bc = bias->contiguous();
    std::memcpy(b.data(), bc.data_ptr<float>(), sizeof(float) * g.Co);
  }
  const auto out_dtype = g.split ? at::kFloat : at::kBFloat16;
  at::Tensor y = at::empty({g.N, g.Co, g.To, g.pool ? g.Hq : g.Ho, g.pool ? g.Wq : g.Wo},
                           x.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast3d));
  if (y.numel() == 0) return y;
  const bool relu = activation == "relu";
  bool bad;
  if (x.scalar_type() == at::kFloat) {
    if (g.split) bad = run(g, x.data_ptr<float>(), wpack, b.data(), relu, y.data_ptr<float>());
    else bad = run(g, x.data_ptr<float>(), wpack, b.data(), relu, y.data_ptr<at::BFloat16>());
  } else {
    if (g.split) bad = run(g, x.data_ptr<at::BFloat16>(), wpack, b.data(), relu, y.data_ptr<float>());
    else bad = run(g, x.data_ptr<at::BFloat16>(), wpack, b.data(), relu, y.data_ptr<at::BFloat16>());
  }
  if (bad && nonfinite.has_value()) nonfinite->fill_(1);
  return y;
}

bool cpu_amx_available() { return amx_available(); }

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) { m.impl("conv3d_stem_amx", &conv3d_stem_amx_cpu); }
TORCH_LIBRARY_IMPL(slowfast_kernels, CompositeExplicitAutograd, m) { m.impl("cpu_amx_available", &cpu_amx_available); }

}  // namespace slowfast_kernels
