// Products of ggml-quantized weight rows with an activation vector, in the weights' own
// blocks (no fp32 copy of a row): the activation is quantized once to 8 bits per value in
// blocks that line up with the weight blocks, each block's product is an integer sum, and
// the blocks' sums are scaled and added in fp32, as ggml's CPU backend computes them. This
// file: the activation formats, the 32-value types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the
// public entry points and the run-time kernel choice; qdot_k.c: the 256-value K types. Also
// here: the fp32 products straight from NF4 codes and from bf16 rows.
//
// Variants: scalar (the reference definition, any CPU) and AVX2+FMA+F16C, chosen at run time
// (MOE_TUNE_QDOT_KERNEL=scalar|avx2). No AVX-512 or VNNI variant: the CPU this was written on
// has neither, and no code path is kept that was never run.
#include "dispatch.h"
#include "ckernels.h"
#include "qdot_common.h"
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

// The activation block of the 32-value types (68 bytes): fp32 d[8], one for each 4 values,
// fp32 s = sum over g of d[g] * (sum of q over values 4g..4g+3), 32 int8 q; value i is
// d[i / 4] * q[i]. Four values to a scale: after maddubs and madd, each 32-bit lane of the
// AVX2 kernel holds the sum of 4 values, so it scales the lanes by 8 d's where one d was
// broadcast (the same work) and rounds the activation about twice as finely as one d per 32.
#define XQ32_BYTES 68


static int block_size(int type) {
    switch (type) {
    case Q4_0: case Q4_1: case Q5_0: case Q5_1: case Q8_0: return 32;
    case Q4_K: case Q5_K: case Q6_K: return 256;
    default: return 0;
    }
}

static long type_size(int type) {
    switch (type) {
    case Q4_0: return 18;
    case Q4_1: return 20;
    case Q5_0: return 22;
    case Q5_1: return 24;
    case Q8_0: return 34;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
    default: return 0;
    }
}

static int valid(int type, long n) {
    int bs = block_size(type);
    return bs > 0 && n >= 0 && n % bs == 0;
}

static inline uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// ---- Activation quantization ------------------------------------------------------------

// Round to nearest (ties to even) for |v| < 2^22, in plain adds the compiler vectorises.
static inline float round_ne(float v) { return (v + 12582912.0f) - 12582912.0f; }

// One block of k values: d = max|x| / 127, q = round(x * 127 / max|x|) clamped to +-127.
// Returns the sum of q.
static inline int quantize_block(const float *x, int k, float *d, int8_t *q) {
    float amax = 0;
    for (int i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    *d = amax / 127.0f;
    float id = amax > 0 ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < k; i++) {
        float v = fminf(fmaxf(round_ne(x[i] * id), -127.0f), 127.0f);
        q[i] = (int8_t)v;
        sum += q[i];
    }
    return sum;
}

long mt_qdot_activation_bytes(int type, long n) {
    if (!valid(type, n)) return -1;
    return block_size(type) == 32 ? n / 32 * XQ32_BYTES : n / 256 * XQ256_BYTES;
}

// One activation block of bs (32 or 256) values at x into o, in the layout of its family.
static void quantize_activation_block(int bs, const float *x, uint8_t *o) {
    float d;
    if (bs == 32) {
        int8_t q[32];
        float dg[8], s = 0;
        for (int g = 0; g < 8; g++) {
            int sum = quantize_block(x + 4 * g, 4, &dg[g], q + 4 * g);
            s += dg[g] * (float)sum;
        }
        memcpy(o, dg, 32);
        memcpy(o + 32, &s, 4);
        memcpy(o + 36, q, 32);
        return;
    }
    int8_t q[256];
    int16_t bsums[16];
    quantize_block(x, 256, &d, q);
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int i = 0; i < 16; i++) s += q[16 * g + i];
        bsums[g] = (int16_t)s;
    }
    memcpy(o, &d, 4);
    memcpy(o + 4, q, 256);
    memcpy(o + 260, bsums, 32);
}

void mt_qdot_quantize_activation(int type, const float *x, void *dst, long n) {
    if (!valid(type, n)) return;
    const int bs = block_size(type);
    const long ab = bs == 32 ? XQ32_BYTES : XQ256_BYTES;
    uint8_t *o = dst;
    for (long b = 0; b < n / bs; b++) quantize_activation_block(bs, x + bs * b, o + b * ab);
}

