// CPU pack_pathways: decoded clip [N, V, H, W, 3] -> slow [N, 3, TS, ch, cw] and fast [N, 3, T, ch, cw].
//
// One task = a band of output rows (n, output frame, oy), parallel with at::parallel_for (OpenMP). Per row:
// the needed source row(s) are normalized and horizontally resampled into a planar float buffer (each
// source row once per band: consecutive output rows share source rows), blended vertically, converted and
// stored with the output's strides, so any layout (NCDHW, channels_last_3d, a caller's `out`) is written
// in one pass. uint8 pixels are normalized through a 256-entry table built with ATen's own arithmetic,
// so the unresized result equals the eager reference bit for bit.
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

// Source taps and weights of one output coordinate (PyTorch's bilinear, align_corners=False).
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

Taps make_taps(int64_t in_size, int64_t out_size, int64_t offset, int64_t count) {
  Taps t;
  t.i0.resize(count), t.i1.resize(count), t.w0.resize(count), t.w1.resize(count);
  const bool same = in_size == out_size;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t dst = k + offset;
    if (same) {
      t.i0[k] = t.i1[k] = dst, t.w0[k] = 1.f, t.w1[k] = 0.f;
      continue;
    }
    // fma: PyTorch's vectorized kernels contract scale * (dst + 0.5) - 0.5; one ulp in the coordinate
    // moves the result by up to 1e-5 on normalized pixels.
    float src = std::fma(scale, static_cast<float>(dst) + 0.5f, -0.5f);
    src = src < 0.f ? 0.f : src;
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in_size - 1);
    const float lam = std::min(std::max(src - static_cast<float>(i0), 0.f), 1.f);
    t.i0[k] = i0, t.i1[k] = i0 + (i0 < in_size - 1 ? 1 : 0), t.w0[k] = 1.f - lam, t.w1[k] = lam;
  }
  return t;
}

template <typename in_t>
struct Normalizer {
  float mean[3], std[3];
  inline float operator()(in_t v, int c) const { return (static_cast<float>(v) - mean[c]) / std[c]; }
};

template <>
struct Normalizer<uint8_t> {
  const float* lut;  // [3][256]
  inline float operator()(uint8_t v, int c) const { return lut[c * 256 + v]; }
};

struct Geometry {
  int64_t N, T, TS, ch, cw;
  bool resize;
  int64_t sv[5], sf[5], ss[5];  // element strides of video, fast, slow
};

template <typename in_t, typename out_t>
void pack_rows(const in_t* video, const int64_t* fast_idx, const int64_t* slow_idx, out_t* fast, out_t* slow,
               const Geometry& g, const Taps& ty, const Taps& tx, const Normalizer<in_t>& norm) {
  const int64_t frames = g.T + g.TS, rows = g.N * frames * g.ch, cw = g.cw;
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    // Planar [3][cw] buffers: two horizontally resampled source rows and the output row.
    std::vector<float> buf(9 * cw);
    float* hrow[2] = {buf.data(), buf.data() + 3 * cw};
    float* orow = buf.data() + 6 * cw;
    const in_t* cached[2] = {nullptr, nullptr};

    auto resample = [&](const in_t* src, float* dst) {
      for (int c = 0; c < 3; ++c) {
        const in_t* s = src + c * g.sv[4];
        float* d = dst + c * cw;
        if (g.resize) {
          for (int64_t x = 0; x < cw; ++x)
            d[x] = tx.w0[x] * norm(s[tx.i0[x] * g.sv[3]], c) + tx.w1[x] * norm(s[tx.i1[x] * g.sv[3]], c);
        } else {
          const int64_t sw = g.sv[3], x0 = tx.i0[0];
          for (int64_t x = 0; x < cw; ++x) d[x] = norm(s[(x0 + x) * sw], c);
        }
      }
    };
    auto source_row = [&](const in_t* src) -> const float* {
      for (int k = 0; k < 2; ++k)
        if (cached[k] == src) return hrow[k];
      // Replace the older row: output rows walk forward, so the newer one is reused next.
      std::swap(hrow[0], hrow[1]);
      std::swap(cached[0], cached[1]);
      cached[1] = src;
      resample(src, hrow[1]);
      return hrow[1];
    };

    for (int64_t r = begin; r < end; ++r) {
      const int64_t oy = r % g.ch, j = (r / g.ch) % frames, n = r / (g.ch * frames);
      const bool is_fast = j < g.T;
      const int64_t t = is_fast ? j : j - g.T;
      const int64_t f = is_fast ? fast_idx[n * g.T + t] : slow_idx[n * g.TS + t];
      const in_t* frame = video + n * g.sv[0] + f * g.sv[1];
      // Resampling `bot` may evict a slot, never the one holding `top` (slots swap pointers, not data).
      const float* top = source_row(frame + ty.i0[oy] * g.sv[2]);
      const float* row = top;
      if (g.resize) {
        const float* bot = source_row(frame + ty.i1[oy] * g.sv[2]);
        const float w0 = ty.w0[oy], w1 = ty.w1[oy];
        for (int64_t k = 0; k < 3 * cw; ++k) orow[k] = w0 * top[k] + w1 * bot[k];
        row = orow;
      }
      const int64_t* so = is_fast ? g.sf : g.ss;
      out_t* dst = (is_fast ? fast : slow) + n * so[0] + t * so[2] + oy * so[3];
      for (int c = 0; c < 3; ++c) {
        out_t* d = dst + c * so[1];
        const float* s = row + c * cw;
        if (so[4] == 1) {
          for (int64_t x = 0; x < cw; ++x) d[x] = static_cast<out_t>(s[x]);
        } else {
          for (int64_t x = 0; x < cw; ++x) d[x * so[4]] = static_cast<out_t>(s[x]);
        }
      }
    }
  });
}

