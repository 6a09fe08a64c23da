// Fused CPU kernels for the encoder towers (built on first use by gpt_ds/kernels/cpu_ext.py).
//
// Dropout draws its keep decisions from a counter-based hash of (seed, element index) instead of a stored mask:
// the forward is one pass (read x [+ bias], write the result), and the backward regenerates the same decisions from
// the seed, so no mask is kept between them. Element i keeps its value when the 16-bit lane (i & 1) of
// hash(seed, i >> 1) is >= q, q = round(p * 65536); kept values are scaled by 65536 / (65536 - q).
// gpt_ds/kernels/cpu_ext.py holds the plain-PyTorch twin of the hash; the tests hold the two to the same bits.
//
// The generator head's per-tile work (gen_tile_forward, gen_tile_grad_) is the chunked PyTorch path of
// gpt_ds/kernels/generator_torch.py in one pass per row instead of a dozen tensor-wide passes; the PyTorch code stays
// its twin. The Gumbel noise's logs are ATen's vectorized log (what torch.log calls), so the samples match the twin's
// bit for bit; the log-sum-exp and the softmax use ATen's faster inline exp_u20 (what torch's softmax uses, within
// about 2 ulp), as does the attention softmax below.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <vector>

#include <cmath>
#include <cstdint>

#include <dlfcn.h>

namespace {

inline uint32_t mix32(uint32_t h) {  // an avalanche finalizer (multiply-xorshift, constants from C. Wellons' search)
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}

inline uint32_t lane16(uint64_t i, uint32_t k0, uint32_t k1) {
  const uint32_t hi = static_cast<uint32_t>(i >> 33);
  const uint32_t h = mix32(mix32(static_cast<uint32_t>(i >> 1) ^ k0) ^ k1 ^ (hi * 0x9e3779b9U));
  return (i & 1) ? (h >> 16) : (h & 0xffffU);
}

// f(c, lane16(i0 + c)) for c in [0, n), in 32-bit arithmetic the compiler vectorizes (the high bits of the index
// are constant over the range, except in the rare range that crosses a multiple of 2^33).
template <typename F>
inline void for_lanes(uint64_t i0, int64_t n, uint32_t k0, uint32_t k1, F&& f) {
  if (n <= 0) return;
  if ((i0 >> 33) != ((i0 + n - 1) >> 33)) {
    for (int64_t c = 0; c < n; ++c) f(c, lane16(i0 + c, k0, k1));
    return;
  }
  const uint32_t hk = k1 ^ (static_cast<uint32_t>(i0 >> 33) * 0x9e3779b9U);
  const uint32_t pb = static_cast<uint32_t>(i0 >> 1), b1 = static_cast<uint32_t>(i0 & 1);
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const uint32_t cc = static_cast<uint32_t>(c) + b1;
    const uint32_t h = mix32(mix32((pb + (cc >> 1)) ^ k0) ^ hk);
    f(c, (cc & 1U) ? (h >> 16) : (h & 0xffffU));
  }
}

struct Keys {
  uint32_t k0, k1, q;
  double scale;
};

Keys keys(int64_t seed, int64_t q, double scale) {
  TORCH_CHECK(q > 0 && q < 65536, "gpt_ds dropout: q must be in (0, 65536), got ", q);
  const auto s = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(q),
          scale};
}

constexpr int64_t kGrain = 1 << 15;

// The loops live in plain functions called from the parallel region: inside the region's outlined body gcc did not
// vectorize them (a prototype ran several times slower).
template <typename T>
__attribute__((noinline)) void dropout_rows(const T* x, const T* bias, const T* res, T* out, int64_t r0, int64_t r1,
                                            int64_t cols, uint32_t k0, uint32_t k1, uint32_t q,
                                            at::opmath_type<T> scale) {
  using acc_t = at::opmath_type<T>;  // float for float, bf16 and half; double for double
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t base = static_cast<uint64_t>(r) * cols;
    const T* __restrict__ xr = x + base;
    T* __restrict__ orow = out + base;
    if (res) {  // an output block's residual: dropout(x + bias) + res, one rounding
      const T* __restrict__ rr = res + base;
      for_lanes(base, cols, k0, k1, [&](int64_t c, uint32_t lane) {
        const acc_t v = static_cast<acc_t>(xr[c]) + (bias ? static_cast<acc_t>(bias[c]) : acc_t(0));
        orow[c] = static_cast<T>((lane >= q ? v * scale : acc_t(0)) + static_cast<acc_t>(rr[c]));
      });
    } else if (bias) {
      for_lanes(base, cols, k0, k1, [&](int64_t c, uint32_t lane) {
        const acc_t v = static_cast<acc_t>(xr[c]) + static_cast<acc_t>(bias[c]);
        orow[c] = static_cast<T>(lane >= q ? v * scale : acc_t(0));
      });
    } else {
      for_lanes(base, cols, k0, k1, [&](int64_t c, uint32_t lane) {
        orow[c] = static_cast<T>(lane >= q ? static_cast<acc_t>(xr[c]) * scale : acc_t(0));
      });
    }
  }
}

