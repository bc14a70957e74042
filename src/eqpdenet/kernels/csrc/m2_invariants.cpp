// Fused SE(2) invariants of fields on M2 = R^2 x S^1, mixed into outputs (CPU, OpenMP).
//
//   z[b, o, k, p] = sum_{c, j} weight[o, c, j] I_j(u[b, c])(p, theta_k)
//
// u is (B, C, N, H, W): C channels, N orientations theta_k, H x W pixels. I_j are the ten
// left-invariant derivatives of eqpdenet.pde.m2.M2_SE2 (u, A1u, A2u, A3u, A11u, A12u, A13u,
// A22u, A23u, A33u; the mixed ones symmetrised), from the spatial Gaussian 2-jet (separable 1-D
// stencils given by the caller, scale normalisation included) and periodic central differences
// over the orientations, steered by the caller's (cos, sin) of each theta_k.
//
// Layout. One task per image. Its C N maps are transposed into a padded, pixel-major buffer
// (every pixel holds the M = C N values of all maps, m = c N + k), so that every stencil loop
// runs over M contiguous values and vectorises whatever the image width (28, 14 or 7 pixels: a
// loop along a row would be too short). The x pass of the separable Gaussian derivatives is
// done for the whole image; the y pass one output row at a time, and that row's invariants (per
// pixel, vectors over the N orientations, the orientation differences being neighbours in the
// same vector) are formed and multiplied into z at once, so neither the jet nor the (10 C, N, H,
// W) invariants are ever written to memory. The backward pass is the exact adjoint of the same
// discrete map (boundary padding included), recomputing the jet row by row; the weight's
// gradient is summed per image (in vector lanes of the input's precision over the image's rows,
// then in double) and reduced by the caller in a fixed order, so results do not depend on the
// number of threads.
//
// The plain PyTorch code (eqpdenet.pde.m2: M2Jet, M2_SE2) defines the semantics; this file agrees
// with it to rounding (tests/kernels/test_m2_kernel.py). Schema: eqpdenet/kernels/m2_op.py.

#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// Per-thread buffers are allocated inside the OpenMP regions. std::bad_alloc cannot leave such a
// region (the runtime calls std::terminate: the whole Python process died, exit 134, where the
// same shortage elsewhere is PyTorch's catchable "can't allocate memory"). Each thread allocates
// through `allocate`, which catches it; a thread without its buffers skips its iterations, and
// `check`, after the region, raises the failure as a RuntimeError (results discarded).
struct OutOfMemory {
  std::atomic<bool> failed{false};
  template <typename F>
  bool allocate(F&& make) {
    try {
      make();
      return true;
    } catch (const std::bad_alloc&) {
      failed.store(true);
      return false;
    }
  }
  void check(const char* kernel) const {
    TORCH_CHECK(!failed.load(), kernel, ": cannot allocate the per-thread working memory (the "
                "images are too large for this machine's memory; use smaller images or batches)");
  }
};

namespace {

#define M2_INLINE inline __attribute__((always_inline))

enum Boundary { REPLICATE = 0, ZEROS = 1, REFLECT = 2, CIRCULAR = 3 };
constexpr int NJ = 10;  // invariants per channel
constexpr int MAX_TAPS = 63;

// Vectors as compiler vector extensions (GCC, Clang): V lanes of T as NV vectors of VW lanes,
// VW * sizeof(T) the largest power of two of at most one register of the target (REGISTER_BYTES:
// 64 with AVX-512, 32 with AVX, 16 otherwise: SSE2, NEON) that divides V * sizeof(T).
// Register-blocked accumulators written as arrays of T were kept on the stack by GCC 12 (a load
// and a store around every multiply-add); vectors of these types stay in registers. A vector
// wider than the target's registers is not split into registers by GCC 12 but "expanded
// piecewise" (-Wvector-operation-performance), element by element through memory: 64-byte
// vectors made this kernel 7-12 times slower on an AVX2 CPU than vectors of its registers.
//
// FULL_LANES is the number of lanes of the weight gradient's partial sums, and so the order of
// those sums: 64 bytes on every CPU, so that no sum changes its order with the vector width.
// (Results still differ between CPUs at the rounding level: with or without FMA, and where N
// orientations fill a register on one CPU but not on another, ORIENTATION_VECTOR below.)
#if defined(__AVX512F__)
constexpr int REGISTER_BYTES = 64;
#elif defined(__AVX__)
constexpr int REGISTER_BYTES = 32;
#else
constexpr int REGISTER_BYTES = 16;
#endif

template <typename T>
constexpr int FULL_LANES = static_cast<int>(64 / sizeof(T));

// Lanes of T in one register of the target.
template <typename T>
constexpr int REGISTER_LANES = static_cast<int>(REGISTER_BYTES / sizeof(T));

// Register blocking follows the register file: 32 vector registers with AVX-512, 16 with AVX2,
// SSE2 and NEON (32 on AArch64, but 16 bytes wide: the narrow blocks suit it too). With 16
// registers the AVX-512 blocks spill their accumulators to the stack. The block sizes change
// which outputs are computed together, never the order of any sum.
constexpr bool WIDE_REGISTER_FILE = REGISTER_BYTES >= 64;

template <typename T, int V>
struct Lanes {
  static constexpr int bytes(int b) {
    return b % 64 == 0 && REGISTER_BYTES >= 64 ? 64 : b % 32 == 0 && REGISTER_BYTES >= 32 ? 32 : 16;
  }
  static constexpr int VW = bytes(V * static_cast<int>(sizeof(T))) / static_cast<int>(sizeof(T));
  static constexpr int NV = V / VW;
  static_assert((V * sizeof(T)) % 16 == 0, "lanes in multiples of 16 bytes");
  static_assert(VW * static_cast<int>(sizeof(T)) <= REGISTER_BYTES,
                "a vector wider than the target's registers is expanded element by element");
  typedef T vec __attribute__((vector_size(VW * sizeof(T))));
  typedef T unaligned __attribute__((vector_size(VW * sizeof(T)), aligned(alignof(T)), may_alias));
  static M2_INLINE vec load(const T* p) { return *reinterpret_cast<const unaligned*>(p); }
  static M2_INLINE void store(T* p, const vec& x) { *reinterpret_cast<unaligned*>(p) = x; }
};

int boundary_code(const std::string& name) {
  if (name == "replicate") return REPLICATE;
  if (name == "zeros") return ZEROS;
  if (name == "reflect") return REFLECT;
  if (name == "circular") return CIRCULAR;
  TORCH_CHECK(false, "m2_invariants: unknown boundary '", name, "'");
}

// Index of padded position q (0 .. n + 2R - 1) in the unpadded axis of length n, or -1 (zeros).
int64_t source_index(int64_t q, int64_t radius, int64_t n, int boundary) {
  int64_t i = q - radius;
  if (i >= 0 && i < n) return i;
  switch (boundary) {
    case REPLICATE: return i < 0 ? 0 : n - 1;
    case ZEROS: return -1;
    case REFLECT: {  // torch's reflect: the edge is not repeated (period 2 (n - 1))
      if (n == 1) return 0;
      const int64_t period = 2 * (n - 1);
      int64_t m = ((i % period) + period) % period;
      return m < n ? m : period - m;
    }
    default: return ((i % n) + n) % n;  // circular
  }
}

template <typename T>
struct Setup {
  int64_t C, N, M, H, W, HW, R, K, Hp, Wp, O;
  int boundary;
  T d1, d2;                       // 1 / (2 dtheta), 1 / dtheta^2
  std::vector<int64_t> rows, cols;  // padded position -> source index (-1: zero)
};

template <typename T>
Setup<T> setup(const torch::Tensor& u, const torch::Tensor& weight, const torch::Tensor& stencils,
               const std::string& boundary, const char* weight_name = "weight") {
  TORCH_CHECK(u.dim() == 5, "m2_invariants: u must be (B, C, N, H, W), got ", u.sizes());
  TORCH_CHECK(weight.dim() == 3 && weight.size(1) == u.size(1) && weight.size(2) == NJ,
              "m2_invariants: ", weight_name, " must be (O, C, 10) with C = ", u.size(1),
              " (u's channels), got ", weight.sizes());
  TORCH_CHECK(stencils.dim() == 3 && stencils.size(1) == 3 && stencils.size(2) % 2 == 1 &&
                  stencils.size(2) <= MAX_TAPS,
              "m2_invariants: stencils must be (S, 3, K) with odd K <= 63, got ", stencils.sizes());
  TORCH_CHECK(stencils.size(0) >= 1 && u.size(0) % stencils.size(0) == 0,
              "m2_invariants: the batch of ", u.size(0), " must hold S = ", stencils.size(0),
              " equal scale chunks (stencils (S, 3, K))");
  Setup<T> s;
  s.C = u.size(1);
  s.N = u.size(2);
  s.M = s.C * s.N;
  s.H = u.size(3);
  s.W = u.size(4);
  s.HW = s.H * s.W;
  s.K = stencils.size(2);
  s.R = s.K / 2;
  s.Hp = s.H + 2 * s.R;
  s.Wp = s.W + 2 * s.R;
  s.O = weight.size(0);
  s.boundary = boundary_code(boundary);
  TORCH_CHECK(s.boundary == REPLICATE || s.boundary == ZEROS || (s.H > s.R && s.W > s.R),
              "m2_invariants: reflect and circular boundaries need maps larger than the radius");
  const double step = 2.0 * M_PI / static_cast<double>(s.N);
  s.d1 = static_cast<T>(1.0 / (2.0 * step));
  s.d2 = static_cast<T>(1.0 / (step * step));
  for (int64_t q = 0; q < s.Hp; ++q) s.rows.push_back(source_index(q, s.R, s.H, s.boundary));
  for (int64_t q = 0; q < s.Wp; ++q) s.cols.push_back(source_index(q, s.R, s.W, s.boundary));
  return s;
}

// 1-D stencils of one scale level: gx[a][t] along x (columns), gy[a][t] along y (rows reversed:
// y points up).
template <typename T>
struct Taps {
  T gx[3][MAX_TAPS];
  T gy[3][MAX_TAPS];
  Taps(const double* g, int64_t K) {
    for (int a = 0; a < 3; ++a)
      for (int64_t t = 0; t < K; ++t) {
        gx[a][t] = static_cast<T>(g[a * K + t]);
        gy[a][t] = static_cast<T>(g[a * K + (K - 1 - t)]);
      }
  }
};

// u (C N maps of H x W) -> P (Hp x Wp x M): the H image rows (q = R .. R + H - 1), padded along
// x by the boundary rule. The padded rows of P are never read: the x pass acts within a row, so
// its padded rows are copies of image rows (or zeros) made after it (fill_padded_rows).
template <typename T>
void pad_transpose(const T* u, const Setup<T>& s, T* P) {
  for (int64_t q = s.R; q < s.R + s.H; ++q) {
    const int64_t row = s.rows[q];
    for (int64_t r = 0; r < s.Wp; ++r) {
      T* dst = P + (q * s.Wp + r) * s.M;
      const int64_t col = s.cols[r];
      if (row < 0 || col < 0) {
        for (int64_t m = 0; m < s.M; ++m) dst[m] = T(0);
      } else {
        const T* src = u + row * s.W + col;
        for (int64_t m = 0; m < s.M; ++m) dst[m] = src[m * s.HW];
      }
    }
  }
}

// Adjoint of pad_transpose: the image rows of gP (Hp x Wp x M) added into grad_u (C N maps of
// H x W).
template <typename T>
void pad_transpose_adjoint(const T* gP, const Setup<T>& s, T* gu) {
  for (int64_t q = s.R; q < s.R + s.H; ++q) {
    const int64_t row = s.rows[q];
    for (int64_t r = 0; r < s.Wp; ++r) {
      const int64_t col = s.cols[r];
      if (col < 0) continue;
      const T* src = gP + (q * s.Wp + r) * s.M;
      T* dst = gu + row * s.W + col;
      for (int64_t m = 0; m < s.M; ++m) dst[m * s.HW] += src[m];
    }
  }
}

// The stencil passes run over the M map values of each pixel in chunks of V (a compile-time
// multiple of N, the vector length), with the accumulators in registers for the whole loop over
// the taps: one load per tap and pass instead of a load and a store of every accumulator. Each
// pass is a gather (output by output), including the adjoints, so no accumulator is ever written
// twice.

// x pass of the image rows, maps [m0, m1): X[a][q][j] = sum_t gx[a][t] P[q][j + t].
template <typename T, int V>
void x_pass_chunks(const T* P, const Taps<T>& taps, const Setup<T>& s, T* X, int64_t m0,
                   int64_t m1) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  const int64_t M = s.M, plane = s.Hp * s.W * M;
  for (int64_t q = s.R; q < s.R + s.H; ++q)
    for (int64_t j = 0; j < s.W; ++j)
      for (int64_t m = m0; m + V <= m1; m += V) {
        vec a0[NV] = {}, a1[NV] = {}, a2[NV] = {};
        for (int64_t t = 0; t < s.K; ++t) {
          const T* p = P + (q * s.Wp + j + t) * M + m;
          const T g0 = taps.gx[0][t], g1 = taps.gx[1][t], g2 = taps.gx[2][t];
          for (int n = 0; n < NV; ++n) {
            const vec pv = Q::load(p + n * VW);
            a0[n] += g0 * pv;
            a1[n] += g1 * pv;
            a2[n] += g2 * pv;
          }
        }
        T* x = X + (q * s.W + j) * M + m;
        for (int n = 0; n < NV; ++n) {
          Q::store(x + n * VW, a0[n]);
          Q::store(x + plane + n * VW, a1[n]);
          Q::store(x + 2 * plane + n * VW, a2[n]);
        }
      }
}

