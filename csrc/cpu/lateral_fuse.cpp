// CPU lateral_fuse. time_to_channel + concat over NCDHW: every (n, c, a, t) output plane is one
// contiguous H*W copy, parallel over planes with OpenMP (at::parallel_for).
#include <cstring>

#include <ATen/Parallel.h>

#include "../checks.h"

namespace slowfast_kernels {
namespace {

at::Tensor lateral_fuse_cpu(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                            const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            c10::string_view fusion, c10::string_view activation) {
  check_rank(slow, 5, "slow");
  check_rank(fast, 5, "fast");
  check_device(slow, c10::DeviceType::CPU, "slow");
  check_device(fast, c10::DeviceType::CPU, "fast");
  check_same_dtype(slow, fast, "slow", "fast");
  SFK_CHECK(mode == "time_to_channel", "mode: the CPU kernel implements 'time_to_channel', got '", mode, "'");
  SFK_CHECK(fusion == "concat", "fusion: the CPU kernel implements 'concat', got '", fusion, "'");
  SFK_CHECK(!weight.has_value() && !bias.has_value(), "weight/bias: time_to_channel takes none");
  SFK_CHECK(alpha >= 1, "alpha: expected >= 1, got ", alpha);
  const int64_t N = fast.size(0), Cf = fast.size(1), Tf = fast.size(2), H = fast.size(3), W = fast.size(4);
  const int64_t Cs = slow.size(1), Ts = slow.size(2);
  SFK_CHECK(Tf == alpha * Ts, "fast: expected alpha * T_slow = ", alpha, " * ", Ts, " = ", alpha * Ts,
            " frames, got ", Tf);
  SFK_CHECK(slow.size(0) == N && slow.size(3) == H && slow.size(4) == W, "slow ", slow.sizes(), " and fast ",
            fast.sizes(), ": batch and spatial sizes must match");

  const at::Tensor s = slow.contiguous(), f = fast.contiguous();
  const int64_t C_out = Cs + Cf * alpha;
  at::Tensor out = at::empty({N, C_out, Ts, H, W}, slow.options());
  const int64_t plane = H * W, elem = out.element_size();
  const int64_t frame_bytes = plane * elem;
  const char* sp = static_cast<const char*>(s.data_ptr());
  const char* fp = static_cast<const char*>(f.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());

  // One task = one output (n, channel, t) plane; source plane chosen by the channel's origin.
  at::parallel_for(0, N * C_out * Ts, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i % Ts, c = (i / Ts) % C_out, n = i / (Ts * C_out);
      const char* src;
      if (c < Cs) {
        src = sp + ((n * Cs + c) * Ts + t) * frame_bytes;
      } else {
        const int64_t cf = (c - Cs) / alpha, a = (c - Cs) % alpha;
        src = fp + ((n * Cf + cf) * Tf + t * alpha + a) * frame_bytes;
      }
      std::memcpy(op + i * frame_bytes, src, frame_bytes);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CPU, m) { m.impl("lateral_fuse", &lateral_fuse_cpu); }

}  // namespace slowfast_kernels
