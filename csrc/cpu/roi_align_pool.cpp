// CPU roi_align_pool: the RoI feature of every box over several pathways, [K, sum C] float32.
//
// Per pathway [N, C, T, H, W] (any strides, float32 / bfloat16 / float16):
//   1. the temporal pool (mean or max over T) into an fp32 [N, H, W, C] map: the feature is read once, and
//      the RoI loop then reads C contiguous floats per bilinear corner (a vectorizable inner loop);
//   2. per box (parallel over boxes): torchvision's RoIAlign sampling (roi_align_kernel.cpp: the 0.5 offset
//      when aligned, the size clamp to 1 when not, ceil(size / bins) samples when sampling_ratio <= 0,
//      zero outside [-1, H] x [-1, W], clamping at the last row / column), each bin the mean of its
//      samples, and the running max over the bins written to out[k, offset:offset + C].
// The time pool commutes with the bilinear sampling for "avg" (both linear); for "max" it comes first,
// as in MMAction2's extractor.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

// max(a, b) that keeps NaN from either side, as torch's max / amax (std::max(a, NaN) returns a).
inline float max_keep_nan(float a, float b) { return (b > a || std::isnan(b)) ? b : a; }

template <typename scalar_t>
void temporal_pool(const at::Tensor& x, bool take_max, float* map) {
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2), s3 = x.stride(3), s4 = x.stride(4);
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  const float inv_t = 1.0f / static_cast<float>(T);
  at::parallel_for(0, N * H * W, std::max<int64_t>(1, 4096 / std::max<int64_t>(C * T, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (H * W), h = (p / W) % H, w = p % W;
      float* row = map + p * C;
      const scalar_t* base = src + n * s0 + h * s3 + w * s4;
      for (int64_t c = 0; c < C; ++c) row[c] = take_max ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* frame = base + t * s2;
        if (take_max) {
          for (int64_t c = 0; c < C; ++c) row[c] = max_keep_nan(row[c], static_cast<float>(frame[c * s1]));
        } else {
          for (int64_t c = 0; c < C; ++c) row[c] += static_cast<float>(frame[c * s1]);
        }
      }
      if (!take_max) {
        for (int64_t c = 0; c < C; ++c) row[c] *= inv_t;
      }
    }
  });
}

// One bilinear sample: up to four (row offset, weight) pairs into the [H, W, C] map of one image.
struct Sample {
  int64_t offset[4];
  float weight[4];
  bool valid;
};

Sample bilinear_sample(float y, float x, int64_t H, int64_t W, int64_t C) {
  Sample s{};
  if (y < -1.0f || y > static_cast<float>(H) || x < -1.0f || x > static_cast<float>(W)) {
    s.valid = false;
    return s;
  }
  s.valid = true;
  y = std::max(y, 0.0f);
  x = std::max(x, 0.0f);
  int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
  if (y_low >= H - 1) {
    y_high = y_low = H - 1;
    y = static_cast<float>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= W - 1) {
    x_high = x_low = W - 1;
    x = static_cast<float>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const float ly = y - static_cast<float>(y_low), lx = x - static_cast<float>(x_low);
  const float hy = 1.0f - ly, hx = 1.0f - lx;
  s.offset[0] = (y_low * W + x_low) * C;
  s.offset[1] = (y_low * W + x_high) * C;
  s.offset[2] = (y_high * W + x_low) * C;
  s.offset[3] = (y_high * W + x_high) * C;
  s.weight[0] = hy * hx;
  s.weight[1] = hy * lx;
  s.weight[2] = ly * hx;
  s.weight[3] = ly * lx;
  return s;
}

void pool_boxes(const float* map, const float* boxes, int64_t K, int64_t H, int64_t W, int64_t C,
                int64_t pooled_h, int64_t pooled_w, float spatial_scale, int64_t sampling_ratio, bool aligned,
                float* out, int64_t out_stride, int64_t out_offset) {
  at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(C), best(C);
    for (int64_t k = begin; k < end; ++k) {
      const float* box = boxes + k * 5;
      const int64_t b = static_cast<int64_t>(box[0]);
      const float offset = aligned ? 0.5f : 0.0f;
      const float x1 = box[1] * spatial_scale - offset, y1 = box[2] * spatial_scale - offset;
      const float x2 = box[3] * spatial_scale - offset, y2 = box[4] * spatial_scale - offset;
      float roi_w = x2 - x1, roi_h = y2 - y1;
      if (!aligned) {  // torchvision: malformed boxes become 1x1
        roi_w = std::max(roi_w, 1.0f);
        roi_h = std::max(roi_h, 1.0f);
      }
      const float bin_h = roi_h / static_cast<float>(pooled_h), bin_w = roi_w / static_cast<float>(pooled_w);
      const int64_t grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_h / pooled_h));
      const int64_t grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_w / pooled_w));
      const float inv_count = 1.0f / static_cast<float>(std::max<int64_t>(grid_h * grid_w, 1));
      const float* image = map + b * H * W * C;
      std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t iy = 0; iy < grid_h; ++iy) {
            const float y = y1 + ph * bin_h + (iy + 0.5f) * bin_h / static_cast<float>(grid_h);
            for (int64_t ix = 0; ix < grid_w; ++ix) {
              const float x = x1 + pw * bin_w + (ix + 0.5f) * bin_w / static_cast<float>(grid_w);
              const Sample s = bilinear_sample(y, x, H, W, C);
              if (!s.valid) continue;
              const float *p0 = image + s.offset[0], *p1 = image + s.offset[1];
              const float *p2 = image + s.offset[2], *p3 = image + s.offset[3];
              for (int64_t c = 0; c < C; ++c) {
                acc[c] += s.weight[0] * p0[c] + s.weight[1] * p1[c] + s.weight[2] * p2[c] + s.weight[3] * p3[c];
              }
            }
          }
          for (int64_t c = 0; c < C; ++c) best[c] = max_keep_nan(best[c], acc[c] * inv_count);
        }
      }
      std::copy(best.begin(), best.end(), out + k * out_stride + out_offset);
    }
  });
}

}  // namespace

