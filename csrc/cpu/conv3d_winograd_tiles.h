// Winograd tile transforms of conv3d_winograd.cpp, written once over a 16-channel vector type `Vec`.
//
// conv3d_winograd.cpp includes this file twice: inside namespace avx512 under `#pragma GCC target("avx512f")`
// with Vec = one __m512, and inside namespace portable with Vec = 16 floats in a loop. So no include guard.
// Geometry is defined by the includer. Vec provides: zero(), load(p, n), store(p, n) (n <= 16 channels; masked tails), +, -, * float, max0().
//
// F(m x m, 3 x 3) with input tiles of a = m + 2 (Lavin & Gray 2016): V = B^T d B per input tile,
// y = A^T (U . V) A per output tile. m = 4: 36 products per 16 outputs; m = 2: 16 per 4.

// 1-D B^T d: a = 6 (m = 4) or 4 (m = 2) values in, as many out.
template <int M>
inline void input_1d(const Vec* d, Vec* r) {
  if constexpr (M == 4) {
    r[0] = d[0] * 4.0f - d[2] * 5.0f + d[4];
    r[1] = (d[3] + d[4]) - (d[1] + d[2]) * 4.0f;
    r[2] = (d[4] - d[3]) + (d[1] - d[2]) * 4.0f;
    r[3] = (d[4] - d[2]) + (d[3] - d[1]) * 2.0f;
    r[4] = (d[4] - d[2]) - (d[3] - d[1]) * 2.0f;
    r[5] = d[1] * 4.0f - d[3] * 5.0f + d[5];
  } else {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
}

// 1-D A^T m: a values in, M out.
template <int M>
inline void output_1d(const Vec* m, Vec* y) {
  if constexpr (M == 4) {
    const Vec s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    y[0] = m[0] + s12 + s34;
    y[1] = d12 + d34 * 2.0f;
    y[2] = s12 + s34 * 4.0f;
    y[3] = d12 + d34 * 8.0f + m[5];
  } else {
    y[0] = m[0] + m[1] + m[2];
    y[1] = m[1] - m[2] - m[3];
  }
}

// Input transform of tiles [p0, p1) into rows V[k * nb + p - p0][0, C) (k = row * a + column in the tile;
// nb: rows per V_k; V points at tile p0's row of V_0): the a x a input pixels around output tile p, zeros
// outside the frame (the conv's padding of 1, and the part of a border tile beyond the frame, whose
// outputs are not stored).
template <int M>
void input_tiles(const float* x, const Geometry& g, int64_t p0, int64_t p1, float* V, int64_t nb) {
  constexpr int A = M + 2;
  const int64_t per_frame = g.tiles_h * g.tiles_w;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame;
    const int64_t h0 = in_frame / g.tiles_w * M - 1, w0 = in_frame % g.tiles_w * M - 1;
    const float* frame = x + f / g.T * g.xn + f % g.T * g.xt;
    const float* px[A][A];
    for (int i = 0; i < A; ++i) {
      for (int j = 0; j < A; ++j) {
        const int64_t h = h0 + i, w = w0 + j;
        px[i][j] = (h >= 0 && h < g.H && w >= 0 && w < g.W) ? frame + h * g.xh + w * g.xw : nullptr;
      }
    }
    float* v = V + (p - p0) * g.C;
    for (int64_t c0 = 0; c0 < g.C; c0 += 16) {
      const int n = static_cast<int>(std::min<int64_t>(16, g.C - c0));
      Vec d[A][A], t[A][A], col[A], r[A];
      for (int i = 0; i < A; ++i) {
        for (int j = 0; j < A; ++j) d[i][j] = px[i][j] ? Vec::load(px[i][j] + c0, n) : Vec::zero();
      }
      for (int j = 0; j < A; ++j) {  // columns: t = B^T d
        for (int i = 0; i < A; ++i) col[i] = d[i][j];
        input_1d<M>(col, r);
        for (int i = 0; i < A; ++i) t[i][j] = r[i];
      }
      for (int i = 0; i < A; ++i) {  // rows: (B^T d) B
        input_1d<M>(t[i], r);
        for (int j = 0; j < A; ++j) r[j].store(v + ((i * A + j) * nb) * g.C + c0, n);
      }
    }
  }
}

// Output transform of output channels [co0, co1) of tiles [p0, p1) from rows Mt[k * nb + p - p0][0, co1 - co0)
// (Mt points at tile p0's row of M_0): y = A^T m A + bias (+ residual), activation, stored where the tile lies
// inside the frame. residual may be out itself.
template <int M>
void output_tiles(const float* Mt, const Geometry& g, int64_t p0, int64_t p1, int64_t nb, int64_t co0, int64_t co1,
                  const float* bias, const float* residual, bool relu, float* out) {
  const int64_t ldm = co1 - co0;
  constexpr int A = M + 2;
  const int64_t per_frame = g.tiles_h * g.tiles_w;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t f = p / per_frame, in_frame = p % per_frame, n_ = f / g.T, t_ = f % g.T;
    const int64_t h0 = in_frame / g.tiles_w * M, w0 = in_frame % g.tiles_w * M;
    const int rows = static_cast<int>(std::min<int64_t>(M, g.H - h0));
    const int cols = static_cast<int>(std::min<int64_t>(M, g.W - w0));
    const float* m = Mt + (p - p0) * ldm - co0;  // indexed by the output channel
    for (int64_t c0 = co0; c0 < co1; c0 += 16) {
      const int n = static_cast<int>(std::min<int64_t>(16, co1 - c0));
      Vec s[A][A], t[M][A], col[A], r[M];
      for (int k = 0; k < A * A; ++k) s[k / A][k % A] = Vec::load(m + (k * nb) * ldm + c0, n);
      for (int j = 0; j < A; ++j) {  // columns: A^T s
        for (int i = 0; i < A; ++i) col[i] = s[i][j];
        output_1d<M>(col, r);
        for (int i = 0; i < M; ++i) t[i][j] = r[i];
      }
      const Vec b = bias ? Vec::load(bias + c0, n) : Vec::zero();
      for (int i = 0; i < rows; ++i) {  // rows: (A^T s) A, then the epilogue
        output_1d<M>(t[i], r);
        for (int j = 0; j < cols; ++j) {
          Vec y = r[j] + b;
          if (residual) {
            y = y + Vec::load(residual + n_ * g.rn + t_ * g.rt + (h0 + i) * g.rh + (w0 + j) * g.rw + c0, n);
          }
          if (relu) y = y.max0();
          y.store(out + n_ * g.yn + t_ * g.yt + (h0 + i) * g.yh + (w0 + j) * g.yw + c0, n);
        }
      }
    }
  }
}
