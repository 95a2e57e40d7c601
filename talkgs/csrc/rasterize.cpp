// CPU kernels of the Gaussian rasterizer: projection, SH colours, tile binning and tile compositing, forward and
// backward.
//
// Twin of talkgs/render/_torch_backend.py (the reference, tested against these kernels): same conventions,
// same culling, same per-tile front-to-back lists, same alpha thresholds and early stop, so a model renders
// the same through either. float32 only; the Python side sends other dtypes to the twin.
//
// Why it is fast: a tile's 256 pixels are processed as one vectorisable loop per Gaussian (AVX2: 8 pixels an
// instruction), alpha comes from a polynomial exp2 that the compiler can vectorise (libm's cannot be without
// -ffast-math), tiles run in parallel over OpenMP threads, and the backward writes one gradient row per
// (tile, Gaussian) pair, so no two threads ever add into the same Gaussian.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace {

constexpr int TILE = 16;
constexpr int TP = TILE * TILE;  // pixels per tile
constexpr int HALF = 8;  // pixels of a tile row in one AVX2 register
constexpr float EPS2D = 0.3f;
constexpr float ALPHA_MIN = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.999f;
constexpr float T_MIN = 1e-4f;
constexpr float EXTENT_MAX = 3.33f;
constexpr float LOG2E = 1.4426950408889634f;
constexpr int STOP_CHECK = 8;  // Gaussians between checks whether a whole tile has saturated

// 2^x for x <= 0, relative error 1e-7: range reduction to [0, 1) and a degree-6 polynomial (least squares
// on Chebyshev nodes), the exponent put in with integer arithmetic. Below -127 it returns 0.
inline float exp2_neg(float x) {
  x = std::max(x, -127.0f);
  const float fi = std::floor(x);
  const float f = x - fi;
  float p = 0.00021690608991775662f;
  p = p * f + 0.0012443081941455603f;
  p = p * f + 0.009678472764790058f;
  p = p * f + 0.05548352375626564f;
  p = p * f + 0.2402298003435135f;
  p = p * f + 0.6931470036506653f;
  p = p * f + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(fi) + 127) << 23);
}

void check_cpu_float(const torch::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == ndim, name, " must have ", ndim, " dimensions");
}

void quat_to_rotmat(const float* q, float* R, float* qn) {
  const float norm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const float inv = 1.0f / std::max(norm, 1e-12f);  // F.normalize's eps
  const float w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  qn[0] = w, qn[1] = x, qn[2] = y, qn[3] = z;
  R[0] = 1 - 2 * (y * y + z * z), R[1] = 2 * (x * y - w * z), R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z), R[4] = 1 - 2 * (x * x + z * z), R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y), R[7] = 2 * (y * z + w * x), R[8] = 1 - 2 * (x * x + y * y);
}

struct Camera {
  float R[9], t[3], fx, fy, cx, cy;
  float lo_x, hi_x, lo_y, hi_y;  // the clamp of x/z and y/z in the Jacobian (1.3 x the field of view)
  int width, height;
  Camera(const torch::Tensor& viewmat, const torch::Tensor& K, int w, int h) : width(w), height(h) {
    const float* V = viewmat.data_ptr<float>();
    const float* k = K.data_ptr<float>();
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) R[3 * r + c] = V[4 * r + c];
      t[r] = V[4 * r + 3];
    }
    fx = k[0], fy = k[4], cx = k[2], cy = k[5];
    const float lim_x = 0.3f * 0.5f * w / fx, lim_y = 0.3f * 0.5f * h / fy;
    lo_x = -(cx / fx + lim_x), hi_x = (w - cx) / fx + lim_x;
    lo_y = -(cy / fy + lim_y), hi_y = (h - cy) / fy + lim_y;
  }
};

// The per-Gaussian state shared by the projection's forward and backward passes.
struct Projected {
  float p[3];         // camera coordinates
  float Rq[9], qn[4]; // rotation of the Gaussian and its normalised quaternion
  float tx, ty;       // Jacobian points (clamped)
  bool clamp_x, clamp_y;
  float jx[3], jy[3]; // rows of J @ R_view
  float M[9];         // Rq diag(s)
  float u[3], v[3];   // cov2d = [u; v] [u; v]^T
  float cxx, cxy, cyy, det;
};

inline void project_one(const Camera& cam, const float* m, const float* q, const float* s, Projected& g) {
  for (int r = 0; r < 3; ++r)
    g.p[r] = cam.R[3 * r] * m[0] + cam.R[3 * r + 1] * m[1] + cam.R[3 * r + 2] * m[2] + cam.t[r];
  const float x = g.p[0], y = g.p[1], z = g.p[2];
  const float rx = x / z, ry = y / z;
  g.clamp_x = !(rx >= cam.lo_x && rx <= cam.hi_x);
  g.clamp_y = !(ry >= cam.lo_y && ry <= cam.hi_y);
  g.tx = z * std::min(std::max(rx, cam.lo_x), cam.hi_x);
  g.ty = z * std::min(std::max(ry, cam.lo_y), cam.hi_y);
  const float a = cam.fx / z, b = cam.fx * g.tx / (z * z), c = cam.fy / z, d = cam.fy * g.ty / (z * z);
  for (int k = 0; k < 3; ++k) {
    g.jx[k] = a * cam.R[k] - b * cam.R[6 + k];
    g.jy[k] = c * cam.R[3 + k] - d * cam.R[6 + k];
  }
  quat_to_rotmat(q, g.Rq, g.qn);
  for (int r = 0; r < 3; ++r)
    for (int cc = 0; cc < 3; ++cc) g.M[3 * r + cc] = g.Rq[3 * r + cc] * s[cc];
  for (int j = 0; j < 3; ++j) {
    g.u[j] = g.jx[0] * g.M[j] + g.jx[1] * g.M[3 + j] + g.jx[2] * g.M[6 + j];
    g.v[j] = g.jy[0] * g.M[j] + g.jy[1] * g.M[3 + j] + g.jy[2] * g.M[6 + j];
  }
  g.cxx = g.u[0] * g.u[0] + g.u[1] * g.u[1] + g.u[2] * g.u[2] + EPS2D;
  g.cxy = g.u[0] * g.v[0] + g.u[1] * g.v[1] + g.u[2] * g.v[2];
  g.cyy = g.v[0] * g.v[0] + g.v[1] * g.v[1] + g.v[2] * g.v[2] + EPS2D;
  g.det = g.cxx * g.cyy - g.cxy * g.cxy;
}

}  // namespace