void mt_qdot_quantize_activation2(int type, const float *x, void *dst, long n) {
    if (!valid(type, n)) return;
    const int bs = block_size(type);
    const long ab = bs == 32 ? XQ32_BYTES : XQ256_BYTES, bytes = n / bs * ab;
    uint8_t *o = dst;
    for (long b = 0; b < n / bs; b++) {
        uint8_t *main = o + b * ab;
        quantize_activation_block(bs, x + bs * b, main);
        const int8_t *q = (const int8_t *)(main + (bs == 32 ? 36 : 4));
        float r[256];
        for (int i = 0; i < bs; i++) r[i] = x[bs * b + i] - rd_f32(main + (bs == 32 ? 4 * (i / 4) : 0)) * (float)q[i];
        quantize_activation_block(bs, r, o + bytes + b * ab);
    }
}

// ---- 32-value types: scalar (the reference) ----------------------------------------------

// The integers of one weight block (value i = d * q[i] + m) and its d, m (m = 0 for the
// types without one), as GGMLDequantize.swift reads them.
static inline void unpack32(int type, const uint8_t *b, int8_t *q, float *d, float *m) {
    *m = 0;
    switch (type) {
    case Q4_0:
        *d = half_to_float(b);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)((b[2 + j] & 15) - 8);
            q[j + 16] = (int8_t)((b[2 + j] >> 4) - 8);
        }
        break;
    case Q4_1:
        *d = half_to_float(b);
        *m = half_to_float(b + 2);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(b[4 + j] & 15);
            q[j + 16] = (int8_t)(b[4 + j] >> 4);
        }
        break;
    case Q5_0: {
        *d = half_to_float(b);
        uint32_t qh = rd_u32(b + 2);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)(((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) - 16);
            q[j + 16] = (int8_t)(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
        }
        break;
    }
    case Q5_1: {
        *d = half_to_float(b);
        *m = half_to_float(b + 2);
        uint32_t qh = rd_u32(b + 4);
        for (int j = 0; j < 16; j++) {
            q[j] = (int8_t)((b[8 + j] & 15) | (((qh >> j) & 1) << 4));
            q[j + 16] = (int8_t)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
        }
        break;
    }
    default:  // Q8_0
        *d = half_to_float(b);
        memcpy(q, b + 2, 32);
        break;
    }
}

// The definition: row · x = sum over blocks of (sum over g of (dw * dx_g) * sum_i(qw_i *
// qx_i) over values 4g..4g+3) + mw * sx, the inner sums in integers, the rest in fp32, block
// by block and group by group in order.
static inline __attribute__((always_inline)) float dot32_scalar_t(const int type, long nb, const uint8_t *w,
                                                                    const uint8_t *x) {
    const long ts = type_size(type);
    float acc = 0;
    for (long b = 0; b < nb; b++) {
        int8_t q[32];
        float dw, mw;
        unpack32(type, w + b * ts, q, &dw, &mw);
        const uint8_t *xb = x + b * XQ32_BYTES;
        const int8_t *qx = (const int8_t *)(xb + 36);
        float term = 0;
        for (int g = 0; g < 8; g++) {
            int sumi = 0;
            for (int i = 4 * g; i < 4 * g + 4; i++) sumi += q[i] * qx[i];
            term += (dw * rd_f32(xb + 4 * g)) * (float)sumi;
        }
        if (type == Q4_1 || type == Q5_1) term += mw * rd_f32(xb + 32);
        acc += term;
    }
    return acc;
}

// One copy per type, so each type's unpacking and sum are compiled (and vectorised) alone.
static float dot32_scalar_1(int type, long nb, const uint8_t *w, const uint8_t *x) {
    switch (type) {
    case Q4_0: return dot32_scalar_t(Q4_0, nb, w, x);
    case Q4_1: return dot32_scalar_t(Q4_1, nb, w, x);
    case Q5_0: return dot32_scalar_t(Q5_0, nb, w, x);
    case Q5_1: return dot32_scalar_t(Q5_1, nb, w, x);
    default: return dot32_scalar_t(Q8_0, nb, w, x);
    }
}

