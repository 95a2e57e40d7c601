// Torch binding for the 2D multires hash-grid kernels: shape/device checks, allocation, the current stream.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "hashgrid.h"

namespace {

void check_inputs(const torch::Tensor& xy, const torch::Tensor& res, int64_t levels) {
    TORCH_CHECK(xy.is_cuda() && xy.scalar_type() == torch::kFloat32 && xy.dim() == 2 && xy.size(1) == 2,
                "xy must be a float32 CUDA tensor of shape [N, 2]");
    TORCH_CHECK(res.is_cuda() && res.scalar_type() == torch::kInt32 && res.dim() == 1 && res.size(0) == levels,
                "resolutions must be an int32 CUDA tensor of shape [L]");
    TORCH_CHECK(xy.device() == res.device(), "xy and resolutions must be on the same device");
}

void check_table_size(int64_t table_size) {
    TORCH_CHECK(table_size > 0 && (table_size & (table_size - 1)) == 0 && table_size <= (int64_t(1) << 31),
                "table size must be a power of two");
}

}  // namespace

torch::Tensor forward(torch::Tensor xy, torch::Tensor emb, torch::Tensor res) {
    TORCH_CHECK(emb.is_cuda() && emb.scalar_type() == torch::kFloat32 && emb.dim() == 3,
                "embeddings must be a float32 CUDA tensor of shape [L, T, F]");
    check_inputs(xy, res, emb.size(0));
    check_table_size(emb.size(1));
    const c10::cuda::CUDAGuard guard(xy.device());
    xy = xy.contiguous();
    emb = emb.contiguous();
    res = res.contiguous();
    const int64_t levels = emb.size(0), feats = emb.size(2);
    auto out = torch::empty({xy.size(0), levels * feats}, xy.options());
    const cudaError_t err = hashgrid2d_forward(xy.data_ptr<float>(), emb.data_ptr<float>(), res.data_ptr<int>(),
                                               out.data_ptr<float>(), xy.size(0), (int)levels,
                                               (uint32_t)emb.size(1), (int)feats,
                                               c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "hashgrid2d_forward: ", cudaGetErrorString(err));
    return out;
}

torch::Tensor backward(torch::Tensor grad_out, torch::Tensor xy, torch::Tensor res, int64_t table_size,
                       int64_t feats) {
    check_inputs(xy, res, res.size(0));
    check_table_size(table_size);
    const int64_t levels = res.size(0);
    TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == torch::kFloat32 && grad_out.dim() == 2 &&
                    grad_out.size(0) == xy.size(0) && grad_out.size(1) == levels * feats,
                "grad_out must be a float32 CUDA tensor of shape [N, L * F]");
    const c10::cuda::CUDAGuard guard(xy.device());
    xy = xy.contiguous();
    grad_out = grad_out.contiguous();
    res = res.contiguous();
    auto grad_emb = torch::zeros({levels, table_size, feats}, grad_out.options());
    const cudaError_t err = hashgrid2d_backward(xy.data_ptr<float>(), grad_out.data_ptr<float>(),
                                                res.data_ptr<int>(), grad_emb.data_ptr<float>(), xy.size(0),
                                                (int)levels, (uint32_t)table_size, (int)feats,
                                                c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "hashgrid2d_backward: ", cudaGetErrorString(err));
    return grad_emb;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("forward", &forward, "2D multires hash-grid lookup: xy [N, 2], emb [L, T, F], res [L] -> [N, L * F]");
    m.def("backward", &backward, "gradient of forward w.r.t. emb: grad_out [N, L * F] -> [L, T, F]");
}