// EWA projection; returns (means2d [N, 2], conics [N, 3], depths [N], radii [N, 2] int32, extents [N]).
std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                           torch::Tensor opacities, torch::Tensor viewmat, torch::Tensor K,
                                           int64_t width, int64_t height, double near_plane, double far_plane) {
  check_cpu_float(means, "means", 2);
  check_cpu_float(quats, "quats", 2);
  check_cpu_float(scales, "scales", 2);
  check_cpu_float(opacities, "opacities", 1);
  check_cpu_float(viewmat, "viewmat", 2);
  check_cpu_float(K, "K", 2);
  const int64_t n = means.size(0);
  auto opts = means.options();
  auto means2d = torch::zeros({n, 2}, opts), conics = torch::zeros({n, 3}, opts);
  auto depths = torch::zeros({n}, opts), extents = torch::zeros({n}, opts);
  auto radii = torch::zeros({n, 2}, opts.dtype(torch::kInt32));
  const Camera cam(viewmat, K, static_cast<int>(width), static_cast<int>(height));
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const float* o = opacities.data_ptr<float>();
  float* m2 = means2d.data_ptr<float>();
  float* co = conics.data_ptr<float>();
  float* de = depths.data_ptr<float>();
  float* ex = extents.data_ptr<float>();
  int32_t* ra = radii.data_ptr<int32_t>();
  const float nearp = static_cast<float>(near_plane), farp = static_cast<float>(far_plane);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    Projected g;
    const float z = cam.R[6] * m[3 * i] + cam.R[7] * m[3 * i + 1] + cam.R[8] * m[3 * i + 2] + cam.t[2];
    if (!(z >= nearp && z <= farp) || !(o[i] > ALPHA_MIN)) continue;
    project_one(cam, m + 3 * i, q + 4 * i, s + 3 * i, g);
    if (!(g.det > 0)) continue;
    const float k = std::min(std::sqrt(2.0f * std::log(o[i] / ALPHA_MIN)), EXTENT_MAX);
    const float rx = std::ceil(k * std::sqrt(g.cxx)), ry = std::ceil(k * std::sqrt(g.cyy));
    const float mx = cam.fx * g.p[0] / z + cam.cx, my = cam.fy * g.p[1] / z + cam.cy;
    if (!(mx + rx > 0 && mx - rx < width && my + ry > 0 && my - ry < height)) continue;
    m2[2 * i] = mx, m2[2 * i + 1] = my;
    co[3 * i] = g.cyy / g.det, co[3 * i + 1] = -g.cxy / g.det, co[3 * i + 2] = g.cxx / g.det;
    de[i] = z;
    ra[2 * i] = static_cast<int32_t>(rx), ra[2 * i + 1] = static_cast<int32_t>(ry);
    ex[i] = k;
  }
  return {means2d, conics, depths, radii, extents};
}

