// NF4 dequantization (bitsandbytes' layout): the kernel under every QLoRA product.
#include "dispatch.h"
#include "ckernels.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// Every value is one fp32 product code * scale, and the double-quantized scale one product
// and one sum: no fused multiply-add may merge them, or the values would differ from
// bitsandbytes' (and from the scalar kernel) in the last bit.
#pragma clang fp contract(off)

static inline float nf4_scale(long b, const float *absmax, const unsigned char *scaleCodes, const float *map,
                              const float *nested, float offset) {
    if (absmax) return absmax[b];
    float m = map[scaleCodes[b]] * nested[b >> 8];
    return m + offset;
}

// The outer walk shared by every kernel: block by block (one scale each), a lone odd value
// first, then VEC16 over runs of 16 values (8 bytes), the rest one at a time.
#define NF4_WALK(VEC16)                                                                         \
    long i = lo;                                                                                \
    while (i < hi) {                                                                            \
        long b = i >> 6;                                                                        \
        long bend = (b + 1) << 6;                                                               \
        if (bend > hi) bend = hi;                                                               \
        float s = nf4_scale(b, absmax, scaleCodes, map, nested, offset);                        \
        if (i & 1) { dst[i - lo] = code16[packed[i >> 1] & 15] * s; i++; }                      \
        for (; i + 16 <= bend; i += 16) { VEC16(dst + (i - lo), packed + (i >> 1), s); }        \
        for (; i < bend; i++) {                                                                 \
            unsigned char byte = packed[i >> 1];                                                \
            dst[i - lo] = code16[(i & 1) ? (byte & 15) : (byte >> 4)] * s;                      \
        }                                                                                       \
    }

#define SCALAR16(d, p, s)                                                                       \
    for (int j = 0; j < 8; j++) {                                                               \
        (d)[2 * j] = code16[(p)[j] >> 4] * (s);                                                 \
        (d)[2 * j + 1] = code16[(p)[j] & 15] * (s);                                             \
    }

static void nf4_scalar(float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                       const float *absmax, const unsigned char *scaleCodes, const float *map,
                       const float *nested, float offset) {
    NF4_WALK(SCALAR16)
}

#if defined(__x86_64__)
// 8 bytes -> the 16 nibble indices in value order (high nibble first), as bytes.
#define NF4_INDICES(p)                                                                          \
    __m128i raw = _mm_loadl_epi64((const __m128i *)(p));                                        \
    __m128i hiN = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15));                     \
    __m128i loN = _mm_and_si128(raw, _mm_set1_epi8(15));                                        \
    __m128i idx = _mm_unpacklo_epi8(hiN, loN);

// AVX2: permutevar8x32 looks up 8 entries; the two halves of the table are looked up and
// bit 3 of the index (moved to the sign bit) picks one.
#define AVX2_16(d, p, s) {                                                                      \
        NF4_INDICES(p)                                                                          \
        __m256i i0 = _mm256_cvtepu8_epi32(idx);                                                 \
        __m256i i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(idx, 8));                              \
        __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i0), _mm256_permutevar8x32_ps(thi, i0), \
                                     _mm256_castsi256_ps(_mm256_slli_epi32(i0, 28)));           \
        __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i1), _mm256_permutevar8x32_ps(thi, i1), \
                                     _mm256_castsi256_ps(_mm256_slli_epi32(i1, 28)));           \
        __m256 sv = _mm256_set1_ps(s);                                                          \
        _mm256_storeu_ps((d), _mm256_mul_ps(v0, sv));                                           \
        _mm256_storeu_ps((d) + 8, _mm256_mul_ps(v1, sv));                                       \
    }

__attribute__((target("avx2")))
static void nf4_avx2(float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                     const float *absmax, const unsigned char *scaleCodes, const float *map,
                     const float *nested, float offset) {
    __m256 tlo = _mm256_loadu_ps(code16), thi = _mm256_loadu_ps(code16 + 8);
    NF4_WALK(AVX2_16)
}

// AVX-512: one 16-entry permute.
#define AVX512_16(d, p, s) {                                                                    \
        NF4_INDICES(p)                                                                          \
        __m512 v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(idx), table);                     \
        _mm512_storeu_ps((d), _mm512_mul_ps(v, _mm512_set1_ps(s)));                             \
    }

__attribute__((target("avx512f")))
static void nf4_avx512(float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                       const float *absmax, const unsigned char *scaleCodes, const float *map,
                       const float *nested, float offset) {
    __m512 table = _mm512_loadu_ps(code16);
    NF4_WALK(AVX512_16)
}
#endif

typedef void (*nf4_fn)(float *, const unsigned char *, long, long, const float *, const float *,
                       const unsigned char *, const float *, const float *, float);

int mt_nf4_kernel_supported(int kernel) { return mt_x86_level_supported(kernel); }

static nf4_fn nf4_kernel_fn(int kernel) {
#if defined(__x86_64__)
    if (kernel == 2) return nf4_avx512;
    if (kernel == 1) return nf4_avx2;
#endif
    return nf4_scalar;
}

static int nf4_best(void) {
    return mt_choose_kernel(MT_KERNEL_NF4, mt_nf4_kernel_supported);
}

void mt_nf4_dequant(float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                    const float *absmax, const unsigned char *scaleCodes, const float *map,
                    const float *nested, float offset) {
    nf4_kernel_fn(nf4_best())(dst, packed, lo, hi, code16, absmax, scaleCodes, map, nested, offset);
}

int mt_nf4_dequant_with(int kernel, float *dst, const unsigned char *packed, long lo, long hi, const float *code16,
                        const float *absmax, const unsigned char *scaleCodes, const float *map,
                        const float *nested, float offset) {
    if (!mt_nf4_kernel_supported(kernel)) return -1;
    nf4_kernel_fn(kernel)(dst, packed, lo, hi, code16, absmax, scaleCodes, map, nested, offset);
    return 0;
}

const char *mt_nf4_kernel(void) {
    int k = nf4_best();
    return k == 2 ? "avx512" : (k == 1 ? "avx2" : "scalar");
}
