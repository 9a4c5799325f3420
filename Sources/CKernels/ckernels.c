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
// The sum runs over 8 double lanes so that the loops vectorise (a single running sum is a
// serial dependence the compiler may not reorder, which also kept the exps scalar).
static inline double mt_sum8(const double s[8]) {
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Both sums add element i to lane i % 8 over whole blocks of 64 and the rest in order, so
// mt_exp_shift_inplace and mt_sum_exp_shift return the same value for the same input.
MT_CLONES float mt_exp_shift_inplace(float *x, long n, float shift) {
    for (long i = 0; i < n; i++) x[i] = mt_expf(x[i] - shift);
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    long i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 64; j += 8)
            for (int k = 0; k < 8; k++) s[k] += x[i + j + k];
    double sum = mt_sum8(s);
    for (; i < n; i++) sum += x[i];
    return sum;
}

MT_CLONES float mt_sum_exp_shift(const float *x, long n, float shift) {
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float e[64];
    long i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int j = 0; j < 64; j++) e[j] = mt_expf(x[i + j] - shift);
        for (int j = 0; j < 64; j += 8)
            for (int k = 0; k < 8; k++) s[k] += e[j + k];
    }
    double sum = mt_sum8(s);
    for (; i < n; i++) sum += mt_expf(x[i] - shift);
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

// d may be dg itself (the caller computes in place). Each block of d is copied first, so
// the loop over the block has no overlapping pointers and vectorises (with d == dg a
// whole-array loop fails the compiler's overlap check and runs scalar).
MT_CLONES void mt_swiglu_backward(float *dg, float *du, const float *d, const float *g, const float *u, long n) {
    float dl[64];
    for (long b = 0; b < n; b += 64) {
        long m = n - b < 64 ? n - b : 64;
        for (long i = 0; i < m; i++) dl[i] = d[b + i];
        float *dgb = dg + b, *dub = du + b;
        const float *gb = g + b, *ub = u + b;
        for (long i = 0; i < m; i++) {
            float s = 1.0f / (1.0f + mt_expf(-gb[i]));
            float di = dl[i];
            dgb[i] = di * ub[i] * s * (1.0f + gb[i] * (1.0f - s));
            dub[i] = di * gb[i] * s;
        }
    }
}