// Gradients of the projection's outputs w.r.t. means [N, 3], quats [N, 4] and scales [N, 3] (the camera is
// fixed). Culled Gaussians (radii 0) get none, as in the twin, whose outputs are masked.
std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                            torch::Tensor viewmat, torch::Tensor K, int64_t width, int64_t height,
                                            torch::Tensor radii, torch::Tensor v_means2d, torch::Tensor v_conics,
                                            torch::Tensor v_depths) {
  check_cpu_float(v_means2d, "v_means2d", 2);
  check_cpu_float(v_conics, "v_conics", 2);
  check_cpu_float(v_depths, "v_depths", 1);
  const int64_t n = means.size(0);
  auto v_means = torch::zeros_like(means), v_quats = torch::zeros_like(quats), v_scales = torch::zeros_like(scales);
  const Camera cam(viewmat, K, static_cast<int>(width), static_cast<int>(height));
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const int32_t* ra = radii.data_ptr<int32_t>();
  const float* vm2 = v_means2d.data_ptr<float>();
  const float* vco = v_conics.data_ptr<float>();
  const float* vde = v_depths.data_ptr<float>();
  float* gm = v_means.data_ptr<float>();
  float* gq = v_quats.data_ptr<float>();
  float* gs = v_scales.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (ra[2 * i] <= 0) continue;
    Projected g;
    project_one(cam, m + 3 * i, q + 4 * i, s + 3 * i, g);
    const float x = g.p[0], y = g.p[1], z = g.p[2];
    // conic = (cyy, -cxy, cxx) / det -> the 2D covariance.
    const float va = vco[3 * i], vb = vco[3 * i + 1], vc = vco[3 * i + 2];
    const float id = 1.0f / g.det, id2 = id * id;
    const float dA_xx = -g.cyy * g.cyy * id2, dA_yy = id - g.cyy * g.cxx * id2, dA_xy = 2 * g.cyy * g.cxy * id2;
    const float dB_xx = g.cxy * g.cyy * id2, dB_yy = g.cxy * g.cxx * id2, dB_xy = -id - 2 * g.cxy * g.cxy * id2;
    const float dC_xx = id - g.cxx * g.cyy * id2, dC_yy = -g.cxx * g.cxx * id2, dC_xy = 2 * g.cxx * g.cxy * id2;
    const float v_cxx = va * dA_xx + vb * dB_xx + vc * dC_xx;
    const float v_cyy = va * dA_yy + vb * dB_yy + vc * dC_yy;
    const float v_cxy = va * dA_xy + vb * dB_xy + vc * dC_xy;
    float v_u[3], v_v[3];
    for (int j = 0; j < 3; ++j) {
      v_u[j] = 2 * v_cxx * g.u[j] + v_cxy * g.v[j];
      v_v[j] = 2 * v_cyy * g.v[j] + v_cxy * g.u[j];
    }
    // u_j = sum_k jx_k M_kj
    float v_jx[3], v_jy[3], v_M[9];
    for (int k = 0; k < 3; ++k) {
      v_jx[k] = g.M[3 * k] * v_u[0] + g.M[3 * k + 1] * v_u[1] + g.M[3 * k + 2] * v_u[2];
      v_jy[k] = g.M[3 * k] * v_v[0] + g.M[3 * k + 1] * v_v[1] + g.M[3 * k + 2] * v_v[2];
      for (int j = 0; j < 3; ++j) v_M[3 * k + j] = g.jx[k] * v_u[j] + g.jy[k] * v_v[j];
    }
    float v_R[9];
    for (int j = 0; j < 3; ++j) {
      gs[3 * i + j] = v_M[j] * g.Rq[j] + v_M[3 + j] * g.Rq[3 + j] + v_M[6 + j] * g.Rq[6 + j];
      for (int k = 0; k < 3; ++k) v_R[3 * k + j] = v_M[3 * k + j] * s[3 * i + j];
    }
    const float w = g.qn[0], qx = g.qn[1], qy = g.qn[2], qz = g.qn[3];
    float v_qn[4];
    v_qn[0] = 2 * (-qz * v_R[1] + qy * v_R[2] + qz * v_R[3] - qx * v_R[5] - qy * v_R[6] + qx * v_R[7]);
    v_qn[1] = 2 * (qy * v_R[1] + qz * v_R[2] + qy * v_R[3] - 2 * qx * v_R[4] - w * v_R[5] + qz * v_R[6] +
                   w * v_R[7] - 2 * qx * v_R[8]);
    v_qn[2] = 2 * (-2 * qy * v_R[0] + qx * v_R[1] + w * v_R[2] + qx * v_R[3] + qz * v_R[5] - w * v_R[6] +
                   qz * v_R[7] - 2 * qy * v_R[8]);
    v_qn[3] = 2 * (-2 * qz * v_R[0] - w * v_R[1] + qx * v_R[2] + w * v_R[3] - 2 * qz * v_R[4] + qy * v_R[5] +
                   qx * v_R[6] + qy * v_R[7]);
    const float* qi = q + 4 * i;
    const float norm = std::max(std::sqrt(qi[0] * qi[0] + qi[1] * qi[1] + qi[2] * qi[2] + qi[3] * qi[3]), 1e-12f);
    const float dot = v_qn[0] * g.qn[0] + v_qn[1] * g.qn[1] + v_qn[2] * g.qn[2] + v_qn[3] * g.qn[3];
    for (int k = 0; k < 4; ++k) gq[4 * i + k] = (v_qn[k] - g.qn[k] * dot) / norm;
    // jx = (fx / z) R0 - (fx tx / z^2) R2, jy likewise with fy, ty, R1.
    const float z2 = z * z, z3 = z2 * z;
    float v_z = 0, v_tx = 0, v_ty = 0;
    for (int k = 0; k < 3; ++k) {
      v_z += v_jx[k] * (-cam.fx / z2 * cam.R[k] + 2 * cam.fx * g.tx / z3 * cam.R[6 + k]);
      v_z += v_jy[k] * (-cam.fy / z2 * cam.R[3 + k] + 2 * cam.fy * g.ty / z3 * cam.R[6 + k]);
      v_tx += v_jx[k] * (-cam.fx / z2 * cam.R[6 + k]);
      v_ty += v_jy[k] * (-cam.fy / z2 * cam.R[6 + k]);
    }
    // tx = z clamp(x / z): x where not clamped, z * limit where clamped.
    float v_x = 0, v_y = 0;
    if (g.clamp_x) v_z += v_tx * (g.tx / z); else v_x += v_tx;
    if (g.clamp_y) v_z += v_ty * (g.ty / z); else v_y += v_ty;
    const float vmx = vm2[2 * i], vmy = vm2[2 * i + 1];
    v_x += vmx * cam.fx / z;
    v_y += vmy * cam.fy / z;
    v_z += -vmx * cam.fx * x / z2 - vmy * cam.fy * y / z2 + vde[i];
    for (int k = 0; k < 3; ++k) gm[3 * i + k] = cam.R[k] * v_x + cam.R[3 + k] * v_y + cam.R[6 + k] * v_z;
  }
  return {v_means, v_quats, v_scales};
}