// Adjoint of the x pass of the image rows, maps [m0, m1): gP[q][r] = sum_t sum_a gx[a][t]
// gX[a][q][r - t].
template <typename T, int V>
void x_pass_adjoint_chunks(const T* gX, const Taps<T>& taps, const Setup<T>& s, T* gP,
                           int64_t m0, int64_t m1) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  const int64_t M = s.M, plane = s.Hp * s.W * M;
  for (int64_t q = s.R; q < s.R + s.H; ++q)
    for (int64_t r = 0; r < s.Wp; ++r) {
      const int64_t t_lo = std::max<int64_t>(0, r - (s.W - 1)), t_hi = std::min(s.K - 1, r);
      for (int64_t m = m0; m + V <= m1; m += V) {
        vec a[NV] = {};
        for (int64_t t = t_lo; t <= t_hi; ++t) {
          const T* x = gX + (q * s.W + r - t) * M + m;
          const T g0 = taps.gx[0][t], g1 = taps.gx[1][t], g2 = taps.gx[2][t];
          for (int n = 0; n < NV; ++n)
            a[n] += g0 * Q::load(x + n * VW) + g1 * Q::load(x + plane + n * VW) +
                    g2 * Q::load(x + 2 * plane + n * VW);
        }
        T* p = gP + (q * s.Wp + r) * M + m;
        for (int n = 0; n < NV; ++n) Q::store(p + n * VW, a[n]);
      }
    }
}

// y pass of output row i, maps [m0, m1): J (6 x W x M) = u, u_x, u_y, u_xx, u_xy, u_yy.
template <typename T, int V>
void y_pass_row_chunks(const T* X, int64_t i, const Taps<T>& taps, const Setup<T>& s, T* J,
                       int64_t m0, int64_t m1) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  const int64_t M = s.M, plane = s.Hp * s.W * M, jplane = s.W * M;
  for (int64_t j = 0; j < s.W; ++j)
    for (int64_t m = m0; m + V <= m1; m += V) {
      vec a0[NV] = {}, a1[NV] = {}, a2[NV] = {}, a3[NV] = {}, a4[NV] = {}, a5[NV] = {};
      for (int64_t r = 0; r < s.K; ++r) {
        const T* x = X + ((i + r) * s.W + j) * M + m;
        const T h0 = taps.gy[0][r], h1 = taps.gy[1][r], h2 = taps.gy[2][r];
        for (int n = 0; n < NV; ++n) {
          const vec x0 = Q::load(x + n * VW), x1 = Q::load(x + plane + n * VW);
          const vec x2 = Q::load(x + 2 * plane + n * VW);
          a0[n] += h0 * x0;
          a1[n] += h0 * x1;
          a2[n] += h1 * x0;
          a3[n] += h0 * x2;
          a4[n] += h1 * x1;
          a5[n] += h2 * x0;
        }
      }
      T* out = J + j * M + m;
      for (int n = 0; n < NV; ++n) {
        Q::store(out + n * VW, a0[n]);
        Q::store(out + jplane + n * VW, a1[n]);
        Q::store(out + 2 * jplane + n * VW, a2[n]);
        Q::store(out + 3 * jplane + n * VW, a3[n]);
        Q::store(out + 4 * jplane + n * VW, a4[n]);
        Q::store(out + 5 * jplane + n * VW, a5[n]);
      }
    }
}

// Adjoint of the y pass for every row, maps [m0, m1): gX[a][q][j] from gJ (6 x H x W x M).
template <typename T, int V>
void y_pass_adjoint_chunks(const T* gJ, const Taps<T>& taps, const Setup<T>& s, T* gX,
                           int64_t m0, int64_t m1) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  const int64_t M = s.M, plane = s.Hp * s.W * M, jplane = s.HW * M;
  for (int64_t q = 0; q < s.Hp; ++q) {
    if (s.rows[q] < 0) continue;  // a zero row: its gradient goes nowhere
    const int64_t r_lo = std::max<int64_t>(0, q - (s.H - 1)), r_hi = std::min(s.K - 1, q);
    for (int64_t j = 0; j < s.W; ++j)
      for (int64_t m = m0; m + V <= m1; m += V) {
        vec a0[NV] = {}, a1[NV] = {}, a2[NV] = {};
        for (int64_t r = r_lo; r <= r_hi; ++r) {
          const T* g = gJ + ((q - r) * s.W + j) * M + m;
          const T h0 = taps.gy[0][r], h1 = taps.gy[1][r], h2 = taps.gy[2][r];
          for (int n = 0; n < NV; ++n) {
            const T* gn = g + n * VW;
            a0[n] += h0 * Q::load(gn) + h1 * Q::load(gn + 2 * jplane) + h2 * Q::load(gn + 5 * jplane);
            a1[n] += h0 * Q::load(gn + jplane) + h1 * Q::load(gn + 4 * jplane);
            a2[n] += h0 * Q::load(gn + 3 * jplane);
          }
        }
        T* x = gX + (q * s.W + j) * M + m;
        for (int n = 0; n < NV; ++n) {
          Q::store(x + n * VW, a0[n]);
          Q::store(x + plane + n * VW, a1[n]);
          Q::store(x + 2 * plane + n * VW, a2[n]);
        }
      }
  }
}

// The padded rows of X (all three planes): copies of the x pass of the image rows they repeat,
// or zeros. Bitwise what the x pass of a padded row of P would give, at (Hp - H) / Hp less of
// the pass's work (a fifth at 28x28, half at 7x7 with radius 4).
template <typename T>
void fill_padded_rows(const Setup<T>& s, T* X) {
  const int64_t row = s.W * s.M, plane = s.Hp * row;
  for (int64_t q = 0; q < s.Hp; ++q) {
    if (q >= s.R && q < s.R + s.H) continue;
    const int64_t source = s.rows[q];
    for (int64_t a = 0; a < 3; ++a) {
      T* dst = X + a * plane + q * row;
      if (source < 0)
        std::fill(dst, dst + row, T(0));
      else
        std::copy(X + a * plane + (source + s.R) * row, X + a * plane + (source + s.R + 1) * row,
                  dst);
    }
  }
}