// dropout_rows without a bias, also adding each output row into acc (the bias gradient's per-thread column sums).
template <typename T>
__attribute__((noinline)) void dropout_rows_colsum(const T* x, T* out, at::opmath_type<T>* acc, int64_t r0,
                                                   int64_t r1, int64_t cols, uint32_t k0, uint32_t k1, uint32_t q,
                                                   at::opmath_type<T> scale) {
  using acc_t = at::opmath_type<T>;
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t base = static_cast<uint64_t>(r) * cols;
    const T* __restrict__ xr = x + base;
    T* __restrict__ orow = out + base;
    acc_t* __restrict__ a = acc;
    for_lanes(base, cols, k0, k1, [&](int64_t c, uint32_t lane) {
      const T v = static_cast<T>(lane >= q ? static_cast<acc_t>(xr[c]) * scale : acc_t(0));
      orow[c] = v;
      a[c] += static_cast<acc_t>(v);
    });
  }
}

template <typename T>
void dropout_kernel(const T* x, const T* bias, const T* res, T* out, int64_t rows, int64_t cols, Keys k) {
  const auto scale = static_cast<at::opmath_type<T>>(k.scale);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    dropout_rows<T>(x, bias, res, out, r0, r1, cols, k.k0, k.k1, k.q, scale);
  });
}

__attribute__((noinline)) void keep_range(bool* o, int64_t a, int64_t b, uint32_t k0, uint32_t k1, uint32_t q) {
  for_lanes(static_cast<uint64_t>(a), b - a, k0, k1, [&](int64_t c, uint32_t lane) { o[a + c] = lane >= q; });
}

// out = dropout(x + bias) [+ residual]; bias (1-D, over the last dimension) and residual (x's shape) are optional.
torch::Tensor dropout_forward(torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t seed, int64_t q,
                              double scale, c10::optional<torch::Tensor> residual) {
  TORCH_CHECK(x.device().is_cpu(), "gpt_ds dropout_forward: CPU tensors only");
  x = x.contiguous();
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(x.scalar_type()).contiguous();
    TORCH_CHECK(b.dim() == 1 && b.size(0) == cols, "gpt_ds dropout_forward: bias must be 1-D of size ", cols);
  }
  torch::Tensor r;
  if (residual.has_value() && residual->defined()) {
    r = residual->to(x.scalar_type()).contiguous();
    TORCH_CHECK(r.sizes() == x.sizes(), "gpt_ds dropout_forward: residual must have x's shape ", x.sizes());
  }
  auto out = torch::empty_like(x);
  const Keys k = keys(seed, q, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gpt_ds_dropout_forward", [&] {
    dropout_kernel<scalar_t>(x.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                             r.defined() ? r.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), rows, cols, k);
  });
  return out;
}

// The gradient of dropout_forward with respect to x (and to bias, after summing over rows; to the residual it is
// the incoming gradient itself).
torch::Tensor dropout_backward(torch::Tensor grad, int64_t seed, int64_t q, double scale) {
  return dropout_forward(grad, c10::nullopt, seed, q, scale, c10::nullopt);
}

// -> (the gradient w.r.t. x, w.r.t. bias): the bias gradient's column sums are taken in the same pass, per thread
// in fp32 (fp64 for double), then over the threads, instead of a second pass over the gradient.
std::vector<torch::Tensor> dropout_backward_bias(torch::Tensor grad, int64_t seed, int64_t q, double scale) {
  TORCH_CHECK(grad.device().is_cpu(), "gpt_ds dropout_backward_bias: CPU tensors only");
  grad = grad.contiguous();
  const int64_t cols = grad.dim() ? grad.size(-1) : 1;
  const int64_t rows = cols ? grad.numel() / cols : 0;
  auto out = torch::empty_like(grad);
  const int64_t nt = at::get_num_threads();
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto part = torch::zeros({nt, cols}, grad.options().dtype(acc_type));
  const Keys k = keys(seed, q, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "gpt_ds_dropout_backward_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* G = grad.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    acc_t* P = part.data_ptr<acc_t>();
    const auto sc = static_cast<acc_t>(k.scale);
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      acc_t* acc = P + std::min<int64_t>(at::get_thread_num(), nt - 1) * cols;
      dropout_rows_colsum<scalar_t>(G, O, acc, r0, r1, cols, k.k0, k.k1, k.q, sc);
    });
  });
  return {out, part.sum(0).to(grad.scalar_type())};
}

// The keep decisions themselves (for the tests): a bool tensor of `numel` elements.
torch::Tensor keep_mask(int64_t numel, int64_t seed, int64_t q) {
  auto out = torch::empty({numel}, torch::kBool);
  const Keys k = keys(seed, q, 1.0);
  bool* o = out.data_ptr<bool>();
  at::parallel_for(0, numel, kGrain, [&](int64_t a, int64_t b) { keep_range(o, a, b, k.k0, k.k1, k.q); });
  return out;
}

using Vec = at::vec::Vectorized<float>;

