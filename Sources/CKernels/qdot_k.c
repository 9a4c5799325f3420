// The K types (super-blocks of 256 values: Q4_K, Q5_K, Q6_K) for qdot.c: one weight row
// against up to 4 activations quantized to q8_K-like blocks (qdot.c: fp32 d at byte 0,
// 256 int8 q at 4, 16 int16 sums of 16 q each at 260; 292 bytes). Within a super-block the
// products are integers (each sub-block's sum times its integer scale), across super-blocks
// fp32. Q4_K/Q5_K's minimums multiply the activation's 16-value sums; Q6_K's -32 offset is
// taken the same way, 32 * scale * sum.
#include "qdot_common.h"

enum { Q4_K = 12, Q5_K = 13, Q6_K = 14 };

static long k_type_size(int type) { return type == Q4_K ? 144 : type == Q5_K ? 176 : 210; }

// ---- Scalar (the reference) ---------------------------------------------------------------

// The 6-bit scale and minimum of each of the 8 sub-blocks from the 12 packed bytes.
static inline void scales_mins(const uint8_t *s, int *sc, int *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

// The integer values of one super-block, in value order: Q4_K/Q5_K unsigned (value =
// d * sc * q - dmin * m), Q6_K less its offset 32 (value = d * sc * q).
static inline void unpack256(int type, const uint8_t *b, int *q) {
    if (type == Q6_K) {
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;
            int *o = q + 128 * n;
            for (int l = 0; l < 32; l++) {
                o[l] = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
                o[l + 32] = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            }
        }
        return;
    }
    const uint8_t *qs = b + (type == Q4_K ? 16 : 48), *qh = b + 16;
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            int h0 = 0, h1 = 0;
            if (type == Q5_K) {
                h0 = ((qh[l] >> (2 * g)) & 1) << 4;
                h1 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
            }
            q[64 * g + l] = (qs[32 * g + l] & 15) + h0;
            q[64 * g + 32 + l] = (qs[32 * g + l] >> 4) + h1;
        }
}

// Q4_K/Q5_K: (dw*dx) * sum_j sc_j * sum(q qx) - (dmin*dx) * sum_j m_j * (sum of qx in j);
// Q6_K: (dw*dx) * sum_k sc_k * sum(q qx) over its 16 groups of 16. Super-blocks in order.
static inline __attribute__((always_inline)) float dotk_scalar_t(const int type, long nb, const uint8_t *w,
                                                                   const uint8_t *x) {
    const long ts = k_type_size(type);
    float acc = 0;
    for (long b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * ts, *xb = x + b * XQ256_BYTES;
        const int8_t *qx = (const int8_t *)(xb + 4);
        int16_t bsums[16];
        memcpy(bsums, xb + 260, 32);
        int q[256];
        unpack256(type, wb, q);
        float dx = rd_f32(xb);
        if (type == Q6_K) {
            int sumi = 0;
            for (int k = 0; k < 16; k++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += q[16 * k + i] * qx[16 * k + i];
                sumi += (int8_t)wb[192 + k] * s;
            }
            acc += (half_to_float(wb + 208) * dx) * (float)sumi;
        } else {
            int sc[8], mn[8];
            scales_mins(wb + 4, sc, mn);
            int sumi = 0, summ = 0;
            for (int j = 0; j < 8; j++) {
                int s = 0;
                for (int i = 0; i < 32; i++) s += q[32 * j + i] * qx[32 * j + i];
                sumi += sc[j] * s;
                summ += mn[j] * (bsums[2 * j] + bsums[2 * j + 1]);
            }
            acc += (half_to_float(wb) * dx) * (float)sumi - (half_to_float(wb + 2) * dx) * (float)summ;
        }
    }
    return acc;
}

// One copy per type, so each type's unpacking and sums are compiled (and vectorised) alone.
static float dotk_scalar_1(int type, long nb, const uint8_t *w, const uint8_t *x) {
    if (type == Q4_K) return dotk_scalar_t(Q4_K, nb, w, x);
    if (type == Q5_K) return dotk_scalar_t(Q5_K, nb, w, x);
    return dotk_scalar_t(Q6_K, nb, w, x);
}

void mt_qdot_k_scalar(int type, long nb, const uint8_t *w, const uint8_t *x, long xs, int nx, float *out) {
    for (int j = 0; j < nx; j++) out[j] = dotk_scalar_1(type, nb, w, x + j * xs);
}

// ---- AVX2 -----------------------------------------------------------------------------------

#if defined(__x86_64__)



// The 12 scale bytes as 32-bit words a, b, c: scales 0..3 are a's bytes' low 6 bits, mins
// 0..3 b's; scales 4..7 are c's low nibbles with a's top 2 bits above them, mins 4..7 c's
// high nibbles with b's top 2 bits. Returns bytes 0..7 the scales, 8..15 the mins.
AVX2_INLINE __m128i k4_scales_mins(const uint8_t *s) {
    uint32_t a, b, c;
    memcpy(&a, s, 4);
    memcpy(&b, s + 4, 4);
    memcpy(&c, s + 8, 4);
    uint32_t sc_hi = (c & 0x0f0f0f0fu) | (((a >> 6) & 0x03030303u) << 4);
    uint32_t mn_hi = ((c >> 4) & 0x0f0f0f0fu) | (((b >> 6) & 0x03030303u) << 4);
    return _mm_setr_epi32((int)(a & 0x3f3f3f3fu), (int)sc_hi, (int)(b & 0x3f3f3f3fu), (int)mn_hi);
}

