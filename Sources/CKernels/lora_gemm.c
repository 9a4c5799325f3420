// Skinny products of LoRA adapters: one of the three dimensions is the rank r (8-64), the
// others a few hundred rows or features (an expert's ~128 routed rows with 64 experts top-8).
// OpenBLAS packs both operands of every product; with r as a dimension the packing and its
// edge handling cost about as much as the multiply-adds. This kernel packs only a small B
// block (at most 4096 floats, on the stack: nothing is allocated) and reads A in place,
// broadcasting one value at a time, with an R x 8V register block of accumulators chosen by
// the width of C (12 x 8 when C is r = 8 wide, 6 x 16 otherwise; 4 x 16 for short C).
//
//   C[m, n] = alpha * op(A) op(B) + beta * C   (row-major, cblas semantics; beta = 0 never
//   reads C), op(A) [m, k], op(B) [k, n].
//
// AVX2+FMA chosen at run time (mt_set_kernels' lora = 0, MOE_TUNE_LORA_KERNEL=scalar, forces the scalar loop), as
// nf4.c does; no AVX-512 variant (no CPU here to measure one on).
#include "dispatch.h"
#include "ckernels.h"
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// B block packed as kc rows of nc floats (nc a multiple of 8, zero-padded): 16 KiB, in L1.
#define LG_BLOCK 4096
#define LG_MAXNC 64

// Element (i, kk) of op(A) and (kk, j) of op(B).
#define A_AT(i, kk) (transA ? a[(kk) * lda + (i)] : a[(i) * lda + (kk)])
#define B_AT(kk, j) (transB ? b[(j) * ldb + (kk)] : b[(kk) * ldb + (j)])

static void lg_scalar(int transA, int transB, long m, long n, long k, float alpha, const float *a, long lda,
                      const float *b, long ldb, float beta, float *c, long ldc) {
    for (long i = 0; i < m; i++)
        for (long j = 0; j < n; j++) {
            float s = 0;
            for (long kk = 0; kk < k; kk++) s += A_AT(i, kk) * B_AT(kk, j);
            c[i * ldc + j] = beta == 0 ? alpha * s : alpha * s + beta * c[i * ldc + j];
        }
}

#if defined(__x86_64__)
// Mask of the first `w` (1-8) lanes.
__attribute__((target("avx2,fma"), always_inline))
static inline __m256i lg_mask(long w) {
    const int lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(lanes + 8 - w));
}

// C[R rows, columns j..j+8V) (only `w` of them real, w > 8(V-1)) from kc steps of the packed
// block bp (row stride nc). A element (i, kk) at ap[i * sai + kk * sak].
__attribute__((target("avx2,fma"), always_inline))
static inline void lg_tile(const int R, const int V, long kc, const float *ap, long sai, long sak,
                           const float *bp, long nc, float *c, long ldc, long w, float alpha, float beta) {
    __m256 acc[12];
#pragma clang loop unroll(full)
    for (int t = 0; t < R * V; t++) acc[t] = _mm256_setzero_ps();
    for (long kk = 0; kk < kc; kk++) {
        __m256 bv[3];
#pragma clang loop unroll(full)
        for (int v = 0; v < V; v++) bv[v] = _mm256_loadu_ps(bp + kk * nc + 8 * v);
        const float *ak = ap + kk * sak;
#pragma clang loop unroll(full)
        for (int r = 0; r < R; r++) {
            __m256 av = _mm256_broadcast_ss(ak + r * sai);
#pragma clang loop unroll(full)
            for (int v = 0; v < V; v++) acc[r * V + v] = _mm256_fmadd_ps(av, bv[v], acc[r * V + v]);
        }
    }
    __m256 al = _mm256_set1_ps(alpha), be = _mm256_set1_ps(beta);
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
        float *cr = c + r * ldc;
#pragma clang loop unroll(full)
        for (int v = 0; v < V; v++) {
            long left = w - 8 * v;
            __m256 out = _mm256_mul_ps(al, acc[r * V + v]);
            if (left >= 8) {
                if (beta != 0) out = _mm256_fmadd_ps(be, _mm256_loadu_ps(cr + 8 * v), out);
                _mm256_storeu_ps(cr + 8 * v, out);
            } else if (left > 0) {
                __m256i mk = lg_mask(left);
                if (beta != 0) out = _mm256_fmadd_ps(be, _mm256_maskload_ps(cr + 8 * v, mk), out);
                _mm256_maskstore_ps(cr + 8 * v, mk, out);
            }
        }
    }
}

