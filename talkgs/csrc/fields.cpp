// The motion fields' per-frame head on the CPU, for inference: the twin of the PyTorch path in
// talkgs/model/motion.py (head_first_layer, then the head's Linear + ReLU blocks and the output layer).
//
// For every frame b and Gaussian n:
//   x = relu(shared[n] + W_s (attention[n] * signal[b]))      the first layer, its per-Gaussian part given
//   x = relu(W_k x + b_k)                                     each further hidden layer
//   out[b, n] = W_o x + b_o
// PyTorch runs this as whole-batch matrix products that write and re-read [B * N, hidden] activations
// (33 MB per layer at 8 frames and 16k Gaussians) and copy the bias into each; here 32 Gaussians at a
// time go through every layer inside the caches, one Gaussian per SIMD lane, with the weights broadcast.
// No gradients: training keeps the PyTorch path.

#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int L = 32;  // Gaussians per block: four AVX2 registers of float32

void check(const torch::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.dim() == ndim, name, " must have ", ndim, " dimensions, got ", t.dim());
}

// y[o][l] = init[o][l] + sum_k w[o][k] x[k][l] (init: a bias broadcast over the lanes, or per-lane values),
// optionally through a ReLU. Three outputs of 32 lanes at a time: 12 accumulator registers, and each step
// loads 4 registers of x and 3 weights for 12 FMAs, so the FMA units, not the loads, set the pace (measured
// per frame of 16.6k Gaussians, 2 cores: 4.8 ms with 8 lanes x 4 outputs, 2.5 ms with 32 x 3).
template <bool PerLaneInit>
inline void dense(const float* w, const float* init, const float* x, float* y, int out, int in, bool relu) {
  constexpr int G = 3;
  int o = 0;
  for (; o + G <= out; o += G) {
    alignas(32) float acc[G][L];
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < L; ++l) acc[g][l] = PerLaneInit ? init[(o + g) * L + l] : init[o + g];
    const float* w0 = w + static_cast<int64_t>(o) * in;
    for (int k = 0; k < in; ++k) {
      const float* xk = x + k * L;
      for (int g = 0; g < G; ++g) {
        const float wk = w0[g * in + k];
#pragma omp simd
        for (int l = 0; l < L; ++l) acc[g][l] += wk * xk[l];
      }
    }
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < L; ++l) y[(o + g) * L + l] = relu ? std::max(acc[g][l], 0.0f) : acc[g][l];
  }
  for (; o < out; ++o) {
    alignas(32) float acc[L];
    for (int l = 0; l < L; ++l) acc[l] = PerLaneInit ? init[o * L + l] : init[o];
    for (int k = 0; k < in; ++k) {
      const float wk = w[static_cast<int64_t>(o) * in + k];
#pragma omp simd
      for (int l = 0; l < L; ++l) acc[l] += wk * x[k * L + l];
    }
    for (int l = 0; l < L; ++l) y[o * L + l] = relu ? std::max(acc[l], 0.0f) : acc[l];
  }
}

}  // namespace

// shared [N, H], attention [N, S], signal [B, S], w_first [H, in] (its last S columns weigh the signal),
// hidden_w / hidden_b: the further hidden layers ([H, H], [H]), w_out [O, H], b_out [O] -> [B, N, O].
torch::Tensor head_forward(torch::Tensor shared, torch::Tensor attention, torch::Tensor signal,
                           torch::Tensor w_first, std::vector<torch::Tensor> hidden_w,
                           std::vector<torch::Tensor> hidden_b, torch::Tensor w_out, torch::Tensor b_out) {
  check(shared, "shared", 2);
  check(attention, "attention", 2);
  check(signal, "signal", 2);
  check(w_first, "w_first", 2);
  check(w_out, "w_out", 2);
  check(b_out, "b_out", 1);
  const int64_t n = shared.size(0), b = signal.size(0);
  const int H = static_cast<int>(shared.size(1)), S = static_cast<int>(signal.size(1));
  const int O = static_cast<int>(w_out.size(0)), in = static_cast<int>(w_first.size(1));
  TORCH_CHECK(attention.size(0) == n && attention.size(1) == S, "attention must be [N, S]");
  TORCH_CHECK(w_first.size(0) == H && in >= S, "w_first must be [H, H + S]");
  TORCH_CHECK(w_out.size(1) == H && b_out.size(0) == O, "w_out must be [O, H] and b_out [O]");
  TORCH_CHECK(hidden_w.size() == hidden_b.size(), "one bias per hidden layer");
  for (size_t i = 0; i < hidden_w.size(); ++i) {
    check(hidden_w[i], "hidden_w", 2);
    check(hidden_b[i], "hidden_b", 1);
    TORCH_CHECK(hidden_w[i].size(0) == H && hidden_w[i].size(1) == H && hidden_b[i].size(0) == H,
                "hidden layers must be [H, H] with [H] biases");
  }
  // The signal's columns of the first layer, made contiguous: ws[h][s].
  const torch::Tensor ws_t = w_first.slice(1, in - S, in).contiguous();
  auto out = torch::empty({b, n, O}, shared.options());
  const float* sh = shared.data_ptr<float>();
  const float* at = attention.data_ptr<float>();
  const float* sg = signal.data_ptr<float>();
  const float* ws = ws_t.data_ptr<float>();
  const float* wo = w_out.data_ptr<float>();
  const float* bo = b_out.data_ptr<float>();
  std::vector<const float*> hw, hb;
  for (size_t i = 0; i < hidden_w.size(); ++i) {
    hw.push_back(hidden_w[i].data_ptr<float>());
    hb.push_back(hidden_b[i].data_ptr<float>());
  }
  float* po = out.data_ptr<float>();
  const int64_t blocks = (n + L - 1) / L;
#pragma omp parallel
  {
    std::vector<float> shb(static_cast<size_t>(H) * L), atb(static_cast<size_t>(S) * L);
    std::vector<float> u(static_cast<size_t>(S) * L);
    std::vector<float> x(static_cast<size_t>(H) * L), y(static_cast<size_t>(std::max(H, O)) * L);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t n0 = blk * L;
      const int lanes = static_cast<int>(std::min<int64_t>(L, n - n0));
      // The block's per-Gaussian inputs, transposed to [feature][lane]; missing lanes are zero.
      for (int l = 0; l < L; ++l) {
        for (int h = 0; h < H; ++h) shb[h * L + l] = l < lanes ? sh[(n0 + l) * H + h] : 0.0f;
        for (int s = 0; s < S; ++s) atb[s * L + l] = l < lanes ? at[(n0 + l) * S + s] : 0.0f;
      }
      for (int64_t f = 0; f < b; ++f) {
        const float* sf = sg + f * S;
        for (int s = 0; s < S; ++s)
          for (int l = 0; l < L; ++l) u[s * L + l] = atb[s * L + l] * sf[s];
        dense<true>(ws, shb.data(), u.data(), x.data(), H, S, true);  // the first layer, from its shared part
        for (size_t i = 0; i < hw.size(); ++i) {
          dense<false>(hw[i], hb[i], x.data(), y.data(), H, H, true);
          std::swap(x, y);
        }
        dense<false>(wo, bo, x.data(), y.data(), O, H, false);
        for (int l = 0; l < lanes; ++l)
          for (int o = 0; o < O; ++o) po[(f * n + n0 + l) * O + o] = y[o * L + l];
      }
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("head_forward", &head_forward, "the motion fields' per-frame head, inference only (CPU)");
}
