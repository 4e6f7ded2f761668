// y = x W^T + b for a few rows of x (a decode step's batch), fp32, AVX2 + FMA, on the CPU.
//
// At 8 rows MKL's sgemm reads each weight at a third of the memory bandwidth: SmolLM2-135M's linears took
// ~85 ms a decode step against ~40 ms here (robust_rlhf/runtime/small_batch_linear.py has the figures).
// Here each thread streams its own contiguous band of W's rows once: a tile of 3 rows of W stays in L1
// while every group of up to 4 rows of x is multiplied into it (12 accumulators of 8 lanes), so the
// weights are read from memory once per call whatever the number of rows. Threads: torch's own
// (at::parallel_for over bands of W's rows), so torch.set_num_threads and OMP_NUM_THREADS apply.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

namespace {

constexpr int64_t kTileRows = 3;  // rows of W per tile

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// y[i, j] = x[i, :] . w[j, :] (+ b[j]) for i < ROWS (<= 4), j < 3; x and w rows are K long and
// contiguous, y's rows are ldy apart.
template <int ROWS>
inline void tile(const float* x, const float* w, int64_t K, float* y, int64_t ldy, const float* b) {
  // Named accumulators, not an array: GCC kept an array's 12 vectors on the stack (1.35x slower).
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const float* w0 = w;
  const float* w1 = w + K;
  const float* w2 = w + 2 * K;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v0 = _mm256_loadu_ps(w0 + k), v1 = _mm256_loadu_ps(w1 + k), v2 = _mm256_loadu_ps(w2 + k);
    __m256 xi = _mm256_loadu_ps(x + k);
    a00 = _mm256_fmadd_ps(xi, v0, a00), a01 = _mm256_fmadd_ps(xi, v1, a01), a02 = _mm256_fmadd_ps(xi, v2, a02);
    if constexpr (ROWS > 1) {
      xi = _mm256_loadu_ps(x + K + k);
      a10 = _mm256_fmadd_ps(xi, v0, a10), a11 = _mm256_fmadd_ps(xi, v1, a11), a12 = _mm256_fmadd_ps(xi, v2, a12);
    }
    if constexpr (ROWS > 2) {
      xi = _mm256_loadu_ps(x + 2 * K + k);
      a20 = _mm256_fmadd_ps(xi, v0, a20), a21 = _mm256_fmadd_ps(xi, v1, a21), a22 = _mm256_fmadd_ps(xi, v2, a22);
    }
    if constexpr (ROWS > 3) {
      xi = _mm256_loadu_ps(x + 3 * K + k);
      a30 = _mm256_fmadd_ps(xi, v0, a30), a31 = _mm256_fmadd_ps(xi, v1, a31), a32 = _mm256_fmadd_ps(xi, v2, a32);
    }
  }
  const __m256 acc[4][3] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
  for (int i = 0; i < ROWS; ++i)
    for (int j = 0; j < 3; ++j) {
      float s = horizontal_sum(acc[i][j]);
      for (int64_t r = k; r < K; ++r) s += x[i * K + r] * w[j * K + r];
      y[i * ldy + j] = b ? s + b[j] : s;
    }
}

// One row of W against every row of x (the last N % 3 rows of W).
inline void single_row(const float* x, int64_t M, const float* w, int64_t K, float* y, int64_t ldy, const float* b) {
  for (int64_t m = 0; m < M; ++m) {
    __m256 acc = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), _mm256_loadu_ps(w + k), acc);
    float s = horizontal_sum(acc);
    for (; k < K; ++k) s += x[m * K + k] * w[k];
    y[m * ldy] = b ? s + b[0] : s;
  }
}

}  // namespace

// x (..., K), weight (N, K) contiguous, bias (N,) or None, all fp32 on the CPU -> (..., N).
torch::Tensor small_batch_linear(const torch::Tensor& x, const torch::Tensor& weight,
                                 const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "small_batch_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, "small_batch_linear: fp32 only");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "small_batch_linear: a contiguous (N, K) weight");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "small_batch_linear: x's last dimension must be K");
  TORCH_CHECK(weight.size(1) > 0, "small_batch_linear: K = 0");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias)
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                    bias->is_contiguous() && bias->size(0) == weight.size(0),
                "small_batch_linear: a contiguous fp32 CPU bias of N elements");
  const torch::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  const int64_t M = rows.size(0), K = rows.size(1), N = weight.size(0);
  torch::Tensor y = torch::empty({M, N}, x.options());
  const float* xp = rows.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t tiles = N / kTileRows;
  // At least 8 tiles (24 rows of W) per thread: smaller bands cost more to hand out than they save.
  at::parallel_for(0, tiles, 8, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t n = t * kTileRows;
      const float* wn = wp + n * K;
      const float* bn = bp ? bp + n : nullptr;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) tile<4>(xp + m * K, wn, K, yp + m * N + n, N, bn);
      for (; m + 2 <= M; m += 2) tile<2>(xp + m * K, wn, K, yp + m * N + n, N, bn);
      for (; m < M; ++m) tile<1>(xp + m * K, wn, K, yp + m * N + n, N, bn);
    }
  });
  for (int64_t n = tiles * kTileRows; n < N; ++n) single_row(xp, M, wp + n * K, K, yp + n, N, bp ? bp + n : nullptr);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Without the GIL: another Python thread runs while a product does (ATen needs no GIL).
  m.def("small_batch_linear", &small_batch_linear, "x W^T + b for a few rows of x (fp32, AVX2 + FMA)",
        py::call_guard<py::gil_scoped_release>());
}
