// Multi-resolution 2D hash-grid lookup (Instant-NGP style), forward and backward.
//
// Plain CUDA with no torch headers, so it compiles standalone with nvcc; hashgrid.cpp binds it to torch.
// Indexing and weights match talkgs/model/hashgrid.py (the PyTorch reference) exactly:
//   pos = clamp(x, 0, 1) * R;  i0 = clamp(floor(pos), 0, R - 1);  frac = pos - i0
//   dense level ((R + 1)^2 <= T):  index = ix + iy * (R + 1)
//   hashed level:                  index = (ix * 1 ^ iy * 2654435761) mod T  (T a power of two)

#include <cuda_runtime.h>
#include <stdint.h>

#include "hashgrid.h"

namespace {

constexpr uint32_t kPrimeY = 2654435761u;

struct Corners {
    uint32_t index[4];  // rows of the level's table: (x0,y0), (x1,y0), (x0,y1), (x1,y1)
    float weight[4];
};

__device__ __forceinline__ Corners corners(float x, float y, int res, uint32_t table_size) {
    x = fminf(fmaxf(x, 0.0f), 1.0f);
    y = fminf(fmaxf(y, 0.0f), 1.0f);
    // __fmul_rn keeps nvcc from fusing the multiply into a later FMA, so frac is bit-identical to torch's.
    const float px = __fmul_rn(x, (float)res);
    const float py = __fmul_rn(y, (float)res);
    const int ix = min(max((int)floorf(px), 0), res - 1);
    const int iy = min(max((int)floorf(py), 0), res - 1);
    const float fx = px - (float)ix;
    const float fy = py - (float)iy;

    Corners c;
    const bool dense = (uint64_t)(res + 1) * (uint64_t)(res + 1) <= table_size;
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t cx = (uint32_t)(ix + (k & 1));
        const uint32_t cy = (uint32_t)(iy + (k >> 1));
        c.index[k] = dense ? cx + cy * (uint32_t)(res + 1) : (cx ^ (cy * kPrimeY)) & (table_size - 1);
    }
    c.weight[0] = (1.0f - fx) * (1.0f - fy);
    c.weight[1] = fx * (1.0f - fy);
    c.weight[2] = (1.0f - fx) * fy;
    c.weight[3] = fx * fy;
    return c;
}

// One thread per (point, level); out is [N, L * F], level-major within a row.
__global__ void forward_kernel(const float* __restrict__ xy, const float* __restrict__ emb,
                               const int* __restrict__ res, float* __restrict__ out,
                               int64_t n, int levels, uint32_t table_size, int feats) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * levels) return;
    const int64_t p = t / levels;
    const int l = (int)(t % levels);
    const Corners c = corners(xy[2 * p], xy[2 * p + 1], res[l], table_size);
    const float* table = emb + (int64_t)l * table_size * feats;
    float* o = out + p * levels * feats + (int64_t)l * feats;
    for (int f = 0; f < feats; ++f) {
        float acc = 0.0f;
        #pragma unroll
        for (int k = 0; k < 4; ++k) acc += c.weight[k] * table[(int64_t)c.index[k] * feats + f];
        o[f] = acc;
    }
}

// Scatter of the forward's gather: corners are shared between points and hash collisions alias rows, hence atomics.
__global__ void backward_kernel(const float* __restrict__ xy, const float* __restrict__ grad_out,
                                const int* __restrict__ res, float* __restrict__ grad_emb,
                                int64_t n, int levels, uint32_t table_size, int feats) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * levels) return;
    const int64_t p = t / levels;
    const int l = (int)(t % levels);
    const Corners c = corners(xy[2 * p], xy[2 * p + 1], res[l], table_size);
    float* table = grad_emb + (int64_t)l * table_size * feats;
    const float* g = grad_out + p * levels * feats + (int64_t)l * feats;
    for (int f = 0; f < feats; ++f) {
        const float gf = g[f];
        #pragma unroll
        for (int k = 0; k < 4; ++k) atomicAdd(&table[(int64_t)c.index[k] * feats + f], c.weight[k] * gf);
    }
}

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t work) { return (unsigned int)((work + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t hashgrid2d_forward(const float* xy, const float* emb, const int* res, float* out, int64_t n,
                               int levels, uint32_t table_size, int feats, cudaStream_t stream) {
    if (n > 0) {
        forward_kernel<<<blocks_for(n * levels), kThreads, 0, stream>>>(xy, emb, res, out, n, levels, table_size,
                                                                        feats);
    }
    return cudaGetLastError();
}

cudaError_t hashgrid2d_backward(const float* xy, const float* grad_out, const int* res, float* grad_emb, int64_t n,
                                int levels, uint32_t table_size, int feats, cudaStream_t stream) {
    if (n > 0) {
        backward_kernel<<<blocks_for(n * levels), kThreads, 0, stream>>>(xy, grad_out, res, grad_emb, n, levels,
                                                                         table_size, feats);
    }
    return cudaGetLastError();
}
