// 2D multi-resolution hash-grid lookup on the CPU (C++/OpenMP), forward and backward.
//
// The compiled twin of hashgrid2d_torch in talkgs/model/hashgrid.py, which is the reference; the CUDA kernels in
// cuda_ext/hashgrid index the same way. Per point and level:
//   pos = clamp(xy, 0, 1) * R;  cell = min(floor(pos), R - 1);  frac = pos - cell
//   dense level ((R + 1)^2 <= T):  row = ix + iy * (R + 1)
//   hashed level:                  row = (ix ^ iy * 2654435761) & (T - 1)
//   out = sum over the corners (0,0), (1,0), (0,1), (1,1) of bilinear weight * embeddings[row]
// The gradient w.r.t. xy is what autograd gives the torch code: it flows through frac only (cell is detached), and
// clamp passes it where 0 <= xy <= 1, inclusive, and blocks it outside.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// GCC contracts a * b + c into an FMA across statements by default in C++ (-march=native has FMA). torch rounds
// every product and sum separately, and the forward is meant to give its bits exactly, so contraction is off here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
// Below this many points per thread, starting threads (and, in the backward, zeroing and summing one gradient
// table per thread) costs more than it saves.
constexpr int64_t kMinPointsPerThread = 1024;
// Cap on the floats of the per-thread gradient tables, so that huge tables do not multiply memory by the threads.
constexpr int64_t kMaxScratchFloats = int64_t(1) << 25;  // 128 MiB

struct Level {
    int64_t res;
    float res_f;  // the float torch multiplies by: res.to(xy.dtype)
    bool dense;
};

struct Corners {
    int64_t row[4];  // rows of the level's table, corners in the order (0,0), (1,0), (0,1), (1,1)
    float weight[4];
    float fx, fy;
};

// torch's clamp, for non-NaN input; NaN is rejected by forward before anything is indexed.
inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

inline Corners corners(float x, float y, const Level& lv, int64_t table_size) {
    const float px = clamp01(x) * lv.res_f;
    const float py = clamp01(y) * lv.res_f;
    // pos >= 0, so floor is the truncation; the min puts x = 1 in the last cell like the torch code.
    const int64_t ix = std::min(static_cast<int64_t>(std::floor(px)), lv.res - 1);
    const int64_t iy = std::min(static_cast<int64_t>(std::floor(py)), lv.res - 1);
    Corners c;
    c.fx = px - static_cast<float>(ix);
    c.fy = py - static_cast<float>(iy);
    for (int k = 0; k < 4; ++k) {
        const int64_t cx = ix + (k & 1);
        const int64_t cy = iy + (k >> 1);
        if (lv.dense) {
            c.row[k] = cx + cy * (lv.res + 1);
        } else {
            // torch computes this in int64 without overflow (cy < 2^31); masking with T - 1 < 2^32 keeps only low
            // bits, which uint32 arithmetic (product mod 2^32) gives identically.
            const uint32_t h = static_cast<uint32_t>(cx) ^ (static_cast<uint32_t>(cy) * kPrimeY);
            c.row[k] = static_cast<int64_t>(h & static_cast<uint32_t>(table_size - 1));
        }
    }
    const float gx = 1.0f - c.fx, gy = 1.0f - c.fy;
    c.weight[0] = gx * gy;
    c.weight[1] = c.fx * gy;
    c.weight[2] = gx * c.fy;
    c.weight[3] = c.fx * c.fy;
    return c;
}

void check_inputs(const torch::Tensor& xy, const torch::Tensor& emb, const torch::Tensor& res) {
    TORCH_CHECK(xy.device().is_cpu() && emb.device().is_cpu() && res.device().is_cpu(),
                "hashgrid (CPU kernel): xy, embeddings and resolutions must be CPU tensors");
    TORCH_CHECK(xy.dim() == 2 && xy.size(1) == 2, "hashgrid: xy must be [N, 2], got ", xy.sizes());
    TORCH_CHECK(xy.scalar_type() == torch::kFloat32, "hashgrid: xy must be float32, got ", xy.scalar_type());
    TORCH_CHECK(xy.is_contiguous(), "hashgrid: xy must be contiguous");
    TORCH_CHECK(emb.dim() == 3, "hashgrid: embeddings must be [L, T, F], got ", emb.sizes());
    TORCH_CHECK(emb.scalar_type() == torch::kFloat32, "hashgrid: embeddings must be float32, got ",
                emb.scalar_type());
    TORCH_CHECK(emb.is_contiguous(), "hashgrid: embeddings must be contiguous");
    TORCH_CHECK(emb.size(1) >= 1 && emb.size(1) - 1 <= int64_t(std::numeric_limits<uint32_t>::max()),
                "hashgrid: the table size T must be in [1, 2^32], got ", emb.size(1));
    TORCH_CHECK(res.dim() == 1 && res.size(0) == emb.size(0), "hashgrid: resolutions must be [L] with L = ",
                emb.size(0), ", got ", res.sizes());
    TORCH_CHECK(res.scalar_type() == torch::kInt32, "hashgrid: resolutions must be int32, got ", res.scalar_type());
    TORCH_CHECK(res.is_contiguous(), "hashgrid: resolutions must be contiguous");
}