static void dot32_scalar(int type, long nb, const uint8_t *w, const uint8_t *x, long xs, int nx, float *out) {
    for (int j = 0; j < nx; j++) out[j] = dot32_scalar_1(type, nb, w, x + j * xs);
}

// ---- 32-value types: AVX2 ---------------------------------------------------------------

#if defined(__x86_64__)

// 16 bytes -> 32 bytes: the low nibbles (values 0..15) then the high nibbles (16..31).
AVX2_INLINE __m256i nibbles32(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(15));
}

// The 32 bits of the little-endian u32 at p -> 32 bytes, 0xFF where the bit is set.
AVX2_INLINE __m256i bits32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), pick);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

// nx activations (a compile-time constant once inlined) against one row: each weight block
// is unpacked once into 32 bytes and multiplied with every activation's block. Signed
// weights (Q4_0, Q5_0, Q8_0): |w| (unsigned) times x carrying w's sign, as maddubs needs one
// unsigned operand; unsigned weights (Q4_1, Q5_1) go in as they are.
// maddubs + madd(ones) is where AVX-VNNI / AVX512-VNNI would use one vpdpbusd; not written,
// this CPU has no VNNI.
AVX2_INLINE void dot32_avx2_t(const int type, const int nx, long nb, const uint8_t *w, const uint8_t *x, long xs,
                              float *out) {
    const long ts = type == Q4_0 ? 18 : type == Q4_1 ? 20 : type == Q5_0 ? 22 : type == Q5_1 ? 24 : 34;
    const int hasMin = type == Q4_1 || type == Q5_1;
    const int isSigned = !hasMin;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4], macc[4];
    UNROLL_NX
    for (int j = 0; j < nx; j++) acc[j] = macc[j] = _mm256_setzero_ps();
    for (long b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * ts;
        __m256i q;
        const __m256 dw = half8(wb);
        __m256 mw = _mm256_setzero_ps();
        if (type == Q4_0) {
            q = _mm256_sub_epi8(nibbles32(wb + 2), _mm256_set1_epi8(8));
        } else if (type == Q4_1) {
            mw = half8(wb + 2);
            q = nibbles32(wb + 4);
        } else if (type == Q5_0) {
            // (q4 | h << 4) - 16 as int8: q4 where h is set, q4 | 0xF0 where it is not.
            q = _mm256_or_si256(nibbles32(wb + 6), _mm256_andnot_si256(bits32(wb + 2), _mm256_set1_epi8((char)0xF0)));
        } else if (type == Q5_1) {
            mw = half8(wb + 2);
            q = _mm256_or_si256(nibbles32(wb + 8), _mm256_and_si256(bits32(wb + 4), _mm256_set1_epi8(0x10)));
        } else {
            q = _mm256_loadu_si256((const __m256i *)(wb + 2));
        }
        __m256i uq = isSigned ? _mm256_sign_epi8(q, q) : q;
        UNROLL_NX
        for (int j = 0; j < nx; j++) {
            const uint8_t *xb = x + j * xs + b * XQ32_BYTES;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xb + 36));
            if (isSigned) xv = _mm256_sign_epi8(xv, q);
            // Lane g: the sum over values 4g..4g+3, scaled by dw * d[g].
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(uq, xv), ones);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_loadu_ps((const float *)xb)), _mm256_cvtepi32_ps(p), acc[j]);
            if (hasMin) macc[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(rd_f32(xb + 32)), macc[j]);
        }
    }
    UNROLL_NX
    for (int j = 0; j < nx; j++) out[j] = hsum8(acc[j]) + _mm256_cvtss_f32(macc[j]);
}

// Each type's row kernel, the row loop around the inlined kernel (qdot_common.h's MT_ROW_KERNEL).
#define DOT32_AVX2(T) MT_ROW_KERNEL(dot32_avx2, dot32_avx2_t, T)
DOT32_AVX2(Q4_0)
DOT32_AVX2(Q4_1)
DOT32_AVX2(Q5_0)
DOT32_AVX2(Q5_1)
DOT32_AVX2(Q8_0)

