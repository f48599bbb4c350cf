// CUDA device code of pack_pathways, free of torch so it compiles standalone (csrc/cuda/standalone/).
//
// One thread per output pixel of one output frame (all 3 channels), blocks never straddle frames, so
// the frame's source index is one broadcast load. The thread normalizes its source taps (uint8 through a
// 256-entry table per channel in shared memory), blends them with PyTorch's bilinear weights when the
// clip is resized, and stores the 3 channels with the output's strides: consecutive threads write
// consecutive x, so NCDHW stores coalesce per channel plane and channels_last_3d stores per 3 channels.
// Offsets are int64: a batch of 64 clips of 32x256x256 passes 2**31 bytes.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "numeric.cuh"

namespace slowfast_kernels {
namespace pack {

constexpr int kThreads = 256;

struct Params {
  int64_t T, TS, H, W, ch, cw, y0, x0, blocks_per_frame;
  float scale_h, scale_w;  // input / output size, as float32 (PyTorch's area_pixel_compute_scale)
  bool resize;
  int64_t sv[5], sf[5], ss[5];  // element strides: video [N, V, H, W, 3], fast and slow [N, 3, T, h, w]
  float mean[3], stdev[3];
};

// area_pixel_compute_source_index (align_corners=False) + guard_index_and_lambda, as PyTorch's CUDA
// upsample evaluates them (the coordinate fma-contracted).
__device__ __forceinline__ void source_taps(int64_t dst, float scale, int64_t size, int64_t& i0, int64_t& i1,
                                            float& w0, float& w1) {
  float src = __fmaf_rn(scale, static_cast<float>(dst) + 0.5f, -0.5f);
  src = src < 0.f ? 0.f : src;
  i0 = min(static_cast<int64_t>(floorf(src)), size - 1);
  w1 = fminf(fmaxf(src - static_cast<float>(i0), 0.f), 1.f);
  w0 = 1.f - w1;
  i1 = i0 + (i0 < size - 1 ? 1 : 0);
}

template <typename In>
__device__ __forceinline__ float normalize(const In* p, int c, const float* lut, const Params& prm) {
  if constexpr (std::is_same<In, uint8_t>::value) {
    return lut[c * 256 + *p];
  } else {
    return __fdiv_rn(__fsub_rn(to_float(*p), prm.mean[c]), prm.stdev[c]);
  }
}

template <typename In, typename Out>
__global__ void __launch_bounds__(kThreads) pack_pathways_kernel(const In* __restrict__ video,
                                                                 const int64_t* __restrict__ fast_idx,
                                                                 const int64_t* __restrict__ slow_idx,
                                                                 Out* __restrict__ fast, Out* __restrict__ slow,
                                                                 Params p) {
  __shared__ float lut[3 * 256];
  if constexpr (std::is_same<In, uint8_t>::value) {
    // The reference's ops on CUDA: x / 255.0 (a multiply by the reciprocal), - mean, / std, unfused.
    for (int k = threadIdx.x; k < 3 * 256; k += blockDim.x) {
      const int c = k / 256;
      const float x = __fmul_rn(static_cast<float>(k % 256), 1.0f / 255.0f);
      lut[k] = __fdiv_rn(__fsub_rn(x, p.mean[c]), p.stdev[c]);
    }
    __syncthreads();
  }
  const int64_t frames = p.T + p.TS;
  const int64_t frame = static_cast<int64_t>(blockIdx.x) / p.blocks_per_frame;
  const int64_t pixel = (static_cast<int64_t>(blockIdx.x) % p.blocks_per_frame) * kThreads + threadIdx.x;
  if (pixel >= p.ch * p.cw) return;
  const int64_t n = frame / frames, j = frame % frames;
  const bool is_fast = j < p.T;
  const int64_t t = is_fast ? j : j - p.T;
  const int64_t src_t = is_fast ? fast_idx[n * p.T + t] : slow_idx[n * p.TS + t];
  const In* base = video + n * p.sv[0] + src_t * p.sv[1];
  const int64_t oy = pixel / p.cw, ox = pixel % p.cw;

  float val[3];
  if (p.resize) {
    int64_t y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
    source_taps(oy + p.y0, p.scale_h, p.H, y0, y1, wy0, wy1);
    source_taps(ox + p.x0, p.scale_w, p.W, x0, x1, wx0, wx1);
    const In* r0 = base + y0 * p.sv[2];
    const In* r1 = base + y1 * p.sv[2];
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const int64_t co = c * p.sv[4];
      const float top = wx0 * normalize(r0 + x0 * p.sv[3] + co, c, lut, p) +
                        wx1 * normalize(r0 + x1 * p.sv[3] + co, c, lut, p);
      const float bot = wx0 * normalize(r1 + x0 * p.sv[3] + co, c, lut, p) +
                        wx1 * normalize(r1 + x1 * p.sv[3] + co, c, lut, p);
      val[c] = wy0 * top + wy1 * bot;
    }
  } else {
    const In* px = base + (oy + p.y0) * p.sv[2] + (ox + p.x0) * p.sv[3];
#pragma unroll
    for (int c = 0; c < 3; ++c) val[c] = normalize(px + c * p.sv[4], c, lut, p);
  }
  const int64_t* so = is_fast ? p.sf : p.ss;
  Out* dst = (is_fast ? fast : slow) + n * so[0] + t * so[2] + oy * so[3] + ox * so[4];
#pragma unroll
  for (int c = 0; c < 3; ++c) dst[c * so[1]] = from_float<Out>(val[c]);
}

// Launches the kernel over N clips; the caller has validated shapes, strides and index ranges.
template <typename In, typename Out>
cudaError_t launch_pack_pathways(const In* video, const int64_t* fast_idx, const int64_t* slow_idx, Out* fast,
                                 Out* slow, Params p, int64_t N, cudaStream_t stream) {
  p.blocks_per_frame = (p.ch * p.cw + kThreads - 1) / kThreads;
  const int64_t blocks = N * (p.T + p.TS) * p.blocks_per_frame;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  pack_pathways_kernel<In, Out><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(video, fast_idx, slow_idx,
                                                                                       fast, slow, p);
  return cudaGetLastError();
}

}  // namespace pack
}  // namespace slowfast_kernels