std::vector<Level> make_levels(const torch::Tensor& res, int64_t table_size) {
    const int32_t* r = res.data_ptr<int32_t>();
    std::vector<Level> levels(res.size(0));
    for (size_t l = 0; l < levels.size(); ++l) {
        TORCH_CHECK(r[l] >= 1, "hashgrid: resolutions must be >= 1, got ", r[l], " at level ", l);
        const int64_t v = r[l];
        levels[l] = Level{v, static_cast<float>(v), (v + 1) * (v + 1) <= table_size};
    }
    return levels;
}

int threads_for(int64_t n) {
    const int64_t by_work = std::max<int64_t>(1, n / kMinPointsPerThread);
    // Follow torch.set_num_threads rather than OMP_NUM_THREADS alone, like torch's own CPU ops.
    return static_cast<int>(std::min<int64_t>(at::get_num_threads(), by_work));
}

torch::Tensor forward(const torch::Tensor& xy, const torch::Tensor& emb, const torch::Tensor& res) {
    check_inputs(xy, emb, res);
    const int64_t n = xy.size(0), L = emb.size(0), T = emb.size(1), F = emb.size(2);
    const std::vector<Level> levels = make_levels(res, T);
    auto out = torch::empty({n, L * F}, emb.options());
    const float* pxy = xy.data_ptr<float>();
    const float* pemb = emb.data_ptr<float>();
    float* pout = out.data_ptr<float>();

    int has_nan = 0;
    const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) reduction(| : has_nan) if (threads > 1)
    for (int64_t p = 0; p < n; ++p) {
        const float x = pxy[2 * p], y = pxy[2 * p + 1];
        float* o = pout + p * L * F;
        if (std::isnan(x) || std::isnan(y)) {  // floor(NaN) has no cell: flag it, never index with it
            has_nan = 1;
            std::fill(o, o + L * F, std::numeric_limits<float>::quiet_NaN());
            continue;
        }
        for (int64_t l = 0; l < L; ++l) {
            const Corners c = corners(x, y, levels[l], T);
            const float* table = pemb + l * T * F;
            for (int64_t f = 0; f < F; ++f) {
                // Summed corner by corner from 0, the order of torch's sum over the corner dimension.
                float acc = 0.0f;
                for (int k = 0; k < 4; ++k) acc += c.weight[k] * table[c.row[k] * F + f];
                o[l * F + f] = acc;
            }
        }
    }
    TORCH_CHECK(!has_nan, "hashgrid: xy contains NaN");
    return out;
}

std::vector<torch::Tensor> backward(const torch::Tensor& grad_out, const torch::Tensor& xy, const torch::Tensor& emb,
                                    const torch::Tensor& res, bool need_xy_grad) {
    check_inputs(xy, emb, res);
    const int64_t n = xy.size(0), L = emb.size(0), T = emb.size(1), F = emb.size(2);
    TORCH_CHECK(grad_out.device().is_cpu() && grad_out.scalar_type() == torch::kFloat32 && grad_out.is_contiguous(),
                "hashgrid: grad_out must be a contiguous float32 CPU tensor");
    TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n && grad_out.size(1) == L * F,
                "hashgrid: grad_out must be [N, L * F] = [", n, ", ", L * F, "], got ", grad_out.sizes());
    const std::vector<Level> levels = make_levels(res, T);
    auto grad_emb = torch::zeros_like(emb);
    auto grad_xy = need_xy_grad ? torch::zeros({n, 2}, xy.options()) : torch::empty({0}, xy.options());
    const float* pxy = xy.data_ptr<float>();
    const float* pemb = emb.data_ptr<float>();
    const float* pgrad = grad_out.data_ptr<float>();
    float* pgxy = need_xy_grad ? grad_xy.data_ptr<float>() : nullptr;
    const int64_t table_floats = L * T * F;

    // Neighbouring points share corners and hashed levels alias rows, so threads scattering into one table would
    // race. Each thread scatters its contiguous block of points into its own table instead (thread 0 straight into
    // grad_emb) and the tables are summed in thread order: no atomics, and the same bits on every run with the same
    // thread count. The tables are small (12 * 16384 * 2 floats by default), so the copies are cheap.
    const int64_t max_tables = std::max<int64_t>(1, kMaxScratchFloats / std::max<int64_t>(1, table_floats));
    const int requested = static_cast<int>(std::min<int64_t>(threads_for(n), max_tables + 1));
    std::unique_ptr<float[]> scratch(requested > 1 ? new float[(requested - 1) * table_floats] : nullptr);
    int used = 1;