// Adjoint of fill_padded_rows: the gradient of each padded row of X added into the image row it
// copies (in the order of q, so that the sums do not depend on anything else).
template <typename T>
void fold_padded_rows(const Setup<T>& s, T* gX) {
  const int64_t row = s.W * s.M, plane = s.Hp * row;
  for (int64_t q = 0; q < s.Hp; ++q) {
    if ((q >= s.R && q < s.R + s.H) || s.rows[q] < 0) continue;
    for (int64_t a = 0; a < 3; ++a) {
      const T* src = gX + a * plane + q * row;
      T* dst = gX + a * plane + (s.rows[q] + s.R) * row;
      for (int64_t l = 0; l < row; ++l) dst[l] += src[l];
    }
  }
}

// Each pass over all M maps: chunks of 4 N (2 N with 16 registers: the y pass holds six
// accumulators per vector of the chunk), then of N (M is a multiple of N).
constexpr int MAP_CHUNK = WIDE_REGISTER_FILE ? 4 : 2;
#define M2_OVER_MAPS(FN, N, ...)                                     \
  do {                                                               \
    constexpr int chunk = MAP_CHUNK * (N);                           \
    const int64_t wide = (s.M / chunk) * chunk;                      \
    FN<T, chunk>(__VA_ARGS__, 0, wide);                              \
    if (wide < s.M) FN<T, (N)>(__VA_ARGS__, wide, s.M);              \
  } while (0)

// The ten invariants of every channel at one pixel: I[(c 10 + i) rstride + k] from the pixel's
// jet values jet[d * jstride + m] (d = 0..5, m = c N + k). cs, sn: (N) cos and sin of theta_k.
// The orientation differences read the neighbours k - 1 and k + 1 in place for the interior
// orientations (a vector loop) and wrap around for the two ends (scalar). Copying u, u_x, u_y
// into a buffer with periodic neighbours and reading it back shifted made every read a failed
// store-to-load forward (vector loads spanning several fresh stores): a third of the forward's
// time at 28x28 (benchmarks/m2_kernel_versions.py).
template <typename T>
M2_INLINE void orientation_terms_at(const T* u, const T* ux, const T* uy, const T* cs,
                                    const T* sn, T d1, T d2, int k, int before, int after, T* out,
                                    int64_t rstride) {
  const T c1 = cs[k], s1 = sn[k];
  const T a1 = c1 * ux[k] + s1 * uy[k];
  const T a2 = c1 * uy[k] - s1 * ux[k];
  const T uxt = (ux[after] - ux[before]) * d1, uyt = (uy[after] - uy[before]) * d1;
  out[3 * rstride + k] = (u[after] - u[before]) * d1;
  out[6 * rstride + k] = c1 * uxt + s1 * uyt + T(0.5) * a2;
  out[8 * rstride + k] = c1 * uyt - s1 * uxt - T(0.5) * a1;
  out[9 * rstride + k] = (u[after] - T(2) * u[k] + u[before]) * d2;
}

// The N orientations of a pixel as one vector, where that is one register of the target
// (REGISTER_BYTES; with AVX-512 N = 4, 8, 16 in float and 4, 8 in double, with AVX2 N = 4, 8 in
// float and 4 in double): the orientation differences are then lane rotations of it, the
// periodic ends included. Other N take the loops with scalar ends below, which contract
// multiply-adds differently (agreement to rounding, not bit for bit).
template <typename T, int N>
constexpr bool ORIENTATION_VECTOR = Lanes<T, N>::NV == 1;

// v[(k + S) mod N] at lane k.
template <typename T, int N, int S, int... K>
M2_INLINE typename Lanes<T, N>::vec rotate_lanes(const typename Lanes<T, N>::vec& v,
                                                 std::integer_sequence<int, K...>) {
#if defined(__clang__)
  return __builtin_shufflevector(v, v, ((K + S + N) % N)...);
#else
  using index = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef index mask __attribute__((vector_size(N * sizeof(T))));
  return __builtin_shuffle(v, mask{((K + S + N) % N)...});
#endif
}

template <typename T, int N, int S>
M2_INLINE typename Lanes<T, N>::vec rotate_lanes(const typename Lanes<T, N>::vec& v) {
  return rotate_lanes<T, N, S>(v, std::make_integer_sequence<int, N>{});
}

// invariants_at with the N orientations of each map as one vector.
template <typename T, int N>
M2_INLINE void invariants_vector_at(const T* jet, int64_t jstride, int64_t C, const T* cs,
                                    const T* sn, T d1, T d2, T* I, int64_t rstride) {
  using Q = Lanes<T, N>;
  using vec = typename Q::vec;
  const vec c1 = Q::load(cs), s1 = Q::load(sn);
  const vec cc = c1 * c1, ss = s1 * s1, cn = c1 * s1;
  for (int64_t c = 0; c < C; ++c) {
    const T* p = jet + c * N;
    const vec u = Q::load(p), ux = Q::load(p + jstride), uy = Q::load(p + 2 * jstride);
    const vec uxx = Q::load(p + 3 * jstride), uxy = Q::load(p + 4 * jstride);
    const vec uyy = Q::load(p + 5 * jstride);
    T* out = I + c * NJ * rstride;
    const vec a1 = c1 * ux + s1 * uy, a2 = c1 * uy - s1 * ux;
    const vec u_after = rotate_lanes<T, N, 1>(u), u_before = rotate_lanes<T, N, -1>(u);
    const vec uxt = (rotate_lanes<T, N, 1>(ux) - rotate_lanes<T, N, -1>(ux)) * d1;
    const vec uyt = (rotate_lanes<T, N, 1>(uy) - rotate_lanes<T, N, -1>(uy)) * d1;
    Q::store(out, u);
    Q::store(out + rstride, a1);
    Q::store(out + 2 * rstride, a2);
    Q::store(out + 3 * rstride, (u_after - u_before) * d1);
    Q::store(out + 4 * rstride, cc * uxx + T(2) * cn * uxy + ss * uyy);
    Q::store(out + 5 * rstride, cn * (uyy - uxx) + (cc - ss) * uxy);
    Q::store(out + 6 * rstride, c1 * uxt + s1 * uyt + T(0.5) * a2);
    Q::store(out + 7 * rstride, ss * uxx - T(2) * cn * uxy + cc * uyy);
    Q::store(out + 8 * rstride, c1 * uyt - s1 * uxt - T(0.5) * a1);
    Q::store(out + 9 * rstride, (u_after - T(2) * u + u_before) * d2);
  }
}

// invariants_adjoint_at with the N orientations of each map as one vector.
template <typename T, int N>
M2_INLINE void invariants_adjoint_vector_at(const T* gI, int64_t rstride, int64_t C,
                                            const T* cs, const T* sn, T d1, T d2, T* gjet,
                                            int64_t jstride) {
  using Q = Lanes<T, N>;
  using vec = typename Q::vec;
  const vec c1 = Q::load(cs), s1 = Q::load(sn);
  const vec cc = c1 * c1, ss = s1 * s1, cn = c1 * s1;
  for (int64_t c = 0; c < C; ++c) {
    const T* g = gI + c * NJ * rstride;
    const vec g0 = Q::load(g), g1 = Q::load(g + rstride), g2 = Q::load(g + 2 * rstride);
    const vec g3 = Q::load(g + 3 * rstride), g4 = Q::load(g + 4 * rstride);
    const vec g5 = Q::load(g + 5 * rstride), g6 = Q::load(g + 6 * rstride);
    const vec g7 = Q::load(g + 7 * rstride), g8 = Q::load(g + 8 * rstride);
    const vec g9 = Q::load(g + 9 * rstride);
    T* p = gjet + c * N;
    // u_x_theta and u_y_theta enter the invariants through (c g6 - s g8) and (s g6 + c g8) at
    // each orientation; the adjoint of the difference takes those from the neighbours.
    const vec px = c1 * g6 - s1 * g8, py = s1 * g6 + c1 * g8;
    const vec a1 = g1 - T(0.5) * g8, a2 = g2 + T(0.5) * g6;
    const vec before3 = rotate_lanes<T, N, -1>(g3), after3 = rotate_lanes<T, N, 1>(g3);
    const vec before9 = rotate_lanes<T, N, -1>(g9), after9 = rotate_lanes<T, N, 1>(g9);
    const vec gu = g0 + (before3 - after3) * d1 + (before9 - T(2) * g9 + after9) * d2;
    const vec gux = c1 * a1 - s1 * a2 +
                    (rotate_lanes<T, N, -1>(px) - rotate_lanes<T, N, 1>(px)) * d1;
    const vec guy = s1 * a1 + c1 * a2 +
                    (rotate_lanes<T, N, -1>(py) - rotate_lanes<T, N, 1>(py)) * d1;
    Q::store(p, gu);
    Q::store(p + jstride, gux);
    Q::store(p + 2 * jstride, guy);
    Q::store(p + 3 * jstride, cc * g4 - cn * g5 + ss * g7);
    Q::store(p + 4 * jstride, T(2) * cn * g4 + (cc - ss) * g5 - T(2) * cn * g7);
    Q::store(p + 5 * jstride, ss * g4 + cn * g5 + cc * g7);
  }
}