void check_index(const at::Tensor& idx, int64_t N, int64_t V, const char* name, c10::DeviceType device) {
  check_device(idx, device, name);
  check_rank(idx, 2, name);
  SFK_CHECK(idx.scalar_type() == at::kLong, name, ": expected int64, got ", idx.scalar_type());
  SFK_CHECK(idx.size(0) == N && idx.size(1) >= 1, name, ": expected [N=", N, ", T >= 1], got ", idx.sizes());
  // Device indices are range-checked by the Python entry point: a check here would synchronize.
  if (device != c10::DeviceType::CPU) return;
  const at::Tensor c = idx.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t k = 0; k < c.numel(); ++k)
    SFK_CHECK(p[k] >= 0 && p[k] < V, name, ": frame index ", p[k], " is outside the video's [0, ", V, ")");
}

template <typename in_t>
void dispatch_out(const at::Tensor& video, const at::Tensor& fi, const at::Tensor& si, at::Tensor& slow,
                  at::Tensor& fast, const Geometry& g, const Taps& ty, const Taps& tx,
                  const Normalizer<in_t>& norm) {
  const in_t* v = static_cast<const in_t*>(video.data_ptr());
  const int64_t *f = fi.data_ptr<int64_t>(), *s = si.data_ptr<int64_t>();
  switch (fast.scalar_type()) {
    case at::kFloat:
      return pack_rows(v, f, s, fast.data_ptr<float>(), slow.data_ptr<float>(), g, ty, tx, norm);
    case at::kBFloat16:
      return pack_rows(v, f, s, fast.data_ptr<c10::BFloat16>(), slow.data_ptr<c10::BFloat16>(), g, ty, tx, norm);
    case at::kHalf:
      return pack_rows(v, f, s, fast.data_ptr<c10::Half>(), slow.data_ptr<c10::Half>(), g, ty, tx, norm);
    default:
      SFK_CHECK(false, "fast/slow: expected float32, bfloat16 or float16, got ", fast.scalar_type());
  }
}

template <typename in_t>
Normalizer<in_t> float_normalizer(c10::ArrayRef<double> mean, c10::ArrayRef<double> std) {
  Normalizer<in_t> n;
  for (int c = 0; c < 3; ++c) n.mean[c] = static_cast<float>(mean[c]), n.std[c] = static_cast<float>(std[c]);
  return n;
}

}  // namespace

// Shared with csrc/cuda/pack_pathways.cu: both devices accept and reject the same arguments.
void pack_pathways_validate(const at::Tensor& video, const at::Tensor& fast_index, const at::Tensor& slow_index,
                            c10::IntArrayRef resized, c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                            c10::ArrayRef<double> std, const at::Tensor& slow, const at::Tensor& fast,
                            c10::DeviceType device) {
  check_rank(video, 5, "video");
  check_device(video, device, "video");
  SFK_CHECK(video.size(4) == 3, "video: expected [N, V, H, W, 3], got ", video.sizes());
  const int64_t N = video.size(0), V = video.size(1);
  SFK_CHECK(resized.size() == 2 && resized[0] >= 1 && resized[1] >= 1, "resized: expected (h, w) >= 1, got ",
            resized);
  SFK_CHECK(crop_box.size() == 4, "crop_box: expected (y0, x0, h, w), got ", crop_box);
  const int64_t y0 = crop_box[0], x0 = crop_box[1], ch = crop_box[2], cw = crop_box[3];
  SFK_CHECK(y0 >= 0 && x0 >= 0 && ch >= 1 && cw >= 1 && y0 + ch <= resized[0] && x0 + cw <= resized[1],
            "crop_box: ", crop_box, " does not fit the resized ", resized, " frame");
  SFK_CHECK(mean.size() == 3 && std.size() == 3, "mean/std: expected 3 values each, got ", mean.size(), " and ",
            std.size());
  for (int c = 0; c < 3; ++c) SFK_CHECK(std[c] != 0.0, "std: expected non-zero values, got ", std);
  check_index(fast_index, N, V, "fast_index", device);
  check_index(slow_index, N, V, "slow_index", device);
  const int64_t T = fast_index.size(1), TS = slow_index.size(1);
  for (const auto& [t, name, frames] : {std::make_tuple(&fast, "fast", T), std::make_tuple(&slow, "slow", TS)}) {
    check_device(*t, device, name);
    const std::vector<int64_t> want{N, 3, frames, ch, cw};
    SFK_CHECK(t->sizes() == c10::IntArrayRef(want), name, ": expected shape ", c10::IntArrayRef(want), ", got ",
              t->sizes());
    SFK_CHECK(t->device() == video.device(), name, " is on ", t->device(), ", video on ", video.device());
  }
  check_same_dtype(fast, slow, "fast", "slow");
  const auto out = fast.scalar_type();
  SFK_CHECK(out == at::kFloat || out == at::kBFloat16 || out == at::kHalf,
            "fast/slow: expected float32, bfloat16 or float16, got ", out);
  const auto in = video.scalar_type();
  SFK_CHECK(in == at::kByte || in == at::kFloat || in == at::kBFloat16 || in == at::kHalf,
            "video: expected uint8, float32, float16 or bfloat16, got ", in);
}