#pragma omp parallel num_threads(requested) if (requested > 1)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();  // nt may be below the request
#else
        const int t = 0, nt = 1;
#endif
        if (t == 0) used = nt;
        float* gtable = t == 0 ? grad_emb.data_ptr<float>() : scratch.get() + (t - 1) * table_floats;
        if (t > 0) std::fill(gtable, gtable + table_floats, 0.0f);
        const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
        for (int64_t p = begin; p < end; ++p) {
            // NaN was rejected by forward; clamp01 maps it to 0 here so that no row is out of range regardless.
            const float x = pxy[2 * p], y = pxy[2 * p + 1];
            const float* g = pgrad + p * L * F;
            double gx = 0.0, gy = 0.0;  // sums over levels with weights up to R: double keeps them as exact as torch's
            for (int64_t l = 0; l < L; ++l) {
                const Corners c = corners(x, y, levels[l], T);
                float* gt = gtable + l * T * F;
                for (int64_t f = 0; f < F; ++f) {
                    const float gf = g[l * F + f];
                    for (int k = 0; k < 4; ++k) gt[c.row[k] * F + f] += c.weight[k] * gf;
                }
                if (need_xy_grad) {
                    // d out / d weight_k = <g, e_k>; the weights' derivatives in fx and fy give the rest.
                    const float* table = pemb + l * T * F;
                    float gw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    for (int k = 0; k < 4; ++k)
                        for (int64_t f = 0; f < F; ++f) gw[k] += g[l * F + f] * table[c.row[k] * F + f];
                    const float dfx = (1.0f - c.fy) * (gw[1] - gw[0]) + c.fy * (gw[3] - gw[2]);
                    const float dfy = (1.0f - c.fx) * (gw[2] - gw[0]) + c.fx * (gw[3] - gw[1]);
                    gx += static_cast<double>(dfx) * levels[l].res_f;  // d pos / d clamp(xy) = R
                    gy += static_cast<double>(dfy) * levels[l].res_f;
                }
            }
            if (need_xy_grad) {
                // clamp's gradient: 1 on [0, 1] inclusive, 0 outside (and for NaN), as torch's clamp_backward.
                pgxy[2 * p] = (x >= 0.0f && x <= 1.0f) ? static_cast<float>(gx) : 0.0f;
                pgxy[2 * p + 1] = (y >= 0.0f && y <= 1.0f) ? static_cast<float>(gy) : 0.0f;
            }
        }
    }

    if (used > 1) {
        float* gemb = grad_emb.data_ptr<float>();
        const float* s = scratch.get();
        const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), used));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t i = 0; i < table_floats; ++i) {
            float acc = gemb[i];
            for (int b = 1; b < used; ++b) acc += s[(b - 1) * table_floats + i];
            gemb[i] = acc;
        }
    }
    return {grad_emb, grad_xy};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "2D multi-resolution hash-grid lookup on the CPU (C++/OpenMP); the twin of hashgrid2d_torch";
    m.def("forward", &forward, "xy [N, 2] f32, embeddings [L, T, F] f32, resolutions [L] i32 -> [N, L * F]",
          py::arg("xy"), py::arg("embeddings"), py::arg("resolutions"));
    m.def("backward", &backward,
          "grad_out [N, L * F], xy, embeddings, resolutions, need_xy_grad -> (grad_embeddings [L, T, F], "
          "grad_xy [N, 2] or empty)",
          py::arg("grad_out"), py::arg("xy"), py::arg("embeddings"), py::arg("resolutions"),
          py::arg("need_xy_grad"));
}