template <typename T, int N>
M2_INLINE void invariants_at(const T* jet, int64_t jstride, int64_t C, const T* cs, const T* sn,
                             T d1, T d2, T* I, int64_t rstride) {
  if constexpr (ORIENTATION_VECTOR<T, N>)
    return invariants_vector_at<T, N>(jet, jstride, C, cs, sn, d1, d2, I, rstride);
  for (int64_t c = 0; c < C; ++c) {
    const T* u = jet + c * N;
    const T* ux = u + jstride;
    const T* uy = ux + jstride;
    const T* uxx = uy + jstride;
    const T* uxy = uxx + jstride;
    const T* uyy = uxy + jstride;
    T* out = I + c * NJ * rstride;
#pragma omp simd
    for (int k = 0; k < N; ++k) {
      const T c1 = cs[k], s1 = sn[k];
      const T cc = c1 * c1, ss = s1 * s1, cn = c1 * s1;
      out[0 * rstride + k] = u[k];
      out[1 * rstride + k] = c1 * ux[k] + s1 * uy[k];
      out[2 * rstride + k] = c1 * uy[k] - s1 * ux[k];
      out[4 * rstride + k] = cc * uxx[k] + T(2) * cn * uxy[k] + ss * uyy[k];
      out[5 * rstride + k] = cn * (uyy[k] - uxx[k]) + (cc - ss) * uxy[k];
      out[7 * rstride + k] = ss * uxx[k] - T(2) * cn * uxy[k] + cc * uyy[k];
    }
#pragma omp simd
    for (int k = 1; k < N - 1; ++k)
      orientation_terms_at(u, ux, uy, cs, sn, d1, d2, k, k - 1, k + 1, out, rstride);
    orientation_terms_at(u, ux, uy, cs, sn, d1, d2, 0, N - 1, 1, out, rstride);
    orientation_terms_at(u, ux, uy, cs, sn, d1, d2, N - 1, N - 2, 0, out, rstride);
  }
}

// The orientation differences' part of the adjoint at orientation k, neighbours before/after:
// the gradients of u_theta, u_theta_theta, u_x_theta = (c g6 - s g8)(m), u_y_theta = (s g6 + c
// g8)(m) at m = before and after, read in place (as in invariants_at, no shifted copies).
template <typename T>
M2_INLINE void orientation_terms_adjoint_at(const T* g3, const T* g6, const T* g8, const T* g9,
                                            const T* cs, const T* sn, T d1, T d2, int k,
                                            int before, int after, T* gu, T* gux, T* guy) {
  const T cb = cs[before], sb = sn[before], ca = cs[after], sa = sn[after];
  gu[k] += (g3[before] - g3[after]) * d1 + (g9[before] - T(2) * g9[k] + g9[after]) * d2;
  gux[k] += ((cb * g6[before] - sb * g8[before]) - (ca * g6[after] - sa * g8[after])) * d1;
  guy[k] += ((sb * g6[before] + cb * g8[before]) - (sa * g6[after] + ca * g8[after])) * d1;
}

// Adjoint of invariants_at: gjet (6 x jstride, at this pixel) = from gI[(c 10 + i) rstride + k]
// (written, not added to: each pixel's jet gradient comes from its own invariants only).
template <typename T, int N>
M2_INLINE void invariants_adjoint_at(const T* gI, int64_t rstride, int64_t C, const T* cs,
                                     const T* sn, T d1, T d2, T* gjet, int64_t jstride) {
  if constexpr (ORIENTATION_VECTOR<T, N>)
    return invariants_adjoint_vector_at<T, N>(gI, rstride, C, cs, sn, d1, d2, gjet, jstride);
  for (int64_t c = 0; c < C; ++c) {
    const T* g0 = gI + c * NJ * rstride;
    const T *g1 = g0 + rstride, *g2 = g1 + rstride, *g3 = g2 + rstride, *g4 = g3 + rstride;
    const T *g5 = g4 + rstride, *g6 = g5 + rstride, *g7 = g6 + rstride, *g8 = g7 + rstride;
    const T* g9 = g8 + rstride;
    T* gu = gjet + c * N;
    T* gux = gu + jstride;
    T* guy = gux + jstride;
    T* guxx = guy + jstride;
    T* guxy = guxx + jstride;
    T* guyy = guxy + jstride;
#pragma omp simd
    for (int k = 0; k < N; ++k) {
      const T c1 = cs[k], s1 = sn[k], cc = c1 * c1, ss = s1 * s1, cn = c1 * s1;
      const T a1 = g1[k] - T(0.5) * g8[k], a2 = g2[k] + T(0.5) * g6[k];
      gu[k] = g0[k];
      gux[k] = c1 * a1 - s1 * a2;
      guy[k] = s1 * a1 + c1 * a2;
      guxx[k] = cc * g4[k] - cn * g5[k] + ss * g7[k];
      guxy[k] = T(2) * cn * g4[k] + (cc - ss) * g5[k] - T(2) * cn * g7[k];
      guyy[k] = ss * g4[k] + cn * g5[k] + cc * g7[k];
    }
#pragma omp simd
    for (int k = 1; k < N - 1; ++k)
      orientation_terms_adjoint_at(g3, g6, g8, g9, cs, sn, d1, d2, k, k - 1, k + 1, gu, gux, guy);
    orientation_terms_adjoint_at(g3, g6, g8, g9, cs, sn, d1, d2, 0, N - 1, 1, gu, gux, guy);
    orientation_terms_adjoint_at(g3, g6, g8, g9, cs, sn, d1, d2, N - 1, N - 2, 0, gu, gux, guy);
  }
}

// Rows [a0, a0 + BA) of out[a][l] = sum_b A[a sa + b sb] Bm[b][l], b < depth, l in [l0, l1)
// (steps of V; row stride L), the BA x V accumulators in registers over the whole depth.
template <typename T, int V, int BA>
M2_INLINE void gemm_block(const T* A, int64_t sa, int64_t sb, const T* Bm, int64_t a0,
                          int64_t depth, int64_t L, T* out, int64_t l0, int64_t l1) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  for (int64_t l = l0; l < l1; l += V) {
    vec c[BA][NV] = {};
    for (int64_t b = 0; b < depth; ++b) {
      const T* x = Bm + b * L + l;
      vec xv[NV];
      for (int n = 0; n < NV; ++n) xv[n] = Q::load(x + n * VW);
      for (int q = 0; q < BA; ++q) {
        const T w = A[(a0 + q) * sa + b * sb];
        for (int n = 0; n < NV; ++n) c[q][n] += w * xv[n];
      }
    }
    for (int q = 0; q < BA; ++q)
      for (int n = 0; n < NV; ++n) Q::store(out + (a0 + q) * L + l + n * VW, c[q][n]);
  }
}

// out[a][l] = sum_b A[a sa + b sb] Bm[b][l] for a < rows, b < depth, l in [l0, l1) (steps of V;
// row stride L): blocks of eight rows with 32 registers, six with 16, then four, two, one. Eight
// rows of two vectors use each loaded vector of Bm eight times (16 accumulators); with blocks of
// four, reading Bm (the row's invariants, larger than the L1 cache) set the pace on AVX-512.
// With 16 registers eight rows would spill; six (12 accumulators, 2 + 1 loaded) fit.
template <typename T, int V>
M2_INLINE void gemm_columns(const T* A, int64_t sa, int64_t sb, const T* Bm, int64_t rows,
                            int64_t depth, int64_t L, T* out, int64_t l0, int64_t l1) {
  constexpr int BLOCK = WIDE_REGISTER_FILE ? 8 : 6;
  int64_t a = 0;
  for (; a + BLOCK <= rows; a += BLOCK)
    gemm_block<T, V, BLOCK>(A, sa, sb, Bm, a, depth, L, out, l0, l1);
  for (; a + 4 <= rows; a += 4) gemm_block<T, V, 4>(A, sa, sb, Bm, a, depth, L, out, l0, l1);
  for (; a + 2 <= rows; a += 2) gemm_block<T, V, 2>(A, sa, sb, Bm, a, depth, L, out, l0, l1);
  for (; a < rows; ++a) gemm_block<T, V, 1>(A, sa, sb, Bm, a, depth, L, out, l0, l1);
}

// acc[o][r][v] += sum_{l = v mod V} G[o][l] I[r][l] for one row (rows x L) of an image: the V
// lanes of each dot product stay in T across all the rows of the image (acc, O x R x V, zeroed
// per image) and are summed into the double gradient once per image (flush_lanes). A horizontal
// sum into double per row would cost more than the row's products: rows hold only 56-224 values.
// Within a row, blocks of 4 x 4 dot products are held in registers (compile-time block sizes),
// each loaded vector of G and I used four times: with blocks of 2 x 4 each I vector was loaded
// twice, and the loads, not the multiply-adds, set the pace.
template <typename T, int V, int BO, int BR>
M2_INLINE void outer_block(const T* G, const T* I, int64_t L, int64_t R, T* acc) {
  using Q = Lanes<T, V>;
  using vec = typename Q::vec;
  constexpr int NV = Q::NV, VW = Q::VW;
  // One vector of the V lanes at a time (NV > 1 where V is wider than a register): BO x BR
  // accumulators, not NV times as many. Each lane's sum over l keeps its order.
  for (int n = 0; n < NV; ++n) {
    vec a[BO][BR];
    for (int q = 0; q < BO; ++q)
      for (int e = 0; e < BR; ++e) a[q][e] = Q::load(acc + (q * R + e) * V + n * VW);
    for (int64_t l = 0; l < L; l += V) {
      vec g[BO];
      for (int q = 0; q < BO; ++q) g[q] = Q::load(G + q * L + l + n * VW);
      for (int e = 0; e < BR; ++e) {
        const vec iv = Q::load(I + e * L + l + n * VW);
        for (int q = 0; q < BO; ++q) a[q][e] += g[q] * iv;
      }
    }
    for (int q = 0; q < BO; ++q)
      for (int e = 0; e < BR; ++e) Q::store(acc + (q * R + e) * V + n * VW, a[q][e]);
  }
}