static void dot32_avx2(int type, long nb, const uint8_t *w, long rowBytes, long rows, const uint8_t *x, long xs, int nx,
                       float *y, long ldy) {
    switch (type) {
    case Q4_0: dot32_avx2_Q4_0(nb, w, rowBytes, rows, x, xs, nx, y, ldy); break;
    case Q4_1: dot32_avx2_Q4_1(nb, w, rowBytes, rows, x, xs, nx, y, ldy); break;
    case Q5_0: dot32_avx2_Q5_0(nb, w, rowBytes, rows, x, xs, nx, y, ldy); break;
    case Q5_1: dot32_avx2_Q5_1(nb, w, rowBytes, rows, x, xs, nx, y, ldy); break;
    default: dot32_avx2_Q8_0(nb, w, rowBytes, rows, x, xs, nx, y, ldy); break;
    }
}
#endif

// ---- Entry points -------------------------------------------------------------------------

int mt_qdot_kernel_supported(int kernel) {
    if (kernel == 0) return 1;
#if defined(__x86_64__)
    if (kernel == 1) {
        __builtin_cpu_init();
        return mt_x86_level_supported(1) && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
#endif
    return 0;
}

static int qdot_best(void) {
    return mt_choose_kernel(MT_KERNEL_QDOT, mt_qdot_kernel_supported);
}

const char *mt_qdot_kernel(void) { return qdot_best() == 1 ? "avx2" : "scalar"; }

// Rows [0, rows) at w, rowBytes apart, against nx <= 4 activations: y[j * ldy + r].
static void dot_rows(int kernel, int type, long nb, const uint8_t *w, long rowBytes, long rows, const uint8_t *x, long xs,
                     int nx, float *y, long ldy) {
    int k = block_size(type) == 256;
#if defined(__x86_64__)
    if (kernel == 1) {
        if (k) mt_qdot_k_avx2(type, nb, w, rowBytes, rows, x, xs, nx, y, ldy);
        else dot32_avx2(type, nb, w, rowBytes, rows, x, xs, nx, y, ldy);
        return;
    }
#endif
    (void)kernel;
    for (long r = 0; r < rows; r++) {
        float t[4];
        if (k) mt_qdot_k_scalar(type, nb, w + r * rowBytes, x, xs, nx, t);
        else dot32_scalar(type, nb, w + r * rowBytes, x, xs, nx, t);
        for (int j = 0; j < nx; j++) y[j * ldy + r] = t[j];
    }
}

// Up to 4 activations: every row in one call of the kernel. More: row by row, each row
// against the activations 4 at a time, so it is read from memory once and from L1 for the rest.
static void matmat(int kernel, int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq,
                   long xqStride, long m, float *y, long ldy) {
    long nb = n / block_size(type);
    const uint8_t *w0 = (const uint8_t *)w + r0 * rowBytes, *x = xq;
    if (m < 1 || r1 <= r0) return;  // nothing to do (the kernels' nx switch would take 0 for 4)
    if (m <= 4) {
        dot_rows(kernel, type, nb, w0, rowBytes, r1 - r0, x, xqStride, (int)m, y, ldy);
        return;
    }
    for (long r = 0; r < r1 - r0; r++)
        for (long j0 = 0; j0 < m; j0 += 4) {
            int nx = m - j0 < 4 ? (int)(m - j0) : 4;
            dot_rows(kernel, type, nb, w0 + r * rowBytes, rowBytes, 1, x + j0 * xqStride, xqStride, nx, y + j0 * ldy + r, ldy);
        }
}

float mt_qdot_row(int type, long n, const void *wrow, const void *xq) {
    if (!valid(type, n)) return NAN;
    float out;
    dot_rows(qdot_best(), type, n / block_size(type), wrow, 0, 1, xq, 0, 1, &out, 1);
    return out;
}

int mt_qdot_row_with(int kernel, int type, long n, const void *wrow, const void *xq, float *out) {
    if (!mt_qdot_kernel_supported(kernel) || !valid(type, n)) return -1;
    dot_rows(kernel, type, n / block_size(type), wrow, 0, 1, xq, 0, 1, out, 1);
    return 0;
}

void mt_qdot_matvec(int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq, float *y) {
    if (!valid(type, n)) return;
    matmat(qdot_best(), type, w, rowBytes, r0, r1, n, xq, 0, 1, y, 0);
}

void mt_qdot_matmat(int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq, long xqStride,
                    long m, float *y, long ldy) {
    if (!valid(type, n)) return;
    matmat(qdot_best(), type, w, rowBytes, r0, r1, n, xq, xqStride, m, y, ldy);
}

int mt_qdot_matmat_with(int kernel, int type, const void *w, long rowBytes, long r0, long r1, long n, const void *xq,
                        long xqStride, long m, float *y, long ldy) {
    if (!mt_qdot_kernel_supported(kernel) || !valid(type, n)) return -1;
    matmat(kernel, type, w, rowBytes, r0, r1, n, xq, xqStride, m, y, ldy);
    return 0;
}

// ---- NF4 rows -----------------------------------------------------------------------------

// A block's scale exactly as mt_nf4_dequant computes it (one fp32 product, one fp32 sum).
// The product goes through a volatile so that no compiler fuses the two into one multiply-add
// (inlined in the AVX2+FMA kernel, a plain temporary may be); a call to an out-of-line helper
// instead cost the AVX2 kernel its accumulators (spilled around every call) and, in legacy
// SSE code, a stall on each switch between the encodings.
static inline float nf4_block_scale(long b, const float *absmax, const unsigned char *scaleCodes, const float *map,
                                    const float *nested, float offset) {
    if (absmax) return absmax[b];
    volatile float m = map[scaleCodes[b]] * nested[b >> 8];
    return m + offset;
}

// Row r: sum over its pieces of 64-value blocks of scale * sum_j code(j) * x[j].
static void nf4_matvec_scalar(float *y, const unsigned char *packed, long cols, long r0, long r1,
                              const float *code16, const float *absmax, const unsigned char *scaleCodes,
                              const float *map, const float *nested, float offset, const float *x) {
    for (long r = r0; r < r1; r++) {
        const long lo = r * cols, hi = lo + cols;
        float acc = 0;
        long i = lo;
        while (i < hi) {
            long b = i >> 6, bend = (b + 1) << 6;
            if (bend > hi) bend = hi;
            float s = nf4_block_scale(b, absmax, scaleCodes, map, nested, offset), bs = 0;
            if (i & 1) { bs += code16[packed[i >> 1] & 15] * x[i - lo]; i++; }
            for (; i + 2 <= bend; i += 2) {
                unsigned char byte = packed[i >> 1];
                bs += code16[byte >> 4] * x[i - lo];
                bs += code16[byte & 15] * x[i + 1 - lo];
            }
            if (i < bend) { bs += code16[packed[i >> 1] >> 4] * x[i - lo]; i++; }
            acc += s * bs;
        }
        y[r - r0] = acc;
    }
}

#if defined(__x86_64__)
// 8 bytes -> 16 values (high nibble first): two 8-entry permutes per 8 values, bit 3 of the
// code (moved to the sign bit) picks the half of the table, as nf4.c does.
AVX2_INLINE __m256 nf4_lookup8(__m128i idx8, __m256 tlo, __m256 thi) {
    __m256i i = _mm256_cvtepu8_epi32(idx8);
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i), _mm256_permutevar8x32_ps(thi, i),
                            _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
}