// ----- attention: softmax(scores * scale, masked) then dropout, and its backward, one pass per row each ------------

__attribute__((noinline)) void softmax_dropout_row(const float* s, const bool* keep_row, float* y, float* yd,
                                                   int64_t n, float scale, uint64_t base, Keys k) {
  // as masked_fill(finfo.min): a fully masked row comes out uniform
  const float lowest = std::numeric_limits<float>::lowest();
  constexpr int64_t W = Vec::size();
  Vec vmx(lowest);
  int64_t c = 0;
  for (; c + W <= n; c += W) {  // explicit vectors: gcc's `omp simd` max-reduction loop did not vectorize well
    Vec v = Vec::loadu(s + c) * Vec(scale);
    if (keep_row != nullptr) {
      float kf[W];
      for (int64_t j = 0; j < W; ++j) kf[j] = keep_row[c + j] ? 1.0f : 0.0f;
      v = Vec::blendv(Vec(lowest), v, Vec::loadu(kf) != Vec(0.0f));
    }
    v.store(y + c);
    vmx = at::vec::maximum(vmx, v);
  }
  float mx = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmx);
  for (; c < n; ++c) {
    y[c] = (keep_row == nullptr || keep_row[c]) ? s[c] * scale : lowest;
    mx = std::max(mx, y[c]);
  }
  // exp and its sum in one pass, then normalisation and dropout in one pass
  Vec acc(0.0f);
  for (c = 0; c + W <= n; c += W) {
    const Vec e = (Vec::loadu(y + c) - Vec(mx)).exp_u20();
    e.store(y + c);
    acc = acc + e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; c < n; ++c) {
    y[c] = std::exp(y[c] - mx);
    sum += y[c];
  }
  const float inv = 1.0f / sum;
  const float ds = static_cast<float>(k.scale);
  const uint32_t q = k.q;
  for_lanes(base, n, k.k0, k.k1, [&](int64_t i, uint32_t lane) {
    const float v = y[i] * inv;
    y[i] = v;
    yd[i] = lane >= q ? v * ds : 0.0f;
  });
}

__attribute__((noinline)) void softmax_dropout_grad_row(const float* gyd, const float* y, float* gs, int64_t n,
                                                        float scale, uint64_t base, Keys k) {
  const float ds = static_cast<float>(k.scale);
  const uint32_t q = k.q;
  for_lanes(base, n, k.k0, k.k1, [&](int64_t c, uint32_t lane) { gs[c] = lane >= q ? gyd[c] * ds : 0.0f; });
  Vec acc(0.0f);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) acc = acc + Vec::loadu(gs + c) * Vec::loadu(y + c);
  float dot = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; c < n; ++c) dot += gs[c] * y[c];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) gs[i] = y[i] * (gs[i] - dot) * scale;
}

// An attention mask's rows: bool (B, 1 or H, Lq, Lk), True = attend (sdpa_mask's layout), or none.
struct MaskRows {
  const bool* data;
  int64_t mh, Lq, Lk;
  const bool* row(int64_t b, int64_t h, int64_t i) const {
    return data ? data + ((b * mh + (mh == 1 ? 0 : h)) * Lq + i) * Lk : nullptr;
  }
};

MaskRows mask_rows(const c10::optional<torch::Tensor>& mask, torch::Tensor& held, int64_t B, int64_t H, int64_t Lq,
                   int64_t Lk, const char* name) {
  if (!mask.has_value() || !mask->defined()) return {nullptr, 1, Lq, Lk};
  held = mask->contiguous();
  TORCH_CHECK(held.scalar_type() == at::kBool && held.dim() == 4 && held.size(0) == B && held.size(2) == Lq &&
                  held.size(3) == Lk && (held.size(1) == 1 || held.size(1) == H),
              name, ": the attention mask must be bool (B, 1 or heads, Lq, Lk) with True = attend, as transformers' "
              "sdpa_mask builds it; got ", held.scalar_type(), " ", held.sizes());
  return {held.data_ptr<bool>(), held.size(1), Lq, Lk};
}

// scores (B, H, Lq, Lk) contiguous float32; mask: optional bool (B, 1 or H, Lq, Lk), True = attend.
// Returns (y = softmax(scores * scale) over unmasked keys, yd = dropout(y)); dropout element i = flat index in yd.
std::vector<torch::Tensor> attention_softmax_dropout(torch::Tensor scores, c10::optional<torch::Tensor> mask,
                                                     double scale, int64_t seed, int64_t q, double dscale) {
  TORCH_CHECK(scores.dim() == 4 && scores.is_contiguous() && scores.scalar_type() == at::kFloat,
              "attention_softmax_dropout: scores must be contiguous float32 (B, H, Lq, Lk)");
  const int64_t B = scores.size(0), H = scores.size(1), Lq = scores.size(2), Lk = scores.size(3);
  torch::Tensor held;
  const MaskRows mk = mask_rows(mask, held, B, H, Lq, Lk, "attention_softmax_dropout");
  auto y = torch::empty_like(scores), yd = torch::empty_like(scores);
  const Keys k = keys(seed, q, dscale);
  const float* S = scores.data_ptr<float>();
  float *Y = y.data_ptr<float>(), *YD = yd.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H * Lq, std::max<int64_t>(1, kGrain / std::max<int64_t>(Lk, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * Lq), h = (r / Lq) % H, i = r % Lq;
      softmax_dropout_row(S + r * Lk, mk.row(b, h, i), Y + r * Lk, YD + r * Lk, Lk, sc, static_cast<uint64_t>(r) * Lk, k);
    }
  });
  return {y, yd};
}

