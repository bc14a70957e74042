// Fused explicit-Euler integration of the PDE layer of eqpdenet (CPU, OpenMP).
//
// One call integrates every PDE of a layer for every image of a batch: for each image, each PDE
// and each channel, a thread runs all Euler steps in small cache-resident buffers, computing the
// 3x3 jet, the invariants, F_theta and the update in one pass per step. The backward pass is the
// exact adjoint (reverse-mode) of the same discrete scheme, including the boundary padding.
//
// Layout: every image lives in a buffer with a margin of 2 pixels, row stride Wp = W + 4; pixel
// (i, j) sits at (i + 2) * Wp + (j + 2). Ring 1 (the 1-pixel halo) holds the boundary padding,
// ring 2 stays zero, so the stencil loops run flat over contiguous memory and vectorise.
//
// The reference (plain PyTorch, eqpdenet.pde) defines the semantics; this file must agree with it
// to rounding. It is the CPU implementation of the operators eqpdenet::euler_evolve and
// eqpdenet::euler_evolve_backward, whose schema (named arguments) is declared in
// eqpdenet/kernels/op.py; eqpdenet.kernels.op.unsupported_reason checks which configurations
// this kernel supports before it is called.

#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <string>
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

// The pointwise pieces must be inlined into the pixel loops to vectorise; with ~80 template
// instances GCC's unit-wide inlining budget ran out for some of them (the covariant sim2
// backward then ran ~10x slower), so inlining is forced.
#define EQ_INLINE inline __attribute__((always_inline))

enum Boundary { REPLICATE = 0, ZEROS = 1, REFLECT = 2, CIRCULAR = 3 };
// An invariant set together with the regularisation of its ratios (the template parameter SET):
// ratio(a, b) = a b / (b^2 + eps^2 ref + tiny) (covariant: ref = R = |H|^2 + |grad u|^4 for
// second-order b, R^2 for det H; tiny the square root of the smallest positive normal number
// of T) or
// a b / (b^2 + eps^2) (absolute); se2 has no ratio.
enum SetKind { SE2 = 0, SCALING_ABS = 1, SCALING_COV = 2, SIM2_ABS = 3, SIM2_COV = 4 };

template <typename T>
struct Pde {
  int set, boundary, steps, nmono;
  bool check, full, linear;
  T dt, eps2, tiny;
  // Structured 3x3 stencil coefficients (already divided by the grid spacing powers):
  // u = cu C; u_x = ax0 (R - L) + ax1 ((TR - TL) + (BR - BL)); u_y = ay0 (Tp - Bt) + ay1 ((TL - BL)
  // + (TR - BR)); u_xx = b0 (L + R) + b1 C + b2 corners + b3 (Tp + Bt); u_xy = c ((TR - TL) + (BL -
  // BR)); u_yy = e0 (Tp + Bt) + e1 C + e2 corners + e3 (L + R).
  T cu, ax0, ax1, ay0, ay1, b0, b1, b2, b3, c, e0, e1, e2, e3;
  T bias;
  const T* w;
  const int64_t* recipe;  // (nmono, 2): lower monomial index (-1: none), invariant index
};

int set_code(const std::string& name, const std::string& regularisation) {
  TORCH_CHECK(regularisation == "covariant" || regularisation == "absolute",
              "fused_euler: unknown ratio regularisation '", regularisation, "'");
  const bool cov = regularisation == "covariant";
  if (name == "se2") return SE2;
  if (name == "scaling") return cov ? SCALING_COV : SCALING_ABS;
  if (name == "sim2") return cov ? SIM2_COV : SIM2_ABS;
  TORCH_CHECK(false, "fused_euler: unknown invariant set '", name, "'");
}

constexpr int n_invariants_of(int set) {
  return set == SE2 ? 5 : (set == SCALING_ABS || set == SCALING_COV) ? 6 : 4;
}

int boundary_code(const std::string& name) {
  if (name == "replicate") return REPLICATE;
  if (name == "zeros") return ZEROS;
  if (name == "reflect") return REFLECT;
  if (name == "circular") return CIRCULAR;
  TORCH_CHECK(false, "fused_euler: unknown boundary '", name, "'");
}

// One PDE's settings. k: its jet weights (6, 3, 3), rows top to bottom, float64.
template <typename T>
Pde<T> make_pde(const std::string& set, const std::string& boundary, double dt, double eps,
                const std::string& regularisation, int64_t steps, bool check, const double* k,
                const T* w, T bias, const int64_t* recipe, int64_t mmax) {
  auto at = [k](int d, int row, int col) { return static_cast<T>(k[d * 9 + row * 3 + col]); };
  Pde<T> q;
  q.set = set_code(set, regularisation);
  q.boundary = boundary_code(boundary);
  q.steps = static_cast<int>(steps);
  q.nmono = 0;
  while (q.nmono < mmax && recipe[2 * q.nmono + 1] >= 0) ++q.nmono;
  // F ends at its first row with a negative invariant index; the rows from there on only pad
  // (the schema's (-1, -1)). A real row after a padding row was dropped, silently.
  for (int64_t m = q.nmono; m < mmax; ++m)
    TORCH_CHECK(recipe[2 * m] == -1 && recipe[2 * m + 1] == -1, "fused_euler: monomial ", m,
                " of a '", set, "' PDE must be the padding (-1, -1), as every row from F's first "
                "padding row on, got (", recipe[2 * m], ", ", recipe[2 * m + 1], ")");
  // A monomial multiplies an earlier one by an invariant of the set: any other index would be
  // read outside the per-pixel buffers.
  for (int m = 0; m < q.nmono; ++m)
    TORCH_CHECK(recipe[2 * m] >= -1 && recipe[2 * m] < m && recipe[2 * m + 1] < n_invariants_of(q.set),
                "fused_euler: monomial ", m, " of a '", set, "' PDE must be (an earlier monomial or -1, "
                "an invariant below ", n_invariants_of(q.set), "), got (", recipe[2 * m], ", ",
                recipe[2 * m + 1], ")");
  q.linear = true;
  for (int m = 0; m < q.nmono; ++m) q.linear &= recipe[2 * m] == -1 && recipe[2 * m + 1] == m;
  q.linear &= q.nmono == n_invariants_of(q.set);
  q.check = check;
  q.dt = static_cast<T>(dt);
  const T e = static_cast<T>(eps);
  q.eps2 = e * e;  // as the reference: eps * eps in the tensor's dtype
  q.tiny = std::sqrt(std::numeric_limits<T>::min());  // eqpdenet.pde.invariants.ratio_guard
  q.cu = at(0, 1, 1);
  q.ax0 = at(1, 1, 2); q.ax1 = at(1, 0, 2);
  q.ay0 = at(2, 0, 1); q.ay1 = at(2, 0, 0);
  q.b0 = at(3, 1, 0); q.b1 = at(3, 1, 1); q.b2 = at(3, 0, 0); q.b3 = at(3, 0, 1);
  q.c = at(4, 0, 2);
  q.e0 = at(5, 0, 1); q.e1 = at(5, 1, 1); q.e2 = at(5, 0, 0); q.e3 = at(5, 1, 0);
  q.full = q.ax1 != T(0) || q.ay1 != T(0) || q.b2 != T(0) || q.b3 != T(0) || q.e2 != T(0) ||
           q.e3 != T(0);
  q.bias = bias;
  q.w = w;
  q.recipe = recipe;
  return q;
}