// nx (<= 4, constant once inlined) activations against one row, each weight super-block
// unpacked once. maddubs (unsigned weight x signed activation, pairs to int16) then madd
// with the sub-block's scale (pairs to int32): where AVX-VNNI would use vpdpbusd (this CPU
// has no VNNI; not written).
AVX2_INLINE void dotk_avx2_t(const int type, const int nx, long nb, const uint8_t *w, const uint8_t *x, long xs,
                             float *out) {
    const long ts = type == Q4_K ? 144 : type == Q5_K ? 176 : 210;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[4];
    __m128 macc[4];   // Q4_K/Q5_K: the minimums' 4 partial sums, added across lanes once at the end
    UNROLL_NX
    for (int j = 0; j < nx; j++) { acc[j] = _mm256_setzero_ps(); macc[j] = _mm_setzero_ps(); }
    for (long b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * ts;
        const long xo = b * XQ256_BYTES;
        __m256i sumi[4];
        UNROLL_NX
        for (int j = 0; j < nx; j++) sumi[j] = _mm256_setzero_si256();
        if (type == Q6_K) {
            const __m256i m30 = _mm256_set1_epi8(0x30);
            const __m128i sc8 = _mm_loadu_si128((const __m128i *)(wb + 192));
            // Vector v (32 values, 0..7) spans scales 2v (first 16) and 2v + 1 (last 16).
            __m128i pick = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            for (int n = 0; n < 2; n++) {
                const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(wb + 64 * n));
                const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(wb + 64 * n + 32));
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(wb + 128 + 32 * n));
                for (int k = 0; k < 4; k++) {
                    __m256i q;
                    if (k == 0) q = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                    else if (k == 1) q = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                    else if (k == 2) q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
                    else q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
                    __m256i sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
                    pick = _mm_add_epi8(pick, _mm_set1_epi8(2));
                    UNROLL_NX
                    for (int j = 0; j < nx; j++) {
                        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + j * xs + xo + 4 + 128 * n + 32 * k));
                        sumi[j] = _mm256_add_epi32(sumi[j], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), sc));
                    }
                }
            }
            // The offset: 32 * sum_k sc_k * (sum of qx over group k).
            const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
            const __m256 dw = half8(wb + 208);
            UNROLL_NX
            for (int j = 0; j < nx; j++) {
                const uint8_t *xb = x + j * xs + xo;
                __m256i bs = _mm256_loadu_si256((const __m256i *)(xb + 260));
                __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
                acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(rd_f32(xb))),
                                         _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[j], off)), acc[j]);
            }
        } else {
            const __m128i scm = k4_scales_mins(wb + 4);
            const __m256i scb = _mm256_broadcastsi128_si256(scm);
            const __m128i mins16 = _mm_cvtepu8_epi16(_mm_srli_si128(scm, 8));
            const uint8_t *qs = wb + (type == Q4_K ? 16 : 48);
            __m256i hb = type == Q5_K ? _mm256_loadu_si256((const __m256i *)(wb + 16)) : _mm256_setzero_si256();
            // Shuffle control picking scale byte s into every 16-bit lane (high byte zeroed).
            __m256i pick = _mm256_set1_epi16((short)0x8000);
            const __m256i one = _mm256_set1_epi16(1);
            for (int g = 0; g < 4; g++) {
                const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
                __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
                if (type == Q5_K) {
                    // Bits 2g and 2g + 1 of each qh byte (hb shifted right by 2g so far) -> 16.
                    const __m256i m10 = _mm256_set1_epi8(0x10);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), m10));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), m10));
                    hb = _mm256_srli_epi16(hb, 2);
                }
                const __m256i s0 = _mm256_shuffle_epi8(scb, pick);
                pick = _mm256_add_epi16(pick, one);
                const __m256i s1 = _mm256_shuffle_epi8(scb, pick);
                pick = _mm256_add_epi16(pick, one);
                UNROLL_NX
                for (int j = 0; j < nx; j++) {
                    const uint8_t *qx = x + j * xs + xo + 4 + 64 * g;
                    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)qx)), s0);
                    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qx + 32))), s1);
                    sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p0, p1));
                }
            }
            const __m256 dw = half8(wb), dmin = half8(wb + 2);
            UNROLL_NX
            for (int j = 0; j < nx; j++) {
                const uint8_t *xb = x + j * xs + xo;
                const __m256 dx = _mm256_set1_ps(rd_f32(xb));
                __m256i bs = _mm256_loadu_si256((const __m256i *)(xb + 260));
                __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                __m128i mins = _mm_madd_epi16(pairs, mins16);
                acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
                macc[j] = _mm_fmadd_ps(_mm256_castps256_ps128(_mm256_mul_ps(dmin, dx)), _mm_cvtepi32_ps(mins), macc[j]);
            }
        }
    }
    UNROLL_NX
    for (int j = 0; j < nx; j++) {
        __m128 m = _mm_add_ps(macc[j], _mm_movehl_ps(macc[j], macc[j]));
        m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
        out[j] = hsum8(acc[j]) - _mm_cvtss_f32(m);
    }
}

// Each type's row kernel, the row loop around the inlined kernel (qdot_common.h's MT_ROW_KERNEL).
#define DOTK_AVX2(T) MT_ROW_KERNEL(dotk_avx2, dotk_avx2_t, T)
DOTK_AVX2(Q4_K)
DOTK_AVX2(Q5_K)
DOTK_AVX2(Q6_K)

void mt_qdot_k_avx2(int type, long nb, const uint8_t *w, long rowBytes, long rows, const uint8_t *x, long xs, int nx,
                    float *y, long ldy) {
    if (type == Q4_K) dotk_avx2_Q4_K(nb, w, rowBytes, rows, x, xs, nx, y, ldy);
    else if (type == Q5_K) dotk_avx2_Q5_K(nb, w, rowBytes, rows, x, xs, nx, y, ldy);
    else dotk_avx2_Q6_K(nb, w, rowBytes, rows, x, xs, nx, y, ldy);
}
#endif