namespace {

// Whether the cut-off ellipse (p - mean)^T conic (p - mean) <= k2 reaches one of the tile's pixel centres
// (the twin's _ellipse_meets_tile: q is convex, so its minimum over the rectangle is inside or on an edge).
inline bool ellipse_meets_tile(float mx, float my, float a, float b, float c, float k2, int tx, int ty) {
  const float x_lo = static_cast<float>(tx * TILE) + 0.5f - mx, y_lo = static_cast<float>(ty * TILE) + 0.5f - my;
  const float x_hi = x_lo + (TILE - 1), y_hi = y_lo + (TILE - 1);
  if (x_lo <= 0 && x_hi >= 0 && y_lo <= 0 && y_hi >= 0) return true;
  auto edge = [b](float fixed, float free_lo, float free_hi, float a_fixed, float c_free) {
    const float free = std::min(std::max(-b * fixed / c_free, free_lo), free_hi);
    return a_fixed * fixed * fixed + 2 * b * fixed * free + c_free * free * free;
  };
  const float qmin = std::min(std::min(edge(x_lo, y_lo, y_hi, a, c), edge(x_hi, y_lo, y_hi, a, c)),
                              std::min(edge(y_lo, x_lo, x_hi, c, a), edge(y_hi, x_lo, x_hi, c, a)));
  return qmin <= k2;
}

// The visible Gaussians (radius > 0) front to back. Visible depths lie in [near, far] with near > 0, and positive
// floats order like their bit patterns, so an LSD radix sort of the bits (three 11-bit passes) sorts them; it is
// stable, so equal depths keep index order, as the twin's stable argsort does. O(N), unlike a comparison sort.
std::vector<int64_t> front_to_back(const float* depths, const int32_t* radii, int64_t n) {
  std::vector<uint32_t> keys, keys_tmp;
  std::vector<int64_t> order, order_tmp;
  for (int64_t i = 0; i < n; ++i) {
    if (radii[2 * i] <= 0) continue;
    keys.push_back(__builtin_bit_cast(uint32_t, depths[i]));
    order.push_back(i);
  }
  const size_t m = order.size();
  keys_tmp.resize(m), order_tmp.resize(m);
  constexpr int BITS = 11, BUCKETS = 1 << BITS;
  for (int shift = 0; shift < 32; shift += BITS) {
    std::vector<size_t> start(BUCKETS + 1, 0);
    for (size_t j = 0; j < m; ++j) ++start[((keys[j] >> shift) & (BUCKETS - 1)) + 1];
    for (int k = 0; k < BUCKETS; ++k) start[k + 1] += start[k];
    for (size_t j = 0; j < m; ++j) {
      const size_t dst = start[(keys[j] >> shift) & (BUCKETS - 1)]++;
      keys_tmp[dst] = keys[j], order_tmp[dst] = order[j];
    }
    keys.swap(keys_tmp), order.swap(order_tmp);
  }
  return order;
}

}  // namespace

// Per-tile front-to-back lists: (ids [P] int64, offsets [tiles] int64, counts [tiles] int64).
std::vector<torch::Tensor> bin_tiles(torch::Tensor means2d, torch::Tensor conics, torch::Tensor depths,
                                     torch::Tensor radii, torch::Tensor extents, int64_t width, int64_t height) {
  const int64_t n = means2d.size(0);
  const int tiles_x = static_cast<int>((width + TILE - 1) / TILE), tiles_y = static_cast<int>((height + TILE - 1) / TILE);
  const int64_t n_tiles = static_cast<int64_t>(tiles_x) * tiles_y;
  const float* m2 = means2d.data_ptr<float>();
  const float* co = conics.data_ptr<float>();
  const float* ex = extents.data_ptr<float>();
  const int32_t* ra = radii.data_ptr<int32_t>();
  const std::vector<int64_t> order = front_to_back(depths.data_ptr<float>(), ra, n);
  const int64_t m = static_cast<int64_t>(order.size());
  auto visit = [&](int64_t i, auto&& emit) {
    const float mx = m2[2 * i], my = m2[2 * i + 1];
    const float a = co[3 * i], b = co[3 * i + 1], c = co[3 * i + 2], k2 = 1.01f * ex[i] * ex[i];
    const float rx = static_cast<float>(ra[2 * i]) / TILE, ry = static_cast<float>(ra[2 * i + 1]) / TILE;
    const int x0 = static_cast<int>(std::min(std::max(std::floor(mx / TILE - rx), 0.0f), float(tiles_x)));
    const int y0 = static_cast<int>(std::min(std::max(std::floor(my / TILE - ry), 0.0f), float(tiles_y)));
    const int x1 = static_cast<int>(std::min(std::ceil(mx / TILE + rx), float(tiles_x)));
    const int y1 = static_cast<int>(std::min(std::ceil(my / TILE + ry), float(tiles_y)));
    for (int ty = y0; ty < y1; ++ty)
      for (int tx = x0; tx < x1; ++tx)
        if (ellipse_meets_tile(mx, my, a, b, c, k2, tx, ty)) emit(static_cast<int64_t>(ty) * tiles_x + tx);
  };
  // Each thread bins a contiguous run of the front-to-back order and writes its pairs after those of the runs
  // before it, tile by tile: the lists come out in the serial order.
  const int max_threads = omp_get_max_threads();
  std::vector<int64_t> thread_counts(static_cast<size_t>(max_threads) * n_tiles, 0);
  auto counts = torch::zeros({n_tiles}, torch::kInt64);
  auto offsets = torch::zeros({n_tiles}, torch::kInt64);
  int64_t* cnt = counts.data_ptr<int64_t>();
  int64_t* off = offsets.data_ptr<int64_t>();
  torch::Tensor ids;
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t j0 = m * t / nt, j1 = m * (t + 1) / nt;
    int64_t* mine = thread_counts.data() + static_cast<size_t>(t) * n_tiles;
    for (int64_t j = j0; j < j1; ++j) visit(order[j], [mine](int64_t tile) { ++mine[tile]; });
#pragma omp barrier
#pragma omp single
    {
      int64_t total = 0;
      for (int64_t tile = 0; tile < n_tiles; ++tile) {
        off[tile] = total;
        for (int u = 0; u < nt; ++u) {
          int64_t& c = thread_counts[static_cast<size_t>(u) * n_tiles + tile];
          const int64_t here = c;
          c = total;  // from now on: where thread u writes its next pair of this tile
          total += here;
        }
        cnt[tile] = total - off[tile];
      }
      ids = torch::empty({total}, torch::kInt64);
    }  // implicit barrier
    int64_t* id = ids.data_ptr<int64_t>();
    for (int64_t j = j0; j < j1; ++j) visit(order[j], [&](int64_t tile) { id[mine[tile]++] = order[j]; });
  }
  return {ids, offsets, counts};
}