// Rows [o, o + BO) of G against every row of I: blocks of BO x 4, then BO x 1.
template <typename T, int V, int BO>
M2_INLINE void outer_rows(const T* G, const T* I, int64_t o, int64_t R, int64_t L, T* acc) {
  const int64_t R4 = R / 4 * 4;
  for (int64_t r = 0; r < R4; r += 4)
    outer_block<T, V, BO, 4>(G + o * L, I + r * L, L, R, acc + (o * R + r) * V);
  for (int64_t r = R4; r < R; ++r)
    outer_block<T, V, BO, 1>(G + o * L, I + r * L, L, R, acc + (o * R + r) * V);
}

template <typename T, int V>
M2_INLINE void accumulate_outer(const T* G, const T* I, int64_t O, int64_t R, int64_t L, T* acc) {
  // Blocks of four rows of G with 32 registers (4 x 4 accumulators, 4 + 1 loaded vectors), of
  // three with 16 (3 x 4 + 3 + 1 = 16: four rows did not fit), then two, then one.
  constexpr int ROWS = WIDE_REGISTER_FILE ? 4 : 3;
  int64_t o = 0;
  for (; o + ROWS <= O; o += ROWS) outer_rows<T, V, ROWS>(G, I, o, R, L, acc);
  for (; o + 2 <= O; o += 2) outer_rows<T, V, 2>(G, I, o, R, L, acc);
  for (; o < O; ++o) outer_rows<T, V, 1>(G, I, o, R, L, acc);
}

// gw[i] += sum_v acc[i][v] (double), i < count; then acc is zeroed for the next image.
template <typename T, int V>
M2_INLINE void flush_lanes(T* acc, int64_t count, double* gw) {
  for (int64_t i = 0; i < count; ++i) {
    double sum = 0.0;
    for (int v = 0; v < V; ++v) sum += static_cast<double>(acc[i * V + v]);
    gw[i] += sum;
  }
  std::fill(acc, acc + count * V, T(0));
}

// The row's columns in steps of two registers while they last, then one, a half and a quarter
// (those of at least 16 bytes; L is a multiple of N, so of 4 lanes, which the steps always
// cover). The sums do not depend on the steps: each output is summed over b in order.
template <typename T>
M2_INLINE void gemm(const T* A, int64_t sa, int64_t sb, const T* Bm, int64_t rows, int64_t depth,
                    int64_t L, T* out) {
  constexpr int F = REGISTER_LANES<T>;
  int64_t l = L / (2 * F) * (2 * F);
  gemm_columns<T, 2 * F>(A, sa, sb, Bm, rows, depth, L, out, 0, l);
  if (L - l >= F) gemm_columns<T, F>(A, sa, sb, Bm, rows, depth, L, out, l, l + F), l += F;
  if constexpr (F / 2 * sizeof(T) >= 16)
    if (L - l >= F / 2)
      gemm_columns<T, F / 2>(A, sa, sb, Bm, rows, depth, L, out, l, l + F / 2), l += F / 2;
  if constexpr (F / 4 * sizeof(T) >= 16)
    if (L - l >= F / 4)
      gemm_columns<T, F / 4>(A, sa, sb, Bm, rows, depth, L, out, l, l + F / 4), l += F / 4;
}

// The lanes V of outer and flush must agree: both choose them from L (the widest vector of at
// most FULL_LANES that divides it), the same for every row and on every CPU.
template <typename T>
M2_INLINE int outer_lanes(int64_t L) {
  constexpr int F = FULL_LANES<T>;
  return L % F == 0 ? F : L % (F / 2) == 0 ? F / 2 : F / 4;
}

template <typename T>
M2_INLINE void outer(const T* G, const T* I, int64_t O, int64_t R, int64_t L, T* acc) {
  constexpr int F = FULL_LANES<T>;
  switch (outer_lanes<T>(L)) {
    case F: return accumulate_outer<T, F>(G, I, O, R, L, acc);
    case F / 2: return accumulate_outer<T, F / 2>(G, I, O, R, L, acc);
    default: return accumulate_outer<T, F / 4>(G, I, O, R, L, acc);
  }
}

template <typename T>
M2_INLINE void flush_outer(T* acc, int64_t count, int64_t L, double* gw) {
  constexpr int F = FULL_LANES<T>;
  switch (outer_lanes<T>(L)) {
    case F: return flush_lanes<T, F>(acc, count, gw);
    case F / 2: return flush_lanes<T, F / 2>(acc, count, gw);
    default: return flush_lanes<T, F / 4>(acc, count, gw);
  }
}

// Row buffers: the L = W N values of one image row (pixel j, orientation k at l = j N + k) of
// the C 10 invariants (Irow), the O outputs (Zrow) and their gradients.
template <typename T, int N>
void forward_image(const T* u, const T* weight, const Taps<T>& taps, const T* cs, const T* sn,
                   const Setup<T>& s, T* P, T* X, T* J, T* Irow, T* Zrow, T* z) {
  const int64_t M = s.M, CJ = s.C * NJ, L = s.W * N;
  pad_transpose(u, s, P);
  M2_OVER_MAPS(x_pass_chunks, N, P, taps, s, X);
  fill_padded_rows(s, X);
  for (int64_t i = 0; i < s.H; ++i) {
    M2_OVER_MAPS(y_pass_row_chunks, N, X, i, taps, s, J);
    for (int64_t j = 0; j < s.W; ++j)
      invariants_at<T, N>(J + j * M, s.W * M, s.C, cs, sn, s.d1, s.d2, Irow + j * N, L);
    gemm<T>(weight, CJ, 1, Irow, s.O, CJ, L, Zrow);
    for (int64_t o = 0; o < s.O; ++o)
      for (int k = 0; k < N; ++k) {
        T* dst = z + (o * N + k) * s.HW + i * s.W;
        const T* src = Zrow + o * L + k;
        for (int64_t j = 0; j < s.W; ++j) dst[j] = src[j * N];
      }
  }
}

// gJ holds the gradient of the whole image's jet (6 x H x W x M): the adjoint passes gather
// from it. invariants_adjoint_at writes every value of it once (stores, not additions), so it
// needs no zeroing: a fill of 77 MB per call at 28x28 (batch 64), and a load of the zeros back
// at every store, saved.
template <typename T, int N>
void backward_image(const T* gz, const T* u, const T* weight, const Taps<T>& taps, const T* cs,
                    const T* sn, const Setup<T>& s, T* P, T* X, T* J, T* Irow, T* gIrow, T* gZrow,
                    T* gJ, T* lanes, T* gu, double* gw) {
  const int64_t M = s.M, O = s.O, CJ = s.C * NJ, L = s.W * N;
  pad_transpose(u, s, P);
  M2_OVER_MAPS(x_pass_chunks, N, P, taps, s, X);
  fill_padded_rows(s, X);
  for (int64_t i = 0; i < s.H; ++i) {
    M2_OVER_MAPS(y_pass_row_chunks, N, X, i, taps, s, J);
    for (int64_t j = 0; j < s.W; ++j)
      invariants_at<T, N>(J + j * M, s.W * M, s.C, cs, sn, s.d1, s.d2, Irow + j * N, L);
    for (int64_t o = 0; o < O; ++o)
      for (int k = 0; k < N; ++k) {
        const T* src = gz + (o * N + k) * s.HW + i * s.W;
        T* dst = gZrow + o * L + k;
        for (int64_t j = 0; j < s.W; ++j) dst[j * N] = src[j];
      }
    gemm<T>(weight, 1, CJ, gZrow, CJ, O, L, gIrow);  // W^T gZ
    outer<T>(gZrow, Irow, O, CJ, L, lanes);
    for (int64_t j = 0; j < s.W; ++j)
      invariants_adjoint_at<T, N>(gIrow + j * N, L, s.C, cs, sn, s.d1, s.d2,
                                  gJ + (i * s.W + j) * M, s.HW * M);
  }
  flush_outer<T>(lanes, O * CJ, L, gw);
  M2_OVER_MAPS(y_pass_adjoint_chunks, N, gJ, taps, s, X);  // X reused as gX
  fold_padded_rows(s, X);
  M2_OVER_MAPS(x_pass_adjoint_chunks, N, X, taps, s, P);   // P reused as gP
  pad_transpose_adjoint(P, s, gu);
}

// ---------------------------------------------------------------------------- the Euler step
//
//   u_next = u + dt F(I(u)),   F(I) = W2 relu(W1 I + b1) + b2   (pointwise in (x, theta))
//
// w1 (O, C, 10), b1 (O), w2 (C, O), b2 (C): the network term of an M2 PDE system without batch
// normalisation, the whole explicit Euler step in one pass per image row.

// Sum of each row of G (rows x L) into out (double).
template <typename T>
M2_INLINE void accumulate_rows(const T* G, int64_t rows, int64_t L, double* out) {
  for (int64_t a = 0; a < rows; ++a) {
    double sum = 0.0;
    for (int64_t l = 0; l < L; ++l) sum += static_cast<double>(G[a * L + l]);
    out[a] += sum;
  }
}

template <typename T, int N>
void euler_forward_image(const T* u, const T* w1, const T* b1, const T* w2, const T* b2, T dt,
                         const Taps<T>& taps, const T* cs, const T* sn, const Setup<T>& s, T* P,
                         T* X, T* J, T* Irow, T* Hrow, T* Frow, T* out) {
  const int64_t M = s.M, CJ = s.C * NJ, L = s.W * N, O = s.O;
  pad_transpose(u, s, P);
  M2_OVER_MAPS(x_pass_chunks, N, P, taps, s, X);
  fill_padded_rows(s, X);
  for (int64_t i = 0; i < s.H; ++i) {
    M2_OVER_MAPS(y_pass_row_chunks, N, X, i, taps, s, J);
    for (int64_t j = 0; j < s.W; ++j)
      invariants_at<T, N>(J + j * M, s.W * M, s.C, cs, sn, s.d1, s.d2, Irow + j * N, L);
    gemm<T>(w1, CJ, 1, Irow, O, CJ, L, Hrow);
    for (int64_t o = 0; o < O; ++o) {
      T* h = Hrow + o * L;
      const T bias = b1[o];
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) h[l] = std::max(h[l] + bias, T(0));
    }
    gemm<T>(w2, O, 1, Hrow, s.C, O, L, Frow);
    for (int64_t c = 0; c < s.C; ++c)
      for (int k = 0; k < N; ++k) {
        const int64_t base = (c * N + k) * s.HW + i * s.W;
        const T* f = Frow + c * L + k;
        const T bias = b2[c];
        for (int64_t j = 0; j < s.W; ++j) out[base + j] = u[base + j] + dt * (f[j * N] + bias);
      }
  }
}