struct Geo {
  int H, W, Wp;
  int64_t N, lo, hi, lo1, hi1;
  Geo(int h, int w) : H(h), W(w), Wp(w + 4) {
    N = static_cast<int64_t>(H + 4) * Wp;
    lo = 2 * static_cast<int64_t>(Wp) + 2;                 // pixel (0, 0)
    hi = static_cast<int64_t>(H + 1) * Wp + W + 2;         // one past pixel (H-1, W-1)
    lo1 = static_cast<int64_t>(Wp) + 1;                    // halo (-1, -1)
    hi1 = static_cast<int64_t>(H + 2) * Wp + W + 3;        // one past halo (H, W)
  }
  inline int64_t at(int i, int j) const { return static_cast<int64_t>(i + 2) * Wp + (j + 2); }
};

// Source index of the padded coordinate -1 or n along an axis of length n (-1: zero padding).
inline int source_index(int i, int n, int mode) {
  switch (mode) {
    case REPLICATE: return i < 0 ? 0 : n - 1;
    case REFLECT: return i < 0 ? 1 : n - 2;
    case CIRCULAR: return i < 0 ? n - 1 : 0;
    default: return -1;
  }
}

// Fill ring 1 from the interior as torch.nn.functional.pad does (columns first, then full rows).
template <typename T>
void fill_halo(T* U, const Geo& g, int mode) {
  const int H = g.H, W = g.W;
  if (mode == ZEROS) {
    for (int j = -1; j <= W; ++j) { U[g.at(-1, j)] = T(0); U[g.at(H, j)] = T(0); }
    for (int i = 0; i < H; ++i) { U[g.at(i, -1)] = T(0); U[g.at(i, W)] = T(0); }
    return;
  }
  const int jl = source_index(-1, W, mode), jr = source_index(W, W, mode);
  for (int i = 0; i < H; ++i) { U[g.at(i, -1)] = U[g.at(i, jl)]; U[g.at(i, W)] = U[g.at(i, jr)]; }
  const int it = source_index(-1, H, mode), ib = source_index(H, H, mode);
  std::memcpy(U + g.at(-1, -1), U + g.at(it, -1), sizeof(T) * (W + 2));
  std::memcpy(U + g.at(H, -1), U + g.at(ib, -1), sizeof(T) * (W + 2));
}

// Adjoint of fill_halo: add ring 1 back onto the pixels it was copied from, then clear ring 1.
template <typename T>
void fold_halo(T* G, const Geo& g, int mode) {
  const int H = g.H, W = g.W;
  if (mode != ZEROS) {
    const int it = source_index(-1, H, mode), ib = source_index(H, H, mode);
    for (int j = -1; j <= W; ++j) {
      G[g.at(it, j)] += G[g.at(-1, j)];
      G[g.at(-1, j)] = T(0);
    }
    for (int j = -1; j <= W; ++j) {
      G[g.at(ib, j)] += G[g.at(H, j)];
      G[g.at(H, j)] = T(0);
    }
    const int jl = source_index(-1, W, mode), jr = source_index(W, W, mode);
    for (int i = 0; i < H; ++i) {
      G[g.at(i, jl)] += G[g.at(i, -1)];
      G[g.at(i, -1)] = T(0);
      G[g.at(i, jr)] += G[g.at(i, W)];
      G[g.at(i, W)] = T(0);
    }
  }
  for (int j = -1; j <= W; ++j) { G[g.at(-1, j)] = T(0); G[g.at(H, j)] = T(0); }
  for (int i = 0; i < H; ++i) { G[g.at(i, -1)] = T(0); G[g.at(i, W)] = T(0); }
}

template <typename T>
void zero_ring2_columns(T* U, const Geo& g) {
  for (int i = 0; i < g.H; ++i) { U[g.at(i, -2)] = T(0); U[g.at(i, g.W + 1)] = T(0); }
}

template <typename T>
void load_interior(T* U, const T* src, const Geo& g) {
  for (int i = 0; i < g.H; ++i) std::memcpy(U + g.at(i, 0), src + static_cast<int64_t>(i) * g.W, sizeof(T) * g.W);
}

template <typename T>
void store_interior(T* dst, const T* U, const Geo& g) {
  for (int i = 0; i < g.H; ++i) std::memcpy(dst + static_cast<int64_t>(i) * g.W, U + g.at(i, 0), sizeof(T) * g.W);
}

template <typename T>
bool all_finite(const T* x, int64_t n) {
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) ok &= std::isfinite(x[k]);
  return ok;
}

// ------------------------------------------------------------------ pointwise pieces

template <typename T, bool FULL, bool EXACT = false>
EQ_INLINE void jet_at(const T* __restrict U, int64_t p, int64_t Wp, const Pde<T>& q, T& u, T& ux,
                   T& uy, T& uxx, T& uxy, T& uyy) {
  const T C = U[p], L = U[p - 1], R = U[p + 1], Tp = U[p - Wp], Bt = U[p + Wp];
  const T TL = U[p - Wp - 1], TR = U[p - Wp + 1], BL = U[p + Wp - 1], BR = U[p + Wp + 1];
  u = q.cu * C;
  ux = q.ax0 * (R - L);
  uy = q.ay0 * (Tp - Bt);
  if (EXACT) {
    // b0 ((L - C) + (R - C)) + (b1 + 2 b0) C: near-equal neighbours differ exactly (Sterbenz),
    // so a plateau a few ulps uneven gives its true second difference, not the rounding of
    // L + R (b1 + 2 b0 is 0 for the central stencils, so the last term is then exactly 0)
    uxx = q.b0 * ((L - C) + (R - C)) + (q.b1 + T(2) * q.b0) * C;
    uyy = q.e0 * ((Tp - C) + (Bt - C)) + (q.e1 + T(2) * q.e0) * C;
  } else {
    uxx = q.b0 * (L + R) + q.b1 * C;
    uyy = q.e0 * (Tp + Bt) + q.e1 * C;
  }
  uxy = q.c * ((TR - TL) + (BL - BR));
  if (FULL) {
    const T corners = (TL + TR) + (BL + BR);
    ux += q.ax1 * ((TR - TL) + (BR - BL));
    uy += q.ay1 * ((TL - BL) + (TR - BR));
    uxx += q.b2 * corners + q.b3 * (Tp + Bt);
    uyy += q.e2 * corners + q.e3 * (L + R);
  }
}

// The adjoint stencil applied to the six jet cotangents: the 180-degree flip of each kernel, i.e.
// the same kernel for even derivatives and minus it for odd ones.
template <typename T, bool FULL, bool HAS_U>
EQ_INLINE T adjoint_at(const T* __restrict Gu, const T* __restrict Gx, const T* __restrict Gy,
                    const T* __restrict Gxx, const T* __restrict Gxy, const T* __restrict Gyy,
                    int64_t p, int64_t Wp, const Pde<T>& q) {
  const int64_t n = -Wp, s = Wp;
  T r = q.ax0 * (Gx[p - 1] - Gx[p + 1]) + q.ay0 * (Gy[p + s] - Gy[p + n]);
  r += q.b0 * (Gxx[p - 1] + Gxx[p + 1]) + q.b1 * Gxx[p];
  r += q.c * ((Gxy[p + n + 1] - Gxy[p + n - 1]) + (Gxy[p + s - 1] - Gxy[p + s + 1]));
  r += q.e0 * (Gyy[p + n] + Gyy[p + s]) + q.e1 * Gyy[p];
  if (FULL) {
    r -= q.ax1 * ((Gx[p + n + 1] - Gx[p + n - 1]) + (Gx[p + s + 1] - Gx[p + s - 1]));
    r -= q.ay1 * ((Gy[p + n - 1] - Gy[p + s - 1]) + (Gy[p + n + 1] - Gy[p + s + 1]));
    r += q.b2 * ((Gxx[p + n - 1] + Gxx[p + n + 1]) + (Gxx[p + s - 1] + Gxx[p + s + 1]))
         + q.b3 * (Gxx[p + n] + Gxx[p + s]);
    r += q.e2 * ((Gyy[p + n - 1] + Gyy[p + n + 1]) + (Gyy[p + s - 1] + Gyy[p + s + 1]))
         + q.e3 * (Gyy[p - 1] + Gyy[p + 1]);
  }
  if (HAS_U) r += q.cu * Gu[p];
  return r;
}

