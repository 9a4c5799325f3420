// LoRA's skinny products (Sources/CKernels/lora_gemm.c) against single-threaded OpenBLAS
// sgemm on one expert's shapes (rows of an expert, in, out, r), the six products of
// loraForward/loraBackward:
//   clang -O3 -ISources/CKernels/include $(pkg-config --cflags openblas) scripts/bench_lora_gemm.c \
//     Sources/CKernels/lora_gemm.c $(pkg-config --libs openblas) -o /tmp/blg && /tmp/blg
// One thread, thread-CPU time, best of 7 alternating rounds; prints us per product and the
// largest |difference| relative to the largest |value|.
#include "ckernels.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

typedef struct { const char *name; int ta, tb; long m, n, k; float alpha, beta; int la, lb; } P;

static float *rnd(long n) { float *p = malloc(n * sizeof(float)); for (long i = 0; i < n; i++) p[i] = (float)rand() / RAND_MAX - 0.5f; return p; }

int main(void) {
    long shapes[][4] = {{128, 512, 256, 8}, {128, 256, 512, 8}, {256, 512, 1024, 8}, {256, 1024, 512, 8}, {1024, 512, 512, 8}};
    openblas_set_num_threads(1);
    for (int s = 0; s < 5; s++) {
        long rows = shapes[s][0], in = shapes[s][1], out = shapes[s][2], r = shapes[s][3];
        // name, transA, transB, m, n, k, alpha, beta, lda, ldb
        P ps[6] = {
            {"u = x A^T", 0, 1, rows, r, in, 1, 0, in, in},
            {"y += s u B^T", 0, 1, rows, out, r, 2, 1, r, r},
            {"dB += s dy^T u", 1, 0, out, r, rows, 2, 1, out, r},
            {"du = s dy B", 0, 0, rows, r, out, 2, 0, out, r},
            {"dA += du^T x", 1, 0, r, in, rows, 1, 1, r, in},
            {"dx += du A", 0, 0, rows, in, r, 1, 1, r, in},
        };
        double totB = 0, totK = 0;
        printf("rows %ld in %ld out %ld r %ld\n", rows, in, out, r);
        for (int p = 0; p < 6; p++) {
            P q = ps[p];
            long asz = (q.ta ? q.k * q.la : q.m * q.la), bsz = (q.tb ? q.n * q.lb : q.k * q.lb);
            float *a = rnd(asz), *b = rnd(bsz), *c0 = rnd(q.m * q.n), *c1 = malloc(q.m * q.n * 4), *c2 = malloc(q.m * q.n * 4);
            int reps = (int)(2e8 / (2.0 * q.m * q.n * q.k)) + 1;
            double best[2] = {1e9, 1e9};
            for (int round = 0; round < 7; round++)
                for (int kind = 0; kind < 2; kind++) {
                    float *c = kind ? c2 : c1;
                    double t0 = cpu();
                    for (int i = 0; i < reps; i++) {
                        memcpy(c, c0, q.m * q.n * 4);
                        if (kind == 0)
                            cblas_sgemm(CblasRowMajor, q.ta ? CblasTrans : CblasNoTrans, q.tb ? CblasTrans : CblasNoTrans, q.m, q.n, q.k,
                                        q.alpha, a, q.la, b, q.lb, q.beta, c, q.n);
                        else
                            mt_lora_gemm(q.ta, q.tb, q.m, q.n, q.k, q.alpha, a, q.la, b, q.lb, q.beta, c, q.n);
                    }
                    double t = (cpu() - t0) / reps;
                    if (t < best[kind]) best[kind] = t;
                }
            double md = 0, mx = 0;
            for (long i = 0; i < q.m * q.n; i++) { md = fmax(md, fabs(c1[i] - c2[i])); mx = fmax(mx, fabs(c1[i])); }
            printf("  %-16s m %5ld n %5ld k %5ld  openblas %7.1f us  kernel %7.1f us  (%.2fx)  rel diff %.1e\n", q.name, q.m, q.n, q.k,
                   best[0] * 1e6, best[1] * 1e6, best[0] / best[1], md / mx);
            totB += best[0]; totK += best[1];
            free(a); free(b); free(c0); free(c1); free(c2);
        }
        printf("  all six: openblas %.1f us, kernel %.1f us (%.2fx)\n", totB * 1e6, totK * 1e6, totB / totK);
    }
    return 0;
}
