// Few-row products against an fp32 weight: y[i, r] = x[i, :] · w[r, :] for m <= ~16 rows of
// x. Each weight row is read once from memory and multiplied with every x row while it is
// in L1 (x's rows stay in L1/L2), so the product runs at the memory's speed where sgemm
// would spend its time packing panels for a handful of rows (the decoder's steps).
#include "dispatch.h"
#include "ckernels.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static void rows_scalar(const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y, long ldy,
                        int accumulate) {
    for (long r = r0; r < r1; r++) {
        const float *wr = w + r * k;
        for (long i = 0; i < m; i++) {
            const float *xi = x + i * ldx;
            float s = 0;
            for (long j = 0; j < k; j++) s += wr[j] * xi[j];
            float *out = y + i * ldy + (r - r0);
            *out = accumulate ? *out + s : s;
        }
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// Four x rows against one weight row: four accumulators, the weight loaded once a step.
__attribute__((target("avx2,fma")))
static void dot4(const float *wr, long k, const float *x, long ldx, long rows, float out[4]) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    const float *x0 = x, *x1 = x + (rows > 1 ? ldx : 0), *x2 = x + (rows > 2 ? 2 * ldx : 0), *x3 = x + (rows > 3 ? 3 * ldx : 0);
    long j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256 wv = _mm256_loadu_ps(wr + j);
        a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + j), a0);
        a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + j), a1);
        a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + j), a2);
        a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + j), a3);
    }
    float s0 = hsum8(a0), s1 = hsum8(a1), s2 = hsum8(a2), s3 = hsum8(a3);
    for (; j < k; j++) { s0 += wr[j] * x0[j]; s1 += wr[j] * x1[j]; s2 += wr[j] * x2[j]; s3 += wr[j] * x3[j]; }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

__attribute__((target("avx2,fma")))
static void rows_avx2(const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y, long ldy,
                      int accumulate) {
    float s[4];
    for (long r = r0; r < r1; r++) {
        const float *wr = w + r * k;
        if (r + 1 < r1) _mm_prefetch((const char *)(wr + k), _MM_HINT_T0);
        for (long i = 0; i < m; i += 4) {
            long n = m - i < 4 ? m - i : 4;
            dot4(wr, k, x + i * ldx, ldx, n, s);
            for (long t = 0; t < n; t++) {
                float *out = y + (i + t) * ldy + (r - r0);
                *out = accumulate ? *out + s[t] : s[t];
            }
        }
    }
}
#endif

int mt_rows_f32_kernel_supported(int kernel) { return kernel <= 1 ? mt_x86_level_supported(kernel) : 0; }

static int rows_best(void) {
    static int chosen = -1;
    int k = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (k < 0) {
        k = mt_rows_f32_kernel_supported(1) ? 1 : 0;
        __atomic_store_n(&chosen, k, __ATOMIC_RELAXED);
    }
    return k;
}

int mt_rows_f32_with(int kernel, const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y,
                     long ldy, int accumulate) {
    if (!mt_rows_f32_kernel_supported(kernel)) return -1;
#if defined(__x86_64__)
    if (kernel == 1) { rows_avx2(w, r0, r1, k, x, m, ldx, y, ldy, accumulate); return 0; }
#endif
    rows_scalar(w, r0, r1, k, x, m, ldx, y, ldy, accumulate);
    return 0;
}

void mt_rows_f32(const float *w, long r0, long r1, long k, const float *x, long m, long ldx, float *y, long ldy,
                 int accumulate) {
    mt_rows_f32_with(rows_best(), w, r0, r1, k, x, m, ldx, y, ldy, accumulate);
}
