/* Fused fp32 CPU kernels for rlvr's native Llama/Qwen2 layers (see rlvr/native/kernels/__init__.py).
 *
 * Eager PyTorch runs RMSNorm as ~6 passes over its input and SwiGLU's backward as 3 passes plus
 * a concatenation; at the sizes rlvr benchmarks on CPU those passes are memory-bound, so each
 * kernel here reads its inputs once and writes its outputs once. Row-parallel with OpenMP
 * (torch's own runtime: the library is loaded after torch); every reduction has a fixed order,
 * so results do not depend on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x, vectorizable (libm's expf is not, without -ffast-math): x = n·ln2 + r, |r| <= ln2/2,
 * e^r by the Cephes polynomial, 2^n through the exponent bits; ~1 ulp over the clamped range.
 * The vectorizer needs fminf/fmaxf as plain min/max instructions, hence -ffinite-math-only
 * (rlvr/native/kernels/__init__.py): a NaN input still comes out NaN, through the products with g. */
static inline float exp_approx(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.7f);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p * r, r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

/* out[m, :I] = silu(gate) * up, with gate_up[m] = [gate (I) | up (I)] */
void swiglu_forward(const float *gate_up, float *out, int64_t rows, int64_t inter) {
#pragma omp parallel for schedule(static) if (rows * inter > 32768)
    for (int64_t m = 0; m < rows; m++) {
        const float *g = gate_up + m * 2 * inter, *u = g + inter;
        float *o = out + m * inter;
#pragma omp simd
        for (int64_t j = 0; j < inter; j++) o[j] = g[j] * sigmoid(g[j]) * u[j];
    }
}

/* d_gate_up[m] = [grad·up·silu'(gate) | grad·silu(gate)], silu'(g) = s·(1 + g·(1 − s)) */
void swiglu_backward(const float *grad, const float *gate_up, float *d_gate_up, int64_t rows,
                     int64_t inter) {
#pragma omp parallel for schedule(static) if (rows * inter > 32768)
    for (int64_t m = 0; m < rows; m++) {
        const float *g = gate_up + m * 2 * inter, *u = g + inter, *dy = grad + m * inter;
        float *dg = d_gate_up + m * 2 * inter, *du = dg + inter;
#pragma omp simd
        for (int64_t j = 0; j < inter; j++) {
            float s = sigmoid(g[j]);
            du[j] = dy[j] * g[j] * s;
            dg[j] = dy[j] * u[j] * (s * (1.0f + g[j] * (1.0f - s)));
        }
    }
}

/* y = x · rstd · w per row, rstd = 1/sqrt(mean(x²) + eps); rstd may be NULL */
void rms_norm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows,
                      int64_t hidden, float eps) {
#pragma omp parallel for schedule(static) if (rows * hidden > 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * hidden;
        float *yr = y + r * hidden, sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
        for (int64_t j = 0; j < hidden; j++) sum_sq += xr[j] * xr[j];
        float s = 1.0f / sqrtf(sum_sq / (float)hidden + eps);
        if (rstd) rstd[r] = s;
#pragma omp simd
        for (int64_t j = 0; j < hidden; j++) yr[j] = xr[j] * s * w[j];
    }
}

/* dx = s·(dy·w) − x·s³·Σ_j(dy_j·w_j·x_j)/h per row; dw = Σ_rows dy·x·s, as `chunks` partial sums
 * (dw_partial [chunks, hidden]) over fixed row ranges, which the caller adds up in order. */
void rms_norm_backward(const float *dy, const float *x, const float *w, const float *rstd,
                       float *dx, float *dw_partial, int64_t rows, int64_t hidden,
                       int64_t chunks) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        float *dw = dw_partial + c * hidden;
        for (int64_t j = 0; j < hidden; j++) dw[j] = 0.0f;
        for (int64_t r = rows * c / chunks; r < rows * (c + 1) / chunks; r++) {
            const float *xr = x + r * hidden, *dyr = dy + r * hidden;
            float *dxr = dx + r * hidden, s = rstd[r], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < hidden; j++) dot += dyr[j] * w[j] * xr[j];
            float k = s * s * s * dot / (float)hidden;