// d(loss)/d(scores) from d(loss)/d(yd) and y; the dropout mask regenerated from the seed.
torch::Tensor attention_softmax_dropout_backward(torch::Tensor grad_yd, torch::Tensor y, double scale, int64_t seed,
                                                 int64_t q, double dscale) {
  TORCH_CHECK(y.dim() == 4 && y.is_contiguous() && y.scalar_type() == at::kFloat,
              "attention_softmax_dropout_backward: y must be contiguous float32");
  grad_yd = grad_yd.to(at::kFloat).contiguous();
  TORCH_CHECK(grad_yd.sizes() == y.sizes(), "attention_softmax_dropout_backward: shapes differ");
  const int64_t n = y.size(3), rows = y.numel() / std::max<int64_t>(n, 1);
  auto gs = torch::empty_like(y);
  const Keys k = keys(seed, q, dscale);
  const float *G = grad_yd.data_ptr<float>(), *Y = y.data_ptr<float>();
  float* GS = gs.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      softmax_dropout_grad_row(G + r * n, Y + r * n, GS + r * n, n, sc, static_cast<uint64_t>(r) * n, k);
  });
  return gs;
}

// ----- attention straight from the fused Q/K/V projection: no head-split copies, one task per (sequence, head) -----
//
// qkv is the (B, L, 3E) output of x @ [Wq; Wk; Wv]^T (E = heads x d, no bias yet). Each (b, h) task adds its own
// columns' bias in place, then runs scores = Q K^T, softmax_dropout_row and context = dropout(y) V with BLAS on the
// strided head views (row stride 3E), writing its head's columns of the (B, L, E) context: what the output dense
// reads, so neither torch.matmul's contiguous copies of Q, K, V nor the context's transpose copy are made. The
// product tiles (L x L) stay in the task's cache. The backward regenerates dropout(y) from y and the seed.

// MKL's Fortran sgemm, looked up in the already loaded libtorch_cpu at first use (torch's x86 builds carry MKL);
// without it qkv_attention_available() is false and the Python side keeps the batched-matmul path.
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                          const int*, const float*, const int*, const float*, float*, const int*);

sgemm_fn find_sgemm() {
  static const sgemm_fn fn = [] {
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    return lib ? reinterpret_cast<sgemm_fn>(dlsym(lib, "sgemm_")) : nullptr;
  }();
  return fn;
}

bool qkv_attention_available() { return find_sgemm() != nullptr; }

// Row-major C (m x n, row stride ldc) = op(A) op(B) + beta C, op(A) m x k (ta: A is stored k x m), op(B) k x n
// (tb: B is stored n x k); as column-major BLAS sees it, C^T = op(B)^T op(A)^T.
inline void gemm_rm(bool ta, bool tb, int m, int n, int k, const float* A, int lda, const float* B, int ldb,
                    float beta, float* C, int ldc) {
  const char oa = ta ? 'T' : 'N', ob = tb ? 'T' : 'N';
  const float one = 1.0f;
  find_sgemm()(&ob, &oa, &n, &m, &k, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

struct QkvShape {
  int64_t B, L, heads, d, E;
};

QkvShape qkv_shape(const torch::Tensor& qkv, int64_t heads, const char* name) {
  TORCH_CHECK(find_sgemm() != nullptr, name, ": no sgemm in this torch build (check qkv_attention_available())");
  TORCH_CHECK(qkv.dim() == 3 && qkv.is_contiguous() && qkv.scalar_type() == at::kFloat && heads > 0 &&
                  qkv.size(2) % (3 * heads) == 0,
              name, ": qkv must be contiguous float32 (B, L, 3 x heads x d)");
  const int64_t E = qkv.size(2) / 3;
  return {qkv.size(0), qkv.size(1), heads, E / heads, E};
}

// -> (context (B, L, E), y = softmax probabilities (B, heads, L, L), saved for the backward); qkv gets its bias.
std::vector<torch::Tensor> qkv_attention_forward(torch::Tensor qkv, torch::Tensor bias, c10::optional<torch::Tensor> mask,
                                                 int64_t heads, double scale, int64_t seed, int64_t q, double dscale) {
  const QkvShape s = qkv_shape(qkv, heads, "qkv_attention_forward");
  TORCH_CHECK(bias.dim() == 1 && bias.is_contiguous() && bias.scalar_type() == at::kFloat && bias.numel() == 3 * s.E,
              "qkv_attention_forward: bias must be contiguous float32 of 3 x heads x d");
  torch::Tensor held;
  const MaskRows mk = mask_rows(mask, held, s.B, s.heads, s.L, s.L, "qkv_attention_forward");
  auto ctx = torch::empty({s.B, s.L, s.E}, qkv.options());
  auto y = torch::empty({s.B, s.heads, s.L, s.L}, qkv.options());
  const Keys k = keys(seed, q, dscale);
  float *X = qkv.data_ptr<float>(), *O = ctx.data_ptr<float>(), *Y = y.data_ptr<float>();
  const float* BI = bias.data_ptr<float>();
  const int L = static_cast<int>(s.L), d = static_cast<int>(s.d), ld = static_cast<int>(3 * s.E);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, s.B * s.heads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> S(s.L * s.L), YD(s.L * s.L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.heads, h = t % s.heads;
      float* base = X + b * s.L * ld + h * s.d;
      for (int64_t i = 0; i < s.L; ++i)
        for (int64_t part = 0; part < 3; ++part) {
          float* row = base + i * ld + part * s.E;
          at::vec::map2([](Vec v, Vec bb) { return v + bb; }, row, row, BI + part * s.E + h * s.d, s.d);
        }
      const float *Q = base, *K = base + s.E, *V = base + 2 * s.E;
      gemm_rm(false, true, L, L, d, Q, ld, K, ld, 0.0f, S.data(), L);
      for (int64_t i = 0; i < s.L; ++i) {
        softmax_dropout_row(S.data() + i * s.L, mk.row(b, h, i), Y + (t * s.L + i) * s.L, YD.data() + i * s.L, s.L, sc,
                            static_cast<uint64_t>(t * s.L + i) * s.L, k);
      }
      gemm_rm(false, false, L, d, L, YD.data(), L, V, ld, 0.0f, O + b * s.L * s.E + h * s.d, static_cast<int>(s.E));
    }
  });
  return {ctx, y};
}

