// bfloat16 -> fp32 widening: the kernel under every product with a bf16 frozen base. A bf16
// value is the top half of an fp32, so widening is a 16-bit shift and exact (NaN payloads,
// infinities, subnormals and signed zeros included); every kernel gives the same bits.
#include "dispatch.h"
#include "ckernels.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

static void bf16_scalar(float *dst, const uint16_t *src, long n) {
    for (long i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(dst + i, &bits, 4);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void bf16_avx2(float *dst, const uint16_t *src, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i + 8)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(a, 16));
        _mm256_storeu_si256((__m256i *)(dst + i + 8), _mm256_slli_epi32(b, 16));
    }
    bf16_scalar(dst + i, src + i, n - i);
}

__attribute__((target("avx512f")))
static void bf16_avx512(float *dst, const uint16_t *src, long n) {
    long i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i + 16)));
        _mm512_storeu_si512((void *)(dst + i), _mm512_slli_epi32(a, 16));
        _mm512_storeu_si512((void *)(dst + i + 16), _mm512_slli_epi32(b, 16));
    }
    bf16_scalar(dst + i, src + i, n - i);
}
#endif

typedef void (*bf16_fn)(float *, const uint16_t *, long);

int mt_bf16_kernel_supported(int kernel) { return mt_x86_level_supported(kernel); }

static bf16_fn bf16_kernel_fn(int kernel) {
#if defined(__x86_64__)
    if (kernel == 2) return bf16_avx512;
    if (kernel == 1) return bf16_avx2;
#endif
    return bf16_scalar;
}

static int bf16_best(void) {
    return mt_choose_kernel(MT_KERNEL_BF16, mt_bf16_kernel_supported);
}

void mt_bf16_widen(float *dst, const unsigned short *src, long n) { bf16_kernel_fn(bf16_best())(dst, src, n); }

int mt_bf16_widen_with(int kernel, float *dst, const unsigned short *src, long n) {
    if (!mt_bf16_kernel_supported(kernel)) return -1;
    bf16_kernel_fn(kernel)(dst, src, n);
    return 0;
}

const char *mt_bf16_kernel(void) {
    int k = bf16_best();
    return k == 2 ? "avx512" : (k == 1 ? "avx2" : "scalar");
}

// CPUID: leaf 7 sub-leaf 1 EAX bit 5 is AVX512_BF16; leaf 7 sub-leaf 0 EDX bit 22 is AMX-BF16.
int mt_cpu_native_bf16(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    int found = 0;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5))) found |= 1;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22))) found |= 2;
    return found;
#else
    return 0;
#endif
}
