// CPU lateral_fuse: every mode (time_to_channel, time_strided_sampling, time_strided_conv), concat or sum,
// written straight into channel slices of one [N, Cs + Cl, T, H, W] buffer, NCDHW or channels_last_3d.
//
// The lateral values are a gather from a source tensor: fast itself for the copy modes, the conv output
// for time_strided_conv (oneDNN through at::convolution; its bias is the folded BN shift). The gather
// is then stored (ReLU and sum folded into the store) with one of three loops picked by layout:
//   plane: H*W contiguous in source and destination (NCDHW): one run of H*W elements per (n, c, t);
//   row:   channels contiguous in both (channels_last_3d): one run of channels per (n, t, h, w);
//   any other strides: an element loop.
// The validation and allocation helpers at the top are shared with csrc/cuda/lateral_fuse.cu.
#include <cstring>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../checks.h"

namespace slowfast_kernels {

// Source -> destination channel map of the lateral gather (see lateral_source_offset).
enum LateralMap : int { kTimeToChannel = 0, kTimeStridedSampling = 1, kIdentity = 2 };

int64_t lateral_fuse_channels(c10::string_view mode, int64_t fast_channels, int64_t alpha,
                              const c10::optional<at::Tensor>& weight) {
  if (mode == "time_to_channel") return fast_channels * alpha;
  if (mode == "time_strided_sampling") return fast_channels;
  return weight->size(0);
}

void lateral_fuse_validate(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                           const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                           c10::string_view fusion, c10::string_view activation, c10::DeviceType device_type) {
  check_rank(slow, 5, "slow");
  check_rank(fast, 5, "fast");
  check_device(slow, device_type, "slow");
  check_device(fast, device_type, "fast");
  SFK_CHECK(slow.device() == fast.device(), "slow is on ", slow.device(), ", fast on ", fast.device(),
            ": expected one device");
  check_same_dtype(slow, fast, "slow", "fast");
  const auto dt = slow.scalar_type();
  SFK_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
            "slow: expected float32, bfloat16 or float16, got ", dt);
  const bool conv = mode == "time_strided_conv";
  SFK_CHECK(conv || mode == "time_to_channel" || mode == "time_strided_sampling",
            "mode: expected time_to_channel, time_strided_sampling or time_strided_conv, got '", mode, "'");
  SFK_CHECK(fusion == "concat" || fusion == "sum", "fusion: expected concat or sum, got '", fusion, "'");
  SFK_CHECK(activation == "relu" || activation == "none", "activation: expected relu or none, got '", activation,
            "'");
  SFK_CHECK(alpha >= 1, "alpha: expected >= 1, got ", alpha);
  const int64_t Ts = slow.size(2), Tf = fast.size(2);
  SFK_CHECK(Tf == alpha * Ts, "fast: expected alpha * T_slow = ", alpha, " * ", Ts, " = ", alpha * Ts,
            " frames, got ", Tf);
  SFK_CHECK(slow.size(0) == fast.size(0) && slow.size(3) == fast.size(3) && slow.size(4) == fast.size(4), "slow ",
            slow.sizes(), " and fast ", fast.sizes(), ": batch and spatial sizes must match");
  if (conv) {
    SFK_CHECK(weight.has_value(), "weight: time_strided_conv needs a [C_out, ", fast.size(1), ", K, 1, 1] weight");
    const at::Tensor& w = *weight;
    SFK_CHECK(w.dim() == 5 && w.size(1) == fast.size(1) && w.size(3) == 1 && w.size(4) == 1,
              "weight: expected [C_out, ", fast.size(1), ", K, 1, 1], got ", w.sizes());
    SFK_CHECK(w.size(2) % 2 == 1, "weight: the temporal kernel K must be odd (pad K//2 keeps T), got ", w.size(2));
    check_same_dtype(w, fast, "weight", "fast");
    SFK_CHECK(w.device() == fast.device(), "weight: expected a tensor on ", fast.device(), ", got ", w.device());
    if (bias.has_value()) {
      SFK_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), "bias: expected [", w.size(0), "], got ",
                bias->sizes());
      check_same_dtype(*bias, fast, "bias", "fast");
      SFK_CHECK(bias->device() == fast.device(), "bias: expected a tensor on ", fast.device(), ", got ",
                bias->device());
    }
  } else {
    SFK_CHECK(!weight.has_value() && !bias.has_value(), "weight/bias: mode '", mode, "' takes none");
  }
  if (fusion == "sum") {
    const int64_t Cl = lateral_fuse_channels(mode, fast.size(1), alpha, weight);
    SFK_CHECK(Cl == slow.size(1), "fusion: sum needs as many lateral channels as slow channels, got ", Cl,
              " lateral vs ", slow.size(1), " slow");
  }
}

