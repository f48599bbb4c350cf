// CUDA device code of lateral_fuse, free of torch so it compiles standalone (csrc/cuda/standalone/).
//
// lateral_copy_kernel: the copy modes as a gather into the buffer's lateral slice, one thread per
//   destination element; the linear index runs channel-fastest when the destination's channels are
//   contiguous (channels_last_3d) and width-fastest otherwise (NCDHW), so stores coalesce in both.
// lateral_conv_kernel: time_strided_conv as an implicit GEMM, 64 voxels x 64 output channels per
//   block, reduction over (k, c_in) in steps of 16 through shared memory, fp32 accumulation; bias,
//   ReLU and the sum fusion in the epilogue, stored into the slice with its strides.
// Offsets are int64 throughout: the buffers pass 2**31 elements at batch 64.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "numeric.cuh"

namespace slowfast_kernels {
namespace lateral {

enum Map : int { kTimeToChannel = 0, kTimeStridedSampling = 1 };

struct Strides5 {
  int64_t s[5];
};

// dst [N, C, T, H, W] (the lateral slice, or the whole output for sum) (+)= gathered fast values.
template <typename T, bool ACC>
__global__ void lateral_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t total, int64_t C,
                                    int64_t Tn, int64_t H, int64_t W, int64_t alpha, int map, bool channels_inner,
                                    Strides5 ss, Strides5 ds) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, j, t, h, w, r = i;
    if (channels_inner) {
      j = r % C; r /= C;
      w = r % W; r /= W;
      h = r % H; r /= H;
      t = r % Tn; n = r / Tn;
    } else {
      w = r % W; r /= W;
      h = r % H; r /= H;
      t = r % Tn; r /= Tn;
      j = r % C; n = r / C;
    }
    int64_t c = j, tf = t * alpha;
    if (map == kTimeToChannel) {
      c = j / alpha;
      tf += j % alpha;
    }
    const T v = src[n * ss.s[0] + c * ss.s[1] + tf * ss.s[2] + h * ss.s[3] + w * ss.s[4]];
    T* d = dst + n * ds.s[0] + j * ds.s[1] + t * ds.s[2] + h * ds.s[3] + w * ds.s[4];
    *d = ACC ? from_float<T>(to_float(*d) + to_float(v)) : v;
  }
}

constexpr int kConvBM = 64, kConvBN = 64, kConvBK = 16, kConvThreads = 256;

// Output voxel p = ((n * T + t) * H + h) * W + w, output channel o:
//   y[p, o] = act(bias[o] + sum_{k, c} x[n, c, t * alpha + k - pad, h, w] * w[o, c, k]) (+ dst[p, o] for sum).
template <typename T, bool HAS_BIAS, bool RELU, bool ACC>
__global__ void __launch_bounds__(kConvThreads)
lateral_conv_kernel(const T* __restrict__ x, const T* __restrict__ wt, const T* __restrict__ bias, T* __restrict__ dst,
                    int64_t P, int64_t CO, int64_t CI, int64_t K, int64_t Tn, int64_t Tf, int64_t H, int64_t W,
                    int64_t alpha, int64_t pad, Strides5 xs, Strides5 ws, Strides5 ds) {
  __shared__ float As[kConvBK][kConvBM];
  __shared__ float Bs[kConvBK][kConvBN];
  const int tid = threadIdx.x;
  const int64_t p0 = blockIdx.x * static_cast<int64_t>(kConvBM);
  const int64_t o0 = blockIdx.y * static_cast<int64_t>(kConvBN);
  const int tx = tid % 16, ty = tid / 16;  // thread computes rows ty*4.., columns tx*4..
  float acc[4][4] = {};

  // Each thread loads 4 A and 4 B elements per step; A: row = tid % 64 (voxel), kk = tid / 64 + 4 * q.
  const int a_row = tid % kConvBM, a_k0 = tid / kConvBM;
  const int64_t pa = p0 + a_row;
  int64_t a_n = 0, a_t = 0, a_h = 0, a_w = 0;
  if (pa < P) {
    int64_t r = pa;
    a_w = r % W; r /= W;
    a_h = r % H; r /= H;
    a_t = r % Tn; a_n = r / Tn;
  }
  const int64_t a_base = a_n * xs.s[0] + a_h * xs.s[3] + a_w * xs.s[4];
  const int b_col = tid % kConvBN, b_k0 = tid / kConvBN;
  const int64_t R = K * CI;

  for (int64_t r0 = 0; r0 < R; r0 += kConvBK) {
#pragma unroll
    for (int q = 0; q < kConvBK / 4; ++q) {
      const int kk = a_k0 + 4 * q;
      const int64_t r = r0 + kk;
      float av = 0.f;
      if (pa < P && r < R) {
        const int64_t k = r / CI, c = r % CI, tf = a_t * alpha + k - pad;
        if (tf >= 0 && tf < Tf) av = to_float(x[a_base + c * xs.s[1] + tf * xs.s[2]]);
      }
      As[kk][a_row] = av;
      const int kb = b_k0 + 4 * q;
      const int64_t rb = r0 + kb, o = o0 + b_col;
      float bv = 0.f;
      if (rb < R && o < CO) bv = to_float(wt[o * ws.s[0] + (rb % CI) * ws.s[1] + (rb / CI) * ws.s[2]]);
      Bs[kb][b_col] = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kConvBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i) b[i] = Bs[kk][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t p = p0 + ty * 4 + i;
    if (p >= P) continue;
    int64_t r = p;
    const int64_t w = r % W; r /= W;
    const int64_t h = r % H; r /= H;
    const int64_t t = r % Tn, n = r / Tn;
    T* row = dst + n * ds.s[0] + t * ds.s[2] + h * ds.s[3] + w * ds.s[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + tx * 4 + j;
      if (o >= CO) continue;
      float v = acc[i][j];
      if (HAS_BIAS) v += to_float(bias[o]);
      if (RELU) v = v > 0.f ? v : 0.f;
      T* d = row + o * ds.s[1];
      if (ACC) v += to_float(*d);
      *d = from_float<T>(v);
    }
  }
}

}  // namespace lateral
}  // namespace slowfast_kernels