// All rows of one packed block: row blocks of R (the rest one row block of fewer rows),
// column groups of 8V within the block's nc columns (w of them real).
__attribute__((target("avx2,fma"), always_inline))
static inline void lg_rows(const int R, const int V, long m, long kc, const float *ap, long sai, long sak,
                           const float *bp, long nc, long w, float *c, long ldc, float alpha, float beta) {
    for (long j = 0; j < w; j += 8 * V) {
        long wj = w - j < 8 * V ? w - j : 8 * V;
        long i = 0;
        for (; i + R <= m; i += R)
            lg_tile(R, V, kc, ap + i * sai, sai, sak, bp + j, nc, c + i * ldc + j, ldc, wj, alpha, beta);
        const float *ai = ap + i * sai;
        float *ci = c + i * ldc + j;
        switch (m - i) {
        case 0: break;
        case 1: lg_tile(1, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta); break;
        case 2: lg_tile(2, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta); break;
        case 3: lg_tile(3, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta); break;
        case 4: if (R > 4) lg_tile(4, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta); break;
        case 5: if (R > 5) lg_tile(5, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta); break;
        default:
            // 6..11 rows left of a 12-row block: one 6-row block and the rest.
            if (R == 12) {
                lg_tile(6, V, kc, ai, sai, sak, bp + j, nc, ci, ldc, wj, alpha, beta);
                long rest = m - i - 6;
                const float *a6 = ai + 6 * sai;
                float *c6 = ci + 6 * ldc;
                switch (rest) {
                case 1: lg_tile(1, V, kc, a6, sai, sak, bp + j, nc, c6, ldc, wj, alpha, beta); break;
                case 2: lg_tile(2, V, kc, a6, sai, sak, bp + j, nc, c6, ldc, wj, alpha, beta); break;
                case 3: lg_tile(3, V, kc, a6, sai, sak, bp + j, nc, c6, ldc, wj, alpha, beta); break;
                case 4: lg_tile(4, V, kc, a6, sai, sak, bp + j, nc, c6, ldc, wj, alpha, beta); break;
                case 5: lg_tile(5, V, kc, a6, sai, sak, bp + j, nc, c6, ldc, wj, alpha, beta); break;
                default: break;
                }
            }
            break;
        }
    }
}

__attribute__((target("avx2,fma")))
static void lg_avx2(int transA, int transB, long m, long n, long k, float alpha, const float *a, long lda,
                    const float *b, long ldb, float beta, float *c, long ldc) {
    // op(A) element (i, kk) at a[i * sai + kk * sak].
    long sai = transA ? 1 : lda, sak = transA ? lda : 1;
    // 16 floats of slack: a 16-wide group whose second half is padding may read past the block.
    float bp[LG_BLOCK + 16] __attribute__((aligned(32)));
    for (long j0 = 0; j0 < n; j0 += LG_MAXNC) {
        long w = n - j0 < LG_MAXNC ? n - j0 : LG_MAXNC;
        long nc = (w + 7) & ~7L;
        long kcMax = LG_BLOCK / nc;
        for (long k0 = 0; k0 < k; k0 += kcMax) {
            long kc = k - k0 < kcMax ? k - k0 : kcMax;
            // Pack op(B)[k0.., j0..] as kc rows of nc floats, zero-padded.
            for (long kk = 0; kk < kc; kk++) {
                float *d = bp + kk * nc;
                long j = 0;
                if (transB) {
                    for (; j < w; j++) d[j] = b[(j0 + j) * ldb + k0 + kk];
                } else {
                    memcpy(d, b + (k0 + kk) * ldb + j0, (size_t)w * sizeof(float));
                    j = w;
                }
                for (; j < nc; j++) d[j] = 0;
            }
            const float *ap = a + k0 * sak;
            float *cp = c + j0;
            float bt = k0 == 0 ? beta : 1;
            // 12 rows of A a multiple of 4 KiB apart fall into one set of the 8-way L1: 6 then.
            if (nc == 8 && sai % 1024 == 0 && sai > 1) lg_rows(6, 1, m, kc, ap, sai, sak, bp, nc, w, cp, ldc, alpha, bt);
            else if (nc == 8) lg_rows(12, 1, m, kc, ap, sai, sak, bp, nc, w, cp, ldc, alpha, bt);
            else if (m >= 24 || m % 4 != 0) lg_rows(6, 2, m, kc, ap, sai, sak, bp, nc, w, cp, ldc, alpha, bt);
            else lg_rows(4, 2, m, kc, ap, sai, sak, bp, nc, w, cp, ldc, alpha, bt);
        }
    }
}
#endif

typedef void (*lg_fn)(int, int, long, long, long, float, const float *, long, const float *, long, float, float *,
                      long);

int mt_lora_kernel_supported(int kernel) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (kernel == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#endif
    return kernel == 0;
}

static lg_fn lg_kernel(int kernel) {
#if defined(__x86_64__)
    if (kernel == 1) return lg_avx2;
#endif
    return lg_scalar;
}

static int lg_best(void) {
    return mt_choose_kernel(MT_KERNEL_LORA, mt_lora_kernel_supported);
}

const char *mt_lora_kernel(void) { return lg_best() == 1 ? "avx2" : "scalar"; }

void mt_lora_gemm(int transA, int transB, long m, long n, long k, float alpha, const float *a, long lda,
                  const float *b, long ldb, float beta, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        return;
    }
    lg_kernel(lg_best())(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int mt_lora_gemm_with(int kernel, int transA, int transB, long m, long n, long k, float alpha, const float *a,
                      long lda, const float *b, long ldb, float beta, float *c, long ldc) {
    if (!mt_lora_kernel_supported(kernel)) return -1;
    if (m <= 0 || n <= 0 || k <= 0) {
        mt_lora_gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return 0;
    }
    lg_kernel(kernel)(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return 0;
}