// grads (double, per image): w1 (O CJ), b1 (O), w2 (C O), b2 (C), in that order.
template <typename T, int N>
void euler_backward_image(const T* g_next, const T* u, const T* w1, const T* b1, const T* w2,
                          T dt, const Taps<T>& taps, const T* cs, const T* sn, const Setup<T>& s,
                          T* P, T* X, T* J, T* Irow, T* Hrow, T* gFrow, T* gHrow, T* gIrow,
                          T* gJ, T* lanes1, T* lanes2, T* gu, double* grads) {
  const int64_t M = s.M, CJ = s.C * NJ, L = s.W * N, O = s.O, C = s.C;
  double* gw1 = grads;
  double* gb1 = gw1 + O * CJ;
  double* gw2 = gb1 + O;
  double* gb2 = gw2 + C * O;
  pad_transpose(u, s, P);
  M2_OVER_MAPS(x_pass_chunks, N, P, taps, s, X);
  fill_padded_rows(s, X);
  for (int64_t i = 0; i < s.H; ++i) {
    M2_OVER_MAPS(y_pass_row_chunks, N, X, i, taps, s, J);
    for (int64_t j = 0; j < s.W; ++j)
      invariants_at<T, N>(J + j * M, s.W * M, C, cs, sn, s.d1, s.d2, Irow + j * N, L);
    gemm<T>(w1, CJ, 1, Irow, O, CJ, L, Hrow);  // pre-activations, then relu below
    for (int64_t o = 0; o < O; ++o) {
      T* h = Hrow + o * L;
      const T bias = b1[o];
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) h[l] = std::max(h[l] + bias, T(0));
    }
    for (int64_t c = 0; c < C; ++c)
      for (int k = 0; k < N; ++k) {
        const T* src = g_next + (c * N + k) * s.HW + i * s.W;
        T* dst = gFrow + c * L + k;
        for (int64_t j = 0; j < s.W; ++j) dst[j * N] = dt * src[j];
      }
    accumulate_rows(gFrow, C, L, gb2);
    outer<T>(gFrow, Hrow, C, O, L, lanes2);
    gemm<T>(w2, 1, O, gFrow, O, C, L, gHrow);  // W2^T gF
    for (int64_t l = 0; l < O * L; ++l)
      if (Hrow[l] <= T(0)) gHrow[l] = T(0);           // relu'(pre) = [pre > 0] = [h > 0]
    accumulate_rows(gHrow, O, L, gb1);
    outer<T>(gHrow, Irow, O, CJ, L, lanes1);
    gemm<T>(w1, 1, CJ, gHrow, CJ, O, L, gIrow);  // W1^T gH
    for (int64_t j = 0; j < s.W; ++j)
      invariants_adjoint_at<T, N>(gIrow + j * N, L, C, cs, sn, s.d1, s.d2,
                                  gJ + (i * s.W + j) * M, s.HW * M);
  }
  flush_outer<T>(lanes1, O * CJ, L, gw1);
  flush_outer<T>(lanes2, C * O, L, gw2);
  M2_OVER_MAPS(y_pass_adjoint_chunks, N, gJ, taps, s, X);  // X reused as gX
  fold_padded_rows(s, X);
  M2_OVER_MAPS(x_pass_adjoint_chunks, N, X, taps, s, P);   // P reused as gP
  std::copy(g_next, g_next + M * s.HW, gu);                // the identity part of u + dt F
  pad_transpose_adjoint(P, s, gu);
}

template <typename T>
void check_step(const torch::Tensor& u, const torch::Tensor& w1, const torch::Tensor& b1,
                const torch::Tensor& w2, const torch::Tensor& b2) {
  const int64_t O = w1.size(0), C = u.size(1);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == O, "m2_euler_step: b1 must be (O,) = [", O,
              "] (w1's outputs), got ", b1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == O, "m2_euler_step: w2 must be (C, O) = [",
              C, ", ", O, "], got ", w2.sizes());
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == C, "m2_euler_step: b2 must be (C,) = [", C,
              "] (u's channels), got ", b2.sizes());
  const std::pair<const char*, const torch::Tensor*> named[] = {{"b1", &b1}, {"w2", &w2}, {"b2", &b2}};
  for (const auto& [name, t] : named)
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "m2_euler_step: ", name, " must have the dtype of u (",
                u.scalar_type(), "), got ", t->scalar_type());
}

template <typename T, int N>
torch::Tensor step_forward_typed(const torch::Tensor& u, const torch::Tensor& w1,
                                 const torch::Tensor& b1, const torch::Tensor& w2,
                                 const torch::Tensor& b2, const torch::Tensor& stencils,
                                 const torch::Tensor& frame, const std::string& boundary,
                                 double dt) {
  const auto s = setup<T>(u, w1, stencils, boundary, "w1");
  check_step<T>(u, w1, b1, w2, b2);
  const int64_t B = u.size(0), per_scale = B / stencils.size(0), L = s.W * N;
  torch::Tensor out = torch::empty_like(u);
  const T* U = u.data_ptr<T>();
  const T* W1 = w1.data_ptr<T>();
  const T* B1 = b1.data_ptr<T>();
  const T* W2 = w2.data_ptr<T>();
  const T* B2 = b2.data_ptr<T>();
  const double* G = stencils.data_ptr<double>();
  const double* F = frame.data_ptr<double>();
  T* OUT = out.data_ptr<T>();
  T cs[N], sn[N];
  for (int k = 0; k < N; ++k) {
    cs[k] = static_cast<T>(F[2 * k]);
    sn[k] = static_cast<T>(F[2 * k + 1]);
  }
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> P, X, J, Irow, Hrow, Frow;
    const bool ok = oom.allocate([&] {
      P.resize(s.Hp * s.Wp * s.M);
      X.resize(3 * s.Hp * s.W * s.M);
      J.resize(6 * s.W * s.M);
      Irow.resize(s.C * NJ * L);
      Hrow.resize(s.O * L);
      Frow.resize(s.C * L);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const Taps<T> taps(G + (b / per_scale) * 3 * s.K, s.K);
      euler_forward_image<T, N>(U + b * s.M * s.HW, W1, B1, W2, B2, static_cast<T>(dt), taps, cs,
                                sn, s, P.data(), X.data(), J.data(), Irow.data(), Hrow.data(),
                                Frow.data(), OUT + b * s.M * s.HW);
    }
  }
  oom.check("m2_euler_step");
  return out;
}

template <typename T, int N>
std::vector<torch::Tensor> step_backward_typed(const torch::Tensor& g_next, const torch::Tensor& u,
                                               const torch::Tensor& w1, const torch::Tensor& b1,
                                               const torch::Tensor& w2, const torch::Tensor& b2,
                                               const torch::Tensor& stencils,
                                               const torch::Tensor& frame,
                                               const std::string& boundary, double dt) {
  const auto s = setup<T>(u, w1, stencils, boundary, "w1");
  check_step<T>(u, w1, b1, w2, b2);
  const int64_t B = u.size(0), per_scale = B / stencils.size(0), L = s.W * N;
  const int64_t CJ = s.C * NJ, width = s.O * CJ + s.O + s.C * s.O + s.C;
  torch::Tensor grad_u = torch::empty_like(u);
  torch::Tensor per_image = torch::zeros({B, width}, u.options().dtype(torch::kFloat64));
  const T* GN = g_next.data_ptr<T>();
  const T* U = u.data_ptr<T>();
  const T* W1 = w1.data_ptr<T>();
  const T* B1 = b1.data_ptr<T>();
  const T* W2 = w2.data_ptr<T>();
  const double* G = stencils.data_ptr<double>();
  const double* F = frame.data_ptr<double>();
  T* GU = grad_u.data_ptr<T>();
  double* GR = per_image.data_ptr<double>();
  T cs[N], sn[N];
  for (int k = 0; k < N; ++k) {
    cs[k] = static_cast<T>(F[2 * k]);
    sn[k] = static_cast<T>(F[2 * k + 1]);
  }
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> P, X, J, Irow, Hrow, gFrow, gHrow, gIrow, gJ, lanes1, lanes2;
    const bool ok = oom.allocate([&] {
      P.resize(s.Hp * s.Wp * s.M);
      X.resize(3 * s.Hp * s.W * s.M);
      J.resize(6 * s.W * s.M);
      Irow.resize(CJ * L);
      Hrow.resize(s.O * L);
      gFrow.resize(s.C * L);
      gHrow.resize(s.O * L);
      gIrow.resize(CJ * L);
      gJ.resize(6 * s.HW * s.M);
      lanes1.resize(s.O * CJ * FULL_LANES<T>, T(0));
      lanes2.resize(s.C * s.O * FULL_LANES<T>, T(0));
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const Taps<T> taps(G + (b / per_scale) * 3 * s.K, s.K);
      euler_backward_image<T, N>(GN + b * s.M * s.HW, U + b * s.M * s.HW, W1, B1, W2,
                                 static_cast<T>(dt), taps, cs, sn, s, P.data(), X.data(),
                                 J.data(), Irow.data(), Hrow.data(), gFrow.data(), gHrow.data(),
                                 gIrow.data(), gJ.data(), lanes1.data(), lanes2.data(),
                                 GU + b * s.M * s.HW, GR + b * width);
    }
  }
  oom.check("m2_euler_step (backward)");
  return {grad_u, per_image};
}