at::Tensor roi_align_pool_cpu(at::TensorList features, const at::Tensor& boxes, int64_t pooled_h, int64_t pooled_w,
                              double spatial_scale, int64_t sampling_ratio, bool aligned,
                              c10::string_view temporal_pool_mode) {
  SFK_CHECK(!features.empty(), "features: expected at least one [N, C, T, H, W] tensor");
  SFK_CHECK(temporal_pool_mode == "avg" || temporal_pool_mode == "max", "temporal_pool: expected avg or max, got '",
            temporal_pool_mode, "'");
  SFK_CHECK(pooled_h >= 1 && pooled_w >= 1, "output_size: expected positive sizes, got (", pooled_h, ", ", pooled_w,
            ")");
  check_rank(boxes, 2, "boxes");
  check_device(boxes, c10::DeviceType::CPU, "boxes");
  SFK_CHECK(boxes.size(1) == 5 && boxes.scalar_type() == at::kFloat,
            "boxes: expected a float32 [K, 5] tensor, got ", boxes.scalar_type(), " ", boxes.sizes());
  const at::Tensor& first = features[0];
  int64_t total = 0;
  for (size_t i = 0; i < features.size(); ++i) {
    const at::Tensor& f = features[i];
    check_rank(f, 5, "features");
    check_device(f, c10::DeviceType::CPU, "features");
    const auto dt = f.scalar_type();
    SFK_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "features: expected float32, bfloat16 or float16, got ", dt);
    SFK_CHECK(f.size(0) == first.size(0) && f.size(3) == first.size(3) && f.size(4) == first.size(4),
              "features: pathway ", i, " is ", f.sizes(), ", pathway 0 ", first.sizes(), ": N, H, W must match");
    SFK_CHECK(f.size(2) >= 1 && f.size(3) >= 1 && f.size(4) >= 1, "features: empty T, H or W in pathway ", i);
    total += f.size(1);
  }
  const int64_t K = boxes.size(0), N = first.size(0), H = first.size(3), W = first.size(4);
  at::Tensor out = at::empty({K, total}, first.options().dtype(at::kFloat));
  if (K == 0 || total == 0) return out;
  const at::Tensor box = boxes.contiguous();
  const float* box_ptr = box.const_data_ptr<float>();
  for (int64_t k = 0; k < K; ++k) {
    const float b = box_ptr[k * 5];
    SFK_CHECK(b >= 0 && b < N && b == std::floor(b), "boxes: row ", k, " has batch index ", b,
              ", expected an integer in [0, ", N, ")");
  }
  const bool take_max = temporal_pool_mode == "max";
  int64_t offset = 0;
  for (const at::Tensor& f : features) {
    const int64_t C = f.size(1);
    std::vector<float> map(static_cast<size_t>(N * H * W * C));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, f.scalar_type(), "roi_align_pool_cpu", [&] {
      temporal_pool<scalar_t>(f, take_max, map.data());
    });
    pool_boxes(map.data(), box_ptr, K, H, W, C, pooled_h, pooled_w, static_cast<float>(spatial_scale), sampling_ratio,
               aligned, out.mutable_data_ptr<float>(), total, offset);
    offset += C;
  }
  return out;
}

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("roi_align_pool", &roi_align_pool_cpu);
}

}  // namespace slowfast_kernels