template <int SET>
constexpr int n_invariants() { return n_invariants_of(SET); }

// The regularised ratio f = a b / (b^2 + c) and its partial derivatives fa, fb, fc, written
// with r = 1 / (b^2 + c) so that a flat jet (a = b = 0, c = tiny) gives 0 and zero
// derivatives, never 0 * inf. c = eps^2 (absolute) or eps^2 * reference + tiny (covariant).
template <typename T>
EQ_INLINE T ratio_value(T a, T b, T c) { return a * b / (b * b + c); }

template <typename T>
EQ_INLINE void ratio_partials(T a, T b, T c, T& fa, T& fb, T& fc) {
  const T r = T(1) / (b * b + c);
  fa = b * r;
  fb = a * r * ((c - b * b) * r);
  fc = -(a * b * r) * r;
}

// The covariant reference of a second-order denominator: |H|^2 + |grad u|^4 (the scaling weight
// of u_xx^2; eqpdenet.pde.invariants.hessian_reference_sq), and its partial derivatives.
template <typename T>
EQ_INLINE T reference_sq(T ux, T uy, T uxx, T uxy, T uyy) {
  const T grad = ux * ux + uy * uy;
  return uxx * uxx + T(2) * uxy * uxy + uyy * uyy + grad * grad;
}

// G += gR * dR/d(jet)
template <typename T>
EQ_INLINE void add_reference_cotangent(T ux, T uy, T uxx, T uxy, T uyy, T gR, T* G) {
  const T grad4 = T(4) * (ux * ux + uy * uy) * gR;
  G[1] += grad4 * ux;
  G[2] += grad4 * uy;
  G[3] += T(2) * uxx * gR;
  G[4] += T(4) * uxy * gR;
  G[5] += T(2) * uyy * gR;
}

// The covariant ratios are scale invariant, so they are formed from the jet rescaled by the power
// of two sigma = 2^-k, k = floor(log2(R_max) / 4), R_max the largest R of the state's plane
// (one image, PDE and channel at one Euler step), which brings R_max into [1, 16): as the
// reference (eqpdenet.pde.invariants._ratio_operands). Unscaled, the det-H ratios (degree 8 in
// the second derivatives) overflowed in float32 at grid spacing 1e-5 and fell to the guard at
// spacing 100 and above. A power of two multiplies exactly, so the quotient is the unscaled one
// to the last bit wherever that one neither overflowed nor underflowed nor felt the guard; and
// the guard still bounds the ratios' derivatives on jets that are small against the plane's
// largest (float32 rounding noise: a factor per pixel would undo that, and gave gradients of
// 1e14). sigma is piecewise constant (the reference detaches it), so the jet cotangents are the
// rescaled jet's times sigma (first order) and sigma^2 (second). sigma = 1 where R_max is 0 or
// not finite.
template <typename T>
void ratio_rescaling(T largest, T& sigma, T& sigma_sq) {
  sigma = sigma_sq = T(1);
  if (!(largest > T(0)) || !std::isfinite(largest)) return;
  const int e = std::ilogb(largest);  // floor(log2), exact (subnormals included)
  const int k = e >= 0 ? e / 4 : -((3 - e) / 4);  // floor(e / 4)
  sigma = std::ldexp(T(1), -k);
  sigma_sq = std::ldexp(T(1), -2 * k);
}

template <typename T> struct FloatBits;
template <> struct FloatBits<float> {
  using Bits = uint32_t;
  static constexpr Bits inf = 0x7f800000u;
};
template <> struct FloatBits<double> {
  using Bits = uint64_t;
  static constexpr Bits inf = 0x7ff0000000000000ull;
};

// Where the plane's largest R overflowed (float32: |grad u| above about 4e9) or underflowed to
// 0 while the jet did not vanish: sigma = 2^-k from the plane's largest first derivative m1 and
// second derivative m2, k = max(floor(log2 m1), floor(floor(log2 m2) / 2)) of those that are
// positive, which cannot overflow; k capped so that sigma^2 and sigma^-2 are normal; sigma = 1
// where the jet is 0 or not finite. As the reference (invariants.component_rescaling).
template <typename T, bool FULL>
void component_rescaling(const T* __restrict U, const Geo& geo, const Pde<T>& q, T& sigma,
                         T& sigma_sq) {
  sigma = sigma_sq = T(1);
  T first = T(0), second = T(0);
  bool finite = true;
  for (int i = 0; i < geo.H; ++i) {
    for (int64_t p = geo.at(i, 0), last = p + geo.W; p < last; ++p) {
      T u, ux, uy, uxx, uxy, uyy;
      jet_at<T, FULL, true>(U, p, geo.Wp, q, u, ux, uy, uxx, uxy, uyy);
      const T a = std::max(std::fabs(ux), std::fabs(uy));
      const T b = std::max(std::max(std::fabs(uxx), std::fabs(uxy)), std::fabs(uyy));
      finite = finite && std::isfinite(a) && std::isfinite(b);
      first = std::max(first, a);
      second = std::max(second, b);
    }
  }
  if (!finite || !(first > T(0) || second > T(0))) return;
  const int none = std::numeric_limits<int>::min();
  const int k_first = first > T(0) ? std::ilogb(first) : none;
  int k_second = none;
  if (second > T(0)) {
    const int e = std::ilogb(second);
    k_second = e >= 0 ? e / 2 : -((1 - e) / 2);  // floor(e / 2)
  }
  const int bound = -std::ilogb(std::numeric_limits<T>::min()) / 2;  // 63 in float32
  const int k = std::min(bound, std::max(-bound, std::max(k_first, k_second)));
  sigma = std::ldexp(T(1), -k);
  sigma_sq = std::ldexp(T(1), -2 * k);
}

// The plane's largest R, as the largest bit pattern: R >= +0 (a sum of squares), and the bit
// patterns of non-negative floats order as their values, with +inf and NaN (of either sign)
// above every finite one; an integer max vectorises where a float max with NaN does not.
template <typename T, bool FULL>
void plane_rescaling(const T* __restrict U, const Geo& geo, const Pde<T>& q, T& sigma,
                     T& sigma_sq) {
  using Bits = typename FloatBits<T>::Bits;
  Bits largest = 0;
  for (int i = 0; i < geo.H; ++i) {
    const int64_t first = geo.at(i, 0), last = first + geo.W;
    Bits row_max = 0;
    #pragma GCC ivdep
    for (int64_t p = first; p < last; ++p) {
      T u, ux, uy, uxx, uxy, uyy;
      jet_at<T, FULL, true>(U, p, geo.Wp, q, u, ux, uy, uxx, uxy, uyy);
      const T R = reference_sq(ux, uy, uxx, uxy, uyy);
      Bits bits;
      std::memcpy(&bits, &R, sizeof(T));
      row_max = bits > row_max ? bits : row_max;
    }
    largest = std::max(largest, row_max);
  }
  if (largest > 0 && largest < FloatBits<T>::inf) {
    T value;
    std::memcpy(&value, &largest, sizeof(T));
    ratio_rescaling(value, sigma, sigma_sq);
    return;
  }
  component_rescaling<T, FULL>(U, geo, q, sigma, sigma_sq);
}

