// bf16 <-> fp32 on raw 16-bit values, rounding as torch rounds (nearest even, NaN -> 0x7FC0, c10::BFloat16's
// rule), for the CPU kernels that keep bf16 tensors as uint16_t: scalar, and AVX-512 16 lanes at a time
// (AVX512F/BW/VL, no AVX512_BF16 needed; masked lanes load as zero and are not stored).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace slowfast_kernels {
namespace bf16_bits {

inline float to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Branch-free, so loops over it vectorize.
inline uint16_t from_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")

inline __mmask16 mask16(int64_t n) { return n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1); }

inline __m512 load16(const uint16_t* p, __mmask16 k) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}

inline void store16(uint16_t* p, __mmask16 k, __m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm512_mask_cvtepi32_storeu_epi16(p, k, r);
}

#pragma GCC pop_options

}  // namespace bf16_bits
}  // namespace slowfast_kernels