std::tuple<at::Tensor, at::Tensor> pack_pathways_empty(const at::Tensor& video, const at::Tensor& fast_index,
                                                       const at::Tensor& slow_index, c10::IntArrayRef crop_box,
                                                       at::ScalarType dtype, bool channels_last) {
  check_rank(video, 5, "video");
  check_rank(fast_index, 2, "fast_index");
  check_rank(slow_index, 2, "slow_index");
  SFK_CHECK(crop_box.size() == 4, "crop_box: expected (y0, x0, h, w), got ", crop_box);
  const auto opts = video.options().dtype(dtype);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
  const int64_t N = video.size(0), ch = crop_box[2], cw = crop_box[3];
  return {at::empty({N, 3, slow_index.size(1), ch, cw}, opts, fmt),
          at::empty({N, 3, fast_index.size(1), ch, cw}, opts, fmt)};
}

namespace {

void pack_pathways_into_cpu(const at::Tensor& video, const at::Tensor& fast_index, const at::Tensor& slow_index,
                            c10::IntArrayRef resized, c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                            c10::ArrayRef<double> std, const at::Tensor& slow, const at::Tensor& fast) {
  pack_pathways_validate(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast,
                         c10::DeviceType::CPU);
  const int64_t N = video.size(0), H = video.size(2), W = video.size(3);
  const int64_t T = fast_index.size(1), TS = slow_index.size(1);
  const int64_t y0 = crop_box[0], x0 = crop_box[1], ch = crop_box[2], cw = crop_box[3];
  Geometry g{N, T, TS, ch, cw, resized[0] != H || resized[1] != W, {}, {}, {}};
  for (int d = 0; d < 5; ++d) g.sv[d] = video.stride(d), g.sf[d] = fast.stride(d), g.ss[d] = slow.stride(d);
  const Taps ty = make_taps(H, resized[0], y0, ch), tx = make_taps(W, resized[1], x0, cw);
  const at::Tensor fi = fast_index.contiguous(), si = slow_index.contiguous();
  at::Tensor f = fast, s = slow;
  switch (video.scalar_type()) {
    case at::kByte: {
      const auto opts = at::TensorOptions().dtype(at::kFloat);
      const at::Tensor m = at::tensor(std::vector<double>(mean.begin(), mean.end())).to(at::kFloat);
      const at::Tensor sd = at::tensor(std::vector<double>(std.begin(), std.end())).to(at::kFloat);
      // The reference's own ops ((x / 255 - mean) / std on float32), evaluated once per pixel value.
      const at::Tensor lut = ((at::arange(256, opts) / 255.0).unsqueeze(0) - m.unsqueeze(1)) / sd.unsqueeze(1);
      const at::Tensor table = lut.contiguous();
      Normalizer<uint8_t> norm{table.data_ptr<float>()};
      return dispatch_out<uint8_t>(video, fi, si, s, f, g, ty, tx, norm);
    }
    case at::kFloat:
      return dispatch_out<float>(video, fi, si, s, f, g, ty, tx, float_normalizer<float>(mean, std));
    case at::kHalf:
      return dispatch_out<c10::Half>(video, fi, si, s, f, g, ty, tx, float_normalizer<c10::Half>(mean, std));
    case at::kBFloat16:
      return dispatch_out<c10::BFloat16>(video, fi, si, s, f, g, ty, tx,
                                         float_normalizer<c10::BFloat16>(mean, std));
    default:
      SFK_CHECK(false, "video: expected uint8, float32, float16 or bfloat16, got ", video.scalar_type());
  }
}

std::tuple<at::Tensor, at::Tensor> pack_pathways_cpu(const at::Tensor& video, const at::Tensor& fast_index,
                                                     const at::Tensor& slow_index, c10::IntArrayRef resized,
                                                     c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                                                     c10::ArrayRef<double> std, at::ScalarType dtype,
                                                     bool channels_last) {
  auto [slow, fast] = pack_pathways_empty(video, fast_index, slow_index, crop_box, dtype, channels_last);
  pack_pathways_into_cpu(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast);
  return {slow, fast};
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("pack_pathways", &pack_pathways_cpu);
  m.impl("pack_pathways_into", &pack_pathways_into_cpu);
}

}  // namespace slowfast_kernels