namespace {

// A tile's pixel centres relative to the tile origin, and which pixels lie inside the image.
struct TilePixels {
  alignas(32) float px[TP], py[TP], inside[TP];
  int x0, y0;
  TilePixels(int64_t tile, int tiles_x, int width, int height) {
    x0 = static_cast<int>(tile % tiles_x) * TILE, y0 = static_cast<int>(tile / tiles_x) * TILE;
    for (int p = 0; p < TP; ++p) {
      const int x = x0 + p % TILE, y = y0 + p / TILE;
      px[p] = static_cast<float>(x) + 0.5f, py[p] = static_cast<float>(y) + 0.5f;
      inside[p] = (x < width && y < height) ? 1.0f : 0.0f;
    }
  }
};

// One Gaussian's alpha parameters, and the pixels of a tile it can reach: the rows and the 8-pixel half-rows
// (one AVX2 register) its screen box overlaps, with 0.01 px to spare against round-off. Outside the box
// alpha < 1/255, so skipping those pixels changes nothing; a small Gaussian touches a few rows of one half.
// The pixels come as ``spans`` runs of ``len`` contiguous pixels, the s-th starting at start + s * TILE
// (a box as wide as the tile is one run).
struct GaussianBox {
  float mx, my, ha, b2, hc, log2_o;
  int start, len, spans;
  GaussianBox(const float* m2, const float* co, float opacity, const int32_t* radius, int tile_x0, int tile_y0) {
    mx = m2[0], my = m2[1];
    ha = 0.5f * LOG2E * co[0], b2 = LOG2E * co[1], hc = 0.5f * LOG2E * co[2];
    log2_o = std::log2(std::max(opacity, ALPHA_MIN));
    const float cy = my - static_cast<float>(tile_y0) - 0.5f, cx = mx - static_cast<float>(tile_x0) - 0.5f;
    const float rx = static_cast<float>(radius[0]), ry = static_cast<float>(radius[1]);
    const int r0 = std::max(static_cast<int>(std::ceil(cy - ry - 0.01f)), 0);
    const int r1 = std::min(static_cast<int>(std::floor(cy + ry + 0.01f)), TILE - 1);
    const int x0 = std::max(static_cast<int>(std::ceil(cx - rx - 0.01f)), 0);
    const int x1 = std::min(static_cast<int>(std::floor(cx + rx + 0.01f)), TILE - 1);
    const int c0 = (x0 / HALF) * HALF, c1 = (x1 / HALF + 1) * HALF;
    if (r1 < r0 || x1 < x0) {
      start = len = spans = 0;
    } else if (c0 == 0 && c1 == TILE) {
      start = r0 * TILE, len = (r1 + 1 - r0) * TILE, spans = 1;
    } else {
      start = r0 * TILE + c0, len = c1 - c0, spans = r1 + 1 - r0;
    }
  }
};

// Whether any pixel of the box still takes contributions: behind saturated pixels a Gaussian is skipped for
// the price of one pass over a mask instead of evaluating its alpha.
inline bool any_live(const float* live, const GaussianBox& gb) {
  float sum = 0.0f;
  for (int s = 0, p0 = gb.start; s < gb.spans; ++s, p0 += TILE) {
#pragma omp simd reduction(+ : sum)
    for (int p = p0; p < p0 + gb.len; ++p) sum += live[p];
  }
  return sum > 0.0f;
}

}  // namespace

