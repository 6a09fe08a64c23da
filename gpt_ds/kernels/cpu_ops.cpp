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
__attribute__((noinline)) void dropout_rows(const T* x, const T* bias, T* out, int64_t r0, int64_t r1, int64_t cols,
                                            uint32_t k0, uint32_t k1, uint32_t q, at::opmath_type<T> scale) {
  using acc_t = at::opmath_type<T>;  // float for float, bf16 and half; double for double
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t base = static_cast<uint64_t>(r) * cols;
    const T* __restrict__ xr = x + base;
    T* __restrict__ orow = out + base;
    if (bias) {
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

template <typename T>
void dropout_kernel(const T* x, const T* bias, T* out, int64_t rows, int64_t cols, Keys k) {
  const auto scale = static_cast<at::opmath_type<T>>(k.scale);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    dropout_rows<T>(x, bias, out, r0, r1, cols, k.k0, k.k1, k.q, scale);
  });
}

__attribute__((noinline)) void keep_range(bool* o, int64_t a, int64_t b, uint32_t k0, uint32_t k1, uint32_t q) {
  for_lanes(static_cast<uint64_t>(a), b - a, k0, k1, [&](int64_t c, uint32_t lane) { o[a + c] = lane >= q; });
}

// out = dropout(x + bias); bias (1-D, over the last dimension) is optional.
torch::Tensor dropout_forward(torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t seed, int64_t q,
                              double scale) {
  TORCH_CHECK(x.device().is_cpu(), "gpt_ds dropout_forward: CPU tensors only");
  x = x.contiguous();
  const int64_t cols = x.dim() ? x.size(-1) : 1;
  const int64_t rows = cols ? x.numel() / cols : 0;
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(x.scalar_type()).contiguous();
    TORCH_CHECK(b.dim() == 1 && b.size(0) == cols, "gpt_ds dropout_forward: bias must be 1-D of size ", cols);
  }
  auto out = torch::empty_like(x);
  const Keys k = keys(seed, q, scale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "gpt_ds_dropout_forward", [&] {
    dropout_kernel<scalar_t>(x.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                             out.data_ptr<scalar_t>(), rows, cols, k);
  });
  return out;
}