// yd = dropout(y) for one row (element ids from base), as softmax_dropout_row drew it.
__attribute__((noinline)) void dropout_row(const float* y, float* yd, int64_t n, uint64_t base, Keys k) {
  const float ds = static_cast<float>(k.scale);
  const uint32_t q = k.q;
  for_lanes(base, n, k.k0, k.k1, [&](int64_t c, uint32_t lane) { yd[c] = lane >= q ? y[c] * ds : 0.0f; });
}

// out[j] = sum over rows i of x[i * ld + j], j < n.
__attribute__((noinline)) void col_sums(const float* x, int64_t rows, int64_t ld, int64_t n, float* out) {
  std::copy(x, x + n, out);
  for (int64_t i = 1; i < rows; ++i)
    at::vec::map2([](Vec a, Vec v) { return a + v; }, out, out, x + i * ld, n);
}

// -> (d(loss)/d(qkv) (B, L, 3E), d(loss)/d(bias) (3E)) from d(loss)/d(context) (B, L, E), the biased qkv and y.
std::vector<torch::Tensor> qkv_attention_backward(torch::Tensor grad_ctx, torch::Tensor qkv, torch::Tensor y, int64_t heads,
                                     double scale, int64_t seed, int64_t q, double dscale) {
  const QkvShape s = qkv_shape(qkv, heads, "qkv_attention_backward");
  grad_ctx = grad_ctx.to(at::kFloat).contiguous();
  TORCH_CHECK(grad_ctx.dim() == 3 && grad_ctx.size(0) == s.B && grad_ctx.size(1) == s.L && grad_ctx.size(2) == s.E,
              "qkv_attention_backward: grad must be (B, L, heads x d)");
  TORCH_CHECK(y.is_contiguous() && y.numel() == s.B * s.heads * s.L * s.L, "qkv_attention_backward: bad y");
  auto dqkv = torch::empty_like(qkv);
  auto pbias = torch::empty({s.B, 3 * s.E}, qkv.options());  // per-sequence bias-gradient sums
  const Keys k = keys(seed, q, dscale);
  const float *G = grad_ctx.data_ptr<float>(), *X = qkv.data_ptr<float>(), *Y = y.data_ptr<float>();
  float *D = dqkv.data_ptr<float>(), *PB = pbias.data_ptr<float>();
  const int L = static_cast<int>(s.L), d = static_cast<int>(s.d), ld = static_cast<int>(3 * s.E),
            E = static_cast<int>(s.E);
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, s.B * s.heads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> YD(s.L * s.L), GY(s.L * s.L), GS(s.L * s.L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.heads, h = t % s.heads;
      const float* base = X + b * s.L * ld + h * s.d;
      const float *Q = base, *K = base + s.E, *V = base + 2 * s.E;
      float* dbase = D + b * s.L * ld + h * s.d;
      const float* GO = G + b * s.L * s.E + h * s.d;
      const float* Yt = Y + t * s.L * s.L;
      for (int64_t i = 0; i < s.L; ++i)  // dropout(y), regenerated
        dropout_row(Yt + i * s.L, YD.data() + i * s.L, s.L, static_cast<uint64_t>(t * s.L + i) * s.L, k);
      gemm_rm(true, false, L, d, L, YD.data(), L, GO, E, 0.0f, dbase + 2 * s.E, ld);  // dV = dropout(y)^T dC
      gemm_rm(false, true, L, L, d, GO, E, V, ld, 0.0f, GY.data(), L);               // d dropout(y) = dC V^T
      for (int64_t i = 0; i < s.L; ++i)
        softmax_dropout_grad_row(GY.data() + i * s.L, Yt + i * s.L, GS.data() + i * s.L, s.L, sc,
                                 static_cast<uint64_t>(t * s.L + i) * s.L, k);
      gemm_rm(false, false, L, d, L, GS.data(), L, K, ld, 0.0f, dbase, ld);          // dQ = dS K
      gemm_rm(true, false, L, d, L, GS.data(), L, Q, ld, 0.0f, dbase + s.E, ld);     // dK = dS^T Q
      for (int64_t part = 0; part < 3; ++part)  // this head's bias-gradient columns over this sequence, cache-hot
        col_sums(dbase + part * s.E, s.L, ld, s.d, PB + b * ld + part * s.E + h * s.d);
    }
  });
  return {dqkv, pbias.sum(0)};
}