// Front-to-back compositing of C-channel colours; returns (out [H, W, C] over the background, alpha [H, W, 1]).
std::vector<torch::Tensor> composite_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                             torch::Tensor opacities, torch::Tensor radii, torch::Tensor background,
                                             torch::Tensor ids,
                                             torch::Tensor offsets, torch::Tensor counts, int64_t width,
                                             int64_t height) {
  check_cpu_float(means2d, "means2d", 2);
  check_cpu_float(conics, "conics", 2);
  check_cpu_float(colors, "colors", 2);
  check_cpu_float(opacities, "opacities", 1);
  check_cpu_float(background, "background", 1);
  const int C = static_cast<int>(colors.size(1));
  const int tiles_x = static_cast<int>((width + TILE - 1) / TILE);
  const int64_t n_tiles = offsets.size(0);
  auto out = torch::empty({height, width, C}, colors.options());
  auto alpha_out = torch::empty({height, width, 1}, colors.options());
  const float* m2 = means2d.data_ptr<float>();
  const float* co = conics.data_ptr<float>();
  const float* col = colors.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  const int32_t* ra = radii.data_ptr<int32_t>();
  const float* bg = background.data_ptr<float>();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  float* ao = alpha_out.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(C) * TP);
    alignas(32) float T[TP], live[TP], wsum[TP], w[TP];
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const TilePixels pix(tile, tiles_x, static_cast<int>(width), static_cast<int>(height));
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int p = 0; p < TP; ++p) T[p] = 1.0f, live[p] = pix.inside[p], wsum[p] = 0.0f;
      for (int64_t k = 0; k < cnt[tile]; ++k) {
        const int64_t g = id[off[tile] + k];
        const GaussianBox gr(m2 + 2 * g, co + 3 * g, op[g], ra + 2 * g, pix.x0, pix.y0);
        if (!any_live(live, gr)) continue;
        for (int s = 0, p0 = gr.start; s < gr.spans; ++s, p0 += TILE) {
          const int p1 = p0 + gr.len;
#pragma omp simd
          for (int p = p0; p < p1; ++p) {
            const float dx = gr.mx - pix.px[p], dy = gr.my - pix.py[p];
            const float raw = exp2_neg(gr.log2_o - gr.ha * dx * dx - gr.hc * dy * dy - gr.b2 * dx * dy);
            const float a = raw >= ALPHA_MIN ? std::min(raw, ALPHA_MAX) : 0.0f;
            const float next = T[p] * (1.0f - a);
            // Masks as 0/1 floats, not bools: GCC vectorises the selects only then.
            const float hit = a > 0.0f ? live[p] : 0.0f;                  // reaches the pixel
            const float contributes = next > T_MIN ? hit : 0.0f;          // and does not saturate it
            w[p] = contributes * a * T[p];
            T[p] = contributes > 0.0f ? next : T[p];
            live[p] -= hit - contributes;                                 // a saturating Gaussian stops the pixel
            wsum[p] += w[p];
          }
          for (int c = 0; c < C; ++c) {
            const float cc = col[g * C + c];
            float* a = acc.data() + c * TP;
#pragma omp simd
            for (int p = p0; p < p1; ++p) a[p] += w[p] * cc;
          }
        }
        if ((k + 1) % STOP_CHECK == 0) {
          float any = 0.0f;
#pragma omp simd reduction(+ : any)
          for (int p = 0; p < TP; ++p) any += live[p];
          if (any == 0.0f) break;
        }
      }
      for (int p = 0; p < TP; ++p) {
        const int x = pix.x0 + p % TILE, y = pix.y0 + p / TILE;
        if (x >= width || y >= height) continue;
        const int64_t base = static_cast<int64_t>(y) * width + x;
        for (int c = 0; c < C; ++c) o[base * C + c] = acc[c * TP + p] + (1.0f - wsum[p]) * bg[c];
        ao[base] = wsum[p];
      }
    }
  }
  return {out, alpha_out};
}