AVX2_FN static void nf4_matvec_avx2(float *y, const unsigned char *packed, long cols, long r0, long r1,
                                    const float *code16, const float *absmax, const unsigned char *scaleCodes,
                                    const float *map, const float *nested, float offset, const float *x) {
    const __m256 tlo = _mm256_loadu_ps(code16), thi = _mm256_loadu_ps(code16 + 8);
    const __m128i m4 = _mm_set1_epi8(15);
    for (long r = r0; r < r1; r++) {
        const long lo = r * cols, hi = lo + cols;
        __m256 acc = _mm256_setzero_ps();
        float accs = 0;
        long i = lo;
        while (i < hi) {
            long b = i >> 6, bend = (b + 1) << 6;
            if (bend > hi) bend = hi;
            float s = nf4_block_scale(b, absmax, scaleCodes, map, nested, offset), bs = 0;
            if (i & 1) { bs += code16[packed[i >> 1] & 15] * x[i - lo]; i++; }
            __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
            for (; i + 16 <= bend; i += 16) {
                __m128i raw = _mm_loadl_epi64((const __m128i *)(packed + (i >> 1)));
                __m128i idx = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
                const float *xp = x + (i - lo);
                b0 = _mm256_fmadd_ps(nf4_lookup8(idx, tlo, thi), _mm256_loadu_ps(xp), b0);
                b1 = _mm256_fmadd_ps(nf4_lookup8(_mm_srli_si128(idx, 8), tlo, thi), _mm256_loadu_ps(xp + 8), b1);
            }
            for (; i < bend; i++) {
                unsigned char byte = packed[i >> 1];
                bs += code16[(i & 1) ? (byte & 15) : (byte >> 4)] * x[i - lo];
            }
            acc = _mm256_fmadd_ps(_mm256_add_ps(b0, b1), _mm256_set1_ps(s), acc);
            accs += s * bs;
        }
        y[r - r0] = hsum8(acc) + accs;
    }
}
#endif