// ---------------------------------------------------------------------------- the update
//
//   u_next = u + dt (w2 relu(scale z + shift) + b2)
//
// z (B, O, P) are the mixed invariants (m2_mix_invariants) of the P = N H W points of each image,
// scale and shift (O) the affine map of their batch normalisation (computed by the caller from
// the batch statistics, so that autograd carries their dependence on z): the rest of the network
// term and the Euler update in one pass over the points, in chunks of V with the hidden values in
// a small buffer.

constexpr int TAIL_V = 64;

// Points per channel of a (B, C, ...) tensor: the product of its sizes after the first two (a
// product, not numel / (B C), which divides by zero for an empty batch).
int64_t points_per_channel(const torch::Tensor& t) {
  int64_t points = 1;
  for (int64_t d = 2; d < t.dim(); ++d) points *= t.size(d);
  return points;
}

template <typename T>
void tail_forward_image(const T* u, const T* z, const T* scale, const T* shift, const T* w2,
                        const T* b2, T dt, int64_t C, int64_t O, int64_t P, T* h, T* out) {
  for (int64_t p0 = 0; p0 < P; p0 += TAIL_V) {
    const int64_t n = std::min<int64_t>(TAIL_V, P - p0);
    for (int64_t o = 0; o < O; ++o) {
      const T* zo = z + o * P + p0;
      T* ho = h + o * TAIL_V;
      const T a = scale[o], b = shift[o];
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) ho[t] = std::max(a * zo[t] + b, T(0));
    }
    for (int64_t c = 0; c < C; ++c) {
      T acc[TAIL_V];
      for (int64_t t = 0; t < n; ++t) acc[t] = b2[c];
      const T* wc = w2 + c * O;
      for (int64_t o = 0; o < O; ++o) {
        const T w = wc[o];
        const T* ho = h + o * TAIL_V;
#pragma omp simd
        for (int64_t t = 0; t < n; ++t) acc[t] += w * ho[t];
      }
      const T* uc = u + c * P + p0;
      T* oc = out + c * P + p0;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) oc[t] = uc[t] + dt * acc[t];
    }
  }
}

// grads (double, per image): scale (O), shift (O), w2 (C O), b2 (C), in that order.
template <typename T>
void tail_backward_image(const T* g, const T* z, const T* scale, const T* shift, const T* w2,
                         T dt, int64_t C, int64_t O, int64_t P, T* h, T* gh, T* gz,
                         double* grads) {
  double* gscale = grads;
  double* gshift = gscale + O;
  double* gw2 = gshift + O;
  double* gb2 = gw2 + C * O;
  for (int64_t p0 = 0; p0 < P; p0 += TAIL_V) {
    const int64_t n = std::min<int64_t>(TAIL_V, P - p0);
    for (int64_t o = 0; o < O; ++o) {
      const T* zo = z + o * P + p0;
      T* ho = h + o * TAIL_V;
      T* gho = gh + o * TAIL_V;
      const T a = scale[o], b = shift[o];
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        ho[t] = std::max(a * zo[t] + b, T(0));
        gho[t] = T(0);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const T* gc = g + c * P + p0;
      T gf[TAIL_V];
      T sum = T(0);
      for (int64_t t = 0; t < n; ++t) {
        gf[t] = dt * gc[t];
        sum += gf[t];
      }
      gb2[c] += static_cast<double>(sum);
      const T* wc = w2 + c * O;
      for (int64_t o = 0; o < O; ++o) {
        const T w = wc[o];
        const T* ho = h + o * TAIL_V;
        T* gho = gh + o * TAIL_V;
        T dot = T(0);
#pragma omp simd reduction(+ : dot)
        for (int64_t t = 0; t < n; ++t) {
          dot += gf[t] * ho[t];
          gho[t] += w * gf[t];
        }
        gw2[c * O + o] += static_cast<double>(dot);
      }
    }
    for (int64_t o = 0; o < O; ++o) {
      const T* zo = z + o * P + p0;
      const T* ho = h + o * TAIL_V;
      const T* gho = gh + o * TAIL_V;
      T* gzo = gz + o * P + p0;
      const T a = scale[o];
      T ds = T(0), db = T(0);
#pragma omp simd reduction(+ : ds, db)
      for (int64_t t = 0; t < n; ++t) {
        const T gpre = ho[t] > T(0) ? gho[t] : T(0);
        gzo[t] = a * gpre;
        ds += gpre * zo[t];
        db += gpre;
      }
      gscale[o] += static_cast<double>(ds);
      gshift[o] += static_cast<double>(db);
    }
  }
}

template <typename T>
torch::Tensor tail_forward_typed(const torch::Tensor& u, const torch::Tensor& z,
                                 const torch::Tensor& scale, const torch::Tensor& shift,
                                 const torch::Tensor& w2, const torch::Tensor& b2, double dt) {
  const int64_t B = u.size(0), C = u.size(1), O = z.size(1), P = points_per_channel(u);
  torch::Tensor out = torch::empty_like(u);
  const T* U = u.data_ptr<T>();
  const T* Z = z.data_ptr<T>();
  T* OUT = out.data_ptr<T>();
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> h;
    const bool ok = oom.allocate([&] { h.resize(O * TAIL_V); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      tail_forward_image<T>(U + b * C * P, Z + b * O * P, scale.data_ptr<T>(),
                            shift.data_ptr<T>(), w2.data_ptr<T>(), b2.data_ptr<T>(),
                            static_cast<T>(dt), C, O, P, h.data(), OUT + b * C * P);
    }
  }
  oom.check("m2_update");
  return out;
}

template <typename T>
std::vector<torch::Tensor> tail_backward_typed(const torch::Tensor& g, const torch::Tensor& z,
                                               const torch::Tensor& scale,
                                               const torch::Tensor& shift,
                                               const torch::Tensor& w2, double dt) {
  const int64_t B = g.size(0), C = g.size(1), O = z.size(1), P = points_per_channel(g);
  const int64_t width = 2 * O + C * O + C;
  torch::Tensor grad_z = torch::empty_like(z);
  torch::Tensor per_image = torch::zeros({B, width}, g.options().dtype(torch::kFloat64));
  const T* G = g.data_ptr<T>();
  const T* Z = z.data_ptr<T>();
  T* GZ = grad_z.data_ptr<T>();
  double* GR = per_image.data_ptr<double>();
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> h, gh;
    const bool ok = oom.allocate([&] {
      h.resize(O * TAIL_V);
      gh.resize(O * TAIL_V);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      tail_backward_image<T>(G + b * C * P, Z + b * O * P, scale.data_ptr<T>(),
                             shift.data_ptr<T>(), w2.data_ptr<T>(), static_cast<T>(dt), C, O, P,
                             h.data(), gh.data(), GZ + b * O * P, GR + b * width);
    }
  }
  oom.check("m2_update");
  return {grad_z, per_image};
}

template <typename T, int N>
torch::Tensor forward_typed(const torch::Tensor& u, const torch::Tensor& weight,
                            const torch::Tensor& stencils, const torch::Tensor& frame,
                            const std::string& boundary) {
  const auto s = setup<T>(u, weight, stencils, boundary);
  const int64_t B = u.size(0), per_scale = B / stencils.size(0);
  torch::Tensor z = torch::empty({B, s.O, s.N, s.H, s.W}, u.options());
  const T* U = u.data_ptr<T>();
  const T* Wt = weight.data_ptr<T>();
  const double* G = stencils.data_ptr<double>();
  const double* F = frame.data_ptr<double>();
  T* Z = z.data_ptr<T>();
  T cs[N], sn[N];
  for (int k = 0; k < N; ++k) {
    cs[k] = static_cast<T>(F[2 * k]);
    sn[k] = static_cast<T>(F[2 * k + 1]);
  }
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> P, X, J, Irow, Zrow;
    const bool ok = oom.allocate([&] {
      P.resize(s.Hp * s.Wp * s.M);
      X.resize(3 * s.Hp * s.W * s.M);
      J.resize(6 * s.W * s.M);
      Irow.resize(s.C * NJ * s.W * N);
      Zrow.resize(s.O * s.W * N);
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const Taps<T> taps(G + (b / per_scale) * 3 * s.K, s.K);
      forward_image<T, N>(U + b * s.M * s.HW, Wt, taps, cs, sn, s, P.data(), X.data(), J.data(),
                          Irow.data(), Zrow.data(), Z + b * s.O * N * s.HW);
    }
  }
  oom.check("m2_mix_invariants");
  return z;
}

