#include "ckernels.h"
#include <stdint.h>
#include <string.h>

// One exp, branch-free and written so that loops over it vectorise.
static inline float mt_expf(float x) {
    float xc = x < -87.33654f ? -87.33654f : (x > 88.37626f ? 88.37626f : x);
    float t = xc * 1.442695040888963f + 12582912.0f;   // round to nearest via 1.5 * 2^23
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t ti;
    memcpy(&ti, &t, 4);
    int32_t bits = ((ti - 0x4B400000) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale + (x - x);   // x - x: 0 for finite x, NaN for NaN or infinite x
}

#define MT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// Sums are kept in double: over a 150k-token vocabulary a float sum that already holds the
// top token's 1.0 rounds each tiny term to a whole float ulp (a loss off by 1e-3 relative).
MT_CLONES float mt_exp_shift_inplace(float *x, long n, float shift) {
    double sum = 0.0;
    for (long i = 0; i < n; i++) {
        float e = mt_expf(x[i] - shift);
        x[i] = e;
        sum += e;
    }
    return sum;
}

MT_CLONES float mt_sum_exp_shift(const float *x, long n, float shift) {
    double sum = 0.0;
    for (long i = 0; i < n; i++) sum += mt_expf(x[i] - shift);
    return sum;
}

MT_CLONES float mt_max(const float *x, long n) {
    float m = -__builtin_inff();
    for (long i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

MT_CLONES void mt_swiglu_forward(float *out, const float *g, const float *u, long n) {
    for (long i = 0; i < n; i++) out[i] = g[i] / (1.0f + mt_expf(-g[i])) * u[i];
}

MT_CLONES void mt_swiglu_backward(float *dg, float *du, const float *d, const float *g, const float *u, long n) {
    for (long i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + mt_expf(-g[i]));
        float di = d[i];
        dg[i] = di * u[i] * s * (1.0f + g[i] * (1.0f - s));
        du[i] = di * g[i] * s;
    }
}