template <int SET>
constexpr bool covariant_ratios() { return SET == SCALING_COV || SET == SIM2_COV; }

template <typename T, int SET>
EQ_INLINE void invariants_at(T u, T ux, T uy, T uxx, T uxy, T uyy, T eps2, T tiny, T sigma,
                             T sigma_sq, T* I) {
  if (covariant_ratios<SET>()) {
    ux *= sigma; uy *= sigma;
    uxx *= sigma_sq; uxy *= sigma_sq; uyy *= sigma_sq;
  }
  if (SET == SE2) {
    I[0] = u;
    I[1] = ux * ux + uy * uy;
    I[2] = uxx + uyy;
    I[3] = ux * ux * uxx + T(2) * ux * uy * uxy + uy * uy * uyy;
    I[4] = uxx * uxx + T(2) * uxy * uxy + uyy * uyy;
  } else if (SET == SCALING_ABS || SET == SCALING_COV) {
    const T c = SET == SCALING_COV ? eps2 * reference_sq(ux, uy, uxx, uxy, uyy) + tiny : eps2;
    const T ax = ux * ux, ay = uy * uy;
    const T sxx = uxx / (uxx * uxx + c), sxy = uxy / (uxy * uxy + c), syy = uyy / (uyy * uyy + c);
    I[0] = ax * sxx; I[1] = ax * sxy; I[2] = ax * syy;
    I[3] = ay * sxx; I[4] = ay * sxy; I[5] = ay * syy;
  } else {  // SIM2_ABS, SIM2_COV
    T c1 = eps2, c2 = eps2;
    if (SET == SIM2_COV) {
      const T R = reference_sq(ux, uy, uxx, uxy, uyy);
      c1 = eps2 * R + tiny;
      c2 = eps2 * (R * R) + tiny;
    }
    const T grad = ux * ux + uy * uy, lap = uxx + uyy, det = uxx * uyy - uxy * uxy;
    const T ghg = ux * ux * uxx + T(2) * ux * uy * uxy + uy * uy * uyy;
    I[0] = u;
    I[1] = ratio_value(grad, lap, c1);
    I[2] = ratio_value(grad * lap, det, c2);
    I[3] = ratio_value(ghg, det, c2);
  }
}

// Jet cotangents G_d = sum_k gF_k dI_k/d(jet_d), times gd.
template <typename T, int SET>
EQ_INLINE void djet_at(T ux, T uy, T uxx, T uxy, T uyy, T eps2, T tiny, T sigma, T sigma_sq,
                       const T* gF, T gd, T* G) {
  if (covariant_ratios<SET>()) {
    ux *= sigma; uy *= sigma;
    uxx *= sigma_sq; uxy *= sigma_sq; uyy *= sigma_sq;
  }
  if (SET == SE2) {
    G[0] = gd * gF[0];
    G[1] = gd * (T(2) * ux * gF[1] + T(2) * (ux * uxx + uy * uxy) * gF[3]);
    G[2] = gd * (T(2) * uy * gF[1] + T(2) * (ux * uxy + uy * uyy) * gF[3]);
    G[3] = gd * (gF[2] + ux * ux * gF[3] + T(2) * uxx * gF[4]);
    G[4] = gd * (T(2) * ux * uy * gF[3] + T(4) * uxy * gF[4]);
    G[5] = gd * (gF[2] + uy * uy * gF[3] + T(2) * uyy * gF[4]);
  } else if (SET == SCALING_ABS || SET == SCALING_COV) {
    const T c = SET == SCALING_COV ? eps2 * reference_sq(ux, uy, uxx, uxy, uyy) + tiny : eps2;
    const T ax = ux * ux, ay = uy * uy;
    const T rxx = T(1) / (uxx * uxx + c), rxy = T(1) / (uxy * uxy + c),
            ryy = T(1) / (uyy * uyy + c);
    const T sxx = uxx * rxx, sxy = uxy * rxy, syy = uyy * ryy;
    const T pxx = (c - uxx * uxx) * rxx * rxx, pxy = (c - uxy * uxy) * rxy * rxy,
            pyy = (c - uyy * uyy) * ryy * ryy;
    const T nxx = ax * gF[0] + ay * gF[3], nxy = ax * gF[1] + ay * gF[4],
            nyy = ax * gF[2] + ay * gF[5];  // cotangents of the three denominators' ratios
    G[0] = T(0);
    G[1] = gd * (T(2) * ux * (gF[0] * sxx + gF[1] * sxy + gF[2] * syy));
    G[2] = gd * (T(2) * uy * (gF[3] * sxx + gF[4] * sxy + gF[5] * syy));
    G[3] = gd * (pxx * nxx);
    G[4] = gd * (pxy * nxy);
    G[5] = gd * (pyy * nyy);
    if (SET == SCALING_COV) {  // through c = eps^2 R + tiny: dI/dc = -I r
      const T gR = -eps2 * gd * ((nxx * sxx) * rxx + (nxy * sxy) * rxy + (nyy * syy) * ryy);
      add_reference_cotangent(ux, uy, uxx, uxy, uyy, gR, G);
    }
  } else {  // SIM2_ABS, SIM2_COV
    T R = T(0), c1 = eps2, c2 = eps2;
    if (SET == SIM2_COV) {
      R = reference_sq(ux, uy, uxx, uxy, uyy);
      c1 = eps2 * R + tiny;
      c2 = eps2 * (R * R) + tiny;
    }
    const T grad = ux * ux + uy * uy, lap = uxx + uyy, det = uxx * uyy - uxy * uxy;
    const T ghg = ux * ux * uxx + T(2) * ux * uy * uxy + uy * uy * uyy;
    T a1, b1, k1, a2, b2, k2, a3, b3, k3;
    ratio_partials(grad, lap, c1, a1, b1, k1);
    ratio_partials(grad * lap, det, c2, a2, b2, k2);
    ratio_partials(ghg, det, c2, a3, b3, k3);
    a1 *= gF[1]; b1 *= gF[1]; a2 *= gF[2]; b2 *= gF[2]; a3 *= gF[3]; b3 *= gF[3];
    const T bdet = b2 + b3;  // cotangent of det H
    const T hess_common = b1 + grad * a2;  // of u_xx and u_yy alike, through lap
    const T grad_common = a1 + lap * a2;  // of |grad u|^2
    G[0] = gd * gF[0];
    G[1] = gd * (T(2) * ux * grad_common + T(2) * (ux * uxx + uy * uxy) * a3);
    G[2] = gd * (T(2) * uy * grad_common + T(2) * (ux * uxy + uy * uyy) * a3);
    G[3] = gd * (hess_common + uyy * bdet + ux * ux * a3);
    G[4] = gd * (T(-2) * uxy * bdet + T(2) * ux * uy * a3);
    G[5] = gd * (hess_common + uxx * bdet + uy * uy * a3);
    if (SET == SIM2_COV) {  // through c1 = eps^2 R + tiny and c2 = eps^2 R^2 + tiny
      const T gR = gd * eps2 * (gF[1] * k1 + T(2) * R * (gF[2] * k2 + gF[3] * k3));
      add_reference_cotangent(ux, uy, uxx, uxy, uyy, gR, G);
    }
  }
  if (covariant_ratios<SET>()) {  // back to the unscaled jet (sigma a constant)
    G[1] *= sigma; G[2] *= sigma;
    G[3] *= sigma_sq; G[4] *= sigma_sq; G[5] *= sigma_sq;
  }
}