// The 23-bit uniform index of column c: u = (k + 0.5) / 2^23, k = (mix32(key ^ c) >> 9) & 0x7fffff.
inline uint32_t gumbel_k(uint32_t key, int64_t c) { return (mix32(key ^ static_cast<uint32_t>(c)) >> 9) & 0x7fffffU; }

// k (as float) -> -log(-log(u)) in place over n values: the one transform both noise paths use, ATen's vectorized
// log as torch.log calls it, so every path draws the twin's noise bit for bit.
inline void gumbel_from_k(float* k, int64_t n) {
  at::vec::map([](Vec u) { return ((u + Vec(0.5f)) * Vec(1.0f / 8388608.0f)).log().neg().log().neg(); }, k, k, n);
}

// noise.gumbel_i32 for one row of n columns from c0.
__attribute__((noinline)) void gumbel_row(uint32_t key, int64_t c0, int64_t n, float* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = static_cast<float>(gumbel_k(key, c0 + c));
  gumbel_from_k(out, n);
}

// First index of the row maximum (ties to the lowest column, as torch.max / argmax).
inline std::pair<float, int64_t> row_max(const float* x, int64_t n) {
  const float mx = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
  int64_t i = 0;
  const Vec want(mx);
  for (; i + Vec::size() <= n; i += Vec::size()) {  // zero_mask: a bit per lane that compared unequal
    const uint32_t eq = ~static_cast<uint32_t>((Vec::loadu(x + i) == want).zero_mask()) &
                        ((uint32_t{1} << Vec::size()) - 1);
    if (eq) return {mx, i + __builtin_ctz(eq)};
  }
  while (i < n - 1 && !(x[i] == mx)) ++i;
  return {mx, i};
}

void check_row_state(const torch::Tensor& t, int64_t rows, c10::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == rows && t.scalar_type() == dtype, "gpt_ds generator tile kernel: ",
              name, " must be a contiguous ", c10::toString(dtype), " vector of ", rows, " rows");
}

const float* tile_bias(const c10::optional<torch::Tensor>& bias, int64_t cols, const char* name) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->dim() == 1 && bias->is_contiguous() && bias->scalar_type() == at::kFloat && bias->numel() == cols,
              name, ": bias must be a contiguous float32 vector of the tile's ", cols, " columns");
  return bias->data_ptr<float>();
}

// The smallest 23-bit uniform index k (u = (k + 0.5) / 2^23) whose Gumbel noise -log(-log u) can lift a logit
// x / T <= zt_max above z_best; 0 when every column must be drawn. Columns with a smaller k are provably no sample,
// so their two logs are skipped: after the first tile z_best leads the row's logits by some c nats, and a share
// 1 - exp(-e^-c) of the columns is drawn (one in about a thousand at c = 7). The margin is far above float32's error in the logs and the sum, so the
// columns left out are exactly those that cannot win and the sample equals the full computation's.
int64_t gumbel_kmin(float z_best, float zt_max) {
  if (!(z_best > -std::numeric_limits<float>::infinity())) return 0;
  const double zb = z_best, zt = zt_max;
  const double c = zb - zt - 1e-3 * (1.0 + std::abs(zb) + std::abs(zt));  // the noise a winner needs, less margin
  const double k = std::floor(std::exp(-std::exp(-c)) * 8388608.0 - 0.5) - 1.0;  // u(k + 1) < exp(-exp(-c))
  return k <= 0.0 ? 0 : static_cast<int64_t>(std::min(k, 8388608.0));
}

