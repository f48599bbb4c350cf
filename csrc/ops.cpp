// The schema of every native slowfast_kernels op, defined once. Device implementations register
// themselves with TORCH_LIBRARY_IMPL in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake (meta)
// implementations and autograd live in slowfast_kernels/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(slowfast_kernels, m) {
  // Fast -> Slow lateral connection written into channel slices of one [N, Cs + Cl, T, H, W] buffer.
  // mode: time_to_channel | time_strided_sampling | time_strided_conv; fusion: concat | sum.
  // (`lateral` is the public `mode`: an argument named `mode` breaks torch.compile's AOT dispatch.)
  m.def(
      "lateral_fuse(Tensor slow, Tensor fast, str lateral, int alpha, Tensor? weight, Tensor? bias, "
      "str fusion, str activation) -> Tensor");
  // The same into a caller's buffer (the slow part is skipped when `slow` already is that part of out).
  m.def(
      "lateral_fuse_out(Tensor slow, Tensor fast, str lateral, int alpha, Tensor? weight, Tensor? bias, "
      "str fusion, str activation, Tensor(a!) out) -> ()");
  // Decoded clip [N, V, H, W, 3] -> (slow, fast) [N, 3, T, ch, cw] in one pass: temporal gather by the
  // [N, T] indices, bilinear resize to `resized` (h, w), crop_box (y0, x0, ch, cw), (x[/255] - mean) / std.
  m.def(
      "pack_pathways(Tensor video, Tensor fast_index, Tensor slow_index, int[] resized, int[] crop_box, "
      "float[] mean, float[] std, ScalarType dtype, bool channels_last) -> (Tensor, Tensor)");
  // The same into preallocated outputs of any strides.
  m.def(
      "pack_pathways_into(Tensor video, Tensor fast_index, Tensor slow_index, int[] resized, int[] crop_box, "
      "float[] mean, float[] std, Tensor(a!) slow, Tensor(b!) fast) -> ()");
  // Conv3d with BN folded into weight/bias, then + residual, activation (relu | none); output in the
  // dtype and memory format of x. CPU: oneDNN fused conv; CUDA: cuDNN fused conv.
  m.def(
      "conv3d_bn_act(Tensor x, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, int[3] dilation, "
      "Tensor? residual, str activation) -> Tensor");
  // CPU conv3d for 1 to 4 input channels (the stems; csrc/cpu/conv3d_small_cin.cpp): fp32, stride (1, s, s)
  // with s 1 or 2, dilation 1, + bias, activation (relu | none); any x layout in, channels_last_3d out.
  // portable: skip the AVX-512 path (tests compare both).
  m.def(
      "conv3d_small_cin(Tensor x, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, str activation, "
      "bool portable=False) -> Tensor");
  // The same in bf16 on AVX512_BF16 (a CPU without AMX): x float32 or bfloat16 in any layout, rounded to bf16,
  // stride (1, 2, 2), fp32 accumulation, bfloat16 channels_last_3d out.
  m.def(
      "conv3d_small_cin_bf16(Tensor x, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, str activation) "
      "-> Tensor");
  // The stems on AMX (csrc/cpu/conv3d_stem_amx.cpp): conv3d for 1 to 4 input channels, stride (1, s, s) with s
  // 1 or 2, + bias, activation (relu | none), then (pool_kernel not empty) max_pool3d with kernel (1, k, k),
  // stride (1, s, s), padding (0, p, p); x float32 or bfloat16 in any layout, out channels_last_3d.
  // precision bf16 (bf16 out) | bf16x3 (float32 accuracy and output). Finite x only: nonfinite (an int32
  // [1] tensor, or None) is set to 1 when a value it packed (every value a window reads, and the rest of
  // their rows) is NaN or inf once rounded to bf16 (the output is then not the conv's). cpu_amx_available:
  // the CPU and OS allow AMX-BF16 tiles in this process.
  m.def(
      "conv3d_stem_amx(Tensor x, Tensor weight, Tensor? bias, int[3] stride, int[3] padding, int[] pool_kernel, "
      "int[] pool_stride, int[] pool_padding, str activation, str precision, Tensor(a!)? nonfinite=None) -> Tensor");
  m.def("cpu_amx_available() -> bool");
  // CPU max_pool3d (csrc/cpu/max_pool3d_cl.cpp), the stems' pool where no AMX kernel fuses it: x float32 or
  // bfloat16 [N, C, T, H, W] in any layout (read as channels_last_3d), out channels_last_3d; torch's semantics
  // (-inf padding of at most half the kernel, NaN propagates, ceil_mode False, dilation 1), no indices.
  m.def("max_pool3d_cl(Tensor x, int[3] kernel, int[3] stride, int[3] padding) -> Tensor");
  // CPU temporal conv (3x1x1, stride 1, padding (1, 0, 0)) by Winograd F(4, 3) along time
  // (csrc/cpu/conv3d_winograd_time.cpp): the filter transformed once, then act(conv + bias + residual),
  // fp32, channels_last_3d out.
  m.def("conv3d_winograd_time_weight(Tensor weight) -> Tensor");
  m.def("conv3d_winograd_time(Tensor x, Tensor packed, Tensor? bias, str activation, Tensor? residual) -> Tensor");
  // Its two halves, for runners that do the 6 GEMMs themselves: x -> V [6, R, C], and the 6 products
  // [R, C_out] -> out [N, C_out, T, H, W] = act(A^T M + bias + residual) (residual may be out itself).
  m.def("winograd_time_input(Tensor x) -> Tensor");
  m.def("winograd_time_output(Tensor[] m, Tensor? bias, str activation, Tensor? residual, Tensor(a!) out) -> ()");
  // Its bf16 form by F(2, 3) (csrc/cpu/conv3d_winograd_time_bf16.cpp): weight -> U [4, C_in, C_out] float32;
  // bf16 x -> V [4, R, C] bf16; the 4 bf16 products [R, C_out] -> bf16 out (residual bf16, may be out itself);
  // portable: the scalar transforms instead of the AVX-512 ones (for tests: both must agree bit for bit).
  m.def("winograd_time_f2_weight(Tensor weight) -> Tensor");
  m.def("winograd_time_input_bf16(Tensor x, bool portable=False) -> Tensor");
  m.def("winograd_time_output_bf16(Tensor[] m, Tensor? bias, str activation, Tensor? residual, bool portable, "
        "Tensor(a!) out) -> ()");
  // CPU Winograd conv for 1x3x3 kernels, stride 1, padding (0, 1, 1) (csrc/cpu/conv3d_winograd.cpp), fp32.
  // conv3d_winograd_weight: weight [C_out, C_in, 1, 3, 3] -> transformed filter [(tile + 2)^2, C_in, C_out]
  // for F(tile x tile, 3 x 3), tile 4 or 2. conv3d_winograd: act(conv(x) + bias + residual), x [N, C_in, T,
  // H, W] in any layout (channels-innermost read in place), out channels_last_3d; tile_block: output tiles
  // per GEMM block (0: from the cache budget); portable: skip the AVX-512 path (tests compare both). The _out form writes into out (residual may be out itself).
  // Its bf16 form by F(2x2, 3x3) (csrc/cpu/conv3d_winograd_bf16.cpp): weight [C_out, C_in, 1, 3, 3] -> U as
  // channel pairs [16, ceil(C_in / 2), C_out, 2] bf16; x bf16 in any layout, bias fp32, residual bf16, out
  // bf16 channels_last_3d; portable: the scalar loops instead of VDPBF16PS (tests).
  m.def("conv3d_winograd_bf16_weight(Tensor weight) -> Tensor");
  m.def("conv3d_winograd_bf16(Tensor x, Tensor packed, Tensor? bias, str activation, Tensor? residual, "
        "bool portable=False) -> Tensor");
  m.def("conv3d_winograd_weight(Tensor weight, int tile=4) -> Tensor");
  m.def(
      "conv3d_winograd(Tensor x, Tensor packed, Tensor? bias, str activation, Tensor? residual=None, "
      "int tile_block=0, bool portable=False) -> Tensor");
  m.def(
      "conv3d_winograd_out(Tensor x, Tensor packed, Tensor? bias, str activation, Tensor? residual, "
      "int tile_block, bool portable, Tensor(a!) out) -> ()");
  // RoI head of the detectors (csrc/cpu/roi_align_pool.cpp): per pathway [N, C, T, H, W] the temporal pool
  // (avg | max), RoIAlign (torchvision's sampling) of every box [K, 5] = (batch index, x1, y1, x2, y2) to
  // pooled_h x pooled_w bins, the max over the bins; the pathways concatenated: [K, sum C] float32.
  m.def(
      "roi_align_pool(Tensor[] features, Tensor boxes, int pooled_h, int pooled_w, float spatial_scale, "
      "int sampling_ratio, bool aligned, str temporal_pool) -> Tensor");
  // The CPU buffer cache (csrc/cpu/buffer_cache.cpp): c10's CPU allocator keeps freed activation blocks
  // for reuse while enabled. enable returns the previous state; clear frees the cached blocks (bytes).
  m.def("cpu_buffer_cache_enable(bool enabled) -> bool");
  m.def("cpu_buffer_cache_enabled() -> bool");
  m.def("cpu_buffer_cache_clear() -> int");
  m.def("cpu_buffer_cache_bytes() -> int");
}