// ------------------------------------------------------------------ per-thread work space

// All per-pixel buffers live in one arena with a stride NS = N + skew: with 28x28 images N is
// 1024 elements (exactly 4 KiB in float32), and buffers 4 KiB apart alias in L1 (same cache sets,
// false store-to-load dependencies), which made the backward ~20x slower.
template <typename T>
struct Work {
  int64_t N, NS;
  std::vector<T> arena, traj, scratch;
  T *U, *V, *g, *gp, *gdv, *Fv, *G, *I, *gI, *Tm, *gT, *acc;
  Work(const Geo& geo, int mmax, int smax) : N(geo.N) {
    NS = N + 40 + 16 * ((N / 16) % 2 == 0);  // skewed stride, keeps 64-byte steps
    const int64_t mm = std::max(mmax, 1);
    arena.assign((6 + 6 + 6 + 6 + 2 * mm + mm + 1) * NS, T(0));
    T* a = arena.data();
    auto take = [&](int64_t n) { T* r = a; a += n * NS; return r; };
    U = take(1); V = take(1); g = take(1); gp = take(1); gdv = take(1); Fv = take(1);
    G = take(6); I = take(6); gI = take(6); Tm = take(mm); gT = take(mm); acc = take(mm + 1);
    traj.assign(static_cast<int64_t>(std::max(smax, 1)) * geo.H * geo.W, T(0));
    scratch.assign(static_cast<int64_t>(geo.H) * geo.W, T(0));
  }
};

// ------------------------------------------------------------------ one Euler step, forward

template <typename T, int SET, bool FULL, bool LINEAR>
void euler_step(const T* __restrict U, T* __restrict V, Work<T>& w, const Geo& geo, const Pde<T> q) {
  constexpr int K = n_invariants<SET>();
  const int64_t Wp = geo.Wp, N = w.NS;
  const T dt = q.dt, eps2 = q.eps2, tiny = q.tiny, bias = q.bias;
  T sigma = T(1), sigma_sq = T(1);
  if (covariant_ratios<SET>()) plane_rescaling<T, FULL>(U, geo, q, sigma, sigma_sq);
  if (LINEAR) {
    T wk[6] = {0, 0, 0, 0, 0, 0};
    for (int k = 0; k < K; ++k) wk[k] = q.w[k];
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) {
      T u, ux, uy, uxx, uxy, uyy, I[6];
      jet_at<T, FULL, covariant_ratios<SET>()>(U, p, Wp, q, u, ux, uy, uxx, uxy, uyy);
      invariants_at<T, SET>(u, ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, I);
      T F = wk[0] * I[0];
      for (int k = 1; k < K; ++k) F += wk[k] * I[k];
      V[p] = U[p] + dt * (F + bias);
    }
  } else {
    T* __restrict Ib = w.I;
    T* __restrict Tb = w.Tm;
    T* __restrict Fb = w.Fv;
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) {
      T u, ux, uy, uxx, uxy, uyy, I[6];
      jet_at<T, FULL, covariant_ratios<SET>()>(U, p, Wp, q, u, ux, uy, uxx, uxy, uyy);
      invariants_at<T, SET>(u, ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, I);
      for (int k = 0; k < K; ++k) Ib[k * N + p] = I[k];
      Fb[p] = T(0);
    }
    for (int m = 0; m < q.nmono; ++m) {
      const int64_t lower = q.recipe[2 * m], k = q.recipe[2 * m + 1];
      const T wm = q.w[m];
      T* __restrict Tcur = Tb + m * N;
      const T* __restrict Ik = Ib + k * N;
      if (lower < 0) {
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) { Tcur[p] = Ik[p]; Fb[p] += wm * Ik[p]; }
      } else {
        const T* __restrict Tl = Tb + lower * N;
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) { Tcur[p] = Tl[p] * Ik[p]; Fb[p] += wm * Tcur[p]; }
      }
    }
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) V[p] = U[p] + dt * (Fb[p] + bias);
  }
}

// Integrate one (image, PDE, channel) from u0 (H x W); the states u_0 .. u_{S-1} go to traj if
// given. With check_each, returns the first step (1-based) whose state is not finite, else 0.
template <typename T, int SET, bool FULL, bool LINEAR>
int integrate(const T* u0, T* out, T* traj, Work<T>& w, const Geo& geo, const Pde<T>& q,
              bool check_each) {
  const int64_t HW = static_cast<int64_t>(geo.H) * geo.W;
  T* U = w.U;
  T* V = w.V;
  load_interior(U, u0, geo);
  fill_halo(U, geo, q.boundary);
  for (int l = 0; l < q.steps; ++l) {
    if (traj) store_interior(traj + l * HW, U, geo);
    euler_step<T, SET, FULL, LINEAR>(U, V, w, geo, q);
    zero_ring2_columns(V, geo);
    fill_halo(V, geo, q.boundary);
    std::swap(U, V);
    if (check_each) {
      store_interior(w.scratch.data(), U, geo);
      if (!all_finite(w.scratch.data(), HW)) {
        if (out) store_interior(out, U, geo);
        return l + 1;
      }
    }
  }
  if (out) store_interior(out, U, geo);
  return 0;
}

// ------------------------------------------------------------------ one Euler step, backward