// Gumbel-max over the columns whose k >= kmin: the same noise values as gumbel_row (the same vectorized log on a
// gathered buffer), the same first-occurrence tie rule, so (best, index) equals row_max over the full noisy row
// whenever best > z_best.
std::pair<float, int64_t> sparse_gumbel_max(const float* x, int64_t cols, int64_t c0, uint32_t key, int64_t kmin,
                                            float temp, bool unit_temp, int64_t banned_col, float* buf,
                                            int32_t* idx) {
  auto* kb = reinterpret_cast<uint32_t*>(buf);
  const uint32_t kmin32 = static_cast<uint32_t>(kmin);
  int64_t n = 0;
  for (int64_t c = 0; c < cols; c += 64) {  // blocks of 64 columns: a candidate-free block costs one vector pass
    const int64_t e = std::min<int64_t>(cols, c + 64);
    uint32_t any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = c; j < e; ++j) {
      const uint32_t k = gumbel_k(key, c0 + j);
      kb[j] = k;
      any |= static_cast<uint32_t>(k >= kmin32);
    }
    if (any)
      for (int64_t j = c; j < e; ++j)
        if (kb[j] >= kmin32) idx[n++] = static_cast<int32_t>(j);
  }
  for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(kb[idx[j]]);  // j <= idx[j]: in-place is safe
  gumbel_from_k(buf, n);
  float best = -std::numeric_limits<float>::infinity();
  int64_t arg = -1;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = idx[j];
    float v = unit_temp ? buf[j] + x[c] : buf[j] + x[c] / temp;
    if (c == banned_col) v = -std::numeric_limits<float>::infinity();
    if (v > best) {
      best = v;
      arg = c;
    }
  }
  return {best, arg};
}

// Gumbel-max over all columns of the row (the first tile, or a row whose running sample does not lead its logits).
std::pair<float, int64_t> dense_gumbel_max(const float* x, int64_t cols, int64_t c0, uint32_t key, float temp,
                                           bool unit_temp, int64_t banned_col, float* z) {
  gumbel_row(key, c0, cols, z);
  if (unit_temp) {
    at::vec::map2([](Vec g, Vec v) { return g + v; }, z, z, x, cols);
  } else {
    at::vec::map2([temp](Vec g, Vec v) { return g + v / Vec(temp); }, z, z, x, cols);
  }
  if (banned_col >= 0 && banned_col < cols) z[banned_col] = -std::numeric_limits<float>::infinity();
  return row_max(z, cols);
}

// One row of gen_tile_forward (state passed by reference); bias (or null) is added to the row's logits in place.
__attribute__((noinline)) void forward_row(float* x, const float* bias, int64_t cols, int64_t c0, uint32_t key,
                                           int64_t target, int64_t banned, double temperature, double gumbel_max,
                                           float* z, int32_t* idx, float& m, float& s, float& a_val, int64_t& a_idx,
                                           float& z_best, int64_t& z_idx, float& tgt) {
  const float temp = static_cast<float>(temperature);
  if (bias) at::vec::map2([](Vec v, Vec b) { return v + b; }, x, x, bias, cols);
  const auto [tmax, targ] = row_max(x, cols);
  if (tmax > a_val) {
    a_val = tmax;
    a_idx = targ + c0;
  }
  const int64_t t = target - c0;
  if (t >= 0 && t < cols) tgt += x[t];
  const float zt_max = temperature == 1.0 ? tmax : tmax / temp;
  if (zt_max + static_cast<float>(gumbel_max) >= z_best) {  // else no column of this tile can win
    const int64_t kmin = gumbel_kmin(z_best, zt_max);
    const int64_t b = banned >= 0 ? banned - c0 : -1;
    const auto [zmax, zarg] = kmin > 0 ? sparse_gumbel_max(x, cols, c0, key, kmin, temp, temperature == 1.0, b, z, idx)
                                       : dense_gumbel_max(x, cols, c0, key, temp, temperature == 1.0, b, z);
    if (zmax > z_best) {
      z_best = zmax;
      z_idx = zarg + c0;
    }
  }
  const float m_new = std::max(m, tmax);
  const float sum = at::vec::map_reduce_all<float>([m_new](Vec v) { return (v - Vec(m_new)).exp_u20(); },
                                                   [](Vec& a, Vec& b) { return a + b; }, x, cols);
  s = s * std::exp(m - m_new) + sum;
  m = m_new;
}