// Gradients of the compositing, one row per (tile, Gaussian) pair in the order of ``ids``:
// [P, 6 + C] = dL/d(mean x, mean y, conic a, b, c, log opacity, colour...). The caller sums rows per Gaussian.
torch::Tensor composite_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                 torch::Tensor opacities, torch::Tensor radii, torch::Tensor ids, torch::Tensor offsets,
                                 torch::Tensor counts, int64_t width, int64_t height, torch::Tensor out,
                                 torch::Tensor alpha_out, torch::Tensor v_out, torch::Tensor v_alpha) {
  check_cpu_float(v_out, "v_out", 3);
  check_cpu_float(v_alpha, "v_alpha", 3);
  const int C = static_cast<int>(colors.size(1));
  const int R = 6 + C;
  const int tiles_x = static_cast<int>((width + TILE - 1) / TILE);
  const int64_t n_tiles = offsets.size(0);
  auto rows = torch::zeros({ids.size(0), R}, colors.options());
  const float* m2 = means2d.data_ptr<float>();
  const float* co = conics.data_ptr<float>();
  const float* col = colors.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  const int32_t* ra = radii.data_ptr<int32_t>();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const float* o = out.data_ptr<float>();
  const float* ao = alpha_out.data_ptr<float>();
  const float* vo = v_out.data_ptr<float>();
  const float* va = v_alpha.data_ptr<float>();
  float* gr_out = rows.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> grad(static_cast<size_t>(C) * TP);  // dL/d(colour channel) per pixel
    alignas(32) float T[TP], live[TP], total[TP], prefix[TP], gal[TP], w[TP], vw[TP];
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      if (cnt[tile] == 0) continue;
      const TilePixels pix(tile, tiles_x, static_cast<int>(width), static_cast<int>(height));
      for (int p = 0; p < TP; ++p) {
        const int x = pix.x0 + p % TILE, y = pix.y0 + p / TILE;
        T[p] = 1.0f, live[p] = pix.inside[p], prefix[p] = 0.0f;
        if (x >= width || y >= height) {
          for (int c = 0; c < C; ++c) grad[c * TP + p] = 0.0f;
          gal[p] = 0.0f, total[p] = 0.0f;
          continue;
        }
        const int64_t base = static_cast<int64_t>(y) * width + x;
        // g . out, the output including the background: the sum of every later term in dL/dalpha_j.
        float tot = va[base] * ao[base];
        for (int c = 0; c < C; ++c) grad[c * TP + p] = vo[base * C + c], tot += vo[base * C + c] * o[base * C + c];
        gal[p] = va[base], total[p] = tot;
      }
      for (int64_t k = 0; k < cnt[tile]; ++k) {
        const int64_t g = id[off[tile] + k];
        const GaussianBox gr(m2 + 2 * g, co + 3 * g, op[g], ra + 2 * g, pix.x0, pix.y0);
        if (!any_live(live, gr)) continue;
        const float* cg = col + g * C;
        float* row = gr_out + (off[tile] + k) * R;
        float s0 = 0, sx = 0, sy = 0, sxx = 0, sxy = 0, syy = 0;
        for (int s = 0, p0 = gr.start; s < gr.spans; ++s, p0 += TILE) {
          const int p1 = p0 + gr.len;
          for (int p = p0; p < p1; ++p) vw[p] = gal[p];  // dL/dweight: g . colour (and 1 for alpha)
          for (int c = 0; c < C; ++c) {
            const float* gc = grad.data() + c * TP;
            const float cc = cg[c];
#pragma omp simd
            for (int p = p0; p < p1; ++p) vw[p] += gc[p] * cc;
          }
#pragma omp simd reduction(+ : s0, sx, sy, sxx, sxy, syy)
          for (int p = p0; p < p1; ++p) {
            const float dx = gr.mx - pix.px[p], dy = gr.my - pix.py[p];
            const float raw = exp2_neg(gr.log2_o - gr.ha * dx * dx - gr.hc * dy * dy - gr.b2 * dx * dy);
            const float a = raw >= ALPHA_MIN ? std::min(raw, ALPHA_MAX) : 0.0f;
            const float next = T[p] * (1.0f - a);
            const float hit = a > 0.0f ? live[p] : 0.0f;
            const float contributes = next > T_MIN ? hit : 0.0f;
            const float wp = contributes * a * T[p];
            prefix[p] += wp * vw[p];
            const float v_a = T[p] * vw[p] - (total[p] - prefix[p]) / (1.0f - a);
            // dalpha / dlog(alpha) = alpha where alpha is neither skipped nor clamped.
            const float v = raw <= ALPHA_MAX ? contributes * v_a * raw : 0.0f;
            w[p] = wp;
            T[p] = contributes > 0.0f ? next : T[p];
            live[p] -= hit - contributes;
            s0 += v, sx += v * dx, sy += v * dy, sxx += v * dx * dx, sxy += v * dx * dy, syy += v * dy * dy;
          }
          for (int c = 0; c < C; ++c) {
            const float* gc = grad.data() + c * TP;
            float sc = 0;
#pragma omp simd reduction(+ : sc)
            for (int p = p0; p < p1; ++p) sc += w[p] * gc[p];
            row[6 + c] += sc;
          }
        }
        const float ca = co[3 * g], cb = co[3 * g + 1], cc = co[3 * g + 2];
        // dL/dsigma = -vs; dsigma/dmean = (a dx + b dy, b dx + c dy); dsigma/dconic = (dx^2/2, dx dy, dy^2/2).
        row[0] = -(ca * sx + cb * sy), row[1] = -(cb * sx + cc * sy);
        row[2] = -0.5f * sxx, row[3] = -sxy, row[4] = -0.5f * syy, row[5] = s0;
        if ((k + 1) % STOP_CHECK == 0) {
          float any = 0.0f;
#pragma omp simd reduction(+ : any)
          for (int p = 0; p < TP; ++p) any += live[p];
          if (any == 0.0f) break;
        }
      }
    }
  }
  return rows;
}

namespace {

constexpr float SH_C0 = 0.28209479177387814f, SH_C1 = 0.4886025119029199f;
constexpr float SH_C2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                            -1.0925484305920792f, 0.5462742152960396f};

// The camera centre in world coordinates, -R^T t, from a world-to-camera matrix.
void camera_centre(const torch::Tensor& viewmat, float* c) {
  const float* V = viewmat.data_ptr<float>();
  for (int k = 0; k < 3; ++k) c[k] = -(V[k] * V[3] + V[4 + k] * V[7] + V[8 + k] * V[11]);
}

// The SH basis (up to degree 2) at the unit direction (x, y, z), in the twin's order and signs.
inline void sh_basis(float x, float y, float z, int degree, float* basis) {
  basis[0] = SH_C0;
  if (degree < 1) return;
  basis[1] = -SH_C1 * y, basis[2] = SH_C1 * z, basis[3] = -SH_C1 * x;
  if (degree < 2) return;
  basis[4] = SH_C2[0] * x * y, basis[5] = SH_C2[1] * y * z, basis[6] = SH_C2[2] * (2 * z * z - x * x - y * y);
  basis[7] = SH_C2[3] * x * z, basis[8] = SH_C2[4] * (x * x - y * y);
}

}  // namespace