// Given the state u_l (U, halo filled) and the cotangent g of u_{l+1} (interior, margins zero),
// accumulate dt * g * dF/dtheta into acc and replace g by the cotangent of u_l.
template <typename T, int SET, bool FULL, bool LINEAR>
void euler_step_backward(const T* __restrict U, T* __restrict g, Work<T>& w, const Geo& geo,
                         const Pde<T> q) {
  constexpr int K = n_invariants<SET>();
  const int64_t Wp = geo.Wp, N = w.NS;
  const T dt = q.dt, eps2 = q.eps2, tiny = q.tiny;
  T sigma = T(1), sigma_sq = T(1);
  if (covariant_ratios<SET>()) plane_rescaling<T, FULL>(U, geo, q, sigma, sigma_sq);
  T* __restrict G = w.G;
  T* __restrict acc = w.acc;
  const int M = LINEAR ? K : q.nmono;
  if (LINEAR) {
    T gF[6] = {0, 0, 0, 0, 0, 0};
    for (int k = 0; k < K; ++k) gF[k] = q.w[k];
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) {
      T u, ux, uy, uxx, uxy, uyy, I[6], Gd[6];
      jet_at<T, FULL, covariant_ratios<SET>()>(U, p, Wp, q, u, ux, uy, uxx, uxy, uyy);
      invariants_at<T, SET>(u, ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, I);
      const T gd = dt * g[p];
      for (int k = 0; k < K; ++k) acc[k * N + p] += gd * I[k];
      acc[M * N + p] += gd;
      djet_at<T, SET>(ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, gF, gd, Gd);
      for (int d = 0; d < 6; ++d) G[d * N + p] = Gd[d];
    }
  } else {
    T* __restrict Ib = w.I;
    T* __restrict Tb = w.Tm;
    T* __restrict gTb = w.gT;
    T* __restrict gIb = w.gI;
    T* __restrict gdv = w.gdv;
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) {
      T u, ux, uy, uxx, uxy, uyy, I[6];
      jet_at<T, FULL, covariant_ratios<SET>()>(U, p, Wp, q, u, ux, uy, uxx, uxy, uyy);
      invariants_at<T, SET>(u, ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, I);
      for (int k = 0; k < K; ++k) { Ib[k * N + p] = I[k]; gIb[k * N + p] = T(0); }
      gdv[p] = dt * g[p];
      acc[M * N + p] += gdv[p];
    }
    for (int m = 0; m < M; ++m) {
      const int64_t lower = q.recipe[2 * m], k = q.recipe[2 * m + 1];
      T* __restrict Tcur = Tb + m * N;
      T* __restrict gTcur = gTb + m * N;
      T* __restrict am = acc + m * N;
      const T* __restrict Ik = Ib + k * N;
      const T wm = q.w[m];
      if (lower < 0) {
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) Tcur[p] = Ik[p];
      } else {
        const T* __restrict Tl = Tb + lower * N;
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) Tcur[p] = Tl[p] * Ik[p];
      }
      #pragma GCC ivdep
      for (int64_t p = geo.lo; p < geo.hi; ++p) { am[p] += gdv[p] * Tcur[p]; gTcur[p] = wm; }
    }
    for (int m = M - 1; m >= 0; --m) {
      const int64_t lower = q.recipe[2 * m], k = q.recipe[2 * m + 1];
      const T* __restrict gTcur = gTb + m * N;
      T* __restrict gIk = gIb + k * N;
      if (lower < 0) {
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) gIk[p] += gTcur[p];
      } else {
        const T* __restrict Ik = Ib + k * N;
        const T* __restrict Tl = Tb + lower * N;
        T* __restrict gTl = gTb + lower * N;
        #pragma GCC ivdep
        for (int64_t p = geo.lo; p < geo.hi; ++p) {
          gTl[p] += gTcur[p] * Ik[p];
          gIk[p] += gTcur[p] * Tl[p];
        }
      }
    }
    #pragma GCC ivdep
    for (int64_t p = geo.lo; p < geo.hi; ++p) {
      T u, ux, uy, uxx, uxy, uyy, gF[6], Gd[6];
      jet_at<T, FULL, covariant_ratios<SET>()>(U, p, Wp, q, u, ux, uy, uxx, uxy, uyy);
      for (int k = 0; k < K; ++k) gF[k] = gIb[k * N + p];
      djet_at<T, SET>(ux, uy, uxx, uxy, uyy, eps2, tiny, sigma, sigma_sq, gF, gdv[p], Gd);
      for (int d = 0; d < 6; ++d) G[d * N + p] = Gd[d];
    }
  }
  // Transposed stencil over the padded grid, then the adjoint of the padding.
  T* __restrict gp = w.gp;
  const T *Gu = G, *Gx = G + N, *Gy = G + 2 * N, *Gxx = G + 3 * N, *Gxy = G + 4 * N,
          *Gyy = G + 5 * N;
  if (SET != SCALING_ABS && SET != SCALING_COV) {  // sets with u among their invariants
    #pragma GCC ivdep
    for (int64_t p = geo.lo1; p < geo.hi1; ++p)
      gp[p] = adjoint_at<T, FULL, true>(Gu, Gx, Gy, Gxx, Gxy, Gyy, p, Wp, q);
  } else {
    #pragma GCC ivdep
    for (int64_t p = geo.lo1; p < geo.hi1; ++p)
      gp[p] = adjoint_at<T, FULL, false>(Gu, Gx, Gy, Gxx, Gxy, Gyy, p, Wp, q);
  }
  fold_halo(gp, geo, q.boundary);
  #pragma GCC ivdep
  for (int64_t p = geo.lo; p < geo.hi; ++p) g[p] += gp[p];
  // Keep g zero outside the interior (ring-2 columns inside [lo, hi)).
  zero_ring2_columns(g, geo);
  for (int i = 0; i < geo.H; ++i) { g[geo.at(i, -1)] = T(0); g[geo.at(i, geo.W)] = T(0); }
}

// ------------------------------------------------------------------ dispatch on the templates

template <typename T>
using IntegrateFn = int (*)(const T*, T*, T*, Work<T>&, const Geo&, const Pde<T>&, bool);
template <typename T>
using BackwardFn = void (*)(const T*, T*, Work<T>&, const Geo&, const Pde<T>);

template <typename T, int SET, bool FULL>
IntegrateFn<T> pick_integrate3(bool linear) {
  return linear ? &integrate<T, SET, FULL, true> : &integrate<T, SET, FULL, false>;
}
template <typename T, int SET>
IntegrateFn<T> pick_integrate2(bool full, bool linear) {
  return full ? pick_integrate3<T, SET, true>(linear) : pick_integrate3<T, SET, false>(linear);
}
template <typename T>
IntegrateFn<T> pick_integrate(const Pde<T>& q) {
  switch (q.set) {
    case SE2: return pick_integrate2<T, SE2>(q.full, q.linear);
    case SCALING_ABS: return pick_integrate2<T, SCALING_ABS>(q.full, q.linear);
    case SCALING_COV: return pick_integrate2<T, SCALING_COV>(q.full, q.linear);
    case SIM2_ABS: return pick_integrate2<T, SIM2_ABS>(q.full, q.linear);
    default: return pick_integrate2<T, SIM2_COV>(q.full, q.linear);
  }
}
template <typename T, int SET, bool FULL>
BackwardFn<T> pick_backward3(bool linear) {
  return linear ? &euler_step_backward<T, SET, FULL, true> : &euler_step_backward<T, SET, FULL, false>;
}
template <typename T, int SET>
BackwardFn<T> pick_backward2(bool full, bool linear) {
  return full ? pick_backward3<T, SET, true>(linear) : pick_backward3<T, SET, false>(linear);
}
template <typename T>
BackwardFn<T> pick_backward(const Pde<T>& q) {
  switch (q.set) {
    case SE2: return pick_backward2<T, SE2>(q.full, q.linear);
    case SCALING_ABS: return pick_backward2<T, SCALING_ABS>(q.full, q.linear);
    case SCALING_COV: return pick_backward2<T, SCALING_COV>(q.full, q.linear);
    case SIM2_ABS: return pick_backward2<T, SIM2_ABS>(q.full, q.linear);
    default: return pick_backward2<T, SIM2_COV>(q.full, q.linear);
  }
}

struct Settings {
  std::vector<std::string> sets, boundaries, regularisations;
  std::vector<double> dt, eps;
  std::vector<int64_t> steps;
  std::vector<bool> check;
};

template <typename T>
std::vector<Pde<T>> make_pdes(const at::Tensor& weights, const at::Tensor& bias,
                              const at::Tensor& monomials, const at::Tensor& stencils,
                              const Settings& s) {
  const int64_t E = weights.size(0), mmax = weights.size(1);
  std::vector<Pde<T>> pdes;
  const double* k = stencils.data_ptr<double>();
  const T* w = weights.data_ptr<T>();
  const T* b = bias.data_ptr<T>();
  const int64_t* r = monomials.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e)
    pdes.push_back(make_pde<T>(s.sets[e], s.boundaries[e], s.dt[e], s.eps[e],
                               s.regularisations[e], s.steps[e], s.check[e], k + e * 54,
                               w + e * mmax, b[e], r + e * mmax * 2, mmax));
  return pdes;
}