// The fused result's shape: [N, Cs + Cl, T, H, W] (concat) or slow's shape (sum).
std::vector<int64_t> lateral_fuse_shape(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode,
                                        int64_t alpha, const c10::optional<at::Tensor>& weight,
                                        c10::string_view fusion) {
  std::vector<int64_t> shape = slow.sizes().vec();
  if (fusion == "concat") shape[1] += lateral_fuse_channels(mode, fast.size(1), alpha, weight);
  return shape;
}

void lateral_fuse_validate_out(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                               const c10::optional<at::Tensor>& weight, c10::string_view fusion,
                               const at::Tensor& out) {
  const auto shape = lateral_fuse_shape(slow, fast, mode, alpha, weight, fusion);
  SFK_CHECK(out.sizes() == at::IntArrayRef(shape), "out: expected shape ", at::IntArrayRef(shape), ", got ",
            out.sizes());
  check_same_dtype(out, slow, "out", "slow");
  SFK_CHECK(out.device() == slow.device(), "out: expected a tensor on ", slow.device(), ", got ", out.device());
}

// The functional op's result is channels_last_3d when slow's channels are innermost, else NCDHW. The
// Python fake kernel applies the same rule, so their strides agree.
at::Tensor lateral_fuse_empty(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                              const c10::optional<at::Tensor>& weight, c10::string_view fusion) {
  const bool channels_last = slow.size(1) > 1 && slow.stride(1) == 1 && slow.stride(4) > 1;
  return at::empty(lateral_fuse_shape(slow, fast, mode, alpha, weight, fusion),
                   slow.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast3d
                                                              : at::MemoryFormat::Contiguous));
}

// True when slow already is out's slow part (its producer wrote it there), so it need not be copied.
bool lateral_slow_in_place(const at::Tensor& slow, const at::Tensor& out) {
  return slow.data_ptr() == out.data_ptr() && slow.strides() == out.strides();
}

namespace {

// The (n, c, t) plane offset in `src` of destination lateral channel j at slow frame t.
inline int64_t lateral_source_offset(int map, int64_t alpha, int64_t n, int64_t j, int64_t t, const int64_t* st) {
  int64_t c = j, ts = t;
  if (map == kTimeToChannel) {
    c = j / alpha;
    ts = t * alpha + j % alpha;
  } else if (map == kTimeStridedSampling) {
    ts = t * alpha;
  }
  return n * st[0] + c * st[1] + ts * st[2];
}

template <typename scalar_t, bool RELU, bool ACC>
inline void store_run(scalar_t* dst, const scalar_t* src, int64_t count, int64_t dst_step, int64_t src_step) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (!RELU && !ACC && dst_step == 1 && src_step == 1) {
    std::memcpy(dst, src, count * sizeof(scalar_t));
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    opmath_t v = static_cast<opmath_t>(src[i * src_step]);
    if (RELU) v = v < opmath_t(0) ? opmath_t(0) : v;  // NaN compares false: it propagates, as in torch.relu
    if (ACC) v += static_cast<opmath_t>(dst[i * dst_step]);
    dst[i * dst_step] = static_cast<scalar_t>(v);
  }
}