// RGB [N, 3] = max(sum_k basis_k(dir) coeffs[:, k] + 0.5, 0), dir = normalize(means - camera centre): the twin's
// _eval_sh for degrees 0-2, one pass over the Gaussians instead of ~30 elementwise tensor operations.
torch::Tensor sh_forward(torch::Tensor means, torch::Tensor coeffs, torch::Tensor viewmat, int64_t degree) {
  check_cpu_float(means, "means", 2);
  check_cpu_float(coeffs, "coeffs", 3);
  check_cpu_float(viewmat, "viewmat", 2);
  TORCH_CHECK(degree >= 0 && degree <= 2 && (degree + 1) * (degree + 1) <= coeffs.size(1), "bad SH degree");
  const int64_t n = means.size(0), K = coeffs.size(1);
  const int nb = static_cast<int>((degree + 1) * (degree + 1));
  auto rgb = torch::empty({n, 3}, means.options());
  float c[3];
  camera_centre(viewmat, c);
  const float* m = means.data_ptr<float>();
  const float* sh = coeffs.data_ptr<float>();
  float* out = rgb.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float dx = m[3 * i] - c[0], dy = m[3 * i + 1] - c[1], dz = m[3 * i + 2] - c[2];
    const float inv = 1.0f / std::max(std::sqrt(dx * dx + dy * dy + dz * dz), 1e-12f);  // F.normalize's eps
    float basis[9];
    sh_basis(dx * inv, dy * inv, dz * inv, static_cast<int>(degree), basis);
    const float* ci = sh + i * K * 3;
    for (int ch = 0; ch < 3; ++ch) {
      float v = 0.0f;
      for (int k = 0; k < nb; ++k) v += basis[k] * ci[3 * k + ch];
      out[3 * i + ch] = std::max(v + 0.5f, 0.0f);
    }
  }
  return rgb;
}

// Gradients of sh_forward w.r.t. means [N, 3] and coeffs [N, K, 3] (the camera is fixed). The clamp passes the
// gradient where its input is >= 0, as torch.clamp_min does.
std::vector<torch::Tensor> sh_backward(torch::Tensor means, torch::Tensor coeffs, torch::Tensor viewmat,
                                       int64_t degree, torch::Tensor v_rgb) {
  check_cpu_float(v_rgb, "v_rgb", 2);
  const int64_t n = means.size(0), K = coeffs.size(1);
  const int nb = static_cast<int>((degree + 1) * (degree + 1));
  auto v_means = torch::zeros_like(means), v_coeffs = torch::zeros_like(coeffs);
  float c[3];
  camera_centre(viewmat, c);
  const float* m = means.data_ptr<float>();
  const float* sh = coeffs.data_ptr<float>();
  const float* vr = v_rgb.data_ptr<float>();
  float* gm = v_means.data_ptr<float>();
  float* gc = v_coeffs.data_ptr<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float dx = m[3 * i] - c[0], dy = m[3 * i + 1] - c[1], dz = m[3 * i + 2] - c[2];
    const float norm = std::sqrt(dx * dx + dy * dy + dz * dz), inv = 1.0f / std::max(norm, 1e-12f);
    const float x = dx * inv, y = dy * inv, z = dz * inv;
    float basis[9];
    sh_basis(x, y, z, static_cast<int>(degree), basis);
    const float* ci = sh + i * K * 3;
    float g[3];  // dL/d(SH sum) per channel, after the clamp
    for (int ch = 0; ch < 3; ++ch) {
      float v = 0.0f;
      for (int k = 0; k < nb; ++k) v += basis[k] * ci[3 * k + ch];
      g[ch] = v + 0.5f >= 0.0f ? vr[3 * i + ch] : 0.0f;
      for (int k = 0; k < nb; ++k) gc[i * K * 3 + 3 * k + ch] = basis[k] * g[ch];
    }
    if (degree < 1) continue;
    // dL/dbasis_k = g . coeffs_k, then through the basis to the unit direction.
    float vb[9];
    for (int k = 1; k < nb; ++k) vb[k] = g[0] * ci[3 * k] + g[1] * ci[3 * k + 1] + g[2] * ci[3 * k + 2];
    float vx = -SH_C1 * vb[3], vy = -SH_C1 * vb[1], vz = SH_C1 * vb[2];
    if (degree >= 2) {
      vx += SH_C2[0] * y * vb[4] - 2 * SH_C2[2] * x * vb[6] + SH_C2[3] * z * vb[7] + 2 * SH_C2[4] * x * vb[8];
      vy += SH_C2[0] * x * vb[4] + SH_C2[1] * z * vb[5] - 2 * SH_C2[2] * y * vb[6] - 2 * SH_C2[4] * y * vb[8];
      vz += SH_C2[1] * y * vb[5] + 4 * SH_C2[2] * z * vb[6] + SH_C2[3] * x * vb[7];
    }
    // Through the normalisation: (v - u (u . v)) / |d|, or v / eps where F.normalize clamps the norm.
    const float dot = norm > 1e-12f ? x * vx + y * vy + z * vz : 0.0f;
    gm[3 * i] = (vx - x * dot) * inv, gm[3 * i + 1] = (vy - y * dot) * inv, gm[3 * i + 2] = (vz - z * dot) * inv;
  }
  return {v_means, v_coeffs};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &project_forward, "EWA projection of 3D Gaussians (CPU)");
  m.def("project_backward", &project_backward, "gradients of the projection (CPU)");
  m.def("bin_tiles", &bin_tiles, "front-to-back Gaussian lists per 16x16 tile (CPU)");
  m.def("composite_forward", &composite_forward, "tile compositing (CPU)");
  m.def("composite_backward", &composite_backward, "gradients of the tile compositing (CPU)");
  m.def("sh_forward", &sh_forward, "SH colours towards the camera, degrees 0-2 (CPU)");
  m.def("sh_backward", &sh_backward, "gradients of the SH colours (CPU)");
}
