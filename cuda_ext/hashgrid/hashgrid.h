// Launchers for the 2D multires hash-grid kernels in hashgrid.cu; raw pointers, so no torch headers are needed there.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

// xy [N, 2] in [0, 1] (clamped), emb [L, T, F], res [L] cells per side (device memory), out [N, L * F].
cudaError_t hashgrid2d_forward(const float* xy, const float* emb, const int* res, float* out, int64_t n,
                               int levels, uint32_t table_size, int feats, cudaStream_t stream);

// grad_emb [L, T, F] must be zeroed by the caller; it is accumulated into.
cudaError_t hashgrid2d_backward(const float* xy, const float* grad_out, const int* res, float* grad_emb, int64_t n,
                                int levels, uint32_t table_size, int feats, cudaStream_t stream);