template <typename T>
void forward_impl(const at::Tensor& u, const std::vector<Pde<T>>& pdes, at::Tensor& out,
                  T* traj, int smax, int mmax, at::Tensor& bad, int nthreads) {
  const int64_t B = u.size(0), C = u.size(1), H = u.size(2), W = u.size(3), E = pdes.size();
  const int64_t HW = H * W;
  const Geo geo(static_cast<int>(H), static_cast<int>(W));
  const T* u_ptr = u.data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  int32_t* bad_ptr = bad.data_ptr<int32_t>();
  std::vector<IntegrateFn<T>> fns;
  for (const auto& q : pdes) fns.push_back(pick_integrate(q));
  OutOfMemory oom;
#pragma omp parallel num_threads(nthreads)
  {
    // No trajectory buffer: the forward stores states in the caller's tensor, never in w.traj
    // (max(steps) x H x W per thread was allocated for nothing: 313 MB each at 100,000 steps).
    std::optional<Work<T>> work;
    const bool ok = oom.allocate([&] { work.emplace(geo, mmax, 0); });
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t e = 0; e < E; ++e) {
        if (!ok) continue;
        Work<T>& w = *work;
        const Pde<T>& q = pdes[e];
        int first_bad = 0;
        for (int64_t c = 0; c < C; ++c) {
          const T* u0 = u_ptr + (b * C + c) * HW;
          T* o = out_ptr + ((b * E + e) * C + c) * HW;
          T* tr = traj ? traj + (((b * E + e) * C + c) * smax) * HW : nullptr;
          fns[e](u0, o, tr, w, geo, q, false);
          if (q.check && !all_finite(o, HW)) {
            // A non-finite pixel stays non-finite (u + dt F), so the final state tells; find
            // the first bad step by integrating again with a check after every step.
            const int s = fns[e](u0, nullptr, nullptr, w, geo, q, true);
            if (s > 0 && (first_bad == 0 || s < first_bad)) first_bad = s;
          }
        }
        bad_ptr[b * E + e] = first_bad;
      }
    }
  }
  oom.check("euler_evolve");
}

template <typename T>
void backward_impl(const at::Tensor& gout, const at::Tensor& u, const std::vector<Pde<T>>& pdes,
                   const T* traj, int smax, int mmax, at::Tensor& gu, at::Tensor& gparams,
                   int nthreads) {
  const int64_t B = u.size(0), C = u.size(1), H = u.size(2), W = u.size(3), E = pdes.size();
  const int64_t HW = H * W;
  const Geo geo(static_cast<int>(H), static_cast<int>(W));
  const int64_t N = geo.N;
  const T* u_ptr = u.data_ptr<T>();
  const T* go_ptr = gout.data_ptr<T>();
  T* gu_ptr = gu.data_ptr<T>();
  double* gp_ptr = gparams.data_ptr<double>();
  std::vector<IntegrateFn<T>> fns;
  std::vector<BackwardFn<T>> bfns;
  for (const auto& q : pdes) { fns.push_back(pick_integrate(q)); bfns.push_back(pick_backward(q)); }
  OutOfMemory oom;
#pragma omp parallel num_threads(nthreads)
  {
    // The trajectory buffer only where the states are recomputed (w.traj); with the states
    // stored (traj) it went unused: max(steps) x H x W per thread.
    std::optional<Work<T>> work;
    const bool ok = oom.allocate([&] { work.emplace(geo, mmax, traj ? 0 : smax); });
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      Work<T>& w = *work;
      for (int64_t c = 0; c < C; ++c) std::fill(gu_ptr + (b * C + c) * HW, gu_ptr + (b * C + c + 1) * HW, T(0));
      for (int64_t e = 0; e < E; ++e) {
        const Pde<T>& q = pdes[e];
        const int M = q.nmono;
        std::fill(w.acc, w.acc + (M + 1) * w.NS, T(0));
        for (int64_t c = 0; c < C; ++c) {
          const T* u0 = u_ptr + (b * C + c) * HW;
          const T* states;
          if (traj) {
            states = traj + (((b * E + e) * C + c) * smax) * HW;
          } else {  // checkpointing: recompute this image's states from u0 (cache resident)
            fns[e](u0, nullptr, w.traj.data(), w, geo, q, false);
            states = w.traj.data();
          }
          T* g = w.g;
          std::fill(g, g + N, T(0));
          load_interior(g, go_ptr + ((b * E + e) * C + c) * HW, geo);
          T* U = w.U;
          for (int l = q.steps - 1; l >= 0; --l) {
            load_interior(U, states + l * HW, geo);
            fill_halo(U, geo, q.boundary);
            bfns[e](U, g, w, geo, q);
          }
          T* dst = gu_ptr + (b * C + c) * HW;
          for (int i = 0; i < geo.H; ++i)
            for (int j = 0; j < geo.W; ++j) dst[i * W + j] += g[geo.at(i, j)];
        }
        double* out = gp_ptr + (b * E + e) * (mmax + 1);
        for (int m = 0; m <= M; ++m) {
          double s = 0.0;
          const T* a = w.acc + m * w.NS;
          for (int i = 0; i < geo.H; ++i)
            for (int j = 0; j < geo.W; ++j) s += static_cast<double>(a[geo.at(i, j)]);
          out[m == M ? mmax : m] = s;
        }
      }
    }
  }
  oom.check("euler_evolve (backward)");
}

Settings check_common(const at::Tensor& u, const at::Tensor& weights, const at::Tensor& bias,
                      const at::Tensor& monomials, const at::Tensor& stencils,
                      std::vector<std::string> sets, std::vector<std::string> boundaries,
                      std::vector<double> dt, std::vector<double> eps,
                      std::vector<std::string> regularisations, std::vector<int64_t> steps,
                      std::vector<bool> check) {
  const std::pair<const char*, const at::Tensor*> named[] = {
      {"u", &u}, {"weight", &weights}, {"bias", &bias}, {"monomials", &monomials}, {"stencils", &stencils}};
  for (const auto& [name, t] : named)
    TORCH_CHECK(t->device().is_cpu(), "fused_euler: ", name, " must be a CPU tensor, got one on ",
                t->device());
  TORCH_CHECK(u.dim() == 4 && u.is_contiguous(), "fused_euler: u must be contiguous (B, C, H, W), got ",
              u.sizes());
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "fused_euler: u must be float32 or float64, got ", u.scalar_type());
  TORCH_CHECK(weights.scalar_type() == u.scalar_type() && bias.scalar_type() == u.scalar_type(),
              "fused_euler: parameters must have the dtype of u (", u.scalar_type(), "), got weight ",
              weights.scalar_type(), " and bias ", bias.scalar_type());
  for (const auto& [name, t] : named)
    TORCH_CHECK(t->is_contiguous(), "fused_euler: ", name, " must be contiguous");
  TORCH_CHECK(weights.dim() == 2 && bias.dim() == 1 && bias.size(0) == weights.size(0),
              "fused_euler: weight must be (E, M) and bias (E,), got ", weights.sizes(), " and ",
              bias.sizes());
  const int64_t E = weights.size(0);
  TORCH_CHECK(monomials.scalar_type() == at::kLong && monomials.dim() == 3 &&
                  monomials.size(0) == E && monomials.size(1) == weights.size(1) &&
                  monomials.size(2) == 2,
              "fused_euler: monomials must be (E, M, 2) = [", E, ", ", weights.size(1), ", 2] int64, got ",
              monomials.sizes(), " ", monomials.scalar_type());
  // Read as E blocks of (6, 3, 3): the same number of values in another layout, (E, 3, 3, 6) or
  // flat, was read in this order and gave another PDE, silently.
  TORCH_CHECK(stencils.scalar_type() == at::kDouble && stencils.dim() == 4 && stencils.size(0) == E &&
                  stencils.size(1) == 6 && stencils.size(2) == 3 && stencils.size(3) == 3,
              "fused_euler: stencils must be (E, 6, 3, 3) = [", E, ", 6, 3, 3] float64, got ",
              stencils.sizes(), " ", stencils.scalar_type());
  const std::pair<const char*, size_t> lengths[] = {
      {"invariant_sets", sets.size()}, {"boundaries", boundaries.size()}, {"dt", dt.size()},
      {"ratio_eps", eps.size()}, {"ratio_regularisations", regularisations.size()},
      {"steps", steps.size()}, {"check_finite", check.empty() ? static_cast<size_t>(E) : check.size()}};
  for (const auto& [name, n] : lengths)
    TORCH_CHECK(static_cast<int64_t>(n) == E, "fused_euler: ", name, " must hold one value per PDE (",
                E, "), got ", n);
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(steps[e] >= 0, "fused_euler: steps must be >= 0, got ", steps[e], " for PDE ", e);
    // The kernels count steps in a C int: more were taken modulo 2^32 (2^32 + 1 steps gave the
    // 1-step result, 2^32 returned u itself).
    TORCH_CHECK(steps[e] <= std::numeric_limits<int>::max(), "fused_euler: steps must be <= ",
                std::numeric_limits<int>::max(), ", got ", steps[e], " for PDE ", e);
    // As the reference (eqpdenet.pde.invariants.RatioRegularisation), for every set: eps 0 gave
    // NaN on flat images, a negative one acted as its absolute value, inf made every ratio 0.
    TORCH_CHECK(eps[e] > 0 && eps[e] < std::numeric_limits<double>::infinity(),
                "fused_euler: ratio regularisation eps must be positive and finite, got ", eps[e],
                " for PDE ", e);
    // The padded row -1 copies row 1 (and row H row H - 2): an image of one row or column has
    // none, and the halo would be read from outside the image (the reference refuses it too).
    TORCH_CHECK(boundaries[e] != "reflect" || (u.size(2) > 1 && u.size(3) > 1),
                "fused_euler: a reflect boundary needs images of at least 2 x 2 pixels, got ",
                u.size(2), " x ", u.size(3));
  }
  if (check.empty()) check.assign(E, false);
  return Settings{std::move(sets), std::move(boundaries), std::move(regularisations),
                  std::move(dt), std::move(eps), std::move(steps), std::move(check)};
}