// One (rows x cols) logits tile at vocabulary offset c0: updates each row's argmax (a_val, a_idx), target logit
// (tgt), Gumbel-max sample (z_best, z_idx) and online log-sum-exp (m, s) in place, as generator_torch does.
// The tile's bias slice (or None) is added to l in place first.
void gen_tile_forward(torch::Tensor l, c10::optional<torch::Tensor> bias, torch::Tensor keys, int64_t c0,
                      double temperature, c10::optional<torch::Tensor> banned, torch::Tensor targets, torch::Tensor m,
                      torch::Tensor s, torch::Tensor a_val, torch::Tensor a_idx, torch::Tensor z_best,
                      torch::Tensor z_idx, torch::Tensor tgt, double gumbel_max) {
  TORCH_CHECK(l.dim() == 2 && l.is_contiguous() && l.scalar_type() == at::kFloat,
              "gen_tile_forward: logits must be a contiguous float32 matrix");
  const int64_t rows = l.size(0), cols = l.size(1);
  const float* B = tile_bias(bias, cols, "gen_tile_forward");
  check_row_state(keys, rows, at::kInt, "keys");
  check_row_state(targets, rows, at::kLong, "targets");
  for (auto* t : {&m, &s, &a_val, &z_best, &tgt}) check_row_state(*t, rows, at::kFloat, "a float state");
  for (auto* t : {&a_idx, &z_idx}) check_row_state(*t, rows, at::kLong, "an index state");
  const int64_t* ban = nullptr;
  if (banned.has_value() && banned->defined()) {
    check_row_state(*banned, rows, at::kLong, "banned");
    ban = banned->data_ptr<int64_t>();
  }
  float* L = l.data_ptr<float>();
  const int32_t* K = keys.data_ptr<int32_t>();
  const int64_t* T = targets.data_ptr<int64_t>();
  float *M = m.data_ptr<float>(), *S = s.data_ptr<float>(), *AV = a_val.data_ptr<float>();
  float *ZB = z_best.data_ptr<float>(), *TG = tgt.data_ptr<float>();
  int64_t *AI = a_idx.data_ptr<int64_t>(), *ZI = z_idx.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> z(cols);
    std::vector<int32_t> idx(cols);
    for (int64_t r = r0; r < r1; ++r)
      forward_row(L + r * cols, B, cols, c0, static_cast<uint32_t>(K[r]), T[r], ban ? ban[r] : -1, temperature,
                  gumbel_max, z.data(), idx.data(), M[r], S[r], AV[r], AI[r], ZB[r], ZI[r], TG[r]);
  });
}

__attribute__((noinline)) void grad_row(float* x, const float* bias, int64_t cols, float mr, float lr, float sr,
                                        int64_t t) {
  if (bias) {
    at::vec::map2([mr, lr, sr](Vec v, Vec b) { return (((v + b) - Vec(mr)) - Vec(lr)).exp_u20() * Vec(sr); }, x, x,
                  bias, cols);
  } else {
    at::vec::map([mr, lr, sr](Vec v) { return ((v - Vec(mr)) - Vec(lr)).exp_u20() * Vec(sr); }, x, x, cols);
  }
  if (t >= 0 && t < cols) x[t] = x[t] - sr;
}

// The backward's tile, in place: p = exp(l [+ bias] - m - lse) * sc, minus sc at each valid row's target column.
void gen_tile_grad_(torch::Tensor p, c10::optional<torch::Tensor> bias, torch::Tensor m, torch::Tensor lse,
                    torch::Tensor sc, torch::Tensor targets, torch::Tensor valid, int64_t c0) {
  TORCH_CHECK(p.dim() == 2 && p.is_contiguous() && p.scalar_type() == at::kFloat,
              "gen_tile_grad_: logits must be a contiguous float32 matrix");
  const int64_t rows = p.size(0), cols = p.size(1);
  const float* B = tile_bias(bias, cols, "gen_tile_grad_");
  for (auto* t : {&m, &lse, &sc}) check_row_state(*t, rows, at::kFloat, "a float row vector");
  check_row_state(targets, rows, at::kLong, "targets");
  check_row_state(valid, rows, at::kBool, "valid");
  float* P = p.data_ptr<float>();
  const float *M = m.data_ptr<float>(), *LS = lse.data_ptr<float>(), *SC = sc.data_ptr<float>();
  const int64_t* T = targets.data_ptr<int64_t>();
  const bool* V = valid.data_ptr<bool>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) grad_row(P + r * cols, B, cols, M[r], LS[r], SC[r], V[r] ? T[r] - c0 : -1);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_forward", &dropout_forward, "dropout(x + bias) [+ residual] from a counter-based hash",
        py::arg("x"), py::arg("bias"), py::arg("seed"), py::arg("q"), py::arg("scale"),
        py::arg("residual") = py::none());
  m.def("dropout_backward", &dropout_backward, "gradient of dropout_forward, the mask regenerated from the seed");
  m.def("dropout_backward_bias", &dropout_backward_bias, "dropout_backward and the bias gradient in one pass");
  m.def("keep_mask", &keep_mask, "the keep decisions for elements 0..numel-1");
  m.def("attention_softmax_dropout", &attention_softmax_dropout, "softmax(scores * scale, masked), then dropout");
  m.def("attention_softmax_dropout_backward", &attention_softmax_dropout_backward, "its gradient w.r.t. scores");
  m.def("qkv_attention_available", &qkv_attention_available, "whether BLAS sgemm was found for qkv_attention_*");
  m.def("qkv_attention_forward", &qkv_attention_forward, "attention from the fused Q/K/V projection's output");
  m.def("qkv_attention_backward", &qkv_attention_backward, "its gradient w.r.t. the biased Q/K/V projection");
  m.def("gen_tile_forward", &gen_tile_forward, "the generator head's forward statistics over one logits tile");
  m.def("gen_tile_grad_", &gen_tile_grad_, "the generator head's d(loss)/d(logits) over one tile, in place");
}
