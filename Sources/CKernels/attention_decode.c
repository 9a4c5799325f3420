// One query row's attention over a KV cache (the decoder's step): for each head, scores
// q · k_j * scale over cached positions first..pos, a softmax (with an optional sink logit
// that takes part in the normalisation only), and the weighted sum of the values. AVX2+FMA
// dot products and sums where the CPU has them; the scalar loop is the definition.
#include "ckernels.h"
#include "dispatch.h"
#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static float dot_scalar(const float *a, const float *b, long n) {
    float s = 0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, long n) {
    for (long i = 0; i < n; i++) y[i] += a * x[i];
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
static float dot_avx2(const float *a, const float *b, long n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    __m256 s = _mm256_add_ps(s0, s1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    float r = _mm_cvtss_f32(h);
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

__attribute__((target("avx2,fma")))
static void axpy_avx2(float *y, float a, const float *x, long n) {
    __m256 av = _mm256_set1_ps(a);
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

typedef float (*dot_fn)(const float *, const float *, long);
typedef void (*axpy_fn)(float *, float, const float *, long);

static void attend(dot_fn dot, axpy_fn axpy, float *out, const float *q, const float *keys, const float *values,
                   long first, long pos, long heads, long group, long d, long kvDim, float scale, float *scores,
                   const float *sinks) {
    for (long head = 0; head < heads; head++) {
        long kvh = head / group;
        const float *qh = q + head * d;
        float m = -INFINITY;
        for (long j = first; j <= pos; j++) {
            scores[j] = dot(qh, keys + j * kvDim + kvh * d, d) * scale;
            if (scores[j] > m) m = scores[j];
        }
        if (sinks && sinks[head] > m) m = sinks[head];
        float sum = 0;
        for (long j = first; j <= pos; j++) { scores[j] = expf(scores[j] - m); sum += scores[j]; }
        if (sinks) sum += expf(sinks[head] - m);
        float *o = out + head * d;
        for (long i = 0; i < d; i++) o[i] = 0;
        for (long j = first; j <= pos; j++) axpy(o, scores[j] / sum, values + j * kvDim + kvh * d, d);
    }
}

int mt_attention_decode_supported(int kernel) { return kernel <= 1 ? mt_x86_level_supported(kernel) : 0; }

int mt_attention_decode_with(int kernel, float *out, const float *q, const float *keys, const float *values, long first,
                             long pos, long heads, long group, long headDim, long kvDim, float scale, float *scores,
                             const float *sinks) {
    if (!mt_attention_decode_supported(kernel)) return -1;
#if defined(__x86_64__)
    if (kernel == 1) {
        attend(dot_avx2, axpy_avx2, out, q, keys, values, first, pos, heads, group, headDim, kvDim, scale, scores, sinks);
        return 0;
    }
#endif
    attend(dot_scalar, axpy_scalar, out, q, keys, values, first, pos, heads, group, headDim, kvDim, scale, scores, sinks);
    return 0;
}

void mt_attention_decode(float *out, const float *q, const float *keys, const float *values, long first, long pos,
                         long heads, long group, long headDim, long kvDim, float scale, float *scores,
                         const float *sinks) {
    static int chosen = -1;
    int k = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (k < 0) {
        k = mt_attention_decode_supported(1) ? 1 : 0;
        __atomic_store_n(&chosen, k, __ATOMIC_RELAXED);
    }
    mt_attention_decode_with(k, out, q, keys, values, first, pos, heads, group, headDim, kvDim, scale, scores, sinks);
}