#pragma omp simd
            for (int64_t j = 0; j < hidden; j++) {
                dxr[j] = s * dyr[j] * w[j] - xr[j] * k;
                dw[j] += dyr[j] * xr[j] * s;
            }
        }
    }
}

/* RoPE as the native layers apply it (rlvr/native/layers.py: apply_rope): per head,
 * y_j = x_j·cos_j + x_{(j+D/2) mod D}·sin_j (sin signed as rope_tables makes it). `transpose`
 * applies the transposed map, the backward: dx_j = dy_j·cos_j + dy_{(j+D/2) mod D}·sin_{(j+D/2) mod D}.
 * x and y are [N, S, heads, D] with any strides (in floats) over N, S and heads; cos/sin are
 * contiguous [N, S, D]. */
void rope(const float *x, int64_t xn, int64_t xs, int64_t xh, const float *cos_,
          const float *sin_, float *y, int64_t yn, int64_t ys, int64_t yh, int64_t N, int64_t S,
          int64_t heads, int64_t D, int32_t transpose) {
    const int64_t half = D / 2;
#pragma omp parallel for collapse(2) schedule(static) if (N * S * heads * D > 32768)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t s = 0; s < S; s++) {
            const float *c = cos_ + (n * S + s) * D, *sn = sin_ + (n * S + s) * D;
            const float *s_lo = transpose ? sn + half : sn, *s_hi = transpose ? sn : sn + half;
            for (int64_t h = 0; h < heads; h++) {
                const float *xr = x + n * xn + s * xs + h * xh;
                float *yr = y + n * yn + s * ys + h * yh;
#pragma omp simd
                for (int64_t j = 0; j < half; j++) yr[j] = xr[j] * c[j] + xr[j + half] * s_lo[j];
#pragma omp simd
                for (int64_t j = 0; j < half; j++)
                    yr[half + j] = xr[half + j] * c[half + j] + xr[j] * s_hi[j];
            }
        }
    }
}

/* One decode step's attention inputs from the fused projection qkv [N, (H+2KV)·D] (row stride
 * `ld`): RoPE'd queries into q [N, H, D], RoPE'd keys and the values into cache slots (row n,
 * KV head h at k_slot + (n·KV + h)·slot_stride, likewise v_slot). */
void decode_qkv(const float *qkv, int64_t ld, const float *cos_, const float *sin_, float *q,
                float *k_slot, float *v_slot, int64_t slot_stride, int64_t N, int64_t H,
                int64_t KV, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t n = 0; n < N; n++) {
        const float *row = qkv + n * ld, *c = cos_ + n * D, *sn = sin_ + n * D;
        for (int64_t h = 0; h < H + 2 * KV; h++) {
            const float *xr = row + h * D;
            float *yr = h < H ? q + (n * H + h) * D
                              : (h < H + KV ? k_slot + (n * KV + h - H) * slot_stride
                                            : v_slot + (n * KV + h - H - KV) * slot_stride);
            if (h >= H + KV) {
#pragma omp simd
                for (int64_t j = 0; j < D; j++) yr[j] = xr[j];
                continue;
            }
#pragma omp simd
            for (int64_t j = 0; j < half; j++) yr[j] = xr[j] * c[j] + xr[j + half] * sn[j];
#pragma omp simd
            for (int64_t j = half; j < D; j++) yr[j] = xr[j] * c[j] + xr[j - half] * sn[j];
        }
    }
}

/* log Σ_j e^(l_j), from the row's maximum */
static inline float log_sum_exp(const float *l, int64_t V) {
    float mx = l[0], sum = 0.0f;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 1; j < V; j++) mx = fmaxf(mx, l[j]);
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; j++) sum += exp_approx(l[j] - mx);
    return mx + logf(sum);
}

