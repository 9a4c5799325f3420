// Packing a frozen weight per call (mt_pack_b + mt_packed_gemm, Sources/CKernels/packed_gemm.c) against
// single-threaded OpenBLAS sgemm on the experts' frozen products (rows, out, in), forward y = x W^T
// and backward dx = dy W; one thread, thread-CPU time, best of 9 alternating rounds:
//   clang -O3 -ISources/CKernels/include scripts/bench_packed_per_call.c Sources/CKernels/packed_gemm.c \
//     $(pkg-config --libs openblas) -o /tmp/bpp && /tmp/bpp
#include "ckernels.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float *rnd(long n) { float *p = malloc(n * sizeof(float)); for (long i = 0; i < n; i++) p[i] = (float)rand() / 2147483648.0f - 0.5f; return p; }
int main(void) {
    openblas_set_num_threads(1);
    long sh[][3] = {{128, 256, 512}, {128, 512, 256}, {256, 1024, 512}, {256, 512, 1024}};
    float *pk = malloc(sizeof(float) * 1100000);
    for (int s = 0; s < 4; s++) for (int bwd = 0; bwd < 2; bwd++) {
        long m = sh[s][0], out = sh[s][1], in = sh[s][2];
        float *w = rnd(out * in), *x = rnd(m * (bwd ? out : in)), *c1 = malloc(4 * m * (bwd ? in : out)), *c2 = malloc(4 * m * (bwd ? in : out));
        long n = bwd ? in : out, k = bwd ? out : in;
        double best[2] = {1e9, 1e9};
        int reps = 20;
        for (int round = 0; round < 9; round++) for (int kind = 0; kind < 2; kind++) {
            double t0 = cpu();
            for (int r = 0; r < reps; r++) {
                if (kind == 0) {
                    if (!bwd) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, out, in, 1, x, in, w, in, 0, c1, out);
                    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, in, out, 1, x, out, w, in, 0, c1, in);
                } else {
                    if (!bwd) mt_pack_b(pk, w, in, out, 1, in); else mt_pack_b(pk, w, out, in, in, 1);
                    mt_packed_gemm(m, n, k, x, k, pk, c2, n, 0);
                }
            }
            double t = (cpu() - t0) / reps; if (t < best[kind]) best[kind] = t;
        }
        double md = 0, mx = 0; for (long i = 0; i < m * n; i++) { md = fmax(md, fabs(c1[i] - c2[i])); mx = fmax(mx, fabs(c1[i])); }
        printf("%s m %ld out %ld in %ld: openblas %.1f us (%.1f GF/s), pack-per-call+packed %.1f us (%.2fx) diff %.1e\n", bwd ? "bwd" : "fwd", m, out, in,
               best[0] * 1e6, 2.0 * m * n * k / best[0] * 1e-9, best[1] * 1e6, best[0] / best[1], md / mx);
    }
}
