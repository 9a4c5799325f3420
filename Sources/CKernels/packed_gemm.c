// A GEMM over a weight packed once (the frozen base never changes): C[M, N] (+)= A[M, K] · B,
// B[K, N] given as panels of 16 columns, each panel K rows of 16 contiguous floats (the last
// panel zero-padded). The A rows are read in place (broadcast one value at a time), so nothing
// is packed or allocated per call. Register block 6 x 16 (AVX2+FMA: 12 accumulators), AVX-512
// 6 x 32 is not written (no CPU here to measure it on); a scalar loop elsewhere. Chosen at run
// time as nf4.c does.
#include "dispatch.h"
#include "ckernels.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define NR 16
#define MR 6
// K blocks of KC (one panel's K block, KC x 16 floats = 16 KiB, stays in L1), then blocks of
// NCP panels (NCP x 16 columns x KC floats = 256 KiB, stay in L2), then 6 rows of A at a time
// (6 x KC floats, 6 KiB, in L1 across the block's panels).
#define KC 256
#define NCP 16

long mt_packed_size(long k, long n) { return ((n + NR - 1) / NR) * NR * k; }

void mt_pack_b(float *dst, const float *b, long k, long n, long strideK, long strideN) {
    long panels = (n + NR - 1) / NR;
    for (long p = 0; p < panels; p++) {
        float *d = dst + p * k * NR;
        long n0 = p * NR, w = n - n0 < NR ? n - n0 : NR;
        for (long kk = 0; kk < k; kk++) {
            const float *s = b + kk * strideK + n0 * strideN;
            long j = 0;
            for (; j < w; j++) d[kk * NR + j] = s[j * strideN];
            for (; j < NR; j++) d[kk * NR + j] = 0;
        }
    }
}

// One tile: c[mr, nr] (+)= a[mr, kc] (row stride lda) · bp[kc, 16].
static void tile_scalar(long mr, long nr, long kc, const float *a, long lda, const float *bp, float *c, long ldc,
                        int accumulate) {
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (long k = 0; k < kc; k++)
        for (long i = 0; i < mr; i++) {
            float av = a[i * lda + k];
            for (int j = 0; j < NR; j++) acc[i][j] += av * bp[k * NR + j];
        }
    for (long i = 0; i < mr; i++)
        for (long j = 0; j < nr; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

#if defined(__x86_64__)
#define ROW(i)                                                                                   \
    if (R > i) {                                                                                 \
        __m256 av = _mm256_broadcast_ss(a + i * lda + k);                                        \
        c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);                                              \
        c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);                                              \
    }
#define STORE(i)                                                                                 \
    if (R > i) {                                                                                 \
        float *cr = full ? c + i * ldc : tmp + i * NR;                                           \
        if (accumulate && full) {                                                                \
            c##i##0 = _mm256_add_ps(_mm256_loadu_ps(cr), c##i##0);                               \
            c##i##1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), c##i##1);                           \
        }                                                                                        \
        _mm256_storeu_ps(cr, c##i##0);                                                           \
        _mm256_storeu_ps(cr + 8, c##i##1);                                                       \
    }

// R rows (a compile-time constant at each call) by 16 columns; nr < 16 goes through tmp.
__attribute__((target("avx2,fma"), always_inline))
static inline void tile_avx2_rows(const int R, long nr, long kc, const float *a, long lda, const float *bp, float *c,
                                  long ldc, int accumulate) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#pragma unroll 4
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(bp + k * NR), b1 = _mm256_loadu_ps(bp + k * NR + 8);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
    }
    int full = nr == NR;
    float tmp[MR * NR];
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
    if (!full)
        for (long i = 0; i < R; i++)
            for (long j = 0; j < nr; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tmp[i * NR + j] : tmp[i * NR + j];
}

__attribute__((target("avx2,fma")))
static void tile_avx2(long mr, long nr, long kc, const float *a, long lda, const float *bp, float *c, long ldc,
                      int accumulate) {
    switch (mr) {
    case 6: tile_avx2_rows(6, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    case 5: tile_avx2_rows(5, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    case 4: tile_avx2_rows(4, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    case 3: tile_avx2_rows(3, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    case 2: tile_avx2_rows(2, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    default: tile_avx2_rows(1, nr, kc, a, lda, bp, c, ldc, accumulate); break;
    }
}
#endif

typedef void (*tile_fn)(long, long, long, const float *, long, const float *, float *, long, int);

int mt_packed_kernel_supported(int kernel) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (kernel == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
    return kernel == 0;
}

static tile_fn packed_tile(int kernel) {
#if defined(__x86_64__)
    if (kernel == 1) return tile_avx2;
#endif
    return tile_scalar;
}

static int packed_best(void) {
    static int chosen = -1;
    return mt_choose_kernel(&chosen, "MOE_TUNE_PACKED_KERNEL", mt_packed_kernel_supported);
}

const char *mt_packed_kernel(void) { return packed_best() == 1 ? "avx2" : "scalar"; }

// Loop order: K blocks of KC; then blocks of NC columns of the packed weight (NC x KC floats,
// 256 KiB, stay in L2); then 6 rows of A at a time (6 x KC floats, 6 KiB, stay in L1 across
// the block's panels) read in place; the weight, already packed, is never touched per call
// except to be read.
static void packed_gemm(tile_fn tile, long m, long n, long k, const float *a, long lda, const float *packed, float *c,
                        long ldc, int accumulate) {
    long panels = (n + NR - 1) / NR;
    for (long k0 = 0; k0 < k; k0 += KC) {
        long kc = k - k0 < KC ? k - k0 : KC;
        int acc = accumulate || k0 > 0;
        for (long p0 = 0; p0 < panels; p0 += NCP) {
            long p1 = p0 + NCP < panels ? p0 + NCP : panels;
            for (long i = 0; i < m; i += MR) {
                long mr = m - i < MR ? m - i : MR;
                for (long p = p0; p < p1; p++) {
                    long nr = n - p * NR < NR ? n - p * NR : NR;
                    tile(mr, nr, kc, a + i * lda + k0, lda, packed + p * k * NR + k0 * NR, c + i * ldc + p * NR, ldc, acc);
                }
            }
        }
    }
}

void mt_packed_gemm(long m, long n, long k, const float *a, long lda, const float *packed, float *c, long ldc,
                    int accumulate) {
    if (m <= 0 || n <= 0) return;
    packed_gemm(packed_tile(packed_best()), m, n, k, a, lda, packed, c, ldc, accumulate);
}

int mt_packed_gemm_with(int kernel, long m, long n, long k, const float *a, long lda, const float *packed, float *c,
                        long ldc, int accumulate) {
    if (!mt_packed_kernel_supported(kernel)) return -1;
    if (m > 0 && n > 0) packed_gemm(packed_tile(kernel), m, n, k, a, lda, packed, c, ldc, accumulate);
    return 0;
}