template <typename T, int N>
std::vector<torch::Tensor> backward_typed(const torch::Tensor& grad_z, const torch::Tensor& u,
                                          const torch::Tensor& weight,
                                          const torch::Tensor& stencils,
                                          const torch::Tensor& frame,
                                          const std::string& boundary) {
  const auto s = setup<T>(u, weight, stencils, boundary);
  const int64_t B = u.size(0), per_scale = B / stencils.size(0), CJ = s.C * NJ;
  torch::Tensor grad_u = torch::zeros_like(u);
  torch::Tensor per_image = torch::zeros({B, s.O * CJ}, u.options().dtype(torch::kFloat64));
  const T* U = u.data_ptr<T>();
  const T* GZ = grad_z.data_ptr<T>();
  const T* Wt = weight.data_ptr<T>();
  const double* G = stencils.data_ptr<double>();
  const double* F = frame.data_ptr<double>();
  T* GU = grad_u.data_ptr<T>();
  double* GW = per_image.data_ptr<double>();
  T cs[N], sn[N];
  for (int k = 0; k < N; ++k) {
    cs[k] = static_cast<T>(F[2 * k]);
    sn[k] = static_cast<T>(F[2 * k + 1]);
  }
  OutOfMemory oom;
#pragma omp parallel
  {
    std::vector<T> P, X, J, Irow, gIrow, gZrow, gJ, lanes;
    const bool ok = oom.allocate([&] {
      P.resize(s.Hp * s.Wp * s.M);
      X.resize(3 * s.Hp * s.W * s.M);
      J.resize(6 * s.W * s.M);
      Irow.resize(CJ * s.W * N);
      gIrow.resize(CJ * s.W * N);
      gZrow.resize(s.O * s.W * N);
      gJ.resize(6 * s.HW * s.M);
      lanes.resize(s.O * CJ * FULL_LANES<T>, T(0));
    });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const Taps<T> taps(G + (b / per_scale) * 3 * s.K, s.K);
      backward_image<T, N>(GZ + b * s.O * N * s.HW, U + b * s.M * s.HW, Wt, taps, cs, sn, s,
                           P.data(), X.data(), J.data(), Irow.data(), gIrow.data(),
                           gZrow.data(), gJ.data(), lanes.data(), GU + b * s.M * s.HW,
                           GW + b * s.O * CJ);
    }
  }
  oom.check("m2_mix_invariants (backward)");
  return {grad_u, per_image};
}

void check_arguments(const torch::Tensor& u, const torch::Tensor& weight,
                     const torch::Tensor& stencils, const torch::Tensor& frame,
                     const char* weight_name = "weight") {
  TORCH_CHECK(stencils.scalar_type() == torch::kFloat64 && frame.scalar_type() == torch::kFloat64,
              "m2_invariants: stencils and frame must be float64, got ", stencils.scalar_type(), " and ",
              frame.scalar_type());
  TORCH_CHECK(u.dim() == 5, "m2_invariants: u must be (B, C, N, H, W), got ", u.sizes());
  TORCH_CHECK(frame.dim() == 2 && frame.size(0) == u.size(2) && frame.size(1) == 2,
              "m2_invariants: frame must be (N, 2) with N = ", u.size(2), " (u's orientations), got ",
              frame.sizes());
  TORCH_CHECK(u.scalar_type() == weight.scalar_type(), "m2_invariants: ", weight_name,
              " must have the dtype of u (", u.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK(u.scalar_type() == torch::kFloat64 || u.scalar_type() == torch::kFloat32,
              "m2_invariants: u must be float32 or float64, got ", u.scalar_type());
}

// Dispatch on the dtype and on N (a compile-time vector length over the orientations).
#define M2_DISPATCH(FN, ...)                                                          \
  do {                                                                                 \
    const int64_t n = u.size(2);                                                       \
    const bool dbl = u.scalar_type() == torch::kFloat64;                               \
    switch (n) {                                                                       \
      case 4: return dbl ? FN<double, 4>(__VA_ARGS__) : FN<float, 4>(__VA_ARGS__);     \
      case 8: return dbl ? FN<double, 8>(__VA_ARGS__) : FN<float, 8>(__VA_ARGS__);     \
      case 12: return dbl ? FN<double, 12>(__VA_ARGS__) : FN<float, 12>(__VA_ARGS__);  \
      case 16: return dbl ? FN<double, 16>(__VA_ARGS__) : FN<float, 16>(__VA_ARGS__);  \
      default: TORCH_CHECK(false, "m2_invariants: N must be 4, 8, 12 or 16, got ", n); \
    }                                                                                  \
  } while (0)

torch::Tensor m2_forward(torch::Tensor u, torch::Tensor weight, torch::Tensor stencils,
                         torch::Tensor frame, std::string boundary) {
  check_arguments(u, weight, stencils, frame);
  M2_DISPATCH(forward_typed, u, weight, stencils, frame, boundary);
}

std::vector<torch::Tensor> m2_backward(torch::Tensor grad_z, torch::Tensor u,
                                       torch::Tensor weight, torch::Tensor stencils,
                                       torch::Tensor frame, std::string boundary) {
  check_arguments(u, weight, stencils, frame);
  TORCH_CHECK(grad_z.scalar_type() == u.scalar_type(), "m2_invariants: grad_z must have the dtype of u (",
              u.scalar_type(), "), got ", grad_z.scalar_type());
  // Read at the offsets of the forward's output (B, O, N, H, W): another shape was read out of
  // bounds.
  TORCH_CHECK(weight.dim() == 3 && grad_z.is_contiguous() &&
                  grad_z.sizes() == torch::IntArrayRef({u.size(0), weight.size(0), u.size(2),
                                                        u.size(3), u.size(4)}),
              "m2_invariants: grad_z must be contiguous (B, O, N, H, W) like the forward's output, got ",
              grad_z.sizes());
  M2_DISPATCH(backward_typed, grad_z, u, weight, stencils, frame, boundary);
}

torch::Tensor m2_step_forward(torch::Tensor u, torch::Tensor w1, torch::Tensor b1,
                              torch::Tensor w2, torch::Tensor b2, torch::Tensor stencils,
                              torch::Tensor frame, std::string boundary, double dt) {
  check_arguments(u, w1, stencils, frame, "w1");
  M2_DISPATCH(step_forward_typed, u, w1, b1, w2, b2, stencils, frame, boundary, dt);
}

std::vector<torch::Tensor> m2_step_backward(torch::Tensor g_next, torch::Tensor u,
                                            torch::Tensor w1, torch::Tensor b1, torch::Tensor w2,
                                            torch::Tensor b2, torch::Tensor stencils,
                                            torch::Tensor frame, std::string boundary,
                                            double dt) {
  check_arguments(u, w1, stencils, frame, "w1");
  TORCH_CHECK(g_next.scalar_type() == u.scalar_type(), "m2_euler_step: grad_next must have the dtype of u (",
              u.scalar_type(), "), got ", g_next.scalar_type());
  TORCH_CHECK(g_next.is_contiguous() && g_next.sizes() == u.sizes(),
              "m2_euler_step: grad_next must be contiguous with the shape of u ", u.sizes(), ", got ",
              g_next.sizes());
  M2_DISPATCH(step_backward_typed, g_next, u, w1, b1, w2, b2, stencils, frame, boundary, dt);
}

// op: the operator named in the messages; first: the name of x, the tensor of C channels (u of
// m2_update, grad_next of m2_update_backward), both (B, C, N, H, W).
void check_tail(const char* op, const char* first, const torch::Tensor& x, const torch::Tensor& z,
                const torch::Tensor& scale, const torch::Tensor& shift, const torch::Tensor& w2,
                const torch::Tensor& b2) {
  TORCH_CHECK(x.dim() == 5, op, ": ", first, " must be (B, C, N, H, W), got ", x.sizes());
  TORCH_CHECK(z.dim() == 5 && z.size(0) == x.size(0) && z.sizes().slice(2) == x.sizes().slice(2),
              op, ": z must be (B, O, N, H, W) with the B, N, H, W of ", first, " ", x.sizes(), ", got ",
              z.sizes());
  const int64_t O = z.size(1), C = x.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == O && shift.dim() == 1 && shift.size(0) == O,
              op, ": scale and shift must be (O,) = [", O, "] (z's channels), got ", scale.sizes(), " and ",
              shift.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(1) == O, op, ": w2 must be (C, O) with O = ", O,
              " (z's channels), got ", w2.sizes());
  TORCH_CHECK(w2.size(0) == C, op, ": ", first, " ", x.sizes(), " must have C = ", w2.size(0),
              " channels (w2 (C, O) ", w2.sizes(), "), got ", C);
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == C, op, ": b2 must be (C,) = [", C, "], got ", b2.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
              op, ": ", first, " must be float32 or float64, got ", x.scalar_type());
  const std::pair<const char*, const torch::Tensor*> named[] = {
      {first, &x}, {"z", &z}, {"scale", &scale}, {"shift", &shift}, {"w2", &w2}, {"b2", &b2}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of ", first,
                " (", x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
}

torch::Tensor m2_tail_forward(torch::Tensor u, torch::Tensor z, torch::Tensor scale,
                              torch::Tensor shift, torch::Tensor w2, torch::Tensor b2, double dt) {
  check_tail("m2_update", "u", u, z, scale, shift, w2, b2);
  if (u.scalar_type() == torch::kFloat64)
    return tail_forward_typed<double>(u, z, scale, shift, w2, b2, dt);
  return tail_forward_typed<float>(u, z, scale, shift, w2, b2, dt);
}

std::vector<torch::Tensor> m2_tail_backward(torch::Tensor g, torch::Tensor z, torch::Tensor scale,
                                            torch::Tensor shift, torch::Tensor w2,
                                            torch::Tensor b2, double dt) {
  check_tail("m2_update_backward", "grad_next", g, z, scale, shift, w2, b2);
  if (g.scalar_type() == torch::kFloat64)
    return tail_backward_typed<double>(g, z, scale, shift, w2, dt);
  return tail_backward_typed<float>(g, z, scale, shift, w2, dt);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &m2_forward, "eqpdenet::m2_mix_invariants on the CPU");
  m.def("backward", &m2_backward, "eqpdenet::m2_mix_invariants_backward on the CPU");
  m.def("step_forward", &m2_step_forward, "eqpdenet::m2_euler_step on the CPU");
  m.def("step_backward", &m2_step_backward, "eqpdenet::m2_euler_step_backward on the CPU");
  m.def("update_forward", &m2_tail_forward, "eqpdenet::m2_update on the CPU");
  m.def("update_backward", &m2_tail_backward, "eqpdenet::m2_update_backward on the CPU");
  m.def("register_bytes", []() { return REGISTER_BYTES; },
        "bytes of the widest vector the build computes with (one register of the target)");
}