int max_steps(const Settings& s) {
  int64_t smax = 0;
  for (auto v : s.steps) smax = std::max(smax, v);
  return static_cast<int>(smax);
}

}  // namespace

// See eqpdenet/kernels/op.py for the schema. Returns out (B, E, C, H, W), the states
// (B, E, C, Smax, H, W) if store_states (else empty), and the first non-finite step per
// (image, PDE) (B, E) int32 (0: none or not checked).
std::vector<at::Tensor> fused_forward(at::Tensor u, at::Tensor weights, at::Tensor bias,
                                      at::Tensor monomials, at::Tensor stencils,
                                      std::vector<std::string> sets,
                                      std::vector<std::string> boundaries, std::vector<double> dt,
                                      std::vector<double> eps,
                                      std::vector<std::string> regularisations,
                                      std::vector<int64_t> steps, std::vector<bool> check,
                                      bool store_states) {
  const Settings s = check_common(u, weights, bias, monomials, stencils, std::move(sets),
                                  std::move(boundaries), std::move(dt), std::move(eps),
                                  std::move(regularisations), std::move(steps), std::move(check));
  const int64_t B = u.size(0), C = u.size(1), H = u.size(2), W = u.size(3), E = weights.size(0);
  const int smax = max_steps(s);
  auto out = at::empty({B, E, C, H, W}, u.options());
  auto states = store_states ? at::empty({B, E, C, smax, H, W}, u.options()) : at::empty({0}, u.options());
  // The slots past a PDE's own steps (PDEs of fewer steps than max(steps)) are zero: never
  // written, they held whatever the allocator gave (two equal calls differed).
  if (store_states)
    for (int64_t e = 0; e < E; ++e)
      if (s.steps[e] < smax) states.select(1, e).narrow(2, s.steps[e], smax - s.steps[e]).zero_();
  auto bad = at::zeros({B, E}, u.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "fused_forward", [&] {
    auto pdes = make_pdes<scalar_t>(weights, bias, monomials, stencils, s);
    forward_impl<scalar_t>(u, pdes, out, store_states ? states.data_ptr<scalar_t>() : nullptr, smax,
                           static_cast<int>(weights.size(1)), bad, at::get_num_threads());
  });
  return {out, states, bad};
}

// Returns grad_u (B, C, H, W) and per-image parameter gradients (B, E, Mmax + 1) float64, the
// bias gradient last. states: from fused_forward, or empty to recompute them.
std::vector<at::Tensor> fused_backward(at::Tensor gout, at::Tensor u, at::Tensor weights,
                                       at::Tensor bias, at::Tensor monomials, at::Tensor stencils,
                                       std::vector<std::string> sets,
                                       std::vector<std::string> boundaries, std::vector<double> dt,
                                       std::vector<double> eps,
                                       std::vector<std::string> regularisations,
                                       std::vector<int64_t> steps, at::Tensor states) {
  const Settings s = check_common(u, weights, bias, monomials, stencils, std::move(sets),
                                  std::move(boundaries), std::move(dt), std::move(eps),
                                  std::move(regularisations), std::move(steps), {});
  TORCH_CHECK(gout.scalar_type() == u.scalar_type(), "fused_euler: grad_out must have the dtype of u (",
              u.scalar_type(), "), got ", gout.scalar_type());
  TORCH_CHECK(gout.is_contiguous(), "fused_euler: grad_out must be contiguous");
  const int64_t B = u.size(0), E = weights.size(0), mmax = weights.size(1);
  const int smax = max_steps(s);
  // Both are read at the offsets of these shapes.
  const std::vector<int64_t> gshape{B, E, u.size(1), u.size(2), u.size(3)};
  const std::vector<int64_t> sshape{B, E, u.size(1), smax, u.size(2), u.size(3)};
  TORCH_CHECK(gout.device().is_cpu() && gout.sizes() == at::IntArrayRef(gshape),
              "fused_euler: grad_out must be (B, E, C, H, W) = ", at::IntArrayRef(gshape),
              " like the forward's output, got ", gout.sizes());
  TORCH_CHECK(states.numel() == 0 ||
                  (states.device().is_cpu() && states.scalar_type() == u.scalar_type() &&
                   states.sizes() == at::IntArrayRef(sshape)),
              "fused_euler: states must be empty or (B, E, C, max(steps), H, W) = ",
              at::IntArrayRef(sshape), " of u's dtype, got ", states.sizes(), " ", states.scalar_type(),
              " on ", states.device());
  TORCH_CHECK(states.numel() == 0 || states.is_contiguous(), "fused_euler: states must be contiguous");
  auto gu = at::empty_like(u);
  auto gparams = at::zeros({B, E, mmax + 1}, u.options().dtype(at::kDouble));
  const bool stored = states.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "fused_backward", [&] {
    auto pdes = make_pdes<scalar_t>(weights, bias, monomials, stencils, s);
    backward_impl<scalar_t>(gout, u, pdes, stored ? states.data_ptr<scalar_t>() : nullptr, smax,
                            static_cast<int>(mmax), gu, gparams, at::get_num_threads());
  });
  return {gu, gparams};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &fused_forward, "eqpdenet::euler_evolve on the CPU");
  m.def("backward", &fused_backward, "eqpdenet::euler_evolve_backward on the CPU");
}