// The gradient of dropout_forward with respect to x (and to bias, after summing over rows).
torch::Tensor dropout_backward(torch::Tensor grad, int64_t seed, int64_t q, double scale) {
  return dropout_forward(grad, c10::nullopt, seed, q, scale);
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

// scores (B, H, Lq, Lk) contiguous float32; mask: optional bool (B, 1 or H, Lq, Lk), True = attend.
// Returns (y = softmax(scores * scale) over unmasked keys, yd = dropout(y)); dropout element i = flat index in yd.
std::vector<torch::Tensor> attention_softmax_dropout(torch::Tensor scores, c10::optional<torch::Tensor> mask,
                                                     double scale, int64_t seed, int64_t q, double dscale) {
  TORCH_CHECK(scores.dim() == 4 && scores.is_contiguous() && scores.scalar_type() == at::kFloat,
              "attention_softmax_dropout: scores must be contiguous float32 (B, H, Lq, Lk)");
  const int64_t B = scores.size(0), H = scores.size(1), Lq = scores.size(2), Lk = scores.size(3);
  const bool* mk = nullptr;
  int64_t mh = 1;
  torch::Tensor mc;
  if (mask.has_value() && mask->defined()) {
    mc = mask->contiguous();
    TORCH_CHECK(mc.scalar_type() == at::kBool && mc.dim() == 4 && mc.size(0) == B && mc.size(2) == Lq &&
                    mc.size(3) == Lk && (mc.size(1) == 1 || mc.size(1) == H),
                "attention_softmax_dropout: mask must be bool (B, 1 or H, Lq, Lk)");
    mk = mc.data_ptr<bool>();
    mh = mc.size(1);
  }
  auto y = torch::empty_like(scores), yd = torch::empty_like(scores);
  const Keys k = keys(seed, q, dscale);
  const float* S = scores.data_ptr<float>();
  float *Y = y.data_ptr<float>(), *YD = yd.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H * Lq, std::max<int64_t>(1, kGrain / std::max<int64_t>(Lk, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * Lq), h = (r / Lq) % H, i = r % Lq;
      const bool* mrow = mk ? mk + ((b * mh + (mh == 1 ? 0 : h)) * Lq + i) * Lk : nullptr;
      softmax_dropout_row(S + r * Lk, mrow, Y + r * Lk, YD + r * Lk, Lk, sc, static_cast<uint64_t>(r) * Lk, k);
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

// noise.gumbel_i32 for one row: -log(-log(u)), u = (((h >> 9) & 0x7fffff) + 0.5) / 2^23, h = mix32(key ^ column).
__attribute__((noinline)) void gumbel_row(uint32_t key, int64_t c0, int64_t n, float* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c)
    out[c] = static_cast<float>((mix32(key ^ static_cast<uint32_t>(c0 + c)) >> 9) & 0x7fffffU);
  at::vec::map([](Vec u) { return ((u + Vec(0.5f)) * Vec(1.0f / 8388608.0f)).log().neg().log().neg(); }, out, out,
               n);
}

// First index of the row maximum (ties to the lowest column, as torch.max / argmax).
inline std::pair<float, int64_t> row_max(const float* x, int64_t n) {
  const float mx = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
  int64_t i = 0;
  while (i < n - 1 && !(x[i] == mx)) ++i;
  return {mx, i};
}

void check_row_state(const torch::Tensor& t, int64_t rows, c10::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == rows && t.scalar_type() == dtype, "gpt_ds generator tile kernel: ",
              name, " must be a contiguous ", c10::toString(dtype), " vector of ", rows, " rows");
}

// One row of gen_tile_forward (state passed by reference).
__attribute__((noinline)) void forward_row(const float* x, int64_t cols, int64_t c0, uint32_t key, int64_t target,
                                           int64_t banned, double temperature, double gumbel_max, float* z, float& m,
                                           float& s, float& a_val, int64_t& a_idx, float& z_best, int64_t& z_idx,
                                           float& tgt) {
  const float temp = static_cast<float>(temperature);
  const auto [tmax, targ] = row_max(x, cols);
  if (tmax > a_val) {
    a_val = tmax;
    a_idx = targ + c0;
  }
  const int64_t t = target - c0;
  if (t >= 0 && t < cols) tgt += x[t];
  const float zt_max = temperature == 1.0 ? tmax : tmax / temp;
  if (zt_max + static_cast<float>(gumbel_max) >= z_best) {
    gumbel_row(key, c0, cols, z);
    if (temperature == 1.0) {
      at::vec::map2([](Vec g, Vec v) { return g + v; }, z, z, x, cols);
    } else {
      at::vec::map2([temp](Vec g, Vec v) { return g + v / Vec(temp); }, z, z, x, cols);
    }
    const int64_t b = banned - c0;
    if (banned >= 0 && b >= 0 && b < cols) z[b] = -std::numeric_limits<float>::infinity();
    const auto [zmax, zarg] = row_max(z, cols);
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
void gen_tile_forward(torch::Tensor l, torch::Tensor keys, int64_t c0, double temperature,
                      c10::optional<torch::Tensor> banned, torch::Tensor targets, torch::Tensor m, torch::Tensor s,
                      torch::Tensor a_val, torch::Tensor a_idx, torch::Tensor z_best, torch::Tensor z_idx,
                      torch::Tensor tgt, double gumbel_max) {
  TORCH_CHECK(l.dim() == 2 && l.is_contiguous() && l.scalar_type() == at::kFloat,
              "gen_tile_forward: logits must be a contiguous float32 matrix");
  const int64_t rows = l.size(0), cols = l.size(1);
  check_row_state(keys, rows, at::kInt, "keys");
  check_row_state(targets, rows, at::kLong, "targets");
  for (auto* t : {&m, &s, &a_val, &z_best, &tgt}) check_row_state(*t, rows, at::kFloat, "a float state");
  for (auto* t : {&a_idx, &z_idx}) check_row_state(*t, rows, at::kLong, "an index state");
  const int64_t* ban = nullptr;
  if (banned.has_value() && banned->defined()) {
    check_row_state(*banned, rows, at::kLong, "banned");
    ban = banned->data_ptr<int64_t>();
  }
  const float* L = l.data_ptr<float>();
  const int32_t* K = keys.data_ptr<int32_t>();
  const int64_t* T = targets.data_ptr<int64_t>();
  float *M = m.data_ptr<float>(), *S = s.data_ptr<float>(), *AV = a_val.data_ptr<float>();
  float *ZB = z_best.data_ptr<float>(), *TG = tgt.data_ptr<float>();
  int64_t *AI = a_idx.data_ptr<int64_t>(), *ZI = z_idx.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> z(cols);
    for (int64_t r = r0; r < r1; ++r)
      forward_row(L + r * cols, cols, c0, static_cast<uint32_t>(K[r]), T[r], ban ? ban[r] : -1, temperature,
                  gumbel_max, z.data(), M[r], S[r], AV[r], AI[r], ZB[r], ZI[r], TG[r]);
  });
}

__attribute__((noinline)) void grad_row(float* x, int64_t cols, float mr, float lr, float sr, int64_t t) {
  at::vec::map([mr, lr, sr](Vec v) { return ((v - Vec(mr)) - Vec(lr)).exp_u20() * Vec(sr); }, x, x, cols);
  if (t >= 0 && t < cols) x[t] = x[t] - sr;
}

// The backward's tile, in place: p = exp(l - m - lse) * sc, minus sc at each valid row's target column.
void gen_tile_grad_(torch::Tensor p, torch::Tensor m, torch::Tensor lse, torch::Tensor sc, torch::Tensor targets,
                    torch::Tensor valid, int64_t c0) {
  TORCH_CHECK(p.dim() == 2 && p.is_contiguous() && p.scalar_type() == at::kFloat,
              "gen_tile_grad_: logits must be a contiguous float32 matrix");
  const int64_t rows = p.size(0), cols = p.size(1);
  for (auto* t : {&m, &lse, &sc}) check_row_state(*t, rows, at::kFloat, "a float row vector");
  check_row_state(targets, rows, at::kLong, "targets");
  check_row_state(valid, rows, at::kBool, "valid");
  float* P = p.data_ptr<float>();
  const float *M = m.data_ptr<float>(), *LS = lse.data_ptr<float>(), *SC = sc.data_ptr<float>();
  const int64_t* T = targets.data_ptr<int64_t>();
  const bool* V = valid.data_ptr<bool>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) grad_row(P + r * cols, cols, M[r], LS[r], SC[r], V[r] ? T[r] - c0 : -1);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_forward", &dropout_forward, "dropout(x + bias) from a counter-based hash");
  m.def("dropout_backward", &dropout_backward, "gradient of dropout_forward, the mask regenerated from the seed");
  m.def("keep_mask", &keep_mask, "the keep decisions for elements 0..numel-1");
  m.def("attention_softmax_dropout", &attention_softmax_dropout, "softmax(scores * scale, masked), then dropout");
  m.def("attention_softmax_dropout_backward", &attention_softmax_dropout_backward, "its gradient w.r.t. scores");
  m.def("gen_tile_forward", &gen_tile_forward, "the generator head's forward statistics over one logits tile");
  m.def("gen_tile_grad_", &gen_tile_grad_, "the generator head's d(loss)/d(logits) over one tile, in place");
}