// True when the H*W elements of every (n, c, t) plane form one contiguous run.
bool planes_dense(const at::Tensor& t) {
  int64_t expected = 1;
  for (int d = 4; d >= 3; --d) {
    if (t.size(d) == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// Tasks per chunk so that a chunk moves >= 1M elements: below that a copy runs on one thread, because
// waking a second one can cost more than the copy (4x16 res4 sampling, 0.8M elements: 8.0 ms with two
// threads on a loaded 2-core machine, 1.1 ms with one).
inline int64_t grain(int64_t elements_per_task) {
  return std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(elements_per_task, 1));
}

template <typename scalar_t, bool RELU, bool ACC>
void store_lateral_impl(const at::Tensor& src, const at::Tensor& dst, int map, int64_t alpha) {
  const int64_t N = dst.size(0), C = dst.size(1), T = dst.size(2), H = dst.size(3), W = dst.size(4);
  const int64_t Csrc = src.size(1);
  const int64_t ss[5] = {src.stride(0), src.stride(1), src.stride(2), src.stride(3), src.stride(4)};
  const int64_t ds[5] = {dst.stride(0), dst.stride(1), dst.stride(2), dst.stride(3), dst.stride(4)};
  const scalar_t* sp = src.const_data_ptr<scalar_t>();
  scalar_t* dp = dst.mutable_data_ptr<scalar_t>();

  if (planes_dense(src) && planes_dense(dst)) {
    const int64_t plane = H * W;
    at::parallel_for(0, N * C * T, grain(plane), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t t = i % T, j = (i / T) % C, n = i / (T * C);
        store_run<scalar_t, RELU, ACC>(dp + n * ds[0] + j * ds[1] + t * ds[2],
                                       sp + lateral_source_offset(map, alpha, n, j, t, ss), plane, 1, 1);
      }
    });
    return;
  }
  if ((C == 1 || ds[1] == 1) && (Csrc == 1 || ss[1] == 1)) {
    // channels_last_3d: per pixel, the lateral channels are one run (time_to_channel: alpha runs of Cf
    // source channels interleaved into the destination with step alpha).
    at::parallel_for(0, N * T * H, grain(W * C), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t h = i % H, t = (i / H) % T, n = i / (H * T);
        for (int64_t w = 0; w < W; ++w) {
          scalar_t* d = dp + n * ds[0] + t * ds[2] + h * ds[3] + w * ds[4];
          const scalar_t* s = sp + h * ss[3] + w * ss[4];
          if (map == kTimeToChannel) {
            for (int64_t a = 0; a < alpha; ++a)
              store_run<scalar_t, RELU, ACC>(d + a, s + lateral_source_offset(map, alpha, n, a, t, ss), C / alpha,
                                             alpha, 1);
          } else {
            store_run<scalar_t, RELU, ACC>(d, s + lateral_source_offset(map, alpha, n, 0, t, ss), C, 1, 1);
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * C * T, grain(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i % T, j = (i / T) % C, n = i / (T * C);
      const scalar_t* s = sp + lateral_source_offset(map, alpha, n, j, t, ss);
      scalar_t* d = dp + n * ds[0] + j * ds[1] + t * ds[2];
      for (int64_t h = 0; h < H; ++h)
        store_run<scalar_t, RELU, ACC>(d + h * ds[3], s + h * ss[3], W, ds[4], ss[4]);
    }
  });
}

// dst[n, j, t] (+)= act(src gathered by `map`); dst is the [N, Cl, T, H, W] lateral slice (concat) or
// the whole output (sum).
void store_lateral(const at::Tensor& src, const at::Tensor& dst, int map, int64_t alpha, bool relu, bool acc) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dst.scalar_type(), "lateral_fuse_cpu", [&] {
    if (relu && acc) store_lateral_impl<scalar_t, true, true>(src, dst, map, alpha);
    else if (relu) store_lateral_impl<scalar_t, true, false>(src, dst, map, alpha);
    else if (acc) store_lateral_impl<scalar_t, false, true>(src, dst, map, alpha);
    else store_lateral_impl<scalar_t, false, false>(src, dst, map, alpha);
  });
}

void lateral_fuse_out_cpu(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                          const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                          c10::string_view fusion, c10::string_view activation, const at::Tensor& out) {
  lateral_fuse_validate(slow, fast, mode, alpha, weight, bias, fusion, activation, c10::DeviceType::CPU);
  lateral_fuse_validate_out(slow, fast, mode, alpha, weight, fusion, out);
  const bool concat = fusion == "concat";
  const int64_t Cs = slow.size(1);
  if (!lateral_slow_in_place(slow, out)) (concat ? out.narrow(1, 0, Cs) : out).copy_(slow);
  const at::Tensor dst = concat ? out.narrow(1, Cs, out.size(1) - Cs) : out;
  if (mode == "time_strided_conv") {
    const int64_t K = weight->size(2);
    // oneDNN conv (channels_last_3d in -> channels_last_3d out); ReLU and the copy into the slice share
    // one pass in store_lateral instead of BN + ReLU + cat passes. oneDNN beat a direct kernel (one BLAS
    // GEMM per temporal tap accumulating into the strided slice): 38.9 vs 66.6 ms (8x8 res2), 32.5 vs
    // 42.4 ms (8x8 res4), 14.4 vs 17.2 ms (4x16 res3); batch 2, fp32, one thread.
    const at::Tensor pre = at::convolution(fast, *weight, bias, {alpha, 1, 1}, {K / 2, 0, 0}, {1, 1, 1}, false,
                                           {0, 0, 0}, 1);
    store_lateral(pre, dst, kIdentity, alpha, activation == "relu", !concat);
  } else {
    store_lateral(fast, dst, mode == "time_to_channel" ? kTimeToChannel : kTimeStridedSampling, alpha, false,
                  !concat);
  }
}

at::Tensor lateral_fuse_cpu(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            c10::string_view fusion, c10::string_view activation) {
  lateral_fuse_validate(slow, fast, mode, alpha, weight, bias, fusion, activation, c10::DeviceType::CPU);
  at::Tensor out = lateral_fuse_empty(slow, fast, mode, alpha, weight, fusion);
  lateral_fuse_out_cpu(slow, fast, mode, alpha, weight, bias, fusion, activation, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) {
  m.impl("lateral_fuse", &lateral_fuse_cpu);
  m.impl("lateral_fuse_out", &lateral_fuse_out_cpu);
}

}  // namespace slowfast_kernels