/* Inverse-CDF sampling per row of logits [N, V] (rlvr/rollout/native.py: sample_tokens at
 * top_p = 1): token = first index whose running sum of softmax probabilities exceeds u·total,
 * and its log-probability. */
void sample_rows(const float *logits, const float *u, int64_t *tokens, float *logp, int64_t N,
                 int64_t V) {
    for (int64_t n = 0; n < N; n++) {
        const float *l = logits + n * V;
        float z = log_sum_exp(l, V), running = 0.0f, total = 0.0f;
        for (int64_t j = 0; j < V; j++) total += exp_approx(l[j] - z);
        float target = u[n] * total;
        int64_t tok = V - 1;
        for (int64_t j = 0; j < V; j++) {
            running += exp_approx(l[j] - z);
            if (running > target) { tok = j; break; }
        }
        tokens[n] = tok;
        logp[n] = l[tok] - z;
    }
}

/* Per row of logits [M, V] and its target token: lse = log Σ e^l, logp = l_t − lse, and (stats
 * non-zero) the entropy −Σ p·log p = lse − Σ p·l and the collision Σ p², p = e^(l − lse):
 * one read of the logits instead of log_softmax's write and the passes over its result. */
void token_logp_forward(const float *logits, const int64_t *target, float *lse, float *logp,
                        float *entropy, float *collision, int64_t rows, int64_t V, int32_t stats) {
#pragma omp parallel for schedule(static) if (rows * V > 32768)
    for (int64_t m = 0; m < rows; m++) {
        const float *l = logits + m * V;
        float z = log_sum_exp(l, V);
        lse[m] = z;
        logp[m] = l[target[m]] - z;
        if (stats) {
            float pl = 0.0f, pp = 0.0f;
#pragma omp simd reduction(+ : pl, pp)
            for (int64_t j = 0; j < V; j++) {
                float p = exp_approx(l[j] - z);
                pl += p * l[j];
                pp += p * p;
            }
            entropy[m] = z - pl;
            collision[m] = pp;
        }
    }
}

/* d logits = grad·(onehot(target) − p) per row, p = e^(l − lse). */
void token_logp_backward(const float *logits, const int64_t *target, const float *lse,
                         const float *grad, float *d_logits, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static) if (rows * V > 32768)
    for (int64_t m = 0; m < rows; m++) {
        const float *l = logits + m * V;
        float *d = d_logits + m * V, g = grad[m], z = lse[m];
#pragma omp simd
        for (int64_t j = 0; j < V; j++) d[j] = -g * exp_approx(l[j] - z);
        d[target[m]] += g;
    }
}

/* Attention of the update's completion positions (rlvr/native/layers.py: decoder_layer with a
 * prompt prefix): queries q [N, H, S, D] (strides qn, qh over N and heads; rows of D contiguous)
 * over keys and values k, v [N, KV, P+S, D] (contiguous): key j is visible to query i iff
 * j < P ? prompt_mask[n, j] : j − P <= i. Head h reads KV head h / (H/KV). Writes
 * out [N, S, H, D] and the log-sum-exp per query lse [N, H, S] (for the backward). */
