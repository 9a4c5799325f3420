// Shared by the quantized dot-product files qdot.c (32-value types, NF4, bf16) and qdot_k.c
// (the K types): the activation block layout, fp16/fp32 reads, and the AVX2 helpers. Private
// to CKernels (not in include/).
#ifndef MT_QDOT_COMMON_H
#define MT_QDOT_COMMON_H
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The activation block of the K types (292 bytes): fp32 d, 256 int8 q, 16 int16 sums of q
// over each 16 values (native byte order).
#define XQ256_BYTES 292

// The K-type kernels (qdot_k.c): out[j] = row · (activation j) for j < nx <= 4, the row nb
// blocks of `type` at w, activation j at x + j * xs. The AVX2 one over `rows` rows rowBytes
// apart, y[j * ldy + r].
void mt_qdot_k_scalar(int type, long nb, const uint8_t *w, const uint8_t *x, long xs, int nx, float *out);
#if defined(__x86_64__)
void mt_qdot_k_avx2(int type, long nb, const uint8_t *w, long rowBytes, long rows, const uint8_t *x, long xs, int nx,
                    float *y, long ldy);
#endif

// IEEE half (little-endian bytes) -> fp32, exact for every value.
static inline float half_to_float(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 31, man = h & 0x3ff, bits;
    if (e == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (e == 0) {
        float f = (float)man * 0x1p-24f;  // zero or subnormal: man * 2^-24, exact
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else {
        bits = sign | ((e + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float rd_f32(const uint8_t *p) { float f; memcpy(&f, p, 4); return f; }

#if defined(__x86_64__)
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))
// The loops over the (at most 4) activations unrolled whatever the optimization level, so
// their accumulators stay in registers.
#if defined(__clang__)
#define UNROLL_NX _Pragma("unroll")
#else
#define UNROLL_NX _Pragma("GCC unroll 4")
#endif

AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

// The half at p, converted and broadcast to 8 lanes. Kept a vector: converted to one fp32
// (as _cvtsh_ss does) clang loads it with pinsrw into whatever register is free, chaining
// each block's scale to the previous block's accumulator (Q8_0 2.8x slower than gcc's code).
AVX2_INLINE __m256 half8(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm256_cvtph_ps(_mm_set1_epi16((short)h));
}
// Rows [0, ROWS) of a row kernel over the weights W (rows of ROW_BYTES bytes): for each row
// r, CALL computes float OUT[NX] (OUT a float[4] the macro declares) from the row's bytes at
// `const uint8_t *ROW` (declared too), and OUT[j] goes to Y[j * LDY + r]. ROW and OUT name
// the two variables CALL uses; every other name is an argument.
#define MT_ROWS(W, ROW_BYTES, ROWS, Y, LDY, NX, ROW, OUT, CALL)                                    \
    for (long r = 0; r < (ROWS); r++) {                                                            \
        const uint8_t *ROW = (W) + r * (ROW_BYTES);                                                \
        float OUT[4];                                                                              \
        CALL;                                                                                      \
        for (int j = 0; j < (NX); j++) (Y)[j * (LDY) + r] = OUT[j];                                \
    }
// The row kernel NAME_T(nb, w, rowBytes, rows, x, xs, nx, y, ldy) of type T: the row loop
// around KERNEL(T, nx, nb, row, x, xs, t) with the kernel inlined, one loop for each count nx
// (1-4) of activation rows. The loop sits inside the kernel's function because a call per row
// cost a tenth of a decoding step on rows of 8 Q4_K super-blocks (perf: the row loop and its
// calls 6% of user cycles beside the kernel's 59%).
#define MT_ROW_KERNEL(NAME, KERNEL, T)                                                             \
    AVX2_FN static void NAME##_##T(long nb, const uint8_t *w, long rowBytes, long rows,             \
                                   const uint8_t *x, long xs, int nx, float *y, long ldy) {        \
        switch (nx) {                                                                              \
        case 1: MT_ROWS(w, rowBytes, rows, y, ldy, 1, row, t, KERNEL(T, 1, nb, row, x, xs, t)); break;  \
        case 2: MT_ROWS(w, rowBytes, rows, y, ldy, 2, row, t, KERNEL(T, 2, nb, row, x, xs, t)); break;  \
        case 3: MT_ROWS(w, rowBytes, rows, y, ldy, 3, row, t, KERNEL(T, 3, nb, row, x, xs, t)); break;  \
        default: MT_ROWS(w, rowBytes, rows, y, ldy, 4, row, t, KERNEL(T, 4, nb, row, x, xs, t)); break; \
        }                                                                                          \
    }
#endif

#endif