void mt_nf4_matvec(float *y, const unsigned char *packed, long rows, long cols, long r0, long r1,
                   const float *code16, const float *absmax, const unsigned char *scaleCodes, const float *map,
                   const float *nested, float offset, const float *x) {
    mt_nf4_matvec_with(qdot_best(), y, packed, rows, cols, r0, r1, code16, absmax, scaleCodes, map, nested, offset, x);
}

int mt_nf4_matvec_with(int kernel, float *y, const unsigned char *packed, long rows, long cols, long r0, long r1,
                       const float *code16, const float *absmax, const unsigned char *scaleCodes, const float *map,
                       const float *nested, float offset, const float *x) {
    if (!mt_qdot_kernel_supported(kernel)) return -1;
    if (r0 < 0 || r1 > rows || r0 >= r1 || cols <= 0) return 0;
#if defined(__x86_64__)
    if (kernel == 1) {
        nf4_matvec_avx2(y, packed, cols, r0, r1, code16, absmax, scaleCodes, map, nested, offset, x);
        return 0;
    }
#endif
    nf4_matvec_scalar(y, packed, cols, r0, r1, code16, absmax, scaleCodes, map, nested, offset, x);
    return 0;
}

// ---- bf16 rows ----------------------------------------------------------------------------

static inline float bf16_to_float(unsigned short v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void bf16_matvec_scalar(float *y, const unsigned short *w, long r0, long r1, long cols, const float *x) {
    for (long r = r0; r < r1; r++) {
        const unsigned short *row = w + r * cols;
        float acc = 0;
        for (long j = 0; j < cols; j++) acc += bf16_to_float(row[j]) * x[j];
        y[r - r0] = acc;
    }
}

#if defined(__x86_64__)
AVX2_INLINE __m256 bf16x8(const unsigned short *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

AVX2_FN static void bf16_matvec_avx2(float *y, const unsigned short *w, long r0, long r1, long cols, const float *x) {
    for (long r = r0; r < r1; r++) {
        const unsigned short *row = w + r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        long j = 0;
        for (; j + 32 <= cols; j += 32) {
            a0 = _mm256_fmadd_ps(bf16x8(row + j), _mm256_loadu_ps(x + j), a0);
            a1 = _mm256_fmadd_ps(bf16x8(row + j + 8), _mm256_loadu_ps(x + j + 8), a1);
            a2 = _mm256_fmadd_ps(bf16x8(row + j + 16), _mm256_loadu_ps(x + j + 16), a2);
            a3 = _mm256_fmadd_ps(bf16x8(row + j + 24), _mm256_loadu_ps(x + j + 24), a3);
        }
        for (; j + 8 <= cols; j += 8) a0 = _mm256_fmadd_ps(bf16x8(row + j), _mm256_loadu_ps(x + j), a0);
        float tail = 0;
        for (; j < cols; j++) tail += bf16_to_float(row[j]) * x[j];
        y[r - r0] = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail;
    }
}
#endif

void mt_bf16_matvec(float *y, const unsigned short *w, long r0, long r1, long cols, const float *x) {
    mt_bf16_matvec_with(qdot_best(), y, w, r0, r1, cols, x);
}

int mt_bf16_matvec_with(int kernel, float *y, const unsigned short *w, long r0, long r1, long cols, const float *x) {
    if (!mt_qdot_kernel_supported(kernel)) return -1;
#if defined(__x86_64__)
    if (kernel == 1) {
        bf16_matvec_avx2(y, w, r0, r1, cols, x);
        return 0;
    }
#endif
    bf16_matvec_scalar(y, w, r0, r1, cols, x);
    return 0;
}