void prefix_attention_forward(const float *q, int64_t qn, int64_t qh, const float *k,
                              const float *v, const int64_t *prompt_mask, float *out, float *lse,
                              int64_t N, int64_t H, int64_t KV, int64_t S, int64_t P, int64_t D,
                              float scale) {
    const int64_t T = P + S, G = H / KV;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t h = 0; h < H; h++) {
            const int64_t *pm = prompt_mask + n * P;
            const float *kh = k + (n * KV + h / G) * T * D, *vh = v + (n * KV + h / G) * T * D;
            float p[T];
            for (int64_t i = 0; i < S; i++) {
                const float *qi = q + n * qn + h * qh + i * D;
                float *o = out + ((n * S + i) * H + h) * D, mx = -3.0e38f, sum = 0.0f;
                const int64_t last = P + i;  /* keys 0..last, prompt padding hidden */
                for (int64_t j = 0; j <= last; j++) {
                    if (j < P && !pm[j]) { p[j] = -3.0e38f; continue; }
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (int64_t c = 0; c < D; c++) dot += qi[c] * kh[j * D + c];
                    p[j] = dot * scale;
                    mx = fmaxf(mx, p[j]);
                }
                for (int64_t j = 0; j <= last; j++) {
                    p[j] = p[j] > -1.0e38f ? exp_approx(p[j] - mx) : 0.0f;
                    sum += p[j];
                }
                for (int64_t c = 0; c < D; c++) o[c] = 0.0f;
                for (int64_t j = 0; j <= last; j++) {
                    if (p[j] == 0.0f) continue;
                    float w = p[j] / sum;
#pragma omp simd
                    for (int64_t c = 0; c < D; c++) o[c] += w * vh[j * D + c];
                }
                lse[(n * H + h) * S + i] = mx + logf(sum);
            }
        }
    }
}

/* Its backward, per (row, KV head) so that the G query heads sharing a KV head add into dk, dv
 * in a fixed order: p = e^(q·k·scale − lse), dv += p·do, ds = p·(do·v − Σ do·o),
 * dq += ds·k·scale, dk += ds·q·scale. dq [N, H, S, D], dk, dv [N, KV, P+S, D] contiguous. */
void prefix_attention_backward(const float *q, int64_t qn, int64_t qh, const float *k,
                               const float *v, const int64_t *prompt_mask, const float *out,
                               const float *lse, const float *d_out, float *dq, float *dk,
                               float *dv, int64_t N, int64_t H, int64_t KV, int64_t S, int64_t P,
                               int64_t D, float scale) {
    const int64_t T = P + S, G = H / KV;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t kvh = 0; kvh < KV; kvh++) {
            const int64_t *pm = prompt_mask + n * P;
            const float *kh = k + (n * KV + kvh) * T * D, *vh = v + (n * KV + kvh) * T * D;
            float *dkh = dk + (n * KV + kvh) * T * D, *dvh = dv + (n * KV + kvh) * T * D;
            for (int64_t j = 0; j < T * D; j++) { dkh[j] = 0.0f; dvh[j] = 0.0f; }
            for (int64_t h = kvh * G; h < (kvh + 1) * G; h++) {
                for (int64_t i = 0; i < S; i++) {
                    const float *qi = q + n * qn + h * qh + i * D;
                    const float *o = out + ((n * S + i) * H + h) * D;
                    const float *g = d_out + ((n * S + i) * H + h) * D;
                    float *dqi = dq + ((n * H + h) * S + i) * D, z = lse[(n * H + h) * S + i];
                    float delta = 0.0f;
#pragma omp simd reduction(+ : delta)
                    for (int64_t c = 0; c < D; c++) delta += g[c] * o[c];
                    for (int64_t c = 0; c < D; c++) dqi[c] = 0.0f;
                    for (int64_t j = 0; j <= P + i; j++) {
                        if (j < P && !pm[j]) continue;
                        float dot = 0.0f, dp = 0.0f;
#pragma omp simd reduction(+ : dot, dp)
                        for (int64_t c = 0; c < D; c++) {
                            dot += qi[c] * kh[j * D + c];
                            dp += g[c] * vh[j * D + c];
                        }
                        float p = exp_approx(dot * scale - z), ds = p * (dp - delta) * scale;
#pragma omp simd
                        for (int64_t c = 0; c < D; c++) {
                            dvh[j * D + c] += p * g[c];
                            dqi[c] += ds * kh[j * D + c];
                            dkh[j * D + c] += ds * qi[c];
                        }
                    }
                }
            }
        }
    }
}
